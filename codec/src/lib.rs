//! The ledgerbus wire format: the SBE schema and zero-copy views of every message.
//!
//! `schema/ledgerbus.xml` is the source of truth. Each message is a fixed block of
//! unaligned little-endian fields, declared in Rust with [`sbe_block!`] which asserts
//! every offset at compile time; `tests/schema_drift.rs` parses the XML and fails if
//! a name, offset, size, type, template id or block length differs.
//!
//! Decoding never panics on hostile bytes: every decode returns a
//! `Result<_, DecodeError>` (docs/architecture.md, "Codec"). A reader honours the on-wire block
//! length, so a newer writer's extra trailing fields are skipped and an older
//! writer's shorter block reads with the missing fields as zero.
//!
//! # Layout
//! - [`header`]: the 8-byte SBE message header and schema constants.
//! - [`block`](mod@block): the `sbe_block!` macro, [`Message`], typed [`View`], [`encode`].
//! - [`types`]: [`Id128`], [`ResultCode`], flag bits.
//! - [`messages`]: commands, results, events and control messages.
//! - [`decided`]: [`Decided`], what a result frame says.
//! - [`frame`]: decode any frame by template id; iterate back-to-back frames.
//! - [`group`]: where a group of commands (an account, or a linked chain) ends.
//! - [`packet`]: the datagram header, its CRC, [`PacketWriter`] and [`Packet`].
//! - [`error`]: [`DecodeError`] and [`EncodeError`].

pub mod block;
pub mod decided;
pub mod error;
pub mod frame;
pub mod group;
pub mod header;
pub mod messages;
pub mod packet;
pub mod types;

pub use block::{decode, encode, encode_compact, Block, FieldMeta, Message, View};
pub use decided::Decided;
pub use error::{DecodeError, EncodeError};
pub use frame::{Frame, Frames};
pub use group::{next_group, Group, CHAIN_MAX};
pub use header::{MessageHeader, BLOCK_LENGTH_MAX, MESSAGE_HEADER_SIZE, SCHEMA_ID, SCHEMA_VERSION};
pub use packet::{
    packet_crc, restamp, seal, CrcCheck, Packet, PacketHeader, PacketWriter, DATAGRAM_SIZE_DEFAULT,
    DATAGRAM_SIZE_MAX, PACKET_HEADER_SIZE, PACKET_MAGIC,
};
pub use types::{account_flags, transfer_flags, Id128, PacketKind, ResultCode};

/// The schema XML, embedded so tools can print it and tests can check against it.
pub const SCHEMA_XML: &str = include_str!("../schema/ledgerbus.xml");
