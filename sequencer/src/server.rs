//! The sequencer process: recovery, then one hot thread that reads gateway commands,
//! decides them, journals them (group commit), and only then publishes the events
//! and answers the gateways; plus a replay service and a metrics endpoint on their
//! own threads.
//!
//! The hot thread never spins: with nothing to do it sleeps in `ppoll` on the
//! listener, every gateway connection and the bus socket, until one is ready or the
//! transport's next timer is due (docs/architecture.md, "Performance").

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ledgerbus_codec::messages::{Challenge, Transfer, Welcome};
use ledgerbus_codec::{encode, DecodeError, Frame, Message, MessageHeader};
use ledgerbus_ledger::ledger::CHAIN_MAX;
use ledgerbus_ledger::{Ledger, Replica};
use ledgerbus_transport::driver::{Publisher, SocketOptions, Targets};
use ledgerbus_transport::{BusKey, BusKeys, BusSecurity, SenderConfig};

use ledgerbus_log::archive::{Archive, ArchiveConfig};
use ledgerbus_log::journal::{Durability, JournalError};
use ledgerbus_log::{replay, LogHead};
use ledgerbus_protocol::auth;

use crate::core::{PendingBatch, SequencerCore};
use crate::metrics::{self, ConsumerPosition, SequencerMetrics};
use crate::pipeline::{CommitPipeline, Committed};

/// Everything the sequencer needs to run.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Journal directory.
    pub data_dir: PathBuf,
    /// Where gateways connect.
    pub gateway_listen: SocketAddr,
    /// Where NAKs and status messages arrive (and data is sent from).
    pub control_listen: SocketAddr,
    /// Bulk replay service.
    pub replay_listen: SocketAddr,
    /// Prometheus endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Subscribers or multicast group.
    pub targets: Targets,
    /// When an event counts as durable.
    pub durability: Durability,
    /// Transport settings (the session id is the journal's).
    pub sender: SenderConfig,
    /// Socket buffer sizes.
    pub socket: SocketOptions,
    /// Shared secret gateways must prove they know.
    pub secret: Vec<u8>,
    /// Bus keys: the bulk replay service accepts a credential derived from any of
    /// them (the transport's sealing uses `sender.security`).
    pub bus_keys: Arc<BusKeys>,
    /// Journal segment size before rolling.
    pub segment_size_max: u64,
    /// Most events decided per group commit.
    pub batch_events_max: usize,
    /// Transfer ids the idempotency index holds before it grows; its memory is
    /// allocated and faulted in at start.
    pub transfer_capacity: usize,
}

/// Default [`SequencerConfig::transfer_capacity`]: about 48 MiB.
pub const TRANSFER_CAPACITY_DEFAULT: usize = 1 << 20;

impl SequencerConfig {
    /// A configuration with every default for `data_dir`, listening on ephemeral
    /// 127.0.0.1 ports (tests) and publishing to `subscribers`.
    pub fn local(
        data_dir: PathBuf,
        subscribers: Vec<std::net::SocketAddrV4>,
        secret: &[u8],
    ) -> SequencerConfig {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let bus_keys = Arc::new(
            BusKeys::new(vec![BusKey::from_bytes(auth::nonce().expect("randomness"))]).expect("one key"),
        );
        SequencerConfig {
            bus_keys: bus_keys.clone(),
            data_dir,
            gateway_listen: any,
            control_listen: any,
            replay_listen: any,
            metrics_listen: None,
            targets: Targets::Unicast(subscribers),
            durability: Durability::Fsync,
            sender: SenderConfig {
                security: BusSecurity::Aead(bus_keys),
                instance: auth::random_u64().expect("randomness"),
                ..SenderConfig::default()
            },
            socket: SocketOptions::default(),
            secret: secret.to_vec(),
            segment_size_max: 256 << 20,
            batch_events_max: 65_536,
            transfer_capacity: TRANSFER_CAPACITY_DEFAULT,
        }
    }
}

/// Why the sequencer could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// The journal is unreadable or unwritable.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A socket could not be opened or used.
    #[error("{what}: {source}")]
    Io {
        /// Which socket or operation.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SequencerError {
    let what = what.into();
    move |source| SequencerError::Io { what, source }
}

/// A started sequencer: its addresses, and the handle to stop it.
pub struct RunningSequencer {
    /// Where gateways connect.
    pub gateway_addr: SocketAddr,
    /// Where consumers send NAKs and status messages.
    pub control_addr: SocketAddr,
    /// Bulk replay service.
    pub replay_addr: SocketAddr,
    /// Prometheus endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// The log's session.
    pub session_id: u64,
    /// Events recovered from the journal at start.
    pub recovered_events: u64,
    /// Counters.
    pub metrics: Arc<SequencerMetrics>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), SequencerError>>>,
}

impl RunningSequencer {
    /// The flag that stops the sequencer when set (e.g. from a signal handler).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shutdown)
    }

    /// Whether the hot thread is still running (it stops on shutdown or on a fatal error).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|thread| !thread.is_finished())
    }

    /// Stops intake, flushes and publishes what was decided, and waits for the end.
    pub fn stop(mut self) -> Result<(), SequencerError> {
        self.shutdown.store(true, Ordering::Release);
        self.join_inner()
    }

    /// Waits until the sequencer stops (after its shutdown flag is set or an error).
    pub fn join(mut self) -> Result<(), SequencerError> {
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<(), SequencerError> {
        match self.thread.take() {
            Some(thread) => {
                thread.join().unwrap_or_else(|_| Err(SequencerError::Config("hot thread panicked".into())))
            }
            None => Ok(()),
        }
    }
}

impl Drop for RunningSequencer {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        let _ = self.join_inner();
    }
}

/// Recovers from the journal, binds every socket and starts the threads.
pub fn start(config: SequencerConfig) -> Result<RunningSequencer, SequencerError> {
    if config.secret.len() < 16 {
        return Err(SequencerError::Config("the gateway secret must be at least 16 bytes".into()));
    }
    let started = Instant::now();
    // Size the ledger for what the journal holds (about 100 bytes per event), so
    // that replay never rehashes.
    let journal_bytes: u64 = ledgerbus_log::journal::list_segments(&config.data_dir)?
        .iter()
        .filter_map(|(_, path)| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum();
    let expected_events = (journal_bytes / 100) as usize;
    let transfers = config.transfer_capacity.max(expected_events + expected_events / 4 + 1_024);
    let ledger = Ledger::with_capacity(1_024, transfers);
    // Back the index now: faulting its pages in later would stall deciding (a VM
    // can take most of a second per few hundred megabytes).
    ledger.populate_transfer_index();
    tracing::info!(
        transfer_capacity = ledger.transfer_capacity(),
        mib = ledger.memory_bytes() >> 20,
        ms = started.elapsed().as_millis() as u64,
        "transfer index allocated"
    );
    let mut replica = Replica::new(ledger);
    let new_session = auth::random_u64().map_err(io_err("random session id"))?;
    let (journal, recovered) = crate::recovery::recover(
        &config.data_dir,
        config.durability,
        config.segment_size_max,
        new_session,
        &mut replica,
    )?;
    let core = SequencerCore::new(replica);
    let elapsed = started.elapsed().as_secs_f64();
    tracing::info!(
        session = format_args!("{:#018x}", recovered.session_id),
        events = recovered.events,
        next_sequence = recovered.next_sequence,
        seconds = elapsed,
        events_per_sec = (recovered.events as f64 / elapsed.max(1e-9)) as u64,
        accounts = core.ledger().account_count(),
        "journal recovered"
    );
    assert_eq!(core.next_sequence(), recovered.next_sequence);

    // Configured subscribers may NAK before their first status message; anyone else
    // must have reported from that address first (no reflection at third parties).
    let allowed_requesters = match &config.targets {
        Targets::Unicast(list) => list.iter().map(|a| SocketAddr::V4(*a)).collect(),
        Targets::Multicast { .. } => Vec::new(),
    };
    let sender = SenderConfig {
        session_id: recovered.session_id,
        restrict_naks: true,
        allowed_requesters,
        // NAKs older than the ring are served from the journal.
        archive_fallback: true,
        ..config.sender.clone()
    };
    let publisher = Publisher::new(
        sender,
        recovered.next_sequence,
        config.control_listen,
        config.targets.clone(),
        config.socket,
    )
    .map_err(io_err(format!("bus socket {}", config.control_listen)))?;
    let listener = TcpListener::bind(config.gateway_listen)
        .map_err(io_err(format!("gateway listener {}", config.gateway_listen)))?;
    listener.set_nonblocking(true).map_err(io_err("gateway listener"))?;
    let replay_listener = TcpListener::bind(config.replay_listen)
        .map_err(io_err(format!("replay listener {}", config.replay_listen)))?;
    let metrics = Arc::new(SequencerMetrics::default());
    metrics.set_head(LogHead {
        last_sequence: recovered.next_sequence - 1,
        state_hash: core.log_hash(),
        session: recovered.session_id,
    });
    let metrics_addr = match config.metrics_listen {
        Some(address) => {
            let listener =
                TcpListener::bind(address).map_err(io_err(format!("metrics listener {address}")))?;
            let local = listener.local_addr().map_err(io_err("metrics listener"))?;
            metrics::serve_sequencer(listener, Arc::clone(&metrics)).map_err(io_err("metrics thread"))?;
            Some(local)
        }
        None => None,
    };
    let mut running = RunningSequencer {
        gateway_addr: listener.local_addr().map_err(io_err("gateway listener"))?,
        control_addr: publisher.local_addr().map_err(io_err("bus socket"))?,
        replay_addr: replay_listener.local_addr().map_err(io_err("replay listener"))?,
        metrics_addr,
        session_id: recovered.session_id,
        recovered_events: recovered.events,
        metrics: Arc::clone(&metrics),
        shutdown: Arc::new(AtomicBool::new(false)),
        thread: None,
    };
    replay::serve(
        replay_listener,
        config.data_dir.clone(),
        config.bus_keys.replay_keys(),
        Arc::clone(&metrics) as Arc<dyn ledgerbus_log::ReplayHost>,
        Arc::clone(&running.shutdown),
    )
    .map_err(io_err("replay thread"))?;
    // fsync takes ~100 µs or more: overlap it with deciding on a journal thread. A
    // page-cache write takes a few: do it inline and save two thread hand-offs.
    let archive = Archive::start(ArchiveConfig {
        dir: config.data_dir.clone(),
        stream_id: config.sender.stream_id,
        session_id: recovered.session_id,
        datagram_size_max: config.sender.datagram_size_max,
        bind: config.control_listen,
        security: config.sender.security.clone(),
    })
    .map_err(io_err("archive thread"))?;
    let pipeline = match config.durability {
        Durability::Fsync => CommitPipeline::start(journal).map_err(io_err("journal thread"))?,
        Durability::Os => CommitPipeline::inline(journal),
    };
    let hot = HotLoop {
        core,
        pipeline,
        spares: (0..2).map(|_| PendingBatch::with_capacity(config.batch_events_max)).collect(),
        publisher,
        listener,
        connections: Vec::new(),
        batch: Some(PendingBatch::with_capacity(config.batch_events_max)),
        chain: Vec::with_capacity(CHAIN_MAX),
        secret: config.secret.clone(),
        batch_events_max: config.batch_events_max,
        metrics,
        shutdown: Arc::clone(&running.shutdown),
        session_id: recovered.session_id,
        last_metrics_refresh: Instant::now(),
        archive,
    };
    let thread = std::thread::Builder::new()
        .name("sequencer-hot".into())
        .spawn(move || hot.run())
        .map_err(io_err("hot thread"))?;
    running.thread = Some(thread);
    Ok(running)
}

/// Bytes of unread commands held per connection.
const IN_BUFFER_SIZE: usize = 1 << 20;
/// Replies queued per connection before we stop reading its commands (backpressure).
const OUT_BUFFER_LIMIT: usize = 4 << 20;
/// How far ahead of the command being decided the transfer index is prefetched:
/// about eight transfer frames.
const PREFETCH_BYTES: usize = 8 * 80;
/// Time a gateway has to answer the challenge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a gateway connection is in its life.
enum ConnectionState {
    /// Challenge sent, waiting for the answer until the deadline.
    Authenticating { nonce: [u8; 32], deadline: Instant },
    /// Authenticated: commands are read.
    Ready { gateway_id: u32 },
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    state: ConnectionState,
    inbound: Vec<u8>,
    inbound_len: usize,
    outbound: Vec<u8>,
    outbound_sent: usize,
    closed: bool,
}

impl Connection {
    fn queue(&mut self, bytes: &[u8]) {
        self.outbound.extend_from_slice(bytes);
    }

    fn backpressured(&self) -> bool {
        self.outbound.len() - self.outbound_sent > OUT_BUFFER_LIMIT
    }

    /// Writes queued replies without blocking.
    fn flush(&mut self) {
        while self.outbound_sent < self.outbound.len() && !self.closed {
            match self.stream.write(&self.outbound[self.outbound_sent..]) {
                Ok(0) => self.closed = true,
                Ok(n) => self.outbound_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => self.closed = true,
            }
        }
        if self.outbound_sent == self.outbound.len() {
            self.outbound.clear();
            self.outbound_sent = 0;
        }
    }

    /// Reads what is available without blocking; returns whether bytes arrived.
    fn fill(&mut self) -> bool {
        let mut got = false;
        while self.inbound_len < self.inbound.len() && !self.closed {
            match self.stream.read(&mut self.inbound[self.inbound_len..]) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    self.inbound_len += n;
                    got = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => self.closed = true,
            }
        }
        got
    }
}

struct HotLoop {
    core: SequencerCore,
    /// The journal, on its own thread: decides overlap with group commits.
    pipeline: CommitPipeline,
    /// Batch buffers not in use, recycled: with one being filled, one syncing and
    /// one being released, three are ever needed.
    spares: Vec<PendingBatch>,
    publisher: Publisher,
    listener: TcpListener,
    connections: Vec<Option<Connection>>,
    batch: Option<PendingBatch>,
    chain: Vec<Transfer>,
    secret: Vec<u8>,
    batch_events_max: usize,
    metrics: Arc<SequencerMetrics>,
    shutdown: Arc<AtomicBool>,
    session_id: u64,
    last_metrics_refresh: Instant,
    /// Answers NAKs older than the retransmit ring from the journal, off this thread.
    archive: Archive,
}

fn wall_clock_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl HotLoop {
    fn run(mut self) -> Result<(), SequencerError> {
        loop {
            if self.shutdown.load(Ordering::Acquire) {
                return self.drain();
            }
            self.accept();
            let decided = self.read_and_decide();
            self.release_completed()?;
            self.submit_if_idle();
            if self.pipeline.is_ready() {
                // `os` durability commits inline: answer now, not on the next turn.
                self.release_completed()?;
            }
            self.publisher.service().map_err(io_err("bus socket"))?;
            self.serve_archive();
            self.flush_connections();
            self.refresh_metrics();
            if decided == 0 && !self.pipeline.is_ready() {
                // Sleep until a socket is ready or the journal finishes a batch; while
                // a sync runs, new commands are still read and decided.
                self.idle_wait()?;
            }
        }
    }

    /// Answers and publishes the batch the journal has finished, if any, after
    /// starting the next group commit: the journal syncs batch N+1 while this thread
    /// answers and publishes batch N.
    fn release_completed(&mut self) -> Result<(), SequencerError> {
        if let Some(committed) = self.pipeline.try_complete() {
            let committed = committed?;
            self.submit_if_idle();
            self.release(committed)?;
        }
        Ok(())
    }

    /// Starts the group commit of what has been decided, unless one is running.
    fn submit_if_idle(&mut self) {
        if self.pipeline.in_flight() || self.batch.as_ref().is_none_or(|b| b.is_empty()) {
            return;
        }
        let next = self.spares.pop().unwrap_or_else(|| PendingBatch::with_capacity(self.batch_events_max));
        let batch = self.batch.replace(next).expect("batch present");
        self.pipeline.submit(batch);
    }

    /// Shutdown in order: intake has stopped; flush the group commit, publish,
    /// answer, send a final heartbeat.
    fn drain(mut self) -> Result<(), SequencerError> {
        while self.pipeline.in_flight() || self.batch.as_ref().is_some_and(|b| !b.is_empty()) {
            if let Some(committed) = self.pipeline.wait_complete(Duration::from_millis(100)) {
                self.release(committed?)?;
            }
            self.submit_if_idle();
        }
        self.flush_connections();
        self.publisher.service().map_err(io_err("bus socket"))?;
        tracing::info!(next_sequence = self.core.next_sequence(), "sequencer stopped");
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(error) = self.open_connection(stream, peer) {
                        tracing::warn!(%peer, %error, "gateway connection failed during set-up");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    return;
                }
            }
        }
    }

    fn open_connection(&mut self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let nonce = auth::nonce()?;
        let mut connection = Connection {
            stream,
            peer,
            state: ConnectionState::Authenticating { nonce, deadline: Instant::now() + HANDSHAKE_TIMEOUT },
            inbound: vec![0; IN_BUFFER_SIZE],
            inbound_len: 0,
            outbound: Vec::with_capacity(64 << 10),
            outbound_sent: 0,
            closed: false,
        };
        let mut frame = [0u8; Challenge::FRAME_SIZE];
        encode(&Challenge { nonce }, &mut frame).expect("sized");
        connection.queue(&frame);
        connection.flush();
        match self.connections.iter().position(Option::is_none) {
            Some(slot) => self.connections[slot] = Some(connection),
            None => self.connections.push(Some(connection)),
        }
        Ok(())
    }

    /// Reads every ready connection and decides complete commands, up to the batch
    /// limit and the transport's flow-control window. Returns events decided.
    fn read_and_decide(&mut self) -> usize {
        let window = self.publisher.window_remaining().min(self.batch_events_max as u64) as usize;
        let mut batch = self.batch.take().expect("batch present between iterations");
        let now_ns = wall_clock_ns();
        for index in 0..self.connections.len() {
            let Some(mut connection) = self.connections[index].take() else { continue };
            if !connection.backpressured() {
                connection.fill();
            }
            match connection.state {
                ConnectionState::Authenticating { nonce, deadline } => {
                    self.authenticate(&mut connection, nonce, deadline)
                }
                ConnectionState::Ready { .. } if batch.len() < window => {
                    self.decide_from(index as u32, &mut connection, now_ns, window, &mut batch);
                }
                ConnectionState::Ready { .. } => {}
            }
            if connection.closed {
                self.close(connection);
            } else {
                self.connections[index] = Some(connection);
            }
        }
        let decided = batch.len();
        self.batch = Some(batch);
        decided
    }

    fn authenticate(&mut self, connection: &mut Connection, nonce: [u8; 32], deadline: Instant) {
        let available = &connection.inbound[..connection.inbound_len];
        let frame = match Frame::decode(available) {
            Err(DecodeError::Truncated { .. }) if Instant::now() < deadline => return,
            Ok((Frame::Authenticate(answer), size)) => Some((answer.to_block(), size)),
            _ => None,
        };
        match frame {
            Some((answer, size)) if auth::verify(&self.secret, &nonce, &answer.mac) => {
                let gateway_id = answer.gateway_id.get();
                connection.state = ConnectionState::Ready { gateway_id };
                connection.inbound.copy_within(size..connection.inbound_len, 0);
                connection.inbound_len -= size;
                let welcome = Welcome {
                    session_id: self.session_id.into(),
                    next_sequence: self.core.next_sequence().into(),
                };
                let mut bytes = [0u8; Welcome::FRAME_SIZE];
                encode(&welcome, &mut bytes).expect("sized");
                connection.queue(&bytes);
                self.metrics.gateways_connected.inc();
                tracing::info!(peer = %connection.peer, gateway_id, "gateway authenticated");
            }
            _ => {
                // Wrong secret, a malformed answer, or too slow: close and say so.
                self.metrics.gateways_refused.inc();
                self.metrics.bad_packets.inc();
                tracing::warn!(peer = %connection.peer, "gateway failed authentication; connection closed");
                connection.closed = true;
            }
        }
    }

    /// Decides the complete commands buffered on one connection.
    fn decide_from(
        &mut self,
        id: u32,
        connection: &mut Connection,
        now_ns: u64,
        window: usize,
        batch: &mut PendingBatch,
    ) {
        let mut consumed = 0;
        let mut prefetched = 0;
        let len = connection.inbound_len;
        while batch.len() < window {
            // Prefetch the transfer-index slots of the next few commands, so that
            // their cache misses overlap with deciding this one.
            prefetched = prefetched.max(consumed);
            while prefetched < len && prefetched < consumed + PREFETCH_BYTES {
                match Frame::decode(&connection.inbound[prefetched..len]) {
                    Ok((frame, size)) => {
                        if let Frame::Transfer(transfer) = frame {
                            self.core.prefetch_transfer(transfer.id.get());
                        }
                        prefetched += size;
                    }
                    Err(_) => break,
                }
            }
            let rest = &connection.inbound[consumed..len];
            if rest.is_empty() {
                break;
            }
            match Frame::decode(rest) {
                Err(DecodeError::Truncated { .. }) => break,
                Ok((Frame::CreateAccount(command), size)) => {
                    self.core.decide_account(id, &command, now_ns, batch);
                    consumed += size;
                }
                Ok((Frame::Transfer(_), _)) => match self.collect_chain(rest) {
                    ChainScan::Incomplete => break,
                    ChainScan::Complete { size } => {
                        self.core.decide_transfers(id, &self.chain, now_ns, batch);
                        consumed += size;
                    }
                },
                Ok((other, _)) => {
                    return self.protocol_error(
                        connection,
                        format!("unexpected message template {}", other.template_id()),
                    );
                }
                Err(error) => return self.protocol_error(connection, error.to_string()),
            }
        }
        connection.inbound.copy_within(consumed..len, 0);
        connection.inbound_len = len - consumed;
    }

    fn protocol_error(&self, connection: &mut Connection, reason: String) {
        self.metrics.bad_packets.inc();
        tracing::warn!(peer = %connection.peer, %reason, "gateway protocol error; connection closed");
        connection.closed = true;
    }

    /// Gathers a transfer chain starting at `bytes` into `self.chain`: transfers
    /// while they carry the linked flag, plus the first one that does not. A chain cut
    /// by another message or longer than `CHAIN_MAX` is decided as it is (it is open,
    /// so every member gets `LinkedChainOpen`); one cut by the end of the buffer waits
    /// for more bytes.
    fn collect_chain(&mut self, bytes: &[u8]) -> ChainScan {
        self.chain.clear();
        let mut size = 0;
        loop {
            match Frame::decode(&bytes[size..]) {
                Ok((Frame::Transfer(transfer), frame_size)) => {
                    self.chain.push(transfer.to_block());
                    size += frame_size;
                    let linked = transfer.is_linked();
                    if !linked || self.chain.len() > CHAIN_MAX {
                        return ChainScan::Complete { size };
                    }
                }
                Err(DecodeError::Truncated { .. }) if MessageHeader::frame_size(&bytes[size..]).is_err() => {
                    return if bytes.len() >= IN_BUFFER_SIZE / 2 {
                        ChainScan::Complete { size }
                    } else {
                        ChainScan::Incomplete
                    };
                }
                _ => return ChainScan::Complete { size },
            }
        }
    }

    /// Publishes and answers a batch the journal has made durable.
    fn release(&mut self, committed: Committed) -> Result<(), SequencerError> {
        self.metrics.record_fsync(committed.sync_us);
        let durable = committed.batch;
        let mut rejected = 0;
        for reply in durable.replies() {
            if !reply.result.is_success() {
                rejected += 1;
            }
            // A gateway that went away retries with the same ids and gets `exists`.
            if let Some(Some(connection)) = self.connections.get_mut(reply.connection as usize) {
                connection.queue(&reply.frame);
            }
        }
        // Answer first, then publish: the answer is what a client waits for, and
        // waking every subscriber costs the sending thread tens of microseconds in a
        // VM. Consumers follow microseconds later; read-your-writes waits for them.
        self.flush_connections();
        for frame in durable.events() {
            let published = self.publisher.publish(frame).map_err(io_err("bus socket"))?;
            if let Err(error) = published {
                // Sizes and framing were produced by us: a refusal here is a bug.
                panic!("publisher refused a durable event: {error}");
            }
        }
        self.publisher.flush().map_err(io_err("bus socket"))?;
        self.metrics.events.inc_by(durable.len() as u64);
        self.metrics.rejected.inc_by(rejected);
        if let Some(last) = durable.last_sequence() {
            self.metrics.set_head(LogHead {
                last_sequence: last,
                state_hash: durable.last_hash(),
                session: self.session_id,
            });
        }
        self.spares.push(durable.recycle());
        debug_assert!(self.spares.len() <= 2, "three batch buffers at most");
        Ok(())
    }

    /// Hands NAKs older than the retransmit ring to the archive thread, which answers
    /// them from the journal; a request that does not fit its queue is dropped and
    /// asked for again by the receiver's NAK retry.
    fn serve_archive(&mut self) {
        while let Some(request) = self.publisher.poll_archive_request() {
            if !self.archive.submit(request) {
                tracing::debug!(to = %request.to, "archive queue full; the receiver will NAK again");
            }
        }
    }

    fn flush_connections(&mut self) {
        for index in 0..self.connections.len() {
            let Some(connection) = self.connections[index].as_mut() else { continue };
            connection.flush();
            if connection.closed {
                let connection = self.connections[index].take().expect("checked");
                self.close(connection);
            }
        }
    }

    fn close(&mut self, connection: Connection) {
        if let ConnectionState::Ready { gateway_id } = connection.state {
            self.metrics.gateways_connected.dec();
            tracing::info!(peer = %connection.peer, gateway_id, "gateway disconnected");
        }
    }

    fn refresh_metrics(&mut self) {
        if self.last_metrics_refresh.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_metrics_refresh = Instant::now();
        let stats = self.publisher.core().stats();
        // The sender counts for the process's lifetime; its totals are ours.
        self.metrics.retransmits.inner().store(stats.retransmits, Ordering::Relaxed);
        self.metrics.naks.inner().store(stats.naks_received, Ordering::Relaxed);
        self.metrics.unauthenticated_datagrams.inner().store(stats.unauthenticated, Ordering::Relaxed);
        let positions = self
            .publisher
            .core()
            .receivers()
            .iter()
            .map(|r| ConsumerPosition {
                receiver_id: r.receiver_id,
                address: r.address,
                position: r.highest_contiguous_sequence,
            })
            .collect();
        if let Ok(mut consumers) = self.metrics.consumers.lock() {
            *consumers = positions;
        }
    }

    /// Sleeps until a socket is ready or a timer is due; never spins.
    fn idle_wait(&mut self) -> Result<(), SequencerError> {
        let mut fds = Vec::with_capacity(self.connections.len() + 2);
        fds.push(libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        fds.push(libc::pollfd { fd: self.publisher.fd(), events: libc::POLLIN, revents: 0 });
        if let Some(fd) = self.pipeline.wake_fd() {
            fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        let window_open = self.publisher.window_remaining() > 0;
        for connection in self.connections.iter().flatten() {
            let mut events = 0;
            if !connection.backpressured()
                && (window_open || matches!(connection.state, ConnectionState::Authenticating { .. }))
            {
                events |= libc::POLLIN;
            }
            if connection.outbound_sent < connection.outbound.len() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd { fd: connection.stream.as_raw_fd(), events, revents: 0 });
        }
        let until_timer = self.publisher.core().poll_timeout().nanos_since(self.publisher.now());
        // Wake at least every 50 ms to notice shutdown and handshake deadlines.
        let timeout = Duration::from_nanos(until_timer).min(Duration::from_millis(50));
        let spec = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of pollfd for its length; spec is valid.
        let result =
            unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &spec, std::ptr::null()) };
        if result < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(SequencerError::Io { what: "ppoll".into(), source: error });
            }
        }
        Ok(())
    }
}

/// Result of scanning for a transfer chain.
enum ChainScan {
    /// `self.chain` holds the chain; it took `size` bytes.
    Complete { size: usize },
    /// The chain continues past the bytes received so far.
    Incomplete,
}
