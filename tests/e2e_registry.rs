//! End-to-end: the registry transport against the real local registries (plain; TLS with
//! htpasswd) and against fake servers on loopback that misbehave.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BOTH, Which};
use ocisync::oci::pull;
use ocisync::oci::reference::{Reference, Repository};
use ocisync::oci::registry::{Registry, RegistryOptions, sha256_digest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn random_bytes(len: usize) -> Vec<u8> {
    // xorshift: varied bytes without a rand dependency
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (len as u64) ^ u64::from(std::process::id());
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_pushed_blob_reads_back_identical_on_both_registries() {
    let env = common::env();
    for which in BOTH {
        let registry = env.registry(which);
        let repo = env.repo(which, "blob");
        let data = random_bytes(300_000);
        let digest = sha256_digest(&data);
        assert!(
            !registry
                .blob_exists(&repo, &digest)
                .await
                .expect("HEAD blob")
        );
        registry
            .push_blob(&repo, &digest, Bytes::from(data.clone()))
            .await
            .unwrap_or_else(|e| panic!("{which:?}: push: {e}"));
        assert!(
            registry
                .blob_exists(&repo, &digest)
                .await
                .expect("HEAD blob")
        );
        let back = registry
            .fetch_small_blob(&repo, &digest.parse().expect("digest"), 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{which:?}: fetch: {e}"));
        assert_eq!(back.as_ref(), data.as_slice(), "{which:?}");
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn wrong_or_missing_credentials_are_unauthorized_and_never_printed() {
    let env = common::env();
    let repo = env.repo(Which::Tls, "auth");
    let digest = sha256_digest(b"x");
    let mut wrong = env.options(Which::Tls);
    let secret = "not-the-password-5b1e";
    if let Some(c) = wrong.credentials.as_mut() {
        c.password = secret.into();
    }
    let mut none = env.options(Which::Tls);
    none.credentials = None;
    for (label, options) in [("wrong password", wrong), ("no credentials", none)] {
        let registry = Registry::new(&env.tls, options).expect("client");
        let e = registry
            .push_blob(&repo, &digest, Bytes::from_static(b"x"))
            .await
            .expect_err(label);
        assert_eq!(e.reason().as_str(), "Unauthorized", "{label}: {e}");
        let e2 = pull::resolve(
            &registry,
            &Reference::parse_cli(&format!("{repo}:latest")).expect("ref"),
        )
        .await
        .expect_err(label);
        assert_eq!(e2.reason().as_str(), "Unauthorized", "{label}: {e2}");
        for text in [
            format!("{e}"),
            format!("{e:?}"),
            format!("{e2}"),
            format!("{e2:?}"),
        ] {
            assert!(
                !text.contains(secret) && !text.contains(&env.password),
                "{text}"
            );
        }
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn an_untrusted_certificate_is_a_clear_error() {
    let env = common::env();
    let mut options = env.options(Which::Tls);
    options.ca_pem = None;
    let registry = Registry::new(&env.tls, options).expect("client");
    let e = registry
        .blob_exists(&env.repo(Which::Tls, "ca"), &sha256_digest(b"x"))
        .await
        .expect_err("self-signed CA must not be trusted by default");
    assert_eq!(e.reason().as_str(), "RegistryUnavailable", "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_missing_tag_is_not_found() {
    let env = common::env();
    for which in BOTH {
        let registry = env.registry(which);
        let repo = env.repo(which, "missing");
        let e = registry.resolve(&repo, "nope").await.expect_err("404");
        assert_eq!(e.reason().as_str(), "NotFound", "{which:?}: {e}");
    }
}

/// A one-connection-at-a-time HTTP server on loopback that answers every request with
/// `response` (or never answers when it is `None`).
async fn fake_server(response: Option<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            // the client under test may hang up at any point (that is what some cases check):
            // what it does is asserted on its side, not here
            if !matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
                continue; // no request came
            }
            match &response {
                Some(r) => {
                    socket.write_all(r).await.ok();
                    socket.shutdown().await.ok();
                }
                None => held.push(socket), // keep it open, say nothing
            }
        }
    });
    addr
}

fn plain_options(timeout: Duration) -> RegistryOptions {
    RegistryOptions {
        insecure: true,
        timeout,
        ..RegistryOptions::default()
    }
}

fn repo(addr: &str) -> Repository {
    Repository {
        registry: addr.to_string(),
        name: "fake/repo".into(),
    }
}

#[tokio::test]
async fn server_errors_rate_limits_and_silence_get_typed_errors() {
    let addr = fake_server(Some(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .to_vec(),
    ))
    .await;
    let registry = Registry::new(&addr, plain_options(Duration::from_secs(5))).expect("client");
    let e = registry.resolve(&repo(&addr), "1").await.expect_err("500");
    assert_eq!(e.reason().as_str(), "RegistryUnavailable", "{e}");
    assert!(e.is_transient());

    let addr = fake_server(Some(
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .to_vec(),
    ))
    .await;
    let registry = Registry::new(&addr, plain_options(Duration::from_secs(5))).expect("client");
    let e = registry.resolve(&repo(&addr), "1").await.expect_err("429");
    match e {
        ocisync::oci::OciError::RateLimited { retry_after } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)))
        }
        other => panic!("expected RateLimited, got {other}"),
    }

    let addr = fake_server(None).await;
    let registry = Registry::new(&addr, plain_options(Duration::from_millis(800))).expect("client");
    let started = Instant::now();
    let e = registry
        .resolve(&repo(&addr), "1")
        .await
        .expect_err("silence");
    assert_eq!(e.reason().as_str(), "RegistryUnavailable", "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout was not applied"
    );
}

#[tokio::test]
async fn a_manifest_over_the_limit_is_refused_without_reading_it_whole() {
    // a registry that offers a 5 MiB manifest (over the 4 MiB default)
    let body = vec![b' '; 5 * 1024 * 1024];
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    let addr = fake_server(Some(response)).await;
    let registry = Registry::new(&addr, plain_options(Duration::from_secs(10))).expect("client");
    let e = registry
        .fetch_manifest(&repo(&addr), "1", None)
        .await
        .expect_err("too large");
    assert_eq!(e.reason().as_str(), "TooLarge", "{e}");
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn semver_resolution_on_both_registries() {
    let env = common::env();
    for which in BOTH {
        let registry = env.registry(which);
        let repo = env.repo(which, "semver");
        // one tiny manifest, tagged many times
        let config = Bytes::from_static(b"{}");
        let config_digest = sha256_digest(&config);
        registry
            .push_blob(&repo, &config_digest, config)
            .await
            .expect("config");
        let manifest = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
                "layers": []
            }))
            .expect("json"),
        );
        for t in SEMVER_TAGS {
            registry
                .push_manifest(
                    &repo,
                    t,
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest.clone(),
                )
                .await
                .expect("tag");
        }
        let reference =
            Reference::from_spec(&format!("oci://{repo}"), None, Some(">=2.0.0 <3"), None)
                .expect("reference");
        let resolved = pull::resolve(&registry, &reference).await.expect("resolve");
        assert_eq!(
            resolved.label, "2.3.1",
            "{which:?}: highest match, v-prefix accepted, rc excluded"
        );
        assert_eq!(resolved.head.digest, sha256_digest(&manifest));
        let pre = Reference::from_spec(
            &format!("oci://{repo}"),
            None,
            Some(">=2.1.0-rc.0 <2.2"),
            None,
        )
        .expect("reference");
        assert_eq!(
            pull::resolve(&registry, &pre).await.expect("resolve").label,
            "2.1.0-rc.1"
        );
        let none = Reference::from_spec(&format!("oci://{repo}"), None, Some(">=9"), None)
            .expect("reference");
        let e = pull::resolve(&registry, &none).await.expect_err("no match");
        assert_eq!(e.reason().as_str(), "NotFound", "{e}");
    }
}

const SEMVER_TAGS: [&str; 11] = [
    "1.0.0",
    "1.9.0",
    "2.0.0",
    "2.0.5",
    "2.1.0-rc.1",
    "v2.3.1",
    "3.0.0",
    "latest",
    "2.3.0",
    "0.9.0",
    "not-semver",
];

/// A registry that paginates its tag list strictly (`n` per page, `Link` to the next page),
/// as Distribution v3, Harbor and the cloud registries do. Debian's Distribution 2.8
/// ignores `n` and always sends every tag, so pagination is checked here.
async fn paginating_registry(requests: Arc<Mutex<Vec<String>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let line = head.lines().next().unwrap_or_default().to_string();
            let mut parts = line.split(' ');
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if let Ok(mut r) = requests.lock() {
                r.push(format!("{method} {target}"));
            }
            let response = if let Some(query) = target.strip_prefix("/v2/fake/repo/tags/list?") {
                let param = |k: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                        .map(str::to_string)
                };
                let n: usize = param("n").and_then(|v| v.parse().ok()).unwrap_or(1000);
                let mut sorted: Vec<&str> = SEMVER_TAGS.to_vec();
                sorted.sort();
                let start = match param("last") {
                    Some(last) => sorted.iter().position(|t| *t == last).map_or(0, |i| i + 1),
                    None => 0,
                };
                let page: Vec<&str> = sorted.iter().skip(start).take(n).copied().collect();
                let body = serde_json::json!({"name": "fake/repo", "tags": page}).to_string();
                let link = match page.last() {
                    Some(last) if start + page.len() < sorted.len() => format!(
                        "link: </v2/fake/repo/tags/list?n={n}&last={last}>; rel=\"next\"\r\n"
                    ),
                    _ => String::new(),
                };
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{link}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else if let Some(tag) = target.strip_prefix("/v2/fake/repo/manifests/") {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ndocker-content-digest: {}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n",
                    sha256_digest(tag.as_bytes())
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            };
            // a client that hangs up early is the test's to notice, not the server's
            socket.write_all(response.as_bytes()).await.ok();
            socket.shutdown().await.ok();
        }
    });
    addr
}

#[tokio::test]
async fn semver_resolution_follows_paginated_tag_lists() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let addr = paginating_registry(requests.clone()).await;
    let mut options = plain_options(Duration::from_secs(5));
    options.tag_page_size = 3;
    let registry = Registry::new(&addr, options).expect("client");
    let reference = Reference::from_spec(
        &format!("oci://{addr}/fake/repo"),
        None,
        Some(">=2.0.0 <3"),
        None,
    )
    .expect("reference");
    let resolved = pull::resolve(&registry, &reference).await.expect("resolve");
    assert_eq!(resolved.label, "2.3.1");
    assert_eq!(resolved.head.digest, sha256_digest(b"v2.3.1"));
    let seen = requests.lock().expect("lock").clone();
    let pages = seen.iter().filter(|r| r.contains("/tags/list")).count();
    assert_eq!(pages, 4, "11 tags in pages of 3: {seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("HEAD /v2/fake/repo/manifests/v2.3.1")
    );
    assert_eq!(seen.len(), 5, "4 pages + 1 HEAD: {seen:?}");
}
