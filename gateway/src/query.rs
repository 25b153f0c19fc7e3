//! The gateway's link to the read models (memory consumers' query APIs): HTTP/2
//! with the gateway's own credential, asking the read model to have applied a given
//! sequence first, so a read after a write sees it. Used by the HTTP proxy's
//! helpers, the originals of idempotent retries, and the TCP API's lookups.
//!
//! With several memory consumers (`--query-upstream A,B,…`) reads are spread over
//! them: each is health-checked (`/status` every [`HEALTH_EVERY`]: up, the sequence
//! it has applied, its lag), and a read goes to one that is up, not lagging beyond
//! `lag_max`, and has already applied the read's `X-Min-Sequence` (the one with the
//! fewest reads in flight, in turns among equals); if none has, to the most advanced
//! (which waits for it); one that does not answer is marked down and the read tried
//! on the next. Read-your-writes holds whichever answers: each waits for the
//! sequence before answering.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ledgerbus_codec::messages::{AccountRecord, HistoryEnd, TransferRecord};
use ledgerbus_codec::{encode, Message, ResultCode};
use serde_json::Value;

/// How often each read model's `/status` is asked.
pub const HEALTH_EVERY: Duration = Duration::from_millis(100);

/// A read model as its last health check (or failed read) saw it.
#[derive(Debug)]
pub struct Replica {
    /// Its query API.
    pub address: SocketAddr,
    up: AtomicBool,
    applied: AtomicU64,
    lag: AtomicU64,
    /// Reads sent to it and not answered yet.
    in_flight: AtomicU64,
}

impl Replica {
    fn new(address: SocketAddr) -> Replica {
        // Up until shown otherwise: the first reads need not wait for a check.
        Replica {
            address,
            up: AtomicBool::new(true),
            applied: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    /// What the last check saw: up, applied sequence, lag (events).
    pub fn seen(&self) -> (bool, u64, u64) {
        (
            self.up.load(Ordering::Acquire),
            self.applied.load(Ordering::Acquire),
            self.lag.load(Ordering::Acquire),
        )
    }

    fn record(&self, seen: Option<(u64, u64)>) {
        match seen {
            Some((applied, lag)) => {
                self.applied.store(applied, Ordering::Release);
                self.lag.store(lag, Ordering::Release);
                self.up.store(true, Ordering::Release);
            }
            None => self.up.store(false, Ordering::Release),
        }
    }
}

/// How to reach the read models.
#[derive(Clone)]
pub struct QueryLink {
    /// The memory consumers' query APIs.
    pub replicas: Arc<[Replica]>,
    /// Whose turn it is among read models otherwise equal.
    next: Arc<AtomicUsize>,
    /// A read model further behind than this (events, by its own count) gets reads
    /// only when no other can take them.
    lag_max: u64,
    /// `Bearer <key>`, the gateway's own credential there (never a client's).
    pub authorization: Arc<str>,
    /// HTTP/2 (cleartext, prior knowledge): one connection per read model, reads
    /// multiplexed on it, and the reads of a scheduler turn leave in one write and come
    /// back in one read. Measured against a pool of HTTP/1.1 connections (a connection
    /// per read in flight) with `wrk -t1 -d4s` on `GET /accounts/{id}` through the
    /// demo's gateway, alternating, two rounds: at 4 connections 8.2–11.5 k against
    /// 10.7–13.0 k requests/s (p99 2.7–5.0 ms against 4.0–4.4 ms), at 16 14.2–18.5 k
    /// against 14.4–17.7 k (p99 1.8–2.4 against 4.8–5.1 ms), at 64 18.3–24.5 k against
    /// 14.5–18.6 k (p99 5.9–7.1 against 7.1–9.1 ms). Sending the first 16 reads in flight
    /// over HTTP/1.1 and the rest over HTTP/2 was tried too: p99 19–32 ms at 64.
    pub client: Client<HttpConnector, Body>,
}

/// What the read model answered.
pub enum Looked {
    /// 200 and its JSON.
    Found(Value),
    /// 404: no such thing.
    Missing,
    /// Unreachable, or any other answer.
    Unavailable,
}

/// The order in which to try read models for a read that needs `min_sequence`: those
/// up, within `lag_max` and already at `min_sequence`, the one with the fewest reads
/// in flight first (round-robin from `start` among equals); then the others up and
/// within `lag_max`, most advanced first (then fewest in flight, then round-robin:
/// right after a write every check is behind it); then the rest (a health check can be
/// stale). Fewest in flight rather than plain turns: a read model that answers slowly
/// (descheduled, applying a large batch, on a busier host) keeps its reads in flight
/// longer and so gets fewer new ones, instead of the same share until every
/// connection waits on it. Pure, for the tests.
pub fn try_order(
    seen: &[(bool, u64, u64)],
    in_flight: &[u64],
    min_sequence: u64,
    lag_max: u64,
    start: usize,
) -> Vec<usize> {
    debug_assert_eq!(seen.len(), in_flight.len());
    let healthy = |&(up, _, lag): &(bool, u64, u64)| up && lag <= lag_max;
    let count = seen.len();
    // How many places after `start` read model `i` comes (only asked when count > 0).
    let turn = |i: usize| (i + count - start % count) % count;
    let mut order: Vec<usize> =
        (0..count).filter(|&i| healthy(&seen[i]) && seen[i].1 >= min_sequence).collect();
    order.sort_by_key(|&i| (in_flight[i], turn(i)));
    let mut behind: Vec<usize> =
        (0..count).filter(|&i| healthy(&seen[i]) && seen[i].1 < min_sequence).collect();
    behind.sort_by_key(|&i| (std::cmp::Reverse(seen[i].1), in_flight[i], turn(i)));
    order.extend(behind);
    order.extend((0..count).filter(|&i| !healthy(&seen[i])));
    order
}

/// A read counted in its read model's [`Replica::in_flight`] until dropped.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn start(counter: &'a AtomicU64) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl QueryLink {
    /// A link to the query APIs at `upstreams` (at least one), presenting `query_key`.
    pub fn new(upstreams: &[SocketAddr], query_key: &str, lag_max: u64) -> QueryLink {
        assert!(!upstreams.is_empty(), "at least one read model");
        QueryLink {
            replicas: upstreams.iter().copied().map(Replica::new).collect(),
            next: Arc::default(),
            lag_max,
            authorization: format!("Bearer {query_key}").into(),
            client: Client::builder(TokioExecutor::new()).http2_only(true).build_http(),
        }
    }

    /// Checks every read model's `/status` every [`HEALTH_EVERY`], for as long as
    /// the runtime runs (only worth it with more than one).
    pub fn start_health_checks(&self) {
        if self.replicas.len() < 2 {
            return;
        }
        let link = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEALTH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                for replica in link.replicas.iter() {
                    let seen = tokio::time::timeout(HEALTH_EVERY * 5, link.status(replica.address)).await;
                    let seen = seen.ok().flatten();
                    if seen.is_none() && replica.seen().0 {
                        tracing::warn!(upstream = %replica.address, "read model not answering; reads go to the others");
                    }
                    replica.record(seen);
                }
            }
        });
    }

    /// A read model's applied sequence and lag, from its `/status`.
    async fn status(&self, address: SocketAddr) -> Option<(u64, u64)> {
        let request =
            axum::http::Request::get(format!("http://{address}/status")).body(Body::empty()).ok()?;
        let response = self.client.request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let status: Value = serde_json::from_slice(&body).ok()?;
        Some((status.get("last_sequence")?.as_u64()?, status.get("lag").and_then(Value::as_u64).unwrap_or(0)))
    }

    /// `GET path` from a read model that has applied `min_sequence` (or will wait for
    /// it), whole, trying the next on a connection failure. `None`: none answered.
    pub async fn request(
        &self,
        path: &str,
        min_sequence: u64,
        accept: Option<&axum::http::HeaderValue>,
    ) -> Option<axum::http::Response<Bytes>> {
        let seen: Vec<_> = self.replicas.iter().map(Replica::seen).collect();
        let in_flight: Vec<u64> = self.replicas.iter().map(|r| r.in_flight.load(Ordering::Acquire)).collect();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for index in try_order(&seen, &in_flight, min_sequence, self.lag_max, start) {
            let replica = &self.replicas[index];
            let _counted = InFlight::start(&replica.in_flight);
            let mut request = axum::http::Request::get(format!("http://{}{}", replica.address, path))
                .header("x-min-sequence", min_sequence.to_string())
                .header("authorization", &*self.authorization);
            if let Some(accept) = accept {
                request = request.header("accept", accept);
            }
            let Ok(request) = request.body(Body::empty()) else { return None };
            let answered = match self.client.request(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await.map_err(|error| error.to_string());
                    body.map(|body| axum::http::Response::from_parts(parts, body.to_bytes()))
                }
                Err(error) => Err(error.to_string()),
            };
            match answered {
                Ok(response) => return Some(response),
                Err(error) => {
                    tracing::debug!(upstream = %replica.address, %error, "read model unreachable; trying the next");
                    replica.record(None);
                }
            }
        }
        None
    }

    /// `GET path` once the read model has applied `min_sequence`.
    pub async fn get(&self, path: &str, min_sequence: u64) -> Looked {
        let Some(response) = self.request(path, min_sequence, None).await else { return Looked::Unavailable };
        let status = response.status();
        if status == axum::http::StatusCode::NOT_FOUND {
            return Looked::Missing;
        }
        if !status.is_success() {
            tracing::debug!(path, %status, "read model did not answer");
            return Looked::Unavailable;
        }
        serde_json::from_slice(response.body()).map_or(Looked::Unavailable, Looked::Found)
    }
}

fn number(value: &Value, field: &str) -> u64 {
    match value.get(field) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn id(value: &Value, field: &str) -> u128 {
    value.get(field).and_then(Value::as_str).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The flag bits whose boolean fields are true in `json`.
fn flags(json: &Value, names: &[(&str, u16)]) -> u16 {
    names
        .iter()
        .filter(|(name, _)| json.get(name).and_then(Value::as_bool) == Some(true))
        .fold(0, |f, (_, b)| f | b)
}

/// The record answering a lookup of account `account`: found, missing (ledger 0) or
/// unavailable (result busy).
pub fn account_record(correlation_id: u64, account: u128, looked: &Looked) -> Vec<u8> {
    let zero = Value::Null;
    let (json, result) = match looked {
        Looked::Found(json) => (json, ResultCode::Ok),
        Looked::Missing => (&zero, ResultCode::Ok),
        Looked::Unavailable => (&zero, ResultCode::Busy),
    };
    let record = AccountRecord {
        correlation_id: correlation_id.into(),
        id: account.into(),
        debits_posted: number(json, "debits_posted").into(),
        credits_posted: number(json, "credits_posted").into(),
        timestamp_ns: number(json, "timestamp").into(),
        sequence: number(json, "sequence").into(),
        ledger: (number(json, "ledger") as u32).into(),
        code: (number(json, "code") as u16).into(),
        flags: flags(json, crate::json::ACCOUNT_FLAG_FIELDS).into(),
        result: result.to_wire().into(),
        reserved: [0; 6],
        debits_pending: number(json, "debits_pending").into(),
        credits_pending: number(json, "credits_pending").into(),
        user_data_128: id(json, "user_data_128").into(),
        user_data_64: number(json, "user_data_64").into(),
        user_data_32: (number(json, "user_data_32") as u32).into(),
        reserved2: [0; 4],
    };
    let mut frame = vec![0u8; AccountRecord::FRAME_SIZE];
    encode(&record, &mut frame).expect("sized");
    frame
}

/// The record answering a lookup of transfer `transfer`: how it was decided, never
/// decided (sequence 0), or unavailable (result busy, sequence 0).
pub fn transfer_record(correlation_id: u64, transfer: u128, looked: &Looked) -> Vec<u8> {
    let zero = Value::Null;
    let json = match looked {
        Looked::Found(json) => json,
        Looked::Missing | Looked::Unavailable => &zero,
    };
    let result = match looked {
        Looked::Unavailable => ResultCode::Busy,
        _ => json
            .get("result")
            .and_then(Value::as_str)
            .and_then(|name| {
                ResultCode::ALL.iter().map(|(code, _)| *code).find(|code| code.snake_name() == name)
            })
            .unwrap_or(ResultCode::Ok),
    };
    let pending_state = match json.get("pending_state").and_then(Value::as_str) {
        Some("pending") => 1,
        Some("posted") => 2,
        Some("voided") => 3,
        Some("expired") => 4,
        _ => 0,
    };
    let record = TransferRecord {
        correlation_id: correlation_id.into(),
        id: transfer.into(),
        debit_account_id: id(json, "debit_account_id").into(),
        credit_account_id: id(json, "credit_account_id").into(),
        amount: number(json, "amount").into(),
        timestamp_ns: number(json, "timestamp").into(),
        sequence: number(json, "sequence").into(),
        ledger: (number(json, "ledger") as u32).into(),
        code: (number(json, "code") as u16).into(),
        flags: flags(json, crate::json::TRANSFER_FLAG_FIELDS).into(),
        result: result.to_wire().into(),
        reserved: [0; 6],
        pending_id: id(json, "pending_id").into(),
        user_data_128: id(json, "user_data_128").into(),
        user_data_64: number(json, "user_data_64").into(),
        user_data_32: (number(json, "user_data_32") as u32).into(),
        timeout: (number(json, "timeout") as u32).into(),
        pending_state: pending_state.into(),
        reserved2: [0; 6],
    };
    let mut frame = vec![0u8; TransferRecord::FRAME_SIZE];
    encode(&record, &mut frame).expect("sized");
    frame
}

/// Most transfers one history page holds (the read model's own limit).
pub const HISTORY_LIMIT_MAX: u32 = 1_000;

/// The frames answering a history lookup: a TransferRecord per transfer, then a
/// HistoryEnd (result `debit_account_not_found` for no such account, `busy` when the
/// read model could not answer).
pub fn history_page(correlation_id: u64, looked: &Looked) -> Vec<u8> {
    let mut frames = Vec::new();
    let (count, next_after, result) = match looked {
        Looked::Found(page) => {
            let transfers = page.get("transfers").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            for transfer in transfers {
                let id = id(transfer, "id");
                frames.extend(transfer_record(correlation_id, id, &Looked::Found(transfer.clone())));
            }
            let next_after = page
                .get("next_after")
                .and_then(Value::as_str)
                .and_then(|cursor| u64::from_str_radix(cursor.strip_prefix('c')?, 16).ok())
                .unwrap_or(0);
            (transfers.len() as u32, next_after, ResultCode::Ok)
        }
        Looked::Missing => (0, 0, ResultCode::DebitAccountNotFound),
        Looked::Unavailable => (0, 0, ResultCode::Busy),
    };
    let end = HistoryEnd {
        correlation_id: correlation_id.into(),
        next_after: next_after.into(),
        count: count.into(),
        result: result.to_wire().into(),
        reserved: [0; 6],
        reserved2: [0; 4],
    };
    let mut frame = vec![0u8; HistoryEnd::FRAME_SIZE];
    encode(&end, &mut frame).expect("sized");
    frames.extend(frame);
    frames
}

#[cfg(test)]
mod tests {
    use super::try_order;

    #[test]
    fn reads_go_round_robin_to_read_models_that_have_the_sequence_then_the_most_advanced() {
        // (up, applied, lag)
        let seen = [(true, 100, 0), (true, 90, 0), (true, 120, 0), (false, 500, 0), (true, 130, 9_999)];
        let idle = [0; 5];
        assert_eq!(try_order(&seen, &idle, 95, 1_000, 0), [0, 2, 1, 3, 4]);
        assert_eq!(try_order(&seen, &idle, 95, 1_000, 1), [2, 0, 1, 3, 4], "round-robin among those ready");
        assert_eq!(
            try_order(&seen, &idle, 125, 1_000, 0),
            [2, 0, 1, 3, 4],
            "none ready: most advanced first"
        );
        assert_eq!(
            try_order(&seen, &idle, 0, 100_000, 3),
            [4, 0, 1, 2, 3],
            "a lag bound that lets the last in"
        );
        assert!(try_order(&[], &[], 1, 1, 0).is_empty());
        let level = [(true, 50, 0), (true, 50, 0), (true, 40, 0)];
        assert_eq!(try_order(&level, &[0; 3], 60, 1_000, 0), [0, 1, 2]);
        assert_eq!(try_order(&level, &[0; 3], 60, 1_000, 1), [1, 0, 2], "equals take turns");
        assert_eq!(try_order(&level, &[0; 3], 60, 1_000, 2), [0, 1, 2]);
    }

    #[test]
    fn a_read_model_with_reads_piling_up_gets_the_next_read_last() {
        let ready = [(true, 100, 0), (true, 100, 0), (true, 100, 0)];
        assert_eq!(try_order(&ready, &[30, 2, 2], 95, 1_000, 0), [1, 2, 0], "the slow one last");
        assert_eq!(try_order(&ready, &[30, 2, 2], 95, 1_000, 2), [2, 1, 0], "turns among the others");
        assert_eq!(try_order(&ready, &[5, 5, 5], 95, 1_000, 1), [1, 2, 0], "equals take turns");
        // Readiness first: a busy read model at the sequence beats an idle one behind it.
        let mixed = [(true, 100, 0), (true, 90, 0), (false, 200, 0)];
        assert_eq!(try_order(&mixed, &[40, 0, 0], 95, 1_000, 0), [0, 1, 2]);
        // Behind alike: the less busy one first.
        let behind = [(true, 90, 0), (true, 90, 0)];
        assert_eq!(try_order(&behind, &[7, 1], 95, 1_000, 0), [1, 0]);
    }
}
