//! End-to-end: the agent in a shared cluster, each hostile party played by the test with
//! real agent and controller processes against the real API server and registry. A
//! RuleBundle author aims at another bundle's data link, at a prefix of another bundle's
//! id, at a symbolic link planted under an allowed directory, at a directory granted to
//! another namespace, and at the node's disk; a bundle is deleted and created again under
//! the same name. Each time: the outcome on disk and in the NodeReport, nothing outside
//! touched, the agent alive with its memory bounded.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Which;
use common::agent::*;
use common::controller::{Harness, harness, push_files, wait_on};
use kube::api::{Api, DeleteParams};
use ocisync::api::{NodeReport, RuleBundle};

/// The agent's peak resident memory (VmHWM), in KiB.
fn peak_kib(agent: &mut Agent) -> u64 {
    memory_kib(agent, "VmHWM:")
}

/// A memory figure of the agent's (`VmHWM:`, `VmRSS:`), in KiB.
fn memory_kib(agent: &mut Agent, field: &str) -> u64 {
    let pid = agent.child.as_ref().map(|c| c.id()).expect("running");
    let alive = agent
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().ok().flatten().is_none());
    assert!(alive, "the agent is alive; log:\n{}", agent.log_text());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The NodeReport entry of bundle `name` in namespace `ns`: (uid, reason, message).
fn entry_of(r: Option<&NodeReport>, ns: &str, name: &str) -> Option<(String, String, String)> {
    let e = r?
        .spec
        .bundles
        .iter()
        .find(|b| b.namespace == ns && b.name == name)?;
    Some((e.uid.clone(), e.reason.to_string(), e.message.clone()))
}

async fn wait_reason(
    node: &str,
    h: &Harness,
    ns: &str,
    bundle: &str,
    reason: &'static str,
) -> String {
    let reports: Api<NodeReport> = Api::all(h.client.clone());
    let (ns2, b2) = (ns.to_string(), bundle.to_string());
    let r = wait_on(reports, node, reason, move |r| {
        entry_of(r, &ns2, &b2).is_some_and(|e| e.1 == reason)
    })
    .await;
    entry_of(r.as_ref(), ns, bundle)
        .map(|e| e.2)
        .unwrap_or_default()
}

/// Pushes `files` as tag 1 of a new repository and makes source `rules` of it, Ready; the
/// repository.
async fn rules_source(h: &Harness, work: &Path, name: &str, files: &[(&str, &[u8])]) -> String {
    let repo = h.env.repo(Which::Plain, name);
    let target = format!("{repo}:1");
    push_files(
        &h.env,
        Which::Plain,
        work,
        &target,
        "falco-rules",
        files,
        &[],
    );
    source(h, "rules", &repo).await;
    repo.to_string()
}

const A: &str = "a.yaml";
const A1: &str = "- list: a\n  items: [1]\n";
const B: &str = "b.yaml";
const B1: &str = "- list: b\n  items: [2]\n";

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    visible_files(dir)
}

fn want(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_bundle_cannot_reach_another_bundles_files_a_planted_link_or_the_hosts_files() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let run = common::unique();
    let node_name = format!("e2e-node-{run}-t");
    node(&h, &node_name, serde_json::json!({"e2e-run": run})).await;
    let mut agent = Agent::start(&h, &node_name, &h.base_url);
    let falco = agent.root.path().join("etc/falco");
    std::fs::write(falco.join("falco.yaml"), "the host's own\n").expect("host file");
    let outside = agent.root.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::os::unix::fs::symlink(&outside, falco.join("escape")).expect("planted link");

    let repo = h.env.repo(Which::Plain, "tenancy");
    let push = |files: &[(&str, &str)]| {
        let files: Vec<(&str, &[u8])> = files.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        push_files(
            &h.env,
            Which::Plain,
            work.path(),
            &format!("{repo}:1"),
            "falco-rules",
            &files,
            &[],
        );
    };
    push(&[
        (A, A1),
        (B, B1),
        ("falco.yaml", "- list: evil\n  items: []\n"),
    ]);
    source(&h, "rules", &repo).await;
    let selector = serde_json::json!({"matchLabels": {"e2e-run": run}});
    let bundle = |include: &[&str], dir: &str| node_bundle(include, dir, selector.clone());

    // B in /etc/falco; C aims at B's data link; D and D.E share a directory; E follows a
    // link planted under the allowed directory.
    h.apply::<RuleBundle>("b", bundle(&["a.yaml"], "/etc/falco"))
        .await;
    let into_b = format!("/etc/falco/..ocisync.{}.b", h.ns);
    h.apply::<RuleBundle>("c", bundle(&["b.yaml"], &into_b))
        .await;
    h.apply::<RuleBundle>("d", bundle(&["a.yaml"], "/etc/falco/shared"))
        .await;
    h.apply::<RuleBundle>("d.e", bundle(&["b.yaml"], "/etc/falco/shared"))
        .await;
    h.apply::<RuleBundle>("e", bundle(&["a.yaml"], "/etc/falco/escape/x"))
        .await;
    rolled_out(&h, "b", "Ready", (1, 1, 0)).await;
    rolled_out(&h, "d", "Ready", (1, 1, 0)).await;
    rolled_out(&h, "d.e", "Ready", (1, 1, 0)).await;
    let m = wait_reason(&node_name, &h, &h.ns, "c", "InvalidPath").await;
    assert!(m.contains(".."), "{m}");
    let m = wait_reason(&node_name, &h, &h.ns, "e", "InvalidPath").await;
    assert!(m.contains("symbolic link"), "{m}");
    assert!(
        std::fs::read_dir(&outside)
            .expect("outside")
            .next()
            .is_none(),
        "nothing written through the planted link"
    );
    let b_data = falco.join(format!("..ocisync.{}.b", h.ns));
    let in_b: Vec<String> = std::fs::read_dir(&b_data)
        .expect("B's data")
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    assert_eq!(in_b.len(), 2, "only B's file and record: {in_b:?}");

    // B's next revision ships falco.yaml: the host's file is not B's, so it stays
    h.apply::<RuleBundle>("b", bundle(&["a.yaml", "falco.yaml"], "/etc/falco"))
        .await;
    let m = wait_reason(&node_name, &h, &h.ns, "b", "FileConflict").await;
    assert!(m.contains("falco.yaml"), "{m}");
    assert_eq!(
        std::fs::read(falco.join("falco.yaml")).expect("host file"),
        b"the host's own\n"
    );

    // D removed: D.E, whose id has D's as a prefix, keeps its files and its Applied entry
    let api: Api<RuleBundle> = Api::namespaced(h.client.clone(), &h.ns);
    api.delete("d", &DeleteParams::default())
        .await
        .expect("delete d");
    let shared = falco.join("shared");
    eventually("D's files removed, D.E's kept", || {
        let f = files(&shared);
        (f == want(&[(B, B1)]))
            .then_some(())
            .ok_or(format!("{f:?}"))
    })
    .await;
    rolled_out(&h, "d.e", "still Ready", (1, 1, 0)).await;

    let peak = peak_kib(&mut agent);
    eprintln!("agent VmHWM: {peak} KiB");
    assert!(peak < 64 * 1024, "agent peak RSS {peak} KiB");
    delete_nodes(&h, &[&node_name]).await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_bundle_deleted_and_created_again_ends_with_the_new_files_also_across_a_restart() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let run = common::unique();
    let node_name = format!("e2e-node-{run}-r");
    node(&h, &node_name, serde_json::json!({"e2e-run": run})).await;
    let mut agent = Agent::start(&h, &node_name, &h.base_url);
    let files: [(&str, &[u8]); 2] = [(A, A1.as_bytes()), (B, B1.as_bytes())];
    rules_source(&h, work.path(), "recreate", &files).await;
    let selector = serde_json::json!({"matchLabels": {"e2e-run": run}});
    let api: Api<RuleBundle> = Api::namespaced(h.client.clone(), &h.ns);
    let reports: Api<NodeReport> = Api::all(h.client.clone());
    let applied_as = |uid: String| {
        let ns = h.ns.clone();
        move |r: Option<&NodeReport>| {
            entry_of(r, &ns, "r").is_some_and(|e| e.0 == uid && e.1 == "Applied")
        }
    };
    let create = |include: &'static str| {
        let api = api.clone();
        let body = node_bundle(&[include], "/etc/falco/rules.d", selector.clone());
        let ns = h.ns.clone();
        async move {
            let mut body = body;
            body["apiVersion"] = "ocisync.dev/v1alpha1".into();
            body["kind"] = "RuleBundle".into();
            body["metadata"] = serde_json::json!({"name": "r", "namespace": ns});
            let b: RuleBundle = serde_json::from_value(body).expect("bundle");
            let mut last = None;
            // the old object may still be going (its deletion is asynchronous)
            for _ in 0..100 {
                match api.create(&Default::default(), &b).await {
                    Ok(b) => return b.metadata.uid.expect("uid"),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("create: {last:?}");
        }
    };
    let uid1 = create("a.yaml").await;
    wait_on(
        reports.clone(),
        &node_name,
        "Applied (first)",
        applied_as(uid1),
    )
    .await;
    assert_eq!(agent.files(), want(&[(A, A1)]));

    // deleted and created again at once, with other files
    api.delete("r", &DeleteParams::default())
        .await
        .expect("delete");
    let uid2 = create("b.yaml").await;
    wait_on(
        reports.clone(),
        &node_name,
        "Applied (second)",
        applied_as(uid2),
    )
    .await;
    assert_eq!(agent.files(), want(&[(B, B1)]));

    // and again while the agent is down
    agent.kill();
    api.delete("r", &DeleteParams::default())
        .await
        .expect("delete");
    let uid3 = create("a.yaml").await;
    agent.spawn();
    wait_on(
        reports.clone(),
        &node_name,
        "Applied (third)",
        applied_as(uid3),
    )
    .await;
    eventually("only the new object's files", || {
        let f = agent.files();
        (f == want(&[(A, A1)]))
            .then_some(())
            .ok_or(format!("{f:?}"))
    })
    .await;
    peak_kib(&mut agent);
    delete_nodes(&h, &[&node_name]).await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn directories_are_written_only_by_granted_namespaces_and_within_budgets() {
    let h = harness().await;
    let other = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let run = common::unique();
    let node_name = format!("e2e-node-{run}-g");
    node(&h, &node_name, serde_json::json!({"e2e-run": run})).await;
    let grant = format!("--allowed-dir=/etc/falco={}", h.ns);
    let mut agent = Agent::start_with(
        &h,
        &node_name,
        &h.base_url,
        &[&grant, "--max-bundle-bytes=8Ki"],
    );
    let small: &[u8] = b"- list: small\n";
    let big = format!("- list: big\n  items: [{}]\n", "x,".repeat(8192));
    let repo = rules_source(
        &h,
        work.path(),
        "grants",
        &[("a.yaml", small), ("big.yaml", big.as_bytes())],
    )
    .await;
    source(&other, "rules", &repo).await;
    let selector = serde_json::json!({"matchLabels": {"e2e-run": run}});
    let spec = |include: &[&str]| node_bundle(include, "/etc/falco/rules.d", selector.clone());

    // the granted namespace writes; the other one is refused on the node, nothing written
    h.apply::<RuleBundle>("mine", spec(&["a.yaml"])).await;
    rolled_out(&h, "mine", "Ready", (1, 1, 0)).await;
    other
        .apply::<RuleBundle>("theirs", spec(&["big.yaml"]))
        .await;
    let b = other
        .wait_for::<RuleBundle>("theirs", "NodeFailed", |b| {
            b.is_some_and(|b| nodes_of(b) == Some((1, 0, 1)))
        })
        .await
        .expect("bundle");
    let message: String = b
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().map(|c| c.message.clone()))
        .collect();
    assert!(message.contains("DirectoryNotAllowed"), "{message}");
    let m = wait_reason(&node_name, &h, &other.ns, "theirs", "DirectoryNotAllowed").await;
    assert!(
        m.contains(&other.ns) && m.contains("/etc/falco/rules.d"),
        "{m}"
    );
    assert_eq!(agent.files(), want(&[("a.yaml", "- list: small\n")]));

    // over the per-bundle budget: refused before any fetch, the last good files stay
    h.apply::<RuleBundle>("mine", spec(&["a.yaml", "big.yaml"]))
        .await;
    let m = wait_reason(&node_name, &h, &h.ns, "mine", "QuotaExceeded").await;
    assert!(m.contains("per-bundle budget of 8192"), "{m}");
    assert_eq!(agent.files(), want(&[("a.yaml", "- list: small\n")]));
    peak_kib(&mut agent);
    delete_nodes(&h, &[&node_name]).await;
    other.cleanup().await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_bundle_that_moves_leaves_nothing_behind_even_after_a_failed_move() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let run = common::unique();
    let node_name = format!("e2e-node-{run}-m");
    node(&h, &node_name, serde_json::json!({"e2e-run": run})).await;
    let mut agent = Agent::start(&h, &node_name, &h.base_url);
    let falco = agent.root.path().join("etc/falco");
    let outside = agent.root.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::os::unix::fs::symlink(&outside, falco.join("escape")).expect("planted link");
    let pushed: [(&str, &[u8]); 1] = [(A, A1.as_bytes())];
    rules_source(&h, work.path(), "moves", &pushed).await;
    let selector = serde_json::json!({"matchLabels": {"e2e-run": run}});
    let to = |dir: &str| node_bundle(&[A], dir, selector.clone());
    h.apply::<RuleBundle>("m", to("/etc/falco/rules.d")).await;
    rolled_out(&h, "m", "Ready in rules.d", (1, 1, 0)).await;
    // a move that fails (a link on the way), then one that works
    h.apply::<RuleBundle>("m", to("/etc/falco/escape/x")).await;
    wait_reason(&node_name, &h, &h.ns, "m", "InvalidPath").await;
    assert_eq!(files(&falco.join("rules.d")), want(&[(A, A1)]), "kept");
    h.apply::<RuleBundle>("m", to("/etc/falco/moved")).await;
    rolled_out(&h, "m", "Ready in moved", (1, 1, 0)).await;
    assert_eq!(files(&falco.join("moved")), want(&[(A, A1)]));
    eventually("rules.d cleaned once moved holds", || {
        let left: Vec<String> = std::fs::read_dir(falco.join("rules.d"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    })
    .await;
    assert!(
        std::fs::read_dir(&outside)
            .expect("outside")
            .next()
            .is_none(),
        "nothing written through the link"
    );
    peak_kib(&mut agent);
    delete_nodes(&h, &[&node_name]).await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn bundles_aimed_at_other_nodes_are_kept_without_files_and_arrive_after_a_relabel() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let run = common::unique();
    let node_name = format!("e2e-node-{run}-s");
    node(&h, &node_name, serde_json::json!({"e2e-run": run})).await;
    let contents: Vec<(String, String)> = (0..1000)
        .map(|i| {
            (
                format!("r{i:04}.yaml"),
                format!("- list: l{i}\n  items: []\n"),
            )
        })
        .collect();
    let files: Vec<(&str, &[u8])> = contents
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    rules_source(&h, work.path(), "many-files", &files).await;
    // 30 bundles of 1,000 files each, selecting no node; one small bundle for this node
    let nobody = serde_json::json!({"matchLabels": {"e2e-run": "nobody"}});
    for i in 0..30 {
        h.apply::<RuleBundle>(
            &format!("big-{i}"),
            node_bundle(&[], "/etc/falco/rules.d", nobody.clone()),
        )
        .await;
    }
    let selector = serde_json::json!({"matchLabels": {"e2e-run": run}});
    h.apply::<RuleBundle>(
        "mine",
        node_bundle(&["r0000.yaml"], "/etc/falco/rules.d", selector),
    )
    .await;
    rolled_out(&h, "big-29", "planned", (0, 0, 0)).await;
    let mut agent = Agent::start(&h, &node_name, &h.base_url);
    rolled_out(&h, "mine", "Ready", (1, 1, 0)).await;
    let status_bytes: usize = {
        let api: Api<RuleBundle> = Api::namespaced(h.client.clone(), &h.ns);
        let list = api.list(&Default::default()).await.expect("list");
        list.items
            .iter()
            .map(|b| serde_json::to_vec(&b.status).map_or(0, |v| v.len()))
            .sum()
    };
    // Within the chart's 64 MiB limit. (At this size, 4 MB of other bundles' status,
    // trimming is not visible in RSS: the watch's first list is decoded whole before it is
    // trimmed, and the allocator keeps what it freed; see the closing note.)
    let peak = peak_kib(&mut agent);
    let rss = memory_kib(&mut agent, "VmRSS:");
    eprintln!("bundles' status: {status_bytes} bytes; agent VmRSS {rss} KiB, VmHWM {peak} KiB");
    assert!(
        status_bytes > 3 << 20,
        "the bundles are large: {status_bytes}"
    );
    assert!(peak < 64 * 1024, "agent peak RSS {peak} KiB");
    // a relabel makes one of them select this node: its files arrive
    relabel(&h, &node_name, serde_json::json!({"e2e-run": "nobody"})).await;
    eventually("a big bundle's files on the node after the relabel", || {
        let n = agent.files().len();
        (n == 1000).then_some(()).ok_or(format!("{n} files"))
    })
    .await;
    delete_nodes(&h, &[&node_name]).await;
    h.cleanup().await;
}
