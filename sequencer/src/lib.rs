//! The sequencer (docs/architecture.md, "Sequencer"): the single writer. It decides commands
//! with the deterministic ledger, stamps sequence and time, journals them with group
//! commit, and only then publishes them on the bus and answers the gateways.
//!
//! # Layout
//! - [`core`](mod@core): the sans-IO decision core and the durable-batch types.
//! - [`recovery`]: restart: journal replay with the transfer index rebuilt in parallel.
//! - [`server`]: the process: recovery, the hot thread, gateway connections.
//! - [`metrics`]: counters and the Prometheus endpoint.

pub mod bench;
pub mod core;
pub mod metrics;
pub mod pipeline;
pub mod recovery;
pub mod server;

pub use ledgerbus_log::journal::Durability;
pub use server::{start, RunningSequencer, SequencerConfig, SequencerError};
