//! The deterministic ledger state machine (docs/architecture.md, "Ledger semantics").
//!
//! No I/O and no clock, and no output depends on randomness or on threads: the
//! sequencer calls it to decide, consumers and recovery call it to apply events, and
//! the same log always yields the same state. Two things inside are not pure, and
//! neither reaches an output: the transfer-id index keys its hash with a random
//! per-table seed (so client-chosen ids cannot be crafted to collide), and a large
//! index faults its next, larger table in on a helper thread before it is needed (so
//! growing never stalls deciding).
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

pub use account::{Account, PendingState, PendingTransfer, UserData};
pub use hash::RollingHash;
pub use ledger::Ledger;
pub use replica::{ApplyError, Replica, TransferIds};
