//! The sequencer (docs/architecture.md, "Sequencer"): the single writer. It decides commands
//! with the deterministic ledger, stamps sequence and time, journals them with group
//! commit, and only then publishes them on the bus and answers the gateways.
//!
//! # Layout
//! - [`config`]: [`SequencerConfig`] and [`SequencerError`].
//! - [`core`](mod@core): the sans-IO decision core and the durable-batch types.
//! - [`intake`]: a gateway connection's bytes, sans-IO: handshake, framing, chains,
//!   window, back-pressure.
//! - [`recovery`]: restart: journal replay with the transfer index rebuilt in parallel.
//! - [`pipeline`]: group commit, inline or on a journal thread.
//! - [`server`]: [`start`]: recover, bind, spawn.
//! - `hot_loop`: the hot thread: sockets in and out of the intake, decide, commit,
//!   publish.
//! - [`metrics`]: counters and the Prometheus endpoint.

pub mod config;
pub mod core;
mod gateways;
pub mod group;
mod hot_loop;
pub mod intake;
pub mod metrics;
pub mod pipeline;
pub mod recovery;
pub mod server;

pub use config::{GroupConfig, SequencerConfig, SequencerError, TRANSFER_CAPACITY_DEFAULT};
pub use ledgerbus_log::journal::Durability;
pub use server::{start, RunningSequencer};
