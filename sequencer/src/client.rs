//! Blocking clients of the sequencer's TCP services: the gateway protocol
//! (handshake, commands, results) and bulk replay. Used by tests, benchmarks and
//! tools; the gateway has its own asynchronous connection.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ledgerbus_codec::messages::{Authenticate, Challenge, ReplayEnd, ReplayRequest, Welcome};
use ledgerbus_codec::{decode, encode, Frame, Message, MessageHeader, MESSAGE_HEADER_SIZE};

use ledgerbus_transport::{RecordDirection, ReplayKey};

use crate::auth;
use crate::sealed_stream::{SealedReader, SealedWriter};

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one whole frame into `buf` (header + block) and returns its length.
pub fn read_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.resize(MESSAGE_HEADER_SIZE, 0);
    reader.read_exact(&mut buf[..MESSAGE_HEADER_SIZE])?;
    let size = match MessageHeader::frame_size(buf) {
        Ok(size) => size,
        Err(ledgerbus_codec::DecodeError::Truncated { needed, .. }) => needed,
        Err(error) => return Err(invalid(error.to_string())),
    };
    buf.resize(size, 0);
    reader.read_exact(&mut buf[MESSAGE_HEADER_SIZE..size])?;
    Ok(size)
}

/// An authenticated connection to the sequencer's gateway port.
pub struct SequencerClient {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    /// The sequencer's session.
    pub session_id: u64,
    /// The sequence of the next event at connect time.
    pub next_sequence: u64,
    buf: Vec<u8>,
}

impl SequencerClient {
    /// Connects and answers the challenge with `secret`.
    pub fn connect(address: SocketAddr, secret: &[u8], gateway_id: u32) -> io::Result<SequencerClient> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::with_capacity(1 << 20, stream.try_clone()?);
        let mut writer = BufWriter::with_capacity(1 << 20, stream);
        let mut buf = Vec::with_capacity(256);
        read_frame(&mut reader, &mut buf)?;
        let (challenge, _) =
            decode::<Challenge>(&buf).map_err(|e| invalid(format!("expected a challenge: {e}")))?;
        let answer = Authenticate {
            gateway_id: gateway_id.into(),
            reserved: [0; 4],
            mac: auth::answer(secret, &challenge.nonce),
        };
        let mut bytes = [0u8; Authenticate::FRAME_SIZE];
        encode(&answer, &mut bytes).expect("sized");
        writer.write_all(&bytes)?;
        writer.flush()?;
        read_frame(&mut reader, &mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "sequencer closed the connection: wrong secret?",
                )
            } else {
                e
            }
        })?;
        let (welcome, _) = decode::<Welcome>(&buf).map_err(|e| invalid(format!("expected welcome: {e}")))?;
        Ok(SequencerClient {
            session_id: welcome.session_id.get(),
            next_sequence: welcome.next_sequence.get(),
            reader,
            writer,
            buf,
        })
    }

    /// Queues a command (sent on `flush`).
    pub fn send<M: Message>(&mut self, command: &M) -> io::Result<()> {
        let mut bytes = [0u8; 256];
        let size = encode(command, &mut bytes).map_err(|e| invalid(e.to_string()))?;
        self.writer.write_all(&bytes[..size])
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Reads the next reply frame.
    pub fn read_reply(&mut self) -> io::Result<&[u8]> {
        let size = read_frame(&mut self.reader, &mut self.buf)?;
        Ok(&self.buf[..size])
    }
}

/// The session a sequencer's replay service serves: a replay of an empty range, so
/// the service only reads a segment header.
pub fn sequencer_session(address: SocketAddr, key: &ReplayKey) -> io::Result<u64> {
    let (_, session) = replay(address, key, 0, u64::MAX, u64::MAX - 1, |_, _| Ok(()))?;
    Ok(session)
}

/// Where a sequencer's log stands, as its replay service says after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayHead {
    /// The log's session.
    pub session_id: u64,
    /// The sequence the next event will get (everything before is durable).
    pub next_sequence: u64,
}

/// Where the sequencer's log stands (a handshake and an empty replay).
pub fn sequencer_head(address: SocketAddr, key: &ReplayKey) -> io::Result<ReplayHead> {
    let mut head = None;
    replay_inner(address, key, 0, u64::MAX, u64::MAX - 1, &mut head, |_, _| Ok(()))?;
    head.ok_or_else(|| invalid("no welcome from the replay service"))
}

/// Answers the replay service's challenge with `key`; returns the challenge, from
/// which the connection's record keys are derived, and the head the service reported.
fn authenticate_replay(stream: &mut TcpStream, key: &ReplayKey) -> io::Result<([u8; 32], ReplayHead)> {
    let mut buf = Vec::with_capacity(64);
    let not_replay = |e: &dyn std::fmt::Display| {
        invalid(format!(
            "{e}: this is not a ledgerbus replay service (the sequencer's --replay-listen, 127.0.0.1:7002 by default)"
        ))
    };
    // A connection that drops here is a sequencer going away or restarting (retried by
    // the caller): keep its kind. Bytes that are not a challenge are the wrong port.
    read_frame(stream, &mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => not_replay(&e),
        _ => e,
    })?;
    let nonce = decode::<Challenge>(&buf).map_err(|e| not_replay(&e))?.0.nonce;
    let answer = Authenticate { gateway_id: 0.into(), reserved: [0; 4], mac: auth::answer(&key.0, &nonce) };
    let mut bytes = [0u8; Authenticate::FRAME_SIZE];
    encode(&answer, &mut bytes).expect("sized");
    stream.write_all(&bytes)?;
    read_frame(stream, &mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the replay service refused the credential: a wrong bus key (LEDGERBUS_BUS_KEY), or not the \
             sequencer's replay port (this may be its gateway port)",
        ),
        _ => e,
    })?;
    let (welcome, _) =
        decode::<Welcome>(&buf).map_err(|e| invalid(format!("expected the replay welcome: {e}")))?;
    Ok((
        nonce,
        ReplayHead { session_id: welcome.session_id.get(), next_sequence: welcome.next_sequence.get() },
    ))
}

/// Replays `from..=to` (`to` 0: up to the head) from a sequencer's replay service,
/// calling `event(sequence, frame)` for each event. Returns the ReplayEnd's next
/// sequence and session.
pub fn replay(
    address: SocketAddr,
    key: &ReplayKey,
    session_id: u64,
    from: u64,
    to: u64,
    event: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<(u64, u64)> {
    replay_inner(address, key, session_id, from, to, &mut None, event)
}

fn replay_inner(
    address: SocketAddr,
    key: &ReplayKey,
    session_id: u64,
    from: u64,
    to: u64,
    head: &mut Option<ReplayHead>,
    mut event: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<(u64, u64)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (challenge, welcome) = authenticate_replay(&mut stream, key)?;
    *head = Some(welcome);
    let request =
        ReplayRequest { session_id: session_id.into(), from_sequence: from.into(), to_sequence: to.into() };
    let mut bytes = [0u8; ReplayRequest::FRAME_SIZE];
    encode(&request, &mut bytes).expect("sized");
    let mut out = SealedWriter::new(&stream, key.record_sealer(&challenge, RecordDirection::ToServer));
    out.write_all(&bytes)?;
    out.flush()?;
    let mut reader = SealedReader::new(
        BufReader::with_capacity(1 << 20, &stream),
        key.record_opener(&challenge, RecordDirection::ToClient),
    );
    let mut buf = Vec::with_capacity(256);
    loop {
        let size = read_frame(&mut reader, &mut buf)?;
        match Frame::decode(&buf[..size]) {
            Ok((Frame::ReplayEnd(end), _)) => {
                let end: ReplayEnd = end.to_block();
                return Ok((end.next_sequence.get(), end.session_id.get()));
            }
            Ok((frame, _)) => match frame.event_sequence() {
                Some(sequence) => event(sequence, &buf[..size])?,
                None => {
                    return Err(invalid(format!("unexpected template {} in replay", frame.template_id())))
                }
            },
            Err(error) => return Err(invalid(format!("bad frame in replay: {error}"))),
        }
    }
}
