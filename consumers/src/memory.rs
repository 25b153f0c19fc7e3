//! `ledgerbus consumer memory`: the read model behind the HTTP query API.
//!
//! The follower thread applies events under a write lock, in slices of at most
//! [`APPLY_SLICE_EVENTS`] however large the batch it received (a catch-up or a write
//! burst brings megabytes at once), and never holds it while waiting for the network;
//! HTTP handlers take the read lock, so a query waits at most one slice. A request may
//! carry `X-Min-Sequence` (the gateway sends the highest sequence it acknowledged):
//! the handler waits, bounded, until the model has applied it, which is what makes
//! a GET after a 201 see that write.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::SinkError;
use crate::follow::{follow, FollowConfig, FollowError, Progress, Sink};
use crate::readmodel::{Direction, HistoryFilter, ReadModel, RefFilter, TransferRecord};
use ledgerbus_codec::{account_flags, transfer_flags};
use ledgerbus_telemetry::{Family, Histogram};

/// Most events applied under one hold of the write lock (about a millisecond at the
/// model's apply rate): what a query can wait behind. After each slice the applied
/// sequence is published, so queries waiting for `X-Min-Sequence` go as soon as it
/// is reached, not when the whole batch is.
pub const APPLY_SLICE_EVENTS: usize = 2_048;

/// How long a query waits for the model to reach `X-Min-Sequence`.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(2);
/// Largest page of account history.
const HISTORY_LIMIT_MAX: usize = 1_000;

/// The shared model, its progress and a watch of the applied sequence.
#[derive(Clone)]
pub struct Shared {
    model: Arc<RwLock<ReadModel>>,
    progress: Arc<Progress>,
    applied: watch::Receiver<u64>,
    /// Keys accepted on the query routes (`Authorization: Bearer <key>`): the
    /// gateway presents one of its own; nothing answers a bare GET with data.
    api_keys: Arc<HashSet<String>>,
    metrics: Arc<QueryMetrics>,
}

/// How long queries take, by route, and how much of it is waiting for
/// `X-Min-Sequence` (read-your-writes) rather than reading.
struct QueryMetrics {
    durations: Family<[(&'static str, String); 1], Histogram>,
    read_your_writes_waits: Histogram,
}

impl Default for QueryMetrics {
    fn default() -> Self {
        QueryMetrics {
            durations: Family::new_with_constructor(
                || Histogram::new(ledgerbus_telemetry::latency_buckets()),
            ),
            read_your_writes_waits: Histogram::new(ledgerbus_telemetry::latency_buckets()),
        }
    }
}

struct MemorySink {
    model: Arc<RwLock<ReadModel>>,
    applied: watch::Sender<u64>,
    progress: Arc<Progress>,
    next: u64,
    /// The log the model holds, once known.
    session: Option<u64>,
    /// Transfer ids a fresh model is sized for.
    transfer_capacity: usize,
}

impl Sink for MemorySink {
    fn next_sequence(&self) -> u64 {
        self.next
    }

    fn session(&self) -> Option<u64> {
        self.session
    }

    fn start_session(&mut self, session: u64) -> Result<(), SinkError> {
        if self.session.is_some_and(|held| held != session) {
            let mut model = self.model.write().map_err(|_| SinkError::Poisoned)?;
            *model = ReadModel::with_capacity(self.transfer_capacity);
            self.next = model.next_sequence();
            self.progress.state_hash.store(model.state_hash(), Ordering::Relaxed);
            self.applied.send_replace(0);
        }
        self.session = Some(session);
        Ok(())
    }

    fn apply_batch(&mut self, frames: &[u8]) -> Result<(), SinkError> {
        let mut rest = frames;
        while !rest.is_empty() {
            let (slice, tail) = rest.split_at(slice_end(rest, APPLY_SLICE_EVENTS));
            {
                let mut model = self.model.write().map_err(|_| SinkError::Poisoned)?;
                let applied = model.apply_batch(slice);
                self.next = model.next_sequence();
                self.progress.state_hash.store(model.state_hash(), Ordering::Relaxed);
                applied?;
            }
            self.applied.send_replace(self.next - 1);
            rest = tail;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        // Nothing to persist, and `apply_batch` published the position after each
        // slice.
        Ok(())
    }
}

/// Where the first `events` frames of `frames` end; all of it if there are fewer, or
/// if a frame is malformed (applying it then reports the error).
fn slice_end(frames: &[u8], events: usize) -> usize {
    let mut iter = ledgerbus_codec::Frames::new(frames);
    for _ in 0..events {
        match iter.next() {
            Some(Ok(_)) => {}
            Some(Err(_)) => return frames.len(),
            None => break,
        }
    }
    frames.len() - iter.remainder().len()
}

/// Runs the memory consumer: the query API on `http` and the follower on this thread,
/// until `stop` is set. The transfer-id index is sized for `transfer_capacity` ids.
pub fn run(
    config: FollowConfig,
    transfer_capacity: usize,
    api_keys: Vec<String>,
    http: std::net::TcpListener,
    stop: Arc<AtomicBool>,
) -> Result<(), FollowError> {
    let model = Arc::new(RwLock::new(ReadModel::with_capacity(transfer_capacity)));
    let progress = Arc::new(Progress::new("memory"));
    let (applied_tx, applied_rx) = watch::channel(0u64);
    let shared = Shared {
        model: Arc::clone(&model),
        progress: Arc::clone(&progress),
        applied: applied_rx,
        api_keys: Arc::new(api_keys.into_iter().collect()),
        metrics: Arc::default(),
    };
    ledgerbus_telemetry::serve_router(http, router(shared), "query-http")?;
    let mut sink = MemorySink {
        model,
        applied: applied_tx,
        progress: Arc::clone(&progress),
        next: 1,
        session: None,
        transfer_capacity,
    };
    follow(&mut sink, &config, &progress, &stop)
}

/// The query API: data only with a key; `/status` (position, lag, state hash,
/// session) and `/metrics` stay open for health checks and replica comparison.
pub fn router(shared: Shared) -> Router {
    let data = Router::new()
        .route("/accounts", get(get_accounts))
        .route("/accounts/{id}", get(get_account))
        .route("/accounts/{id}/transfers", get(get_history))
        .route("/accounts/{id}/balances", get(get_balances))
        .route("/transfers", get(get_transfers))
        .route("/transfers/{id}", get(get_transfer))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), require_api_key))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), record_duration));
    let progress = Arc::clone(&shared.progress);
    let mut registry = progress.registry();
    registry.register(
        "ledgerbus_query_duration_seconds",
        "Time to answer a query, by route (read-your-writes wait included).",
        shared.metrics.durations.clone(),
    );
    registry.register(
        "ledgerbus_query_read_your_writes_wait_seconds",
        "Time queries waited for the model to reach their X-Min-Sequence.",
        shared.metrics.read_your_writes_waits.clone(),
    );
    progress.routes_with(registry, || Value::Null).merge(data).with_state(shared)
}

/// Observes each query's time under its route.
async fn record_duration(
    State(shared): State<Shared>,
    path: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = path.as_str().to_string();
    let response = next.run(request).await;
    shared.metrics.durations.get_or_create(&[("route", route)]).observe(started.elapsed().as_secs_f64());
    response
}

/// 401 unless `Authorization: Bearer <key>` names a configured key.
async fn require_api_key(
    State(shared): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if shared.api_keys.contains(key) => next.run(request).await,
        _ => error(StatusCode::UNAUTHORIZED, "missing or invalid API key (Authorization: Bearer <key>)"),
    }
}

/// The opaque cursor of a page that ends at `sequence`: clients pass it back as is
/// (what it encodes may change).
fn cursor(sequence: u64) -> String {
    format!("c{sequence:x}")
}

fn cursor_position(cursor: &str) -> Option<u64> {
    u64::from_str_radix(cursor.strip_prefix('c')?, 16).ok()
}

/// A 400 naming the query parameter at fault.
fn bad_param(param: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "code": "invalid_request", "param": param, "message": message.into() } });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// An error answer in the API's one error shape (see the gateway's `json::error_body`),
/// which the gateway passes through unchanged.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "error",
    };
    let body = json!({ "error": { "code": code, "param": null, "message": message.into() } });
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    response
}

/// A refusal: status and message, turned into a JSON error response by `reject`.
type Rejection = Box<(StatusCode, String)>;

#[allow(clippy::boxed_local)] // boxed only to keep the Err variant of handlers' Results small
fn reject(rejection: Rejection) -> Response {
    let (status, message) = *rejection;
    error(status, message)
}

fn parse_id(text: &str) -> Result<u128, Rejection> {
    match text.parse::<u128>() {
        Ok(0) => Err(Box::new((StatusCode::BAD_REQUEST, "id must not be zero".into()))),
        Ok(id) => Ok(id),
        Err(_) => {
            Err(Box::new((StatusCode::BAD_REQUEST, format!("id `{text}` is not a u128 decimal number"))))
        }
    }
}

/// Waits until the model has applied the sequence in `X-Min-Sequence`, if any.
async fn read_your_writes(shared: &Shared, headers: &HeaderMap) -> Result<(), Rejection> {
    let Some(value) = headers.get("x-min-sequence") else { return Ok(()) };
    let Some(min) = value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) else {
        return Err(Box::new((StatusCode::BAD_REQUEST, "X-Min-Sequence must be a u64".into())));
    };
    let mut applied = shared.applied.clone();
    if *applied.borrow() >= min {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let reached = tokio::time::timeout(READ_YOUR_WRITES_WAIT, applied.wait_for(|&seq| seq >= min)).await;
    shared.metrics.read_your_writes_waits.observe(started.elapsed().as_secs_f64());
    match reached {
        Ok(Ok(_)) => Ok(()),
        _ => Err(Box::new((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("read model has not reached sequence {min} yet"),
        ))),
    }
}

/// The model, once it has applied what the request's `X-Min-Sequence` asks for.
async fn caught_up<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
) -> Result<std::sync::RwLockReadGuard<'a, ReadModel>, Response> {
    read_your_writes(shared, headers).await.map_err(reject)?;
    shared.model.read().map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned"))
}

/// Account flags by their JSON names (the gateway's `POST /accounts` takes the same).
const ACCOUNT_FLAGS: &[(&str, u16)] = &account_flags::NAMES;

/// Transfer flags by their JSON names (as `POST /transfers` takes them).
const TRANSFER_FLAGS: &[(&str, u16)] = &transfer_flags::NAMES;

fn account_json(id: u128, model: &ReadModel) -> Option<Value> {
    let account = model.ledger().account(id)?;
    let user_data = model.ledger().account_user_data(id);
    let mut json = json!({
        "id": id.to_string(),
        "ledger": account.ledger,
        "code": account.code,
    });
    let object = json.as_object_mut().expect("an object");
    for (name, bit) in ACCOUNT_FLAGS {
        object.insert((*name).into(), (account.flags & bit != 0).into());
    }
    object.insert("debits_pending".into(), account.debits_pending.to_string().into());
    object.insert("debits_posted".into(), account.debits_posted.to_string().into());
    object.insert("credits_pending".into(), account.credits_pending.to_string().into());
    object.insert("credits_posted".into(), account.credits_posted.to_string().into());
    object.insert("balance".into(), account.balance().to_string().into());
    object.insert("available".into(), account.available().to_string().into());
    object.insert("user_data_128".into(), user_data.user_data_128.to_string().into());
    object.insert("user_data_64".into(), user_data.user_data_64.to_string().into());
    object.insert("user_data_32".into(), user_data.user_data_32.into());
    object.insert("timestamp".into(), account.timestamp_ns.into());
    object.insert("sequence".into(), model.account_sequence(id).into());
    Some(json)
}

/// A transfer as JSON; a pending transfer also says where it stands.
pub fn transfer_json(record: &TransferRecord, ledger: &ledgerbus_ledger::Ledger) -> Value {
    let mut json = json!({
        "id": record.id.to_string(),
        "debit_account_id": record.debit_account_id.to_string(),
        "credit_account_id": record.credit_account_id.to_string(),
        "amount": record.amount.to_string(),
        "ledger": record.ledger,
        "code": record.code,
    });
    let object = json.as_object_mut().expect("an object");
    for (name, bit) in TRANSFER_FLAGS {
        object.insert((*name).into(), (record.flags & bit != 0).into());
    }
    let pending_id = (record.pending_id != 0).then(|| record.pending_id.to_string());
    object.insert("pending_id".into(), pending_id.into());
    object.insert("timeout".into(), record.timeout.into());
    object.insert("user_data_128".into(), record.user_data_128.to_string().into());
    object.insert("user_data_64".into(), record.user_data_64.to_string().into());
    object.insert("user_data_32".into(), record.user_data_32.into());
    if record.flags & transfer_flags::PENDING != 0 {
        if let Some(pending) = ledger.pending(record.id) {
            object.insert("pending_state".into(), pending.state.name().into());
            let expires = (pending.expires_at_ns != 0).then_some(pending.expires_at_ns);
            object.insert("expires_at".into(), expires.into());
        }
    }
    object.insert("timestamp".into(), record.timestamp_ns.into());
    object.insert("sequence".into(), record.sequence.into());
    object.insert("result".into(), "ok".into());
    json
}

async fn get_account(State(shared): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(rejection) => return reject(rejection),
    };
    let model = match caught_up(&shared, &headers).await {
        Ok(model) => model,
        Err(response) => return response,
    };
    match account_json(id, &model) {
        Some(json) => Json(json).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("account {id} not found")),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<String>,
    after: Option<String>,
    since: Option<String>,
    until: Option<String>,
    code: Option<String>,
    direction: Option<String>,
    reverse: Option<String>,
}

/// A query parameter parsed as `T`, absent as `None`; malformed is a 400 naming it.
#[allow(clippy::result_large_err)] // the error is the 400 to send, once per request
fn param<T: std::str::FromStr>(value: Option<&str>, name: &str, what: &str) -> Result<Option<T>, Response> {
    match value {
        None => Ok(None),
        Some(text) => {
            text.parse::<T>().map(Some).map_err(|_| bad_param(name, format!("{name} must be {what}")))
        }
    }
}

#[allow(clippy::result_large_err)] // the error is the 400 to send, once per request
fn limit_param(value: Option<&str>) -> Result<usize, Response> {
    match value.map(str::parse::<usize>) {
        None => Ok(100),
        Some(Ok(limit)) if (1..=HISTORY_LIMIT_MAX).contains(&limit) => Ok(limit),
        Some(_) => Err(bad_param("limit", format!("limit must be 1..={HISTORY_LIMIT_MAX}"))),
    }
}

#[allow(clippy::result_large_err)] // the error is the 400 to send, once per request
fn cursor_param(value: Option<&str>) -> Result<u64, Response> {
    match value.map(cursor_position) {
        None => Ok(0),
        Some(Some(after)) => Ok(after),
        Some(None) => Err(bad_param("after", "after must be a next_after cursor from an earlier page")),
    }
}

#[allow(clippy::result_large_err)] // the error is the 400 to send, once per request
fn history_filter(query: &HistoryQuery) -> Result<HistoryFilter, Response> {
    let direction = match query.direction.as_deref() {
        None => Direction::Any,
        Some("debits") => Direction::Debits,
        Some("credits") => Direction::Credits,
        Some(_) => return Err(bad_param("direction", "direction must be debits or credits")),
    };
    Ok(HistoryFilter {
        cursor: cursor_param(query.after.as_deref())?,
        since: param(query.since.as_deref(), "since", "a time stamp in ns (u64)")?.unwrap_or(0),
        until: param(query.until.as_deref(), "until", "a time stamp in ns (u64)")?.unwrap_or(u64::MAX),
        code: param(query.code.as_deref(), "code", "a u16")?,
        direction,
        reverse: param(query.reverse.as_deref(), "reverse", "true or false")?.unwrap_or(false),
        limit: limit_param(query.limit.as_deref())?,
    })
}

async fn get_history(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
    headers: HeaderMap,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(rejection) => return reject(rejection),
    };
    let filter = match history_filter(&query) {
        Ok(filter) => filter,
        Err(response) => return response,
    };
    let model = match caught_up(&shared, &headers).await {
        Ok(model) => model,
        Err(response) => return response,
    };
    if model.ledger().account(id).is_none() {
        return error(StatusCode::NOT_FOUND, format!("account {id} not found"));
    }
    let page = model.history_filtered(id, &filter);
    let next = (page.len() == filter.limit).then(|| page.last().map(|r| cursor(r.sequence))).flatten();
    Json(json!({
        "transfers": page.iter().map(|r| transfer_json(r, model.ledger())).collect::<Vec<_>>(),
        "next_after": next,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceQuery {
    limit: Option<String>,
    after: Option<String>,
    ledger: Option<String>,
    code: Option<String>,
    user_data_128: Option<String>,
    user_data_64: Option<String>,
    user_data_32: Option<String>,
}

#[allow(clippy::result_large_err)] // the error is the 400 to send, once per request
fn reference_filter(query: &ReferenceQuery) -> Result<RefFilter, Response> {
    Ok(RefFilter {
        ledger: param(query.ledger.as_deref(), "ledger", "a u32")?,
        code: param(query.code.as_deref(), "code", "a u16")?,
        user_data_128: param(query.user_data_128.as_deref(), "user_data_128", "a u128 decimal")?,
        user_data_64: param(query.user_data_64.as_deref(), "user_data_64", "a u64 decimal")?,
        user_data_32: param(query.user_data_32.as_deref(), "user_data_32", "a u32 decimal")?,
    })
}

/// `GET /transfers?user_data_128=…` (or 64, 32; and `code`): transfers tied to an
/// external reference, in sequence order.
async fn get_transfers(
    State(shared): State<Shared>,
    Query(query): Query<ReferenceQuery>,
    headers: HeaderMap,
) -> Response {
    let filter = match reference_filter(&query) {
        Ok(filter) => filter,
        Err(response) => return response,
    };
    if filter.ledger.is_some() {
        return bad_param(
            "ledger",
            "filter transfers by user_data_128, user_data_64 or user_data_32 (and code)",
        );
    }
    if filter.user_data_128.is_none() && filter.user_data_64.is_none() && filter.user_data_32.is_none() {
        return bad_param("user_data_128", "give user_data_128, user_data_64 or user_data_32");
    }
    let (limit, after) = match (limit_param(query.limit.as_deref()), cursor_param(query.after.as_deref())) {
        (Ok(limit), Ok(after)) => (limit, after),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    let model = match caught_up(&shared, &headers).await {
        Ok(model) => model,
        Err(response) => return response,
    };
    let page = model.transfers_by_reference(&filter, after, limit);
    let next = (page.len() == limit).then(|| page.last().map(|r| cursor(r.sequence))).flatten();
    Json(json!({
        "transfers": page.iter().map(|r| transfer_json(r, model.ledger())).collect::<Vec<_>>(),
        "next_after": next,
    }))
    .into_response()
}

/// `GET /accounts?ledger=&code=&user_data_…=`: accounts in creation order.
async fn get_accounts(
    State(shared): State<Shared>,
    Query(query): Query<ReferenceQuery>,
    headers: HeaderMap,
) -> Response {
    let filter = match reference_filter(&query) {
        Ok(filter) => filter,
        Err(response) => return response,
    };
    let (limit, after) = match (limit_param(query.limit.as_deref()), cursor_param(query.after.as_deref())) {
        (Ok(limit), Ok(after)) => (limit, after),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    let Ok(after) = u32::try_from(after) else { return bad_param("after", "not a cursor of this list") };
    let model = match caught_up(&shared, &headers).await {
        Ok(model) => model,
        Err(response) => return response,
    };
    let page = model.accounts_matching(&filter, after, limit);
    let next = (page.len() == limit).then(|| page.last().map(|(_, at)| cursor(u64::from(*at)))).flatten();
    Json(json!({
        "accounts": page.iter().filter_map(|(id, _)| account_json(*id, &model)).collect::<Vec<_>>(),
        "next_after": next,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BalancesQuery {
    limit: Option<String>,
    after: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /accounts/{id}/balances`: the balances after each change, for accounts
/// created with `history: true`.
async fn get_balances(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<BalancesQuery>,
    headers: HeaderMap,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(rejection) => return reject(rejection),
    };
    #[allow(clippy::result_large_err)]
    let bounds = (|| {
        Ok::<_, Response>((
            limit_param(query.limit.as_deref())?,
            cursor_param(query.after.as_deref())?,
            param(query.since.as_deref(), "since", "a time stamp in ns (u64)")?.unwrap_or(0),
            param(query.until.as_deref(), "until", "a time stamp in ns (u64)")?.unwrap_or(u64::MAX),
        ))
    })();
    let (limit, after, since, until) = match bounds {
        Ok(bounds) => bounds,
        Err(response) => return response,
    };
    let model = match caught_up(&shared, &headers).await {
        Ok(model) => model,
        Err(response) => return response,
    };
    if model.ledger().account(id).is_none() {
        return error(StatusCode::NOT_FOUND, format!("account {id} not found"));
    }
    let Some(page) = model.balances(id, since, until, after, limit) else {
        return bad_param("id", format!("account {id} was not created with history: true"));
    };
    let next = (page.len() == limit).then(|| page.last().map(|e| cursor(e.sequence))).flatten();
    let entries: Vec<Value> = page
        .iter()
        .map(|e| {
            json!({
                "sequence": e.sequence,
                "timestamp": e.timestamp_ns,
                "debits_pending": e.debits_pending.to_string(),
                "debits_posted": e.debits_posted.to_string(),
                "credits_pending": e.credits_pending.to_string(),
                "credits_posted": e.credits_posted.to_string(),
            })
        })
        .collect();
    Json(json!({ "balances": entries, "next_after": next })).into_response()
}

async fn get_transfer(State(shared): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(rejection) => return reject(rejection),
    };
    let model = match caught_up(&shared, &headers).await {
        Ok(model) => model,
        Err(response) => return response,
    };
    match (model.transfer(id), model.rejection(id)) {
        (Some(record), _) => Json(transfer_json(&record, model.ledger())).into_response(),
        // Decided, but refused: say how, rather than a bare 404.
        (None, Some(refused)) => Json(json!({
            "id": id.to_string(),
            "debit_account_id": refused.debit_account_id.to_string(),
            "credit_account_id": refused.credit_account_id.to_string(),
            "amount": refused.amount.to_string(),
            "ledger": refused.ledger,
            "code": refused.code,
            "timestamp": refused.timestamp_ns,
            "sequence": refused.sequence,
            "result": refused.result.snake_name(),
        }))
        .into_response(),
        (None, None) => error(StatusCode::NOT_FOUND, format!("transfer {id} was never decided")),
    }
}

/// For callers that want the bound address before starting.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address)
}
