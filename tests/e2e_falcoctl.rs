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
