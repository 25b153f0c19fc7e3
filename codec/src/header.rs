//! The standard 8-byte SBE message header that starts every frame.

use zerocopy::little_endian::U16;
use zerocopy::FromBytes;

use crate::DecodeError;

/// `id` of the `messageSchema` in `schema/ledgerbus.xml` ("LB").
pub const SCHEMA_ID: u16 = 19522;
/// `version` of the `messageSchema`: the newest version this crate writes and reads in full.
pub const SCHEMA_VERSION: u16 = 2;
/// Size of [`MessageHeader`] on the wire.
pub const MESSAGE_HEADER_SIZE: usize = 8;
/// The largest block this reader accepts. Far above any ledgerbus message, it only
/// stops a hostile header from making a reader believe in a 64 KiB frame.
pub const BLOCK_LENGTH_MAX: u16 = 1024;

crate::sbe_block! {
    /// SBE 1.0 standard message header (`messageHeader` composite).
    pub struct MessageHeader: size 8 {
        /// Length of the root block that follows, as written by the sender's version.
        [0] block_length: U16,
        /// Which message the block holds.
        [2] template_id: U16,
        /// Always [`SCHEMA_ID`] for ledgerbus frames.
        [4] schema_id: U16,
        /// Schema version of the writer.
        [6] version: U16,
    }
}

impl MessageHeader {
    /// Reads and checks the header at the start of `bytes`: present, ours, and not
    /// claiming an absurd block. The frame size it returns is header + block and may
    /// still exceed `bytes.len()`; callers check that against what they need.
    #[inline]
    pub fn read(bytes: &[u8]) -> Result<(MessageHeader, usize), DecodeError> {
        let Ok((header, _)) = MessageHeader::read_from_prefix(bytes) else {
            return Err(DecodeError::Truncated { needed: MESSAGE_HEADER_SIZE, available: bytes.len() });
        };
        if header.schema_id.get() != SCHEMA_ID {
            return Err(DecodeError::UnknownSchema { id: header.schema_id.get() });
        }
        let block_length = header.block_length.get();
        if block_length > BLOCK_LENGTH_MAX {
            return Err(DecodeError::LengthOverMax {
                length: usize::from(block_length),
                max: usize::from(BLOCK_LENGTH_MAX),
            });
        }
        Ok((header, MESSAGE_HEADER_SIZE + usize::from(block_length)))
    }

    /// Reads the header of the next frame and returns the whole frame size, checking
    /// that the frame fits in `bytes`. This is what a stream reader uses to step over
    /// frames, including ones with templates it does not know.
    #[inline]
    pub fn frame_size(bytes: &[u8]) -> Result<usize, DecodeError> {
        let (_, frame_size) = Self::read(bytes)?;
        if bytes.len() < frame_size {
            return Err(DecodeError::Truncated { needed: frame_size, available: bytes.len() });
        }
        Ok(frame_size)
    }
}
