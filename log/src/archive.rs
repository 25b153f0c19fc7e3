//! Answers NAKs older than the transport's retransmit ring from the journal, on a
//! thread of its own: finding the range means reading a segment from its start, which
//! must never stall the hot thread. Requests come through a small bounded queue; when
//! it is full a request is dropped and the receiver's NAK retry asks again. Repeats of
//! a range just served are skipped.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use ledgerbus_codec::messages::NakUnavailable;
use ledgerbus_codec::PacketWriter;
use ledgerbus_transport::security::{BusSecurity, Sealer, SENDER_NODE_ID_ARCHIVE};
use ledgerbus_transport::ArchiveRequest;

use crate::journal::{JournalError, JournalReader};

/// Events sent for one request at most; a receiver further behind NAKs again or
/// uses bulk replay.
const EVENTS_PER_REQUEST_MAX: u64 = 4_096;
/// Requests waiting at most.
const QUEUE_MAX: usize = 16;
/// A request for the same range from the same receiver within this time is skipped.
const REPEAT_WINDOW: Duration = Duration::from_millis(2);

/// Handle of the archive thread.
pub struct Archive {
    requests: SyncSender<ArchiveRequest>,
}

/// What the archive thread needs to write packets of the stream.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// The journal directory.
    pub dir: PathBuf,
    /// Stream id of the packets.
    pub stream_id: u32,
    /// Session of the log.
    pub session_id: u64,
    /// Datagram size.
    pub datagram_size_max: usize,
    /// Local address to send from (the bus interface).
    pub bind: SocketAddr,
    /// Whether (and with which keys) datagrams are sealed, as the live stream's are.
    pub security: BusSecurity,
}

impl Archive {
    /// Starts the archive thread.
    pub fn start(config: ArchiveConfig) -> std::io::Result<Archive> {
        let socket = UdpSocket::bind(SocketAddr::new(config.bind.ip(), 0))?;
        let (requests, queue) = sync_channel::<ArchiveRequest>(QUEUE_MAX);
        // Its own sender instance: a key and counter of its own, so its nonces never
        // meet the hot thread's.
        let mut sealer = match &config.security {
            BusSecurity::None => None,
            BusSecurity::Aead(keys) => Some(Sealer::new(
                keys.clone(),
                SENDER_NODE_ID_ARCHIVE,
                ledgerbus_protocol::auth::random_u64()?,
            )),
        };
        std::thread::Builder::new().name("archive".into()).spawn(move || {
            let mut last: Option<(ArchiveRequest, Instant)> = None;
            let mut frames = Vec::new();
            let mut datagram = vec![0u8; config.datagram_size_max];
            let mut out = Out {
                socket,
                sealer: sealer.take(),
                plain_max: config.datagram_size_max - config.security.overhead(),
            };
            while let Ok(request) = queue.recv() {
                if last.is_some_and(|(previous, at)| previous == request && at.elapsed() < REPEAT_WINDOW) {
                    continue;
                }
                last = Some((request, Instant::now()));
                if let Err(error) = serve(&config, &mut out, request, &mut frames, &mut datagram) {
                    tracing::warn!(%error, to = %request.to, "cannot serve a NAK from the journal");
                }
            }
        })?;
        Ok(Archive { requests })
    }

    /// Queues a request; false when the queue is full (the receiver will ask again).
    pub fn submit(&self, request: ArchiveRequest) -> bool {
        match self.requests.try_send(request) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The archive's way out: its socket and, on a sealed bus, its sealer.
struct Out {
    socket: UdpSocket,
    sealer: Option<Sealer>,
    /// Largest datagram before sealing.
    plain_max: usize,
}

impl Out {
    /// Seals (if the bus is sealed) and sends `datagram[..size]`.
    fn send(&mut self, datagram: &mut [u8], size: usize, to: SocketAddr) -> std::io::Result<()> {
        let size = match &mut self.sealer {
            Some(sealer) => sealer.seal(datagram, size),
            None => size,
        };
        self.socket.send_to(&datagram[..size], to).map(|_| ())
    }
}

/// Reads the range from the journal and sends it, packed like live data; an empty or
/// unreadable range gets "not retransmittable" (everything from `end` is in the ring).
fn serve(
    config: &ArchiveConfig,
    out: &mut Out,
    request: ArchiveRequest,
    frames: &mut Vec<u8>,
    datagram: &mut [u8],
) -> std::io::Result<()> {
    let end = request.end_sequence.min(request.from_sequence + EVENTS_PER_REQUEST_MAX);
    frames.clear();
    let read = read_range(config, request.from_sequence, end, frames);
    if !matches!(read, Ok(count) if count > 0) {
        if let Err(error) = read {
            tracing::warn!(%error, "journal read for a NAK failed");
        }
        let plain_max = out.plain_max;
        let mut writer =
            PacketWriter::control(&mut datagram[..plain_max], config.stream_id, config.session_id);
        let count = u32::try_from(request.end_sequence - request.from_sequence).unwrap_or(u32::MAX);
        writer
            .push(&NakUnavailable {
                from_sequence: request.from_sequence.into(),
                count: count.into(),
                reserved: [0; 4],
                oldest_retained_sequence: request.end_sequence.into(),
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let size = writer.finish(0);
        out.send(datagram, size, request.to)?;
        return Ok(());
    }
    let mut sequence = request.from_sequence;
    let mut pending = ledgerbus_codec::Frames::new(frames).map_while(Result::ok).peekable();
    while pending.peek().is_some() {
        let plain_max = out.plain_max;
        let mut writer =
            PacketWriter::data(&mut datagram[..plain_max], config.stream_id, config.session_id, sequence);
        while let Some(frame) = pending.peek() {
            if writer.push_frame(frame).is_err() {
                break;
            }
            pending.next();
            sequence += 1;
        }
        if writer.message_count() == 0 {
            return Err(std::io::Error::other("a journal frame does not fit a datagram"));
        }
        let size = writer.finish(0);
        out.send(datagram, size, request.to)?;
    }
    Ok(())
}

fn read_range(
    config: &ArchiveConfig,
    from: u64,
    end: u64,
    frames: &mut Vec<u8>,
) -> Result<u64, JournalError> {
    let mut reader = JournalReader::open(&config.dir, from)?;
    let mut frame = Vec::with_capacity(128);
    let mut count = 0;
    while let Some(sequence) = reader.next_frame(&mut frame)? {
        if sequence >= end {
            break;
        }
        frames.extend_from_slice(&frame);
        count += 1;
    }
    Ok(count)
}
