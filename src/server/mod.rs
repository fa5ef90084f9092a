//! The artifact server: a read-only HTTP/1.1 server over the content store, used by the
//! agents on the nodes, plus `/metrics`, `/healthz` and `/readyz`.
//!
//! Routes (GET and HEAD only; other methods get 405):
//!
//! - `/blobs/sha256/<hex>`: a stored file, streamed from disk, immutable;
//! - `/revisions/sha256/<hex>`: the [`RevisionIndex`](crate::store::RevisionIndex) stored
//!   under the revision key `sha256:<hex>` as JSON, immutable (the key is the manifest
//!   digest, or for a platform or layer selection a hash of the digest and the selection:
//!   see [`revision_key`](crate::store::revision_key));
//! - `/metrics`: OpenMetrics text;
//! - `/healthz`: always `ok`; `/readyz`: `ok` once [`ServerState::ready`] is set.
//!
//! A path segment that is not 64 lowercase hex characters is a 404 without any filesystem
//! access.
//!
//! [`ServerLimits`] bound what clients can hold: at most `max_connections` connections are
//! served at once, and one more is answered `503` with `Retry-After` and closed at once
//! rather than left waiting in the accept queue (the agents retry; a connection parked in
//! the queue would only look alive until the client's own timeout). A request's headers
//! must arrive within `header_read_timeout`, which also closes idle keep-alive
//! connections; a write that makes no progress for `write_timeout` (a client that stopped
//! reading a body) drops the connection.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::store::Store;

pub mod misses;
mod stall;
#[cfg(test)]
mod tests;

use stall::WriteTimeout;

/// How long in-flight connections may take to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long refusing a connection over the limit may take (writing the 503, then reading
/// what the client sent so that closing does not reset the connection before it reads).
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most bytes read from a refused connection before it is closed.
const REFUSE_DRAIN: usize = 64 * 1024;
/// The answer to a connection over the limit.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n\r\n\
too many connections\n";
/// Read size when streaming a blob from disk.
const STREAM_CHUNK: usize = 64 * 1024;
/// The most a connection buffers (request headers in, response out): what a client that
/// stops reading holds of the server's memory until the write timeout.
const CONNECTION_BUFFER: usize = 2 * STREAM_CHUNK;

const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const X_CONTENT_DIGEST: &str = "x-content-digest";

/// What clients may hold of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// How long a write may make no progress before the connection is dropped.
    pub write_timeout: Duration,
    /// How long a client may take to send a request's headers, and how long a keep-alive
    /// connection may stay idle.
    pub header_read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 256,
            write_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// What the server needs; shared by every connection.
#[derive(Debug)]
pub struct ServerState {
    /// The content store; `None` on the agent, which serves only metrics and health.
    pub store: Option<Arc<Store>>,
    pub metrics: Arc<Metrics>,
    /// `/readyz` answers 200 once this is true.
    pub ready: Arc<AtomicBool>,
    /// Told of every revision or blob asked for and not found, so a follower replica
    /// copies in what status names without waiting for its next pass.
    pub misses: Arc<misses::Misses>,
}

/// The URL path of the index of the revision stored under `key` (`sha256:<hex>`, see
/// [`revision_key`](crate::store::revision_key)): `/revisions/sha256/<hex>`.
pub fn revision_path(key: &str) -> String {
    let hex = key.strip_prefix("sha256:").unwrap_or(key);
    format!("/revisions/sha256/{hex}")
}

/// The URL path of the file with content digest `file_digest` (`sha256:<hex>`):
/// `/blobs/sha256/<hex>`.
pub fn blob_url_path(file_digest: &str) -> String {
    let hex = file_digest.strip_prefix("sha256:").unwrap_or(file_digest);
    format!("/blobs/sha256/{hex}")
}

/// [`serve_with`] the default [`ServerLimits`].
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, state, ServerLimits::default(), shutdown).await
}

/// Serves HTTP/1.1 on `listener` within `limits` until `shutdown` is cancelled, then stops
/// accepting, lets in-flight connections finish (closing idle keep-alive connections) and
/// returns. Connections still open after 10 seconds are dropped.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<ServerState>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let connection = Connection {
                        state: state.clone(),
                        limits,
                        shutdown: shutdown.clone(),
                        hard_stop: hard_stop.clone(),
                        _slot: slot,
                    };
                    tracker.spawn(connection.serve(stream));
                }
                Err(_) => {
                    state.metrics.served("overloaded", 503);
                    tracker.spawn(refuse(stream));
                }
            },
            Err(e) => {
                // Out of file descriptors, a connection reset before accept: keep serving.
                tracing::warn!(error = %e, "artifact server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.len(),
            "artifact server: dropping connections still open after the shutdown grace period"
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
    Ok(())
}

/// One accepted connection and what it holds while served.
struct Connection {
    state: Arc<ServerState>,
    limits: ServerLimits,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    /// Its place among the `max_connections`, released when the connection ends.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves the connection; on shutdown, finishes the request in flight and closes.
    async fn serve(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let state = self.state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, request).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(CONNECTION_BUFFER);
        let io = TokioIo::new(WriteTimeout::new(stream, self.limits.write_timeout));
        let connection = builder.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = self.shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => result,
                    _ = self.hard_stop.cancelled() => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "artifact server: connection error");
        }
    }
}

/// Answers a connection over the limit with `503` and closes it, within
/// [`REFUSE_TIMEOUT`]: reading what the client sent (up to [`REFUSE_DRAIN`] bytes) before
/// closing lets it read the answer instead of a reset.
async fn refuse(mut stream: TcpStream) {
    let answer = async {
        stream.write_all(OVERLOADED).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSE_DRAIN {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, answer).await;
}

type Body = BoxBody<Bytes, io::Error>;

/// Which route a path belongs to; also the `route` metric label.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// `/blobs/...`, with the digest when the rest is a valid `sha256/<hex>`.
    Blob(Option<Digest>),
    /// `/revisions/...`, with the key when valid.
    Revision(Option<Digest>),
    Metrics,
    Healthz,
    Readyz,
    Other,
}

impl Route {
    fn parse(path: &str) -> Route {
        let digest = |rest: &str| {
            rest.strip_prefix("sha256/")
                .and_then(|hex| Digest::from_hex(hex).ok())
        };
        if let Some(rest) = path.strip_prefix("/blobs/") {
            Route::Blob(digest(rest))
        } else if let Some(rest) = path.strip_prefix("/revisions/") {
            Route::Revision(digest(rest))
        } else {
            match path {
                "/metrics" => Route::Metrics,
                "/healthz" => Route::Healthz,
                "/readyz" => Route::Readyz,
                _ => Route::Other,
            }
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Route::Blob(_) => "blob",
            Route::Revision(_) => "revision",
            Route::Metrics => "metrics",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Other => "other",
        }
    }
}

/// Answers one request and counts the response.
async fn handle(state: &Arc<ServerState>, request: Request<Incoming>) -> Response<Body> {
    let route = Route::parse(request.uri().path());
    let method = request.method();
    let response = if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
    } else {
        let headers = request.headers();
        match &route {
            Route::Blob(Some(digest)) => blob(state, digest, headers).await,
            Route::Revision(Some(key)) => revision(state, key, headers).await,
            Route::Blob(None) | Route::Revision(None) | Route::Other => not_found(),
            Route::Metrics => {
                let body = state.metrics.encode();
                respond(StatusCode::OK, OPENMETRICS, Bytes::from(body))
            }
            Route::Healthz => text(StatusCode::OK, "ok"),
            Route::Readyz if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ok"),
            Route::Readyz => text(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        }
    };
    state
        .metrics
        .served(route.label(), response.status().as_u16());
    if request.method() == Method::HEAD {
        // Same headers (Content-Length included), no body; drops an open blob file.
        let (parts, _body) = response.into_parts();
        return Response::from_parts(parts, empty());
    }
    response
}

/// `GET /blobs/sha256/<hex>`: the file, streamed.
async fn blob(state: &ServerState, digest: &Digest, request: &HeaderMap) -> Response<Body> {
    let Some(path) = state.store.as_ref().map(|s| s.blob_location(digest)) else {
        return not_found();
    };
    let mut opened = tokio::fs::File::open(&path).await;
    if matches!(&opened, Err(e) if e.kind() == io::ErrorKind::NotFound) {
        // agents fetch files by digest: on a follower a moment behind, wait for the copy
        let exists = || async { tokio::fs::try_exists(&path).await.unwrap_or(false) };
        if !state.misses.missed(exists).await {
            return not_found();
        }
        opened = tokio::fs::File::open(&path).await;
    }
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return not_found(),
        Err(e) => return internal_error("open blob", &e),
    };
    let meta = match file.metadata().await {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return not_found(),
        Err(e) => return internal_error("stat blob", &e),
    };
    let etag = format!("\"{digest}\"");
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, CACHE_IMMUTABLE)
        .header(X_CONTENT_DIGEST, digest.as_str());
    if etag_matches(request, &etag) {
        builder = builder.status(StatusCode::NOT_MODIFIED);
        return builder.body(empty()).unwrap_or_else(|_| fallback_error());
    }
    let stream = ReaderStream::with_capacity(file, STREAM_CHUNK).map_ok(Frame::data);
    builder
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, meta.len())
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| fallback_error())
}

/// `GET /revisions/sha256/<hex>`: the revision index as JSON.
async fn revision(state: &ServerState, key: &Digest, request: &HeaderMap) -> Response<Body> {
    let etag = format!("\"{key}\"");
    let Some(store) = state.store.clone() else {
        return not_found();
    };
    let index = match read_index(&store, key).await {
        Ok(Some(index)) => index,
        Ok(None) => {
            let arrived = state
                .misses
                .missed(|| async { matches!(read_index(&store, key).await, Ok(Some(_))) })
                .await;
            match read_index(&store, key).await {
                Ok(Some(index)) if arrived => index,
                _ => return not_found(),
            }
        }
        Err(e) => return internal_error("read revision index", &e),
    };
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, CACHE_IMMUTABLE);
    if etag_matches(request, &etag) {
        builder = builder.status(StatusCode::NOT_MODIFIED);
        return builder.body(empty()).unwrap_or_else(|_| fallback_error());
    }
    let json = match serde_json::to_vec(&index) {
        Ok(json) => json,
        Err(e) => return internal_error("encode revision index", &e),
    };
    builder
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, json.len())
        .body(full(Bytes::from(json)))
        .unwrap_or_else(|_| fallback_error())
}

async fn read_index(
    store: &Arc<Store>,
    key: &Digest,
) -> Result<Option<crate::store::RevisionIndex>, tokio::task::JoinError> {
    let (store, key) = (store.clone(), key.clone());
    tokio::task::spawn_blocking(move || store.index(&key)).await
}

/// Whether `If-None-Match` lists `etag` (weak or strong) or is `*`.
fn etag_matches(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| {
            candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
        })
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A response with a fixed body, its type and length.
fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let length = body.len();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    respond(status, TEXT, Bytes::from_static(body.as_bytes()))
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn internal_error(what: &str, error: &dyn std::fmt::Display) -> Response<Body> {
    tracing::warn!(error = %error, "artifact server: {what} failed");
    fallback_error()
}

fn fallback_error() -> Response<Body> {
    text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
}
