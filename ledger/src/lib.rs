//! The deterministic ledger state machine (DESIGN.md, "Ledger semantics").
//!
//! No I/O, no clock, no randomness: the sequencer calls it to decide, consumers and
//! recovery call it to replay, and the same log always yields the same state.
//!
//! # Layout
//! - [`account`]: an account's state.
//! - [`ledger`](mod@ledger): [`Ledger`], the decider, with linked chains.
//! - [`hash`]: [`RollingHash`], the replica-comparison hash over the event log.

pub mod account;
pub mod hash;
pub mod huge;
pub mod ledger;

pub use account::Account;
pub use hash::RollingHash;
pub use ledger::Ledger;
