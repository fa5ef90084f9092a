//! End-to-end: moving from falcoctl. A falcoctl configuration and index, as a user has
//! them, go through `ocisync import falcoctl`; what it prints is applied to the real API
//! server, and the rules file of an artifact in falcoctl's exact format lands on a node.

mod common;

use common::Which;
use common::agent::{Agent, delete_nodes, eventually, node};
use common::controller::harness;
use ocisync::api::{ArtifactSource, RuleBundle};

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn an_imported_falcoctl_configuration_delivers_its_rules_onto_a_node() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Tls, "falcoctl-rules");
    let rules = format!(
        "- rule: imported {}\n  condition: evt.type = open\n",
        common::unique()
    );
    let config_blob = serde_json::json!({
        "name": "e2e-rules", "version": "1.0.0",
        "requirements": [{"name": "engine_version_semver", "version": "0.31.0"}],
    });
    common::falcoctl::push_rulesfile(
        &h.env.registry(Which::Tls),
        &repo,
        "1",
        ("e2e_rules.yaml", rules.as_bytes()),
        config_blob,
    )
    .await;

    let (config, index) = falcoctl_files(&h.env, &repo, work.path());
    let out = common::run_ok(
        common::ocisync()
            .args(["import", "falcoctl"])
            .arg(&config)
            .arg("--index")
            .arg(&index)
            .args(["-n", &h.ns, "--cert-secret", "registry-ca"]),
    );
    assert!(
        !out.contains(&h.env.password),
        "the registry password was printed:\n{out}"
    );
    assert!(
        out.contains("--docker-username="),
        "the Secret to create is named:\n{out}"
    );

    registry_secrets(&h).await;
    apply_documents(&h, &out).await;
    let name = format!("e2e-falcoctl-{}", common::unique());
    node(&h, &name, serde_json::json!({"e2e-run": name})).await;
    let mut agent = Agent::start(&h, &name, &h.base_url);
    eventually(
        "the imported bundle's rules file on the node",
        || match agent.files().get("e2e_rules.yaml") {
            Some(bytes) if bytes == rules.as_bytes() => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|b| String::from_utf8_lossy(b).into_owned())
            )),
        },
    )
    .await;
    let source = h.api.get("e2e-rules").await.expect("the imported source");
    let source: &ArtifactSource = &source;
    assert!(source.spec.secret_ref.is_some(), "{:?}", source.spec);
    agent.kill();
    delete_nodes(&h, &[&name]).await;
    h.cleanup().await;
}

/// falcoctl.yaml (the keys spelt as the Falco chart spells them) and an index naming the
/// test registry's repository, as falcoctl's index entries do.
fn falcoctl_files(
    env: &common::Env,
    repo: &ocisync::oci::reference::Repository,
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let config = dir.join("falcoctl.yaml");
    let text = format!(
        "indexes:\n- name: e2e\n  url: https://example.invalid/index.yaml\nartifact:\n  allowedTypes: [rulesfile]\n  follow:\n    refs: [e2e-rules:1]\n    every: 10s\n    rulesfilesDir: /rulesfiles\nregistry:\n  auth:\n    basic:\n    - {{registry: {host}, user: {user}, password: {password}}}\n",
        host = env.tls,
        user = env.user,
        password = env.password,
    );
    std::fs::write(&config, text).expect("write falcoctl.yaml");
    let index = dir.join("index.yaml");
    let entry = format!(
        "- name: e2e-rules\n  type: rulesfile\n  registry: {}\n  repository: {}\n  description: e2e\n",
        repo.registry, repo.name
    );
    std::fs::write(&index, entry).expect("write index.yaml");
    (config, index)
}

/// The pull Secret the import named, and the registry's CA (falcoctl has no TLS settings).
async fn registry_secrets(h: &common::controller::Harness) {
    let host = &h.env.tls;
    let auth = common::base64_encode(&format!("{}:{}", h.env.user, h.env.password));
    let docker = format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#);
    let name = format!("falcoctl-{}", host.replace(['.', ':'], "-"));
    h.secret(
        &name,
        &[(".dockerconfigjson", docker.into_bytes())],
        "kubernetes.io/dockerconfigjson",
    )
    .await;
    let ca = std::fs::read(&h.env.ca).expect("read the CA");
    h.secret("registry-ca", &[("ca.crt", ca)], "Opaque").await;
}

/// Applies each printed document by its kind, as `kubectl apply -f -` would.
async fn apply_documents(h: &common::controller::Harness, yaml: &str) {
    use serde::Deserialize;
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: serde_json::Value =
            serde_json::Value::deserialize(doc).expect("a YAML document");
        let name = value["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_string();
        assert_eq!(value["metadata"]["namespace"], h.ns.as_str());
        match value["kind"].as_str() {
            Some("ArtifactSource") => drop(h.apply::<ArtifactSource>(&name, value).await),
            Some("RuleBundle") => drop(h.apply::<RuleBundle>(&name, value).await),
            other => panic!("unexpected kind {other:?}"),
        }
    }
}

/// The bundle's ConfigMap data (text files) and binaryData keys.
async fn config_map(
    h: &common::controller::Harness,
    name: &str,
) -> (std::collections::BTreeMap<String, String>, Vec<String>) {
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(h.client.clone(), &h.ns);
    let cm = api.get(name).await.expect("the bundle's ConfigMap");
    let binary = cm.binary_data.unwrap_or_default().into_keys().collect();
    (cm.data.unwrap_or_default(), binary)
}

/// The rules file in the bundle's ConfigMap.
async fn rules_text(h: &common::controller::Harness) -> Option<String> {
    config_map(h, "falco-rules")
        .await
        .0
        .remove("e2e_rules.yaml")
}

fn condition(b: &RuleBundle, type_: &str) -> Option<(String, String, String)> {
    let c = b
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until bundle `falco` is at its generation with Ready `status` and `reason`.
async fn bundle_is(
    h: &common::controller::Harness,
    status: &'static str,
    reason: &'static str,
) -> RuleBundle {
    h.wait_for::<RuleBundle>("falco", reason, move |b| {
        b.is_some_and(|b| {
            let current =
                b.status.as_ref().and_then(|s| s.observed_generation) == b.metadata.generation;
            current && condition(b, "Ready").is_some_and(|(s, r, _)| s == status && r == reason)
        })
    })
    .await
    .expect("bundle")
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn requirements_hold_a_revision_back_until_the_named_falco_meets_them_and_dependencies_are_reported()
 {
    let h = harness().await;
    let registry = h.env.registry(Which::Plain);
    let rules_repo = h.env.repo(Which::Plain, "falcoctl-req-rules");
    let v1 = serde_json::json!({"name": "e2e-rules", "version": "1.0.0",
        "requirements": [{"name": "engine_version_semver", "version": "0.31.0"}]});
    common::falcoctl::push_rulesfile(
        &registry,
        &rules_repo,
        "1",
        ("e2e_rules.yaml", b"- list: v1\n"),
        v1,
    )
    .await;
    let spec = |repo: &ocisync::oci::reference::Repository| serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true});
    h.create("rules", spec(&rules_repo)).await;
    let bundle = |engine: &str, policy: &str, sources: &[&str]| {
        let sources: Vec<_> = sources
            .iter()
            .map(|s| serde_json::json!({"sourceRef": {"name": s}}))
            .collect();
        serde_json::json!({"spec": {"sources": sources, "configMap": {"name": "falco-rules"},
            "falco": {"engineVersion": engine, "dependencies": policy}}})
    };
    h.apply::<RuleBundle>("falco", bundle("0.41.0", "Warn", &["rules"]))
        .await;
    bundle_is(&h, "True", "Succeeded").await;
    assert_eq!(rules_text(&h).await.as_deref(), Some("- list: v1\n"));

    // v2 needs a newer engine and a plugin: held back, v1 stays in the ConfigMap
    let v2 = serde_json::json!({"name": "e2e-rules", "version": "2.0.0",
        "requirements": [{"name": "engine_version_semver", "version": "0.50.0"}],
        "dependencies": [{"name": "e2e-plugin", "version": "0.2.0"}]});
    let d2 = common::falcoctl::push_rulesfile(
        &registry,
        &rules_repo,
        "1",
        ("e2e_rules.yaml", b"- list: v2\n"),
        v2,
    )
    .await;
    h.request_check("rules", "v2").await;
    h.wait("rules", "Ready at v2", common::ready_at(&d2)).await;
    let held = bundle_is(&h, "False", "RequirementsNotMet").await;
    let (_, _, message) = condition(&held, "Ready").expect("Ready");
    assert!(
        message.contains("0.50.0")
            && message.contains("0.41.0")
            && message.contains("keeping revision"),
        "{message}"
    );
    assert_eq!(rules_text(&h).await.as_deref(), Some("- list: v1\n"));

    // the Falco named is new enough: applied, the missing plugin a warning condition
    h.apply::<RuleBundle>("falco", bundle("0.50.1", "Warn", &["rules"]))
        .await;
    let warned = bundle_is(&h, "True", "Succeeded").await;
    let deps = condition(&warned, "DependenciesMet").expect("DependenciesMet");
    assert_eq!(
        (deps.0.as_str(), deps.1.as_str()),
        ("False", "DependencyMissing"),
        "{deps:?}"
    );
    assert!(deps.2.contains("e2e-plugin 0.2.0"), "{deps:?}");
    assert_eq!(rules_text(&h).await.as_deref(), Some("- list: v2\n"));
    h.apply::<RuleBundle>("falco", bundle("0.50.1", "Block", &["rules"]))
        .await;
    bundle_is(&h, "False", "DependencyMissing").await;

    // a plugin source in falcoctl's layout (an index per platform) provides it
    let plugin_repo = h.env.repo(Which::Plain, "falcoctl-req-plugin");
    let config = serde_json::json!({"name": "e2e-plugin", "version": "0.2.3",
        "requirements": [{"name": "plugin_api_version", "version": "3.0.0"}]});
    let platforms: [(&str, &[u8]); 2] = [
        ("linux/amd64", b"\x7fELF amd64"),
        ("linux/arm64", b"\x7fELF arm64"),
    ];
    common::falcoctl::push_plugin(
        &registry,
        &plugin_repo,
        "1",
        "libe2e.so",
        &platforms,
        config,
    )
    .await;
    h.create("plugin", spec(&plugin_repo)).await;
    let met = async {
        h.apply::<RuleBundle>("falco", bundle("0.50.1", "Block", &["rules", "plugin"]))
            .await;
        bundle_is(&h, "True", "Succeeded").await
    }
    .await;
    assert_eq!(
        condition(&met, "DependenciesMet").map(|c| c.0),
        Some("True".into())
    );
    assert!(
        config_map(&h, "falco-rules")
            .await
            .1
            .contains(&"libe2e.so".to_string())
    );
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn each_node_holds_back_a_revision_its_labelled_falco_is_too_old_for() {
    use common::agent::{relabel, report_entry};
    use common::controller::wait_on;
    const LABEL: &str = "falco.org/engine-version";
    let h = harness().await;
    let registry = h.env.registry(Which::Plain);
    let repo = h.env.repo(Which::Plain, "falcoctl-node-rules");
    let config = |version: &str, engine: &str| {
        serde_json::json!({"name": "e2e-rules", "version": version,
            "requirements": [{"name": "engine_version_semver", "version": engine}]})
    };
    common::falcoctl::push_rulesfile(
        &registry,
        &repo,
        "1",
        ("e2e_rules.yaml", b"- list: v1\n"),
        config("1.0.0", "0.31.0"),
    )
    .await;
    h.create("rules", serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true})).await;
    let run = common::unique();
    let (old, new) = (
        format!("e2e-falco-old-{run}"),
        format!("e2e-falco-new-{run}"),
    );
    node(
        &h,
        &old,
        serde_json::json!({"e2e-run": run, LABEL: "0.41.0"}),
    )
    .await;
    node(
        &h,
        &new,
        serde_json::json!({"e2e-run": run, LABEL: "0.50.1"}),
    )
    .await;
    let mut agents = [
        Agent::start(&h, &old, &h.base_url),
        Agent::start(&h, &new, &h.base_url),
    ];
    h.apply::<RuleBundle>("falco", serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "rules"}}],
        "nodeFiles": {"directory": "/etc/falco/rules.d", "nodeSelector": {"matchLabels": {"e2e-run": run}}},
        "falco": {"engineVersionFromNodeLabel": LABEL}}}))
        .await;
    let has = |agent: &Agent, text: &'static str| {
        let files = agent.files();
        move || match files.get("e2e_rules.yaml") {
            Some(b) if b == text.as_bytes() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    for a in &agents {
        eventually("v1 on both nodes", || has(a, "- list: v1\n")()).await;
    }

    common::falcoctl::push_rulesfile(
        &registry,
        &repo,
        "1",
        ("e2e_rules.yaml", b"- list: v2\n"),
        config("2.0.0", "0.50.0"),
    )
    .await;
    h.request_check("rules", "v2").await;
    eventually("v2 on the node whose Falco is new enough", || {
        has(&agents[1], "- list: v2\n")()
    })
    .await;
    let reports: kube::Api<ocisync::api::NodeReport> = kube::Api::all(h.client.clone());
    let held = wait_on(reports.clone(), &old, "RequirementsNotMet", |r| {
        report_entry(r, "falco").is_some_and(|(reason, _)| reason == "RequirementsNotMet")
    })
    .await;
    let entry = held
        .as_ref()
        .and_then(|r| r.spec.bundles.iter().find(|b| b.name == "falco"))
        .expect("entry");
    assert!(
        entry.message.contains("0.50.0") && entry.message.contains("0.41.0"),
        "{entry:?}"
    );
    assert_eq!(
        agents[0].files().get("e2e_rules.yaml").map(Vec::as_slice),
        Some(&b"- list: v1\n"[..]),
        "the old node keeps v1"
    );

    relabel(&h, &old, serde_json::json!({LABEL: "0.50.2"})).await;
    eventually("v2 on the upgraded node", || {
        has(&agents[0], "- list: v2\n")()
    })
    .await;
    for a in &mut agents {
        a.kill();
    }
    delete_nodes(&h, &[&old, &new]).await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_semver_source_picks_the_highest_version_its_bundles_falco_can_run() {
    let h = harness().await;
    let registry = h.env.registry(Which::Plain);
    let repo = h.env.repo(Which::Plain, "falcoctl-semver-rules");
    for (tag, engine, text) in [
        ("1.0.0", "0.31.0", &b"- list: v1\n"[..]),
        ("1.1.0", "0.41.0", b"- list: v1.1\n"),
        ("2.0.0", "0.50.0", b"- list: v2\n"),
    ] {
        let config = serde_json::json!({"name": "e2e-rules", "version": tag,
            "requirements": [{"name": "engine_version_semver", "version": engine}]});
        common::falcoctl::push_rulesfile(&registry, &repo, tag, ("e2e_rules.yaml", text), config)
            .await;
    }
    let bundle = |engine: &str| {
        serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "rules"}}],
            "configMap": {"name": "falco-rules"}, "falco": {"engineVersion": engine}}})
    };
    // the bundle first, seen by the controller, so the source's first check knows its Falco
    h.apply::<RuleBundle>("falco", bundle("0.41.0")).await;
    bundle_is(&h, "False", "SourceNotReady").await;
    h.create(
        "rules",
        serde_json::json!({"url": format!("oci://{repo}"),
        "ref": {"semver": ">=1.0.0"}, "interval": "1h", "insecure": true}),
    )
    .await;
    let source_at = |version: &'static str| {
        move |s: Option<&ArtifactSource>| {
            let ready = s
                .and_then(|s| s.status.as_ref())
                .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"));
            ready.is_some_and(|c| {
                c.status == "True"
                    && c.message
                        .starts_with(&format!("stored revision {version}@"))
            })
        }
    };
    let held = h
        .wait_for::<ArtifactSource>("rules", "1.1.0 stored", source_at("1.1.0"))
        .await
        .expect("source");
    let status = held.status.expect("status");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let message = ready.map(|c| c.message.as_str()).unwrap_or_default();
    assert!(
        message.contains("picked over 2.0.0")
            && message.contains("0.50.0")
            && message.contains("RuleBundle falco names Falco engine 0.41.0"),
        "{message}"
    );
    bundle_is(&h, "True", "Succeeded").await;
    assert_eq!(rules_text(&h).await.as_deref(), Some("- list: v1.1\n"));

    // Falco upgraded: the next check takes the highest
    h.apply::<RuleBundle>("falco", bundle("0.50.1")).await;
    h.request_check("rules", "after the upgrade").await;
    h.wait_for::<ArtifactSource>("rules", "2.0.0 stored", source_at("2.0.0"))
        .await;
    eventually_text(&h, "- list: v2\n").await;
    h.cleanup().await;
}

/// Waits until the rules file in the bundle's ConfigMap is `want`.
async fn eventually_text(h: &common::controller::Harness, want: &str) {
    let start = std::time::Instant::now();
    loop {
        let got = rules_text(h).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < common::controller::DEADLINE,
            "rules text {got:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
