//! The receiver's driver: one UDP socket that receives the stream (unicast, or a
//! joined multicast group) and sends NAKs and status messages to the sender's control
//! address. [`Subscriber::poll`] blocks in `ppoll` until data arrives or the next
//! protocol timer is due, so an idle consumer uses no CPU.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use ledgerbus_codec::PacketKind;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::driver::mmsg::{wait_readable, RecvBatch};
use crate::driver::socket::{self, GrantedBuffers, MulticastOptions, SocketOptions};
use crate::{monotonic_now, Receiver, ReceiverConfig, ReceiverEvent};

/// Datagrams per `recvmmsg`.
const BATCH_DATAGRAMS: usize = 64;

/// Driver counters, beside the core's [`ReceiverStats`](crate::ReceiverStats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Datagrams read from the socket.
    pub datagrams_read: u64,
    /// Data datagrams dropped on purpose (loss injection for tests and benchmarks).
    pub injected_drops: u64,
    /// Control datagrams sent to the sender.
    pub control_sent: u64,
}

/// A [`Receiver`] on a real socket.
pub struct Subscriber {
    core: Receiver,
    socket: UdpSocket,
    sender_control: SocketAddrV4,
    recv_batch: RecvBatch,
    send_buf: Vec<u8>,
    /// Probability of dropping a data datagram, and its seeded RNG.
    injected_loss: Option<(f64, ChaCha8Rng)>,
    granted: GrantedBuffers,
    stats: SubscriberStats,
}

impl Subscriber {
    /// Binds `bind` (joining `multicast` if given) and prepares the receiver, which
    /// reports to `sender_control`.
    pub fn new(
        config: ReceiverConfig,
        next_expected: u64,
        session: Option<u64>,
        bind: SocketAddr,
        multicast: Option<MulticastOptions>,
        sender_control: SocketAddr,
        options: SocketOptions,
    ) -> io::Result<Subscriber> {
        let datagram_size_max = config.datagram_size_max;
        let core = Receiver::new(config, next_expected, session, monotonic_now())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (socket, granted) = socket::bind(bind, options, multicast)?;
        Ok(Subscriber {
            core,
            socket,
            sender_control: socket::ipv4(sender_control)?,
            recv_batch: RecvBatch::new(BATCH_DATAGRAMS, datagram_size_max),
            send_buf: vec![0; datagram_size_max],
            injected_loss: None,
            granted,
            stats: SubscriberStats::default(),
        })
    }

    /// Changes where NAKs and status messages go (e.g. once the sender has bound).
    pub fn set_sender_control(&mut self, sender_control: SocketAddr) -> io::Result<()> {
        self.sender_control = socket::ipv4(sender_control)?;
        Ok(())
    }

    /// Drops `percent` % of incoming data datagrams (never control), drawn from `seed`:
    /// how benchmarks and tests inject loss without touching the network.
    pub fn inject_loss(&mut self, percent: f64, seed: u64) {
        self.injected_loss = (percent > 0.0).then(|| (percent / 100.0, ChaCha8Rng::seed_from_u64(seed)));
    }

    /// The protocol state.
    pub fn core(&self) -> &Receiver {
        &self.core
    }

    /// The protocol state, for `resume` and `reset_session`.
    pub fn core_mut(&mut self) -> &mut Receiver {
        &mut self.core
    }

    /// Driver counters.
    pub fn stats(&self) -> SubscriberStats {
        self.stats
    }

    /// Socket buffers the kernel granted.
    pub fn granted_buffers(&self) -> GrantedBuffers {
        self.granted
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket, for callers that poll it with their own inputs.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Receives and delivers whatever is ready, waiting at most `max_wait` (or until
    /// the next protocol timer) if nothing is. Returns the next signal, if any.
    pub fn poll(
        &mut self,
        max_wait: Duration,
        deliver: &mut impl FnMut(u64, &[u8]),
    ) -> io::Result<Option<ReceiverEvent>> {
        let mut count = self.recv_batch.recv(self.socket.as_raw_fd())?;
        if count == 0 {
            let until_timer = self.core.poll_timeout().nanos_since(monotonic_now());
            let timeout = max_wait.min(Duration::from_nanos(until_timer));
            if !timeout.is_zero() && wait_readable(self.socket.as_raw_fd(), Some(timeout))? {
                count = self.recv_batch.recv(self.socket.as_raw_fd())?;
            }
        }
        let now = monotonic_now();
        self.stats.datagrams_read += count as u64;
        for index in 0..count {
            let (source, bytes) = self.recv_batch.get(index);
            if let Some((probability, rng)) = &mut self.injected_loss {
                let is_data = bytes.get(5) == Some(&PacketKind::Data.to_wire());
                if is_data && rng.random_bool(*probability) {
                    self.stats.injected_drops += 1;
                    continue;
                }
            }
            self.core.handle_datagram(now, source, bytes, deliver);
        }
        let now = monotonic_now();
        if now >= self.core.poll_timeout() {
            self.core.handle_timeout(now);
        }
        self.send_control()?;
        Ok(self.core.poll_event())
    }

    fn send_control(&mut self) -> io::Result<()> {
        let now = monotonic_now();
        // Reports go where the stream comes from (authenticated when the bus is
        // sealed): a group's new leader is followed without configuration.
        let to = match self.core.sender_address() {
            Some(SocketAddr::V4(heard)) => heard,
            _ => self.sender_control,
        };
        while let Some(size) = self.core.poll_transmit(now, &mut self.send_buf) {
            match self.socket.send_to(&self.send_buf[..size], to) {
                Ok(_) => self.stats.control_sent += 1,
                // The sender may be restarting, the network down or a firewall
                // dropping it; NAKs and status are retried anyway.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::PermissionDenied
                            | io::ErrorKind::NetworkUnreachable
                            | io::ErrorKind::HostUnreachable
                            | io::ErrorKind::NetworkDown
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
