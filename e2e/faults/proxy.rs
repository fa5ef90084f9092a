//! A fault-injecting registry proxy for the fault campaign (issue 18). It stands between
//! the controller and a real registry (plain HTTP), forwards GET and HEAD requests, counts
//! them by kind, and does to them what its schedule says, for real at the HTTP and TCP
//! level: latency, a status (5xx, 429 with or without `Retry-After`), a reset after part
//! of a body, a body shorter or longer than its `Content-Length`, a body that trickles,
//! a body with one byte changed, or no listener at all (connection refused).
//!
//! It speaks just enough HTTP/1.1 itself (no HTTP server library) so that it can break
//! the framing on purpose. Tests include it with `#[path = "../e2e/faults/proxy.rs"]`,
//! change its schedule while the controller runs ([`Proxy::set`], [`Proxy::clear`]) and
//! read what it saw ([`Proxy::times`]).
#![allow(dead_code)] // each test uses a part of it

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the proxy does to the requests a [`Match`] selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers this much later.
    Latency(Duration),
    /// This status with a registry error body, and `Retry-After: <seconds>` when given.
    Status(u16, Option<u64>),
    /// This status with `Retry-After` as an HTTP-date this many seconds after the answer
    /// (whole seconds: up to one less in effect).
    StatusUntil(u16, u64),
    /// The headers and half the body, then a TCP reset.
    Reset,
    /// The right `Content-Length`, half the body, then the connection closed (FIN).
    Truncated,
    /// A `Content-Length` of half the body, then the whole body; the connection stays open.
    Longer,
    /// The body one byte per this interval.
    Trickle(Duration),
    /// The body at its length with one byte changed.
    WrongBytes,
    /// No listener: the port is closed and open connections dropped, so a connect is
    /// refused. (Whatever the [`Match`], no request gets through.)
    Refuse,
}

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    All,
    /// Manifest HEADs and GETs.
    Manifests,
    ManifestGets,
    ManifestHeads,
    BlobGets,
}

/// The kinds of request counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ManifestHead,
    ManifestGet,
    BlobGet,
    Other,
}

impl Match {
    fn selects(self, kind: Kind) -> bool {
        match self {
            Match::All => true,
            Match::Manifests => matches!(kind, Kind::ManifestHead | Kind::ManifestGet),
            Match::ManifestGets => kind == Kind::ManifestGet,
            Match::ManifestHeads => kind == Kind::ManifestHead,
            Match::BlobGets => kind == Kind::BlobGet,
        }
    }
}

/// One request as the proxy saw it, and the fault it got (if any).
#[derive(Clone, Debug)]
pub struct Seen {
    pub kind: Kind,
    pub path: String,
    pub at: Instant,
    pub fault: Option<Fault>,
}

struct State {
    /// `http://host:port` of the real registry.
    upstream: String,
    http: reqwest::Client,
    schedule: Mutex<Option<(Fault, Match)>>,
    seen: Mutex<Vec<Seen>>,
}

/// A running proxy; stops listening when dropped.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    /// The accept loop and the token that stops it and its connections; `None` while the
    /// port is closed ([`Fault::Refuse`]).
    serving: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// A proxy on 127.0.0.1 (a free port) in front of the plain-HTTP registry `upstream`
    /// (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        ocisync::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("proxy's HTTP client");
        let state = Arc::new(State {
            upstream: format!("http://{upstream}"),
            http,
            schedule: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = Proxy {
            addr,
            state,
            serving: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    /// `127.0.0.1:<port>`, the registry host a source names to go through the proxy.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// From now on, `fault` for the requests `on` selects.
    pub async fn set(&self, fault: Fault, on: Match) {
        *lock(&self.state.schedule) = Some((fault, on));
        if fault == Fault::Refuse {
            self.close().await;
        } else {
            self.reopen();
        }
    }

    /// No fault any more: everything is forwarded (the port open again).
    pub async fn clear(&self) {
        *lock(&self.state.schedule) = None;
        self.reopen();
    }

    /// When each request of `kind` since `since` came.
    pub fn times(&self, kind: Kind, since: Instant) -> Vec<Instant> {
        lock(&self.state.seen)
            .iter()
            .filter(|s| s.kind == kind && s.at >= since)
            .map(|s| s.at)
            .collect()
    }

    /// How many requests of `kind` came since `since`.
    pub fn count(&self, kind: Kind, since: Instant) -> usize {
        self.times(kind, since).len()
    }

    /// Every request seen since `since`.
    pub fn seen(&self, since: Instant) -> Vec<Seen> {
        lock(&self.state.seen)
            .iter()
            .filter(|s| s.at >= since)
            .cloned()
            .collect()
    }

    fn serve(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, self.state.clone(), stop.clone()));
        *lock(&self.serving) = Some((stop, task));
    }

    /// Closes the port and drops every open connection; returns once the port is closed.
    async fn close(&self) {
        let serving = lock(&self.serving).take();
        if let Some((stop, task)) = serving {
            stop.cancel();
            task.await.ok();
        }
    }

    /// Listens on the same port again if it was closed.
    fn reopen(&self) {
        if lock(&self.serving).is_some() {
            return;
        }
        // std sets SO_REUSEADDR, so connections of the closed listener in TIME_WAIT do not
        // keep the port
        let listener = std::net::TcpListener::bind(self.addr).expect("bind the proxy again");
        listener.set_nonblocking(true).expect("non-blocking");
        self.serve(TcpListener::from_std(listener).expect("tokio listener"));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some((stop, _)) = lock(&self.serving).take() {
            stop.cancel();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // out of descriptors, say: try again shortly rather than spin
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(stream, &state) => {}
            }
        });
    }
}

/// A request: method, target and headers; a body, if any, is read and dropped.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

/// Serves requests on one connection until either side ends it.
async fn connection(mut stream: TcpStream, state: &State) {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        if !respond(&mut stream, state, &request).await {
            return;
        }
    }
}

const MAX_HEAD: usize = 64 * 1024;

/// Reads one request head (and skips its body); `None` at the end of the connection or on
/// a request it cannot read.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD || read_more(stream, buf).await == 0 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    let length = length.unwrap_or(0);
    while buf.len() < length {
        if read_more(stream, buf).await == 0 {
            return None;
        }
    }
    buf.drain(..length);
    Some(Request {
        method,
        target,
        headers,
    })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await.unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn kind_of(method: &str, target: &str) -> Kind {
    let path = target.split('?').next().unwrap_or(target);
    match method {
        "HEAD" if path.contains("/manifests/") => Kind::ManifestHead,
        "GET" if path.contains("/manifests/") => Kind::ManifestGet,
        "GET" if path.contains("/blobs/") && !path.contains("/blobs/uploads/") => Kind::BlobGet,
        _ => Kind::Other,
    }
}

impl State {
    /// The fault for a request of `kind`, recorded with the request.
    fn fault_for(&self, kind: Kind, target: &str) -> Option<Fault> {
        let fault = lock(&self.schedule)
            .filter(|(_, on)| on.selects(kind))
            .map(|(f, _)| f);
        lock(&self.seen).push(Seen {
            kind,
            path: target.to_string(),
            at: Instant::now(),
            fault,
        });
        fault
    }
}

/// Answers one request; whether the connection may serve another.
async fn respond(stream: &mut TcpStream, state: &State, request: &Request) -> bool {
    let kind = kind_of(&request.method, &request.target);
    let fault = state.fault_for(kind, &request.target);
    match fault {
        Some(Fault::Status(code, retry_after)) => {
            let retry_after = retry_after.map(|s| s.to_string());
            return write_status(stream, code, retry_after).await;
        }
        Some(Fault::StatusUntil(code, seconds)) => {
            let at = jiff::Timestamp::now() + Duration::from_secs(seconds);
            let printer = jiff::fmt::rfc2822::DateTimePrinter::new();
            let date = printer.timestamp_to_rfc9110_string(&at).ok();
            return write_status(stream, code, date).await;
        }
        Some(Fault::Latency(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let Some(answer) = forward(state, request).await else {
        return write_status(stream, 502, None).await;
    };
    let fault = if request.method == "HEAD" {
        None
    } else {
        fault
    };
    deliver(stream, answer, fault).await
}

/// The real registry's answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Its `Content-Length` header (what a HEAD announces).
    length: Option<String>,
}

const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
];

async fn forward(state: &State, request: &Request) -> Option<Answer> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).ok()?;
    let mut builder = state
        .http
        .request(method, format!("{}{}", state.upstream, request.target));
    for (k, v) in &request.headers {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            builder = builder.header(k, v);
        }
    }
    let response = builder.send().await.ok()?;
    let status = response.status().as_u16();
    let mut headers = Vec::new();
    let mut length = None;
    for (k, v) in response.headers() {
        let v = v.to_str().ok()?.to_string();
        if k.as_str() == "content-length" {
            length = Some(v);
        } else if !HOP_BY_HOP.contains(&k.as_str()) {
            headers.push((k.as_str().to_string(), v));
        }
    }
    let body = response.bytes().await.ok()?.to_vec();
    Some(Answer {
        status,
        headers,
        body,
        length,
    })
}

fn head(status: u16, headers: &[(String, String)], length: &str) -> Vec<u8> {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {length}\r\n\r\n"));
    out.into_bytes()
}

/// A registry error body for `code`, with `Retry-After` when given.
async fn write_status(stream: &mut TcpStream, code: u16, retry_after: Option<String>) -> bool {
    let body = br#"{"errors":[{"code":"UNAVAILABLE","message":"injected by the fault proxy"}]}"#;
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(s) = retry_after {
        headers.push(("retry-after".to_string(), s));
    }
    let mut out = head(code, &headers, &body.len().to_string());
    out.extend_from_slice(body);
    stream.write_all(&out).await.is_ok()
}

/// Sends the real answer, broken as `fault` says; whether the connection may go on.
async fn deliver(stream: &mut TcpStream, answer: Answer, fault: Option<Fault>) -> bool {
    let Answer {
        status,
        headers,
        mut body,
        length,
    } = answer;
    let len = body.len();
    let half = len / 2;
    let announced = length.unwrap_or_else(|| len.to_string());
    match fault {
        Some(Fault::Reset) => {
            let mut out = head(status, &headers, &len.to_string());
            out.extend_from_slice(&body[..half]);
            if stream.write_all(&out).await.is_ok() {
                // let the client read what came before the reset reaches it
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            stream.set_zero_linger().ok();
            false
        }
        Some(Fault::Truncated) => {
            let mut out = head(status, &headers, &len.to_string());
            out.extend_from_slice(&body[..half]);
            stream.write_all(&out).await.ok();
            stream.shutdown().await.ok();
            false
        }
        Some(Fault::Longer) => {
            let mut out = head(status, &headers, &half.to_string());
            out.extend_from_slice(&body);
            stream.write_all(&out).await.is_ok()
        }
        Some(Fault::Trickle(every)) => {
            if stream
                .write_all(&head(status, &headers, &announced))
                .await
                .is_err()
            {
                return false;
            }
            for byte in body {
                if stream.write_all(&[byte]).await.is_err() {
                    return false;
                }
                tokio::time::sleep(every).await;
            }
            true
        }
        Some(Fault::WrongBytes) => {
            if let Some(b) = body.get_mut(half) {
                *b ^= 0x01;
            }
            let mut out = head(status, &headers, &announced);
            out.extend_from_slice(&body);
            stream.write_all(&out).await.is_ok()
        }
        _ => {
            let mut out = head(status, &headers, &announced);
            out.extend_from_slice(&body);
            stream.write_all(&out).await.is_ok()
        }
    }
}
