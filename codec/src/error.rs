//! Why a decode or an encode failed.
//!
//! Decoding runs on bytes from the network and from disk, so every failure is a
//! value, never a panic. The enums are `Copy` so the hot path can count them in
//! stats without allocating.

/// Why bytes could not be read as a ledgerbus message or packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ends before the structure does.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    /// The message header names a schema other than ledgerbus's.
    #[error("unknown schema id {id} (expected {expected})", expected = crate::SCHEMA_ID)]
    UnknownSchema { id: u16 },
    /// The template id is not one this reader knows. `frame_size` is the whole
    /// frame (header + block) so that a stream reader can skip it and go on.
    #[error("unknown template id {id} (frame of {frame_size} bytes)")]
    UnknownTemplate { id: u16, frame_size: usize },
    /// A typed decode found a different (known) template.
    #[error("expected template {expected}, found {found}")]
    UnexpectedTemplate { expected: u16, found: u16 },
    /// The on-wire block is shorter than the oldest version of this message.
    #[error("block length {block_length} of template {template_id} is below its minimum {min}")]
    BlockLengthTooSmall { template_id: u16, block_length: u16, min: u16 },
    /// A length field exceeds what the protocol allows.
    #[error("length {length} exceeds the maximum {max}")]
    LengthOverMax { length: usize, max: usize },
    /// The packet does not start with the ledgerbus magic.
    #[error("bad packet magic {found:#010x}")]
    BadMagic { found: u32 },
    /// The packet was written by a protocol version this reader cannot frame.
    #[error("unsupported packet protocol version {version}")]
    UnsupportedProtocolVersion { version: u8 },
    /// The packet kind byte is not Data or Control.
    #[error("unknown packet kind {kind}")]
    UnknownPacketKind { kind: u8 },
    /// The CRC32 stored in the packet does not match its bytes.
    #[error("bad crc: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    /// The frames in a data packet do not add up to its message count and length.
    #[error("packet framing mismatch: header says {declared} messages, payload holds {found}")]
    FrameCountMismatch { declared: u16, found: u16 },
    /// A control packet must carry exactly one control message.
    #[error("control packet must carry exactly one control message")]
    BadControlPacket,
    /// An enum field holds a value this reader does not know.
    #[error("unknown value {value} for enum {name}")]
    UnknownEnumValue { name: &'static str, value: u16 },
}

/// Why a message or packet could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer is too small for what was asked.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall { needed: usize, available: usize },
    /// A data packet can carry at most `u16::MAX` messages.
    #[error("too many messages in one packet")]
    TooManyMessages,
}
