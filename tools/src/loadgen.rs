//! `ledgerbus bench e2e`: an open-loop load generator against a running gateway, over
//! TCP (the Rust client) or HTTP (keep-alive, pooled).
//!
//! At a fixed `--rate`, requests are sent on a schedule and each latency is measured
//! from the *intended* send time, not the actual one, so a stall shows up as the
//! latency every delayed request really saw (coordinated-omission correction).
//! With `--rate max`, each connection keeps a fixed number of requests in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use ledgerbus_client::{Client, Command};

pub use crate::latency::Latency;
use crate::pacing::{pace, Schedule};
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};

/// Which API to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The TCP/SBE API through the Rust client.
    Tcp,
    /// The HTTP/JSON API.
    Http,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// The gateway's TCP API (also used for set-up).
    pub gateway_tcp: SocketAddr,
    /// The gateway's HTTP API.
    pub gateway_http: SocketAddr,
    /// API key.
    pub api_key: String,
    /// TCP or HTTP.
    pub protocol: Protocol,
    /// Transfers per second, or `None` for as fast as possible.
    pub rate: Option<u64>,
    /// How long to send.
    pub duration: Duration,
    /// Client connections.
    pub connections: u32,
    /// Transfers per request.
    pub batch: u32,
    /// Accounts to spread transfers over.
    pub accounts: u32,
    /// Percent of transfers that are two-phase (see [`crate::two_phase`]).
    pub two_phase: u32,
    /// Requests in flight per connection with `--rate max` (see [`pipeline_depth`]).
    pub in_flight: Option<u32>,
    /// TLS to the gateway's TCP API (it runs with `--tls-cert`).
    pub tls: Option<ledgerbus_client::TlsClient>,
    /// Reads to mix into the writes, if any (see [`crate::queries`]).
    pub queries: Option<crate::queries::QueryOptions>,
}

/// What it measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct E2eReport {
    /// Decided transfers per second (accepted + rejected).
    pub throughput_tps: f64,
    /// Latency percentiles of a request, µs.
    pub p50_us: u64,
    /// p90.
    pub p90_us: u64,
    /// p99.
    pub p99_us: u64,
    /// p99.9.
    pub p999_us: u64,
    /// p99.99.
    pub p9999_us: u64,
    /// Max.
    pub max_us: u64,
    /// p50 of requests whose transfers were all accepted, µs.
    pub accepted_p50_us: u64,
    /// p99 of those.
    pub accepted_p99_us: u64,
    /// p50 of requests with a rejected transfer, µs (0 if none).
    pub rejected_p50_us: u64,
    /// p99 of those.
    pub rejected_p99_us: u64,
    /// Transfers applied.
    pub accepted: u64,
    /// Transfers rejected by a business rule (overdraft attempts are part of the mix).
    pub rejected: u64,
    /// Transfers with no decided result (busy, unavailable, transport errors).
    pub errors: u64,
    /// Requests sent.
    pub requests: u64,
    /// Seconds from the first request to the last answer.
    pub elapsed_sec: f64,
    /// "tcp" or "http".
    pub protocol: String,
    /// Requested rate, 0 = max.
    pub rate: u64,
    /// What the reads mixed in saw, if there were any.
    pub queries: Option<crate::queries::QueryReport>,
}

/// Shared counters of a run.
#[derive(Default)]
pub struct Counters {
    /// Transfers applied.
    pub accepted: AtomicU64,
    /// Transfers rejected.
    pub rejected: AtomicU64,
    /// Transfers without a decision.
    pub errors: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
}

/// The run's accounts: a settlement account at `base`, users from `base + 1000`.
/// `base` is new for each run (the top bit set, then the run's time), so a load run
/// against a live system never collides with the accounts already there.
#[derive(Debug, Clone, Copy)]
struct Accounts {
    base: u128,
    users: u64,
}

impl Accounts {
    fn for_this_run(users: u32) -> Accounts {
        Accounts { base: (1u128 << 127) | run_prefix(), users: u64::from(users) }
    }

    fn settlement(&self) -> u128 {
        self.base
    }

    fn user(&self, index: u64) -> u128 {
        self.base + 1_000 + u128::from(index % self.users)
    }
}

/// A fresh id space per run, so runs against the same system never collide.
fn run_prefix() -> u128 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos());
    (nanos & 0xFFFF_FFFF_FFFF) << 64
}

/// Creates the accounts and funds them from a settlement account (idempotent).
/// Creates and funds the run's accounts; fails, saying why, if the gateway does not
/// accept them (so a run never measures only rejections).
async fn set_up(client: &Client, accounts: Accounts) -> anyhow::Result<()> {
    let account = |id: u128, flags: u16| {
        Command::CreateAccount(CreateAccount {
            correlation_id: 0.into(),
            id: id.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: flags.into(),
            ..Default::default()
        })
    };
    let mut commands = vec![account(accounts.settlement(), account_flags::ALLOW_NEGATIVE)];
    commands.extend((0..accounts.users).map(|i| account(accounts.user(i), 0)));
    let prefix = run_prefix() | (1 << 63);
    let top_ups: Vec<Command> = (0..accounts.users)
        .map(|i| {
            Command::Transfer(transfer(
                prefix + u128::from(i),
                accounts.settlement(),
                accounts.user(i),
                1_000_000_000,
            ))
        })
        .collect();
    for (what, commands) in
        [("creating the load's accounts", commands), ("funding the load's accounts", top_ups)]
    {
        for chunk in commands.chunks(4_096) {
            let outcomes = client.submit(chunk).await.context(what)?;
            if let Some(refused) =
                outcomes.iter().find(|o| !matches!(o.result, ResultCode::Ok | ResultCode::Exists))
            {
                anyhow::bail!("{what}: the gateway answered {:?} for id {}", refused.result, refused.id);
            }
        }
    }
    Ok(())
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u64) -> Transfer {
    Transfer {
        correlation_id: 0.into(),
        id: id.into(),
        debit_account_id: debit.into(),
        credit_account_id: credit.into(),
        amount: amount.into(),
        ledger: 1.into(),
        code: 1.into(),
        flags: 0.into(),
        ..Default::default()
    }
}

/// A deterministic stream of transfers for one connection; one in fifty tries to
/// overdraw and is rejected.
struct Workload {
    state: u64,
    next_id: u128,
    accounts: Accounts,
    mix: crate::two_phase::TwoPhaseMix,
}

impl Workload {
    fn next(&mut self) -> Transfer {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let debit_index = self.state % self.accounts.users;
        let mut credit_index = (self.state >> 20) % self.accounts.users;
        if credit_index == debit_index {
            credit_index = (credit_index + 1) % self.accounts.users;
        }
        let (debit, credit) = (self.accounts.user(debit_index), self.accounts.user(credit_index));
        let amount = if self.state % 50 == 0 { 1 << 40 } else { 1 + (self.state >> 40) % 100 };
        self.next_id += 1;
        self.mix.shape(transfer(self.next_id, debit, credit, amount), self.state >> 8)
    }

    fn batch(&mut self, size: u32) -> Vec<Transfer> {
        (0..size).map(|_| self.next()).collect()
    }
}

fn count(counters: &Counters, results: impl Iterator<Item = Option<ResultCode>>) {
    for result in results {
        let counter = match result {
            Some(ResultCode::Ok | ResultCode::Exists) => &counters.accepted,
            Some(ResultCode::Busy) | None => &counters.errors,
            Some(_) => &counters.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    counters.requests.fetch_add(1, Ordering::Relaxed);
}

/// One request over the chosen protocol; returns a result per transfer.
enum Sender {
    Tcp(Client),
    Http {
        /// Boxed: a hyper client is several times the size of the TCP one.
        client: Box<HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>>,
        uri: String,
        key: String,
    },
}

impl Sender {
    async fn send(&self, transfers: Vec<Transfer>) -> Vec<Option<ResultCode>> {
        match self {
            Sender::Tcp(client) => {
                let commands: Vec<Command> = transfers.into_iter().map(Command::Transfer).collect();
                match client.submit(&commands).await {
                    Ok(outcomes) => outcomes.iter().map(|o| Some(o.result)).collect(),
                    Err(_) => vec![None; commands.len()],
                }
            }
            Sender::Http { client, uri, key } => {
                let count = transfers.len();
                let items: Vec<serde_json::Value> = transfers
                    .iter()
                    .map(|t| {
                        let flags = t.flags.get();
                        let resolve = flags & (transfer_flags::POST_PENDING | transfer_flags::VOID_PENDING);
                        if resolve != 0 {
                            let kind = if resolve == transfer_flags::POST_PENDING { "post" } else { "void" };
                            return serde_json::json!({
                                "id": t.id.get().to_string(),
                                "pending_id": t.pending_id.get().to_string(),
                                kind: true,
                            });
                        }
                        let mut item = serde_json::json!({
                            "id": t.id.get().to_string(),
                            "debit_account_id": t.debit_account_id.get().to_string(),
                            "credit_account_id": t.credit_account_id.get().to_string(),
                            "amount": t.amount.get(),
                            "ledger": t.ledger.get(),
                            "code": t.code.get(),
                        });
                        if flags & transfer_flags::PENDING != 0 {
                            item["pending"] = true.into();
                        }
                        item
                    })
                    .collect();
                let body = if count == 1 {
                    items[0].to_string()
                } else {
                    serde_json::Value::Array(items).to_string()
                };
                let request = hyper::Request::post(uri.as_str())
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)));
                let Ok(request) = request else { return vec![None; count] };
                let Ok(response) = client.request(request).await else { return vec![None; count] };
                let status = response.status().as_u16();
                let Ok(body) = response.into_body().collect().await else { return vec![None; count] };
                let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
                    return vec![None; count];
                };
                let code_of = |value: &serde_json::Value| {
                    value["result"].as_str().and_then(ResultCode::from_snake_name)
                };
                match (status, json) {
                    (200, serde_json::Value::Array(results)) => results.iter().map(code_of).collect(),
                    (200 | 201 | 409 | 422, value) if count == 1 => vec![code_of(&value)],
                    _ => vec![None; count],
                }
            }
        }
    }
}

/// Runs the load; `on_tick` is called about four times a second with the counters.
pub async fn run(
    options: &E2eOptions,
    mut on_tick: impl FnMut(&Counters, Duration),
) -> anyhow::Result<(E2eReport, Histogram<u64>)> {
    if options.connections == 0 || options.batch == 0 || options.accounts < 2 {
        bail!("connections and batch must be positive and accounts at least 2");
    }
    let setup = Client::connect_with(options.gateway_tcp, &options.api_key, options.tls.clone())
        .await
        .context("connecting to the gateway")?;
    let accounts = Accounts::for_this_run(options.accounts);
    set_up(&setup, accounts).await?;
    let counters = Arc::new(Counters::default());
    let histogram = Arc::new(Mutex::new(Latency::new()));
    let prefix = run_prefix();
    let start = Instant::now();
    let deadline = start + options.duration;
    let reads = options.queries.map(|queries| {
        let (gateway_http, api_key) = (options.gateway_http, options.api_key.clone());
        // Spread over the run's accounts, every one of which exists by now.
        let account = move |k: u64| accounts.user(k.wrapping_mul(0x9E37_79B9));
        tokio::spawn(
            async move { crate::queries::run(gateway_http, &api_key, queries, deadline, account).await },
        )
    });
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..options.connections {
        let sender = Arc::new(match options.protocol {
            Protocol::Tcp => Sender::Tcp(
                Client::connect_with(options.gateway_tcp, &options.api_key, options.tls.clone()).await?,
            ),
            Protocol::Http => Sender::Http {
                client: Box::new(
                    HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http(),
                ),
                uri: format!("http://{}/transfers", options.gateway_http),
                key: options.api_key.clone(),
            },
        });
        let workload = Workload {
            state: 0x9E37_79B9_7F4A_7C15 ^ (u64::from(connection) + 1),
            next_id: prefix + (u128::from(connection) << 40),
            accounts,
            mix: crate::two_phase::TwoPhaseMix::new(options.two_phase),
        };
        let (counters, histogram) = (Arc::clone(&counters), Arc::clone(&histogram));
        let batch = options.batch;
        tasks.spawn(match options.rate {
            Some(rate) => {
                let per_connection = (rate as f64 / f64::from(options.connections)).max(1e-9);
                let interval = Duration::from_secs_f64(f64::from(batch) / per_connection);
                let schedule = Schedule { interval, deadline };
                match &*sender {
                    Sender::Tcp(client) => Box::pin(open_loop_tcp(
                        client.clone(),
                        workload,
                        batch,
                        schedule,
                        counters,
                        histogram,
                    ))
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
                    Sender::Http { .. } => {
                        Box::pin(open_loop(sender, workload, batch, schedule, counters, histogram))
                    }
                }
            }
            None => Box::pin(closed_loop(
                sender,
                workload,
                batch,
                pipeline_depth(options.in_flight, batch),
                deadline,
                counters,
                histogram,
            )),
        });
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    // Elapsed time ends when the last answer is in, not at the next progress tick.
    loop {
        tokio::select! {
            _ = ticker.tick() => on_tick(&counters, start.elapsed()),
            finished = tasks.join_next() => match finished {
                Some(outcome) => outcome.context("load task")?,
                None => break,
            },
        }
    }
    let elapsed_sec = start.elapsed().as_secs_f64();
    let queries = match reads {
        Some(reads) => Some(reads.await.context("query task")?),
        None => None,
    };
    let latency = histogram.lock().map(|h| h.clone()).unwrap_or_else(|_| Latency::new());
    let histogram = latency.all.clone();
    let (accepted, rejected, errors) = (
        counters.accepted.load(Ordering::Relaxed),
        counters.rejected.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
    );
    let report = E2eReport {
        throughput_tps: (accepted + rejected) as f64 / elapsed_sec,
        p50_us: histogram.value_at_quantile(0.5),
        p90_us: histogram.value_at_quantile(0.9),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        p9999_us: histogram.value_at_quantile(0.9999),
        max_us: histogram.max(),
        accepted_p50_us: latency.accepted.value_at_quantile(0.5),
        accepted_p99_us: latency.accepted.value_at_quantile(0.99),
        rejected_p50_us: latency.rejected.value_at_quantile(0.5),
        rejected_p99_us: latency.rejected.value_at_quantile(0.99),
        accepted,
        rejected,
        errors,
        requests: counters.requests.load(Ordering::Relaxed),
        elapsed_sec,
        protocol: format!("{:?}", options.protocol).to_lowercase(),
        rate: options.rate.unwrap_or(0),
        queries,
    };
    Ok((report, histogram))
}

/// Requests in flight per connection with `--rate max`, unless told otherwise.
const PIPELINE_DEPTH: u32 = 32;
/// Transfers in flight per connection by default: a few connections of large
/// batches must not overrun the gateway's queue (65,536 by default) and measure
/// its `busy` answers instead of the system.
const IN_FLIGHT_TRANSFERS: u32 = 8_192;

/// Requests kept in flight per connection with `--rate max`: `in_flight` if given,
/// else 32, fewer for large batches.
pub fn pipeline_depth(in_flight: Option<u32>, batch: u32) -> u32 {
    in_flight.unwrap_or_else(|| PIPELINE_DEPTH.min(IN_FLIGHT_TRANSFERS / batch.max(1)).max(1))
}

async fn closed_loop(
    sender: Arc<Sender>,
    mut workload: Workload,
    batch: u32,
    depth: u32,
    deadline: Instant,
    counters: Arc<Counters>,
    histogram: Arc<Mutex<Latency>>,
) {
    let mut in_flight = tokio::task::JoinSet::new();
    let mut local = Latency::new();
    while Instant::now() < deadline || !in_flight.is_empty() {
        while in_flight.len() < depth as usize && Instant::now() < deadline {
            let transfers = workload.batch(batch);
            let sender = Arc::clone(&sender);
            in_flight.spawn(async move {
                let sent = Instant::now();
                let size = transfers.len();
                match answered_by(deadline, sender.send(transfers)).await {
                    Some(results) => (Some(sent.elapsed()), results),
                    None => (None, vec![None; size]),
                }
            });
        }
        let Some(Ok((latency, results))) = in_flight.join_next().await else { continue };
        if let Some(latency) = latency {
            local.record(latency.as_micros().max(1) as u64, &results);
        }
        count(&counters, results.into_iter());
    }
    if let Ok(mut shared) = histogram.lock() {
        shared.add(&local);
    }
}

/// How long after the last send the generator waits for answers; what is still
/// unanswered then (a gateway that went away) counts as errors, and the run ends.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// `answer`, unless it is still pending `ANSWER_GRACE` after `deadline`.
async fn answered_by<T>(deadline: Instant, answer: impl std::future::Future<Output = T>) -> Option<T> {
    let give_up = tokio::time::Instant::from_std(deadline + ANSWER_GRACE);
    tokio::time::timeout_at(give_up, answer).await.ok()
}

/// The TCP open loop: the pacing thread writes each request to the socket itself
/// (`Client::send`), so the generator adds no task hand-off before the request
/// leaves; a task collects the outcomes in order.
async fn open_loop_tcp(
    client: Client,
    mut workload: Workload,
    batch: u32,
    schedule: Schedule,
    counters: Arc<Counters>,
    histogram: Arc<Mutex<Latency>>,
) {
    let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
    let pacer_thread = std::thread::spawn(move || {
        pace(schedule, |intended| {
            let commands: Vec<Command> = workload.batch(batch).into_iter().map(Command::Transfer).collect();
            let pending = client.send(&commands).map_err(|_| commands.len());
            sent_tx.send((intended, pending)).is_ok()
        })
    });
    let mut local = Latency::new();
    while let Some((intended, pending)) = sent.recv().await {
        let results: Vec<Option<ResultCode>> = match pending {
            Ok(pending) => match answered_by(schedule.deadline, pending.outcomes()).await {
                Some(Ok(outcomes)) => outcomes.iter().map(|o| Some(o.result)).collect(),
                Some(Err(_)) | None => vec![None; batch as usize],
            },
            Err(count) => vec![None; count],
        };
        // Latency from when the request was due, not when it left.
        local.record(intended.elapsed().as_micros().max(1) as u64, &results);
        count(&counters, results.into_iter());
    }
    let _ = pacer_thread.join();
    if let Ok(mut shared) = histogram.lock() {
        shared.add(&local);
    }
}

async fn open_loop(
    sender: Arc<Sender>,
    mut workload: Workload,
    batch: u32,
    schedule: Schedule,
    counters: Arc<Counters>,
    histogram: Arc<Mutex<Latency>>,
) {
    let (tick_tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
    let pacer_thread = std::thread::spawn(move || pace(schedule, |intended| tick_tx.send(intended).is_ok()));
    let mut in_flight: tokio::task::JoinSet<(Option<u64>, Vec<Option<ResultCode>>)> =
        tokio::task::JoinSet::new();
    let mut local = Latency::new();
    while let Some(intended) = ticks.recv().await {
        // Collect what finished meanwhile, without waiting.
        while let Some(Ok((latency, results))) = in_flight.try_join_next() {
            if let Some(latency) = latency {
                local.record(latency, &results);
            }
            count(&counters, results.into_iter());
        }
        let transfers = workload.batch(batch);
        let sender = Arc::clone(&sender);
        let deadline = schedule.deadline;
        in_flight.spawn(async move {
            let size = transfers.len();
            match answered_by(deadline, sender.send(transfers)).await {
                // Latency from when the request was due, not when it left.
                Some(results) => (Some(intended.elapsed().as_micros().max(1) as u64), results),
                None => (None, vec![None; size]),
            }
        });
    }
    let _ = pacer_thread.join();
    while let Some(Ok((latency, results))) = in_flight.join_next().await {
        if let Some(latency) = latency {
            local.record(latency, &results);
        }
        count(&counters, results.into_iter());
    }
    if let Ok(mut shared) = histogram.lock() {
        shared.add(&local);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_batches_keep_fewer_requests_in_flight() {
        assert_eq!(pipeline_depth(None, 1), 32);
        assert_eq!(pipeline_depth(None, 100), 32);
        assert_eq!(pipeline_depth(None, 1_000), 8);
        assert_eq!(pipeline_depth(None, 100_000), 1, "at least one");
        assert_eq!(pipeline_depth(Some(5), 1_000), 5, "an explicit depth wins");
    }
}
