//! The HTTP listener, hardened: a bounded number of connections, a deadline for
//! every request's headers (which also closes idle keep-alive connections), and a
//! body limit enforced before the body is read.
//!
//! A body over the limit is answered 413 at once; when the client declared its
//! length and did not ask `Expect: 100-continue`, the rest of its body is read and
//! thrown away (bounded in bytes and time) so that an ordinary client, which sends its
//! whole body before it reads the answer, sees the 413 rather than a reset connection
//! (nginx's "lingering close").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Limits of the HTTP listener, and its TLS.
#[derive(Clone)]
pub struct HttpLimits {
    /// Largest request body, in bytes.
    pub body_max: usize,
    /// Time a client has to send a request's headers, counted from the end of the
    /// previous response on a kept-alive connection (so it is the idle timeout too).
    pub header_timeout: Duration,
    /// Open connections at most; more are answered 503 and closed.
    pub connections_max: usize,
    /// HTTPS when the gateway has a certificate.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for HttpLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpLimits")
            .field("body_max", &self.body_max)
            .field("header_timeout", &self.header_timeout)
            .field("connections_max", &self.connections_max)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            body_max: 2 << 20,
            header_timeout: Duration::from_secs(10),
            connections_max: 1_024,
            tls: None,
        }
    }
}

/// Counts a listener's open connections against its limit. A [`Slot`] is held for the
/// life of a connection and given back when dropped, however the connection ends.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One open connection's place within [`ConnectionSlots`].
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionSlots {
    /// Room for `max` connections at once.
    pub fn new(max: usize) -> ConnectionSlots {
        ConnectionSlots { open: Arc::new(AtomicUsize::new(0)), max }
    }

    /// A place for one more connection, or None when `max` are open.
    pub fn take(&self) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(Arc::clone(&self.open)))
    }
}

/// Bytes of an over-limit body read and discarded at most, so the client sees the 413.
const DISCARD_MAX: u64 = 64 << 20;
/// Time spent discarding at most.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` within `limits`, forever.
pub async fn serve(listener: TcpListener, router: Router, limits: HttpLimits) {
    let router = router
        .layer(axum::extract::DefaultBodyLimit::max(limits.body_max))
        .layer(middleware::from_fn_with_state(limits.body_max, limit_body));
    let slots = ConnectionSlots::new(limits.connections_max);
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(slot) = slots.take() else {
            tracing::warn!(%peer, max = limits.connections_max, "too many HTTP connections; refused");
            tokio::spawn(async move {
                let body = crate::json::error_body(
                    "unavailable",
                    None,
                    "too many connections to this gateway; retry later",
                )
                .to_string();
                let response = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
                // Read what the client sent (briefly, boundedly) before closing: closing
                // over unread bytes would reset the connection and lose the 503.
                let mut sink = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let mut read = 0;
                    while read < 64 << 10 {
                        match stream.read(&mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => read += n,
                        }
                    }
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let (tls, header_timeout) = (limits.tls.clone(), limits.header_timeout);
        tokio::spawn(async move {
            let served = match tls {
                None => serve_connection(stream, router, header_timeout).await.map_err(ConnectionError::Http),
                Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(session)) => {
                        serve_connection(session, router, header_timeout).await.map_err(ConnectionError::Http)
                    }
                    Ok(Err(error)) => Err(ConnectionError::Tls(error)),
                    Err(_) => Err(ConnectionError::TlsTimeout),
                },
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

/// Why an HTTP connection ended early (logged at debug: clients come and go).
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Http(hyper::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("TLS handshake timed out")]
    TlsTimeout,
}

/// One HTTP/1.1 connection, plain or TLS.
async fn serve_connection<I>(io: I, router: Router, header_timeout: Duration) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router))
        .await
}

fn too_large(limit: usize) -> Response {
    let mut response = crate::http::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over the limit of {limit} bytes"),
    );
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// Reads the rest of a refused body in the background and throws it away.
fn discard(mut body: Body) {
    tokio::spawn(async move {
        let mut read = 0u64;
        let _ = tokio::time::timeout(DISCARD_TIME, async {
            while read < DISCARD_MAX {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
                    _ => break,
                }
            }
        })
        .await;
    });
}

/// Refuses an over-limit body before reading it (by its Content-Length) or as soon as
/// it passes the limit (without one); otherwise hands the handler the whole body.
async fn limit_body(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, mut body) = request.into_parts();
    if declared.is_some_and(|length| length > limit as u64) {
        // With `Expect: 100-continue` the client waits for our answer before sending
        // the body: reading it would send the 100 that invites it.
        let expects_continue = parts
            .headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if !expects_continue {
            discard(body);
        }
        return too_large(limit);
    }
    let mut collected: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return crate::http::error(StatusCode::BAD_REQUEST, "request body could not be read");
        };
        let Ok(data) = frame.into_data() else { continue };
        size += data.len();
        if size > limit {
            discard(body);
            return too_large(limit);
        }
        collected.push(data);
    }
    let whole = match collected.len() {
        0 => Bytes::new(),
        1 => collected.pop().expect("one"),
        _ => collected.concat().into(),
    };
    next.run(Request::from_parts(parts, Body::from(whole))).await
}
