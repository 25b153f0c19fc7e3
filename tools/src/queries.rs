//! Reads mixed into `bench e2e` (`--queries RATE|max`): `GET /accounts/{id}` on the
//! gateway's HTTP API (keep-alive, pooled), for the run's own accounts, while the
//! writes run. At a rate, queries are paced from a thread of their own and measured
//! from their intended send time, as the writes are; with `max`, each of
//! `--query-connections` asks again as soon as it has an answer. Their percentiles are
//! reported beside the writes', so what a write burst does to reads is measured in the
//! same run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

use crate::pacing::{pace, Schedule};

/// How to read.
#[derive(Debug, Clone, Copy)]
pub struct QueryOptions {
    /// Queries per second, or `None` for as fast as each connection gets answers.
    pub rate: Option<u64>,
    /// Connections (with `max`, each keeps one query in flight).
    pub connections: u32,
}

/// What the reads saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueryReport {
    /// Queries answered 200.
    pub answered: u64,
    /// Queries answered otherwise, or not at all.
    pub errors: u64,
    /// Answered queries per second.
    pub per_second: f64,
    /// p50, µs.
    pub p50_us: u64,
    /// p90.
    pub p90_us: u64,
    /// p99.
    pub p99_us: u64,
    /// p99.9.
    pub p999_us: u64,
    /// Max.
    pub max_us: u64,
}

/// One account query against the gateway.
#[derive(Clone)]
struct Reader {
    client: HttpClient<HttpConnector, Empty<Bytes>>,
    base: String,
    authorization: Arc<str>,
}

impl Reader {
    /// Whether `account` was answered with 200.
    async fn read(&self, account: u128) -> bool {
        let request = hyper::Request::get(format!("{}/accounts/{account}", self.base))
            .header("authorization", &*self.authorization)
            .body(Empty::new());
        let Ok(request) = request else { return false };
        match self.client.request(request).await {
            Ok(response) => {
                let ok = response.status() == hyper::StatusCode::OK;
                // The latency counts the whole body, as a client reads it.
                response.into_body().collect().await.is_ok() && ok
            }
            Err(_) => false,
        }
    }
}

#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn count(&self, ok: bool) {
        let counter = if ok { &self.answered } else { &self.errors };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Reads `accounts(k)` for k = 0, 1, … until `deadline`; returns what it saw.
pub async fn run(
    gateway_http: SocketAddr,
    api_key: &str,
    options: QueryOptions,
    deadline: Instant,
    accounts: impl Fn(u64) -> u128 + Send + Sync + 'static,
) -> QueryReport {
    let reader = Reader {
        client: HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(options.connections.max(1) as usize)
            .build_http(),
        base: format!("http://{gateway_http}"),
        authorization: format!("Bearer {api_key}").into(),
    };
    let accounts = Arc::new(accounts);
    let tally = Arc::new(Tally::default());
    let latencies = Arc::new(Mutex::new(histogram()));
    let start = Instant::now();
    match options.rate {
        Some(rate) => paced(reader, rate, deadline, accounts, &tally, &latencies).await,
        None => {
            let mut tasks = tokio::task::JoinSet::new();
            for connection in 0..options.connections.max(1) {
                let (reader, accounts) = (reader.clone(), Arc::clone(&accounts));
                let (tally, latencies) = (Arc::clone(&tally), Arc::clone(&latencies));
                tasks.spawn(async move {
                    let mut local = histogram();
                    let mut k = u64::from(connection) * 7_919;
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        let ok = reader.read(accounts(k)).await;
                        tally.count(ok);
                        if ok {
                            let _ = local.record(sent.elapsed().as_micros().max(1) as u64);
                        }
                        k += 1;
                    }
                    if let Ok(mut shared) = latencies.lock() {
                        let _ = shared.add(&local);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let latencies = latencies.lock().map(|h| h.clone()).unwrap_or_else(|_| histogram());
    let answered = tally.answered.load(Ordering::Relaxed);
    QueryReport {
        answered,
        errors: tally.errors.load(Ordering::Relaxed),
        per_second: answered as f64 / elapsed,
        p50_us: latencies.value_at_quantile(0.5),
        p90_us: latencies.value_at_quantile(0.9),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
        max_us: latencies.max(),
    }
}

/// The open loop: a pacing thread announces each query's intended time; each is sent
/// at once from its own task and measured from that time.
async fn paced(
    reader: Reader,
    rate: u64,
    deadline: Instant,
    accounts: Arc<impl Fn(u64) -> u128 + Send + Sync + 'static>,
    tally: &Arc<Tally>,
    latencies: &Arc<Mutex<Histogram<u64>>>,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let (tick_tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
    let pacer =
        std::thread::spawn(move || pace(Schedule { interval, deadline }, |t| tick_tx.send(t).is_ok()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut k = 0u64;
    while let Some(intended) = ticks.recv().await {
        let (reader, account) = (reader.clone(), accounts(k));
        let (tally, latencies) = (Arc::clone(tally), Arc::clone(latencies));
        k += 1;
        tasks.spawn(async move {
            let ok = reader.read(account).await;
            tally.count(ok);
            if ok {
                if let Ok(mut shared) = latencies.lock() {
                    let _ = shared.record(intended.elapsed().as_micros().max(1) as u64);
                }
            }
        });
        // Collect finished ones as we go: the set stays as small as what is in flight.
        while tasks.try_join_next().is_some() {}
    }
    let _ = pacer.join();
    while tasks.join_next().await.is_some() {}
}
