//! The gateway's link to the read model (the memory consumer's query API): pooled
//! HTTP with the gateway's own credential, asking the read model to have applied a
//! given sequence first, so a read after a write sees it. Used by the HTTP proxy's
//! helpers, the originals of idempotent retries, and the TCP API's lookups.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ledgerbus_codec::messages::{AccountRecord, HistoryEnd, TransferRecord};
use ledgerbus_codec::{encode, Message, ResultCode};
use serde_json::Value;

/// How to reach the read model.
#[derive(Clone)]
pub struct QueryLink {
    /// The memory consumer's query API.
    pub upstream: SocketAddr,
    /// `Bearer <key>`, the gateway's own credential there (never a client's).
    pub authorization: Arc<str>,
    /// Pooled HTTP client.
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

impl QueryLink {
    /// A link to the query API at `upstream`, presenting `query_key`.
    pub fn new(upstream: SocketAddr, query_key: &str) -> QueryLink {
        QueryLink {
            upstream,
            authorization: format!("Bearer {query_key}").into(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `GET path` once the read model has applied `min_sequence`.
    pub async fn get(&self, path: &str, min_sequence: u64) -> Looked {
        let request = axum::http::Request::get(format!("http://{}{}", self.upstream, path))
            .header("x-min-sequence", min_sequence.to_string())
            .header("authorization", &*self.authorization)
            .body(Body::empty());
        let Ok(request) = request else { return Looked::Unavailable };
        let Ok(response) = self.client.request(request).await else { return Looked::Unavailable };
        let status = response.status();
        if status == axum::http::StatusCode::NOT_FOUND {
            return Looked::Missing;
        }
        if !status.is_success() {
            tracing::debug!(path, %status, "read model did not answer");
            return Looked::Unavailable;
        }
        let Ok(body) = response.into_body().collect().await else { return Looked::Unavailable };
        serde_json::from_slice(&body.to_bytes()).map_or(Looked::Unavailable, Looked::Found)
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
