//! The datagram: a [`PacketHeader`] followed by frames.
//!
//! A data packet carries `message_count` event frames numbered `first_sequence`,
//! `first_sequence + 1`, …; a control packet carries exactly one control frame
//! (Heartbeat, Nak, StatusMessage, NakUnavailable). The CRC32 covers the whole
//! datagram with the `crc32` field read as zero, so one pass checks header and body.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::frame::{Frame, Frames};
use crate::types::PacketKind;
use crate::{encode, DecodeError, EncodeError, Message};

/// "LBUS" read as a little-endian u32.
pub const PACKET_MAGIC: u32 = u32::from_le_bytes(*b"LBUS");
/// The packet framing version this crate writes and reads.
pub const PACKET_PROTOCOL_VERSION: u8 = 1;
/// Size of [`PacketHeader`].
pub const PACKET_HEADER_SIZE: usize = 40;
/// Default datagram size limit: Aeron's default MTU, safe on cloud networks (docs/architecture.md).
pub const DATAGRAM_SIZE_DEFAULT: usize = 1408;
/// The largest UDP payload over IPv4.
pub const DATAGRAM_SIZE_MAX: usize = 65507;
/// Where the CRC sits in the header.
const CRC_OFFSET: usize = 12;

crate::sbe_block! {
    /// Header of every ledgerbus datagram (`PacketHeader` composite in the schema).
    pub struct PacketHeader: size 40 {
        /// [`PACKET_MAGIC`].
        [0] magic: U32,
        /// [`PACKET_PROTOCOL_VERSION`].
        [4] protocol_version: u8,
        /// [`PacketKind`] as its wire value.
        [5] kind: u8,
        /// Event frames in a data packet; 0 in a control packet.
        [6] message_count: U16,
        /// Which stream of the bus.
        [8] stream_id: U32,
        /// CRC32 of the datagram with this field as zero.
        [12] crc32: U32,
        /// Changes when the sequencer starts a new log.
        [16] session_id: U64,
        /// Sequence of the first event; in a heartbeat, the next sequence.
        [24] first_sequence: U64,
        /// Sender clock when the datagram was (re)sent.
        [32] send_time_ns: U64,
    }
}

const _: () = assert!(core::mem::size_of::<PacketHeader>() == PACKET_HEADER_SIZE);
const _: () = assert!(core::mem::offset_of!(PacketHeader, crc32) == CRC_OFFSET);

/// Whether [`Packet::decode`] checks the CRC. Skipping is for benchmarks and for
/// bytes whose integrity another layer already proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcCheck {
    Verify,
    Skip,
}

/// CRC32 of a whole datagram with its crc field read as zero.
#[inline]
pub fn packet_crc(datagram: &[u8]) -> u32 {
    debug_assert!(datagram.len() >= PACKET_HEADER_SIZE);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&datagram[..CRC_OFFSET]);
    hasher.update(&[0; 4]);
    hasher.update(&datagram[CRC_OFFSET + 4..]);
    hasher.finalize()
}

/// A checked datagram: its header and the frames after it.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    header: &'a PacketHeader,
    kind: PacketKind,
    payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Checks a datagram: header, magic, version, kind, CRC (unless skipped), and that
    /// the frames exactly fill the payload in the number the header declares.
    /// Templates inside are not checked here; unknown ones are skippable frames.
    pub fn decode(datagram: &'a [u8], crc: CrcCheck) -> Result<Packet<'a>, DecodeError> {
        let Ok((header, payload)) = PacketHeader::ref_from_prefix(datagram) else {
            return Err(DecodeError::Truncated { needed: PACKET_HEADER_SIZE, available: datagram.len() });
        };
        if header.magic.get() != PACKET_MAGIC {
            return Err(DecodeError::BadMagic { found: header.magic.get() });
        }
        if header.protocol_version != PACKET_PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedProtocolVersion { version: header.protocol_version });
        }
        if crc == CrcCheck::Verify {
            let computed = packet_crc(datagram);
            let stored = header.crc32.get();
            if computed != stored {
                return Err(DecodeError::BadCrc { stored, computed });
            }
        }
        let kind = PacketKind::from_wire(header.kind)?;
        let declared = header.message_count.get();
        let (expected, found) = match kind {
            PacketKind::Data => (declared, count_frames(payload)?),
            PacketKind::Control => {
                if declared != 0 || count_frames(payload)? != 1 {
                    return Err(DecodeError::BadControlPacket);
                }
                (0, 0)
            }
        };
        if expected != found {
            return Err(DecodeError::FrameCountMismatch { declared, found });
        }
        Ok(Packet { header, kind, payload })
    }

    /// The header.
    #[inline]
    pub fn header(&self) -> &'a PacketHeader {
        self.header
    }

    /// Data or control.
    #[inline]
    pub fn kind(&self) -> PacketKind {
        self.kind
    }

    /// The bytes after the header.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The raw frames after the header (already known to be well framed).
    #[inline]
    pub fn frames(&self) -> Frames<'a> {
        Frames::new(self.payload)
    }

    /// The one control message of a control packet, decoded.
    pub fn control(&self) -> Result<Frame<'a>, DecodeError> {
        debug_assert_eq!(self.kind, PacketKind::Control);
        Frame::decode(self.payload).map(|(frame, _)| frame)
    }
}

/// Counts well-formed frames filling `payload` exactly.
#[inline]
fn count_frames(payload: &[u8]) -> Result<u16, DecodeError> {
    let mut count: u16 = 0;
    for frame in Frames::new(payload) {
        frame?;
        count = count.checked_add(1).ok_or(DecodeError::LengthOverMax {
            length: usize::from(u16::MAX) + 1,
            max: usize::from(u16::MAX),
        })?;
    }
    Ok(count)
}

/// Builds one datagram in a caller-owned buffer: header, then frames, then the CRC.
///
/// ```
/// use ledgerbus_codec::{PacketWriter, Packet, CrcCheck, messages::Heartbeat};
/// let mut buf = [0u8; 1408];
/// let mut writer = PacketWriter::control(&mut buf, 7, 99);
/// writer.push(&Heartbeat { next_sequence: 5.into(), oldest_retained_sequence: 1.into() }).unwrap();
/// let size = writer.finish(123);
/// let packet = Packet::decode(&buf[..size], CrcCheck::Verify).unwrap();
/// assert_eq!(packet.header().stream_id.get(), 7);
/// ```
#[derive(Debug)]
pub struct PacketWriter<'a> {
    buf: &'a mut [u8],
    size: usize,
    message_count: u16,
}

impl<'a> PacketWriter<'a> {
    /// Starts a data packet whose first event is `first_sequence`. `buf`'s length is
    /// the datagram size limit.
    ///
    /// # Panics
    /// If `buf` cannot even hold the header: that is a configuration bug, caught by
    /// config validation long before.
    pub fn data(buf: &'a mut [u8], stream_id: u32, session_id: u64, first_sequence: u64) -> Self {
        Self::start(buf, PacketKind::Data, stream_id, session_id, first_sequence)
    }

    /// Starts a control packet (exactly one control frame is to be pushed).
    pub fn control(buf: &'a mut [u8], stream_id: u32, session_id: u64) -> Self {
        Self::start(buf, PacketKind::Control, stream_id, session_id, 0)
    }

    fn start(
        buf: &'a mut [u8],
        kind: PacketKind,
        stream_id: u32,
        session_id: u64,
        first_sequence: u64,
    ) -> Self {
        assert!(buf.len() >= PACKET_HEADER_SIZE, "datagram buffer smaller than the packet header");
        let header = PacketHeader {
            magic: PACKET_MAGIC.into(),
            protocol_version: PACKET_PROTOCOL_VERSION,
            kind: kind.to_wire(),
            message_count: 0.into(),
            stream_id: stream_id.into(),
            crc32: 0.into(),
            session_id: session_id.into(),
            first_sequence: first_sequence.into(),
            send_time_ns: 0.into(),
        };
        buf[..PACKET_HEADER_SIZE].copy_from_slice(header.as_bytes());
        PacketWriter { buf, size: PACKET_HEADER_SIZE, message_count: 0 }
    }

    /// Bytes still free.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.size
    }

    /// Frames written so far.
    #[inline]
    pub fn message_count(&self) -> u16 {
        self.message_count
    }

    /// Encodes `message` as the next frame.
    #[inline]
    pub fn push<M: Message>(&mut self, message: &M) -> Result<(), EncodeError> {
        self.reserve_count()?;
        let written = encode(message, &mut self.buf[self.size..])?;
        self.size += written;
        self.message_count += 1;
        Ok(())
    }

    /// Appends an already-encoded frame (e.g. from the retransmit ring or journal).
    #[inline]
    pub fn push_frame(&mut self, frame: &[u8]) -> Result<(), EncodeError> {
        self.reserve_count()?;
        let Some(slot) = self.buf.get_mut(self.size..self.size + frame.len()) else {
            return Err(EncodeError::BufferTooSmall { needed: frame.len(), available: self.remaining() });
        };
        slot.copy_from_slice(frame);
        self.size += frame.len();
        self.message_count += 1;
        Ok(())
    }

    fn reserve_count(&self) -> Result<(), EncodeError> {
        if self.message_count == u16::MAX {
            return Err(EncodeError::TooManyMessages);
        }
        Ok(())
    }

    /// Writes count, send time and CRC; returns the datagram size.
    pub fn finish(self, send_time_ns: u64) -> usize {
        let is_data = self.buf[5] == PacketKind::Data.to_wire();
        let count = if is_data { self.message_count } else { 0 };
        seal(&mut self.buf[..self.size], count, send_time_ns);
        self.size
    }
}

/// Completes a datagram whose header was written by [`PacketWriter`] and whose frames
/// were appended in place: writes the message count, the send time and the CRC.
/// This lets a sender build a datagram across many calls without holding a writer.
///
/// # Panics
/// If `datagram` is shorter than the packet header (a bug in the caller).
pub fn seal(datagram: &mut [u8], message_count: u16, send_time_ns: u64) {
    let (header, _) = PacketHeader::mut_from_prefix(datagram).expect("datagram shorter than its header");
    header.message_count = message_count.into();
    header.send_time_ns = send_time_ns.into();
    header.crc32 = 0.into();
    let crc = packet_crc(datagram);
    datagram[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites the send time of a finished datagram (a retransmission) and its CRC.
pub fn restamp(datagram: &mut [u8], send_time_ns: u64) -> Result<(), DecodeError> {
    let Ok((header, _)) = PacketHeader::mut_from_prefix(datagram) else {
        return Err(DecodeError::Truncated { needed: PACKET_HEADER_SIZE, available: datagram.len() });
    };
    header.send_time_ns = send_time_ns.into();
    let crc = packet_crc(datagram);
    datagram[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}
