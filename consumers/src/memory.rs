//! `ledgerbus consumer memory`: the read model behind the HTTP query API.
//!
//! The follower thread applies events in batches under a write lock and never holds
//! it while waiting for the network; HTTP handlers take the read lock. A request may
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
use crate::readmodel::{ReadModel, TransferRecord};

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
        let mut model = self.model.write().map_err(|_| SinkError::Poisoned)?;
        let applied = model.apply_batch(frames);
        self.next = model.next_sequence();
        self.progress.state_hash.store(model.state_hash(), Ordering::Relaxed);
        applied
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        self.applied.send_replace(self.next - 1);
        Ok(())
    }
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
        .route("/accounts/{id}", get(get_account))
        .route("/accounts/{id}/transfers", get(get_history))
        .route("/transfers/{id}", get(get_transfer))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), require_api_key));
    let progress = Arc::clone(&shared.progress);
    progress.routes().merge(data).with_state(shared)
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
    let reached = tokio::time::timeout(READ_YOUR_WRITES_WAIT, applied.wait_for(|&seq| seq >= min)).await;
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

fn account_json(id: u128, account: &ledgerbus_ledger::Account, sequence: Option<u64>) -> Value {
    json!({
        "id": id.to_string(),
        "ledger": account.ledger,
        "code": account.code,
        "allow_negative": account.allows_negative(),
        "debits_posted": account.debits_posted.to_string(),
        "credits_posted": account.credits_posted.to_string(),
        "balance": account.balance().to_string(),
        "timestamp": account.timestamp_ns,
        "sequence": sequence,
    })
}

/// A transfer as JSON.
pub fn transfer_json(record: &TransferRecord) -> Value {
    json!({
        "id": record.id.to_string(),
        "debit_account_id": record.debit_account_id.to_string(),
        "credit_account_id": record.credit_account_id.to_string(),
        "amount": record.amount.to_string(),
        "ledger": record.ledger,
        "code": record.code,
        "linked": record.linked(),
        "timestamp": record.timestamp_ns,
        "sequence": record.sequence,
        "result": "ok",
    })
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
    match model.ledger().account(id) {
        Some(account) => Json(account_json(id, account, model.account_sequence(id))).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("account {id} not found")),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<String>,
    after: Option<String>,
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
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(limit)) if (1..=HISTORY_LIMIT_MAX).contains(&limit) => limit,
        Some(_) => return bad_param("limit", format!("limit must be 1..={HISTORY_LIMIT_MAX}")),
    };
    let after = match query.after.as_deref().map(cursor_position) {
        None => 0,
        Some(Some(after)) => after,
        Some(None) => return bad_param("after", "after must be a next_after cursor from an earlier page"),
    };
    let model = match caught_up(&shared, &headers).await {
        Ok(model) => model,
        Err(response) => return response,
    };
    if model.ledger().account(id).is_none() {
        return error(StatusCode::NOT_FOUND, format!("account {id} not found"));
    }
    let page = model.history(id, after, limit);
    let next = (page.len() == limit).then(|| page.last().map(|r| cursor(r.sequence))).flatten();
    Json(json!({
        "transfers": page.iter().map(transfer_json).collect::<Vec<_>>(),
        "next_after": next,
    }))
    .into_response()
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
        (Some(record), _) => Json(transfer_json(record)).into_response(),
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
