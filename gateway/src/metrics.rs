//! What the gateway counts, served at `/metrics` in the Prometheus text format:
//! commands forwarded and refused per API, request latency per API and route, the
//! queue towards the sequencer, the link's state, the TCP clients connected and the
//! process itself.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ledgerbus_telemetry::prometheus_client::collector::Collector;
use ledgerbus_telemetry::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use ledgerbus_telemetry::prometheus_client::metrics::gauge::ConstGauge;
use ledgerbus_telemetry::{Counter, Family, Histogram, Registry, U64Gauge};

use crate::upstream::Upstream;

/// `api="http"` or `api="tcp"`.
type ApiLabel = [(&'static str, &'static str); 1];
/// The API and the route (`POST /transfers`, `GET /accounts/{id}`; `submit` for a
/// TCP read's commands).
type RouteLabels = [(&'static str, String); 2];
/// The route and the HTTP status answered.
type StatusLabels = [(&'static str, String); 2];

/// Counters shared by both APIs; relaxed atomics updated on the request path.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// Commands the HTTP API forwarded to the sequencer.
    pub http_commands: Counter,
    /// Commands the HTTP API refused with 503 (queue full, sequencer unavailable).
    pub http_busy: Counter,
    /// Commands the TCP API forwarded to the sequencer.
    pub tcp_commands: Counter,
    /// Commands the TCP API answered `busy` at the edge.
    pub tcp_busy: Counter,
    /// TCP clients that completed the handshake, ever.
    pub tcp_clients_accepted: Counter,
    /// TCP clients connected now.
    pub tcp_clients_connected: U64Gauge,
    commands: Family<ApiLabel, Counter>,
    busy: Family<ApiLabel, Counter>,
    /// Time to answer, by API and route.
    durations: Family<RouteLabels, Histogram>,
    /// HTTP answers by route and status.
    responses: Family<StatusLabels, Counter>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let commands = Family::<ApiLabel, Counter>::default();
        let busy = Family::<ApiLabel, Counter>::default();
        let per_api = |family: &Family<ApiLabel, Counter>, api| family.get_or_create(&[("api", api)]).clone();
        GatewayMetrics {
            http_commands: per_api(&commands, "http"),
            http_busy: per_api(&busy, "http"),
            tcp_commands: per_api(&commands, "tcp"),
            tcp_busy: per_api(&busy, "tcp"),
            commands,
            busy,
            tcp_clients_accepted: Counter::default(),
            tcp_clients_connected: U64Gauge::default(),
            durations: Family::new_with_constructor(
                || Histogram::new(ledgerbus_telemetry::latency_buckets()),
            ),
            responses: Family::default(),
        }
    }
}

/// A connected TCP client, counted until dropped.
pub struct TcpClientGuard<'a>(&'a GatewayMetrics);

impl GatewayMetrics {
    /// Counts a TCP client in; it is counted out when the guard drops.
    pub fn tcp_client(&self) -> TcpClientGuard<'_> {
        self.tcp_clients_accepted.inc();
        self.tcp_clients_connected.inc();
        TcpClientGuard(self)
    }

    /// Records how long an HTTP request on `route` (`METHOD /matched/path`) took to
    /// answer `status`.
    pub fn record_http(&self, route: &str, status: u16, elapsed: Duration) {
        self.durations
            .get_or_create(&[("api", "http".into()), ("route", route.into())])
            .observe(elapsed.as_secs_f64());
        self.responses.get_or_create(&[("route", route.into()), ("status", status.to_string())]).inc();
    }

    /// Records how long a TCP lookup took, from first in line to answered.
    pub fn record_tcp_lookup(&self, elapsed: Duration) {
        self.durations
            .get_or_create(&[("api", "tcp".into()), ("route", "lookup".into())])
            .observe(elapsed.as_secs_f64());
    }

    /// Records how long the sequencer took to answer one TCP read's commands.
    pub fn record_tcp_submission(&self, elapsed: Duration) {
        self.durations
            .get_or_create(&[("api", "tcp".into()), ("route", "submit".into())])
            .observe(elapsed.as_secs_f64());
    }
}

impl Drop for TcpClientGuard<'_> {
    fn drop(&mut self) {
        self.0.tcp_clients_connected.dec();
    }
}

/// The registry behind the gateway's `/metrics`.
pub fn registry(upstream: &Upstream) -> Registry {
    let metrics = &upstream.metrics;
    let mut registry = ledgerbus_telemetry::registry();
    let r = &mut registry;
    r.register(
        "ledgerbus_gateway_commands",
        "Commands forwarded to the sequencer, by API.",
        metrics.commands.clone(),
    );
    r.register(
        "ledgerbus_gateway_busy",
        "Commands refused at the edge (queue full or sequencer unavailable), by API.",
        metrics.busy.clone(),
    );
    r.register(
        "ledgerbus_gateway_request_duration_seconds",
        "Time to answer a request, by API and route (TCP: a read's commands, sent to answered).",
        metrics.durations.clone(),
    );
    r.register(
        "ledgerbus_gateway_http_responses",
        "HTTP answers by route and status.",
        metrics.responses.clone(),
    );
    r.register(
        "ledgerbus_gateway_tcp_clients_connected",
        "TCP clients connected now.",
        metrics.tcp_clients_connected.clone(),
    );
    r.register(
        "ledgerbus_gateway_tcp_clients_accepted",
        "TCP clients that completed the handshake.",
        metrics.tcp_clients_accepted.clone(),
    );
    r.register_collector(Box::new(LinkState(upstream.clone())));
    registry
}

/// The link's state, read at each scrape.
struct LinkState(Upstream);

impl fmt::Debug for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkState")
    }
}

impl Collector for LinkState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let upstream = &self.0;
        let gauges = [
            (
                "ledgerbus_gateway_outstanding_commands",
                "Commands sent to the sequencer and not answered yet.",
                upstream.outstanding() as u64,
            ),
            (
                "ledgerbus_gateway_queue_max",
                "Outstanding commands beyond which clients are answered busy.",
                upstream.queue_max() as u64,
            ),
            (
                "ledgerbus_gateway_sequencer_connected",
                "1 while the link to the sequencer is up.",
                u64::from(upstream.connected.load(Ordering::Acquire)),
            ),
            (
                "ledgerbus_gateway_highest_sequence",
                "Highest event sequence in any result this gateway has seen.",
                upstream.highest_sequence.load(Ordering::Acquire),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
