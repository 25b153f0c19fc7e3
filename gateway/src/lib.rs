//! The gateway (docs/architecture.md, "Gateway"): the client-facing front door. It validates at
//! the edge, forwards commands to the sequencer over one authenticated connection,
//! and answers with the decided outcome; queries go to the memory consumer.
//!
//! # Layout
//! - [`upstream`]: the reconnecting, bounded link to the sequencer.
//! - [`json`]: request bodies to commands (400s that name the field), results to JSON.
//! - [`http`]: the HTTP/JSON API and its OpenAPI document (`openapi.json`).
//! - [`tcp`]: the TCP/SBE API for pipelined, batched clients, with lookups in line;
//!   its `outbox` writes each connection's answers in command order.
//! - [`query`]: the link to the read model; lookups' records.
//! - [`original`]: the original of an idempotent retry, added to its answer.
//! - [`metrics`]: counters and latency histograms served at `/metrics`.
//! - [`serve`]: the HTTP accept loop: connection slots, header timeout, early 413.
//! - [`tls`]: the server side of TLS on both APIs.

pub mod http;
pub mod json;
pub mod metrics;
pub mod original;
pub mod query;
pub mod serve;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod write_marks;

use std::net::SocketAddr;
use std::sync::Arc;

/// Everything a gateway needs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// HTTP/JSON API address.
    pub http_listen: SocketAddr,
    /// TCP/SBE API address.
    pub tcp_listen: SocketAddr,
    /// The sequencer's gateway port, or every group member's in replica-id order.
    pub sequencers: Vec<SocketAddr>,
    /// Shared secret for the sequencer handshake.
    pub secret: Vec<u8>,
    /// Accepted client API keys.
    pub api_keys: Vec<String>,
    /// The memory consumers' query APIs (reads are spread over them).
    pub query_upstream: Vec<SocketAddr>,
    /// A memory consumer lagging more events than this gets reads only when no other
    /// can take them.
    pub query_lag_max: u64,
    /// The key this gateway presents there (`Authorization: Bearer`).
    pub query_key: String,
    /// Commands waiting for results before clients get 503/busy.
    pub queue_max: usize,
    /// This gateway's id (logs, metrics).
    pub gateway_id: u32,
    /// Body, header-time and connection limits of the HTTP API.
    pub http_limits: serve::HttpLimits,
    /// Limits of the TCP API.
    pub tcp_limits: tcp::TcpLimits,
}

/// The bound addresses of a started gateway.
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddresses {
    /// HTTP API.
    pub http: SocketAddr,
    /// TCP API.
    pub tcp: SocketAddr,
}

/// Binds both listeners and serves until the runtime stops.
pub async fn run(
    config: GatewayConfig,
    bound: tokio::sync::oneshot::Sender<GatewayAddresses>,
) -> std::io::Result<()> {
    let bind = |address: SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("{what} address {address}: {e}")))
    };
    let http = bind(config.http_listen, "HTTP API (--http-listen)").await?;
    let tcp = bind(config.tcp_listen, "TCP API (--tcp-listen)").await?;
    let addresses = GatewayAddresses { http: http.local_addr()?, tcp: tcp.local_addr()? };
    let upstream = upstream::Upstream::start(
        config.sequencers.clone(),
        config.secret.clone(),
        config.gateway_id,
        config.queue_max,
    );
    let query = query::QueryLink::new(&config.query_upstream, &config.query_key, config.query_lag_max);
    query.start_health_checks();
    let state = http::AppState::new(upstream.clone(), config.api_keys.clone(), query);
    let keys = Arc::clone(&state.api_keys);
    tokio::spawn(tcp::serve(tcp, upstream, state.query.clone(), keys, config.tcp_limits.clone()));
    let _ = bound.send(addresses);
    tracing::info!(http = %addresses.http, tcp = %addresses.tcp, sequencers = ?config.sequencers,
        tls = config.http_limits.tls.is_some(), "gateway running");
    serve::serve(http, http::router(state), config.http_limits.clone()).await;
    Ok(())
}
