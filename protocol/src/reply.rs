//! The sequencer's answers to the gateway: one fixed-size result frame per command,
//! a `CreateAccountResult` or a `TransferResult` (the two share one size and layout
//! of the fields read here).

use ledgerbus_codec::messages::{CreateAccountResult, TransferResult};
use ledgerbus_codec::Message;

/// Size of a reply frame (both result messages share it).
pub const REPLY_FRAME_SIZE: usize = TransferResult::FRAME_SIZE;
const _: () = assert!(CreateAccountResult::FRAME_SIZE == TransferResult::FRAME_SIZE);

/// What a reply frame says (the codec's, shared with the client).
pub use ledgerbus_codec::Decided;
