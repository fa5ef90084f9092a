//! Two controller processes with leader election on a Lease: only the leader writes, the
//! follower fills its store from the leader's artifact server (verified against status)
//! and serves every revision status names; SIGKILL of the leader hands the Lease over and
//! a push made during the failover is stored and served.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Which;
use common::controller::{free_port, harness_with, push_file};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use ocisync::api::ArtifactSource;

const LEASE: [&str; 6] = [
    "--lease-duration",
    "4s",
    "--renew-deadline",
    "3s",
    "--lease-retry-period",
    "500ms",
];

fn ready_at(digest: &str) -> impl Fn(&ArtifactSource) -> bool + '_ {
    move |o| {
        o.status
            .as_ref()
            .and_then(|s| s.artifact.as_ref())
            .is_some_and(|a| a.digest == digest)
            && common::source_ready(o).is_some_and(|(status, _, _)| status == "True")
    }
}

/// Polls `check` until it holds, failing after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "not {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn status_code(url: &str) -> u16 {
    match reqwest::get(url).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    let lease = leases.get_opt("ocisync-controller").await.ok()??;
    lease.spec?.holder_identity
}

/// The second replica: same namespace and Lease, its own store, port and name.
fn second_replica(h: &common::controller::Harness, store: &std::path::Path) -> (Child, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(
        std::env::temp_dir().join(format!("ocisync-controller-{}-b.log", h.ns)),
    )
    .expect("log file");
    let child = common::ocisync()
        .args(["controller", "--namespace", &h.ns, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--artifact-base-url", &h.base_url, "--advertise-url", &base])
        .args(["--leader-elect", "--lease-namespace", &h.ns])
        .args(LEASE)
        .arg("--store-dir")
        .arg(store)
        .arg("--kubeconfig")
        .arg(&h.env.kubeconfig)
        .env("POD_NAME", format!("controller-{port}"))
        .env("RUST_LOG", "info,ocisync=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the second controller");
    (child, base)
}

/// A child process killed when the test ends, passed or failed.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Registry GETs of blobs of `repo` logged after line `from`.
fn blob_gets(h: &common::controller::Harness, repo: &str, from: usize) -> usize {
    let text = std::fs::read_to_string(h.env.log(Which::Plain)).expect("registry log");
    text.lines()
        .skip(from)
        .filter(|l| l.contains(&format!("\"GET /v2/{repo}/blobs/")))
        .count()
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_follower_serves_what_status_names_and_takes_over_when_the_leader_is_killed() {
    // the harness's own process is replica A; it leads first
    let mut h = harness_with(&[]).await;
    // the harness names the Lease namespace only after it made the namespace: restart A
    // with it (and short Lease times) on its own store
    let store_a = tempfile::tempdir().expect("store a");
    let a_base = h.base_url.clone();
    let ns = h.ns.clone();
    let mut flags = vec!["--leader-elect", "--lease-namespace", ns.as_str()];
    flags.extend(LEASE);
    flags.extend(["--advertise-url", a_base.as_str()]);
    h.restart_controller(store_a.path(), &flags);
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns);
    eventually("A leading", Duration::from_secs(30), || async {
        holder(&leases).await.is_some()
    })
    .await;
    let a_name = holder(&leases).await.expect("holder");
    let store_b = tempfile::tempdir().expect("store b");
    let (b, b_base) = second_replica(&h, store_b.path());
    let mut b = KillOnDrop(b);

    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "ha-rules");
    let log_from = common::log_lines(h.env.log(Which::Plain));
    let d1 = push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "r.yaml",
        b"- macro: one\n  condition: evt.num > 1\n",
        &[],
    );
    h.create("rules", serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "10s", "insecure": true})).await;
    let o = h.wait("rules", "Ready at v1", ready_at(&d1)).await;
    let url = o
        .status
        .and_then(|s| s.artifact)
        .and_then(|a| a.url)
        .expect("url");
    let path = url.trim_start_matches(&h.base_url).to_string();
    // the follower copies v1 from the leader, not from the registry
    eventually("v1 served by B", Duration::from_secs(30), || async {
        status_code(&format!("{b_base}{path}")).await == 200
    })
    .await;
    assert_eq!(status_code(&format!("{b_base}/readyz")).await, 200);
    assert_eq!(holder(&leases).await.as_deref(), Some(a_name.as_str()));
    let pulls_v1 = blob_gets(&h, &repo.name, log_from);
    let metrics = reqwest::get(format!("{b_base}/metrics"))
        .await
        .expect("B's metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(r#"ocisync_store_fills_total{from="peer",outcome="ok"} 1"#),
        "B copied v1 from the leader: {metrics}"
    );

    // SIGKILL the leader, then push v2 during the failover
    h.controller.kill().expect("kill A");
    h.controller.wait().expect("reap A");
    let killed = Instant::now();
    let log_v2 = common::log_lines(h.env.log(Which::Plain));
    let d2 = push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "r.yaml",
        b"- macro: two\n  condition: evt.num > 2\n",
        &[],
    );
    eventually("B leading", Duration::from_secs(30), || async {
        holder(&leases).await.is_some_and(|n| n != a_name)
    })
    .await;
    let took_over = killed.elapsed();
    let o = h.wait("rules", "Ready at v2", ready_at(&d2)).await;
    let stored = killed.elapsed();
    let url = o
        .status
        .and_then(|s| s.artifact)
        .and_then(|a| a.url)
        .expect("url");
    let path = url.trim_start_matches(&h.base_url).to_string();
    assert_eq!(
        status_code(&format!("{b_base}{path}")).await,
        200,
        "B serves v2"
    );
    let pulls_v2 = blob_gets(&h, &repo.name, log_v2);
    eprintln!(
        "failover: Lease taken {took_over:?} after SIGKILL, v2 stored {stored:?}; registry blob GETs v1 {pulls_v1}, v2 {pulls_v2}"
    );
    // one pull per revision (its config blob and its layer): the follower copied v1 from
    // the leader, B pulled v2 once
    assert_eq!((pulls_v1, pulls_v2), (2, 2));
    b.0.kill().ok();
    h.cleanup().await;
}
