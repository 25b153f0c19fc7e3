//! A deterministic network simulator for the protocol core (docs/architecture.md, "Design rules" 9).
//!
//! One [`Sender`] and several [`Receiver`]s exchange real datagrams through a
//! simulated network with latency, jitter (which reorders), random loss, loss bursts
//! and duplication, on a virtual clock that jumps to the next deadline. Every random
//! choice comes from one `u64` seed, so a failure replays exactly from the seed
//! printed in its message. A checker asserts that every receiver gets every event
//! exactly once, in order, with the right bytes.
//!
//! A run has a safety phase (faults on, events published) and a liveness phase
//! (faults healed) that must end with every receiver complete within a time bound.
//! Receivers that fall behind the sender's ring are caught up by a simulated bulk
//! replay, as a consumer does against the sequencer's journal.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ledgerbus_codec::messages::{Heartbeat, Nak, StatusMessage};
use ledgerbus_codec::PacketWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::ConfigError;
use crate::{Destination, MonoTime, Receiver, ReceiverEvent, Sender};

mod checker;
mod config;
pub use checker::event_frame;
use checker::Checker;
pub use config::{LinkFaults, SimConfig, SimReport};

/// A datagram in flight.
struct InFlight {
    to: Node,
    from: SocketAddr,
    bytes: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    Sender,
    Receiver(usize),
}

/// The attacker's own address, and the victim it spoofs as a source.
const ATTACKER_HOST: u8 = 250;
const VICTIM_HOST: u8 = 251;
/// Datagrams the attacker remembers from the wire, to replay.
const CAPTURED_MAX: usize = 64;

/// Loss state of one directed link.
#[derive(Default, Clone, Copy)]
struct LinkState {
    burst_remaining: u32,
}

struct Sim {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: MonoTime,
    sender: Sender,
    sender_address: SocketAddr,
    receivers: Vec<Receiver>,
    receiver_addresses: Vec<SocketAddr>,
    checkers: Vec<Checker>,
    /// (arrival time, tiebreak) → datagram.
    network: BinaryHeap<Reverse<(MonoTime, u64, usize)>>,
    in_flight: Vec<Option<InFlight>>,
    free_flight: Vec<usize>,
    flight_counter: u64,
    data_links: Vec<LinkState>,
    control_links: Vec<LinkState>,
    published: u64,
    next_publish: MonoTime,
    report: SimReport,
    buf: Vec<u8>,
    /// When the attacker strikes next, and what it has captured from the wire.
    next_attack: MonoTime,
    captured: Vec<(Node, Vec<u8>)>,
}

/// Why a simulation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The configuration was refused by the sender or a receiver.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An invariant broke: lost, duplicated, reordered or wrong events, or no
    /// progress by the time limit. The seed replays it exactly.
    #[error("seed {seed:#x}: {violation}")]
    Violation {
        /// The run's seed.
        seed: u64,
        /// What went wrong.
        violation: String,
    },
}

/// A failure inside the run, before the seed is attached.
enum Failure {
    Config(ConfigError),
    Violation(String),
}

/// Runs a scenario to completion. On failure the error names the seed.
pub fn run(config: SimConfig) -> Result<SimReport, SimError> {
    let seed = config.seed;
    Sim::new(config).and_then(|mut sim| sim.run()).map_err(|failure| match failure {
        Failure::Config(error) => SimError::Config(error),
        Failure::Violation(violation) => SimError::Violation { seed, violation },
    })
}

impl Sim {
    fn new(config: SimConfig) -> Result<Sim, Failure> {
        let now = MonoTime::ZERO;
        let mut sender_config = config.sender.clone();
        sender_config.instance = config.seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let sender = Sender::new(sender_config, 1, now).map_err(Failure::Config)?;
        let mut receivers = Vec::new();
        let mut receiver_addresses = Vec::new();
        for index in 0..config.receivers {
            let mut receiver_config = config.receiver.clone();
            receiver_config.receiver_id = index as u32 + 1;
            receiver_config.rng_seed = config.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            receiver_config.datagram_size_max = config.sender.datagram_size_max;
            receiver_config.instance = receiver_config.rng_seed.rotate_left(17);
            receivers.push(Receiver::new(receiver_config, 1, None, now).map_err(Failure::Config)?);
            receiver_addresses.push(address(index as u8 + 2));
        }
        Ok(Sim {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            now,
            sender,
            sender_address: address(1),
            checkers: (0..config.receivers).map(|_| Checker { next: 1, error: None }).collect(),
            data_links: vec![LinkState::default(); config.receivers],
            control_links: vec![LinkState::default(); config.receivers],
            receivers,
            receiver_addresses,
            network: BinaryHeap::new(),
            in_flight: Vec::new(),
            free_flight: Vec::new(),
            flight_counter: 0,
            published: 0,
            next_publish: now,
            report: SimReport::default(),
            buf: vec![0; config.sender.datagram_size_max],
            next_attack: now.plus_us(config.attack_interval_us.unwrap_or(0)),
            captured: Vec::with_capacity(CAPTURED_MAX),
            config,
        })
    }

    fn healed(&self) -> bool {
        self.now.as_nanos() >= self.config.heal_after_us * 1_000
    }

    fn run(&mut self) -> Result<SimReport, Failure> {
        loop {
            self.deliver_due()?;
            self.run_timers();
            self.publish_due();
            self.attack_due();
            self.drain_transmits()?;
            self.handle_events()?;
            if let Some(error) = self.checkers.iter().find_map(|c| c.error.clone()) {
                return Err(Failure::Violation(error));
            }
            if self.complete() {
                return Ok(self.finish());
            }
            let next = self.next_wakeup();
            if next.as_nanos() > self.config.time_limit_us * 1_000 {
                let positions: Vec<u64> = self.receivers.iter().map(|r| r.next_expected() - 1).collect();
                return Err(Failure::Violation(format!(
                    "not complete by {} µs: published {} of {}, receiver positions {positions:?}",
                    self.config.time_limit_us, self.published, self.config.events
                )));
            }
            assert!(next >= self.now, "virtual time must not go backwards");
            self.now = next;
        }
    }

    fn complete(&self) -> bool {
        self.published == self.config.events && self.checkers.iter().all(|c| c.next == self.config.events + 1)
    }

    fn finish(&mut self) -> SimReport {
        let mut report = self.report.clone();
        report.delivered = self.checkers.iter().map(|c| c.next - 1).collect();
        report.naks_sent = self.receivers.iter().map(|r| r.stats().naks_sent).sum();
        report.retransmits = self.sender.stats().retransmits;
        report.finished_at_us = self.now.as_nanos() / 1_000;
        report.repair_p99_us = self
            .receivers
            .iter()
            .map(|r| r.stats().repair_latency_ns.value_at_quantile(0.99) / 1_000)
            .max()
            .unwrap_or(0);
        report.unauthenticated = self.sender.stats().unauthenticated
            + self.receivers.iter().map(|r| r.stats().unauthenticated).sum::<u64>();
        report
    }

    fn next_wakeup(&self) -> MonoTime {
        let mut next = self.sender.poll_timeout();
        for receiver in &self.receivers {
            next = next.min(receiver.poll_timeout());
        }
        if let Some(Reverse((at, _, _))) = self.network.peek() {
            next = next.min(*at);
        }
        if self.published < self.config.events {
            next = next.min(self.next_publish);
        }
        if self.config.attack_interval_us.is_some() && !self.healed() {
            next = next.min(self.next_attack);
        }
        next.max(self.now)
    }

    fn deliver_due(&mut self) -> Result<(), Failure> {
        while let Some(Reverse((at, _, slot))) = self.network.peek().copied() {
            if at > self.now {
                break;
            }
            self.network.pop();
            let flight = self.in_flight[slot].take().expect("in-flight slot filled");
            self.free_flight.push(slot);
            match flight.to {
                Node::Sender => self.sender.handle_datagram(self.now, flight.from, &flight.bytes),
                Node::Receiver(index) => {
                    let checker = &mut self.checkers[index];
                    self.receivers[index].handle_datagram(
                        self.now,
                        flight.from,
                        &flight.bytes,
                        &mut |s, f| checker.deliver(s, f),
                    );
                }
            }
        }
        Ok(())
    }

    fn run_timers(&mut self) {
        if self.now >= self.sender.poll_timeout() {
            self.sender.handle_timeout(self.now);
        }
        for receiver in &mut self.receivers {
            if self.now >= receiver.poll_timeout() {
                receiver.handle_timeout(self.now);
            }
        }
    }

    fn publish_due(&mut self) {
        if self.published == self.config.events || self.now < self.next_publish {
            return;
        }
        let window = self.sender.window_remaining(self.now);
        let batch = u64::from(self.config.publish_batch).min(window).min(self.config.events - self.published);
        for _ in 0..batch {
            let sequence = self.published + 1;
            match self.sender.publish(self.now, &event_frame(sequence)) {
                Ok(assigned) => {
                    assert_eq!(assigned, sequence);
                    self.published += 1;
                }
                Err(_) => break,
            }
        }
        self.next_publish = self.now.plus_us(self.config.publish_interval_us);
    }

    fn drain_transmits(&mut self) -> Result<(), Failure> {
        let mut buf = std::mem::take(&mut self.buf);
        while let Some(transmit) = self.sender.poll_transmit(self.now, &mut buf) {
            let bytes = &buf[..transmit.size];
            match transmit.destination {
                Destination::All => {
                    if !self.healed() && self.rng.random_bool(self.config.shared_loss) {
                        self.report.shared_losses += 1;
                        self.report.datagrams_lost += 1;
                        continue;
                    }
                    for index in 0..self.receivers.len() {
                        self.send_data(index, bytes);
                    }
                }
                Destination::To(address) => {
                    match self.receiver_addresses.iter().position(|a| *a == address) {
                        Some(index) => self.send_data(index, bytes),
                        None => {
                            let error =
                                format!("the sender sent {} bytes to {address}, not a receiver", bytes.len());
                            self.buf = buf;
                            return Err(Failure::Violation(error));
                        }
                    }
                }
            }
        }
        for index in 0..self.receivers.len() {
            while let Some(size) = self.receivers[index].poll_transmit(self.now, &mut buf) {
                let from = self.receiver_addresses[index];
                let faults = self.config.control_link;
                let mut link = self.control_links[index];
                self.send(&mut link, faults, Node::Sender, from, &buf[..size]);
                self.control_links[index] = link;
            }
        }
        self.buf = buf;
        Ok(())
    }

    fn send_data(&mut self, index: usize, bytes: &[u8]) {
        let faults = self.config.data_link;
        let mut link = self.data_links[index];
        self.send(&mut link, faults, Node::Receiver(index), self.sender_address, bytes);
        self.data_links[index] = link;
    }

    fn send(&mut self, link: &mut LinkState, faults: LinkFaults, to: Node, from: SocketAddr, bytes: &[u8]) {
        if self.config.attack_interval_us.is_some() && self.rng.random_bool(0.01) {
            // The attacker sees the wire and keeps some datagrams to replay later.
            if self.captured.len() == CAPTURED_MAX {
                let victim = self.rng.random_range(0..CAPTURED_MAX);
                self.captured.swap_remove(victim);
            }
            self.captured.push((to, bytes.to_vec()));
        }
        let copies = if self.healed() {
            1
        } else if link.burst_remaining > 0 {
            link.burst_remaining -= 1;
            0
        } else if self.rng.random_bool(faults.burst_probability) {
            let (low, high) = faults.burst_len;
            link.burst_remaining = self.rng.random_range(low..=high.max(low)).saturating_sub(1);
            0
        } else if self.rng.random_bool(faults.loss) {
            0
        } else if self.rng.random_bool(faults.duplicate) {
            2
        } else {
            1
        };
        if copies == 0 {
            self.report.datagrams_lost += 1;
        }
        for _ in 0..copies {
            let jitter = if faults.jitter_us == 0 { 0 } else { self.rng.random_range(0..=faults.jitter_us) };
            self.inject(self.now.plus_us(faults.latency_us + jitter), to, from, bytes);
        }
    }

    /// Puts one datagram on the network, arriving at `at`.
    fn inject(&mut self, at: MonoTime, to: Node, from: SocketAddr, bytes: &[u8]) {
        {
            let flight = InFlight { to, from, bytes: bytes.to_vec() };
            let slot = match self.free_flight.pop() {
                Some(slot) => {
                    self.in_flight[slot] = Some(flight);
                    slot
                }
                None => {
                    self.in_flight.push(Some(flight));
                    self.in_flight.len() - 1
                }
            };
            self.flight_counter += 1;
            self.network.push(Reverse((at, self.flight_counter, slot)));
        }
    }

    /// The attacker's turn: one hostile datagram, of a kind drawn at random. It knows
    /// everything public (addresses, stream, the session from any captured header,
    /// receivers' positions) but not the bus key.
    fn attack_due(&mut self) {
        let Some(interval_us) = self.config.attack_interval_us else { return };
        if self.healed() || self.now < self.next_attack {
            return;
        }
        self.next_attack = self.now.plus_us(interval_us);
        self.report.attacks += 1;
        let stream = self.config.sender.stream_id;
        let session = self.config.sender.session_id;
        let target = self.rng.random_range(0..self.receivers.len());
        let attacker = address(ATTACKER_HOST);
        let victim = address(VICTIM_HOST);
        let mut buf = vec![0u8; self.config.sender.datagram_size_max];
        let at = self.now.plus_us(1);
        match self.rng.random_range(0..7) {
            // A made-up event with the next sequence, as if from the sender.
            0 => {
                let next = self.receivers[target].next_expected();
                let mut writer = PacketWriter::data(&mut buf, stream, session, next);
                let mut forged = event_frame(next);
                forged[40] ^= 0xFF; // another debit account
                writer.push_frame(&forged).expect("one frame fits");
                let size = writer.finish(0);
                self.inject(at, Node::Receiver(target), self.sender_address, &buf[..size]);
            }
            // A heartbeat of another session.
            1 => {
                let mut writer = PacketWriter::control(&mut buf, stream, session ^ 0xDEAD);
                let heartbeat =
                    Heartbeat { next_sequence: 1_000_000.into(), oldest_retained_sequence: 999_999.into() };
                writer.push(&heartbeat).expect("fits");
                let size = writer.finish(0);
                self.inject(at, Node::Receiver(target), self.sender_address, &buf[..size]);
            }
            // A status message from the attacker's address, to be taken for a receiver.
            2 => {
                let mut writer = PacketWriter::control(&mut buf, stream, session);
                let status = StatusMessage {
                    receiver_id: 99.into(),
                    window_events: 1.into(),
                    highest_contiguous_sequence: 0.into(),
                };
                writer.push(&status).expect("fits");
                let size = writer.finish(0);
                self.inject(at, Node::Sender, attacker, &buf[..size]);
            }
            // NAKs for everything, from the attacker and spoofed from the victim.
            3 | 4 => {
                let mut writer = PacketWriter::control(&mut buf, stream, session);
                let nak = Nak { from_sequence: 1.into(), count: 65_536.into(), receiver_id: 99.into() };
                writer.push(&nak).expect("fits");
                let size = writer.finish(0);
                let from = if self.rng.random_bool(0.5) { attacker } else { victim };
                self.inject(at, Node::Sender, from, &buf[..size]);
            }
            // A captured datagram replayed, from the attacker or spoofing the victim.
            5 if !self.captured.is_empty() => {
                let (to, bytes) = self.captured[self.rng.random_range(0..self.captured.len())].clone();
                let from = match to {
                    Node::Sender if self.rng.random_bool(0.5) => victim,
                    Node::Sender => self.receiver_addresses[target],
                    Node::Receiver(_) => self.sender_address,
                };
                self.inject(at, to, from, &bytes);
            }
            // A captured datagram with one bit flipped.
            _ if !self.captured.is_empty() => {
                let (to, mut bytes) = self.captured[self.rng.random_range(0..self.captured.len())].clone();
                let bit = self.rng.random_range(0..bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
                let from =
                    if to == Node::Sender { self.receiver_addresses[target] } else { self.sender_address };
                self.inject(at, to, from, &bytes);
            }
            _ => {}
        }
    }

    /// Acts on receiver signals: a needed replay is served from the "journal" (the
    /// deterministic event bytes) up to what has been published.
    fn handle_events(&mut self) -> Result<(), Failure> {
        for index in 0..self.receivers.len() {
            while let Some(event) = self.receivers[index].poll_event() {
                match event {
                    ReceiverEvent::NeedsReplay { from_sequence, .. } => {
                        self.report.replays += 1;
                        let checker = &mut self.checkers[index];
                        if checker.next != from_sequence {
                            return Err(Failure::Violation(format!(
                                "receiver {index} needs replay from {from_sequence} but delivered up to {}",
                                checker.next - 1
                            )));
                        }
                        let end = self.published + 1;
                        for sequence in from_sequence..end {
                            checker.deliver(sequence, &event_frame(sequence));
                        }
                        self.receivers[index].resume(self.now, end, &mut |s, f| checker.deliver(s, f));
                    }
                    ReceiverEvent::SessionChanged { .. } => {
                        return Err(Failure::Violation(format!(
                            "receiver {index} saw a session change in a one-session run"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

fn address(host: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, host)), 4000)
}
