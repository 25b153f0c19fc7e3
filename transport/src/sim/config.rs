//! What a simulation runs (faults, sizes, seed) and what it reports.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::security::{BusKey, BusKeys, BusSecurity};
use crate::{ReceiverConfig, SenderConfig};

/// Faults of one direction of the network.
#[derive(Debug, Clone, Copy)]
pub struct LinkFaults {
    /// Base one-way latency.
    pub latency_us: u64,
    /// Extra random latency in `0..=jitter_us`; more jitter, more reordering.
    pub jitter_us: u64,
    /// Probability that a datagram is lost on its own.
    pub loss: f64,
    /// Probability that a datagram starts a burst of consecutive losses.
    pub burst_probability: f64,
    /// Length range of a loss burst, in datagrams.
    pub burst_len: (u32, u32),
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
}

impl LinkFaults {
    /// A perfect link with `latency_us` latency.
    pub fn clean(latency_us: u64) -> LinkFaults {
        LinkFaults {
            latency_us,
            jitter_us: 0,
            loss: 0.0,
            burst_probability: 0.0,
            burst_len: (0, 0),
            duplicate: 0.0,
        }
    }
}

/// One simulation scenario.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice in the run.
    pub seed: u64,
    /// Number of receivers.
    pub receivers: usize,
    /// Events to publish.
    pub events: u64,
    /// Events published per publish tick (fewer if flow control says so).
    pub publish_batch: u32,
    /// Time between publish ticks.
    pub publish_interval_us: u64,
    /// Sender to each receiver, drawn independently per receiver.
    pub data_link: LinkFaults,
    /// Loss before fan-out, shared by all receivers (a multicast switch dropping).
    pub shared_loss: f64,
    /// Receivers to the sender (NAKs, status messages).
    pub control_link: LinkFaults,
    /// Sender settings.
    pub sender: SenderConfig,
    /// Receiver settings (the receiver id and seed are varied per receiver).
    pub receiver: ReceiverConfig,
    /// Length of the faulty phase, after which all links are healed.
    pub heal_after_us: u64,
    /// The run fails if not complete by this virtual time.
    pub time_limit_us: u64,
    /// An attacker on the network injecting a hostile datagram this often, if set.
    pub attack_interval_us: Option<u64>,
}

impl SimConfig {
    /// A scenario with sensible small settings and the given seed.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            receivers: 3,
            events: 10_000,
            publish_batch: 64,
            publish_interval_us: 20,
            data_link: LinkFaults::clean(20),
            shared_loss: 0.0,
            control_link: LinkFaults::clean(20),
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
            heal_after_us: 60_000_000,
            time_limit_us: 120_000_000,
            attack_interval_us: None,
        }
    }

    /// The same scenario on a sealed bus (a key derived from the seed; the sender's and
    /// receivers' instances are set per node by the simulator).
    pub fn secured(mut self) -> SimConfig {
        let mut key = [0u8; 32];
        ChaCha8Rng::seed_from_u64(self.seed ^ 0x05EC_012E).fill(&mut key);
        let keys = Arc::new(BusKeys::new(vec![BusKey::from_bytes(key)]).expect("one key"));
        self.sender.security = BusSecurity::Aead(keys.clone());
        self.receiver.security = BusSecurity::Aead(keys);
        self
    }
}

/// What a finished run measured.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Events each receiver got (all equal to `events` on success).
    pub delivered: Vec<u64>,
    /// NAK datagrams sent by all receivers.
    pub naks_sent: u64,
    /// Datagrams retransmitted by the sender.
    pub retransmits: u64,
    /// Datagrams dropped by the network (data and control).
    pub datagrams_lost: u64,
    /// Data datagrams the sender lost before fan-out (multicast shared loss).
    pub shared_losses: u64,
    /// Bulk replays the receivers needed.
    pub replays: u64,
    /// Virtual time at completion.
    pub finished_at_us: u64,
    /// Worst repair latency p99 over receivers, in microseconds.
    pub repair_p99_us: u64,
    /// Hostile datagrams the attacker injected.
    pub attacks: u64,
    /// Datagrams dropped as unauthenticated by the sender and every receiver.
    pub unauthenticated: u64,
}
