//! The sequencer (docs/architecture.md, "Sequencer"): the single writer. It decides commands
//! with the deterministic ledger, stamps sequence and time, journals them with group
//! commit, and only then publishes them on the bus and answers the gateways.
//!
//! # Layout
//! - [`journal`]: append-only segments with per-record CRC, torn-tail recovery, group commit.
//! - [`core`](mod@core): the sans-IO decision core and the durable-batch types.
//! - [`auth`]: the gateway challenge/response handshake.
//! - [`recovery`]: restart: journal replay with the transfer index rebuilt in parallel.
//! - [`server`]: the process: recovery, the hot thread, gateway connections.
//! - [`replay`]: the bulk replay service over TCP.
//! - [`archive`]: NAKs older than the ring, answered from the journal off the hot thread.
//! - [`metrics`]: counters and the Prometheus endpoint.
//! - [`client`]: a minimal blocking gateway-side client (tests, benchmarks, tools).

pub mod archive;
pub mod auth;
pub mod bench;
pub mod client;
pub mod core;
pub mod journal;
pub mod metrics;
pub mod pipeline;
pub mod recovery;
pub mod replay;
pub mod sealed_stream;
pub mod server;

pub use journal::Durability;
pub use server::{start, RunningSequencer, SequencerConfig, SequencerError};
