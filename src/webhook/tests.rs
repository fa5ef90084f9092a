//! The receiver over a real socket: a recording patcher instead of the API server, a
//! source cache built from plain data.

use std::sync::Mutex;

use kube::runtime::{reflector, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::wake::PatchError;
use super::*;
use crate::api::ArtifactSource;
use crate::webhook::matching::SourceKey;

const TOKEN: &str = "tok-0123456789abcdef";
const KEY: &[u8] = b"hmac-key-for-tests";

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<SourceKey>>>);

impl RequestCheck for Recorder {
    async fn request_check(&self, key: &SourceKey, _value: &str) -> Result<(), PatchError> {
        if let Ok(mut seen) = self.0.lock() {
            seen.push(key.clone());
        }
        Ok(())
    }
}

struct Running {
    url: String,
    patched: Recorder,
    waker: Waker<Recorder>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn patched(&self) -> Vec<String> {
        self.waker.idle().await;
        let mut seen: Vec<String> = self
            .patched
            .0
            .lock()
            .map(|s| s.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        seen.sort();
        seen
    }
}

fn source(ns: &str, name: &str, url: &str, tag: &str) -> ArtifactSource {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ocisync.dev/v1alpha1", "kind": "ArtifactSource",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"url": url, "ref": {"tag": tag}, "interval": "1h"},
    }))
    .expect("source")
}

fn view(sources: Option<Vec<ArtifactSource>>) -> SourcesView {
    let view = SourcesView::default();
    let (reader, mut writer) = reflector::store();
    if let Some(sources) = sources {
        writer.apply_watcher_event(&watcher::Event::Init);
        for s in sources {
            writer.apply_watcher_event(&watcher::Event::InitApply(s));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    } else {
        // never listed: keep the writer alive so the cache stays not ready
        std::mem::forget(writer);
    }
    view.set(reader);
    view
}

async fn start(token: bool, hmac: bool, sources: Option<Vec<ArtifactSource>>) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    let key_file = dir.path().join("key");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    std::fs::write(&key_file, KEY).expect("key");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let patched = Recorder::default();
    let limits = Limits {
        window: Duration::from_millis(200),
        max_pending: 100,
    };
    let observer = Observer::new(Arc::new(Vec::new));
    let waker = Waker::new(
        patched.clone(),
        observer,
        metrics.clone(),
        stop.clone(),
        limits,
    );
    let receiver = Arc::new(Receiver {
        options: Options {
            listen: "127.0.0.1:0".parse().expect("addr"),
            token_file: token.then_some(token_file),
            hmac_key_file: hmac.then_some(key_file),
        },
        sources: view(sources),
        metrics: metrics.clone(),
        waker: waker.clone(),
    });
    tokio::spawn(serve_on(listener, receiver, stop.clone()));
    Running {
        url,
        patched,
        waker,
        metrics,
        stop,
        _dir: dir,
    }
}

fn sources() -> Option<Vec<ArtifactSource>> {
    Some(vec![
        source("a", "rules", "oci://reg:5000/org/rules", "1"),
        source("b", "rules", "oci://other:443/org/rules", "1"),
        source("a", "two", "oci://reg:5000/org/rules", "2"),
        source("a", "other", "oci://reg:5000/org/other", "1"),
    ])
}

fn http() -> reqwest::Client {
    crate::tls::install_crypto_provider();
    reqwest::Client::new()
}

async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> (u16, String) {
    let mut request = http().post(url).body(body.into());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

const GENERIC: &str = r#"{"repository": "org/rules", "tag": "1"}"#;

#[tokio::test]
async fn an_authenticated_push_wakes_its_sources_across_namespaces() {
    let r = start(true, false, sources()).await;
    let auth = bearer();
    let (status, body) = post(&r.url, &[("authorization", &auth)], GENERIC).await;
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer, serde_json::json!({"pushes": 1, "sources": 2}));
    assert_eq!(r.patched().await, vec!["a/rules", "b/rules"]);
    let text = r.metrics.encode();
    assert!(
        text.contains(r#"ocisync_webhook_requests_total{shape="generic",result="accepted"} 1"#),
        "{text}"
    );
    assert!(text.contains("ocisync_webhook_wakes_total 2"), "{text}");
    r.stop.cancel();
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_401_and_wake_nothing() {
    let r = start(true, false, sources()).await;
    for headers in [
        vec![],
        vec![("authorization", "Bearer tok-0123456789abcdeX")],
        vec![("authorization", "Basic dG9rOnRvaw==")],
    ] {
        let (status, _) = post(&r.url, &headers, GENERIC).await;
        assert_eq!(status, 401, "{headers:?}");
    }
    // a signature is no use when the receiver has no HMAC key
    let signed = sign(GENERIC.as_bytes());
    let (status, _) = post(&r.url, &[("x-hub-signature-256", &signed)], GENERIC).await;
    assert_eq!(status, 401);
    assert!(r.patched().await.is_empty());
    let text = r.metrics.encode();
    assert!(
        text.contains(r#"ocisync_webhook_requests_total{shape="unknown",result="unauthorized"} 4"#),
        "{text}"
    );
    r.stop.cancel();
}

fn sign(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY);
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body)))
}

#[tokio::test]
async fn hmac_signatures_authenticate_the_exact_body() {
    let r = start(false, true, sources()).await;
    let signed = sign(GENERIC.as_bytes());
    let (status, _) = post(&r.url, &[("x-ocisync-signature", &signed)], GENERIC).await;
    assert_eq!(status, 202);
    let other = r#"{"repository": "org/other", "tag": "1"}"#;
    let (status, _) = post(&r.url, &[("x-ocisync-signature", &signed)], other).await;
    assert_eq!(status, 401, "a signature of another body");
    let auth = bearer();
    let (status, _) = post(&r.url, &[("authorization", &auth)], other).await;
    assert_eq!(status, 401, "no token configured");
    assert_eq!(r.patched().await, vec!["a/rules", "b/rules"]);
    r.stop.cancel();
}

#[tokio::test]
async fn either_credential_passes_when_both_are_configured() {
    let r = start(true, true, sources()).await;
    let auth = bearer();
    let (status, _) = post(&r.url, &[("authorization", &auth)], GENERIC).await;
    assert_eq!(status, 202);
    let signed = sign(GENERIC.as_bytes());
    let (status, _) = post(&r.url, &[("x-hub-signature-256", &signed)], GENERIC).await;
    assert_eq!(status, 202);
    let (status, _) = post(&r.url, &[], GENERIC).await;
    assert_eq!(status, 401);
    r.stop.cancel();
}

#[tokio::test]
async fn a_missing_secret_file_refuses_everything() {
    let r = start(true, false, sources()).await;
    drop(std::fs::remove_file(r._dir.path().join("token")));
    let auth = bearer();
    let (status, _) = post(&r.url, &[("authorization", &auth)], GENERIC).await;
    assert_eq!(status, 500);
    assert!(r.patched().await.is_empty());
    r.stop.cancel();
}

#[tokio::test]
async fn methods_sizes_and_shapes() {
    let r = start(true, false, sources()).await;
    let response = http().get(&r.url).send().await.expect("get");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response.headers().get("allow").map(|v| v.as_bytes()),
        Some(&b"POST"[..])
    );
    let auth = bearer();
    let big = vec![b' '; MAX_BODY + 1];
    let (status, _) = post(&r.url, &[("authorization", &auth)], big).await;
    assert_eq!(status, 413);
    let (status, body) = post(&r.url, &[("authorization", &auth)], r#"{"hello": 1}"#).await;
    assert_eq!((status, body.is_empty()), (400, false));
    // a Harbor pull: recognised, nothing to wake
    let pull = r#"{"type": "PULL_ARTIFACT", "event_data": {"repository": {"repo_full_name": "org/rules"}}}"#;
    let (status, _) = post(&r.url, &[("authorization", &auth)], pull).await;
    assert_eq!(status, 202);
    assert!(r.patched().await.is_empty());
    let text = r.metrics.encode();
    for line in [
        r#"{shape="unknown",result="method_not_allowed"} 1"#,
        r#"{shape="unknown",result="too_large"} 1"#,
        r#"{shape="unknown",result="bad_request"} 1"#,
        r#"{shape="harbor",result="ignored"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    r.stop.cancel();
}

#[tokio::test]
async fn an_oversized_body_without_content_length_is_cut_at_the_bound() {
    let r = start(true, false, sources()).await;
    let addr = r
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/hook");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // 1 MiB in 64 KiB chunks, then one byte more and the end of the body
    let chunk = [
        b"10000\r\n".to_vec(),
        vec![b'x'; 64 * 1024],
        b"\r\n".to_vec(),
    ]
    .concat();
    let mut body = chunk.repeat(16);
    body.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
    let mut answer = Vec::new();
    // the server may answer and close before reading all of it
    let _ = stream.write_all(&body).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    r.stop.cancel();
}

#[tokio::test]
async fn a_replica_that_has_not_listed_sources_asks_for_a_retry() {
    let r = start(true, false, None).await;
    let auth = bearer();
    let (status, _) = post(&r.url, &[("authorization", &auth)], GENERIC).await;
    assert_eq!(status, 503);
    r.stop.cancel();
}

#[tokio::test]
async fn a_burst_of_identical_pushes_patches_each_source_once_or_twice() {
    let r = start(true, false, sources()).await;
    let auth = bearer();
    let envelope = serde_json::json!({"events": [{"action": "push", "target": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "org/rules",
        "url": "http://reg:5000/v2/org/rules/manifests/sha256:00", "tag": "1"}}]})
    .to_string();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", payload::DISTRIBUTION_EVENTS),
    ];
    let sends = (0..50).map(|_| post(&r.url, &headers, envelope.clone()));
    for (status, _) in futures_util::future::join_all(sends).await {
        assert_eq!(status, 202);
    }
    // one patch per source at once; one more only for wakes after it was sent
    let patched = r.patched().await;
    for source in ["a/rules", "b/rules"] {
        let n = patched.iter().filter(|p| *p == source).count();
        assert!((1..=2).contains(&n), "{source}: {n} patches of {patched:?}");
    }
    r.stop.cancel();
}
