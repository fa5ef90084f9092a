//! The chart's NetworkPolicies and the controller's store and server limits, rendered by
//! Helm and fed to the real binary. Runs without a cluster.

mod common;

use common::{helm, run_ok};

fn render(args: &[&str]) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let mut c = helm();
    c.args([
        "template",
        "t",
        "charts/ocisync",
        "--namespace",
        "ocisync-system",
    ])
    .args(args);
    let yaml = run_ok(&mut c);
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn named<'a>(
    docs: &'a [serde_json::Value],
    kind: &str,
    name: &str,
) -> Option<&'a serde_json::Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn policy<'a>(docs: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    named(docs, "NetworkPolicy", name).unwrap_or_else(|| panic!("no NetworkPolicy {name}"))
}

fn pod_labels(docs: &[serde_json::Value], kind: &str, name: &str) -> serde_json::Value {
    named(docs, kind, name).expect("workload")["spec"]["template"]["metadata"]["labels"].clone()
}

fn scraper() -> serde_json::Value {
    serde_json::json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    })
}

#[test]
fn only_the_replicas_the_agents_and_the_scraper_reach_the_controller() {
    let docs = render(&[]);
    let controller = policy(&docs, "t-ocisync-controller");
    // It applies to the controller's pods...
    let selected = &controller["spec"]["podSelector"]["matchLabels"];
    let labels = pod_labels(&docs, "Deployment", "t-ocisync-controller");
    for (k, v) in selected.as_object().expect("labels") {
        assert_eq!(&labels[k], v, "the policy selects the controller's pods");
    }
    assert_eq!(
        controller["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    // ...and admits, on the controller's port only, the other controller replicas (they
    // fill their stores from each other), the agent pods and the scraper.
    let ingress = controller["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 9090}])
    );
    let from = ingress[0]["from"].as_array().expect("from");
    assert_eq!(from.len(), 3, "{from:?}");
    assert_eq!(from[0]["podSelector"], controller["spec"]["podSelector"]);
    assert_eq!(from[0].as_object().map(|o| o.len()), Some(1));
    let agent_selector = &from[1]["podSelector"]["matchLabels"];
    let agent_labels = pod_labels(&docs, "DaemonSet", "t-ocisync-agent");
    for (k, v) in agent_selector.as_object().expect("labels") {
        assert_eq!(&agent_labels[k], v, "the policy selects the agents' pods");
    }
    assert_eq!(
        from[1].as_object().map(|o| o.len()),
        Some(1),
        "pods of this namespace only"
    );
    assert_eq!(from[2], scraper());
    let agent = policy(&docs, "t-ocisync-agent");
    assert_eq!(
        agent["spec"]["ingress"],
        serde_json::json!([{"from": [scraper()], "ports": [{"protocol": "TCP", "port": 9091}]}])
    );
}

#[test]
fn the_policies_follow_their_values() {
    let docs = render(&[
        "--set",
        "networkPolicy.metrics.enabled=false",
        "--set-json",
        r#"networkPolicy.extraFrom=[{"ipBlock":{"cidr":"10.0.0.0/16"}}]"#,
        "--set",
        "controller.port=9999",
    ]);
    let from = &policy(&docs, "t-ocisync-controller")["spec"]["ingress"][0];
    assert_eq!(from["ports"][0]["port"], 9999);
    let peers = from["from"].as_array().expect("from");
    assert_eq!(peers.len(), 3);
    assert!(peers[0]["podSelector"].is_object());
    assert!(peers[1]["podSelector"].is_object());
    assert_eq!(
        peers[2],
        serde_json::json!({"ipBlock": {"cidr": "10.0.0.0/16"}})
    );
    assert_eq!(
        policy(&docs, "t-ocisync-agent")["spec"]["ingress"],
        serde_json::json!([])
    );

    // No agents, no scraper: only the other controller replicas.
    let docs = render(&[
        "--set",
        "networkPolicy.metrics.enabled=false",
        "--set",
        "agent.enabled=false",
    ]);
    let controller = policy(&docs, "t-ocisync-controller");
    assert_eq!(
        controller["spec"]["ingress"],
        serde_json::json!([{
            "from": [{"podSelector": controller["spec"]["podSelector"]}],
            "ports": [{"protocol": "TCP", "port": 9090}],
        }])
    );
    assert!(named(&docs, "NetworkPolicy", "t-ocisync-agent").is_none());

    let docs = render(&["--set", "networkPolicy.enabled=false"]);
    assert!(!docs.iter().any(|d| d["kind"] == "NetworkPolicy"));
}

/// The controller container's arguments.
fn controller_args(docs: &[serde_json::Value]) -> Vec<String> {
    let container = &named(docs, "Deployment", "t-ocisync-controller").expect("controller")["spec"]
        ["template"]["spec"]["containers"][0];
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect()
}

#[test]
fn the_store_and_server_limits_reach_the_controller_and_parse() {
    for values in [
        vec![],
        vec![
            "--set",
            "controller.store.sizeLimit=1.5Gi",
            "--set",
            "controller.store.maxSize=800Mi",
            "--set",
            "controller.store.namespaceQuota=64Mi",
            "--set",
            "controller.server.maxConnections=32",
            "--set",
            "controller.server.writeTimeout=1m",
            "--set",
            "controller.server.headerReadTimeout=5s",
        ],
    ] {
        let docs = render(&values);
        let args = controller_args(&docs);
        let volume = &named(&docs, "Deployment", "t-ocisync-controller").expect("controller")["spec"]
            ["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"];
        let size = volume.as_str().expect("sizeLimit");
        assert!(
            args.contains(&format!("--store-volume-size={size}")),
            "the store limit follows the emptyDir's sizeLimit: {args:?}"
        );
        if !values.is_empty() {
            for want in [
                "--store-max-bytes=800Mi",
                "--namespace-quota=64Mi",
                "--max-connections=32",
                "--write-timeout=1m",
                "--header-read-timeout=5s",
            ] {
                assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
            }
        }
        // The binary accepts them: it gets as far as reading the kubeconfig.
        let out = common::ocisync()
            .args(&args)
            .args(["--kubeconfig", "/nonexistent/kubeconfig"])
            .env_remove("KUBECONFIG")
            .output()
            .expect("run ocisync");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
    }
}

#[test]
fn bad_limits_are_usage_errors() {
    for flag in [
        "--namespace-quota=lots",
        "--store-max-bytes=1Pi",
        "--store-volume-size=0",
        "--max-connections=0",
        "--write-timeout=0s",
        "--header-read-timeout=soon",
    ] {
        let out = common::ocisync()
            .args(["controller", flag])
            .env_remove("KUBECONFIG")
            .output()
            .expect("run ocisync");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        let name = flag.split('=').next().unwrap_or(flag);
        assert!(stderr.contains(name), "{flag}: {stderr}");
    }
}
