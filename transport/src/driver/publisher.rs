//! The sender's driver: one UDP socket that sends data and receives NAKs and status
//! messages, batched with `sendmmsg`/`recvmmsg`. It never spins: when there is
//! nothing to do, [`Publisher::wait`] sleeps in `ppoll` until the socket is readable
//! or the protocol's next timer is due.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::driver::mmsg::{wait_readable, RecvBatch, SendBatch};
use crate::driver::socket::{self, GrantedBuffers, MulticastOptions, SocketOptions};
use crate::{monotonic_now, Destination, MonoTime, PublishError, Sender, SenderConfig};

/// Datagrams per `sendmmsg`/`recvmmsg`.
const BATCH_DATAGRAMS: usize = 64;

/// Where data datagrams go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// One copy to each subscriber (the default on one host, and where clouds have
    /// no multicast).
    Unicast(Vec<SocketAddrV4>),
    /// One copy to a group and port.
    Multicast { group: SocketAddrV4, options: MulticastOptions },
}

/// Driver counters, beside the core's [`SenderStats`](crate::SenderStats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Datagrams handed to the kernel (counting each fan-out copy).
    pub datagrams_written: u64,
    /// Datagrams the kernel refused transiently (repaired by the protocol).
    pub datagrams_refused: u64,
    /// `sendmmsg` calls.
    pub send_calls: u64,
}

/// A [`Sender`] on a real socket.
pub struct Publisher {
    core: Sender,
    socket: UdpSocket,
    targets: Targets,
    send_batch: SendBatch,
    recv_batch: RecvBatch,
    transmit_buf: Vec<u8>,
    granted: GrantedBuffers,
    stats: PublisherStats,
    /// The clock as of the last flush or service: publishing many events in a row
    /// reads it once, not once per event.
    now: MonoTime,
}

impl Publisher {
    /// Binds `bind` (where receivers send NAKs and status) and prepares the sender.
    pub fn new(
        config: SenderConfig,
        first_sequence: u64,
        bind: SocketAddr,
        targets: Targets,
        options: SocketOptions,
    ) -> io::Result<Publisher> {
        let datagram_size_max = config.datagram_size_max;
        let fan_out = match &targets {
            Targets::Unicast(list) if list.is_empty() => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "no subscribers to publish to"));
            }
            Targets::Unicast(list) => list.len(),
            Targets::Multicast { .. } => 1,
        };
        let core = Sender::new(config, first_sequence, monotonic_now())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (socket, granted) = socket::bind(bind, options, None)?;
        if let Targets::Multicast { options, .. } = &targets {
            socket::set_multicast_sending(&socket, *options)?;
        }
        Ok(Publisher {
            core,
            socket,
            targets,
            send_batch: SendBatch::new(BATCH_DATAGRAMS.max(fan_out * 4), datagram_size_max),
            recv_batch: RecvBatch::new(BATCH_DATAGRAMS, datagram_size_max),
            transmit_buf: vec![0; datagram_size_max],
            granted,
            stats: PublisherStats::default(),
            now: monotonic_now(),
        })
    }

    /// Starts the stream over at `first_sequence` on the same socket, as a new sender
    /// `instance` (random, never used before: its sealing key is new, so its counter
    /// may start at zero again). A group member that becomes the leader publishes
    /// the group's log from where it was committed; receivers carry on.
    pub fn restart(&mut self, first_sequence: u64, instance: u64) -> io::Result<()> {
        let config = SenderConfig { instance, ..self.core.config().clone() };
        self.core = Sender::new(config, first_sequence, monotonic_now())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(())
    }

    /// The protocol state.
    pub fn core(&self) -> &Sender {
        &self.core
    }

    /// Driver counters.
    pub fn stats(&self) -> PublisherStats {
        self.stats
    }

    /// Socket buffers the kernel granted.
    pub fn granted_buffers(&self) -> GrantedBuffers {
        self.granted
    }

    /// The local address (where NAKs and status messages are expected).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket, for callers that poll it together with their own inputs.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// How many events may be published now (flow control).
    pub fn window_remaining(&mut self) -> u64 {
        self.now = monotonic_now();
        self.core.window_remaining(self.now)
    }

    /// Publishes one frame; if the ring is full of unsent datagrams, sends them first.
    pub fn publish(&mut self, frame: &[u8]) -> io::Result<Result<u64, PublishError>> {
        let now = self.now;
        match self.core.publish(now, frame) {
            Err(PublishError::RingFull) => {
                self.flush()?;
                Ok(self.core.publish(now, frame))
            }
            other => Ok(other),
        }
    }

    /// Sends everything the protocol has queued.
    pub fn flush(&mut self) -> io::Result<()> {
        let now = monotonic_now();
        self.now = now;
        let fan_out = match &self.targets {
            Targets::Unicast(list) => list.len(),
            Targets::Multicast { .. } => 1,
        };
        loop {
            if self.send_batch.len() + fan_out > BATCH_DATAGRAMS.max(fan_out * 4) {
                self.send_queued()?;
            }
            let Some(transmit) = self.core.poll_transmit(now, &mut self.transmit_buf) else { break };
            let bytes = &self.transmit_buf[..transmit.size];
            match transmit.destination {
                Destination::To(peer) => {
                    let Ok(peer) = socket::ipv4(peer) else { continue };
                    self.send_batch.next_buffer()[..bytes.len()].copy_from_slice(bytes);
                    self.send_batch.push(bytes.len(), peer);
                }
                Destination::All => match &self.targets {
                    Targets::Unicast(list) => {
                        self.send_batch.next_buffer()[..bytes.len()].copy_from_slice(bytes);
                        self.send_batch.push(bytes.len(), list[0]);
                        for target in &list[1..] {
                            self.send_batch.push_copy_of_last(*target);
                        }
                    }
                    Targets::Multicast { group, .. } => {
                        self.send_batch.next_buffer()[..bytes.len()].copy_from_slice(bytes);
                        self.send_batch.push(bytes.len(), *group);
                    }
                },
            }
        }
        self.send_queued()
    }

    fn send_queued(&mut self) -> io::Result<()> {
        if self.send_batch.is_empty() {
            return Ok(());
        }
        let (written, refused) = self.send_batch.send(self.socket.as_raw_fd())?;
        self.stats.send_calls += 1;
        self.stats.datagrams_written += written as u64;
        self.stats.datagrams_refused += refused as u64;
        Ok(())
    }

    /// Without blocking: reads NAKs and status messages, runs due timers, and sends
    /// whatever that produced.
    pub fn service(&mut self) -> io::Result<()> {
        loop {
            let count = self.recv_batch.recv(self.socket.as_raw_fd())?;
            let now = monotonic_now();
            for index in 0..count {
                let (source, bytes) = self.recv_batch.get(index);
                self.core.handle_datagram(now, source, bytes);
            }
            if count < BATCH_DATAGRAMS {
                break;
            }
        }
        let now = monotonic_now();
        if now >= self.core.poll_timeout() {
            self.core.handle_timeout(now);
        }
        self.flush()
    }

    /// Sleeps until a control datagram arrives, the next protocol timer is due, or
    /// `max` passes, whichever is first. Never spins.
    pub fn wait(&mut self, max: Duration) -> io::Result<()> {
        let until_timer = self.core.poll_timeout().nanos_since(monotonic_now());
        let timeout = max.min(Duration::from_nanos(until_timer));
        if !timeout.is_zero() {
            wait_readable(self.socket.as_raw_fd(), Some(timeout))?;
        }
        self.service()
    }

    /// The next NAK older than the ring (see `SenderConfig::archive_fallback`).
    pub fn poll_archive_request(&mut self) -> Option<crate::ArchiveRequest> {
        self.core.poll_archive_request()
    }

    /// Current time on the driver's clock.
    pub fn now(&self) -> MonoTime {
        monotonic_now()
    }
}
