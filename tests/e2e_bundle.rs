//! End-to-end: RuleBundles become ConfigMaps, against the real API server (with its
//! garbage collector) and a real registry. Each test runs its own controller and waits on
//! status with a deadline.

mod common;

use std::time::Instant;

use common::Which;
use common::controller::{Harness, harness, push_file, push_files};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use ocisync::api::{ArtifactSource, RuleBundle};

const REVISION: &str = "ocisync.dev/revision";

fn ready_reason(b: &RuleBundle) -> Option<(String, String, String)> {
    common::bundle_ready(b)
}

fn is_ready(b: Option<&RuleBundle>) -> bool {
    b.is_some_and(|b| {
        ready_reason(b).is_some_and(|(s, r, _)| s == "True" && r == "Succeeded")
            && b.status.as_ref().and_then(|s| s.observed_generation) == b.metadata.generation
    })
}

/// Ready=False with `reason`, for the current generation.
fn failed_with(reason: &'static str) -> impl Fn(Option<&RuleBundle>) -> bool + Send + 'static {
    move |b| {
        b.is_some_and(|b| {
            ready_reason(b).is_some_and(|(s, r, _)| s == "False" && r == reason)
                && b.status.as_ref().and_then(|s| s.observed_generation) == b.metadata.generation
        })
    }
}

fn source_ready(s: Option<&ArtifactSource>) -> bool {
    s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn message(b: &RuleBundle) -> String {
    ready_reason(b).map(|(_, _, m)| m).unwrap_or_default()
}

fn revision(cm: &ConfigMap) -> Option<String> {
    cm.metadata.annotations.as_ref()?.get(REVISION).cloned()
}

async fn source(h: &Harness, name: &str, repo: &impl std::fmt::Display, tag: &str) {
    h.create(
        name,
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": tag}, "interval": "10s", "insecure": true}),
    )
    .await;
    h.wait_for::<ArtifactSource>(name, "Ready", source_ready)
        .await;
}

async fn bundle(h: &Harness, name: &str, spec: serde_json::Value) -> RuleBundle {
    h.apply::<RuleBundle>(name, serde_json::json!({ "spec": spec }))
        .await
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn falco_rules_become_a_configmap_and_follow_new_pushes() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "bundle-falco");
    // bytes that a careless copy would change: CRLF, trailing spaces, UTF-8, no final newline
    let v1 = format!(
        "# {}\r\n- rule: ünïcode shell  \n  condition: spawned_process\n- macro: m\n  condition: x",
        common::unique()
    );
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:3"),
        "falco_rules.yaml",
        v1.as_bytes(),
        &[],
    );
    source(&h, "falco-rules", &repo, "3").await;
    bundle(
        &h,
        "falco",
        serde_json::json!({
            "sources": [{"sourceRef": {"name": "falco-rules"}, "include": ["*.yaml"]}],
            "configMap": {"labels": {"team": "security"}, "annotations": {"note": "x"}},
        }),
    )
    .await;

    // kubectl wait works on the Ready condition
    let out = std::process::Command::new("kubectl")
        .args([
            "wait",
            "--for=condition=Ready",
            "rulebundle/falco",
            "--timeout=60s",
            "-n",
            &h.ns,
        ])
        .env("KUBECONFIG", &h.env.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = h
        .wait_for::<RuleBundle>("falco", "Ready", is_ready)
        .await
        .expect("bundle");
    let status = b.status.clone().expect("status");
    assert_eq!(status.files.len(), 1);
    assert_eq!(status.files[0].path, "falco_rules.yaml");
    assert_eq!(status.files[0].source, "falco-rules");
    assert_eq!(
        status.config_map.as_ref().map(|c| c.name.as_str()),
        Some("falco")
    );
    assert!(status.sources[0].revision.starts_with("3@sha256:"));

    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let cm = cms.get("falco").await.expect("configmap");
    assert_eq!(
        cm.data.as_ref().expect("data")["falco_rules.yaml"],
        v1,
        "byte for byte"
    );
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("ocisync")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("security"));
    assert_eq!(revision(&cm), status.revision);
    let owner = &cm.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("RuleBundle", "falco")
    );
    assert_eq!(owner.controller, Some(true));
    let managers: Vec<String> = cm
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["ocisync"], "one field manager");

    // a new push to the tag reaches the ConfigMap without any request: measure it
    let v2 = format!("# {}\n- list: shells\n  items: [sh]\n", common::unique());
    let pushed = Instant::now();
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:3"),
        "falco_rules.yaml",
        v2.as_bytes(),
        &[],
    );
    let expect = v2.clone();
    let cm2 = h
        .wait_for::<ConfigMap>("falco", "updated to the new push", move |cm| {
            cm.and_then(|c| c.data.as_ref())
                .and_then(|d| d.get("falco_rules.yaml"))
                == Some(&expect)
        })
        .await
        .expect("configmap");
    eprintln!(
        "propagation: registry push to updated ConfigMap in {:.2} s (source interval 10 s)",
        pushed.elapsed().as_secs_f64()
    );
    assert_ne!(
        revision(&cm2),
        revision(&cm),
        "the revision annotation moves"
    );
    let b = h
        .wait_for::<RuleBundle>("falco", "Ready", is_ready)
        .await
        .expect("bundle");
    assert_eq!(b.status.and_then(|s| s.revision), revision(&cm2));

    // an edit by someone else is put back
    let edit = serde_json::json!({"data": {"falco_rules.yaml": "- rule: tampered\n"}});
    cms.patch("falco", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("edit");
    let expect = v2.clone();
    h.wait_for::<ConfigMap>("falco", "repaired", move |cm| {
        cm.and_then(|c| c.data.as_ref())
            .and_then(|d| d.get("falco_rules.yaml"))
            == Some(&expect)
    })
    .await;

    // deleting the bundle deletes the ConfigMap through garbage collection
    let bundles: Api<RuleBundle> = Api::namespaced(h.client.clone(), &h.ns);
    bundles
        .delete("falco", &DeleteParams::background())
        .await
        .expect("delete");
    h.wait_for::<ConfigMap>("falco", "garbage collected", |cm| cm.is_none())
        .await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn two_sources_conflict_until_an_include_glob_separates_them() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let (ra, rb) = (
        h.env.repo(Which::Plain, "bundle-a"),
        h.env.repo(Which::Plain, "bundle-b"),
    );
    let a = format!("- rule: a{}\n", common::unique());
    let b_rules = format!("- rule: b{}\n", common::unique());
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{ra}:1"),
        "falco_rules.yaml",
        a.as_bytes(),
        &[],
    );
    push_files(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{rb}:1"),
        "generic",
        &[
            ("falco_rules.yaml", b_rules.as_bytes()),
            ("k8s_audit.yaml", b"- macro: k\n"),
            ("blob.bin", &binary),
        ],
        &[],
    );
    source(&h, "a", &ra, "1").await;
    source(&h, "b", &rb, "1").await;
    h.apply::<RuleBundle>("both", serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "a"}}, {"sourceRef": {"name": "b"}}], "configMap": {"name": "rules"}}})).await;
    let b = h
        .wait_for::<RuleBundle>("both", "FileConflict", failed_with("FileConflict"))
        .await
        .expect("bundle");
    let m = message(&b);
    assert!(
        m.contains("ArtifactSource a") && m.contains("ArtifactSource b"),
        "{m}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    assert!(
        cms.get_opt("rules").await.expect("get").is_none(),
        "nothing written on a conflict"
    );

    // a glob that matches nothing is named
    h.apply::<RuleBundle>("both", serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "a"}}, {"sourceRef": {"name": "b"}, "include": ["*.json"]}], "configMap": {"name": "rules"}}})).await;
    let b = h
        .wait_for::<RuleBundle>("both", "NoFilesSelected", failed_with("NoFilesSelected"))
        .await
        .expect("bundle");
    assert!(message(&b).contains("*.json"), "{}", message(&b));

    h.apply::<RuleBundle>("both", serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "a"}}, {"sourceRef": {"name": "b"}, "include": ["k8s_*", "*.bin"]}], "configMap": {"name": "rules"}}})).await;
    h.wait_for::<RuleBundle>("both", "Ready", is_ready).await;
    let cm = cms.get("rules").await.expect("configmap");
    let data = cm.data.clone().unwrap_or_default();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["falco_rules.yaml", "k8s_audit.yaml"]
    );
    assert_eq!(data["falco_rules.yaml"], a);
    assert_eq!(
        cm.binary_data.as_ref().expect("binaryData")["blob.bin"].0,
        binary
    );

    // removing the ConfigMap target deletes the ConfigMap it made
    h.apply::<RuleBundle>(
        "both",
        serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "a"}}]}}),
    )
    .await;
    h.wait_for::<ConfigMap>("rules", "deleted", |cm| cm.is_none())
        .await;
    let b = h
        .wait_for::<RuleBundle>("both", "Ready", is_ready)
        .await
        .expect("bundle");
    assert!(b.status.and_then(|s| s.config_map).is_none());
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn invalid_content_and_oversize_keep_the_last_good_configmap() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "bundle-bad");
    let good = format!("- rule: good{}\n", common::unique());
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco_rules.yaml",
        good.as_bytes(),
        &[],
    );
    source(&h, "rules", &repo, "1").await;
    bundle(
        &h,
        "falco",
        serde_json::json!({"sources": [{"sourceRef": {"name": "rules"}}], "configMap": {}}),
    )
    .await;
    h.wait_for::<RuleBundle>("falco", "Ready", is_ready).await;

    // not Falco rules: a mapping with an unknown item key
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco_rules.yaml",
        b"- rule: ok\n- nonsense: 1\n",
        &[],
    );
    let b = h
        .wait_for::<RuleBundle>("falco", "InvalidContent", failed_with("InvalidContent"))
        .await
        .expect("bundle");
    let m = message(&b);
    assert!(
        m.contains("falco_rules.yaml") && m.contains("item 2"),
        "{m}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let cm = cms.get("falco").await.expect("configmap");
    assert_eq!(
        cm.data.unwrap_or_default()["falco_rules.yaml"],
        good,
        "last good kept"
    );

    // over 1 MiB: refused whole, pointing at nodeFiles
    let big: Vec<u8> = format!("- list: big\n  items: [{}]\n", "x,".repeat(600_000)).into_bytes();
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco_rules.yaml",
        &big,
        &[],
    );
    let b = h
        .wait_for::<RuleBundle>(
            "falco",
            "TooLargeForConfigMap",
            failed_with("TooLargeForConfigMap"),
        )
        .await
        .expect("bundle");
    assert!(message(&b).contains("nodeFiles"), "{}", message(&b));
    let cm = cms.get("falco").await.expect("configmap");
    assert_eq!(
        cm.data.unwrap_or_default()["falco_rules.yaml"],
        good,
        "last good kept"
    );
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_bundle_waits_for_its_sources() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "bundle-later");
    bundle(
        &h,
        "early",
        serde_json::json!({"sources": [{"sourceRef": {"name": "later"}}], "configMap": {}}),
    )
    .await;
    let b = h
        .wait_for::<RuleBundle>("early", "SourceNotReady", failed_with("SourceNotReady"))
        .await
        .expect("bundle");
    assert!(message(&b).contains("later not found"), "{}", message(&b));

    // a source that cannot be pulled keeps the bundle waiting, with the source's reason
    h.create("later", serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "10s", "insecure": true})).await;
    let b = h
        .wait_for::<RuleBundle>("early", "waiting on a failing source", |b| {
            b.is_some_and(|b| message(b).contains("NotFound"))
        })
        .await
        .expect("bundle");
    assert_eq!(
        ready_reason(&b).map(|r| r.1).as_deref(),
        Some("SourceNotReady")
    );
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    assert!(cms.get_opt("early").await.expect("get").is_none());

    // once the artifact exists the bundle follows, without being touched
    let rules = format!("- rule: later{}\n", common::unique());
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco_rules.yaml",
        rules.as_bytes(),
        &[],
    );
    h.request_check("later", "now").await;
    h.wait_for::<RuleBundle>("early", "Ready", is_ready).await;
    let cm = cms.get("early").await.expect("configmap");
    assert_eq!(cm.data.unwrap_or_default()["falco_rules.yaml"], rules);

    // a ConfigMap of that name that is not the bundle's is never taken over
    let foreign = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "taken"}, "data": {"mine": "yes"}});
    cms.patch(
        "taken",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(&foreign),
    )
    .await
    .expect("foreign ConfigMap");
    bundle(&h, "grabby", serde_json::json!({"sources": [{"sourceRef": {"name": "later"}}], "configMap": {"name": "taken"}})).await;
    let b = h
        .wait_for::<RuleBundle>(
            "grabby",
            "ConfigMapNotOwned",
            failed_with("ConfigMapNotOwned"),
        )
        .await
        .expect("bundle");
    assert!(message(&b).contains("taken"), "{}", message(&b));
    let cm = cms.get("taken").await.expect("configmap");
    assert_eq!(
        cm.data.unwrap_or_default().into_keys().collect::<Vec<_>>(),
        ["mine"]
    );
    h.cleanup().await;
}

/// `ocisync_reconciles_total{kind="RuleBundle",result="skipped"}` from the controller.
async fn skipped(h: &Harness) -> u64 {
    let text = reqwest::get(format!("{}/metrics", h.base_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter(|l| {
            l.starts_with("ocisync_reconciles_total{")
                && l.contains("kind=\"RuleBundle\"")
                && l.contains("result=\"skipped\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits (with the deadline) until the skipped-reconcile count exceeds `than`.
async fn wait_skipped(h: &Harness, than: u64) {
    let deadline = std::time::Instant::now() + common::controller::DEADLINE;
    while skipped(h).await <= than {
        assert!(
            std::time::Instant::now() < deadline,
            "the suspended bundle was never woken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_suspended_bundle_keeps_its_configmap_until_resumed() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "bundle-suspend");
    let v1 = format!("- rule: v1 {}\n", common::unique());
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco_rules.yaml",
        v1.as_bytes(),
        &[],
    );
    source(&h, "rules", &repo, "1").await;
    let spec = |suspend: bool| serde_json::json!({"sources": [{"sourceRef": {"name": "rules"}}], "configMap": {}, "suspend": suspend});
    bundle(&h, "held", spec(false)).await;
    h.wait_for::<RuleBundle>("held", "Ready", is_ready).await;
    let initial = skipped(&h).await;
    bundle(&h, "held", spec(true)).await;
    wait_skipped(&h, initial).await; // the suspension is seen

    // a new revision arrives while suspended: the bundle is woken, skips, and writes nothing
    let before = skipped(&h).await;
    let v2 = format!("- rule: v2 {}\n", common::unique());
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco_rules.yaml",
        v2.as_bytes(),
        &[],
    );
    let moved = h.request_check("rules", "after-suspend").await;
    assert!(
        moved
            .status
            .and_then(|s| s.artifact)
            .is_some_and(|a| a.revision.starts_with("1@"))
    );
    let deadline = std::time::Instant::now() + common::controller::DEADLINE;
    while skipped(&h).await <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the suspended bundle was never woken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    assert_eq!(
        cms.get("held")
            .await
            .expect("configmap")
            .data
            .unwrap_or_default()["falco_rules.yaml"],
        v1,
        "unchanged while suspended"
    );

    // resumed: the new revision is written
    bundle(&h, "held", spec(false)).await;
    let expect = v2.clone();
    h.wait_for::<ConfigMap>("held", "updated after resuming", move |cm| {
        cm.and_then(|c| c.data.as_ref())
            .and_then(|d| d.get("falco_rules.yaml"))
            == Some(&expect)
    })
    .await;
    h.cleanup().await;
}
