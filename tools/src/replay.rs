//! `ledgerbus replay`: read a range of events from a sequencer's replay service or
//! straight from a journal directory, print it, verify it, or publish it again; and
//! `ledgerbus replay nak`, which sends one NAK and shows what comes back.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ledgerbus_codec::messages::{Nak, StatusMessage};
use ledgerbus_codec::{CrcCheck, Frame, Packet, PacketKind, PacketWriter};
use ledgerbus_ledger::{Ledger, Replica, TransferIds};
use ledgerbus_log::journal::{event_sequence, list_segments, Record, SegmentReader};
use ledgerbus_transport::security::NodeSeal;
use ledgerbus_transport::{BusSecurity, ReplayKey};

/// Where the events come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A running sequencer's replay service, and the credential it asks for.
    Sequencer(SocketAddr, ReplayKey),
    /// A journal directory (a sequencer's or a disk consumer's).
    Journal(PathBuf),
}

/// What a pass over the range found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Events read.
    pub count: u64,
    /// First sequence read.
    pub first_sequence: Option<u64>,
    /// Last sequence read.
    pub last_sequence: Option<u64>,
    /// Missing sequences inside the range.
    pub gaps: u64,
    /// Records whose CRC or framing is bad.
    pub corrupt_frames: u64,
    /// Sessions seen (more than one is an error).
    pub sessions: Vec<String>,
    /// Events that do not apply to the ledger as recorded (only checked from sequence 1).
    pub inconsistent: u64,
    /// Rolling log hash after the last event (the state hash when the range starts at 1).
    pub state_hash: String,
}

impl Summary {
    /// Whether the range is whole and clean.
    pub fn is_clean(&self) -> bool {
        self.gaps == 0 && self.corrupt_frames == 0 && self.sessions.len() <= 1 && self.inconsistent == 0
    }
}

/// Reads `from..=to` (`to` `None` = to the end) and calls `event` for each event in
/// order; problems are counted in the summary rather than stopping the pass.
pub fn read(
    source: &Source,
    from: u64,
    to: Option<u64>,
    mut event: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut checker = Checker {
        core: (from == 1).then(|| Replica::new(Ledger::new())),
        hash: ledgerbus_ledger::RollingHash::EMPTY,
        expected: from,
    };
    let last = to.unwrap_or(u64::MAX);
    match source {
        Source::Sequencer(address, key) => {
            let (_, session) = ledgerbus_log::replay_client::replay(
                *address,
                key,
                0,
                from,
                to.unwrap_or(0),
                |sequence, frame| {
                    checker.check(&mut summary, sequence, frame);
                    event(sequence, frame).map_err(std::io::Error::other)
                },
            )
            .with_context(|| format!("replay from {address}"))?;
            summary.sessions.push(format!("{session:016x}"));
        }
        Source::Journal(dir) => read_journal(dir, from, last, &mut summary, &mut checker, &mut event)?,
    }
    summary.state_hash = format!("{:016x}", checker.hash.value());
    if let Some(last_seen) = summary.last_sequence {
        if to.is_some_and(|to| last_seen < to) {
            summary.gaps += to.unwrap_or(last_seen) - last_seen;
        }
    } else if to.is_some() {
        summary.gaps += to.unwrap_or(from) + 1 - from;
    }
    Ok(summary)
}

struct Checker {
    core: Option<Replica>,
    hash: ledgerbus_ledger::RollingHash,
    expected: u64,
}

impl Checker {
    fn check(&mut self, summary: &mut Summary, sequence: u64, frame: &[u8]) {
        if sequence > self.expected {
            summary.gaps += sequence - self.expected;
        }
        self.expected = sequence + 1;
        summary.count += 1;
        summary.first_sequence.get_or_insert(sequence);
        summary.last_sequence = Some(sequence);
        self.hash.update(frame);
        if let Some(core) = &mut self.core {
            if core.next_sequence() == sequence && core.apply(frame, TransferIds::Remember).is_err() {
                summary.inconsistent += 1;
            }
        }
    }
}

fn read_journal(
    dir: &Path,
    from: u64,
    last: u64,
    summary: &mut Summary,
    checker: &mut Checker,
    event: &mut impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let segments = list_segments(dir)?;
    if segments.is_empty() {
        bail!("{}: no journal segments here", dir.display());
    }
    let start = segments.iter().rposition(|(first, _)| *first <= from).unwrap_or(0);
    for (_, path) in &segments[start..] {
        let mut reader = match SegmentReader::open(path) {
            Ok(reader) => reader,
            Err(error) => {
                tracing::warn!(%error, "unreadable segment");
                summary.corrupt_frames += 1;
                continue;
            }
        };
        let session = format!("{:016x}", reader.session_id());
        if !summary.sessions.contains(&session) {
            summary.sessions.push(session);
        }
        loop {
            match reader.next_record()? {
                Record::End => break,
                Record::Frame(frame) => {
                    let Some(sequence) = event_sequence(frame) else {
                        summary.corrupt_frames += 1;
                        continue;
                    };
                    if sequence < from {
                        continue;
                    }
                    if sequence > last {
                        return Ok(());
                    }
                    let frame = frame.to_vec();
                    checker.check(summary, sequence, &frame);
                    event(sequence, &frame)?;
                }
                Record::Bad { offset, reason, at_tail } => {
                    summary.corrupt_frames += 1;
                    eprintln!(
                        "{}: bad record at offset {offset}: {reason}{}",
                        path.display(),
                        if at_tail { " (tail)" } else { "" }
                    );
                    // A CRC mismatch leaves the length intact: carry on with the next
                    // record. A broken length cannot be stepped over.
                    if reason != "frame CRC mismatch" && reason != "malformed frame" {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Sends one NAK for `from..from+count` to a sequencer's control address and returns
/// a line per reply about that range received within `wait` (retransmitted events, "not
/// retransmittable", datagrams that do not authenticate).
pub fn nak(
    sequencer: SocketAddr,
    security: &BusSecurity,
    session: u64,
    stream: u32,
    from: u64,
    count: u32,
    wait: Duration,
) -> anyhow::Result<Vec<String>> {
    let socket = UdpSocket::bind(if sequencer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    // On a sealed bus the probe seals what it sends and opens what it gets, as a
    // consumer does; the sequencer ignores anything else.
    let mut instance = [0u8; 8];
    getrandom::fill(&mut instance).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let mut seal = NodeSeal::new(security, u32::MAX, u64::from_le_bytes(instance), 65_536);
    let mut send = |buf: &mut [u8], size: usize| -> std::io::Result<()> {
        let size = match &mut seal {
            Some(seal) => seal.seal(buf, size),
            None => size,
        };
        socket.send_to(&buf[..size], sequencer).map(|_| ())
    };
    // Announce ourselves as an observer (window 0: never holds the stream back), so
    // the sequencer will answer our NAK (it ignores NAKs from unknown addresses).
    let mut buf = [0u8; 256];
    let mut writer = PacketWriter::control(&mut buf[..128], stream, session);
    writer.push(&StatusMessage {
        receiver_id: u32::MAX.into(),
        window_events: 0.into(),
        highest_contiguous_sequence: 0.into(),
    })?;
    let size = writer.finish(0);
    send(&mut buf, size)?;
    std::thread::sleep(Duration::from_millis(20));
    let mut writer = PacketWriter::control(&mut buf[..128], stream, session);
    writer.push(&Nak { from_sequence: from.into(), count: count.into(), receiver_id: u32::MAX.into() })?;
    let size = writer.finish(0);
    send(&mut buf, size)?;
    let mut lines = Vec::new();
    let mut datagram = vec![0u8; 65_536];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let Ok((size, _)) = socket.recv_from(&mut datagram) else { continue };
        let plain = match &mut seal {
            Some(seal) => match seal.open(&datagram[..size]) {
                Ok(plain) => plain,
                Err(error) => {
                    lines.push(format!("a datagram that does not authenticate: {error}"));
                    continue;
                }
            },
            None => &datagram[..size],
        };
        let Ok(packet) = Packet::decode(plain, CrcCheck::Verify) else {
            lines.push("a corrupt datagram".into());
            continue;
        };
        match packet.kind() {
            PacketKind::Data => {
                let first = packet.header().first_sequence.get();
                for (index, frame) in packet.frames().map_while(Result::ok).enumerate() {
                    let sequence = first + index as u64;
                    // Live data reaches the probe too: show only what was asked for.
                    if (from..from + u64::from(count)).contains(&sequence) {
                        lines.push(format!("retransmitted {}", crate::format::text(frame)));
                    }
                }
            }
            PacketKind::Control => match packet.control() {
                Ok(Frame::NakUnavailable(reply)) => lines.push(format!(
                    "not retransmittable: {}..{} left the ring; oldest retained is {} (use bulk replay)",
                    reply.from_sequence.get(),
                    reply.from_sequence.get() + u64::from(reply.count.get()),
                    reply.oldest_retained_sequence.get()
                )),
                // Heartbeats say nothing about the NAKed range.
                Ok(Frame::Heartbeat(_)) => {}
                Ok(other) => lines.push(format!("control message {}", other.template_id())),
                Err(error) => lines.push(format!("bad control message: {error}")),
            },
        }
    }
    Ok(lines)
}

/// Writes `bytes` to stdout, treating a closed pipe as the reader being done.
pub fn write_stdout(out: &mut impl Write, bytes: &[u8]) -> anyhow::Result<bool> {
    match out.write_all(bytes) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}
