//! The TCP binary API: SBE frames, pipelined. A client sends ClientHello with its
//! API key, gets Welcome, then streams CreateAccount/Transfer frames with its own
//! correlation ids; results come back in the same order with those ids. Commands
//! are forwarded in groups that never split a linked chain. A full gateway queue or
//! an unreachable sequencer answers each command with a `busy` result (retry with
//! the same ids is safe).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ledgerbus_codec::messages::{ClientHello, CreateAccountResult, TransferResult, Welcome};
use ledgerbus_codec::{decode, encode, transfer_flags, DecodeError, Frame, Message, ResultCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::upstream::{SubmitError, Ticket, Upstream};

/// Submissions in flight per client connection before we stop reading from it.
const IN_FLIGHT_MAX: usize = 256;
/// Read buffer per client.
const BUFFER_SIZE: usize = 1 << 20;

/// Accepts TCP clients forever.
pub async fn serve(listener: TcpListener, upstream: Upstream, api_keys: Arc<HashSet<String>>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let upstream = upstream.clone();
                let keys = Arc::clone(&api_keys);
                tokio::spawn(async move {
                    if let Err(reason) = client(stream, upstream, keys).await {
                        tracing::info!(%peer, %reason, "TCP client closed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Results of one submission (or why there are none).
type Pending = Result<Ticket, SubmitError>;

async fn client(stream: TcpStream, upstream: Upstream, keys: Arc<HashSet<String>>) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut reader, writer) = stream.into_split();
    let mut hello = [0u8; ClientHello::FRAME_SIZE];
    tokio::time::timeout(Duration::from_secs(5), reader.read_exact(&mut hello))
        .await
        .map_err(|_| "no ClientHello within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let (hello, _) = decode::<ClientHello>(&hello).map_err(|e| format!("expected ClientHello: {e}"))?;
    let key_len = hello.api_key.iter().position(|&b| b == 0).unwrap_or(hello.api_key.len());
    let key = std::str::from_utf8(&hello.api_key[..key_len]).unwrap_or("");
    if !keys.contains(key) {
        return Err("invalid API key".into());
    }
    let (results_tx, results_rx) = mpsc::channel::<(Pending, Vec<u8>)>(IN_FLIGHT_MAX);
    let writer_task = tokio::spawn(write_results(writer, results_rx, upstream.session()));
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut len = 0;
    let outcome = loop {
        let read = match reader.read(&mut buf[len..]).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e.to_string()),
        };
        len += read;
        let (group_end, error) = complete_groups(&buf[..len]);
        if let Some(error) = error {
            break Err(format!("malformed frame: {error}"));
        }
        if group_end > 0 {
            let frames = buf[..group_end].to_vec();
            let count = ledgerbus_codec::Frames::new(&frames).count();
            // Enqueue in order; the writer awaits the results in the same order.
            let ticket = upstream.enqueue(frames.clone(), count).await;
            if results_tx.send((ticket, frames)).await.is_err() {
                break Err("writer closed".into());
            }
            buf.copy_within(group_end..len, 0);
            len -= group_end;
        } else if len == buf.len() {
            break Err("a linked chain longer than the read buffer".into());
        }
    };
    drop(results_tx);
    let _ = writer_task.await;
    outcome
}

/// How many leading bytes of `bytes` are whole commands that do not end inside a
/// linked chain; and a framing error, if the bytes are not ledgerbus commands.
fn complete_groups(bytes: &[u8]) -> (usize, Option<String>) {
    let mut offset = 0;
    let mut group_end = 0;
    while offset < bytes.len() {
        match Frame::decode(&bytes[offset..]) {
            Ok((Frame::CreateAccount(_), size)) => {
                offset += size;
                group_end = offset;
            }
            Ok((Frame::Transfer(transfer), size)) => {
                offset += size;
                if transfer.flags.get() & transfer_flags::LINKED == 0 {
                    group_end = offset;
                }
            }
            Err(DecodeError::Truncated { .. }) => break,
            Ok((other, _)) => {
                return (group_end, Some(format!("template {} is not a command", other.template_id())))
            }
            Err(error) => return (group_end, Some(error.to_string())),
        }
    }
    (group_end, None)
}

async fn write_results(
    writer: tokio::net::tcp::OwnedWriteHalf,
    mut results: mpsc::Receiver<(Pending, Vec<u8>)>,
    session: u64,
) {
    let mut writer = BufWriter::with_capacity(1 << 20, writer);
    let mut welcome = [0u8; Welcome::FRAME_SIZE];
    encode(&Welcome { session_id: session.into(), next_sequence: 0.into() }, &mut welcome).expect("sized");
    if writer.write_all(&welcome).await.is_err() || writer.flush().await.is_err() {
        return;
    }
    while let Some((pending, commands)) = results.recv().await {
        let outcome = match pending {
            Ok(ticket) => ticket.results().await,
            Err(error) => Err(error),
        };
        let written = match outcome {
            Ok(replies) => {
                let mut ok = true;
                for reply in &replies {
                    ok &= writer.write_all(reply).await.is_ok();
                }
                ok
            }
            Err(_) => write_busy(&mut writer, &commands).await,
        };
        // Flush when nothing else is ready, so results of a pipelined burst share writes.
        if !written || (results.is_empty() && writer.flush().await.is_err()) {
            return;
        }
    }
    let _ = writer.flush().await;
}

/// Answers every command in `commands` with a `busy` result.
async fn write_busy(writer: &mut BufWriter<tokio::net::tcp::OwnedWriteHalf>, commands: &[u8]) -> bool {
    for frame in ledgerbus_codec::Frames::new(commands).map_while(Result::ok) {
        let mut reply = [0u8; TransferResult::FRAME_SIZE];
        match Frame::decode(frame) {
            Ok((Frame::Transfer(t), _)) => {
                let result = TransferResult {
                    correlation_id: t.correlation_id,
                    id: t.id,
                    sequence: 0.into(),
                    timestamp_ns: 0.into(),
                    result: ResultCode::Busy.to_wire().into(),
                    reserved: [0; 6],
                };
                encode(&result, &mut reply).expect("sized");
            }
            Ok((Frame::CreateAccount(a), _)) => {
                let result = CreateAccountResult {
                    correlation_id: a.correlation_id,
                    id: a.id,
                    sequence: 0.into(),
                    timestamp_ns: 0.into(),
                    result: ResultCode::Busy.to_wire().into(),
                    reserved: [0; 6],
                };
                encode(&result, &mut reply).expect("sized");
            }
            _ => continue,
        }
        if writer.write_all(&reply).await.is_err() {
            return false;
        }
    }
    true
}
