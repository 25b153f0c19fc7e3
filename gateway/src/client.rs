//! The async Rust client of the gateway's TCP API.
//!
//! `submit` sends a group of commands (a linked chain stays one group) and resolves
//! to one [`Outcome`] per command. Groups from many callers are pipelined over one
//! connection and written in batches. If the connection drops, the client
//! reconnects and sends every unanswered group again, with the same ids: the ledger
//! answers `exists` for what had already applied, so nothing applies twice.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ledgerbus_codec::messages::{
    ClientHello, CreateAccount, CreateAccountResult, Transfer, TransferResult, Welcome,
};
use ledgerbus_codec::{decode, encode, DecodeError, Message, MessageHeader, ResultCode, MESSAGE_HEADER_SIZE};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A command to send.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Open an account.
    CreateAccount(CreateAccount),
    /// Move money.
    Transfer(Transfer),
}

/// The decided result of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The command's correlation id, echoed.
    pub correlation_id: u64,
    /// Account or transfer id.
    pub id: u128,
    /// The result code.
    pub result: ResultCode,
    /// Event sequence (0 when decided at the edge, e.g. `busy`).
    pub sequence: u64,
    /// Sequencer timestamp.
    pub timestamp_ns: u64,
}

struct Group {
    frames: Vec<u8>,
    count: usize,
    reply: oneshot::Sender<io::Result<Vec<Outcome>>>,
}

struct Unanswered {
    frames: Vec<u8>,
    remaining: usize,
    outcomes: Vec<Outcome>,
    reply: oneshot::Sender<io::Result<Vec<Outcome>>>,
}

/// A connection to a gateway's TCP API; cheap to clone, usable from many tasks.
#[derive(Clone)]
pub struct Client {
    groups: mpsc::Sender<Group>,
}

impl Client {
    /// Connects and authenticates with `api_key`; the connection is kept up (and
    /// re-established) by a background task on the current runtime.
    pub async fn connect(address: SocketAddr, api_key: &str) -> io::Result<Client> {
        let stream = handshake(address, api_key).await?;
        let (groups, receiver) = mpsc::channel(4096);
        tokio::spawn(drive(address, api_key.to_string(), stream, receiver));
        Ok(Client { groups })
    }

    /// Sends commands as one group and waits for their outcomes, in order.
    pub async fn submit(&self, commands: &[Command]) -> io::Result<Vec<Outcome>> {
        let mut frames = Vec::with_capacity(commands.len() * Transfer::FRAME_SIZE);
        for command in commands {
            let mut bytes = [0u8; Transfer::FRAME_SIZE];
            let size = match command {
                Command::CreateAccount(a) => encode(a, &mut bytes),
                Command::Transfer(t) => encode(t, &mut bytes),
            }
            .expect("commands fit their frames");
            frames.extend_from_slice(&bytes[..size]);
        }
        let (reply, outcome) = oneshot::channel();
        self.groups
            .send(Group { frames, count: commands.len(), reply })
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client closed"))?;
        outcome.await.map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client closed"))?
    }
}

async fn handshake(address: SocketAddr, api_key: &str) -> io::Result<TcpStream> {
    if api_key.len() > 64 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "API keys are at most 64 bytes"));
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut key = [0u8; 64];
    key[..api_key.len()].copy_from_slice(api_key.as_bytes());
    let mut hello = [0u8; ClientHello::FRAME_SIZE];
    encode(&ClientHello { api_key: key }, &mut hello).expect("sized");
    stream.write_all(&hello).await?;
    let mut welcome = [0u8; Welcome::FRAME_SIZE];
    stream.read_exact(&mut welcome).await.map_err(|_| {
        io::Error::new(io::ErrorKind::PermissionDenied, "gateway closed the connection: invalid API key?")
    })?;
    decode::<Welcome>(&welcome).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(stream)
}

fn outcome(frame: &[u8]) -> Option<Outcome> {
    let (correlation_id, id, sequence, timestamp_ns, result) =
        if let Ok((v, _)) = decode::<TransferResult>(frame) {
            (v.correlation_id.get(), v.id.get(), v.sequence.get(), v.timestamp_ns.get(), v.result().ok()?)
        } else {
            let (v, _) = decode::<CreateAccountResult>(frame).ok()?;
            (v.correlation_id.get(), v.id.get(), v.sequence.get(), v.timestamp_ns.get(), v.result().ok()?)
        };
    Some(Outcome { correlation_id, id, result, sequence, timestamp_ns })
}

/// Runs the connection: writes groups, matches results in order, reconnects and
/// re-sends what was not answered.
async fn drive(address: SocketAddr, api_key: String, stream: TcpStream, mut groups: mpsc::Receiver<Group>) {
    let mut unanswered: VecDeque<Unanswered> = VecDeque::new();
    let mut stream = Some(stream);
    let mut backoff = Duration::from_millis(20);
    loop {
        let Some(connected) = stream.take() else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            match handshake(address, &api_key).await {
                Ok(s) => {
                    stream = Some(s);
                    backoff = Duration::from_millis(20);
                }
                Err(error) => {
                    tracing::warn!(%address, %error, "gateway reconnect failed");
                    if groups.is_closed() && unanswered.is_empty() {
                        return;
                    }
                }
            }
            continue;
        };
        let (read_half, write_half) = connected.into_split();
        // Reading runs on its own task: `read_exact` is not cancel-safe, so it must
        // never be a branch of the select below; a channel receive is.
        let (frames_tx, mut frames) = mpsc::channel::<Vec<u8>>(4096);
        let reader_task = tokio::spawn(async move {
            let mut reader = BufReader::with_capacity(1 << 20, read_half);
            loop {
                let mut frame = Vec::with_capacity(64);
                if read_result(&mut reader, &mut frame).await.is_err() || frames_tx.send(frame).await.is_err()
                {
                    return;
                }
            }
        });
        let mut writer = BufWriter::with_capacity(1 << 20, write_half);
        // Re-send everything not yet answered, in order, before anything new.
        let mut ok = true;
        for group in unanswered.iter_mut() {
            group.outcomes.clear();
            group.remaining = ledgerbus_codec::Frames::new(&group.frames).count();
            ok &= writer.write_all(&group.frames).await.is_ok();
        }
        if !ok || writer.flush().await.is_err() {
            reader_task.abort();
            continue;
        }
        loop {
            tokio::select! {
                group = groups.recv(), if unanswered.len() < 65_536 => {
                    let Some(group) = group else {
                        if unanswered.is_empty() { return; }
                        continue;
                    };
                    let mut batch = vec![group];
                    while batch.len() < 1024 {
                        match groups.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let mut failed = false;
                    for group in batch {
                        failed |= writer.write_all(&group.frames).await.is_err();
                        unanswered.push_back(Unanswered {
                            frames: group.frames,
                            remaining: group.count,
                            outcomes: Vec::with_capacity(group.count),
                            reply: group.reply,
                        });
                    }
                    if failed || writer.flush().await.is_err() {
                        break;
                    }
                }
                frame = frames.recv() => {
                    let Some(frame) = frame else { break };
                    let Some(front) = unanswered.front_mut() else { break };
                    match outcome(&frame) {
                        Some(result) => front.outcomes.push(result),
                        None => break,
                    }
                    front.remaining -= 1;
                    if front.remaining == 0 {
                        let done = unanswered.pop_front().expect("front exists");
                        let _ = done.reply.send(Ok(done.outcomes));
                    }
                }
            }
        }
        reader_task.abort();
        tracing::warn!(%address, unanswered = unanswered.len(), "gateway connection lost; reconnecting and re-sending");
    }
}

async fn read_result(reader: &mut (impl AsyncReadExt + Unpin), frame: &mut Vec<u8>) -> io::Result<()> {
    frame.resize(MESSAGE_HEADER_SIZE, 0);
    reader.read_exact(frame).await?;
    let size = match MessageHeader::frame_size(frame) {
        Ok(size) => size,
        Err(DecodeError::Truncated { needed, .. }) => needed,
        Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error.to_string())),
    };
    frame.resize(size, 0);
    reader.read_exact(&mut frame[MESSAGE_HEADER_SIZE..]).await?;
    Ok(())
}
