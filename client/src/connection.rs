//! The connection: one per [`Client`], kept up by a background task.
//!
//! `submit` sends a group of commands (a linked chain stays one group) and resolves
//! to one [`Outcome`] per command; [`Client::send`] does the same without waiting,
//! from any thread. Groups from many callers are pipelined over one connection: the
//! caller writes its group to the socket itself, and one task reads the results and
//! completes the callers' futures, so a request crosses no task on its way out and
//! one on its way back. If the connection drops, the client
//! reconnects and sends every unanswered group again, with the same ids: the ledger
//! answers `exists` for what had already applied, so nothing applies twice.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ledgerbus_codec::messages::{
    AccountRecord, ClientHello, HistoryEnd, LookupAccount, LookupHistory, LookupTransfer, Transfer, Welcome,
};
use ledgerbus_codec::{decode, encode, encode_compact, Message, ResultCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::records::{transfer_info, AccountInfo, HistoryPage, TransferInfo};
#[cfg(feature = "tls")]
use crate::tls::TlsClient;
use crate::wire::{drain, whole_frames, Filled, Incoming, Outgoing, Stream};
use crate::{Command, Error};

/// Without the `tls` feature there is no TLS to ask for.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub enum TlsClient {}

/// The decided result of one command (its correlation id and id, the decision's
/// sequence and time stamp; sequence 0 when decided at the edge, e.g. `busy`).
pub type Outcome = ledgerbus_codec::Decided;

/// A group written (or to be written) and not fully answered.
struct Unanswered {
    /// Kept to send again after a reconnect.
    frames: Vec<u8>,
    count: usize,
    answers: Answers,
    _permit: OwnedSemaphorePermit,
}

/// What a group waits for.
enum Answers {
    /// One result per command.
    Outcomes { outcomes: Vec<Outcome>, reply: oneshot::Sender<Result<Vec<Outcome>, Error>> },
    /// One record answering a lookup (the frame, decoded by the caller).
    Record { reply: oneshot::Sender<Result<Vec<u8>, Error>> },
    /// A history page: transfer records up to and including the HistoryEnd.
    Page { frames: Vec<u8>, reply: oneshot::Sender<Result<Vec<u8>, Error>> },
}

/// Groups that may be unanswered at once per client.
const UNANSWERED_MAX: usize = 65_536;

/// The connection as callers and the connection task share it.
#[derive(Default)]
struct ConnState {
    /// None while reconnecting.
    stream: Option<Arc<Stream>>,
    out: Outgoing,
    unanswered: VecDeque<Unanswered>,
    /// Every `Client` handle is gone: finish what is unanswered, then stop.
    closed: bool,
}

struct Conn {
    state: Mutex<ConnState>,
    /// Bytes were left queued, or the handles are gone.
    wake: Notify,
    room: Arc<Semaphore>,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Tells the connection task when the last `Client` clone is dropped.
struct Handle {
    conn: Arc<Conn>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.conn.lock().closed = true;
        self.conn.wake.notify_one();
    }
}

/// A connection to a gateway's TCP API; cheap to clone, usable from many tasks and
/// threads.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// The outcomes of a group sent with [`Client::send`], to be awaited.
pub struct Pending {
    outcomes: oneshot::Receiver<Result<Vec<Outcome>, Error>>,
}

impl Pending {
    /// Waits for the group's outcomes, in command order.
    pub async fn outcomes(self) -> Result<Vec<Outcome>, Error> {
        self.outcomes.await.map_err(|_| Error::Closed)?
    }
}

impl Client {
    /// Connects to the gateway's TCP API at `address` (`"host:port"` or a socket
    /// address) and authenticates with `api_key`; the connection is kept up (and
    /// re-established) by a background task on the current runtime.
    pub async fn connect(address: impl tokio::net::ToSocketAddrs, api_key: &str) -> Result<Client, Error> {
        Client::connect_with(address, api_key, None).await
    }

    /// [`connect`](Self::connect), over TLS when `tls` is given (the gateway runs
    /// with `--tls-cert`).
    pub async fn connect_with(
        address: impl tokio::net::ToSocketAddrs,
        api_key: &str,
        tls: Option<TlsClient>,
    ) -> Result<Client, Error> {
        let address = resolve(address).await?;
        let stream = handshake(address, api_key, tls.as_ref()).await?;
        let conn = Arc::new(Conn {
            state: Mutex::new(ConnState { stream: Some(Arc::new(stream)), ..ConnState::default() }),
            wake: Notify::new(),
            room: Arc::new(Semaphore::new(UNANSWERED_MAX)),
        });
        tokio::spawn(drive(address, api_key.to_string(), tls, Arc::clone(&conn)));
        Ok(Client { handle: Arc::new(Handle { conn }) })
    }

    /// Sends commands as one group and waits for their outcomes, in order; waits for
    /// room first when many groups are unanswered.
    pub async fn submit(&self, commands: &[Command]) -> Result<Vec<Outcome>, Error> {
        let conn = &self.handle.conn;
        let permit = Arc::clone(&conn.room).acquire_owned().await.map_err(|_| Error::Closed)?;
        self.send_with(commands, permit).outcomes().await
    }

    /// Sends commands as one group now, from any thread, without waiting: the bytes
    /// go to the socket from the caller (no task hand-off on the way out). Fails
    /// with `WouldBlock` when too many groups are unanswered.
    pub fn send(&self, commands: &[Command]) -> Result<Pending, Error> {
        let permit = Arc::clone(&self.handle.conn.room)
            .try_acquire_owned()
            .map_err(|_| Error::TooManyUnanswered(UNANSWERED_MAX))?;
        Ok(self.send_with(commands, permit))
    }

    fn send_with(&self, commands: &[Command], permit: OwnedSemaphorePermit) -> Pending {
        let (reply, outcomes) = oneshot::channel();
        if commands.is_empty() {
            // Nothing to send, and nothing will come back to complete it.
            let _ = reply.send(Ok(Vec::new()));
            return Pending { outcomes };
        }
        let frames = encode_commands(commands);
        let conn = &self.handle.conn;
        let mut state = conn.lock();
        // While reconnecting, the group waits in `unanswered` and is sent with the
        // others once connected.
        if let Some(stream) = state.stream.clone() {
            if !matches!(state.out.send(&stream, &frames), Ok(false)) {
                conn.wake.notify_one();
            }
        }
        state.unanswered.push_back(Unanswered {
            frames,
            count: commands.len(),
            answers: Answers::Outcomes { outcomes: Vec::with_capacity(commands.len()), reply },
            _permit: permit,
        });
        Pending { outcomes }
    }

    /// Looks account `id` up in the read model, seeing every command this client
    /// sent before (answered in order on the same connection). `None`: no such
    /// account.
    pub async fn account(&self, id: u128) -> Result<Option<AccountInfo>, Error> {
        let lookup = LookupAccount { correlation_id: 0.into(), id: id.into() };
        let frame = self.lookup(&lookup).await?;
        let (record, _) = decode::<AccountRecord>(&frame).map_err(|e| Error::Protocol(e.to_string()))?;
        match record.result() {
            Ok(ResultCode::Ok) => {}
            Ok(ResultCode::Busy) => return Err(Error::Unavailable),
            other => return Err(Error::Protocol(format!("account record with result {other:?}"))),
        }
        if record.ledger.get() == 0 {
            return Ok(None);
        }
        Ok(Some(AccountInfo {
            id: record.id.get(),
            ledger: record.ledger.get(),
            code: record.code.get(),
            allow_negative: record.flags.get() & ledgerbus_codec::account_flags::ALLOW_NEGATIVE != 0,
            flags: crate::command::AccountFlags::from_bits(record.flags.get()),
            debits_posted: record.debits_posted.get(),
            credits_posted: record.credits_posted.get(),
            debits_pending: record.debits_pending.get(),
            credits_pending: record.credits_pending.get(),
            user_data_128: record.user_data_128.get(),
            user_data_64: record.user_data_64.get(),
            user_data_32: record.user_data_32.get(),
            timestamp_ns: record.timestamp_ns.get(),
            sequence: record.sequence.get(),
        }))
    }

    /// How transfer `id` was decided: applied (`result` ok) or its last refusal,
    /// seeing every command this client sent before. `None`: never decided.
    pub async fn transfer(&self, id: u128) -> Result<Option<TransferInfo>, Error> {
        let lookup = LookupTransfer { correlation_id: 0.into(), id: id.into() };
        let frame = self.lookup(&lookup).await?;
        let info = transfer_info(&frame)?;
        if info.sequence == 0 {
            return if info.result == ResultCode::Busy { Err(Error::Unavailable) } else { Ok(None) };
        }
        Ok(Some(info))
    }

    /// A page of account `account`'s applied transfers in sequence order: the first
    /// with `after` 0, the next with the previous page's `next_after`; at most
    /// `limit` (1 to 1000) per page. Sees every command this client sent before.
    /// `None`: no such account.
    pub async fn history(&self, account: u128, after: u64, limit: u32) -> Result<Option<HistoryPage>, Error> {
        let lookup = LookupHistory {
            correlation_id: 0.into(),
            account_id: account.into(),
            after_sequence: after.into(),
            limit: limit.into(),
            reserved: [0; 4],
        };
        let frames = self.ask(&lookup, |reply| Answers::Page { frames: Vec::new(), reply }).await?;
        let mut transfers = Vec::new();
        for frame in ledgerbus_codec::Frames::new(&frames) {
            let frame = frame.map_err(|e| Error::Protocol(e.to_string()))?;
            if let Ok((end, _)) = decode::<HistoryEnd>(frame) {
                return match end.result().map_err(|e| Error::Protocol(e.to_string()))? {
                    ResultCode::Ok => {
                        let next = end.next_after.get();
                        Ok(Some(HistoryPage { transfers, next_after: (next != 0).then_some(next) }))
                    }
                    ResultCode::DebitAccountNotFound => Ok(None),
                    ResultCode::Busy => Err(Error::Unavailable),
                    other => Err(Error::Protocol(format!("history page ended with {other:?}"))),
                };
            }
            transfers.push(transfer_info(frame)?);
        }
        Err(Error::Protocol("a history page without its end".into()))
    }

    /// Sends one lookup frame in line with the commands and waits for its record.
    async fn lookup<M: Message>(&self, lookup: &M) -> Result<Vec<u8>, Error> {
        self.ask(lookup, |reply| Answers::Record { reply }).await
    }

    /// Sends one lookup frame in line with the commands and waits for its answer.
    async fn ask<M: Message>(
        &self,
        lookup: &M,
        answers: impl FnOnce(oneshot::Sender<Result<Vec<u8>, Error>>) -> Answers,
    ) -> Result<Vec<u8>, Error> {
        let conn = &self.handle.conn;
        let permit = Arc::clone(&conn.room).acquire_owned().await.map_err(|_| Error::Closed)?;
        let mut frames = vec![0u8; M::FRAME_SIZE];
        encode(lookup, &mut frames).expect("sized");
        let (reply, answer) = oneshot::channel();
        {
            let mut state = conn.lock();
            if let Some(stream) = state.stream.clone() {
                if !matches!(state.out.send(&stream, &frames), Ok(false)) {
                    conn.wake.notify_one();
                }
            }
            state.unanswered.push_back(Unanswered {
                frames,
                count: 1,
                answers: answers(reply),
                _permit: permit,
            });
        }
        answer.await.map_err(|_| Error::Closed)?
    }
}

/// The commands' frames, each in the oldest schema version that carries it: a plain
/// transfer is the 72-byte version 1 block, as fewer bytes to send and to forward.
fn encode_commands(commands: &[Command]) -> Vec<u8> {
    let mut frames = Vec::with_capacity(commands.len() * Transfer::FRAME_SIZE);
    for command in commands {
        let mut bytes = [0u8; Transfer::FRAME_SIZE];
        let size = match command {
            Command::CreateAccount(a) => encode_compact(a, &mut bytes),
            Command::Transfer(t) => encode_compact(t, &mut bytes),
        }
        .expect("commands fit their frames");
        frames.extend_from_slice(&bytes[..size]);
    }
    frames
}

/// The first address `address` resolves to.
async fn resolve(address: impl tokio::net::ToSocketAddrs) -> Result<SocketAddr, Error> {
    let mut resolved = tokio::net::lookup_host(address)
        .await
        .map_err(|source| Error::Connect { address: "the gateway".into(), source })?;
    resolved.next().ok_or_else(|| Error::Connect {
        address: "the gateway".into(),
        source: io::Error::new(io::ErrorKind::NotFound, "the address resolved to nothing"),
    })
}

async fn handshake(address: SocketAddr, api_key: &str, tls: Option<&TlsClient>) -> Result<Stream, Error> {
    if api_key.len() > 64 {
        return Err(Error::Invalid("API keys are at most 64 bytes".into()));
    }
    let connected = async {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        match tls {
            None => Ok::<_, io::Error>(Stream::Tcp(stream)),
            #[cfg(feature = "tls")]
            Some(tls) => Ok(Stream::Bridged(tls.connect_bridged(stream).await?)),
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        }
    };
    let mut stream = tokio::time::timeout(Duration::from_secs(5), connected)
        .await
        .map_err(|_| Error::Timeout("connecting"))?
        .map_err(|source| Error::Connect { address: address.to_string(), source })?;
    hello(&mut stream, api_key).await?;
    Ok(stream)
}

/// Sends the ClientHello and reads the Welcome.
async fn hello(stream: &mut Stream, api_key: &str) -> Result<(), Error> {
    match stream {
        Stream::Tcp(s) => hello_on(s, api_key).await,
        Stream::Bridged(s) => hello_on(s, api_key).await,
    }
}

async fn hello_on<S>(stream: &mut S, api_key: &str) -> Result<(), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut key = [0u8; 64];
    key[..api_key.len()].copy_from_slice(api_key.as_bytes());
    let mut hello = [0u8; ClientHello::FRAME_SIZE];
    encode(&ClientHello { api_key: key }, &mut hello).expect("sized");
    stream.write_all(&hello).await?;
    let mut welcome = [0u8; Welcome::FRAME_SIZE];
    stream.read_exact(&mut welcome).await.map_err(|_| Error::Refused)?;
    decode::<Welcome>(&welcome).map_err(|e| Error::Protocol(format!("expected a Welcome: {e}")))?;
    Ok(())
}

/// Keeps the connection: hands out results, drains queued bytes, and after a drop
/// reconnects and sends every unanswered group again, in order.
async fn drive(address: SocketAddr, api_key: String, tls: Option<TlsClient>, conn: Arc<Conn>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let stream = conn.lock().stream.clone();
        if let Some(stream) = stream {
            match serve(&conn, &stream).await {
                Ok(()) => return,
                Err(error) => {
                    let mut state = conn.lock();
                    state.stream = None;
                    state.out.clear();
                    tracing::warn!(%address, %error, unanswered = state.unanswered.len(),
                        "gateway connection lost; reconnecting and re-sending");
                }
            }
        }
        {
            let state = conn.lock();
            if state.closed && state.unanswered.is_empty() {
                return;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
        match handshake(address, &api_key, tls.as_ref()).await {
            Ok(stream) => {
                backoff = Duration::from_millis(20);
                let stream = Arc::new(stream);
                let mut state = conn.lock();
                let state = &mut *state;
                for group in state.unanswered.iter_mut() {
                    match &mut group.answers {
                        Answers::Outcomes { outcomes, .. } => outcomes.clear(),
                        Answers::Page { frames, .. } => frames.clear(),
                        Answers::Record { .. } => {}
                    }
                    state.out.queue(&group.frames);
                }
                state.stream = Some(stream);
                conn.wake.notify_one();
            }
            Err(error) => tracing::warn!(%address, %error, "gateway reconnect failed"),
        }
    }
}

/// Until the connection fails (`Err`) or every handle is gone and every group is
/// answered (`Ok`).
async fn serve(conn: &Conn, stream: &Stream) -> io::Result<()> {
    let reading = async {
        let mut incoming = Incoming::with_capacity(1 << 20);
        loop {
            stream.readable().await?;
            match incoming.fill(stream)? {
                Filled::Closed => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gateway closed"))
                }
                Filled::Nothing => continue,
                Filled::Bytes => {}
            }
            let (length, _) = whole_frames(incoming.bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            answer(conn, &incoming.bytes()[..length])?;
            incoming.consume(length);
        }
    };
    let draining = async {
        loop {
            conn.wake.notified().await;
            {
                let state = conn.lock();
                if state.closed && state.unanswered.is_empty() {
                    return Ok(());
                }
            }
            drain(stream, || conn.lock().out.flush(stream)).await?;
        }
    };
    tokio::select! {
        outcome = reading => outcome,
        outcome = draining => outcome,
    }
}

/// Matches result frames to the unanswered groups, in order.
fn answer(conn: &Conn, results: &[u8]) -> io::Result<()> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut state = conn.lock();
    for frame in ledgerbus_codec::Frames::new(results) {
        let frame = frame.map_err(|e| invalid(&e.to_string()))?;
        let front = state.unanswered.front_mut().ok_or_else(|| invalid("a result nobody asked for"))?;
        let done = match &mut front.answers {
            Answers::Outcomes { outcomes, .. } => {
                outcomes.push(Outcome::read(frame).ok_or_else(|| invalid("not a result frame"))?);
                outcomes.len() == front.count
            }
            Answers::Page { frames, .. } => {
                frames.extend_from_slice(frame);
                match ledgerbus_codec::Frame::decode(frame) {
                    Ok((ledgerbus_codec::Frame::HistoryEnd(_), _)) => true,
                    Ok((ledgerbus_codec::Frame::TransferRecord(_), _)) => false,
                    _ => return Err(invalid("not a history frame")),
                }
            }
            Answers::Record { .. } => {
                let is_record = matches!(
                    ledgerbus_codec::Frame::decode(frame),
                    Ok((
                        ledgerbus_codec::Frame::AccountRecord(_) | ledgerbus_codec::Frame::TransferRecord(_),
                        _
                    ))
                );
                if !is_record {
                    return Err(invalid("not a record frame"));
                }
                true
            }
        };
        if done {
            let group = state.unanswered.pop_front().expect("front exists");
            match group.answers {
                Answers::Outcomes { outcomes, reply } => {
                    let _ = reply.send(Ok(outcomes));
                }
                Answers::Record { reply } => {
                    let _ = reply.send(Ok(frame.to_vec()));
                }
                Answers::Page { frames, reply } => {
                    let _ = reply.send(Ok(frames));
                }
            }
        }
    }
    if state.closed && state.unanswered.is_empty() {
        conn.wake.notify_one();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_group_is_answered_at_once_and_does_not_disturb_the_order() {
        // A gateway stand-in that accepts the handshake and then stays silent.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; ClientHello::FRAME_SIZE];
            stream.read_exact(&mut hello).await.unwrap();
            let mut welcome = [0u8; Welcome::FRAME_SIZE];
            encode(&Welcome { session_id: 1.into(), next_sequence: 0.into() }, &mut welcome).unwrap();
            stream.write_all(&welcome).await.unwrap();
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
            sink.len()
        });
        let client = Client::connect(address, "key").await.unwrap();
        let outcomes =
            tokio::time::timeout(Duration::from_secs(5), client.submit(&[])).await.unwrap().unwrap();
        assert!(outcomes.is_empty());
        assert!(client.handle.conn.lock().unanswered.is_empty(), "nothing waits for an answer");
        drop(client);
        assert_eq!(server.await.unwrap(), 0, "nothing was sent");
    }
}
