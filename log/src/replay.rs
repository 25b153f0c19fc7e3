//! The bulk replay service: a consumer that is behind (or whose gap left the
//! transport's ring) sends a ReplayRequest over TCP and gets the exact event frames
//! from the journal, then a ReplayEnd. Each client has its own thread reading the
//! segment files with a fixed buffer, so memory stays bounded however long the range.
//!
//! Nothing is served without a credential: the service first sends a Challenge, and
//! the client must answer HMAC-SHA256(replay key, nonce), the replay key being
//! derived from a bus key (see `ledgerbus_transport::security`), and waits for a
//! Welcome before it sends its request. A wrong or missing answer closes the
//! connection with nothing sent but the challenge. After the handshake, the request
//! and the events travel in AES-256-GCM records keyed from the replay key and the
//! challenge ([`crate::sealed_stream`]).

use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledgerbus_codec::messages::{Authenticate, Challenge, ReplayEnd, ReplayRequest, Welcome};
use ledgerbus_codec::{decode, encode, Message};
use ledgerbus_transport::{RecordDirection, ReplayKey};

use crate::sealed_stream::{SealedReader, SealedWriter};
use ledgerbus_protocol::auth;

use crate::head::ReplayHost;
use crate::journal::JournalReader;

/// Replay clients served at once; more are refused (closed) until one finishes.
const CLIENTS_MAX: usize = 32;

/// Accepts replay clients on `listener` until `shutdown` is set.
pub fn serve(
    listener: TcpListener,
    dir: PathBuf,
    keys: Vec<ReplayKey>,
    host: Arc<dyn ReplayHost>,
    shutdown: Arc<AtomicBool>,
) -> io::Result<()> {
    let keys = Arc::new(keys);
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("replay-accept".into()).spawn(move || {
        while !shutdown.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if active.fetch_add(1, Ordering::AcqRel) >= CLIENTS_MAX {
                        active.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(%peer, "too many replay clients; connection refused");
                        continue;
                    }
                    host.served();
                    let dir = dir.clone();
                    let keys = Arc::clone(&keys);
                    let host = Arc::clone(&host);
                    let active = Arc::clone(&active);
                    let spawned = std::thread::Builder::new().name("replay-client".into()).spawn(move || {
                        if let Err(error) = serve_client(stream, &dir, &keys, host.as_ref()) {
                            tracing::warn!(%peer, %error, "replay client ended with an error");
                        }
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                    if spawned.is_err() {
                        tracing::warn!(%peer, "could not start a replay thread");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(error) => {
                    tracing::warn!(%error, "replay accept failed");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    })?;
    Ok(())
}

/// Challenges the client; Ok only if it answered with one of `keys`, with that key
/// and the challenge, from which the connection's record keys are derived.
fn authenticate<'k>(
    stream: &mut TcpStream,
    keys: &'k [ReplayKey],
    host: &dyn ReplayHost,
) -> io::Result<(&'k ReplayKey, [u8; 32])> {
    let nonce = auth::nonce()?;
    let mut challenge = [0u8; Challenge::FRAME_SIZE];
    encode(&Challenge { nonce }, &mut challenge).expect("sized");
    stream.write_all(&challenge)?;
    let mut answer = [0u8; Authenticate::FRAME_SIZE];
    stream.read_exact(&mut answer)?;
    let (answer, _) = decode::<Authenticate>(&answer)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad replay authentication: {e}")))?;
    if let Some(key) = keys.iter().find(|key| auth::verify(&key.0, &nonce, &answer.mac)) {
        // The client sends its request only after this, so a refused client never
        // has unread bytes here (its close is clean, not a reset).
        // The Welcome tells an authenticated client where the log stands.
        let head = host.head();
        let head =
            Welcome { session_id: head.session.into(), next_sequence: (head.last_sequence + 1).into() };
        let mut welcome = [0u8; Welcome::FRAME_SIZE];
        encode(&head, &mut welcome).expect("sized");
        stream.write_all(&welcome)?;
        Ok((key, nonce))
    } else {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "replay client failed authentication"))
    }
}

fn serve_client(
    mut stream: TcpStream,
    dir: &std::path::Path,
    keys: &[ReplayKey],
    host: &dyn ReplayHost,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_nodelay(true)?;
    let (key, challenge) = match authenticate(&mut stream, keys, host) {
        Ok(accepted) => accepted,
        Err(error) => {
            host.refused();
            return Err(error);
        }
    };
    let mut request_bytes = [0u8; ReplayRequest::FRAME_SIZE];
    SealedReader::new(&stream, key.record_opener(&challenge, RecordDirection::ToServer))
        .read_exact(&mut request_bytes)?;
    let (request, _) = decode::<ReplayRequest>(&request_bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad replay request: {e}")))?;
    let from = request.from_sequence.get().max(1);
    // Never past the head: a replicated member's journal may hold events that are
    // not committed yet (and may be cut off); a single sequencer's head is its last
    // durable event.
    let to = match request.to_sequence.get() {
        0 => u64::MAX,
        to => to,
    }
    .min(host.head().last_sequence);
    let mut reader = JournalReader::open(dir, from).map_err(io::Error::other)?;
    let mut out = SealedWriter::new(
        BufWriter::with_capacity(1 << 20, stream),
        key.record_sealer(&challenge, RecordDirection::ToClient),
    );
    let mut frame = Vec::with_capacity(256);
    let mut next = from;
    while next <= to {
        match reader.next_frame(&mut frame).map_err(io::Error::other)? {
            Some(sequence) => {
                if request.session_id.get() != 0 && reader.session_id() != Some(request.session_id.get()) {
                    break;
                }
                out.write_all(&frame)?;
                next = sequence + 1;
            }
            None => break,
        }
    }
    let end = ReplayEnd { session_id: reader.session_id().unwrap_or(0).into(), next_sequence: next.into() };
    let mut bytes = [0u8; ReplayEnd::FRAME_SIZE];
    encode(&end, &mut bytes).expect("sized");
    out.write_all(&bytes)?;
    out.flush()
}
