//! The sending half of the protocol, as a plain state machine.
//!
//! # Call order
//! The driver, on every wake-up:
//! 1. feeds inputs: [`Sender::publish`] for new events, [`Sender::handle_datagram`]
//!    for control packets from receivers, [`Sender::handle_timeout`] when the time
//!    from [`Sender::poll_timeout`] has passed;
//! 2. drains [`Sender::poll_transmit`] until it returns `None`, sending each datagram
//!    (it may stop early to bound the work per wake-up and continue next time);
//! 3. sleeps until [`Sender::poll_timeout`] or until a socket is readable.
//!
//! `now` must never go backwards between calls. The sender holds no socket and reads
//! no clock (docs/architecture.md, "Design rules" 1), so the simulator drives it exactly like a driver does.
//!
//! Events are packed into the open datagram until it is full or `poll_transmit`
//! runs, so a burst of publishes becomes few, full datagrams while a single publish
//! goes out at once: batching comes from the driver's wake-up, not from a timer.

use std::collections::VecDeque;
use std::net::SocketAddr;

use ledgerbus_codec::messages::{Heartbeat, Nak, NakUnavailable, StatusMessage};
use ledgerbus_codec::{
    seal, CrcCheck, Frame, MessageHeader, Packet, PacketKind, PacketWriter, PACKET_HEADER_SIZE,
};

use crate::config::{ConfigError, DeliveryMode, SenderConfig};
use crate::ring::Ring;
use crate::security::{NodeSeal, SENDER_NODE_ID};
use crate::stats::SenderStats;
use crate::MonoTime;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Every subscriber (unicast fan-out) or the multicast group.
    All,
    /// One peer: a retransmission or a reply to its NAK.
    To(SocketAddr),
}

/// A datagram written into the caller's buffer by `poll_transmit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Who gets it.
    pub destination: Destination,
    /// Bytes written at the start of the buffer.
    pub size: usize,
}

/// Why `publish` refused an event. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Every ring slot holds a datagram not yet sent: drain `poll_transmit` first.
    #[error("retransmit ring full of unsent datagrams")]
    RingFull,
    /// The frame is not one well-formed SBE frame.
    #[error("not a single well-formed frame")]
    BadFrame,
    /// The frame cannot fit in one datagram of the configured size.
    #[error("frame of {size} bytes exceeds the datagram payload of {max}")]
    FrameTooLarge { size: usize, max: usize },
}

/// A receiver known from its status messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverPosition {
    /// Where its status messages come from.
    pub address: SocketAddr,
    /// Its id.
    pub receiver_id: u32,
    /// Every event up to here has been delivered to it.
    pub highest_contiguous_sequence: u64,
    /// Events past that it can take.
    pub window_events: u32,
    /// When it last reported.
    pub last_seen: MonoTime,
    /// Retransmissions it may still cause now (token bucket).
    pub retransmit_tokens: u64,
    /// When the bucket was last refilled.
    pub refilled_at: MonoTime,
}

/// Archive requests waiting for the driver at most; more get "not retransmittable".
const ARCHIVE_QUEUE_MAX: usize = 64;

/// A NAK for events older than the ring, for the driver to serve from its archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveRequest {
    /// Who asked.
    pub to: SocketAddr,
    /// First sequence wanted.
    pub from_sequence: u64,
    /// One past the last sequence wanted (all older than the ring).
    pub end_sequence: u64,
}

/// A control datagram waiting to be sent.
#[derive(Debug, Clone, Copy)]
enum ControlOut {
    Heartbeat,
    NakUnavailable { to: SocketAddr, from_sequence: u64, count: u32, oldest_retained_sequence: u64 },
}

/// A retransmission waiting to be sent: the datagram starting at `first_sequence`.
#[derive(Debug, Clone, Copy)]
struct RetransmitOut {
    first_sequence: u64,
    destination: Destination,
}

/// The datagram being filled in the ring's open slot.
#[derive(Debug, Clone, Copy)]
struct OpenDatagram {
    first_sequence: u64,
    count: u16,
    size: usize,
}

/// The sending state machine. See the module docs for the call order.
#[derive(Debug)]
pub struct Sender {
    config: SenderConfig,
    /// Sent and unsent datagrams, plus the open one being filled.
    ring: Ring,
    open: Option<OpenDatagram>,
    /// Committed datagrams at the newest end of the ring not yet sent.
    unsent: usize,
    /// Sequence the next published event gets.
    next_sequence: u64,
    retransmits: VecDeque<RetransmitOut>,
    control: VecDeque<ControlOut>,
    archive_requests: VecDeque<ArchiveRequest>,
    receivers: Vec<ReceiverPosition>,
    /// When to send a heartbeat if nothing else is sent before.
    heartbeat_at: MonoTime,
    /// The gap to the next heartbeat: the configured interval right after data, then
    /// doubling while idle up to `heartbeat_interval_max_us`, so an idle bus costs
    /// almost nothing while tail loss after a burst is still seen at once.
    heartbeat_gap_us: u64,
    /// Retransmission budget shared by allowed requesters not yet in `receivers`.
    shared_tokens: u64,
    shared_refilled_at: MonoTime,
    /// Largest datagram before sealing: the configured size less the seal's trailer.
    plain_max: usize,
    /// Seals what goes out and opens what comes in, when the bus is secured.
    seal: Option<NodeSeal>,
    stats: SenderStats,
}

impl Sender {
    /// A sender whose first event gets `first_sequence` (1 for a new log; the next
    /// sequence after a restart that continues a log).
    pub fn new(config: SenderConfig, first_sequence: u64, now: MonoTime) -> Result<Sender, ConfigError> {
        config.validate()?;
        let ring = Ring::new(config.ring_datagrams, config.datagram_size_max);
        let retransmit_queue_max = config.ring_datagrams;
        let seal = NodeSeal::new(&config.security, SENDER_NODE_ID, config.instance, config.datagram_size_max);
        let sender = Sender {
            plain_max: config.datagram_size_max - config.security.overhead(),
            seal,
            heartbeat_at: now,
            heartbeat_gap_us: config.heartbeat_interval_us,
            shared_tokens: config.retransmit_burst,
            shared_refilled_at: now,
            retransmits: VecDeque::with_capacity(retransmit_queue_max),
            control: VecDeque::with_capacity(config.control_queue_max),
            archive_requests: VecDeque::with_capacity(ARCHIVE_QUEUE_MAX),
            receivers: Vec::with_capacity(config.receivers_max),
            ring,
            open: None,
            unsent: 0,
            next_sequence: first_sequence,
            stats: SenderStats::default(),
            config,
        };
        sender.invariants();
        Ok(sender)
    }

    // ----- getters -------------------------------------------------------------------

    /// The sequence the next published event will get.
    #[inline]
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Counters for metrics.
    #[inline]
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &SenderConfig {
        &self.config
    }

    /// Receivers heard from, with their positions.
    pub fn receivers(&self) -> &[ReceiverPosition] {
        &self.receivers
    }

    /// Oldest sequence that can still be retransmitted.
    pub fn oldest_retained_sequence(&self) -> u64 {
        self.ring.oldest_sequence().or(self.open.map(|o| o.first_sequence)).unwrap_or(self.next_sequence)
    }

    /// How many more events may be published before the slowest live receiver's
    /// window is full (flow control from status messages). Unlimited while no
    /// receiver has reported; receivers silent past `receiver_timeout_us` don't count.
    pub fn window_remaining(&self, now: MonoTime) -> u64 {
        let published = self.next_sequence.saturating_sub(1);
        self.receivers
            .iter()
            .filter(|r| now.nanos_since(r.last_seen) <= self.config.receiver_timeout_us.saturating_mul(1_000))
            // A window of 0 marks an observer (an operator's NAK probe): it never
            // holds the stream back.
            .filter(|r| r.window_events > 0)
            .map(|r| (r.highest_contiguous_sequence + u64::from(r.window_events)).saturating_sub(published))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Whether datagrams are waiting for `poll_transmit`.
    pub fn has_pending_transmit(&self) -> bool {
        !self.retransmits.is_empty()
            || !self.control.is_empty()
            || self.unsent > 0
            || self.open.is_some_and(|o| o.count > 0)
    }

    // ----- inputs --------------------------------------------------------------------

    /// Appends one encoded event frame (an SBE message) and returns its sequence.
    /// The event goes out with the next `poll_transmit`, packed with its neighbours.
    pub fn publish(&mut self, now: MonoTime, frame: &[u8]) -> Result<u64, PublishError> {
        let payload_max = self.plain_max - PACKET_HEADER_SIZE;
        if frame.len() > payload_max {
            return Err(PublishError::FrameTooLarge { size: frame.len(), max: payload_max });
        }
        if MessageHeader::frame_size(frame) != Ok(frame.len()) {
            return Err(PublishError::BadFrame);
        }
        let fits = self.open.is_some_and(|o| o.size + frame.len() <= self.plain_max && o.count < u16::MAX);
        if !fits {
            self.close_open(now);
            self.start_open()?;
        }
        let open = self.open.as_mut().expect("opened above");
        let slot = self.ring.open_slot();
        slot[open.size..open.size + frame.len()].copy_from_slice(frame);
        open.size += frame.len();
        open.count += 1;
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.stats.events_published += 1;
        self.invariants();
        Ok(sequence)
    }

    /// Feeds one datagram received on the control socket from `source`.
    /// Hostile or stray bytes are counted and dropped; on a secured bus nothing of a
    /// datagram is acted on before its tag verifies.
    pub fn handle_datagram(&mut self, now: MonoTime, source: SocketAddr, bytes: &[u8]) {
        // Out of `self` while its plaintext is handled (which never seals).
        let Some(mut seal) = self.seal.take() else {
            self.handle_plain(now, source, bytes);
            return;
        };
        match seal.open(bytes) {
            Ok(plain) => self.handle_plain(now, source, plain),
            Err(_) => self.stats.unauthenticated += 1,
        }
        self.seal = Some(seal);
    }

    /// A datagram known to be authentic (or a bus without security).
    fn handle_plain(&mut self, now: MonoTime, source: SocketAddr, bytes: &[u8]) {
        let packet = match Packet::decode(bytes, CrcCheck::Verify) {
            Ok(packet) => packet,
            Err(_) => {
                self.stats.bad_packets += 1;
                return;
            }
        };
        let header = packet.header();
        if header.stream_id.get() != self.config.stream_id {
            self.stats.wrong_stream += 1;
            return;
        }
        if packet.kind() != PacketKind::Control {
            self.stats.unexpected_packets += 1;
            return;
        }
        // Session 0 is a receiver that has not heard us yet: it may announce itself
        // (status), but it cannot ask for data of a session it does not know.
        let session = header.session_id.get();
        let own_session = session == self.config.session_id;
        if !own_session && session != 0 {
            self.stats.wrong_session += 1;
            return;
        }
        match packet.control() {
            Ok(Frame::Nak(nak)) if own_session => self.handle_nak(now, source, &nak),
            Ok(Frame::StatusMessage(status)) => self.handle_status(now, source, &status),
            Ok(Frame::Nak(_)) => self.stats.wrong_session += 1,
            Ok(_) => self.stats.unexpected_packets += 1,
            Err(_) => self.stats.bad_packets += 1,
        }
        self.invariants();
    }

    /// Runs timers that are due. A call when nothing is due does nothing.
    pub fn handle_timeout(&mut self, now: MonoTime) {
        if now >= self.heartbeat_at {
            // Only when idle: any data sent since pushes `heartbeat_at` forward.
            if self.control.len() < self.config.control_queue_max
                && !self.control.iter().any(|c| matches!(c, ControlOut::Heartbeat))
            {
                self.control.push_back(ControlOut::Heartbeat);
            }
            self.heartbeat_at = now.plus_us(self.heartbeat_gap_us);
            self.heartbeat_gap_us =
                self.heartbeat_gap_us.saturating_mul(2).min(self.config.heartbeat_interval_max_us);
        }
    }

    // ----- outputs -------------------------------------------------------------------

    /// The next datagram to send, written into `buf` (at least `datagram_size_max`
    /// bytes). Repairs go first, then control, then new data; the open datagram is
    /// closed and sent when nothing else is waiting.
    pub fn poll_transmit(&mut self, now: MonoTime, buf: &mut [u8]) -> Option<Transmit> {
        assert!(buf.len() >= self.config.datagram_size_max, "transmit buffer smaller than the datagram size");
        let mut transmit = self
            .poll_retransmit(buf)
            .or_else(|| self.poll_control(now, buf))
            .or_else(|| self.poll_new_data(now, buf));
        if let (Some(transmit), Some(seal)) = (&mut transmit, &mut self.seal) {
            // Every transmission, a retransmission too, gets a new nonce.
            transmit.size = seal.seal(buf, transmit.size);
        }
        self.invariants();
        transmit
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> MonoTime {
        self.heartbeat_at
    }

    /// The next NAK the ring cannot serve, for a driver with an archive
    /// (`archive_fallback`). The driver sends the events itself, or says they are not
    /// retransmittable (NakUnavailable) if it cannot.
    pub fn poll_archive_request(&mut self) -> Option<ArchiveRequest> {
        self.archive_requests.pop_front()
    }

    // ----- internals -----------------------------------------------------------------

    fn start_open(&mut self) -> Result<(), PublishError> {
        debug_assert!(self.open.is_none());
        if self.ring.is_full() {
            // Reuse the oldest slot only if it went out; otherwise the caller must drain.
            if self.unsent == self.ring.len() {
                return Err(PublishError::RingFull);
            }
            self.ring.evict_oldest();
        }
        let slot = self.ring.open_slot();
        let writer =
            PacketWriter::data(slot, self.config.stream_id, self.config.session_id, self.next_sequence);
        debug_assert_eq!(writer.message_count(), 0);
        self.open =
            Some(OpenDatagram { first_sequence: self.next_sequence, count: 0, size: PACKET_HEADER_SIZE });
        Ok(())
    }

    /// Seals the open datagram (if it holds events) and queues it for sending.
    fn close_open(&mut self, now: MonoTime) {
        let Some(open) = self.open.take() else { return };
        if open.count == 0 {
            return;
        }
        let slot = self.ring.open_slot();
        seal(&mut slot[..open.size], open.count, now.as_nanos());
        self.ring.commit(open.first_sequence, u32::from(open.count), open.size);
        self.unsent += 1;
    }

    fn poll_retransmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(item) = self.retransmits.pop_front() {
            // The datagram may have left the ring since the NAK was queued.
            let Some(logical) = self.ring.find(item.first_sequence) else { continue };
            let datagram = self.ring.datagram(logical).expect("found above");
            buf[..datagram.len()].copy_from_slice(datagram);
            self.stats.retransmits += 1;
            return Some(Transmit { destination: item.destination, size: datagram.len() });
        }
        None
    }

    fn poll_control(&mut self, now: MonoTime, buf: &mut [u8]) -> Option<Transmit> {
        let item = self.control.pop_front()?;
        let mut writer =
            PacketWriter::control(&mut buf[..self.plain_max], self.config.stream_id, self.config.session_id);
        let (destination, pushed) = match item {
            ControlOut::Heartbeat => {
                self.stats.heartbeats_sent += 1;
                // With an archive behind the ring, everything since the start of the
                // log can still be NAKed: receivers should ask rather than give up.
                let oldest = if self.config.archive_fallback { 1 } else { self.oldest_retained_sequence() };
                let heartbeat = Heartbeat {
                    next_sequence: self.next_sequence_sent().into(),
                    oldest_retained_sequence: oldest.into(),
                };
                (Destination::All, writer.push(&heartbeat))
            }
            ControlOut::NakUnavailable { to, from_sequence, count, oldest_retained_sequence } => {
                self.stats.nak_unavailable_sent += 1;
                let reply = NakUnavailable {
                    from_sequence: from_sequence.into(),
                    count: count.into(),
                    reserved: [0; 4],
                    oldest_retained_sequence: oldest_retained_sequence.into(),
                };
                (Destination::To(to), writer.push(&reply))
            }
        };
        pushed.expect("a control message fits any valid datagram size");
        let size = writer.finish(now.as_nanos());
        Some(Transmit { destination, size })
    }

    fn poll_new_data(&mut self, now: MonoTime, buf: &mut [u8]) -> Option<Transmit> {
        if self.unsent == 0 {
            self.close_open(now);
        }
        if self.unsent == 0 {
            return None;
        }
        let logical = self.ring.len() - self.unsent;
        let datagram = self.ring.datagram(logical).expect("unsent datagrams are in the ring");
        buf[..datagram.len()].copy_from_slice(datagram);
        self.unsent -= 1;
        self.stats.datagrams_sent += 1;
        self.heartbeat_at = now.plus_us(self.config.heartbeat_interval_us);
        self.heartbeat_gap_us = self.config.heartbeat_interval_us;
        Some(Transmit { destination: Destination::All, size: datagram.len() })
    }

    /// One past the newest sequence that has been sent (what a heartbeat announces).
    fn next_sequence_sent(&self) -> u64 {
        let sent = self.ring.len() - self.unsent;
        match sent.checked_sub(1).and_then(|newest| self.ring.get(newest)) {
            Some(meta) => meta.end_sequence(),
            None => self.oldest_retained_sequence(),
        }
    }

    /// Refills a token bucket for the time elapsed and returns the tokens available.
    fn refill(&self, tokens: &mut u64, refilled_at: &mut MonoTime, now: MonoTime) {
        let elapsed_ns = now.nanos_since(*refilled_at);
        let earned = elapsed_ns.saturating_mul(self.config.retransmit_rate_per_sec) / 1_000_000_000;
        if earned > 0 {
            *tokens = tokens.saturating_add(earned).min(self.config.retransmit_burst);
            *refilled_at = now;
        }
    }

    /// Takes one retransmission token for `source`; false when its budget is spent.
    fn take_token(&mut self, now: MonoTime, source: SocketAddr) -> bool {
        let mut tokens;
        let mut refilled_at;
        let index = self.receivers.iter().position(|r| r.address == source);
        match index {
            Some(i) => {
                tokens = self.receivers[i].retransmit_tokens;
                refilled_at = self.receivers[i].refilled_at;
            }
            None => {
                tokens = self.shared_tokens;
                refilled_at = self.shared_refilled_at;
            }
        }
        self.refill(&mut tokens, &mut refilled_at, now);
        let granted = tokens > 0;
        tokens = tokens.saturating_sub(1);
        match index {
            Some(i) => {
                self.receivers[i].retransmit_tokens = tokens;
                self.receivers[i].refilled_at = refilled_at;
            }
            None => {
                self.shared_tokens = tokens;
                self.shared_refilled_at = refilled_at;
            }
        }
        granted
    }

    fn handle_nak(&mut self, now: MonoTime, source: SocketAddr, nak: &Nak) {
        self.stats.naks_received += 1;
        let known = self.receivers.iter().any(|r| r.address == source)
            || self.config.allowed_requesters.contains(&source);
        if self.config.restrict_naks && !known {
            self.stats.naks_unknown_source += 1;
            return;
        }
        let from = nak.from_sequence.get();
        let count = nak.count.get();
        // Only datagrams already sent can be repaired; the rest is on its way.
        let end = from.saturating_add(u64::from(count)).min(self.next_sequence_sent());
        if count == 0 || from >= end {
            self.stats.naks_ignored += 1;
            return;
        }
        let oldest = self.ring.oldest_sequence().unwrap_or(end);
        if from < oldest {
            // Older than the ring: the driver may serve it from its archive (the
            // sequencer's journal), within the requester's retransmission budget.
            let archived_end = end.min(oldest);
            let datagrams = (archived_end - from).div_ceil(16);
            if self.config.archive_fallback
                && self.archive_requests.len() < ARCHIVE_QUEUE_MAX
                && (0..datagrams).all(|_| self.take_token(now, source))
            {
                self.archive_requests.push_back(ArchiveRequest {
                    to: source,
                    from_sequence: from,
                    end_sequence: archived_end,
                });
                return;
            }
            if self.control.len() < self.config.control_queue_max {
                self.control.push_back(ControlOut::NakUnavailable {
                    to: source,
                    from_sequence: from,
                    count,
                    oldest_retained_sequence: oldest,
                });
            }
            return;
        }
        let Some(mut logical) = self.ring.find(from) else { return };
        let sent = self.ring.len() - self.unsent;
        let linger_ns = self.config.retransmit_linger_us.saturating_mul(1_000);
        let multicast = self.config.mode == DeliveryMode::Multicast;
        while logical < sent {
            let meta = self.ring.get_mut(logical).expect("logical < len");
            if meta.first_sequence >= end {
                break;
            }
            let recent = meta.retransmitted_at.is_some_and(|at| now.nanos_since(at) < linger_ns);
            // Multicast repairs reach everyone, so one per linger is enough; unicast
            // repairs reach only the requester, so each requester gets its own.
            let duplicate = recent && (multicast || meta.retransmitted_to == Some(source));
            if duplicate {
                self.stats.naks_deduplicated += 1;
            } else if !self.take_token(now, source) {
                self.stats.naks_rate_limited += 1;
                break;
            } else if self.retransmits.len() < self.retransmits.capacity() {
                let meta = self.ring.get_mut(logical).expect("logical < len");
                meta.retransmitted_at = Some(now);
                meta.retransmitted_to = Some(source);
                let destination = if multicast { Destination::All } else { Destination::To(source) };
                self.retransmits
                    .push_back(RetransmitOut { first_sequence: meta.first_sequence, destination });
            } else {
                self.stats.retransmit_queue_full += 1;
                break;
            }
            logical += 1;
        }
    }

    fn handle_status(&mut self, now: MonoTime, source: SocketAddr, status: &StatusMessage) {
        self.stats.status_received += 1;
        let position = ReceiverPosition {
            address: source,
            receiver_id: status.receiver_id.get(),
            highest_contiguous_sequence: status.highest_contiguous_sequence.get(),
            window_events: status.window_events.get(),
            last_seen: now,
            retransmit_tokens: self.config.retransmit_burst,
            refilled_at: now,
        };
        if let Some(known) =
            self.receivers.iter_mut().find(|r| r.address == source && r.receiver_id == position.receiver_id)
        {
            // Keep its retransmission budget: a status message must not refill it.
            *known = ReceiverPosition {
                retransmit_tokens: known.retransmit_tokens,
                refilled_at: known.refilled_at,
                ..position
            };
            return;
        }
        if self.receivers.len() < self.config.receivers_max {
            self.receivers.push(position);
            return;
        }
        // Full: replace a receiver that has gone silent, never a live one.
        let timeout_ns = self.config.receiver_timeout_us.saturating_mul(1_000);
        match self.receivers.iter_mut().find(|r| now.nanos_since(r.last_seen) > timeout_ns) {
            Some(stale) => *stale = position,
            None => self.stats.receivers_dropped += 1,
        }
    }

    /// Checks the sender's own bookkeeping (our bugs, never input).
    fn invariants(&self) {
        assert!(self.unsent <= self.ring.len());
        assert!(self.retransmits.len() <= self.retransmits.capacity());
        assert!(self.control.len() <= self.config.control_queue_max);
        if let Some(open) = self.open {
            assert_eq!(open.first_sequence + u64::from(open.count), self.next_sequence);
            assert!(open.size <= self.plain_max);
        }
    }
}
