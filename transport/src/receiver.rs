//! The receiving half of the protocol, as a plain state machine.
//!
//! # Call order
//! The driver, on every wake-up:
//! 1. feeds each received datagram to [`Receiver::handle_datagram`], with a closure
//!    that gets every newly deliverable event `(sequence, frame)` exactly once and in
//!    order, straight from the datagram's bytes (no copy);
//! 2. calls [`Receiver::handle_timeout`] when [`Receiver::poll_timeout`] has passed;
//! 3. sends what [`Receiver::poll_transmit`] writes (NAKs, status messages) to the
//!    sender's control address, and handles [`Receiver::poll_event`] signals
//!    (needs replay, new session).
//!
//! Delivery goes through a closure rather than a `poll_*` queue so that the hot path
//! never copies an event: the bytes are handed over while the datagram is in hand.
//!
//! Gaps: data beyond `next_expected`, or a heartbeat announcing a higher next
//! sequence, opens a gap. The first NAK follows a short fixed delay (unicast) or a
//! random back-off (multicast, so that one receiver's NAK and the re-multicast repair
//! spare the others theirs); unanswered NAKs repeat with doubling intervals. A gap
//! the sender can no longer fill (`NakUnavailable`, or a heartbeat whose oldest
//! retained sequence is past it) stops NAKing and raises `NeedsReplay`.

use std::collections::VecDeque;
use std::net::SocketAddr;

use ledgerbus_codec::messages::{Heartbeat, Nak, NakUnavailable, StatusMessage};
use ledgerbus_codec::{CrcCheck, Frame, Packet, PacketKind, PacketWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{ConfigError, DeliveryMode, ReceiverConfig};
use crate::reorder::{Insert, ReorderBuffer};
use crate::security::NodeSeal;
use crate::stats::ReceiverStats;
use crate::MonoTime;

/// Something the application must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Events from `from_sequence` are no longer retransmittable: fetch them with a
    /// bulk replay, then call [`Receiver::resume`]. Live data is buffered meanwhile
    /// (bounded) and NAKing stops.
    NeedsReplay { from_sequence: u64, oldest_retained_sequence: u64 },
    /// Packets of another session arrived (the sequencer started a new log). They
    /// are dropped, never mixed in; call [`Receiver::reset_session`] to follow it.
    SessionChanged { current: u64, new: u64 },
}

/// A control datagram waiting to be sent.
#[derive(Debug, Clone, Copy)]
enum ControlOut {
    Nak { from_sequence: u64, count: u32 },
    Status,
}

/// Most NAK ranges sent per NAK round; more holes wait for the next round.
const NAK_RANGES_PER_ROUND_MAX: usize = 16;
/// Control datagrams queued at most (NAK rounds plus status messages).
const CONTROL_QUEUE_MAX: usize = 2 * NAK_RANGES_PER_ROUND_MAX + 4;
/// Events queued at most; each kind is raised once per cause, so this is ample.
const EVENT_QUEUE_MAX: usize = 8;
/// NAK retry intervals double up to this factor.
const NAK_BACKOFF_FACTOR_MAX: u64 = 8;

/// The receiving state machine. See the module docs for the call order.
#[derive(Debug)]
pub struct Receiver {
    config: ReceiverConfig,
    /// The session being followed; adopted from the first packet if not given.
    session: Option<u64>,
    /// A foreign session already reported, so it is reported once.
    announced_session: Option<u64>,
    /// Every event before this has been delivered.
    next_expected: u64,
    /// One past the highest sequence known to exist (data seen or heartbeat).
    known_end: u64,
    reorder: ReorderBuffer,
    /// When the next NAK round is due, while a gap is open.
    nak_at: Option<MonoTime>,
    /// NAK rounds sent for the current head gap.
    nak_rounds: u32,
    /// When the current gap was first seen (for repair latency).
    gap_since: Option<MonoTime>,
    /// Set while waiting for a bulk replay: the first missing sequence.
    needs_replay: Option<u64>,
    status_at: MonoTime,
    /// The gap to the next periodic status: the configured interval while the
    /// position moves, doubling while it stands still up to `status_interval_max_us`.
    status_gap_us: u64,
    /// Position last reported in a status message.
    status_position: u64,
    control: VecDeque<ControlOut>,
    events: VecDeque<ReceiverEvent>,
    rng: ChaCha8Rng,
    /// Seals what goes out and opens what comes in, when the bus is secured.
    seal: Option<NodeSeal>,
    stats: ReceiverStats,
    /// Where the last data or heartbeat of the followed session came from (opened,
    /// when the bus is sealed): the sender to report to, even after a group's new
    /// leader took over the stream.
    sender_address: Option<SocketAddr>,
}

impl Receiver {
    /// A receiver that delivers from `next_expected` (1 for a new consumer; one past
    /// its last applied event after a restart). `session` pins the session to follow;
    /// `None` follows the first one heard.
    pub fn new(
        config: ReceiverConfig,
        next_expected: u64,
        session: Option<u64>,
        now: MonoTime,
    ) -> Result<Receiver, ConfigError> {
        config.validate()?;
        let seal =
            NodeSeal::new(&config.security, config.receiver_id, config.instance, config.datagram_size_max);
        let receiver = Receiver {
            seal,
            reorder: ReorderBuffer::new(config.reorder_datagrams_max, config.datagram_size_max),
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            session,
            announced_session: None,
            next_expected,
            known_end: next_expected,
            nak_at: None,
            nak_rounds: 0,
            gap_since: None,
            needs_replay: None,
            // Announce ourselves at once so the sender learns our address and window.
            status_at: now,
            status_gap_us: config.status_interval_us,
            status_position: next_expected.saturating_sub(1),
            control: VecDeque::with_capacity(CONTROL_QUEUE_MAX),
            events: VecDeque::with_capacity(EVENT_QUEUE_MAX),
            stats: ReceiverStats::default(),
            sender_address: None,
            config,
        };
        receiver.invariants();
        Ok(receiver)
    }

    // ----- getters -------------------------------------------------------------------

    /// Every event before this has been delivered.
    #[inline]
    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    /// Highest sequence delivered (0 before the first).
    #[inline]
    pub fn highest_contiguous_sequence(&self) -> u64 {
        self.next_expected.saturating_sub(1)
    }

    /// One past the highest sequence known to exist; `known_end - next_expected` is the lag.
    #[inline]
    pub fn known_end(&self) -> u64 {
        self.known_end
    }

    /// The session followed, once known.
    #[inline]
    pub fn session(&self) -> Option<u64> {
        self.session
    }

    /// Whether delivery is stopped until a bulk replay and `resume`.
    #[inline]
    pub fn needs_replay(&self) -> Option<u64> {
        self.needs_replay
    }

    /// Counters for metrics.
    #[inline]
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &ReceiverConfig {
        &self.config
    }

    // ----- inputs --------------------------------------------------------------------

    /// Where the followed stream last came from (data or heartbeat), if heard yet.
    pub fn sender_address(&self) -> Option<SocketAddr> {
        self.sender_address
    }

    /// Feeds one datagram from the bus. `deliver(sequence, frame)` is called for each
    /// event that becomes deliverable, in order, exactly once over the receiver's life.
    /// On a secured bus nothing of a datagram is acted on before its tag verifies.
    pub fn handle_datagram(
        &mut self,
        now: MonoTime,
        source: SocketAddr,
        bytes: &[u8],
        deliver: &mut impl FnMut(u64, &[u8]),
    ) {
        // Out of `self` while its plaintext is handled (which never seals).
        let Some(mut seal) = self.seal.take() else {
            self.handle_plain(now, source, bytes, CrcCheck::Verify, deliver);
            return;
        };
        match seal.open(bytes) {
            // The tag proves integrity more strongly than the CRC would.
            Ok(plain) => self.handle_plain(now, source, plain, CrcCheck::Skip, deliver),
            Err(_) => self.stats.unauthenticated += 1,
        }
        self.seal = Some(seal);
    }

    /// A datagram known to be authentic (or a bus without security).
    fn handle_plain(
        &mut self,
        now: MonoTime,
        source: SocketAddr,
        bytes: &[u8],
        crc: CrcCheck,
        deliver: &mut impl FnMut(u64, &[u8]),
    ) {
        let Ok(packet) = Packet::decode(bytes, crc) else {
            self.stats.bad_packets += 1;
            return;
        };
        let header = packet.header();
        if header.stream_id.get() != self.config.stream_id {
            self.stats.wrong_stream += 1;
            return;
        }
        let session = header.session_id.get();
        match self.session {
            None => self.session = Some(session),
            Some(current) if current != session => {
                self.stats.wrong_session += 1;
                if self.announced_session != Some(session) && self.events.len() < EVENT_QUEUE_MAX {
                    self.announced_session = Some(session);
                    self.events.push_back(ReceiverEvent::SessionChanged { current, new: session });
                }
                return;
            }
            Some(_) => {}
        }
        let next_before = self.next_expected;
        match packet.kind() {
            PacketKind::Data => {
                self.sender_address = Some(source);
                self.handle_data(now, &packet, bytes, deliver)
            }
            PacketKind::Control => match packet.control() {
                Ok(Frame::Heartbeat(heartbeat)) => {
                    self.sender_address = Some(source);
                    self.handle_heartbeat(now, &heartbeat)
                }
                Ok(Frame::NakUnavailable(reply)) => self.handle_unavailable(&reply),
                Ok(_) => self.stats.unexpected_packets += 1,
                Err(_) => self.stats.bad_packets += 1,
            },
        }
        self.after_input(now, self.next_expected > next_before);
    }

    /// Runs timers that are due: NAK rounds and status messages. A call when
    /// nothing is due does nothing.
    pub fn handle_timeout(&mut self, now: MonoTime) {
        if now >= self.status_at {
            // Standing still: report less and less often; moving: at the base rate.
            let moved = self.highest_contiguous_sequence() != self.status_position;
            self.status_gap_us = if moved {
                self.config.status_interval_us
            } else {
                self.status_gap_us.saturating_mul(2).min(self.config.status_interval_max_us)
            };
            self.queue_status();
            self.status_at = now.plus_us(self.status_gap_us);
        }
        if self.nak_at.is_some_and(|at| now >= at) {
            self.nak_round(now);
        }
        self.invariants();
    }

    /// After a bulk replay delivered every event before `next_sequence`: continue live
    /// from there. Buffered live data that is now contiguous is delivered at once.
    pub fn resume(&mut self, now: MonoTime, next_sequence: u64, deliver: &mut impl FnMut(u64, &[u8])) {
        self.needs_replay = None;
        self.next_expected = self.next_expected.max(next_sequence);
        self.known_end = self.known_end.max(self.next_expected);
        self.drain(now, deliver);
        self.nak_at = None;
        self.gap_since = None;
        self.after_input(now, true);
    }

    /// Follows a new session from `next_expected`, forgetting everything buffered.
    pub fn reset_session(&mut self, now: MonoTime, session: u64, next_expected: u64) {
        self.session = Some(session);
        self.announced_session = None;
        self.next_expected = next_expected;
        self.known_end = next_expected;
        self.reorder.clear();
        self.needs_replay = None;
        self.nak_at = None;
        self.gap_since = None;
        self.status_at = now;
        self.status_gap_us = self.config.status_interval_us;
        self.invariants();
    }

    // ----- outputs -------------------------------------------------------------------

    /// The next control datagram for the sender, written into `buf`; returns its size.
    pub fn poll_transmit(&mut self, now: MonoTime, buf: &mut [u8]) -> Option<usize> {
        let item = self.control.pop_front()?;
        let session = self.session.unwrap_or(0);
        let mut writer = PacketWriter::control(buf, self.config.stream_id, session);
        let pushed = match item {
            ControlOut::Nak { from_sequence, count } => {
                self.stats.naks_sent += 1;
                writer.push(&Nak {
                    from_sequence: from_sequence.into(),
                    count: count.into(),
                    receiver_id: self.config.receiver_id.into(),
                })
            }
            ControlOut::Status => {
                self.stats.status_sent += 1;
                self.status_position = self.highest_contiguous_sequence();
                writer.push(&StatusMessage {
                    receiver_id: self.config.receiver_id.into(),
                    window_events: if self.config.flow_control { self.config.window_events } else { 0 }
                        .into(),
                    highest_contiguous_sequence: self.status_position.into(),
                })
            }
        };
        pushed.expect("a control message fits any valid datagram size");
        let size = writer.finish(now.as_nanos());
        Some(match &mut self.seal {
            Some(seal) => seal.seal(buf, size),
            None => size,
        })
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> MonoTime {
        match self.nak_at {
            Some(nak_at) => nak_at.min(self.status_at),
            None => self.status_at,
        }
    }

    /// The next signal for the application.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    // ----- internals -----------------------------------------------------------------

    fn handle_data(
        &mut self,
        now: MonoTime,
        packet: &Packet<'_>,
        bytes: &[u8],
        deliver: &mut impl FnMut(u64, &[u8]),
    ) {
        let header = packet.header();
        let first = header.first_sequence.get();
        let count = u64::from(header.message_count.get());
        let Some(end) = first.checked_add(count).filter(|_| count > 0) else {
            self.stats.inconsistent_packets += 1;
            return;
        };
        let new_hole = first > self.known_end;
        self.known_end = self.known_end.max(end);
        if new_hole {
            self.nak_soon(now);
        }
        if end <= self.next_expected {
            self.stats.duplicate_datagrams += 1;
            return;
        }
        if first <= self.next_expected && self.needs_replay.is_none() {
            self.stats.datagrams_received += 1;
            self.deliver_from(packet.payload(), first, deliver);
            if self.reorder.is_empty() && self.gap_since.is_some() && self.next_expected >= self.known_end {
                // A tail gap (seen by heartbeat) just closed without buffered data.
                self.record_repair(now, self.gap_since.unwrap_or(now));
            }
            self.drain(now, deliver);
            return;
        }
        match self.reorder.insert(first, end, bytes, now) {
            Insert::Stored => self.stats.out_of_order_datagrams += 1,
            Insert::Duplicate => self.stats.duplicate_datagrams += 1,
            Insert::Full => self.stats.reorder_overflow += 1,
        }
    }

    /// Delivers the events of `payload` (frames numbered from `first`) that are at or
    /// after `next_expected`, and advances it.
    fn deliver_from(&mut self, payload: &[u8], first: u64, deliver: &mut impl FnMut(u64, &[u8])) {
        debug_assert!(first <= self.next_expected);
        let skip = self.next_expected - first;
        let mut sequence = first;
        for frame in ledgerbus_codec::Frames::new(payload) {
            // Framing was checked by Packet::decode; an error here cannot happen.
            let Ok(frame) = frame else { break };
            if sequence >= first + skip {
                deliver(sequence, frame);
                self.stats.events_delivered += 1;
            }
            sequence += 1;
        }
        self.next_expected = self.next_expected.max(sequence);
    }

    /// Delivers buffered datagrams that have become contiguous.
    fn drain(&mut self, now: MonoTime, deliver: &mut impl FnMut(u64, &[u8])) {
        if self.needs_replay.is_some() {
            return;
        }
        let mut first_drained = true;
        while let Some(entry) = self.reorder.first_ready(self.next_expected) {
            if entry.end_sequence > self.next_expected {
                if first_drained {
                    // This datagram waited behind the gap just filled.
                    self.record_repair(now, entry.arrived_at);
                    first_drained = false;
                }
                // Copy the payload out of the borrow: deliver_from needs &mut self.
                let datagram = self.reorder.datagram(&entry);
                let payload = &datagram[ledgerbus_codec::PACKET_HEADER_SIZE..];
                let skip = self.next_expected - entry.first_sequence;
                let mut sequence = entry.first_sequence;
                let mut delivered = 0;
                for frame in ledgerbus_codec::Frames::new(payload) {
                    let Ok(frame) = frame else { break };
                    if sequence >= entry.first_sequence + skip {
                        deliver(sequence, frame);
                        delivered += 1;
                    }
                    sequence += 1;
                }
                self.stats.events_delivered += delivered;
                self.next_expected = self.next_expected.max(sequence);
            }
            self.reorder.pop_front();
        }
    }

    fn record_repair(&mut self, now: MonoTime, since: MonoTime) {
        self.stats.gaps_repaired += 1;
        let latency_ns = now.nanos_since(since).clamp(1_000, 100_000_000_000);
        let _ = self.stats.repair_latency_ns.record(latency_ns);
    }

    fn handle_heartbeat(&mut self, now: MonoTime, heartbeat: &Heartbeat) {
        self.stats.heartbeats_received += 1;
        let next_sequence = heartbeat.next_sequence.get();
        if next_sequence > self.known_end {
            // Tail loss: events were sent that never arrived.
            self.known_end = next_sequence;
            self.nak_soon(now);
        }
        let oldest = heartbeat.oldest_retained_sequence.get();
        if self.known_end > self.next_expected && self.next_expected < oldest {
            self.raise_needs_replay(oldest);
        }
    }

    fn handle_unavailable(&mut self, reply: &NakUnavailable) {
        let oldest = reply.oldest_retained_sequence.get();
        if self.next_expected < oldest {
            self.raise_needs_replay(oldest);
        }
    }

    fn raise_needs_replay(&mut self, oldest_retained_sequence: u64) {
        if self.needs_replay.is_some() {
            return;
        }
        self.needs_replay = Some(self.next_expected);
        self.nak_at = None;
        if self.events.len() < EVENT_QUEUE_MAX {
            self.events.push_back(ReceiverEvent::NeedsReplay {
                from_sequence: self.next_expected,
                oldest_retained_sequence,
            });
        }
    }

    /// A new hole appeared: NAK after the first-NAK delay, unless a round is due sooner.
    /// Older holes get re-NAKed in that round too; the sender's linger absorbs repeats.
    fn nak_soon(&mut self, now: MonoTime) {
        if self.needs_replay.is_some() {
            return;
        }
        let at = self.first_nak_at(now);
        self.nak_at = Some(self.nak_at.map_or(at, |existing| existing.min(at)));
    }

    /// Re-evaluates the gap state and the status schedule after any input.
    fn after_input(&mut self, now: MonoTime, progressed: bool) {
        let gap_open = self.known_end > self.next_expected && self.needs_replay.is_none();
        if !gap_open {
            self.gap_since = None;
            self.nak_at = None;
            self.nak_rounds = 0;
        } else {
            if self.gap_since.is_none() {
                self.gap_since = Some(now);
            }
            if progressed {
                // The head gap was repaired: retries for the next one start short again.
                self.nak_rounds = 0;
            }
            if self.nak_at.is_none() {
                self.nak_soon(now);
            }
        }
        // Tell the sender promptly when a quarter of the window has been consumed,
        // so flow control never waits for the periodic status.
        let window_quarter = u64::from(self.config.window_events / 4).max(1);
        if self.highest_contiguous_sequence() >= self.status_position + window_quarter {
            self.queue_status();
            self.status_position = self.highest_contiguous_sequence();
        }
        self.invariants();
    }

    fn first_nak_at(&mut self, now: MonoTime) -> MonoTime {
        match self.config.mode {
            DeliveryMode::Unicast => now.plus_us(self.config.nak_delay_us),
            DeliveryMode::Multicast => {
                let max_us = self.config.nak_backoff_max_us;
                now.plus_us(if max_us == 0 { 0 } else { self.rng.random_range(0..=max_us) })
            }
        }
    }

    fn nak_round(&mut self, now: MonoTime) {
        let room = CONTROL_QUEUE_MAX - self.control.len();
        let holes_max = room.min(NAK_RANGES_PER_ROUND_MAX);
        let nak_events_max = u64::from(self.config.nak_events_max);
        let mut naks = [(0u64, 0u32); NAK_RANGES_PER_ROUND_MAX];
        let mut found = 0;
        self.reorder.holes(self.next_expected, self.known_end, holes_max, |from, end| {
            let count = (end - from).min(nak_events_max) as u32;
            naks[found] = (from, count);
            found += 1;
        });
        for &(from_sequence, count) in &naks[..found] {
            self.control.push_back(ControlOut::Nak { from_sequence, count });
        }
        self.nak_rounds = self.nak_rounds.saturating_add(1);
        let factor = 1u64 << (self.nak_rounds.saturating_sub(1)).min(3);
        let retry_us = self.config.nak_retry_us.saturating_mul(factor.min(NAK_BACKOFF_FACTOR_MAX));
        self.nak_at = Some(now.plus_us(retry_us));
    }

    fn queue_status(&mut self) {
        if self.control.len() < CONTROL_QUEUE_MAX
            && !self.control.iter().any(|c| matches!(c, ControlOut::Status))
        {
            self.control.push_back(ControlOut::Status);
        }
    }

    /// Checks the receiver's own bookkeeping (our bugs, never input).
    fn invariants(&self) {
        assert!(self.known_end >= self.next_expected);
        assert!(self.control.len() <= CONTROL_QUEUE_MAX);
        assert!(self.events.len() <= EVENT_QUEUE_MAX);
        if let Some(from) = self.needs_replay {
            assert!(from <= self.next_expected);
            assert!(self.nak_at.is_none());
        }
    }
}
