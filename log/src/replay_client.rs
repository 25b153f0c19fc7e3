//! The blocking client of the bulk replay service: where the log stands (its session
//! and head), and any range of it. Consumers catch up with it; the replay tool reads
//! the log with it.

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ledgerbus_codec::messages::{Authenticate, Challenge, ReplayEnd, ReplayRequest, Welcome};
use ledgerbus_codec::{decode, encode, Frame, Message};

use ledgerbus_transport::{RecordDirection, ReplayKey};

use crate::sealed_stream::{SealedReader, SealedWriter};
use ledgerbus_protocol::auth;
use ledgerbus_protocol::blocking::read_frame;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
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
