//! Two controller processes with leader election on a Lease: only the leader writes, the
//! follower fills its store from the leader's artifact server (verified against status)
//! and serves every revision status names; SIGKILL of the leader hands the Lease over and
//! a push made during the failover is stored and served.

mod common;

use common::ready_at;

use std::time::{Duration, Instant};

use common::Which;
use common::controller::{TEST_LEASE, harness_with, push_file};

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
    flags.extend(TEST_LEASE);
    flags.extend(["--advertise-url", a_base.as_str()]);
    h.restart_controller(store_a.path(), &flags);
    eventually("A leading", Duration::from_secs(30), || async {
        h.lease_holder().await.is_some()
    })
    .await;
    let a_name = h.lease_holder().await.expect("holder");
    let store_b = tempfile::tempdir().expect("store b");
    let b = h.replica("controller-b", store_b.path(), &[]);
    let b_base = b.base.clone();

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
    assert_eq!(h.lease_holder().await.as_deref(), Some(a_name.as_str()));
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
        h.lease_holder().await.is_some_and(|n| n != a_name)
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
    drop(b);
    h.cleanup().await;
}
