use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::IndexFile;

struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
    manifest: Digest,
    big: Vec<u8>,
    _root: tempfile::TempDir,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn digest_of(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// A server over a store holding one revision: `rules.yaml` and a 3 MiB `big.bin`.
async fn start() -> TestServer {
    start_with(ServerLimits::default(), 3 * 1024 * 1024).await
}

/// A server within `limits` whose `big.bin` has `big_size` bytes.
async fn start_with(limits: ServerLimits, big_size: u32) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let staging = store.staging_dir().unwrap();
    let big: Vec<u8> = (0..big_size).map(|i| (i % 251) as u8).collect();
    let mut files = Vec::new();
    for (path, bytes) in [("rules.yaml", &b"- rule: x\n"[..]), ("big.bin", &big[..])] {
        std::fs::write(staging.path().join(path), bytes).unwrap();
        files.push(IndexFile {
            path: path.into(),
            digest: digest_of(bytes),
            size: bytes.len() as u64,
            platform: None,
        });
    }
    let manifest = Digest::from_hex(&"c".repeat(64)).unwrap();
    store.commit(&manifest, staging.path(), &files).unwrap();

    let state = Arc::new(ServerState {
        misses: Default::default(),
        store: Some(Arc::new(store)),
        metrics: Arc::new(Metrics::new()),
        ready: Arc::new(AtomicBool::new(false)),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_with(
        listener,
        state.clone(),
        limits,
        shutdown.clone(),
    ));
    TestServer {
        addr,
        state,
        shutdown,
        task,
        manifest,
        big,
        _root: root,
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
async fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Reply {
        status: status.parse().unwrap(),
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get(server: &TestServer, path: &str) -> Reply {
    request(server.addr, "GET", path, &[]).await
}

#[tokio::test]
async fn blobs_are_streamed_with_headers() {
    let server = start().await;
    let digest = digest_of(&server.big);
    let reply = get(&server, &blob_url_path(digest.as_str())).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, server.big);
    assert_eq!(
        reply.header("content-length"),
        Some(server.big.len().to_string().as_str())
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(reply.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(reply.header("x-content-digest"), Some(digest.as_str()));
    assert_eq!(
        reply.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let small = get(&server, &blob_url_path(digest_of(b"- rule: x\n").as_str())).await;
    assert_eq!(small.body, b"- rule: x\n");
}

#[tokio::test]
async fn matching_etags_give_304() {
    let server = start().await;
    let digest = digest_of(&server.big);
    let path = blob_url_path(digest.as_str());
    let etag = format!("\"{digest}\"");
    for value in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"sha256:{}\", {etag}", "0".repeat(64)),
        "*".to_string(),
    ] {
        let reply = request(server.addr, "GET", &path, &[("If-None-Match", &value)]).await;
        assert_eq!(reply.status, 304, "{value}");
        assert!(reply.body.is_empty());
        assert_eq!(reply.header("etag"), Some(etag.as_str()));
    }
    let other = format!("\"sha256:{}\"", "0".repeat(64));
    let reply = request(server.addr, "GET", &path, &[("If-None-Match", &other)]).await;
    assert_eq!(reply.status, 200);

    let path = revision_path(server.manifest.as_str());
    let etag = format!("\"{}\"", server.manifest);
    let reply = request(server.addr, "GET", &path, &[("If-None-Match", &etag)]).await;
    assert_eq!(reply.status, 304);
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn head_has_headers_and_no_body() {
    let server = start().await;
    let path = blob_url_path(digest_of(&server.big).as_str());
    let reply = request(server.addr, "HEAD", &path, &[]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty());
    assert_eq!(
        reply.header("content-length"),
        Some(server.big.len().to_string().as_str())
    );
    let reply = request(server.addr, "HEAD", "/healthz", &[]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("content-length"), Some("2"));
}

#[tokio::test]
async fn revision_index_is_json() {
    let server = start().await;
    assert_eq!(
        revision_path(server.manifest.as_str()),
        format!("/revisions/sha256/{}", "c".repeat(64))
    );
    let reply = get(&server, &revision_path(server.manifest.as_str())).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.header("etag"),
        Some(format!("\"{}\"", server.manifest).as_str())
    );
    let index: crate::store::RevisionIndex = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        Some(index),
        server
            .state
            .store
            .as_ref()
            .and_then(|s| s.index(&server.manifest))
    );
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["files"][0]["path"], "big.bin");
    assert_eq!(json["files"][1]["size"], 10);
}

#[tokio::test]
async fn unknown_and_malformed_paths_are_404() {
    let server = start().await;
    let upper = "C".repeat(64);
    let absent = "d".repeat(64);
    for path in [
        "/".to_string(),
        "/nope".to_string(),
        "/blobs/sha256/abc".to_string(),
        format!("/blobs/sha256/{upper}"),
        format!("/blobs/sha512/{absent}"),
        format!("/blobs/sha256/{absent}"),
        format!("/blobs/sha256/{absent}/"),
        "/blobs/sha256/../../revisions/x".to_string(),
        "/blobs/sha256/..%2f..%2fetc%2fpasswd".to_string(),
        "/blobs/../tmp".to_string(),
        format!("/revisions/sha256/{absent}"),
        format!("/revisions/sha256/{}.json", "c".repeat(64)),
        "/revisions/sha256/../../../etc/passwd".to_string(),
    ] {
        let reply = get(&server, &path).await;
        assert_eq!(reply.status, 404, "{path}");
    }
}

#[tokio::test]
async fn other_methods_are_405() {
    let server = start().await;
    let path = blob_url_path(digest_of(&server.big).as_str());
    for (method, path) in [
        ("POST", path.as_str()),
        ("PUT", path.as_str()),
        ("DELETE", "/metrics"),
    ] {
        let reply = request(server.addr, method, path, &[("Content-Length", "0")]).await;
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    }
}

#[tokio::test]
async fn readyz_follows_the_flag() {
    let server = start().await;
    let reply = get(&server, "/healthz").await;
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"ok"[..]));
    let reply = get(&server, "/readyz").await;
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (503, &b"not ready"[..])
    );
    server.state.ready.store(true, Ordering::Release);
    let reply = get(&server, "/readyz").await;
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"ok"[..]));
}

#[tokio::test]
async fn metrics_count_responses() {
    let server = start().await;
    get(&server, &blob_url_path(digest_of(&server.big).as_str())).await;
    get(&server, "/nope").await;
    get(&server, "/readyz").await;
    request(server.addr, "POST", "/healthz", &[("Content-Length", "0")]).await;
    let reply = get(&server, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = String::from_utf8(reply.body).unwrap();
    for line in [
        r#"ocisync_artifact_server_requests_total{route="blob",code="200"} 1"#,
        r#"ocisync_artifact_server_requests_total{route="other",code="404"} 1"#,
        r#"ocisync_artifact_server_requests_total{route="readyz",code="503"} 1"#,
        r#"ocisync_artifact_server_requests_total{route="healthz",code="405"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
}

#[tokio::test]
async fn keep_alive_connections_serve_several_requests() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let req = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
    stream.write_all(req).await.unwrap();
    stream.write_all(req).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut raw = Vec::new();
    while raw.windows(2).filter(|w| w == b"ok").count() < 2 {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed early");
        raw.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn cancelling_the_token_stops_the_server() {
    let server = start().await;
    // An idle keep-alive connection must not hold up the shutdown.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    assert!(idle.read(&mut buf).await.unwrap() > 0);

    server.shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serve returned in time")
        .unwrap();
    assert!(result.is_ok());
    // The idle connection was closed and no new connection is accepted.
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(TcpStream::connect(server.addr).await.is_err());
}

/// Limits for the tests of slow clients: short timeouts, few connections.
fn tight(max_connections: usize) -> ServerLimits {
    ServerLimits {
        max_connections,
        write_timeout: Duration::from_millis(500),
        header_read_timeout: Duration::from_millis(500),
    }
}

/// Sends `GET path` on a fresh connection with a 4 KiB receive buffer and reads nothing.
async fn stalled_get(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Polls `GET /healthz` on fresh connections until it answers 200; how long that took.
async fn until_served(addr: SocketAddr, deadline: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let reply = tokio::time::timeout(deadline, request(addr, "GET", "/healthz", &[]))
            .await
            .expect("an answer in time");
        if reply.status == 200 {
            return started.elapsed();
        }
        assert_eq!(reply.status, 503);
        assert!(
            started.elapsed() < deadline,
            "not served within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads what the server sent until it closes (EOF or reset), within `deadline`.
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    tokio::time::timeout(deadline, read_all)
        .await
        .expect("the server closed the connection in time");
    total
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_at_once() {
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(3),
        ..tight(2)
    };
    let server = start_with(limits, 1024).await;
    // Two clients that never finish their headers hold both slots for 3 s.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let reply = request(server.addr, "GET", "/healthz", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.body, b"too many connections\n");
    // Refused at once, not after waiting for a slot.
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The header read timeout frees the slots; a fresh client is then served.
    let waited = until_served(server.addr, Duration::from_secs(20)).await;
    assert!(
        waited >= Duration::from_secs(2),
        "served while both slots were held"
    );
    for mut stream in slow {
        let got = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(
            got < 200,
            "the slow client got an error page at most ({got} bytes)"
        );
    }
    let metrics = get(&server, "/metrics").await;
    let text = String::from_utf8(metrics.body).unwrap();
    let line = r#"ocisync_artifact_server_requests_total{route="overloaded",code="503"} "#;
    assert!(text.lines().any(|l| l.starts_with(line)), "{text}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let size = 32 * 1024 * 1024;
    let server = start_with(tight(1), size).await;
    let path = blob_url_path(digest_of(&server.big).as_str());
    let started = std::time::Instant::now();
    let mut stalled = stalled_get(server.addr, &path).await;
    // The stalled client holds the only slot until the write timeout drops it.
    let waited = until_served(server.addr, Duration::from_secs(20)).await;
    assert!(
        waited >= Duration::from_millis(400),
        "the slot was held while the server could write ({waited:?})"
    );
    let got = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert!(
        got < size as usize,
        "the whole body fitted in the socket buffers"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // A client that reads gets the whole blob.
    let reply = get(&server, &path).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), size as usize);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let server = start_with(tight(4), 1024).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(got > 0, "the request was answered before the close");
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        read_until_closed(&mut silent, Duration::from_secs(5)).await,
        0
    );
}

#[test]
fn url_paths() {
    let hex = "a".repeat(64);
    assert_eq!(
        blob_url_path(&format!("sha256:{hex}")),
        format!("/blobs/sha256/{hex}")
    );
    assert_eq!(
        revision_path(&format!("sha256:{hex}")),
        format!("/revisions/sha256/{hex}")
    );
    assert_eq!(Route::parse("/blobs/sha256/xyz"), Route::Blob(None));
    assert_eq!(
        Route::parse(&format!("/revisions/sha256/{hex}")),
        Route::Revision(Some(Digest::from_hex(&hex).unwrap()))
    );
}
