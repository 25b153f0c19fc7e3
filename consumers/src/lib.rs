//! Consumers of the event stream (docs/architecture.md, "Consumers"). Both apply every event
//! exactly once, in order, catching up through the sequencer's bulk replay when
//! they start behind or lose more than the transport can repair.
//!
//! # Layout
//! - [`follow`]: bulk catch-up, then the live stream, back to bulk replay on demand.
//! - [`readmodel`]: balances, transfers by id, per-account history.
//! - [`memory`]: the memory consumer and its HTTP query API.
//! - [`disk`]: the disk consumer: its own journal plus snapshots.
//! - [`sql`]: the SQL projection (Postgres or SQLite), exactly once across crashes.
//! - [`error`]: [`error::SinkError`], why an event was refused or not kept.
//! - [`progress`]: how far a consumer has got: `/status` and `/metrics`.

pub mod disk;
pub mod error;
pub mod follow;
pub mod memory;
pub mod progress;
pub mod readmodel;
pub mod sql;
