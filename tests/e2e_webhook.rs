//! End-to-end: push webhooks from a real CNCF Distribution registry, configured with a
//! `notifications` endpoint per controller as a user would configure theirs, to
//! `ocisync controller --webhook-listen`. Sources with a one-hour interval follow a push
//! within seconds; sources of other repositories are not touched; a request without the
//! token is refused and wakes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Which;
use common::controller::{Harness, Replica, TEST_LEASE, free_port, harness_with, push_file};
use ocisync::api::ArtifactSource;

const REQUESTED_AT: &str = "ocisync.dev/requested-at";
/// A push must reach the sources well within this (their interval is an hour).
const PUSH_DEADLINE: Duration = Duration::from_secs(15);

/// A Distribution registry process of the test's own; killed when dropped.
struct Registry {
    child: Child,
    host: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        // best effort: the test is over, perhaps failed, and a panic here would hide why
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A webhook receiver the registry notifies: its URL and the token it sends.
struct Endpoint {
    name: &'static str,
    url: String,
    token: String,
}

/// The registry's configuration: plain HTTP on loopback, one notifications endpoint per
/// receiver with its bearer token, short timeouts and backoff; blob pushes and pulls are
/// not sent (`ignore`), as the README advises.
fn registry_config(dir: &Path, port: u16, endpoints: &[Endpoint]) -> String {
    let mut config = format!(
        "version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: {secret}
notifications:
  endpoints:
",
        root = dir.join("data").display(),
        secret = common::unique(),
    );
    for e in endpoints {
        config.push_str(&format!(
            "    - name: {}
      url: {}
      headers:
        Authorization: [Bearer {}]
      timeout: 2s
      threshold: 3
      backoff: 250ms
      ignore:
        mediatypes: [application/octet-stream]
        actions: [pull]
",
            e.name, e.url, e.token
        ));
    }
    config
}

async fn start_registry(endpoints: &[Endpoint]) -> Registry {
    let dir = tempfile::tempdir().expect("registry dir");
    let port = free_port();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, registry_config(dir.path(), port, endpoints)).expect("config");
    let log = dir.path().join("registry.log");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"))
        .spawn()
        .expect(
            "start docker-registry (Debian's docker-registry package; e2e/testenv.sh installs it)",
        );
    let registry = Registry {
        child,
        host: format!("127.0.0.1:{port}"),
        log,
        _dir: dir,
    };
    let url = format!("http://{}/v2/", registry.host);
    let start = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status().is_success()
        {
            return registry;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the registry did not answer; log: {}",
            std::fs::read_to_string(&registry.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A controller on its own namespace with the webhook receiver on `port`.
async fn controller(port: u16, token_file: &Path) -> Harness {
    let listen = format!("127.0.0.1:{port}");
    harness_with(&[
        "--webhook-listen",
        &listen,
        "--webhook-token-file",
        token_file.to_str().expect("utf-8 path"),
    ])
    .await
}

fn digest(o: &ArtifactSource) -> Option<&str> {
    Some(o.status.as_ref()?.artifact.as_ref()?.digest.as_str())
}

fn requested_at(o: &ArtifactSource) -> Option<&str> {
    o.metadata
        .annotations
        .as_ref()?
        .get(REQUESTED_AT)
        .map(String::as_str)
}

fn handled(o: &ArtifactSource) -> Option<&str> {
    o.status.as_ref()?.last_handled_requested_at.as_deref()
}

/// The value of one sample in the controller's metrics (0 when absent).
async fn metric(h: &Harness, sample: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", h.base_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `sample` reaches `at_least` in the controller's metrics.
async fn wait_metric(h: &Harness, sample: &str, at_least: u64) {
    let start = Instant::now();
    while metric(h, sample).await < at_least {
        assert!(
            start.elapsed() < common::controller::DEADLINE,
            "{sample} did not reach {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const ACCEPTED: &str = r#"ocisync_webhook_requests_total{shape="distribution",result="accepted"}"#;

fn source_spec(registry: &Registry, repo: &str) -> serde_json::Value {
    serde_json::json!({"url": format!("oci://{}/{repo}", registry.host), "ref": {"tag": "1"},
        "interval": "1h", "insecure": true})
}

async fn post(url: &str, authorization: Option<&str>, body: &str) -> u16 {
    let client = reqwest::Client::new();
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    request.send().await.expect("post").status().as_u16()
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn distribution_notifications_wake_exactly_the_sources_of_the_pushed_repository() {
    ocisync::tls::install_crypto_provider();
    let secrets = tempfile::tempdir().expect("secrets");
    let token = format!("tok-{}", common::unique());
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let (port_a, port_b) = (free_port(), free_port());
    let a = controller(port_a, &token_file).await;
    let b = controller(port_b, &token_file).await;
    let endpoint = |name, port| Endpoint {
        name,
        url: format!("http://127.0.0.1:{port}/hook"),
        token: token.clone(),
    };
    let registry =
        start_registry(&[endpoint("ocisync-a", port_a), endpoint("ocisync-b", port_b)]).await;
    let work = tempfile::tempdir().expect("work");
    let (rules, other) = (
        format!("e2e/wh-rules-{}", common::unique()),
        format!("e2e/wh-other-{}", common::unique()),
    );
    let push = |repo: &str, text: &str| {
        push_file(
            &a.env,
            Which::Plain,
            work.path(),
            &format!("{}/{repo}:1", registry.host),
            "falco_rules.yaml",
            format!("# {}\n- rule: {text}\n", common::unique()).as_bytes(),
            &[],
        )
    };
    let d1 = push(&rules, "one");
    push(&other, "one");
    // every manifest push was delivered before any source exists, so none wakes anything:
    // `ocisync push` sends the manifest by digest, then by tag, and each is an event
    wait_metric(&a, ACCEPTED, 4).await;
    wait_metric(&b, ACCEPTED, 4).await;

    a.create("follow", source_spec(&registry, &rules)).await;
    a.create("other", source_spec(&registry, &other)).await;
    b.create("follow", source_spec(&registry, &rules)).await;
    for (h, name) in [(&a, "follow"), (&a, "other"), (&b, "follow")] {
        let o = h.wait(name, "Ready", |o| digest(o).is_some()).await;
        assert_eq!(
            requested_at(&o),
            None,
            "{name}: nothing asked for a check yet"
        );
    }
    let other_before = a.api.get("other").await.expect("other");

    // without the token, or with a wrong one: 401, nothing woken
    let hook = format!("http://127.0.0.1:{port_a}/hook");
    let generic = format!(r#"{{"repository": "{other}", "tag": "1"}}"#);
    assert_eq!(post(&hook, None, &generic).await, 401);
    let wrong = format!("Bearer {token}x");
    assert_eq!(post(&hook, Some(&wrong), &generic).await, 401);

    // a push of the followed tag reaches both namespaces' sources in seconds
    let pushed = Instant::now();
    let d2 = push(&rules, "two");
    assert_ne!(d1, d2);
    for h in [&a, &b] {
        let d2 = d2.clone();
        let o = h
            .wait("follow", "at the new push", move |o| {
                digest(o) == Some(d2.as_str())
            })
            .await;
        let elapsed = pushed.elapsed();
        assert!(elapsed < PUSH_DEADLINE, "{}: {elapsed:?}", h.ns);
        let asked = requested_at(&o).expect("requested-at set by the webhook");
        assert_eq!(handled(&o), Some(asked), "{}", h.ns);
        assert!(
            asked.parse::<jiff::Timestamp>().is_ok(),
            "RFC 3339: {asked}"
        );
    }
    // the other repository's source was not touched, by the push or by the refused requests
    let other_now = a.api.get("other").await.expect("other");
    assert_eq!(requested_at(&other_now), None);
    let last_check = |o: &ArtifactSource| o.status.as_ref().and_then(|s| s.last_check_time.clone());
    assert_eq!(
        last_check(&other_now),
        last_check(&other_before),
        "not checked again"
    );
    let unauthorized = r#"ocisync_webhook_requests_total{shape="unknown",result="unauthorized"}"#;
    assert_eq!(metric(&a, unauthorized).await, 2);

    // the same request with the token wakes it (so the refusals above were the token's)
    let right = format!("Bearer {token}");
    assert_eq!(post(&hook, Some(&right), &generic).await, 202);
    let o = a
        .wait("other", "checked on request", |o| {
            requested_at(o).is_some() && handled(o) == requested_at(o)
        })
        .await;
    assert_eq!(digest(&o), digest(&other_before));
    drop(registry);
    a.cleanup().await;
    b.cleanup().await;
}

/// Short Lease times, so the test does not wait on them.
/// A follower replica of `h`'s leader (same namespace and Lease) running the receiver.
fn follower(h: &Harness, store: &Path, hook_port: u16, token_file: &Path) -> Replica {
    let listen = format!("127.0.0.1:{hook_port}");
    let token = token_file.to_string_lossy().to_string();
    let hook = ["--webhook-listen", &listen, "--webhook-token-file", &token];
    h.replica("follower", store, &hook)
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_follower_replica_receives_the_webhook_and_the_leader_checks() {
    ocisync::tls::install_crypto_provider();
    let secrets = tempfile::tempdir().expect("secrets");
    let token = format!("tok-{}", common::unique());
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, &token).expect("token file");
    // the harness's process leads (it names the Lease namespace once it made it: restart it)
    let mut h = harness_with(&[]).await;
    let store_leader = tempfile::tempdir().expect("store");
    let ns = h.ns.clone();
    let mut flags = vec!["--leader-elect", "--lease-namespace", ns.as_str()];
    flags.extend(TEST_LEASE);
    let advertise = h.base_url.clone();
    flags.extend(["--advertise-url", advertise.as_str()]);
    h.restart_controller(store_leader.path(), &flags);
    let start = Instant::now();
    while h.lease_holder().await.is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = h.lease_holder().await;
    let hook_port = free_port();
    let store_follower = tempfile::tempdir().expect("store");
    let _follower = follower(&h, store_follower.path(), hook_port, &token_file);
    let registry = start_registry(&[Endpoint {
        name: "follower",
        url: format!("http://127.0.0.1:{hook_port}/hook"),
        token: token.clone(),
    }])
    .await;
    let work = tempfile::tempdir().expect("work");
    let repo = format!("e2e/wh-ha-{}", common::unique());
    let push = |text: &str| {
        push_file(
            &h.env,
            Which::Plain,
            work.path(),
            &format!("{}/{repo}:1", registry.host),
            "falco_rules.yaml",
            format!("# {}\n- rule: {text}\n", common::unique()).as_bytes(),
            &[],
        )
    };
    push("one");
    h.create("follow", source_spec(&registry, &repo)).await;
    h.wait("follow", "Ready", |o| digest(o).is_some()).await;

    let pushed = Instant::now();
    let d2 = push("two");
    let o = h
        .wait("follow", "at the new push", move |o| {
            digest(o) == Some(d2.as_str())
        })
        .await;
    assert!(pushed.elapsed() < PUSH_DEADLINE, "{:?}", pushed.elapsed());
    assert!(
        requested_at(&o).is_some(),
        "woken by the follower's receiver"
    );
    assert_eq!(h.lease_holder().await, leader, "the leader did not change");
    drop(registry);
    h.cleanup().await;
}
