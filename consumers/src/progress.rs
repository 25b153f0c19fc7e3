//! How far a consumer has got, for `/status` (position, lag, state hash, session) and
//! `/metrics` (the same plus apply and repair counters, in Prometheus form).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use ledgerbus_telemetry::{Counter, Family, Registry, U64Gauge};
use ledgerbus_transport::ReceiverStats;
use serde_json::{json, Value};

/// Why the receiver dropped a datagram, as the `reason` label of
/// `ledgerbus_consumer_datagrams_dropped_total`.
type DropReason = [(&'static str, &'static str); 1];

/// Live numbers of one consumer. Gauges and counters are relaxed atomics shared
/// with the registry that `/metrics` renders.
#[derive(Debug)]
pub struct Progress {
    /// `memory`, `disk` or `sql`.
    role: &'static str,
    /// Last applied sequence.
    pub last_sequence: U64Gauge,
    /// Events known to exist but not applied yet.
    pub lag: U64Gauge,
    /// Rolling hash after the last applied event.
    pub state_hash: AtomicU64,
    /// Session followed.
    pub session: AtomicU64,
    /// Events applied since the process started (its rate is the apply rate).
    pub events_applied: Counter,
    /// Bulk replays (catch-ups) run.
    pub bulk_replays: Counter,
    /// Live datagrams accepted.
    datagrams_received: Counter,
    /// NAKs sent for gaps.
    naks_sent: Counter,
    /// Gaps the live stream repaired.
    gaps_repaired: Counter,
    /// Datagrams dropped, by reason.
    datagrams_dropped: Family<DropReason, Counter>,
}

impl Progress {
    /// Nothing applied yet, for a consumer of this role.
    pub fn new(role: &'static str) -> Progress {
        Progress {
            role,
            last_sequence: U64Gauge::default(),
            lag: U64Gauge::default(),
            state_hash: AtomicU64::new(0),
            session: AtomicU64::new(0),
            events_applied: Counter::default(),
            bulk_replays: Counter::default(),
            datagrams_received: Counter::default(),
            naks_sent: Counter::default(),
            gaps_repaired: Counter::default(),
            datagrams_dropped: Family::default(),
        }
    }

    /// Everything up to `last` is applied (a move backwards is a new session
    /// starting over, not events un-applied).
    pub fn applied_through(&self, last: u64) {
        let before = self.last_sequence.set(last);
        self.events_applied.inc_by(last.saturating_sub(before));
    }

    /// Copies the live receiver's own counters (it lives as long as the process's
    /// following does, so its totals are ours).
    pub fn record_receiver(&self, stats: &ReceiverStats) {
        let total = |counter: &Counter, value: u64| counter.inner().store(value, Ordering::Relaxed);
        total(&self.datagrams_received, stats.datagrams_received);
        total(&self.naks_sent, stats.naks_sent);
        total(&self.gaps_repaired, stats.gaps_repaired);
        for (reason, value) in [
            ("unauthenticated", stats.unauthenticated),
            ("malformed", stats.bad_packets),
            ("duplicate", stats.duplicate_datagrams),
            ("reorder_buffer_full", stats.reorder_overflow),
            ("wrong_stream", stats.wrong_stream),
            ("wrong_session", stats.wrong_session),
            ("inconsistent", stats.inconsistent_packets),
            ("unexpected", stats.unexpected_packets),
        ] {
            total(&self.datagrams_dropped.get_or_create(&[("reason", reason)]), value);
        }
    }

    /// Datagrams dropped because their authentication tag did not verify.
    pub fn unauthenticated(&self) -> u64 {
        self.datagrams_dropped.get(&[("reason", "unauthenticated")]).map_or(0, |c| c.get())
    }

    /// A registry of these numbers and the process metrics.
    pub fn registry(&self) -> Registry {
        let mut registry = ledgerbus_telemetry::registry();
        let r = registry.sub_registry_with_label(("consumer".into(), self.role.into()));
        r.register(
            "ledgerbus_consumer_applied_sequence",
            "Sequence of the last event this consumer applied.",
            self.last_sequence.clone(),
        );
        r.register(
            "ledgerbus_consumer_lag_events",
            "Events known to be published but not applied yet.",
            self.lag.clone(),
        );
        r.register(
            "ledgerbus_consumer_events_applied",
            "Events applied since the process started; rate() of it is the apply rate.",
            self.events_applied.clone(),
        );
        r.register(
            "ledgerbus_consumer_bulk_replays",
            "Catch-ups through the sequencer's bulk replay service.",
            self.bulk_replays.clone(),
        );
        r.register(
            "ledgerbus_consumer_datagrams_received",
            "Live data datagrams accepted.",
            self.datagrams_received.clone(),
        );
        r.register("ledgerbus_consumer_naks_sent", "NAKs sent to repair gaps.", self.naks_sent.clone());
        r.register(
            "ledgerbus_consumer_gaps_repaired",
            "Gaps in the live stream repaired by retransmission.",
            self.gaps_repaired.clone(),
        );
        r.register(
            "ledgerbus_consumer_datagrams_dropped",
            "Datagrams dropped, by reason.",
            self.datagrams_dropped.clone(),
        );
        registry
    }

    /// The `/status` body.
    pub fn status_json(&self) -> Value {
        json!({
            "role": self.role,
            "session": format!("{:016x}", self.session.load(Ordering::Relaxed)),
            "last_sequence": self.last_sequence.get(),
            "lag": self.lag.get(),
            "state_hash": format!("{:016x}", self.state_hash.load(Ordering::Relaxed)),
            "unauthenticated_datagrams": self.unauthenticated(),
        })
    }

    /// `GET /status` and `GET /metrics`, open to anyone who reaches the port: they
    /// say where the consumer is, never what the ledger holds.
    pub fn routes<S: Clone + Send + Sync + 'static>(self: &Arc<Self>) -> Router<S> {
        self.routes_with(self.registry(), || Value::Null)
    }

    /// [`routes`](Self::routes) for a consumer with numbers of its own: `registry`
    /// (built on [`registry`](Self::registry)) behind `/metrics`, and the fields of
    /// `extra` (a JSON object) added to `/status`.
    pub fn routes_with<S: Clone + Send + Sync + 'static>(
        self: &Arc<Self>,
        registry: Registry,
        extra: impl Fn() -> Value + Clone + Send + Sync + 'static,
    ) -> Router<S> {
        let status = Arc::clone(self);
        ledgerbus_telemetry::metrics_route(Arc::new(registry)).route(
            "/status",
            get(move || {
                let status = Arc::clone(&status);
                let extra = extra.clone();
                async move {
                    let mut body = status.status_json();
                    if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), extra()) {
                        body.extend(fields);
                    }
                    Json(body)
                }
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_counts_only_forward_moves_and_metrics_name_the_consumer() {
        let progress = Progress::new("disk");
        progress.applied_through(10);
        progress.applied_through(10);
        progress.applied_through(15);
        progress.applied_through(0); // a new session starts over
        progress.applied_through(3);
        assert_eq!(progress.events_applied.get(), 18);
        let stats = ReceiverStats { unauthenticated: 4, naks_sent: 2, ..ReceiverStats::default() };
        progress.record_receiver(&stats);
        assert_eq!(progress.unauthenticated(), 4);
        let text = ledgerbus_telemetry::render(&progress.registry());
        for line in [
            "ledgerbus_consumer_applied_sequence{consumer=\"disk\"} 3",
            "ledgerbus_consumer_events_applied_total{consumer=\"disk\"} 18",
            "ledgerbus_consumer_naks_sent_total{consumer=\"disk\"} 2",
            "ledgerbus_consumer_datagrams_dropped_total{consumer=\"disk\",reason=\"unauthenticated\"} 4",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
