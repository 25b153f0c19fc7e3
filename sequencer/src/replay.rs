//! The bulk replay service: a consumer that is behind (or whose gap left the
//! transport's ring) sends a ReplayRequest over TCP and gets the exact event frames
//! from the journal, then a ReplayEnd. Each client has its own thread reading the
//! segment files with a fixed buffer, so memory stays bounded however long the range.

use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledgerbus_codec::messages::{ReplayEnd, ReplayRequest};
use ledgerbus_codec::{decode, encode, Message};

use crate::journal::JournalReader;
use crate::metrics::SequencerMetrics;

/// Replay clients served at once; more are refused (closed) until one finishes.
const CLIENTS_MAX: usize = 32;

/// Accepts replay clients on `listener` until `shutdown` is set.
pub fn serve(
    listener: TcpListener,
    dir: PathBuf,
    metrics: Arc<SequencerMetrics>,
    shutdown: Arc<AtomicBool>,
) -> io::Result<()> {
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
                    metrics.replays_total.fetch_add(1, Ordering::Relaxed);
                    let dir = dir.clone();
                    let active = Arc::clone(&active);
                    let spawned = std::thread::Builder::new().name("replay-client".into()).spawn(move || {
                        if let Err(error) = serve_client(stream, &dir) {
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

fn serve_client(mut stream: TcpStream, dir: &std::path::Path) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_nodelay(true)?;
    let mut request_bytes = [0u8; ReplayRequest::FRAME_SIZE];
    stream.read_exact(&mut request_bytes)?;
    let (request, _) = decode::<ReplayRequest>(&request_bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad replay request: {e}")))?;
    let from = request.from_sequence.get().max(1);
    let to = match request.to_sequence.get() {
        0 => u64::MAX,
        to => to,
    };
    let mut reader = JournalReader::open(dir, from).map_err(io::Error::other)?;
    let mut out = BufWriter::with_capacity(1 << 20, stream);
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
