//! The hot thread: accept gateways, read and decide their commands, hand each group
//! commit to the journal, and publish and answer what the journal made durable.
//! Everything a connection's bytes mean is in the sans-IO [`crate::intake`]; this
//! file only moves bytes between sockets and it.
//!
//! The thread never spins: with nothing to do it sleeps in `ppoll` on the listener,
//! every gateway connection and the bus socket, until one is ready or the
//! transport's next timer is due (docs/architecture.md, "Performance").

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ledgerbus_codec::messages::Transfer;
use ledgerbus_ledger::ledger::CHAIN_MAX;
use ledgerbus_log::archive::Archive;
use ledgerbus_log::LogHead;
use ledgerbus_protocol::auth;
use ledgerbus_transport::driver::Publisher;

use crate::config::{io_err, SequencerConfig, SequencerError};
use crate::core::{PendingBatch, SequencerCore};
use crate::intake::{Handshake, Intake, IntakeState};
use crate::metrics::{ConsumerPosition, SequencerMetrics};
use crate::pipeline::{CommitPipeline, Committed};

/// Time a gateway has to answer the challenge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A gateway connection: its socket and its sans-IO intake.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    intake: Intake,
    closed: bool,
}

impl Connection {
    /// Writes queued replies without blocking.
    fn flush(&mut self) {
        while !self.intake.unsent().is_empty() && !self.closed {
            match self.stream.write(self.intake.unsent()) {
                Ok(0) => self.closed = true,
                Ok(n) => self.intake.sent(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => self.closed = true,
            }
        }
    }

    /// Reads what is available (and what the intake has room for) without blocking.
    fn fill(&mut self) {
        while !self.closed {
            let buffer = self.intake.receive_buffer();
            if buffer.is_empty() {
                break;
            }
            match self.stream.read(buffer) {
                Ok(0) => self.closed = true,
                Ok(n) => self.intake.received(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => self.closed = true,
            }
        }
    }
}

pub(crate) struct HotLoop {
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
    /// Scratch space for the chain being decided.
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &SequencerConfig,
        core: SequencerCore,
        pipeline: CommitPipeline,
        publisher: Publisher,
        listener: TcpListener,
        metrics: Arc<SequencerMetrics>,
        shutdown: Arc<AtomicBool>,
        session_id: u64,
        archive: Archive,
    ) -> HotLoop {
        HotLoop {
            core,
            pipeline,
            spares: (0..2).map(|_| PendingBatch::with_capacity(config.batch_events_max)).collect(),
            publisher,
            listener,
            connections: Vec::new(),
            batch: Some(PendingBatch::with_capacity(config.batch_events_max)),
            chain: Vec::with_capacity(CHAIN_MAX + 1),
            secret: config.secret.clone(),
            batch_events_max: config.batch_events_max,
            metrics,
            shutdown,
            session_id,
            last_metrics_refresh: Instant::now(),
            archive,
        }
    }

    pub(crate) fn run(mut self) -> Result<(), SequencerError> {
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
        let intake = Intake::new(auth::nonce()?, Instant::now() + HANDSHAKE_TIMEOUT);
        let mut connection = Connection { stream, peer, intake, closed: false };
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
            connection.fill();
            match connection.intake.state() {
                IntakeState::Authenticating { .. } => self.authenticate(&mut connection),
                IntakeState::Ready { .. } if batch.len() < window => {
                    let decided = connection.intake.decide(
                        index as u32,
                        &mut self.core,
                        &mut self.chain,
                        now_ns,
                        window,
                        &mut batch,
                    );
                    if let Err(error) = decided {
                        self.metrics.bad_packets.inc();
                        tracing::warn!(peer = %connection.peer, %error, "gateway protocol error; connection closed");
                        connection.closed = true;
                    }
                }
                IntakeState::Ready { .. } => {}
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

    fn authenticate(&mut self, connection: &mut Connection) {
        let next_sequence = self.core.next_sequence();
        match connection.intake.authenticate(&self.secret, Instant::now(), self.session_id, next_sequence) {
            Handshake::Waiting => {}
            Handshake::Accepted { gateway_id } => {
                self.metrics.gateways_connected.inc();
                tracing::info!(peer = %connection.peer, gateway_id, "gateway authenticated");
            }
            Handshake::Refused => {
                // Wrong secret, a malformed answer, or too slow: close and say so.
                self.metrics.gateways_refused.inc();
                self.metrics.bad_packets.inc();
                tracing::warn!(peer = %connection.peer, "gateway failed authentication; connection closed");
                connection.closed = true;
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
                connection.intake.queue(&reply.frame);
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
        if let IntakeState::Ready { gateway_id } = connection.intake.state() {
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
            let authenticating = matches!(connection.intake.state(), IntakeState::Authenticating { .. });
            if !connection.intake.backpressured() && (window_open || authenticating) {
                events |= libc::POLLIN;
            }
            if !connection.intake.unsent().is_empty() {
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
