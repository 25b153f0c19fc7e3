//! What the sequencer shows operators: counters the hot thread updates with relaxed
//! atomics (prometheus-client's counters and gauges are exactly that), and an HTTP
//! `/metrics` + `/status` endpoint on a thread of its own, so a scrape never touches
//! the hot path.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use ledgerbus_log::{LogHead, ReplayHost};

use crate::group::MemberStatus;
use ledgerbus_telemetry::prometheus_client::collector::Collector;
use ledgerbus_telemetry::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use ledgerbus_telemetry::prometheus_client::metrics::gauge::ConstGauge;
use ledgerbus_telemetry::prometheus_client::metrics::MetricType;
use ledgerbus_telemetry::{Counter, Histogram, Registry, U64Gauge};

/// A consumer's position as reported in its status messages.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerPosition {
    /// Its receiver id.
    pub receiver_id: u32,
    /// Its address.
    pub address: SocketAddr,
    /// Highest contiguous sequence delivered.
    pub position: u64,
}

/// Everything `/metrics` shows. Counters are cheap clones of one atomic each; the
/// registry holds the other clone.
#[derive(Debug)]
pub struct SequencerMetrics {
    /// Events decided and journaled.
    pub events: Counter,
    /// Commands rejected (any result other than ok/exists).
    pub rejected: Counter,
    /// Sequence of the last durable event.
    pub last_sequence: U64Gauge,
    /// Journal sync latency per group commit, seconds.
    pub fsync: Histogram,
    /// Gateway connections authenticated and open.
    pub gateways_connected: U64Gauge,
    /// Gateway connections refused (bad secret, protocol errors).
    pub gateways_refused: Counter,
    /// Datagrams retransmitted (copied from the bus sender's own count).
    pub retransmits: Counter,
    /// NAKs received (copied from the bus sender's own count).
    pub naks: Counter,
    /// Malformed or unauthenticated packets dropped on any port.
    pub bad_packets: Counter,
    /// Datagrams on the bus port dropped because their tag did not verify (forged,
    /// corrupted, another key, replayed control); copied from the bus sender.
    pub unauthenticated_datagrams: Counter,
    /// Replay sessions served.
    pub replays: Counter,
    /// Replay connections refused for a missing or wrong credential.
    pub replays_refused: Counter,
    /// Where the log stands, for `/status` and the replay service.
    pub head: Mutex<LogHead>,
    /// Consumers' positions, refreshed by the hot thread a few times a second.
    pub consumers: Arc<Mutex<Vec<ConsumerPosition>>>,
    /// A group member's role, term, positions and followers' lag (none for a
    /// single sequencer), refreshed by the hot thread.
    pub group: Arc<Mutex<Option<MemberStatus>>>,
}

impl Default for SequencerMetrics {
    fn default() -> Self {
        SequencerMetrics {
            events: Counter::default(),
            rejected: Counter::default(),
            last_sequence: U64Gauge::default(),
            fsync: Histogram::new(ledgerbus_telemetry::latency_buckets()),
            gateways_connected: U64Gauge::default(),
            gateways_refused: Counter::default(),
            retransmits: Counter::default(),
            naks: Counter::default(),
            bad_packets: Counter::default(),
            unauthenticated_datagrams: Counter::default(),
            replays: Counter::default(),
            replays_refused: Counter::default(),
            head: Mutex::new(LogHead::default()),
            consumers: Arc::default(),
            group: Arc::default(),
        }
    }
}

impl SequencerMetrics {
    /// Records one group commit's sync latency.
    pub fn record_fsync(&self, us: u64) {
        self.fsync.observe(us as f64 / 1e6);
    }

    /// Where the log stands now.
    pub fn head(&self) -> LogHead {
        self.head.lock().map(|head| *head).unwrap_or_default()
    }

    /// Sets where the log stands.
    pub fn set_head(&self, head: LogHead) {
        self.last_sequence.set(head.last_sequence);
        if let Ok(mut held) = self.head.lock() {
            *held = head;
        }
    }

    /// A registry holding these metrics and the process metrics.
    pub fn registry(&self) -> Registry {
        let mut registry = ledgerbus_telemetry::registry();
        let r = &mut registry;
        r.register("ledgerbus_events", "Events decided and journaled.", self.events.clone());
        r.register("ledgerbus_rejected", "Commands decided with a rejection.", self.rejected.clone());
        r.register(
            "ledgerbus_last_sequence",
            "Sequence of the last durable event.",
            self.last_sequence.clone(),
        );
        r.register("ledgerbus_fsync_seconds", "Journal sync latency per group commit.", self.fsync.clone());
        r.register(
            "ledgerbus_gateways_connected",
            "Authenticated gateway connections.",
            self.gateways_connected.clone(),
        );
        r.register(
            "ledgerbus_gateways_refused",
            "Gateway connections refused.",
            self.gateways_refused.clone(),
        );
        r.register("ledgerbus_retransmits", "Datagrams retransmitted.", self.retransmits.clone());
        r.register("ledgerbus_naks", "NAKs received.", self.naks.clone());
        r.register(
            "ledgerbus_bad_packets",
            "Malformed or unauthenticated packets dropped.",
            self.bad_packets.clone(),
        );
        r.register(
            "ledgerbus_unauthenticated_datagrams",
            "Datagrams on the bus port dropped because their authentication tag did not verify.",
            self.unauthenticated_datagrams.clone(),
        );
        r.register("ledgerbus_replays", "Bulk replay sessions served.", self.replays.clone());
        r.register(
            "ledgerbus_replays_refused",
            "Bulk replay connections refused for a missing or wrong credential.",
            self.replays_refused.clone(),
        );
        r.register_collector(Box::new(GroupGauges { group: Arc::clone(&self.group) }));
        r.register_collector(Box::new(ConsumerPositions {
            consumers: Arc::clone(&self.consumers),
            last_sequence: self.last_sequence.clone(),
        }));
        registry
    }

    /// `/status` as JSON: where the log is and its hash, for comparing replicas; for
    /// a group member also its role, term, positions and followers' lag.
    pub fn status_json(&self) -> String {
        let LogHead { last_sequence, state_hash, session } = self.head();
        let group = match self.group.lock().ok().and_then(|g| g.clone()) {
            Some(status) => {
                let lag: Vec<String> =
                    status.follower_lag.iter().map(|(id, lag)| format!("\"{id}\":{lag}")).collect();
                format!(
                    ",\"group\":{{\"replica_id\":{},\"role\":\"{}\",\"term\":{},\"leader\":{},\"commit_index\":{},\"last_index\":{},\"follower_lag_entries\":{{{}}}}}",
                    status.id,
                    status.role,
                    status.term,
                    status.leader,
                    status.commit_index,
                    status.last_index,
                    lag.join(",")
                )
            }
            None => String::new(),
        };
        format!(
            "{{\"role\":\"sequencer\",\"session\":\"{session:016x}\",\"last_sequence\":{last_sequence},\"state_hash\":\"{state_hash:016x}\"{group}}}"
        )
    }
}

impl ReplayHost for SequencerMetrics {
    fn head(&self) -> LogHead {
        SequencerMetrics::head(self)
    }

    fn served(&self) {
        self.replays.inc();
    }

    fn refused(&self) {
        self.replays_refused.inc();
    }
}

/// A group member's gauges: nothing for a single sequencer.
#[derive(Debug)]
struct GroupGauges {
    group: Arc<Mutex<Option<MemberStatus>>>,
}

impl Collector for GroupGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(status) = self.group.lock().ok().and_then(|g| g.clone()) else { return Ok(()) };
        let mut role = encoder.encode_descriptor(
            "ledgerbus_group_role",
            "1 for this member's current role (leader, follower, candidate, quarantined).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1u64).encode(role.encode_family(&[("role", status.role)])?)?;
        let plain: [(&str, &str, u64); 5] = [
            ("ledgerbus_group_replica_id", "This member's replica id.", status.id),
            ("ledgerbus_group_term", "The Raft term this member is in.", status.term),
            ("ledgerbus_group_leader", "The leader's replica id (0: none known).", status.leader),
            ("ledgerbus_group_commit_index", "Raft index of the last committed entry.", status.commit_index),
            (
                "ledgerbus_group_last_index",
                "Raft index of the last entry in this member's log.",
                status.last_index,
            ),
        ];
        for (name, help, value) in plain {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)?;
        }
        let mut lag = encoder.encode_descriptor(
            "ledgerbus_group_follower_lag_entries",
            "On the leader: entries each follower lacks.",
            None,
            MetricType::Gauge,
        )?;
        for (follower, entries) in &status.follower_lag {
            ConstGauge::new(*entries).encode(lag.encode_family(&[("follower", follower.to_string())])?)?;
        }
        Ok(())
    }
}

/// One number of a consumer, given the log's last sequence.
type ConsumerValue = fn(&ConsumerPosition, u64) -> u64;

/// Each consumer's reported position and how far behind the head it is, one series
/// per consumer present now (a consumer that went away leaves no stale series).
#[derive(Debug)]
struct ConsumerPositions {
    consumers: Arc<Mutex<Vec<ConsumerPosition>>>,
    last_sequence: U64Gauge,
}

impl Collector for ConsumerPositions {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let consumers = self.consumers.lock().map(|c| c.clone()).unwrap_or_default();
        let last = self.last_sequence.get();
        let families: [(&str, &str, ConsumerValue); 2] = [
            ("ledgerbus_consumer_position", "Highest contiguous sequence each consumer reports.", |c, _| {
                c.position
            }),
            ("ledgerbus_consumer_lag_events", "Events each consumer is behind.", |c, last| {
                last.saturating_sub(c.position)
            }),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for consumer in &consumers {
                let labels = [
                    ("receiver_id", consumer.receiver_id.to_string()),
                    ("address", consumer.address.to_string()),
                ];
                ConstGauge::new(value(consumer, last)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Serves `GET /metrics` and `GET /status` on `listener` until the process ends, on
/// a thread of its own.
pub fn serve_sequencer(
    listener: std::net::TcpListener,
    metrics: Arc<SequencerMetrics>,
) -> std::io::Result<()> {
    let registry = Arc::new(metrics.registry());
    let router = ledgerbus_telemetry::metrics_route(registry).route(
        "/status",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move { ([("content-type", "application/json")], metrics.status_json()) }
        }),
    );
    ledgerbus_telemetry::serve_router(listener, router, "metrics-http")
}
