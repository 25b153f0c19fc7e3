//! `ledgerbus gateway`.

use ledgerbus_gateway::GatewayConfig;

use crate::cli::GatewayArgs;

/// Runs the gateway until SIGINT/SIGTERM.
pub fn run(args: &GatewayArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ledgerbus_gateway::tls::acceptor(cert, key)?),
        _ => None,
    };
    anyhow::ensure!(
        !args.query_upstream.is_empty(),
        "--query-upstream: at least one memory consumer's address"
    );
    let config = GatewayConfig {
        http_listen: args.http_listen,
        tcp_listen: args.tcp_listen,
        sequencers: args.sequencer.clone(),
        secret: args.secret.clone().unwrap_or_default().into_bytes(),
        api_keys: args.api_keys.clone(),
        query_upstream: args.query_upstream.clone(),
        query_lag_max: args.query_lag_max,
        query_key: match &args.query_key {
            Some(key) => key.clone(),
            None => args.api_keys.first().cloned().unwrap_or_default(),
        },
        queue_max: args.queue_max as usize,
        gateway_id: std::process::id(),
        http_limits: ledgerbus_gateway::serve::HttpLimits {
            body_max: args.body_max,
            header_timeout: std::time::Duration::from_secs_f64(args.header_timeout_secs),
            connections_max: args.connections_max,
            tls: tls.clone(),
        },
        tcp_limits: ledgerbus_gateway::tcp::TcpLimits {
            frame_timeout: std::time::Duration::from_secs_f64(args.frame_timeout_secs),
            connections_max: args.connections_max,
            tls,
        },
    };
    let stop = super::shutdown_on_signal()?;
    let idle = args.idle.strategy();
    let runtime = ledgerbus_client::idle::runtime(idle, 2)?;
    runtime.spawn(ledgerbus_client::idle::keep_warm(idle));
    runtime.block_on(async move {
        let (bound, _addresses) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(ledgerbus_gateway::run(config, bound));
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if server.is_finished() {
                return server.await?.map_err(anyhow::Error::from);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tracing::info!("gateway shutting down");
        server.abort();
        Ok(())
    })
}
