//! End-to-end: `ocisync controller` against the real API server and registries. Each test
//! runs its own controller process on its own namespace and waits on status conditions
//! with a deadline.

mod common;

use common::controller::{harness, push_file};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::Which;
use kube::api::Api;
use ocisync::api::ArtifactSource;
use tokio::net::{TcpListener, TcpStream};

fn ready(o: &ArtifactSource) -> Option<(&str, &str)> {
    let c = o
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.as_str(), c.reason.as_str()))
}

fn is_ready(o: &ArtifactSource) -> bool {
    ready(o) == Some(("True", "Succeeded"))
        && o.status.as_ref().and_then(|s| s.observed_generation) == o.metadata.generation
}

fn digest(o: &ArtifactSource) -> Option<String> {
    Some(o.status.as_ref()?.artifact.as_ref()?.digest.clone())
}

async fn http_get(url: &str) -> Vec<u8> {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.bytes().await.expect("body").to_vec()
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn sources_become_ready_follow_new_pushes_and_serve_identical_content() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "ctl-rules");
    let rules = format!("# {}\n- rule: one\n", common::unique());
    let d1 = push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:3"),
        "falco_rules.yaml",
        rules.as_bytes(),
        &["--version", "3.0.0"],
    );
    h.create("tag", serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "3"}, "interval": "10s", "insecure": true})).await;
    h.create("semver", serde_json::json!({"url": format!("oci://{repo}"), "ref": {"semver": ">=3.0.0 <4"}, "interval": "10s", "insecure": true})).await;
    h.create("pinned", serde_json::json!({"url": format!("oci://{repo}"), "ref": {"digest": d1}, "interval": "10s", "insecure": true})).await;
    for name in ["tag", "semver", "pinned"] {
        let o = h.wait(name, "Ready", is_ready).await;
        assert_eq!(digest(&o).as_deref(), Some(d1.as_str()), "{name}");
    }
    let o = h.api.get("tag").await.expect("get");
    let artifact = o.status.and_then(|s| s.artifact).expect("artifact");
    assert_eq!(artifact.revision, format!("3@{d1}"));
    assert_eq!(artifact.files.len(), 1);
    assert_eq!(artifact.files[0].path, "falco_rules.yaml");
    assert_eq!(artifact.files[0].size as usize, rules.len());
    let semver = h.api.get("semver").await.expect("get");
    assert_eq!(
        semver.status.and_then(|s| s.artifact).map(|a| a.revision),
        Some(format!("3.0.0@{d1}"))
    );

    // the artifact server serves exactly what the registry holds
    let url = artifact.url.clone().expect("artifact url");
    assert!(url.starts_with(&h.base_url), "{url}");
    let index: serde_json::Value =
        serde_json::from_slice(&http_get(&url).await).expect("index json");
    let file = &index["files"][0];
    assert_eq!(file["digest"], artifact.files[0].digest);
    let served = http_get(&format!(
        "{}/blobs/sha256/{}",
        h.base_url,
        file["digest"]
            .as_str()
            .expect("d")
            .trim_start_matches("sha256:")
    ))
    .await;
    assert_eq!(served, rules.as_bytes());

    // a new push to the tag (and a higher version) is picked up within an interval;
    // the digest pin stays
    let rules2 = format!("# {}\n- rule: two\n", common::unique());
    let d2 = push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:3"),
        "falco_rules.yaml",
        rules2.as_bytes(),
        &["--version", "3.1.0"],
    );
    let d2c = d2.clone();
    h.wait("tag", "moved to the new push", move |o| {
        digest(o).as_deref() == Some(d2c.as_str())
    })
    .await;
    let d2c = d2.clone();
    let moved = h
        .wait("semver", "moved to 3.1.0", move |o| {
            digest(o).as_deref() == Some(d2c.as_str())
        })
        .await;
    assert!(
        moved
            .status
            .and_then(|s| s.artifact)
            .is_some_and(|a| a.revision.starts_with("3.1.0@"))
    );
    let pinned = h.request_check("pinned", "after-push").await;
    assert_eq!(digest(&pinned).as_deref(), Some(d1.as_str()));
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn unchanged_checks_cost_one_head_each_and_no_blob_downloads() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "ctl-quiet");
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "r.yaml",
        common::unique().as_bytes(),
        &[],
    );
    h.create("quiet", serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true})).await;
    h.wait("quiet", "Ready", is_ready).await;
    let log = h.env.log(Which::Plain).clone();
    let before = common::log_lines(&log);
    for i in 0..10 {
        let o = h.request_check("quiet", &format!("check-{i}")).await;
        assert!(is_ready(&o));
    }
    let text = std::fs::read_to_string(&log).expect("registry log");
    let ours: Vec<&str> = text
        .lines()
        .skip(before)
        .filter(|l| l.contains(&format!("/v2/{}/", repo.name)) && l.starts_with("127.0.0.1"))
        .collect();
    let heads = ours
        .iter()
        .filter(|l| l.contains("\"HEAD ") && l.contains("/manifests/1 "))
        .count();
    let others = ours.iter().filter(|l| !l.contains("\"HEAD ")).count();
    assert_eq!(heads, 10, "{ours:#?}");
    assert_eq!(others, 0, "no GETs: {ours:#?}");
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn credentials_from_secrets_fail_clearly_and_recover_when_fixed() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Tls, "ctl-auth");
    push_file(
        &h.env,
        Which::Tls,
        work.path(),
        &format!("{repo}:1"),
        "r.yaml",
        common::unique().as_bytes(),
        &[],
    );
    let docker = |password: &str| {
        format!(
            r#"{{"auths":{{"{}":{{"username":"{}","password":"{password}"}}}}}}"#,
            h.env.tls, h.env.user
        )
        .into_bytes()
    };
    h.secret(
        "ca",
        &[("ca.crt", std::fs::read(&h.env.ca).expect("ca"))],
        "Opaque",
    )
    .await;
    h.secret(
        "regcred",
        &[(".dockerconfigjson", docker("wrong-password-1234"))],
        "kubernetes.io/dockerconfigjson",
    )
    .await;
    h.create(
        "auth",
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h",
        "secretRef": {"name": "regcred"}, "certSecretRef": {"name": "ca"}}),
    )
    .await;
    let o = h
        .wait("auth", "Unauthorized", |o| {
            ready(o) == Some(("False", "Unauthorized"))
        })
        .await;
    let text = serde_json::to_string(&o.status).expect("json");
    assert!(!text.contains("wrong-password-1234") && !text.contains(&h.env.password));
    // a Warning Event names the reason (published before the status that shows it)
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), &h.ns);
    let list = events.list(&Default::default()).await.expect("list events");
    let warning = list.items.iter().find(|e| {
        e.reason.as_deref() == Some("Unauthorized")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("auth")
    });
    let warning = warning.unwrap_or_else(|| panic!("no Unauthorized event: {:#?}", list.items));
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.note.clone().unwrap_or_default();
    assert!(
        !note.contains("wrong-password-1234") && !note.contains(&h.env.password),
        "{note}"
    );
    // fixing the Secret alone recovers the source
    h.secret(
        "regcred",
        &[(".dockerconfigjson", docker(&h.env.password))],
        "kubernetes.io/dockerconfigjson",
    )
    .await;
    h.wait("auth", "Ready after the Secret was fixed", is_ready)
        .await;
    // a missing Secret is named
    h.create("nosecret", serde_json::json!({"url": format!("oci://{repo}"), "interval": "1h", "secretRef": {"name": "absent"}})).await;
    h.wait("nosecret", "SecretNotFound", |o| {
        ready(o) == Some(("False", "SecretNotFound"))
    })
    .await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn invalid_specs_stall_with_a_reason() {
    let h = harness().await;
    h.create(
        "short",
        serde_json::json!({"url": "oci://127.0.0.1:1/x", "interval": "5s"}),
    )
    .await;
    h.create("badrange", serde_json::json!({"url": "oci://127.0.0.1:1/x", "ref": {"semver": ">=banana"}, "interval": "1m"})).await;
    for name in ["short", "badrange"] {
        let o = h
            .wait(name, "Stalled", |o| {
                ready(o) == Some(("False", "InvalidSpec"))
            })
            .await;
        let stalled = o.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Stalled")
                .map(|c| c.status.clone())
        });
        assert_eq!(stalled.as_deref(), Some("True"), "{name}");
    }
    h.cleanup().await;
}

/// A TCP forwarder to a registry that can be stopped and started on the same port, to
/// take the registry away from the controller without touching the shared registry.
struct Proxy {
    addr: String,
    up: Arc<AtomicBool>,
}

async fn proxy(target: String) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !flag.load(Ordering::SeqCst) {
                drop(inbound); // registry "down": connections are cut at once
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(&target).await {
                    // connections end by either side hanging up, also when the test cuts them
                    tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                        .await
                        .ok();
                }
            });
        }
    });
    Proxy { addr, up }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn outages_and_tampering_keep_the_last_good_revision_served() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let p = proxy(h.env.plain.clone()).await;
    let repo = h.env.repo(Which::Plain, "ctl-outage");
    let content = format!("# {}\n", common::unique());
    let d1 = push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "r.yaml",
        content.as_bytes(),
        &[],
    );
    let url = format!("oci://{}/{}", p.addr, repo.name);
    h.create("outage", serde_json::json!({"url": url, "ref": {"tag": "1"}, "interval": "1h", "timeout": "3s", "insecure": true})).await;
    let o = h.wait("outage", "Ready", is_ready).await;
    let served_url = o
        .status
        .and_then(|s| s.artifact)
        .and_then(|a| a.url)
        .expect("url");

    p.up.store(false, Ordering::SeqCst);
    let o = h.request_check("outage", "down").await;
    assert_eq!(ready(&o), Some(("False", "RegistryUnavailable")));
    assert_eq!(
        digest(&o).as_deref(),
        Some(d1.as_str()),
        "last artifact kept"
    );
    http_get(&served_url).await; // and still served
    p.up.store(true, Ordering::SeqCst);
    let o = h.request_check("outage", "up").await;
    assert!(is_ready(&o), "{:?}", ready(&o));

    // a tampered new revision: DigestMismatch, the previous revision kept
    let d2 = push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "r.yaml",
        format!("{content}# v2\n").repeat(20).as_bytes(),
        &[],
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob_file(&h.env.plain_root, &d2)).expect("manifest blob"),
    )
    .expect("manifest json");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .to_string();
    let path = blob_file(&h.env.plain_root, &layer);
    let mut bytes = std::fs::read(&path).expect("layer blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).expect("tamper");
    let o = h.request_check("outage", "tampered").await;
    assert_eq!(ready(&o), Some(("False", "DigestMismatch")));
    assert_eq!(digest(&o).as_deref(), Some(d1.as_str()));
    http_get(&served_url).await;
    h.cleanup().await;
}

fn blob_file(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    root.join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn the_store_keeps_current_and_previous_revisions_only() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "ctl-gc");
    let mut digests = Vec::new();
    for i in 0..3 {
        let d = push_file(
            &h.env,
            Which::Plain,
            work.path(),
            &format!("{repo}:1"),
            "r.yaml",
            format!("# {} {i}\n", common::unique()).as_bytes(),
            &[],
        );
        if i == 0 {
            h.create("gc", serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true})).await;
            h.wait("gc", "Ready", is_ready).await;
        } else {
            let o = h.request_check("gc", &format!("push-{i}")).await;
            assert_eq!(digest(&o).as_deref(), Some(d.as_str()));
        }
        digests.push(d);
    }
    let status = |d: &str| {
        let url = format!(
            "{}/revisions/sha256/{}",
            h.base_url,
            d.trim_start_matches("sha256:")
        );
        async move {
            reqwest::get(&url)
                .await
                .expect("GET revision")
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        status(&digests[0]).await,
        404,
        "the oldest revision is collected"
    );
    assert_eq!(
        status(&digests[1]).await,
        200,
        "the previous revision is kept for rollback"
    );
    assert_eq!(
        status(&digests[2]).await,
        200,
        "the current revision is served"
    );
    h.cleanup().await;
}
