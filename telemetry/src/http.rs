//! The small HTTP endpoint each component runs beside its work: `/metrics` plus the
//! component's own routes (`/status`, the query API), on a thread and a
//! single-threaded runtime of their own so that a scrape never runs on a hot thread.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

/// `GET /metrics`: the Prometheus text exposition of `registry`.
pub fn metrics_route<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Router<S> {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move { ([("content-type", crate::CONTENT_TYPE)], crate::render(&registry)) }
        }),
    )
}

/// Runs an axum router on `listener` on its own thread (named `name`) with a
/// single-threaded runtime, until the process ends.
pub fn serve_router(listener: std::net::TcpListener, router: Router, name: &str) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%address, %error, "HTTP endpoint could not start");
                return;
            }
        };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%address, %error, "HTTP endpoint stopped");
            }
        });
    })?;
    Ok(())
}
