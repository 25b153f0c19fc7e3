//! Replication links between group members: TCP, authenticated and encrypted.
//!
//! Each member dials every other member and sends it Raft messages on that
//! connection; it receives on the connections the others dialled. A connection opens
//! with the acceptor's fresh 32-byte challenge; the dialler answers with a hello
//! (`LBGROUP1`, group tag, its id, the acceptor's id, and an HMAC-SHA256 of the
//! challenge keyed with the group key, the tag and both ids). A member of another
//! group, with another key, or claiming another id, gets the connection closed and
//! nothing else. After the hello every message travels in AES-256-GCM records keyed
//! from the group key and the challenge (`ledgerbus_log::sealed_stream`), as
//! `[length u32][protobuf]`.
//!
//! The hot thread never blocks on a peer: outgoing messages go into a bounded queue
//! per peer (a full queue drops the message; Raft re-sends what matters), incoming
//! ones come through one bounded queue and a wake-up descriptor the hot thread polls.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use ledgerbus_log::sealed_stream::{SealedReader, SealedWriter};
use ledgerbus_protocol::auth;
use ledgerbus_transport::{RecordDirection, ReplayKey};
use protobuf::Message as _;
use raft::eraftpb::Message;

/// Messages queued per outgoing link.
const OUTBOUND_QUEUE: usize = 4_096;
/// Messages queued from all incoming links.
const INBOUND_QUEUE: usize = 16_384;
/// Largest message accepted (a Raft append of a few batches).
const MESSAGE_SIZE_MAX: usize = 64 << 20;
const HELLO_MAGIC: &[u8; 8] = b"LBGROUP1";
const HELLO_SIZE: usize = 8 + 8 + 8 + 8 + 32;

/// Who this member is and who the others are.
#[derive(Clone)]
pub struct PeerConfig {
    /// This member's id (1-based).
    pub id: u64,
    /// Every member's replication address, by id (`addresses[id - 1]`).
    pub addresses: Vec<SocketAddr>,
    /// Keys accepted from diallers (rotation); the first is the one this member dials with.
    pub keys: Vec<ReplayKey>,
    /// Names the group (from its members' addresses): a member of another group with
    /// the same key is still refused.
    pub group_tag: u64,
}

/// The running links.
pub struct PeerNet {
    outbound: Vec<Option<SyncSender<Message>>>,
    inbound: Receiver<Message>,
    wake: UnixStream,
    /// Messages dropped because a link's queue was full.
    pub dropped: u64,
}

impl PeerNet {
    /// Starts accepting on `listener` and dialling every other member.
    pub fn start(
        config: PeerConfig,
        listener: TcpListener,
        shutdown: Arc<AtomicBool>,
    ) -> io::Result<PeerNet> {
        let (inbound_tx, inbound) = sync_channel(INBOUND_QUEUE);
        let (wake, signal) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        signal.set_nonblocking(true)?;
        let signal = Arc::new(signal);
        {
            let config = config.clone();
            let shutdown = Arc::clone(&shutdown);
            let signal = Arc::clone(&signal);
            std::thread::Builder::new()
                .name("group-accept".into())
                .spawn(move || accept_loop(listener, config, inbound_tx, signal, shutdown))?;
        }
        let mut outbound = Vec::with_capacity(config.addresses.len());
        for (index, address) in config.addresses.iter().enumerate() {
            let peer = index as u64 + 1;
            if peer == config.id {
                outbound.push(None);
                continue;
            }
            let (tx, rx) = sync_channel(OUTBOUND_QUEUE);
            let config = config.clone();
            let shutdown = Arc::clone(&shutdown);
            let address = *address;
            std::thread::Builder::new()
                .name(format!("group-send-{peer}"))
                .spawn(move || send_loop(address, peer, &config, rx, &shutdown))?;
            outbound.push(Some(tx));
        }
        Ok(PeerNet { outbound, inbound, wake, dropped: 0 })
    }

    /// Queues `message` for its peer; drops it if that link is backed up.
    pub fn send(&mut self, message: Message) {
        let Some(Some(link)) = message.to.checked_sub(1).and_then(|i| self.outbound.get(i as usize)) else {
            return;
        };
        match link.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped += 1,
        }
    }

    /// The next message received, if any.
    pub fn try_recv(&self) -> Option<Message> {
        self.inbound.try_recv().ok()
    }

    /// Readable when messages arrived; [`PeerNet::clear_wake`] before draining.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Empties the wake-up descriptor.
    pub fn clear_wake(&mut self) {
        let mut sink = [0u8; 256];
        while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
    }
}

/// The HMAC key of a hello: the group key bound to the group and both ids.
fn hello_key(key: &ReplayKey, group_tag: u64, from: u64, to: u64) -> Vec<u8> {
    let mut material = Vec::with_capacity(56);
    material.extend_from_slice(&key.0);
    material.extend_from_slice(&group_tag.to_le_bytes());
    material.extend_from_slice(&from.to_le_bytes());
    material.extend_from_slice(&to.to_le_bytes());
    material
}

fn accept_loop(
    listener: TcpListener,
    config: PeerConfig,
    inbound: SyncSender<Message>,
    signal: Arc<UnixStream>,
    shutdown: Arc<AtomicBool>,
) {
    if listener.set_nonblocking(true).is_err() {
        tracing::error!("group listener cannot be made non-blocking");
        return;
    }
    while !shutdown.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let config = config.clone();
                let inbound = inbound.clone();
                let signal = Arc::clone(&signal);
                let shutdown = Arc::clone(&shutdown);
                let spawned = std::thread::Builder::new().name("group-receive".into()).spawn(move || {
                    if let Err(error) = receive(stream, &config, &inbound, &signal, &shutdown) {
                        tracing::debug!(%peer, %error, "group link closed");
                    }
                });
                if spawned.is_err() {
                    tracing::warn!(%peer, "could not start a group link thread");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => {
                tracing::warn!(%error, "group accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// One incoming link: the handshake, then messages until it closes.
fn receive(
    mut stream: TcpStream,
    config: &PeerConfig,
    inbound: &SyncSender<Message>,
    signal: &UnixStream,
    shutdown: &AtomicBool,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let challenge = auth::nonce()?;
    stream.write_all(&challenge)?;
    let mut hello = [0u8; HELLO_SIZE];
    stream.read_exact(&mut hello)?;
    let word = |range: std::ops::Range<usize>| u64::from_le_bytes(hello[range].try_into().expect("8 bytes"));
    let (tag, from, to) = (word(8..16), word(16..24), word(24..32));
    let mac: [u8; 32] = hello[32..].try_into().expect("32 bytes");
    let key = config
        .keys
        .iter()
        .find(|key| auth::verify(&hello_key(key, config.group_tag, from, to), &challenge, &mac));
    let known = from != config.id && from >= 1 && from as usize <= config.addresses.len();
    let Some(key) =
        key.filter(|_| &hello[..8] == HELLO_MAGIC && tag == config.group_tag && to == config.id && known)
    else {
        tracing::warn!(peer = ?stream.peer_addr().ok(), "group link refused: wrong key, group or member id");
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "group link refused"));
    };
    tracing::info!(from, "group link from member established");
    // Idle links carry heartbeats every few ticks; a minute of silence is a dead peer.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader =
        SealedReader::new(BufReader::new(stream), key.record_opener(&challenge, RecordDirection::ToServer));
    let mut buf = Vec::new();
    while !shutdown.load(Ordering::Acquire) {
        let mut length = [0u8; 4];
        reader.read_exact(&mut length)?;
        let length = u32::from_le_bytes(length) as usize;
        if length > MESSAGE_SIZE_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "group message too large"));
        }
        buf.resize(length, 0);
        reader.read_exact(&mut buf)?;
        let message =
            Message::parse_from_bytes(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if message.from != from || message.to != config.id {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a message not from the link's member"));
        }
        if inbound.send(message).is_err() {
            return Ok(());
        }
        let _ = (&*signal).write(&[1]);
    }
    Ok(())
}

/// One outgoing link: dial, hello, then send queued messages; redial on failure.
fn send_loop(
    address: SocketAddr,
    peer: u64,
    config: &PeerConfig,
    queue: Receiver<Message>,
    shutdown: &AtomicBool,
) {
    let mut backoff = Duration::from_millis(20);
    while !shutdown.load(Ordering::Acquire) {
        match dial(address, peer, config) {
            Ok(writer) => {
                backoff = Duration::from_millis(20);
                tracing::info!(peer, %address, "group link to member established");
                match pump(writer, &queue, shutdown) {
                    Ok(()) => return,
                    Err(error) => tracing::debug!(peer, %error, "group link to member lost"),
                }
            }
            Err(error) => {
                tracing::debug!(peer, %address, %error, "group member unreachable");
                // Messages queued meanwhile are stale: Raft sends fresh ones.
                while queue.try_recv().is_ok() {}
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

type LinkWriter = SealedWriter<BufWriter<TcpStream>>;

fn dial(address: SocketAddr, peer: u64, config: &PeerConfig) -> io::Result<LinkWriter> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut challenge = [0u8; 32];
    stream.read_exact(&mut challenge)?;
    let key = &config.keys[0];
    let mac = auth::answer(&hello_key(key, config.group_tag, config.id, peer), &challenge);
    let mut hello = Vec::with_capacity(HELLO_SIZE);
    hello.extend_from_slice(HELLO_MAGIC);
    hello.extend_from_slice(&config.group_tag.to_le_bytes());
    hello.extend_from_slice(&config.id.to_le_bytes());
    hello.extend_from_slice(&peer.to_le_bytes());
    hello.extend_from_slice(&mac);
    stream.write_all(&hello)?;
    Ok(SealedWriter::new(
        BufWriter::with_capacity(256 << 10, stream),
        key.record_sealer(&challenge, RecordDirection::ToServer),
    ))
}

/// Sends queued messages, a batch per flush, until the link fails or shutdown.
fn pump(mut writer: LinkWriter, queue: &Receiver<Message>, shutdown: &AtomicBool) -> io::Result<()> {
    let mut bytes = Vec::new();
    while !shutdown.load(Ordering::Acquire) {
        let first = match queue.recv_timeout(Duration::from_millis(100)) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let mut next = Some(first);
        while let Some(message) = next {
            bytes.clear();
            message.write_to_vec(&mut bytes).map_err(io::Error::other)?;
            writer.write_all(&(bytes.len() as u32).to_le_bytes())?;
            writer.write_all(&bytes)?;
            next = queue.try_recv().ok();
        }
        writer.flush()?;
    }
    Ok(())
}
