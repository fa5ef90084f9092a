//! End-to-end: hostile registries. A small registry runs inside each test (hyper on
//! 127.0.0.1) and lies, trickles or points elsewhere; the real controller (and the
//! `ocisync pull` binary) must keep its promises: a digest pin is what is served, stored
//! content goes only to sources that proved they can fetch it themselves, credentials stay
//! with the registry's host, and a slow registry cannot hold the workers.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::Which;
use common::controller::{Harness, harness};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ocisync::api::ArtifactSource;
use ocisync::oci::registry::sha256_digest;

type Body = BoxBody<Bytes, Infallible>;

/// One request as the fake registry saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
}

/// A registry in the test: serves what it was given, and lies as told.
#[derive(Default)]
struct Fake {
    addr: String,
    /// Manifests by tag and by digest.
    manifests: Mutex<HashMap<String, Bytes>>,
    blobs: Mutex<HashMap<String, Bytes>>,
    tags: Mutex<Vec<String>>,
    /// A request for the key is answered with the manifest of the value (and its digest).
    swap: Mutex<HashMap<String, String>>,
    /// References answered on HEAD only: a GET of them is `404`.
    head_only: Mutex<HashSet<String>>,
    /// A `WWW-Authenticate` challenge for any `/v2/` request without `Bearer t`.
    challenge: Mutex<Option<String>>,
    /// The `rel="next"` target of the first tag page.
    next_link: Mutex<Option<String>>,
    /// Blob GETs are redirected to `<this>/cdn/<digest>`.
    blob_redirect: Mutex<Option<String>>,
    /// Blob uploads continue at `<this>/upload/1`.
    upload_location: Mutex<Option<String>>,
    /// Manifest bodies come one byte every half second, forever.
    trickle: AtomicBool,
    /// OCI 1.1 referrers API answers (an index) by subject digest; without an entry the
    /// API answers 404, as a registry without it does.
    referrers: Mutex<HashMap<String, Bytes>>,
    /// The referrers API answers with this status instead (a registry without the API that
    /// says so otherwise than with 404).
    referrers_status: Mutex<Option<StatusCode>>,
    seen: Mutex<Vec<Seen>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fake {
    async fn start() -> Arc<Fake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let fake = Arc::new(Fake {
            addr,
            ..Default::default()
        });
        let server = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let fake = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let fake = fake.clone();
                        async move { Ok::<_, Infallible>(fake.handle(req)) }
                    });
                    // a client that hangs up (a timeout under test) ends its connection: the
                    // test checks the client's side
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                        .ok();
                });
            }
        });
        fake
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds an artifact under `tag`; its manifest digest.
    fn add(&self, tag: &str, artifact: &Artifact) -> String {
        let digest = sha256_digest(&artifact.manifest);
        let mut manifests = lock(&self.manifests);
        manifests.insert(tag.to_string(), artifact.manifest.clone());
        manifests.insert(digest.clone(), artifact.manifest.clone());
        lock(&self.blobs).extend(artifact.blobs.iter().cloned());
        lock(&self.tags).push(tag.to_string());
        digest
    }

    fn seen(&self, path_contains: &str) -> Vec<Seen> {
        lock(&self.seen)
            .iter()
            .filter(|s| s.path.contains(path_contains))
            .cloned()
            .collect()
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        lock(&self.seen).push(Seen {
            method: method.to_string(),
            path: path.clone(),
            authorization: authorization.clone(),
        });
        if path == "/token" {
            return reply(
                StatusCode::OK,
                Full::new(Bytes::from(r#"{"token":"t"}"#)).boxed(),
            );
        }
        if let Some(digest) = path.strip_prefix("/cdn/") {
            return self.blob(&method, digest, false);
        }
        if path.starts_with("/upload/") && method == Method::PUT {
            return reply(StatusCode::CREATED, empty());
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return not_found();
        };
        if let Some(challenge) = lock(&self.challenge).clone()
            && authorization.as_deref() != Some("Bearer t")
        {
            let mut r = reply(StatusCode::UNAUTHORIZED, empty());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).expect("challenge"),
            );
            return r;
        }
        if rest.ends_with("/blobs/uploads/") && method == Method::POST {
            let target = lock(&self.upload_location)
                .clone()
                .unwrap_or_else(|| self.url());
            let mut r = reply(StatusCode::ACCEPTED, empty());
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&format!("{target}/upload/1")).expect("location"),
            );
            return r;
        }
        if method == Method::PUT && rest.contains("/manifests/") {
            return reply(StatusCode::CREATED, empty());
        }
        if let Some((_, digest)) = rest.rsplit_once("/referrers/") {
            if let Some(status) = *lock(&self.referrers_status) {
                return reply(status, empty());
            }
            let Some(index) = lock(&self.referrers).get(digest).cloned() else {
                return not_found();
            };
            let mut r = reply(StatusCode::OK, Full::new(index).boxed());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
            );
            r
        } else if let Some((_, reference)) = rest.rsplit_once("/manifests/") {
            self.manifest(&method, reference)
        } else if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
            self.blob(&method, digest, true)
        } else if rest.ends_with("/tags/list") {
            self.tag_list()
        } else if rest.is_empty() {
            reply(StatusCode::OK, empty())
        } else {
            not_found()
        }
    }

    fn manifest(&self, method: &Method, reference: &str) -> Response<Body> {
        if method == Method::GET && lock(&self.head_only).contains(reference) {
            return not_found();
        }
        let served = lock(&self.swap)
            .get(reference)
            .cloned()
            .unwrap_or_else(|| reference.to_string());
        let Some(bytes) = lock(&self.manifests).get(&served).cloned() else {
            return not_found();
        };
        let digest = sha256_digest(&bytes);
        let len = bytes.len();
        let body = if method == Method::HEAD {
            empty()
        } else if self.trickle.load(Ordering::Relaxed) {
            trickle()
        } else {
            Full::new(bytes).boxed()
        };
        let mut r = reply(StatusCode::OK, body);
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        );
        h.insert(
            "docker-content-digest",
            HeaderValue::from_str(&digest).expect("digest"),
        );
        if method == Method::GET && !self.trickle.load(Ordering::Relaxed) {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        r
    }

    fn blob(&self, method: &Method, digest: &str, may_redirect: bool) -> Response<Body> {
        if may_redirect && let Some(cdn) = lock(&self.blob_redirect).clone() {
            let mut r = reply(StatusCode::TEMPORARY_REDIRECT, empty());
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&format!("{cdn}/cdn/{digest}")).expect("location"),
            );
            return r;
        }
        let Some(bytes) = lock(&self.blobs).get(digest).cloned() else {
            return not_found();
        };
        let body = if method == Method::HEAD {
            empty()
        } else {
            Full::new(bytes).boxed()
        };
        reply(StatusCode::OK, body)
    }

    fn tag_list(&self) -> Response<Body> {
        let tags = lock(&self.tags).clone();
        let body =
            serde_json::to_vec(&serde_json::json!({"name": "x", "tags": tags})).expect("json");
        let mut r = reply(StatusCode::OK, Full::new(Bytes::from(body)).boxed());
        if let Some(next) = lock(&self.next_link).clone() {
            r.headers_mut().insert(
                header::LINK,
                HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")).expect("link"),
            );
        }
        r
    }
}

fn reply(status: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

fn empty() -> Body {
    Empty::new().boxed()
}

fn not_found() -> Response<Body> {
    reply(
        StatusCode::NOT_FOUND,
        Full::new(Bytes::from(r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#)).boxed(),
    )
}

/// A body of one byte every half second that never ends.
fn trickle() -> Body {
    let stream = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b" "))),
            (),
        ))
    });
    StreamBody::new(stream).boxed()
}

/// An artifact of one titled file: its manifest and blobs.
struct Artifact {
    manifest: Bytes,
    blobs: Vec<(String, Bytes)>,
}

fn artifact(text: &str) -> Artifact {
    let config = Bytes::from_static(b"{}");
    let layer = Bytes::from(text.to_string());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{
            "mediaType": "text/plain", "digest": sha256_digest(&layer), "size": layer.len(),
            "annotations": {"org.opencontainers.image.title": "rules.yaml"},
        }],
    });
    Artifact {
        manifest: Bytes::from(serde_json::to_vec(&manifest).expect("json")),
        blobs: vec![
            (sha256_digest(&config), config),
            (sha256_digest(&layer), layer),
        ],
    }
}

fn ready(o: &ArtifactSource) -> Option<(&str, &str, &str)> {
    let c = o
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

fn is_ready(o: &ArtifactSource) -> bool {
    ready(o).is_some_and(|r| r.0 == "True")
        && o.status.as_ref().and_then(|s| s.observed_generation) == o.metadata.generation
}

fn failed_with(reason: &'static str) -> impl Fn(&ArtifactSource) -> bool {
    move |o| ready(o).is_some_and(|r| r.0 == "False" && r.1 == reason)
}

fn digest(o: &ArtifactSource) -> Option<String> {
    Some(o.status.as_ref()?.artifact.as_ref()?.digest.clone())
}

/// A `kubernetes.io/dockerconfigjson` Secret for `host`.
async fn pull_secret(h: &Harness, name: &str, host: &str, user: &str, password: &str) {
    let auth = common::base64_encode(&format!("{user}:{password}"));
    let config = format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#);
    h.secret(
        name,
        &[(".dockerconfigjson", config.into_bytes())],
        "kubernetes.io/dockerconfigjson",
    )
    .await;
}

/// `ocisync pull` run off the async workers (the fake registry serves on them).
async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || common::ocisync().args(&args).output().expect("run"))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_pinned_digest_answered_with_another_manifest_is_a_mismatch_and_the_old_content_stays() {
    let h = harness().await;
    let fake = Fake::start().await;
    let a = fake.add("a", &artifact("- rule: pinned\n"));
    let b = fake.add("b", &artifact("- rule: other\n"));
    let url = format!("oci://{}/team/rules", fake.addr);
    h.create(
        "pinned",
        serde_json::json!({"url": url, "ref": {"digest": a}, "interval": "1h", "insecure": true}),
    )
    .await;
    let o = h.wait("pinned", "Ready", is_ready).await;
    assert_eq!(digest(&o).as_deref(), Some(a.as_str()));

    // from now on, every request for the pin answers the other manifest and its (true) digest
    lock(&fake.swap).insert(a.clone(), b.clone());
    h.request_check("pinned", "swap-1").await;
    let o = h
        .wait("pinned", "DigestMismatch", failed_with("DigestMismatch"))
        .await;
    assert_eq!(
        digest(&o).as_deref(),
        Some(a.as_str()),
        "the last good revision stays"
    );
    let revision = format!("{}{}", h.base_url, ocisync::server::revision_path(&a));
    let served = reqwest::get(&revision).await.expect("GET revision");
    assert!(
        served.status().is_success(),
        "{revision}: {}",
        served.status()
    );
    assert!(
        fake.seen(&format!("/manifests/{b}")).is_empty(),
        "the other manifest was never asked for"
    );

    // the same pin with the command line: refused, nothing written
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("out");
    let run = cli(vec![
        "pull".into(),
        format!("{}/team/rules@{a}", fake.addr),
        "-o".into(),
        out.display().to_string(),
        "--insecure".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "pull of a swapped pin succeeded");
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    assert!(!out.exists(), "nothing written for a swapped pin");

    // a registry that tells the truth again serves the pin again
    lock(&fake.swap).clear();
    h.request_check("pinned", "honest-1").await;
    let o = h.wait("pinned", "Ready", is_ready).await;
    assert_eq!(digest(&o).as_deref(), Some(a.as_str()));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn credentials_stay_with_the_registry_host() {
    let h = harness().await;
    let elsewhere = Fake::start().await;
    // (1) a token realm on another host; tags continue on another host; blobs on a CDN
    let registry = Fake::start().await;
    registry.add("1.0.0", &artifact("- rule: one\n"));
    elsewhere.add("1.1.0", &artifact("- rule: one-one\n"));
    let newest = registry.add("1.1.0", &artifact("- rule: one-one\n"));
    lock(&registry.tags).retain(|t| t == "1.0.0");
    *lock(&registry.challenge) = Some(format!(
        r#"Bearer realm="{}/token",service="fake""#,
        elsewhere.url()
    ));
    *lock(&registry.next_link) = Some(format!(
        "{}/v2/team/rules/tags/list?last=1.0.0",
        elsewhere.url()
    ));
    *lock(&registry.blob_redirect) = Some(elsewhere.url());
    pull_secret(&h, "creds-1", &registry.addr, "alice", "s3cret-1").await;
    h.create(
        "elsewhere",
        serde_json::json!({"url": format!("oci://{}/team/rules", registry.addr), "ref": {"semver": ">=1.0.0"},
            "interval": "1h", "insecure": true, "secretRef": {"name": "creds-1"}}),
    )
    .await;
    let o = h.wait("elsewhere", "Ready", is_ready).await;
    assert_eq!(
        digest(&o).as_deref(),
        Some(newest.as_str()),
        "the tag from the second page"
    );
    let basic = format!("Basic {}", common::base64_encode("alice:s3cret-1"));
    assert!(
        registry
            .seen("/v2/")
            .iter()
            .any(|s| s.authorization.as_deref() == Some(basic.as_str())),
        "the registry itself got the credentials"
    );
    for (what, path) in [
        ("the token realm", "/token"),
        ("the tag page", "/tags/list"),
        ("the CDN", "/cdn/"),
    ] {
        let seen = elsewhere.seen(path);
        assert!(!seen.is_empty(), "{what} was not asked at all");
        for s in seen {
            assert_eq!(
                s.authorization, None,
                "{what} on another host got an Authorization header ({} {})",
                s.method, s.path
            );
        }
    }

    // (2) a realm on the registry's own host, but over plain HTTP
    let plain = Fake::start().await;
    plain.add("1", &artifact("- rule: plain\n"));
    *lock(&plain.challenge) = Some(format!(r#"Bearer realm="{}/token""#, plain.url()));
    pull_secret(&h, "creds-2", &plain.addr, "bob", "s3cret-2").await;
    h.create(
        "plain-realm",
        serde_json::json!({"url": format!("oci://{}/team/rules", plain.addr), "ref": {"tag": "1"},
            "interval": "1h", "insecure": true, "secretRef": {"name": "creds-2"}}),
    )
    .await;
    h.wait("plain-realm", "Ready", is_ready).await;
    let tokens = plain.seen("/token");
    assert!(!tokens.is_empty(), "the token realm was not asked");
    assert!(
        tokens.iter().all(|s| s.authorization.is_none()),
        "an http token realm got credentials: {tokens:?}"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_on_another_host_is_not_asked() {
    // the registry names a "token service" on another host (here `localhost`, an internal
    // service for the test): ocisync must not fetch it, with or without credentials, and
    // must not forward what it would answer
    let registry = Fake::start().await;
    let internal = Fake::start().await;
    registry.add("1", &artifact("- rule: internal\n"));
    let port = internal
        .addr
        .rsplit_once(':')
        .map(|(_, p)| p)
        .expect("port");
    *lock(&registry.challenge) = Some(format!(
        r#"Bearer realm="http://localhost:{port}/token",service="fake""#
    ));
    let work = tempfile::tempdir().expect("tempdir");
    let run = cli(vec![
        "pull".into(),
        format!("{}/team/rules:1", registry.addr),
        "-o".into(),
        work.path().join("out").display().to_string(),
        "--insecure".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "pulled with a foreign token: {stderr}"
    );
    assert!(
        stderr.contains("unauthorized") && stderr.contains("\"localhost\""),
        "{stderr}"
    );
    assert!(
        internal.seen("/token").is_empty(),
        "the foreign token service was asked"
    );
    assert!(
        registry
            .seen("/v2/")
            .iter()
            .all(|s| s.authorization.is_none()),
        "no token was forwarded to the registry"
    );
    assert!(!work.path().join("out").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_trickling_registry_times_out_and_the_controller_keeps_serving() {
    let mut h = harness().await;
    // run the controller again with a short cap on registry work
    let store = tempfile::tempdir().expect("store");
    h.restart_controller(
        store.path(),
        &["--concurrency", "2", "--registry-operation-timeout", "3s"],
    );

    let slow = Fake::start().await;
    slow.add("1", &artifact("- rule: slow\n"));
    slow.trickle.store(true, Ordering::Relaxed);
    let url = format!("oci://{}/team/rules", slow.addr);
    let started = std::time::Instant::now();
    // more trickling sources than workers, each asking for far more time than the cap
    for n in 0..3 {
        h.create(
            &format!("slow-{n}"),
            serde_json::json!({"url": url, "ref": {"tag": "1"}, "interval": "1h", "insecure": true, "timeout": "1h"}),
        )
        .await;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "hostile-fine");
    let good = common::controller::push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "rules.yaml",
        b"- rule: fine\n",
        &[],
    );
    h.create(
        "fine",
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true}),
    )
    .await;
    for n in 0..3 {
        let o = h
            .wait(
                &format!("slow-{n}"),
                "timed out",
                failed_with("RegistryUnavailable"),
            )
            .await;
        let message = ready(&o).map(|r| r.2.to_string()).unwrap_or_default();
        assert!(message.contains("timed out"), "{message}");
    }
    eprintln!(
        "3 trickling sources on 2 workers timed out within {:?} (cap 3s)",
        started.elapsed()
    );
    let o = h.wait("fine", "Ready", is_ready).await;
    assert_eq!(digest(&o), Some(good));
    let status = std::fs::read_to_string(format!("/proc/{}/status", h.controller.id()));
    if let Some(hwm) = status.ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("VmHWM"))
            .map(str::to_string)
    }) {
        eprintln!("controller after the trickle: {hwm}");
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_digest_named_by_another_tenant_is_served_only_after_it_proves_access() {
    let h = harness().await;
    let env = &h.env;
    // tenant A: a private repository on the registry with authentication
    let work = tempfile::tempdir().expect("tempdir");
    let private = env.repo(Which::Tls, "tenant-a");
    let secret_text = format!("- rule: tenant-a-{}\n", common::unique());
    let d = common::controller::push_file(
        env,
        Which::Tls,
        work.path(),
        &format!("{private}:1"),
        "private.yaml",
        secret_text.as_bytes(),
        &[],
    );
    pull_secret(&h, "tenant-a", &env.tls, &env.user, &env.password).await;
    let ca = std::fs::read(&env.ca).expect("CA");
    h.secret("tenant-a-ca", &[("ca.crt", ca)], "Opaque").await;
    h.create(
        "tenant-a",
        serde_json::json!({"url": format!("oci://{private}"), "ref": {"tag": "1"}, "interval": "1h",
            "secretRef": {"name": "tenant-a"}, "certSecretRef": {"name": "tenant-a-ca"}}),
    )
    .await;
    let o = h.wait("tenant-a", "Ready", is_ready).await;
    assert_eq!(digest(&o).as_deref(), Some(d.as_str()));

    // tenant B names the digest at a registry that says "yes" to a HEAD but cannot serve it
    // (it has tenant A's manifest bytes only to compute the digest its HEAD announces)
    let liar = Fake::start().await;
    let real = env
        .registry(Which::Tls)
        .fetch_manifest(&private, &d, Some(&d.parse().expect("digest")))
        .await
        .expect("manifest");
    lock(&liar.manifests).insert(d.clone(), real.bytes.clone());
    lock(&liar.head_only).insert(d.clone());
    h.create(
        "tenant-b-liar",
        serde_json::json!({"url": format!("oci://{}/team/rules", liar.addr), "ref": {"digest": d},
            "interval": "1h", "insecure": true}),
    )
    .await;
    // tenant B names it at the real registry without credentials
    h.create(
        "tenant-b-anonymous",
        serde_json::json!({"url": format!("oci://{private}"), "ref": {"digest": d}, "interval": "1h",
            "certSecretRef": {"name": "tenant-a-ca"}}),
    )
    .await;
    for name in ["tenant-b-liar", "tenant-b-anonymous"] {
        let o = h
            .wait(name, "failed", |o| ready(o).is_some_and(|r| r.0 == "False"))
            .await;
        assert_eq!(digest(&o), None, "{name} got tenant A's revision");
    }
    assert!(
        !liar.seen(&format!("/manifests/{d}")).is_empty(),
        "the liar was asked"
    );

    // tenant C holds the same revision in a repository of its own: it proves that and
    // shares the stored blobs (one download per revision)
    let own = env.repo(Which::Plain, "tenant-c");
    let plain = env.registry(Which::Plain);
    let tls = env.registry(Which::Tls);
    let manifest: serde_json::Value = serde_json::from_slice(&real.bytes).expect("manifest json");
    let mut blobs = vec![
        manifest["config"]["digest"]
            .as_str()
            .expect("config")
            .to_string(),
    ];
    for l in manifest["layers"].as_array().expect("layers") {
        blobs.push(l["digest"].as_str().expect("layer").to_string());
    }
    for b in &blobs {
        let bytes = tls
            .fetch_small_blob(&private, &b.parse().expect("digest"), 1024 * 1024)
            .await
            .expect("blob");
        plain.push_blob(&own, b, bytes).await.expect("push blob");
    }
    plain
        .push_manifest(&own, "1", &real.media_type, real.bytes.clone())
        .await
        .expect("push manifest");
    let log_before = common::log_lines(env.log(Which::Plain));
    h.create(
        "tenant-c",
        serde_json::json!({"url": format!("oci://{own}"), "ref": {"digest": d}, "interval": "1h", "insecure": true}),
    )
    .await;
    let o = h.wait("tenant-c", "Ready", is_ready).await;
    assert_eq!(digest(&o).as_deref(), Some(d.as_str()));
    let log = std::fs::read_to_string(env.log(Which::Plain)).unwrap_or_default();
    let new: Vec<&str> = log
        .lines()
        .skip(log_before)
        .filter(|l| l.contains(&own.name))
        .collect();
    assert!(
        new.iter()
            .any(|l| l.contains("/manifests/") && l.contains("\"GET ")),
        "tenant C's manifest was fetched from its own repository: {new:#?}"
    );
    assert!(
        !new.iter()
            .any(|l| l.contains("/blobs/") && l.contains("\"GET ")),
        "the stored blobs were downloaded again: {new:#?}"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_location_on_another_host_gets_no_credentials() {
    let registry = Fake::start().await;
    let elsewhere = Fake::start().await;
    *lock(&registry.upload_location) = Some(elsewhere.url());
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("rules.yaml");
    std::fs::write(&file, "- rule: pushed\n").expect("write");
    let config = work.path().join("config.json");
    let auth = common::base64_encode("carol:s3cret-3");
    std::fs::write(
        &config,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.addr),
    )
    .expect("write config");
    let run = cli(vec![
        "push".into(),
        file.display().to_string(),
        format!("{}/team/rules:1", registry.addr),
        "--type".into(),
        "generic".into(),
        "--insecure".into(),
        "--docker-config".into(),
        config.display().to_string(),
    ])
    .await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let basic = format!("Basic {auth}");
    assert!(
        registry
            .seen("/blobs/uploads/")
            .iter()
            .all(|s| s.authorization.as_deref() == Some(basic.as_str())),
        "the registry itself gets the credentials"
    );
    let uploads = elsewhere.seen("/upload/");
    assert!(!uploads.is_empty(), "the uploads went to the Location");
    assert!(
        uploads.iter().all(|s| s.authorization.is_none()),
        "an upload Location on another host got credentials: {uploads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_tag_listing_stops_at_the_byte_limit() {
    let registry = Fake::start().await;
    // 2 MB pages of long tags, each pointing at itself as the next page: the byte limit
    // (16 MiB) ends it long before the tag count limit (100 000) would
    *lock(&registry.tags) = (0..2000)
        .map(|n| format!("1.0.{n}-{}", "x".repeat(1000)))
        .collect();
    *lock(&registry.next_link) = Some(format!("{}/v2/team/rules/tags/list?n=1000", registry.url()));
    let out_dir = tempfile::tempdir().expect("tempdir");
    let run = cli(vec![
        "pull".into(),
        format!("{}/team/rules", registry.addr),
        "--semver".into(),
        ">=1".into(),
        "-o".into(),
        out_dir.path().join("out").display().to_string(),
        "--insecure".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "an endless listing was accepted");
    assert!(
        stderr.contains("too large") && stderr.contains("bytes"),
        "{stderr}"
    );
    let pages = registry.seen("/tags/list").len();
    assert!(pages <= 9, "{pages} pages read for a 16 MiB limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn after_a_restart_a_source_proves_its_revision_again_without_downloading_it() {
    let mut h = harness().await;
    let store = tempfile::tempdir().expect("store");
    h.restart_controller(store.path(), &[]);
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "hostile-restart");
    let d = common::controller::push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "rules.yaml",
        common::unique().as_bytes(),
        &[],
    );
    h.create(
        "restart",
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true}),
    )
    .await;
    h.wait("restart", "Ready", is_ready).await;
    let log = h.env.log(Which::Plain).clone();
    let before = common::log_lines(&log);
    // the same store, a new process: nothing proved yet
    h.restart_controller(store.path(), &[]);
    let o = h.request_check("restart", "after-restart").await;
    assert!(is_ready(&o), "{:?}", ready(&o));
    assert_eq!(digest(&o).as_deref(), Some(d.as_str()));
    let text = std::fs::read_to_string(&log).expect("registry log");
    let ours: Vec<&str> = text
        .lines()
        .skip(before)
        .filter(|l| l.contains(&format!("/v2/{}/", repo.name)))
        .collect();
    let manifest_gets = ours
        .iter()
        .filter(|l| l.contains("\"GET ") && l.contains(&format!("/manifests/{d}")))
        .count();
    assert_eq!(manifest_gets, 1, "one proof: {ours:#?}");
    assert!(
        !ours.iter().any(|l| l.contains("/blobs/")),
        "no blob downloaded again: {ours:#?}"
    );
    // proved now: the next check is one HEAD again
    let before = common::log_lines(&log);
    h.request_check("restart", "again").await;
    let text = std::fs::read_to_string(&log).expect("registry log");
    let gets = text
        .lines()
        .skip(before)
        .filter(|l| l.contains(&format!("/v2/{}/", repo.name)) && l.contains("\"GET "))
        .count();
    assert_eq!(gets, 0, "no GET once proved");
    h.cleanup().await;
}

/// A Sigstore bundle attached to `subject` as cosign v3 attaches it: its referrer manifest
/// (added to the fake) and the index entry the referrers API lists for it.
fn bundle_referrer(fake: &Fake, subject: &str, bundle: &[u8]) -> serde_json::Value {
    const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let (empty, blob) = (Bytes::from_static(b"{}"), Bytes::copy_from_slice(bundle));
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": BUNDLE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(&empty), "size": 2},
        "layers": [{"mediaType": BUNDLE, "digest": sha256_digest(&blob), "size": blob.len()}],
        "subject": {"mediaType": MANIFEST, "digest": subject, "size": 1},
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("json"));
    let digest = sha256_digest(&bytes);
    lock(&fake.manifests).insert(digest.clone(), bytes.clone());
    lock(&fake.blobs).extend([(sha256_digest(&empty), empty), (sha256_digest(&blob), blob)]);
    serde_json::json!({"mediaType": MANIFEST, "digest": digest, "size": bytes.len(), "artifactType": BUNDLE})
}

fn set_referrers(fake: &Fake, subject: &str, manifests: Vec<serde_json::Value>, padding: usize) {
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests, "annotations": {"padding": "x".repeat(padding)},
    });
    let bytes = Bytes::from(serde_json::to_vec(&index).expect("json"));
    lock(&fake.referrers).insert(subject.to_string(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn signatures_come_through_the_referrers_api_and_a_hostile_listing_is_bounded() {
    let fake = Fake::start().await;
    let d = fake.add("1", &artifact(&format!("# {}\n", common::unique())));
    let work = tempfile::tempdir().expect("tempdir");
    let signed = work.path().join("signed");
    let status = std::process::Command::new("node")
        .arg(common::root().join("e2e/sigstore/sign.mjs"))
        .args(["--out", signed.to_str().expect("path"), "--digest", &d])
        .status()
        .expect("node (e2e/deps.sh installs the Sigstore mock)");
    assert!(status.success(), "sign.mjs");
    let bundle = std::fs::read(signed.join("bundle-v03.json")).expect("bundle");
    let root = signed.join("trusted_root.json");
    let verify = |fake: &Fake| {
        vec![
            "verify".to_string(),
            "--insecure".into(),
            "-O".into(),
            "json".into(),
            format!("oci://{}/rules:1", fake.addr),
            "--certificate-identity-regexp".into(),
            "^https://github\\.com/example/rules/".into(),
            "--certificate-oidc-issuer-regexp".into(),
            "^https://token\\.actions\\.githubusercontent\\.com$".into(),
            "--trusted-root".into(),
            root.display().to_string(),
        ]
    };
    let entry = bundle_referrer(&fake, &d, &bundle);
    let outcome = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "not JSON: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };

    // a registry with the referrers API: one request lists the bundle, no fallback tag
    set_referrers(&fake, &d, vec![entry.clone()], 0);
    let out = cli(verify(&fake)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = outcome(&out);
    assert_eq!(
        (v["format"].as_str(), v["method"].as_str()),
        (Some("bundle-v0.3"), Some("keyless"))
    );
    assert_eq!(fake.seen("/referrers/").len(), 1);
    assert!(
        fake.seen(&format!("/manifests/sha256-{}", &d[7..]))
            .is_empty(),
        "no fallback tag read"
    );

    // a listing over 1 MiB is not read (bounded) and said so; more bundles than are read:
    // the first ones are tried as they come, so a valid first one costs one referrer read
    set_referrers(&fake, &d, vec![entry.clone()], 2 << 20);
    let out = cli(verify(&fake)).await;
    let refused = outcome(&out);
    assert_eq!(refused["reason"], "SignatureNotFound", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("skipped"),
        "{refused}"
    );
    set_referrers(&fake, &d, vec![entry.clone(); 40], 0);
    let manifest_path = format!("/manifests/{}", entry["digest"].as_str().expect("digest"));
    let before = fake.seen(&manifest_path).len();
    let out = cli(verify(&fake)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fake.seen(&manifest_path).len() - before,
        1,
        "verified as found"
    );

    // junk next to a valid signature does not deny it: a dangling referrer (deleted, as a
    // stale fallback index keeps it) and cosign's classic keyless layer at the .sig tag
    let mut dangling = entry.clone();
    dangling["digest"] = sha256_digest(b"gone").into();
    set_referrers(&fake, &d, vec![dangling], 0);
    let payload = Bytes::from(std::fs::read(signed.join("classic/payload.json")).expect("payload"));
    let notes: serde_json::Value = serde_json::from_slice(
        &std::fs::read(signed.join("classic/annotations.json")).expect("annotations"),
    )
    .expect("JSON");
    let sig = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": sha256_digest(&payload), "size": payload.len(), "annotations": notes}],
    });
    let sig_tag = format!("sha256-{}.sig", &d[7..]);
    lock(&fake.blobs).insert(sha256_digest(&payload), payload);
    lock(&fake.manifests).insert(
        sig_tag.clone(),
        Bytes::from(serde_json::to_vec(&sig).expect("json")),
    );
    let out = cli(verify(&fake)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(outcome(&out)["format"], "classic");
    // a registry without the API that answers 405: the signature is found through the
    // fallback tag instead
    *lock(&fake.referrers_status) = Some(StatusCode::METHOD_NOT_ALLOWED);
    set_referrers(&fake, &d, vec![entry.clone()], 0);
    let listing = lock(&fake.referrers).get(&d).cloned().expect("listing");
    lock(&fake.manifests).insert(format!("sha256-{}", &d[7..]), listing);
    lock(&fake.manifests).remove(&sig_tag);
    let out = cli(verify(&fake)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(outcome(&out)["format"], "bundle-v0.3");
    let fallback = format!("/manifests/sha256-{}", &d[7..]);
    let read = fake.seen(&fallback);
    assert_eq!(
        read.iter().filter(|s| s.path.ends_with(&fallback)).count(),
        1
    );
    *lock(&fake.referrers_status) = None;
    lock(&fake.manifests).remove(&format!("sha256-{}", &d[7..]));

    // a referrer about another manifest is not this digest's signature, whatever it holds
    let other = fake.add("2", &artifact("other"));
    let elsewhere = bundle_referrer(&fake, &other, &bundle);
    set_referrers(&fake, &d, vec![elsewhere], 0);
    let out = cli(verify(&fake)).await;
    assert_eq!(
        outcome(&out)["reason"],
        "SignatureNotFound",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
