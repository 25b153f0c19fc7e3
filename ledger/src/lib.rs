//! The deterministic ledger state machine (docs/architecture.md, "Ledger semantics").
//!
//! No I/O, no clock, no randomness: the sequencer calls it to decide, consumers and
//! recovery call it to apply events, and the same log always yields the same state.
//!
//! # Layout
//! - [`account`]: an account's state.
//! - [`ledger`](mod@ledger): [`Ledger`], the decider, with linked chains.
//! - [`hash`]: [`RollingHash`], the replica-comparison hash over the event log.
//! - [`huge`]: the huge-page allocator of the big tables.
//! - [`index`]: the transfer-id table, with prefetch.
//! - [`replica`]: [`Replica`], a ledger and its position in the log; applies events.
//! - [`snapshot`]: the whole state to and from one CRC-checked file.

pub mod account;
pub mod hash;
pub mod huge;
pub mod index;
pub mod ledger;
pub mod replica;
pub mod snapshot;

pub use account::Account;
pub use hash::RollingHash;
pub use ledger::Ledger;
pub use replica::{ApplyError, Replica, TransferIds};
