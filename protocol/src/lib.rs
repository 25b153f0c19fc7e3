//! The sequencer's gateway protocol, shared by both ends without either depending on
//! the other: the HMAC challenge-response that authenticates a gateway (and, keyed
//! from the bus key, a replay client), the reply frames and what they say, and a
//! blocking client for tests, benchmarks and tools (docs/architecture.md, "Gateway").
//!
//! # Layout
//! - [`auth`]: nonces and the HMAC-SHA256 answer and its check.
//! - [`reply`]: [`REPLY_FRAME_SIZE`] and [`Decided`], what a result frame says.
//! - [`blocking`]: reading one frame off a stream; [`blocking::SequencerClient`].

pub mod auth;
pub mod blocking;
pub mod reply;

pub use reply::{Decided, REPLY_FRAME_SIZE};
