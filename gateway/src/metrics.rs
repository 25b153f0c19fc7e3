//! What the gateway counts, served at `/metrics` in the Prometheus text format:
//! commands forwarded and refused per API, the queue towards the sequencer, the
//! link's state and the TCP clients connected.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::upstream::Upstream;

/// Counters shared by both APIs; updated with relaxed atomics on the request path.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// Commands the HTTP API forwarded to the sequencer.
    pub http_commands: AtomicU64,
    /// Commands the HTTP API refused with 503 (queue full, sequencer unavailable).
    pub http_busy: AtomicU64,
    /// Commands the TCP API forwarded to the sequencer.
    pub tcp_commands: AtomicU64,
    /// Commands the TCP API answered `busy` at the edge.
    pub tcp_busy: AtomicU64,
    /// TCP clients that completed the handshake, ever.
    pub tcp_clients_total: AtomicU64,
    /// TCP clients whose connection has ended.
    pub tcp_clients_closed: AtomicU64,
}

/// A connected TCP client, counted until dropped.
pub struct TcpClientGuard<'a>(&'a GatewayMetrics);

impl GatewayMetrics {
    /// Counts a TCP client in; it is counted out when the guard drops.
    pub fn tcp_client(&self) -> TcpClientGuard<'_> {
        self.tcp_clients_total.fetch_add(1, Ordering::Relaxed);
        TcpClientGuard(self)
    }
}

impl Drop for TcpClientGuard<'_> {
    fn drop(&mut self) {
        self.0.tcp_clients_closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The Prometheus text exposition of `upstream`'s link and counters.
pub fn render(upstream: &Upstream) -> String {
    let metrics = &upstream.metrics;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let mut out = String::with_capacity(2048);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "ledgerbus_gateway_commands_total",
        "counter",
        "Commands forwarded to the sequencer, by API.",
        &[(r#"{api="http"}"#, load(&metrics.http_commands)), (r#"{api="tcp"}"#, load(&metrics.tcp_commands))],
    );
    family(
        "ledgerbus_gateway_busy_total",
        "counter",
        "Commands refused at the edge (queue full or sequencer unavailable), by API.",
        &[(r#"{api="http"}"#, load(&metrics.http_busy)), (r#"{api="tcp"}"#, load(&metrics.tcp_busy))],
    );
    family(
        "ledgerbus_gateway_outstanding_commands",
        "gauge",
        "Commands sent to the sequencer and not answered yet.",
        &[("", upstream.outstanding() as u64)],
    );
    family(
        "ledgerbus_gateway_queue_max",
        "gauge",
        "Outstanding commands beyond which clients are answered busy.",
        &[("", upstream.queue_max() as u64)],
    );
    family(
        "ledgerbus_gateway_sequencer_connected",
        "gauge",
        "1 while the link to the sequencer is up.",
        &[("", u64::from(upstream.connected.load(Ordering::Acquire)))],
    );
    family(
        "ledgerbus_gateway_highest_sequence",
        "gauge",
        "Highest event sequence in any result this gateway has seen.",
        &[("", upstream.highest_sequence.load(Ordering::Acquire))],
    );
    let (total, closed) = (load(&metrics.tcp_clients_total), load(&metrics.tcp_clients_closed));
    family(
        "ledgerbus_gateway_tcp_clients",
        "gauge",
        "TCP clients connected now.",
        &[("", total.saturating_sub(closed))],
    );
    family(
        "ledgerbus_gateway_tcp_clients_total",
        "counter",
        "TCP clients that completed the handshake.",
        &[("", total)],
    );
    out
}
