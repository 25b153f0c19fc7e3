//! What every ledgerbus process shows operators: its metrics in the Prometheus text
//! format, built with [`prometheus_client`] (one [`Registry`] per component, so two
//! components in one test process never mix their numbers), the standard `process_*`
//! metrics, and the small HTTP thread that serves `/metrics` beside a component's
//! own status routes.
//!
//! # Layout
//! - [`process`]: `process_cpu_seconds_total`, memory, file descriptors, threads and
//!   start time, read from `/proc/self` at each scrape.
//! - [`http`]: [`serve_router`] runs an axum router on a thread of its own, so a
//!   scrape never runs on a component's hot thread; [`metrics_route`] is the
//!   `/metrics` route itself.
//!
//! Names follow the Prometheus conventions: a `ledgerbus_` prefix, base units
//! (`_seconds`, `_bytes`), counters end in `_total` (the library appends it), and no
//! family is another's name plus `_total`.

pub mod http;
pub mod process;

pub use http::{metrics_route, serve_router};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;
pub use prometheus_client::{self};

use std::sync::atomic::AtomicU64;

/// A gauge of whole numbers that never go below zero (positions, counts in flight).
pub type U64Gauge = Gauge<u64, AtomicU64>;

/// The `Content-Type` of what [`render`] writes (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A registry whose metrics are named `ledgerbus_…`, with the process metrics
/// already registered.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(process::ProcessCollector::new()));
    registry
}

/// The Prometheus text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail; an encoder error would be a bug in a
    // metric's own encoding, and a partial page is still better than none.
    if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(%error, "encoding metrics");
    }
    out
}

/// Histogram buckets (seconds) for latencies from 10 µs to about 10 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(10e-6, 2.0, 21)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_and_process_metrics_are_there() {
        let mut registry = registry();
        let events: Counter = Counter::default();
        registry.register("ledgerbus_events", "Events decided.", events.clone());
        events.inc_by(3);
        let text = render(&registry);
        assert!(text.contains("# TYPE ledgerbus_events_total counter"), "{text}");
        assert!(text.contains("\nledgerbus_events_total 3\n"), "{text}");
        if cfg!(target_os = "linux") {
            assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
            assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
            assert!(text.contains("\nprocess_open_fds "), "{text}");
        }
    }
}
