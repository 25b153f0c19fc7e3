//! Operator tools (docs/architecture.md, "Tools").
//!
//! # Layout
//! - [`loadgen`]: the open-loop end-to-end load generator (`ledgerbus bench e2e`).
//! - [`pacing`]: sends at their intended times, from a thread of their own.
//! - [`latency`]: its latencies, split by outcome.
//! - [`histogram`]: percentile table, `.hgrm` output and the latency plot.
//! - [`hops`]: the latency floor of the request path's shape on this host.
//! - [`replay`]: fetch, print, verify and re-publish event ranges; the NAK probe.
//! - [`format`](mod@format): events as text lines and JSON.
//! - [`filter`]: which events `replay` prints.
//! - [`cluster`]: a whole ledgerbus as child processes (demo, `bench e2e --spawn`,
//!   integration tests).
//! - [`bench_transport`]: the transport's throughput and repair benchmark
//!   (`ledgerbus bench transport`).

pub mod bench_transport;
pub mod cluster;
pub mod filter;
pub mod floor;
pub mod format;
pub mod histogram;
pub mod hops;
pub mod latency;
pub mod loadgen;
pub mod pacing;
pub mod queries;
pub mod replay;
pub mod two_phase;
