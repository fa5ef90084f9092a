//! End-to-end: Falco plugins on a mixed-architecture cluster. A plugin pushed in
//! falcoctl's layout (an image index, one manifest per platform, built here byte by byte)
//! through an ArtifactSource with `platform: all`: each fake Node's agent writes the
//! library of its own `kubernetes.io/arch`, a node whose platform is missing reports
//! `PlatformNotAvailable` and keeps what it has, and a ConfigMap target refuses the source.

mod common;

use common::Which;
use common::agent::{Agent, delete_nodes, eventually, node, report_entry, visible_files};
use common::controller::{harness, wait_on};
use ocisync::api::{NodeReport, RuleBundle};

const PLUGINS: &str = "etc/falco/plugins";

fn plugin_bytes(agent: &Agent) -> Option<Vec<u8>> {
    visible_files(&agent.root.path().join(PLUGINS)).remove("libe2e.so")
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn each_node_gets_the_plugin_of_its_own_architecture() {
    let h = harness().await;
    let registry = h.env.registry(Which::Plain);
    let repo = h.env.repo(Which::Plain, "falcoctl-multiarch-plugin");
    let config = serde_json::json!({"name": "e2e-plugin", "version": "0.1.0",
        "requirements": [{"name": "plugin_api_version", "version": "3.0.0"}]});
    let v1: [(&str, &[u8]); 2] = [
        ("linux/amd64", b"\x7fELF amd64 v1"),
        ("linux/arm64", b"\x7fELF arm64 v1"),
    ];
    common::falcoctl::push_plugin(&registry, &repo, "1", "libe2e.so", &v1, config.clone()).await;
    h.create(
        "plugin",
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"},
        "interval": "1h", "insecure": true, "platform": "all"}),
    )
    .await;

    let run = common::unique();
    let arches = ["amd64", "arm64", "s390x"];
    let names: Vec<String> = arches.iter().map(|a| format!("e2e-{a}-{run}")).collect();
    for (name, arch) in names.iter().zip(arches) {
        let labels = serde_json::json!({"e2e-run": run, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch});
        node(&h, name, labels).await;
    }
    let agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(&h, n, &h.base_url))
        .collect();
    h.apply::<RuleBundle>("plugins", serde_json::json!({"spec": {
        "sources": [{"sourceRef": {"name": "plugin"}}],
        "nodeFiles": {"directory": "/etc/falco/plugins", "nodeSelector": {"matchLabels": {"e2e-run": run}}}}}))
        .await;
    for (agent, want) in agents.iter().zip(v1) {
        eventually(&format!("the {} library", want.0), || {
            match plugin_bytes(agent) {
                Some(b) if b == want.1 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let reports: kube::Api<NodeReport> = kube::Api::all(h.client.clone());
    let report = wait_on(
        reports.clone(),
        &names[2],
        "PlatformNotAvailable on s390x",
        |r| report_entry(r, "plugins").is_some_and(|(reason, _)| reason == "PlatformNotAvailable"),
    )
    .await;
    let entry = report
        .as_ref()
        .and_then(|r| r.spec.bundles.iter().find(|b| b.name == "plugins"))
        .expect("entry");
    assert!(
        entry.message.contains("linux/s390x") && entry.message.contains("linux/amd64, linux/arm64"),
        "{entry:?}"
    );
    assert_eq!(plugin_bytes(&agents[2]), None, "nothing written on s390x");

    // v2 drops arm64: amd64 moves on, the arm64 node reports it and keeps v1
    let v2: [(&str, &[u8]); 1] = [("linux/amd64", b"\x7fELF amd64 v2")];
    let d2 = common::falcoctl::push_plugin(&registry, &repo, "1", "libe2e.so", &v2, config).await;
    h.request_check("plugin", "v2").await;
    h.wait("plugin", "Ready at v2", common::ready_at(&d2)).await;
    eventually("amd64 at v2", || match plugin_bytes(&agents[0]) {
        Some(b) if b == v2[0].1 => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    wait_on(
        reports.clone(),
        &names[1],
        "PlatformNotAvailable on arm64",
        |r| report_entry(r, "plugins").is_some_and(|(reason, _)| reason == "PlatformNotAvailable"),
    )
    .await;
    assert_eq!(
        plugin_bytes(&agents[1]).as_deref(),
        Some(v1[1].1),
        "arm64 keeps v1"
    );

    // a ConfigMap would give every reader every platform's library
    h.apply::<RuleBundle>(
        "plugins-cm",
        serde_json::json!({"spec": {
        "sources": [{"sourceRef": {"name": "plugin"}}], "configMap": {}}}),
    )
    .await;
    let refused = h
        .wait_for::<RuleBundle>("plugins-cm", "MultiPlatformSource", |b| {
            b.and_then(|b| b.status.as_ref()).is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Ready" && c.status == "False" && c.reason == "MultiPlatformSource"
                })
            })
        })
        .await
        .expect("bundle");
    let status = refused.status.expect("status");
    assert!(status.config_map.is_none(), "no ConfigMap written");
    drop(agents);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    delete_nodes(&h, &names).await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn every_platform_refuses_a_plugin_for_no_platform_and_platforms_that_disagree() {
    let h = harness().await;
    let registry = h.env.registry(Which::Plain);
    let config = |version: &str| serde_json::json!({"name": "e2e-plugin", "version": version});
    let spec = |repo: &ocisync::oci::reference::Repository| {
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"},
            "interval": "1h", "insecure": true, "platform": "all"})
    };
    let failed_with = |reason: &'static str, words: &'static str| {
        move |s: &ocisync::api::ArtifactSource| {
            common::source_ready(s).is_some_and(|(status, r, message)| {
                status == "False" && r == reason && message.contains(words)
            })
        }
    };

    // one manifest, no index: its library would reach nodes of every architecture
    let single = h.env.repo(Which::Plain, "plugin-no-platform");
    common::falcoctl::push_plugin_manifest(
        &registry,
        &single,
        "1",
        ("libe2e.so", b"\x7fELF amd64"),
        config("0.1.0"),
    )
    .await;
    h.create("single", spec(&single)).await;
    h.wait(
        "single",
        "refused",
        failed_with("UnsupportedMediaType", "one image manifest"),
    )
    .await;

    // platforms whose config blobs differ: only one of them would be checked
    let mixed = h.env.repo(Which::Plain, "plugin-mixed-configs");
    common::falcoctl::push_plugin_configs(
        &registry,
        &mixed,
        "1",
        "libe2e.so",
        &[
            ("linux/amd64", b"\x7fELF amd64", config("0.1.0")),
            ("linux/arm64", b"\x7fELF arm64", config("0.2.0")),
        ],
    )
    .await;
    h.create("mixed", spec(&mixed)).await;
    let refused = h
        .wait("mixed", "refused", failed_with("InvalidManifest", "differ"))
        .await;
    assert!(refused.status.and_then(|s| s.artifact).is_none());
    h.cleanup().await;
}
