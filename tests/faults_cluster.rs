//! Control-plane faults, played on the test environment's own processes: the API server
//! SIGKILLed for 30 s while a push happens, etcd SIGKILLed and restarted with its data. The
//! controller and an agent must reconnect by themselves, lose no update and apply none
//! twice, and converge within one interval plus the relist after the API server is back.
//!
//! These tests kill processes every other test uses, so they run one at a time (a lock),
//! and only where the environment's control plane is its own (`own_control_plane_` tests
//! are left out, said so, by `make test` when KUBECONFIG names another cluster).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Which;
use common::agent::{Agent, bundle_ready, delete_nodes, node, revision_of};
use common::controller::{Harness, TEST_LEASE, harness, push_file, wait_within};
use common::faults::Row;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use ocisync::api::RuleBundle;

/// One fault at a time: they take down what every test in this binary uses.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The interval of the sources here: the goal is convergence within one of them (plus the
/// relist) after the API server is back.
const INTERVAL: Duration = Duration::from_secs(10);

/// The longest a watch takes to relist after the API server is back: an agent's two tries
/// (the reconnect, then the relist its `410 Expired` asks for), each at most its backoff's
/// cap. With kube's 30 s cap this was a minute.
const RELIST: Duration = Duration::from_secs(2 * ocisync::backoff::AGENT_WATCH_MAX.as_secs());

/// `e2e/testenv.sh kill|start NAME` on the environment these tests were given.
fn testenv(verb: &str, name: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/testenv.sh");
    let out = std::process::Command::new(script)
        .args([verb, name])
        .output()
        .expect("run e2e/testenv.sh");
    assert!(
        out.status.success(),
        "e2e/testenv.sh {verb} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn own_control_plane() {
    assert_ne!(
        std::env::var("OCISYNC_TESTENV_EXTERNAL_CLUSTER").as_deref(),
        Ok("1"),
        "KUBECONFIG names another cluster: its control plane is not ours to kill (make test skips these)"
    );
}

/// A controller, one agent on a node of its own, a source with a 10 s interval and a bundle
/// into a ConfigMap and the node's rules directory, rolled out at `v1`.
struct Setup {
    h: Harness,
    agent: Agent,
    repo: String,
    work: tempfile::TempDir,
    node: String,
}

async fn setup(rules: &str) -> Setup {
    setup_on(harness().await, rules).await
}

async fn setup_on(h: Harness, rules: &str) -> Setup {
    let work = tempfile::tempdir().expect("tempdir");
    let node_name = format!("e2e-fault-{}", common::unique());
    node(&h, &node_name, serde_json::json!({"e2e-fault": node_name})).await;
    let agent = Agent::start(&h, &node_name, &h.base_url);
    let repo = h.env.repo(Which::Plain, "faults").to_string();
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "rules.yaml",
        rules.as_bytes(),
        &[],
    );
    h.create(
        "rules",
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"},
            "interval": format!("{}s", INTERVAL.as_secs()), "insecure": true}),
    )
    .await;
    let spec = serde_json::json!({"spec": {
        "sources": [{"sourceRef": {"name": "rules"}}],
        "configMap": {"name": "rules"},
        "nodeFiles": {"directory": "/etc/falco/rules.d",
            "nodeSelector": {"matchLabels": {"e2e-fault": node_name}}},
    }});
    h.apply::<RuleBundle>("falco", spec).await;
    let s = Setup {
        h,
        agent,
        repo,
        work,
        node: node_name,
    };
    s.converged(rules, Duration::from_secs(60)).await;
    s
}

impl Setup {
    fn push(&self, rules: &str) {
        push_file(
            &self.h.env,
            Which::Plain,
            self.work.path(),
            &format!("{}:1", self.repo),
            "rules.yaml",
            rules.as_bytes(),
            &[],
        );
    }

    /// Whether the ConfigMap and the node's file both hold `rules`.
    async fn holds(&self, rules: &str) -> bool {
        let maps: Api<ConfigMap> = Api::namespaced(self.h.client.clone(), &self.h.ns);
        let in_map = maps.get_opt("rules").await.ok().flatten().is_some_and(|m| {
            m.data
                .unwrap_or_default()
                .values()
                .any(|v| v.as_str() == rules)
        });
        let on_node = std::fs::read_to_string(self.agent.dir().join("rules.yaml"))
            .is_ok_and(|text| text == rules);
        in_map && on_node
    }

    /// Waits until the ConfigMap and the node hold `rules` and the bundle is Ready on its
    /// node; returns how long that took.
    async fn converged(&self, rules: &str, within: Duration) -> Duration {
        let start = Instant::now();
        while !self.holds(rules).await {
            assert!(
                start.elapsed() < within,
                "ConfigMap and node did not hold the new rules within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = start.elapsed();
        let bundles: Api<RuleBundle> = Api::namespaced(self.h.client.clone(), &self.h.ns);
        let ready = wait_within(bundles, "falco", within, |b: Option<&RuleBundle>| {
            b.is_some_and(bundle_ready)
        })
        .await;
        assert!(ready.is_some(), "bundle Ready within {within:?}");
        took
    }

    /// How many times the agent wrote revision `revision` (its log's "applied" lines).
    fn applied(&self, revision: &str) -> usize {
        self.agent
            .log_text()
            .lines()
            .filter(|l| l.contains("applied") && l.contains(revision))
            .count()
    }

    async fn cleanup(self) {
        delete_nodes(&self.h, &[&self.node]).await;
        self.h.cleanup().await;
    }

    async fn revision(&self) -> String {
        let bundles: Api<RuleBundle> = Api::namespaced(self.h.client.clone(), &self.h.ns);
        let b = bundles.get("falco").await.expect("bundle");
        revision_of(&b).expect("revision")
    }
}

/// Registry GETs of `repo`'s manifests, and of blobs not fetched before, logged after line
/// `from`: the blobs count the pulls of a new revision, whatever else fetched the old one
/// late (a second replica filling its store from the registry when it started).
fn registry_gets(s: &Setup, from: usize) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(s.h.env.log(Which::Plain)).unwrap_or_default();
    let name = s.repo.split_once('/').map_or("", |(_, n)| n);
    let manifests = format!("\"GET /v2/{name}/manifests/");
    let blobs = format!("\"GET /v2/{name}/blobs/");
    let digest = |line: &str| {
        let rest = &line[line.find(&blobs)? + blobs.len()..];
        Some(rest.split([' ', '"']).next()?.to_string())
    };
    let seen: std::collections::HashSet<String> =
        text.lines().take(from).filter_map(digest).collect();
    let after = || text.lines().skip(from);
    (
        after().filter(|l| l.contains(&manifests)).count(),
        after()
            .filter_map(digest)
            .filter(|d| !seen.contains(d))
            .collect(),
    )
}

/// Starts a killed process again if the test ends (a failed assertion) before it did: the
/// environment is shared by every later test.
struct Revive(&'static str);

impl Drop for Revive {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/testenv.sh");
            let _ = std::process::Command::new(script)
                .args(["start", self.0])
                .status();
        }
    }
}

/// Kills `process`, pushes `v2` a few seconds into the outage, starts it again after
/// `outage`, and measures the time from its return to convergence.
async fn outage_with_a_push(
    s: &Setup,
    process: &'static str,
    outage: Duration,
    v2: &str,
) -> Duration {
    let revive = Revive(process);
    testenv("kill", process);
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.push(v2);
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    testenv("start", process);
    std::mem::forget(revive);
    s.converged(v2, Duration::from_secs(120)).await
}

/// Kills `process` for `outage` with a push 5 s in, then checks the promises: one pull of
/// the pushed revision, written once on the node, everything converged within `goal` of the
/// process's return. Records `row` with what was seen after `before`.
async fn push_through(
    s: &Setup,
    process: &'static str,
    outage: Duration,
    goal: Duration,
    row: Row,
    before: &str,
) {
    let r1 = s.revision().await;
    let v2 = format!(
        "- rule: pushed while {process} was down {}\n",
        common::unique()
    );
    let from = common::log_lines(s.h.env.log(Which::Plain));
    let took = outage_with_a_push(s, process, outage, &v2).await;
    let (manifests, new_blobs) = registry_gets(s, from);
    let distinct: std::collections::BTreeSet<&String> = new_blobs.iter().collect();
    let blobs = new_blobs.len();
    assert!(
        (1..=2).contains(&blobs) && distinct.len() == blobs,
        "one pull of the new revision (its config and layer once each), not {new_blobs:?}"
    );
    let r2 = s.revision().await;
    assert_ne!(r1, r2, "a new revision");
    assert_eq!(
        s.applied(&r2),
        1,
        "the new revision written once on the node"
    );
    assert!(
        took <= goal,
        "converged {took:?} after {process} returned; goal: {goal:?}"
    );
    row.outcome(format!("{before}ConfigMap and node file at the pushed revision {:.1} s after {process} was back (goal {} s); written once on the node", took.as_secs_f64(), goal.as_secs()))
        .requests(format!("registry: manifest GET {manifests}, GETs of the new revision's blobs {blobs} from the kill to convergence"))
        .recovered_after(took)
        .record();
}

fn rules_v1() -> String {
    format!("- rule: before {}\n", common::unique())
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn own_control_plane_api_server_killed_for_30s_during_a_push_converges_within_an_interval() {
    own_control_plane();
    let _one = SERIAL.lock().await;
    let s = setup(&rules_v1()).await;
    let row = Row::new("control-plane", "kube-apiserver-sigkill-30s")
        .injected("kube-apiserver SIGKILLed for 30 s; a push 5 s into the outage; 10 s interval");
    let before = "controller and agent reconnected by themselves; ";
    push_through(
        &s,
        "kube-apiserver",
        Duration::from_secs(30),
        INTERVAL + RELIST,
        row,
        before,
    )
    .await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn own_control_plane_etcd_killed_and_restarted_with_its_data_converges_within_an_interval() {
    own_control_plane();
    let _one = SERIAL.lock().await;
    let s = setup(&rules_v1()).await;
    let row = Row::new("control-plane", "etcd-sigkill-20s").injected(
        "etcd SIGKILLed for 20 s (the API server up, answering errors); a push 5 s in; data kept",
    );
    push_through(
        &s,
        "etcd",
        Duration::from_secs(20),
        INTERVAL + RELIST,
        row,
        "",
    )
    .await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn own_control_plane_api_server_killed_under_two_replicas_with_a_lease_converges() {
    own_control_plane();
    let _one = SERIAL.lock().await;
    // replica A (the harness's process, restarted with leader election) and replica B
    let mut h = harness().await;
    let store_a = tempfile::tempdir().expect("store a");
    let (ns, base) = (h.ns.clone(), h.base_url.clone());
    let mut flags = vec!["--leader-elect", "--lease-namespace", ns.as_str()];
    flags.extend(TEST_LEASE);
    flags.extend(["--advertise-url", base.as_str()]);
    h.restart_controller(store_a.path(), &flags);
    let store_b = tempfile::tempdir().expect("store b");
    let _b = h.replica("controller-b", store_b.path(), &[]);
    let s = setup_on(h, &rules_v1()).await;
    // the Lease (4 s here) ran out during the outage: a leader is elected again first
    let goal = INTERVAL + RELIST + Duration::from_secs(4);
    let row = Row::new("control-plane", "kube-apiserver-sigkill-30s-two-replicas")
        .injected("kube-apiserver SIGKILLed for 30 s under two replicas with a 4 s Lease; a push 5 s into the outage; 10 s interval");
    let before = "a leader elected again after the outage; ";
    push_through(
        &s,
        "kube-apiserver",
        Duration::from_secs(30),
        goal,
        row,
        before,
    )
    .await;
    assert!(s.h.lease_holder().await.is_some(), "a leader");
    s.cleanup().await;
}
