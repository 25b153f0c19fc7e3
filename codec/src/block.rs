//! Fixed-layout blocks: the macro that declares them, the [`Message`] trait, and the
//! typed decode and encode of one frame.
//!
//! Every block is a `#[repr(C)]` struct of unaligned little-endian fields, so a view
//! over received bytes is a plain reference cast with no copying and no alignment
//! requirement. The macro also records each field's name, offset, size and Rust type
//! in `FIELDS`, which `tests/schema_drift.rs` compares with `schema/ledgerbus.xml`,
//! and asserts every declared offset and the block size at compile time.

use core::fmt;
use core::ops::Deref;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::header::{MessageHeader, MESSAGE_HEADER_SIZE, SCHEMA_ID, SCHEMA_VERSION};
use crate::{DecodeError, EncodeError};

/// One field of a block, as declared in Rust. Compared against the XML schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldMeta {
    /// Field name in snake_case (the XML uses the camelCase form).
    pub name: &'static str,
    /// Byte offset from the start of the block.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// The Rust type as written in the declaration, e.g. `U64` or `[u8; 6]`.
    pub rust_type: &'static str,
}

/// A fixed-layout block with its field table. Implemented by [`sbe_block!`](crate::sbe_block).
pub trait Block: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned + Copy {
    /// Schema name of the block (message or composite).
    const NAME: &'static str;
    /// Size of the block in bytes, as this version lays it out.
    const SIZE: usize;
    /// Every field, in declaration order.
    const FIELDS: &'static [FieldMeta];
}

/// A block that travels as an SBE message: header + block.
pub trait Message: Block {
    /// The message's `id` in the schema.
    const TEMPLATE_ID: u16;
    /// `blockLength` this version writes.
    const BLOCK_LENGTH: u16;
    /// The shortest on-wire block a reader of this version accepts: the block length
    /// of the first schema version that had this message. Shorter blocks from older
    /// writers (but at least this long) are read with the missing fields as zero.
    const MIN_BLOCK_LENGTH: u16 = Self::BLOCK_LENGTH;
    /// Size of the whole frame this version writes.
    const FRAME_SIZE: usize = MESSAGE_HEADER_SIZE + Self::BLOCK_LENGTH as usize;

    /// The header this version writes in front of the block.
    #[inline]
    fn header() -> MessageHeader {
        MessageHeader {
            block_length: Self::BLOCK_LENGTH.into(),
            template_id: Self::TEMPLATE_ID.into(),
            schema_id: SCHEMA_ID.into(),
            version: SCHEMA_VERSION.into(),
        }
    }
}

/// Declares a fixed-layout block: the struct, its field table, and compile-time
/// checks that each field sits at the offset written next to it and that the block
/// has the declared size.
#[macro_export]
macro_rules! sbe_block {
    (
        $(#[$meta:meta])*
        pub struct $name:ident : size $size:literal {
            $( $(#[$fmeta:meta])* [$offset:literal] $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Debug,
            zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout,
            zerocopy::Immutable, zerocopy::Unaligned,
        )]
        #[repr(C)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        const _: () = {
            assert!(core::mem::size_of::<$name>() == $size, "block size differs from declaration");
            $( assert!(core::mem::offset_of!($name, $field) == $offset, "field offset differs from declaration"); )*
        };

        impl Default for $name {
            /// Every field zero: what an older writer's missing fields read as.
            fn default() -> Self {
                <$name as zerocopy::FromZeros>::new_zeroed()
            }
        }

        impl $crate::Block for $name {
            const NAME: &'static str = stringify!($name);
            const SIZE: usize = $size;
            const FIELDS: &'static [$crate::FieldMeta] = &[
                $( $crate::FieldMeta {
                    name: stringify!($field),
                    offset: $offset,
                    size: core::mem::size_of::<$ty>(),
                    rust_type: stringify!($ty),
                }, )*
            ];
        }
    };
}

/// The block of a decoded message: borrowed straight from the input when the writer
/// wrote at least our block length, or a zero-padded copy when an older writer wrote
/// a shorter (but valid) block.
#[derive(Clone, Copy)]
enum BlockRef<'a, M> {
    Borrowed(&'a M),
    Padded(M),
}

/// A decoded message: the header as written plus a view of the block.
///
/// Dereferences to the block, so fields read as `view.amount.get()`.
#[derive(Clone, Copy)]
pub struct View<'a, M: Message> {
    header: MessageHeader,
    block: BlockRef<'a, M>,
}

impl<'a, M: Message> View<'a, M> {
    /// Decodes one frame of type `M` from the start of `bytes`. Returns the view and
    /// the number of bytes the frame occupies (header + on-wire block length), which
    /// may exceed `M::FRAME_SIZE` when a newer writer appended fields.
    #[inline]
    pub fn decode(bytes: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let (header, frame_size) = MessageHeader::read(bytes)?;
        let template_id = header.template_id.get();
        if template_id != M::TEMPLATE_ID {
            return Err(DecodeError::UnexpectedTemplate { expected: M::TEMPLATE_ID, found: template_id });
        }
        if bytes.len() < frame_size {
            return Err(DecodeError::Truncated { needed: frame_size, available: bytes.len() });
        }
        let view = Self::from_frame(header, &bytes[MESSAGE_HEADER_SIZE..frame_size])?;
        Ok((view, frame_size))
    }

    /// Builds a view from a header already read and exactly the block bytes it announced.
    #[inline]
    pub(crate) fn from_frame(header: MessageHeader, block_bytes: &'a [u8]) -> Result<Self, DecodeError> {
        debug_assert_eq!(block_bytes.len(), usize::from(header.block_length.get()));
        if let Ok((block, _)) = M::ref_from_prefix(block_bytes) {
            return Ok(View { header, block: BlockRef::Borrowed(block) });
        }
        let block_length = header.block_length.get();
        if block_length < M::MIN_BLOCK_LENGTH {
            return Err(DecodeError::BlockLengthTooSmall {
                template_id: M::TEMPLATE_ID,
                block_length,
                min: M::MIN_BLOCK_LENGTH,
            });
        }
        // An older writer: copy what it wrote, the fields it did not know stay zero.
        let mut padded = M::new_zeroed();
        padded.as_mut_bytes()[..block_bytes.len()].copy_from_slice(block_bytes);
        Ok(View { header, block: BlockRef::Padded(padded) })
    }

    /// The header as the writer wrote it.
    #[inline]
    pub fn header(&self) -> MessageHeader {
        self.header
    }

    /// The writer's schema version. Newer than [`SCHEMA_VERSION`] means this reader
    /// sees only the prefix of the block it knows.
    #[inline]
    pub fn acting_version(&self) -> u16 {
        self.header.version.get()
    }

    /// The block length the writer wrote.
    #[inline]
    pub fn block_length(&self) -> u16 {
        self.header.block_length.get()
    }

    /// Whether the writer's block contains the field at `offset..offset + size`.
    /// Fields added in later versions read as zero when absent; this tells the two apart.
    #[inline]
    pub fn has_field(&self, offset: usize, size: usize) -> bool {
        offset.saturating_add(size) <= usize::from(self.block_length())
    }

    /// A copy of the block.
    #[inline]
    pub fn to_block(&self) -> M {
        **self
    }
}

impl<M: Message> Deref for View<'_, M> {
    type Target = M;

    #[inline]
    fn deref(&self) -> &M {
        match &self.block {
            BlockRef::Borrowed(block) => block,
            BlockRef::Padded(block) => block,
        }
    }
}

impl<M: Message + fmt::Debug> fmt::Debug for View<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View").field("header", &self.header).field("block", &**self).finish()
    }
}

/// Writes `block` as a frame (header + block) at the start of `out` and returns the
/// frame size.
#[inline]
pub fn encode<M: Message>(block: &M, out: &mut [u8]) -> Result<usize, EncodeError> {
    let frame_size = M::FRAME_SIZE;
    let Some(frame) = out.get_mut(..frame_size) else {
        return Err(EncodeError::BufferTooSmall { needed: frame_size, available: out.len() });
    };
    let (head, body) = frame.split_at_mut(MESSAGE_HEADER_SIZE);
    head.copy_from_slice(M::header().as_bytes());
    body.copy_from_slice(block.as_bytes());
    Ok(frame_size)
}

/// Writes `block` as a frame in the oldest schema version that carries every
/// non-zero byte of it, and returns the frame size: a message whose fields added
/// in a later version are all zero is written as the version that first had the
/// message (its shorter block, its version number). Every reader of this schema
/// reads such a frame (absent fields read as zero), and a plain transfer costs the
/// bus and the journal no more bytes than before the fields existed.
#[inline]
pub fn encode_compact<M: Message>(block: &M, out: &mut [u8]) -> Result<usize, EncodeError> {
    let bytes = block.as_bytes();
    let first = usize::from(M::MIN_BLOCK_LENGTH);
    if first == bytes.len() || bytes[first..].iter().any(|&b| b != 0) {
        return encode(block, out);
    }
    let frame_size = MESSAGE_HEADER_SIZE + first;
    let Some(frame) = out.get_mut(..frame_size) else {
        return Err(EncodeError::BufferTooSmall { needed: frame_size, available: out.len() });
    };
    let header = MessageHeader {
        block_length: M::MIN_BLOCK_LENGTH.into(),
        template_id: M::TEMPLATE_ID.into(),
        schema_id: SCHEMA_ID.into(),
        version: 1.into(),
    };
    let (head, body) = frame.split_at_mut(MESSAGE_HEADER_SIZE);
    head.copy_from_slice(header.as_bytes());
    body.copy_from_slice(&bytes[..first]);
    Ok(frame_size)
}

/// Shorthand for [`View::decode`].
#[inline]
pub fn decode<M: Message>(bytes: &[u8]) -> Result<(View<'_, M>, usize), DecodeError> {
    View::decode(bytes)
}
