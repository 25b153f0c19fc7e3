//! The HTTP/JSON API (axum on hyper, HTTP/1.1 keep-alive). Writes go to the
//! sequencer through the [`Upstream`] link; reads are proxied to the memory
//! consumer with `X-Min-Sequence` set to the highest sequence this gateway has
//! acknowledged, so a GET after a 201 sees that write.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ledgerbus_codec::{encode_compact, Message, ResultCode};
use serde_json::{json, Value};

use crate::json::{self, BadRequest};
use crate::query::QueryLink;
use crate::upstream::{SubmitError, Upstream};
use ledgerbus_protocol::Decided;

/// The OpenAPI document, kept in the repository beside the code.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The sequencer link.
    pub upstream: Upstream,
    /// Accepted API keys.
    pub api_keys: Arc<HashSet<String>>,
    /// The read model (the memory consumer's query API).
    pub query: QueryLink,
    /// What `/metrics` shows (built once; the counters inside are shared).
    pub registry: Arc<ledgerbus_telemetry::Registry>,
}

impl AppState {
    /// State for a gateway in front of `upstream`.
    pub fn new(upstream: Upstream, api_keys: Vec<String>, query: QueryLink) -> AppState {
        AppState {
            api_keys: Arc::new(api_keys.into_iter().collect()),
            query,
            registry: Arc::new(crate::metrics::registry(&upstream)),
            upstream,
        }
    }
}

/// The API.
pub fn router(state: AppState) -> Router {
    // Shared, not cloned: axum hands the state to the middleware and the handler of
    // every request, and an `AppState` clone is a dozen reference counts.
    let state = Arc::new(state);
    let authenticated = Router::new()
        .route("/accounts", post(create_accounts).get(proxy))
        .route("/transfers", post(create_transfers).get(proxy))
        .route("/accounts/{id}", get(proxy))
        .route("/accounts/{id}/transfers", get(proxy))
        .route("/accounts/{id}/balances", get(proxy))
        .route("/transfers/{id}", get(proxy))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .route("/openapi.json", get(|| async { ([("content-type", "application/json")], OPENAPI) }))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(authenticated)
        .route_layer(middleware::from_fn_with_state(state.clone(), record_duration))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route; see /openapi.json")
        })
        .with_state(state)
}

/// An error answer in the one shape every error has ([`json::error_body`]); a 503
/// says when to retry.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    error_for(status, None, &message.into())
}

fn error_for(status: StatusCode, param: Option<&str>, message: &str) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::BAD_GATEWAY => "bad_gateway",
        _ => "error",
    };
    let mut response = (status, Json(json::error_body(code, param, message))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    response
}

fn bad_request(BadRequest { param, message }: BadRequest) -> Response {
    error_for(StatusCode::BAD_REQUEST, Some(&param), &message)
}

/// 401 unless `Authorization: Bearer <key>` names a configured key. Keys are never logged.
async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if state.api_keys.contains(key) => next.run(request).await,
        _ => error(StatusCode::UNAUTHORIZED, "missing or invalid API key (Authorization: Bearer <key>)"),
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let connected = state.upstream.connected.load(Ordering::Acquire);
    let status = if connected { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "sequencer_connected": connected }))).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([("content-type", ledgerbus_telemetry::CONTENT_TYPE)], ledgerbus_telemetry::render(&state.registry))
        .into_response()
}

/// Times every routed request (`METHOD /route/{param}`, never the raw path, so ids do
/// not become label values).
async fn record_duration(
    State(state): State<Arc<AppState>>,
    path: axum::extract::MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    ledgerbus_client::idle::touch();
    let route = format!("{} {}", request.method(), path.as_str());
    let response = next.run(request).await;
    state.upstream.metrics.record_http(&route, response.status().as_u16(), started.elapsed());
    response
}

/// One decided command: its JSON and the HTTP status it would get on its own.
fn decided(reply: &Option<Decided>) -> (Value, StatusCode) {
    match reply {
        Some(decided) => (
            json::result_json(decided.id, decided.result, decided.sequence, decided.timestamp_ns),
            status_for(decided.result),
        ),
        None => (json!({ "error": "unreadable result from the sequencer" }), StatusCode::BAD_GATEWAY),
    }
}

fn status_for(code: ResultCode) -> StatusCode {
    match code {
        ResultCode::Ok => StatusCode::CREATED,
        ResultCode::Exists => StatusCode::OK,
        ResultCode::ExistsWithDifferentFields => StatusCode::CONFLICT,
        ResultCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// The commands' frames, each in the oldest schema version that carries it (a
/// plain transfer costs the sequencer link no more bytes than before version 2).
fn encode_all<M: Message>(commands: &[M]) -> Vec<u8> {
    let mut frames = vec![0u8; commands.len() * M::FRAME_SIZE];
    let mut end = 0;
    for command in commands {
        end += encode_compact(command, &mut frames[end..]).expect("sized");
    }
    frames.truncate(end);
    frames
}

/// Sends the commands and shapes the answer: one object, or an array in order.
/// Idempotent retries get their original added ([`crate::original`]).
async fn submit_and_answer<C: Message + crate::original::Retried>(
    state: &AppState,
    commands: &[C],
    is_array: bool,
    local: Vec<(usize, Value)>,
) -> Response {
    let count = commands.len();
    let mut results: Vec<(Value, StatusCode)> = Vec::with_capacity(count + local.len());
    if count > 0 {
        let frames = encode_all(commands);
        let metrics = &state.upstream.metrics;
        let submitted = state.upstream.submit(frames, count).await;
        let counter = if submitted.is_ok() { &metrics.http_commands } else { &metrics.http_busy };
        counter.inc_by(count as u64);
        match submitted {
            Ok(replies) => {
                results.extend(replies.iter().map(decided));
                crate::original::add_originals(state, commands, &mut results).await;
            }
            Err(SubmitError::Busy) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, "gateway busy; retry with the same ids")
            }
            Err(SubmitError::Unavailable) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "sequencer unavailable; retry with the same ids",
                )
            }
        }
    }
    // Items decided at the edge (an unterminated linked chain) go back in place.
    for (index, value) in local {
        results.insert(index, (value, StatusCode::UNPROCESSABLE_ENTITY));
    }
    if is_array {
        let body: Vec<Value> = results.into_iter().map(|(value, _)| value).collect();
        (StatusCode::OK, Json(Value::Array(body))).into_response()
    } else {
        let (value, status) = results.pop().expect("one result for one object");
        (status, Json(value)).into_response()
    }
}

async fn create_accounts(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let parsed = json::items(&body)
        .and_then(|(objects, is_array)| Ok((json::accounts(&objects, is_array)?, is_array)));
    match parsed {
        Ok((commands, is_array)) => submit_and_answer(&state, &commands, is_array, Vec::new()).await,
        Err(bad) => bad_request(bad),
    }
}

async fn create_transfers(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let parsed = json::items(&body)
        .and_then(|(objects, is_array)| Ok((json::transfers(&objects, is_array)?, is_array)));
    let (commands, is_array) = match parsed {
        Ok(parsed) => parsed,
        Err(bad) => return bad_request(bad),
    };
    // A chain still open at the end of the request can never close: decide it here.
    let open_from = commands.iter().rposition(|t| !t.is_linked()).map_or(0, |last_closed| last_closed + 1);
    let local: Vec<(usize, Value)> = (open_from..commands.len())
        .map(|index| (index, json::result_json(commands[index].id.get(), ResultCode::LinkedChainOpen, 0, 0)))
        .collect();
    let sent = &commands[..open_from];
    submit_and_answer(&state, sent, is_array, local).await
}

/// Forwards a query to the memory consumer, asking it to have applied what this
/// gateway acknowledged that the query is about (read-your-writes; see
/// [`crate::write_marks`]).
async fn proxy(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let everything = state.upstream.highest_sequence.load(Ordering::Acquire);
    let min_sequence = state.upstream.write_marks.read_after_path(uri.path(), everything);
    match state.query.request(path, min_sequence, headers.get("accept")).await {
        Some(response) => response.map(Body::from),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "query service (memory consumer) unavailable"),
    }
}
