//! The gateway port: accepted connections, each a socket and its sans-IO
//! [`Intake`]. The hot thread of a single sequencer and of a group member both drive
//! it: accept, read and decide, queue replies, flush, and say which sockets to wait on.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerbus_codec::messages::Transfer;
use ledgerbus_protocol::auth;

use crate::core::{PendingBatch, Reply, SequencerCore};
use crate::intake::{Handshake, Intake, IntakeState, Leadership};
use crate::metrics::SequencerMetrics;

/// Time a gateway has to answer the challenge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A gateway connection: its socket and its sans-IO intake.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    intake: Intake,
    closed: bool,
    /// Close once everything queued is sent (a NotLeader answer).
    close_when_flushed: bool,
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
        if self.close_when_flushed && self.intake.unsent().is_empty() {
            self.closed = true;
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

/// What [`GatewayPort::read_and_decide`] needs to know of the log.
pub(crate) struct Intent<'a> {
    /// The core to decide with, or `None` while commands must wait (they stay
    /// buffered; a group member catching up, or a full in-flight window).
    pub core: Option<&'a mut SequencerCore>,
    /// The log's session and the sequence of the next event (for the Welcome).
    pub session: u64,
    pub next_sequence: u64,
    /// Whether this sequencer takes commands at all.
    pub leads: Leadership,
    /// Most events the batch may hold.
    pub window: usize,
    /// The decision time stamp.
    pub now_ns: u64,
}

/// Every gateway connection.
pub(crate) struct GatewayPort {
    listener: TcpListener,
    connections: Vec<Option<Connection>>,
    /// Scratch space for the chain being decided.
    chain: Vec<Transfer>,
    secret: Vec<u8>,
    metrics: Arc<SequencerMetrics>,
}

impl GatewayPort {
    pub(crate) fn new(listener: TcpListener, secret: Vec<u8>, metrics: Arc<SequencerMetrics>) -> GatewayPort {
        GatewayPort {
            listener,
            connections: Vec::new(),
            chain: Vec::with_capacity(ledgerbus_ledger::ledger::CHAIN_MAX + 1),
            secret,
            metrics,
        }
    }

    pub(crate) fn accept(&mut self) {
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
        let mut connection = Connection { stream, peer, intake, closed: false, close_when_flushed: false };
        connection.flush();
        match self.connections.iter().position(Option::is_none) {
            Some(slot) => self.connections[slot] = Some(connection),
            None => self.connections.push(Some(connection)),
        }
        Ok(())
    }

    /// Reads every ready connection, authenticates new ones and decides complete
    /// commands into `batch` (up to `intent.window` events). Returns events decided.
    pub(crate) fn read_and_decide(&mut self, mut intent: Intent<'_>, batch: &mut PendingBatch) -> usize {
        let before = batch.len();
        for index in 0..self.connections.len() {
            let Some(mut connection) = self.connections[index].take() else { continue };
            connection.fill();
            match connection.intake.state() {
                IntakeState::Authenticating { .. } => self.authenticate(&mut connection, &intent),
                IntakeState::Ready { .. } if batch.len() < intent.window => {
                    if let Some(core) = intent.core.as_deref_mut() {
                        let decided = connection.intake.decide(
                            index as u32,
                            core,
                            &mut self.chain,
                            intent.now_ns,
                            intent.window,
                            batch,
                        );
                        if let Err(error) = decided {
                            self.metrics.bad_packets.inc();
                            tracing::warn!(peer = %connection.peer, %error, "gateway protocol error; connection closed");
                            connection.closed = true;
                        }
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
        batch.len() - before
    }

    fn authenticate(&mut self, connection: &mut Connection, intent: &Intent<'_>) {
        let handshake = connection.intake.authenticate(
            &self.secret,
            Instant::now(),
            intent.session,
            intent.next_sequence,
            intent.leads,
        );
        match handshake {
            Handshake::Waiting => {}
            Handshake::Accepted { gateway_id } => {
                self.metrics.gateways_connected.inc();
                tracing::info!(peer = %connection.peer, gateway_id, "gateway authenticated");
            }
            Handshake::NotLeader { gateway_id } => {
                tracing::debug!(peer = %connection.peer, gateway_id, "gateway told where the leader is");
                connection.close_when_flushed = true;
                connection.flush();
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

    /// Queues a reply for the connection it is addressed to (if it is still open: a
    /// gateway that went away retries with the same ids and gets `exists`).
    pub(crate) fn queue(&mut self, reply: &Reply) {
        if let Some(Some(connection)) = self.connections.get_mut(reply.connection as usize) {
            connection.intake.queue(&reply.frame);
        }
    }

    pub(crate) fn flush(&mut self) {
        for index in 0..self.connections.len() {
            let Some(connection) = self.connections[index].as_mut() else { continue };
            connection.flush();
            if connection.closed {
                let connection = self.connections[index].take().expect("checked");
                self.close(connection);
            }
        }
    }

    /// Closes every connection: their commands' outcomes will not be reported here
    /// (a group member that stopped leading); gateways re-send them elsewhere.
    pub(crate) fn close_all(&mut self) {
        for index in 0..self.connections.len() {
            if let Some(connection) = self.connections[index].take() {
                self.close(connection);
            }
        }
    }

    fn close(&mut self, connection: Connection) {
        if let IntakeState::Ready { gateway_id } = connection.intake.state() {
            if !connection.close_when_flushed {
                self.metrics.gateways_connected.dec();
                tracing::info!(peer = %connection.peer, gateway_id, "gateway disconnected");
            }
        }
    }

    /// The descriptors to wait on: the listener, and each connection for reading
    /// (when it may take commands: `window_open`, or it is authenticating) and for
    /// writing (when replies are queued).
    pub(crate) fn poll_fds(&self, fds: &mut Vec<libc::pollfd>, window_open: bool) {
        fds.push(libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
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
    }
}

/// Sleeps in `ppoll` on `fds` for at most `timeout`.
pub(crate) fn wait(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    let spec = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid array of pollfd for its length; spec is valid.
    let result = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &spec, std::ptr::null()) };
    if result < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(())
}
