//! Counters the hot thread updates with relaxed atomics and an HTTP `/metrics`
//! endpoint that renders them in Prometheus text format on its own thread, so
//! scraping never touches the hot path.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Upper bounds (µs) of the fsync latency histogram buckets.
const FSYNC_BUCKETS_US: [u64; 12] =
    [50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, u64::MAX];

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

/// Everything `/metrics` shows.
#[derive(Debug, Default)]
pub struct SequencerMetrics {
    /// Events decided and journaled.
    pub events_total: AtomicU64,
    /// Commands rejected (any result other than ok/exists).
    pub rejected_total: AtomicU64,
    /// Sequence of the last durable event.
    pub last_sequence: AtomicU64,
    /// Group commits (journal syncs).
    pub commits_total: AtomicU64,
    /// Sum of fsync latencies, µs.
    pub fsync_us_sum: AtomicU64,
    /// fsync latency histogram, cumulative counts per `FSYNC_BUCKETS_US`.
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len()],
    /// Gateway connections authenticated.
    pub gateways_connected: AtomicU64,
    /// Gateway connections refused (bad secret, protocol errors).
    pub gateways_refused_total: AtomicU64,
    /// Datagrams retransmitted.
    pub retransmits_total: AtomicU64,
    /// NAKs received.
    pub naks_total: AtomicU64,
    /// Malformed or unauthenticated packets dropped on any port.
    pub bad_packets_total: AtomicU64,
    /// Datagrams on the bus port dropped because their tag did not verify (forged,
    /// corrupted, another key, replayed control).
    pub unauthenticated_datagrams_total: AtomicU64,
    /// Replay sessions served.
    pub replays_total: AtomicU64,
    /// Replay connections refused for a missing or wrong credential.
    pub replays_refused: AtomicU64,
    /// (last durable sequence, rolling log hash after it, session), for `/status`.
    pub head: Mutex<(u64, u64, u64)>,
    /// Consumers' positions, refreshed by the hot thread a few times a second.
    pub consumers: Mutex<Vec<ConsumerPosition>>,
}

impl SequencerMetrics {
    /// Records one group commit's sync latency.
    pub fn record_fsync(&self, us: u64) {
        self.commits_total.fetch_add(1, Ordering::Relaxed);
        self.fsync_us_sum.fetch_add(us, Ordering::Relaxed);
        for (bucket, bound) in self.fsync_buckets.iter().zip(FSYNC_BUCKETS_US) {
            if us <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "ledgerbus_events_total",
            "Events decided and journaled.",
            "counter",
            get(&self.events_total),
        );
        counter(
            &mut out,
            "ledgerbus_rejected_total",
            "Commands decided with a rejection.",
            "counter",
            get(&self.rejected_total),
        );
        counter(
            &mut out,
            "ledgerbus_last_sequence",
            "Sequence of the last durable event.",
            "gauge",
            get(&self.last_sequence),
        );
        counter(
            &mut out,
            "ledgerbus_gateways_connected",
            "Authenticated gateway connections.",
            "gauge",
            get(&self.gateways_connected),
        );
        counter(
            &mut out,
            "ledgerbus_gateways_refused_total",
            "Gateway connections refused.",
            "counter",
            get(&self.gateways_refused_total),
        );
        counter(
            &mut out,
            "ledgerbus_retransmits_total",
            "Datagrams retransmitted.",
            "counter",
            get(&self.retransmits_total),
        );
        counter(&mut out, "ledgerbus_naks_total", "NAKs received.", "counter", get(&self.naks_total));
        counter(
            &mut out,
            "ledgerbus_bad_packets_total",
            "Malformed or unauthenticated packets dropped.",
            "counter",
            get(&self.bad_packets_total),
        );
        counter(
            &mut out,
            "ledgerbus_unauthenticated_datagrams_total",
            "Datagrams on the bus port dropped because their authentication tag did not verify.",
            "counter",
            get(&self.unauthenticated_datagrams_total),
        );
        counter(
            &mut out,
            "ledgerbus_replays_total",
            "Bulk replay sessions served.",
            "counter",
            get(&self.replays_total),
        );
        counter(
            &mut out,
            "ledgerbus_replays_refused_total",
            "Bulk replay connections refused for a missing or wrong credential.",
            "counter",
            get(&self.replays_refused),
        );
        let _ = writeln!(out, "# HELP ledgerbus_fsync_seconds Journal sync latency per group commit.");
        let _ = writeln!(out, "# TYPE ledgerbus_fsync_seconds histogram");
        for (bucket, bound) in self.fsync_buckets.iter().zip(FSYNC_BUCKETS_US) {
            let le = if bound == u64::MAX { "+Inf".to_string() } else { format!("{}", bound as f64 / 1e6) };
            let _ = writeln!(out, "ledgerbus_fsync_seconds_bucket{{le=\"{le}\"}} {}", get(bucket));
        }
        let _ = writeln!(out, "ledgerbus_fsync_seconds_sum {}", get(&self.fsync_us_sum) as f64 / 1e6);
        let _ = writeln!(out, "ledgerbus_fsync_seconds_count {}", get(&self.commits_total));
        let _ = writeln!(
            out,
            "# HELP ledgerbus_consumer_position Highest contiguous sequence each consumer reports."
        );
        let _ = writeln!(out, "# TYPE ledgerbus_consumer_position gauge");
        let last = get(&self.last_sequence);
        let consumers = self.consumers.lock().map(|c| c.clone()).unwrap_or_default();
        for consumer in &consumers {
            let _ = writeln!(
                out,
                "ledgerbus_consumer_position{{receiver_id=\"{}\",address=\"{}\"}} {}",
                consumer.receiver_id, consumer.address, consumer.position
            );
        }
        let _ = writeln!(out, "# HELP ledgerbus_consumer_lag_events Events each consumer is behind.");
        let _ = writeln!(out, "# TYPE ledgerbus_consumer_lag_events gauge");
        for consumer in &consumers {
            let _ = writeln!(
                out,
                "ledgerbus_consumer_lag_events{{receiver_id=\"{}\",address=\"{}\"}} {}",
                consumer.receiver_id,
                consumer.address,
                last.saturating_sub(consumer.position)
            );
        }
        out
    }
}

impl SequencerMetrics {
    /// `/status` as JSON: where the log is and its hash, for comparing replicas.
    pub fn status_json(&self) -> String {
        let (sequence, hash, session) = self.head.lock().map(|h| *h).unwrap_or_default();
        format!(
            "{{\"role\":\"sequencer\",\"session\":\"{session:016x}\",\"last_sequence\":{sequence},\"state_hash\":\"{hash:016x}\"}}"
        )
    }
}

/// Serves `GET /metrics` and `GET /status` on `listener` until the process ends, on
/// a thread of its own.
pub fn serve_sequencer(
    listener: std::net::TcpListener,
    metrics: Arc<SequencerMetrics>,
) -> std::io::Result<()> {
    let status = Arc::clone(&metrics);
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = Arc::clone(&metrics);
                async move { ([("content-type", "text/plain; version=0.0.4")], metrics.render()) }
            }),
        )
        .route(
            "/status",
            axum::routing::get(move || {
                let status = Arc::clone(&status);
                async move { ([("content-type", "application/json")], status.status_json()) }
            }),
        );
    serve_router(listener, router, "metrics-http")
}

/// Runs an axum router on `listener` on its own thread with a single-threaded runtime.
pub fn serve_router(
    listener: std::net::TcpListener,
    router: axum::Router,
    name: &str,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "HTTP endpoint could not start");
                return;
            }
        };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "HTTP endpoint stopped");
            }
        });
    })?;
    Ok(())
}
