//! High availability and the push webhook in the chart, and the kustomize manifests in
//! `config/` kept to the same behaviour: rendered by Helm and `kubectl kustomize`, the
//! controller's arguments parsed by the binary's own command line. Runs without a cluster.

mod common;

use clap::Parser as _;
use serde_json::{Value, json};

use common::{helm, root, run_ok};

fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn render(args: &[&str]) -> Vec<Value> {
    let mut c = helm();
    c.args([
        "template",
        "t",
        "charts/ocisync",
        "--namespace",
        "ocisync-system",
    ])
    .args(args);
    documents(&run_ok(&mut c))
}

/// Helm's error for values the chart refuses.
fn render_fails(args: &[&str]) -> String {
    let out = helm()
        .args([
            "template",
            "t",
            "charts/ocisync",
            "--namespace",
            "ocisync-system",
        ])
        .args(args)
        .output()
        .expect("run helm");
    assert!(!out.status.success(), "helm accepted {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn get<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn pod_spec<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    &get(docs, "Deployment", name)["spec"]["template"]["spec"]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The controller container's arguments, parsed by the binary's command line.
fn parsed(args: &[String]) -> ocisync::cli::ControllerArgs {
    let argv = std::iter::once("ocisync".to_string()).chain(args.iter().cloned());
    match ocisync::cli::Cli::try_parse_from(argv) {
        Ok(ocisync::cli::Cli {
            command: ocisync::cli::Command::Controller(a),
        }) => *a,
        Ok(other) => panic!("not the controller: {other:?}"),
        Err(e) => panic!("the binary refuses {args:?}: {e}"),
    }
}

fn controller_args(docs: &[Value]) -> Vec<String> {
    strings(&pod_spec(docs, "t-ocisync-controller")["containers"][0]["args"])
}

/// `labels` holds every label of `selector` (a matchLabels map).
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("matchLabels");
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v)
}

fn has_rule(rules: &Value, group: &str, resource: &str, verb: &str) -> bool {
    let has = |r: &Value, k: &str, want: &str| strings(&r[k]).iter().any(|s| s == want);
    rules.as_array().expect("rules").iter().any(|r| {
        has(r, "apiGroups", group) && has(r, "resources", resource) && has(r, "verbs", verb)
    })
}

#[test]
fn two_replicas_with_a_lease_by_default() {
    let docs = render(&[]);
    let deploy = get(&docs, "Deployment", "t-ocisync-controller");
    assert_eq!(deploy["spec"]["replicas"], 2);
    // a rollout adds the new pod before it removes an old one
    assert_eq!(
        deploy["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    let args = parsed(&controller_args(&docs));
    assert!(args.leader_elect);
    assert_eq!(args.lease_name, "t-ocisync-controller");
    assert_eq!(args.lease_namespace.as_deref(), Some("ocisync-system"));
    assert_eq!(args.lease_duration, std::time::Duration::from_secs(15));
    assert_eq!(args.renew_deadline, std::time::Duration::from_secs(10));
    assert_eq!(args.lease_retry_period, std::time::Duration::from_secs(2));
    assert_eq!(args.advertise_url.as_deref(), Some("http://$(POD_IP):9090"));
    assert!(
        args.webhook_listen.is_none(),
        "the webhook is off by default"
    );

    let container = &pod_spec(&docs, "t-ocisync-controller")["containers"][0];
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_IP", "status.podIP"),
    ] {
        let env = container["env"].as_array().expect("env");
        assert!(
            env.iter()
                .any(|e| e["name"] == name && e["valueFrom"]["fieldRef"]["fieldPath"] == path),
            "{name} from {path} in {env:?}"
        );
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let ports = container["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "only the artifact server's port: {ports:?}");
}

#[test]
fn every_ready_replica_serves_and_a_drain_keeps_one() {
    let docs = render(&[]);
    let deploy = get(&docs, "Deployment", "t-ocisync-controller");
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    let service = get(&docs, "Service", "t-ocisync-controller");
    assert!(selects(&service["spec"]["selector"], labels));
    assert!(service["spec"]["publishNotReadyAddresses"].is_null());

    let pdb = get(&docs, "PodDisruptionBudget", "t-ocisync-controller");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));

    let affinity = &pod_spec(&docs, "t-ocisync-controller")["affinity"]["podAntiAffinity"];
    let preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .expect("soft anti-affinity");
    assert_eq!(preferred.len(), 1);
    assert!(affinity["requiredDuringSchedulingIgnoredDuringExecution"].is_null());
    let term = &preferred[0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert!(selects(&term["labelSelector"]["matchLabels"], labels));
}

#[test]
fn the_lease_role_and_the_webhook_patch_are_in_the_rbac() {
    let docs = render(&[]);
    let role = get(&docs, "Role", "t-ocisync-controller-lease");
    assert_eq!(role["metadata"]["namespace"], "ocisync-system");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": ["t-ocisync-controller"], "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ])
    );
    // the Lease the binary is told to use is the one the Role names
    let args = parsed(&controller_args(&docs));
    assert_eq!(
        strings(&role["rules"][0]["resourceNames"]),
        [args.lease_name]
    );
    let binding = get(&docs, "RoleBinding", "t-ocisync-controller-lease");
    assert_eq!(binding["roleRef"]["name"], "t-ocisync-controller-lease");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "t-ocisync-controller", "namespace": "ocisync-system"}])
    );
    let cluster = &get(&docs, "ClusterRole", "t-ocisync-controller")["rules"];
    assert!(has_rule(cluster, "ocisync.dev", "artifactsources", "patch"));
    assert!(!has_rule(cluster, "ocisync.dev", "rulebundles", "patch"));
    assert!(
        !has_rule(cluster, "coordination.k8s.io", "leases", "create"),
        "leases are namespaced"
    );
}

#[test]
fn replicas_affinity_and_election_follow_their_values() {
    // one replica: no PDB (it would block every drain), still the Lease
    let docs = render(&["--set", "controller.replicas=1"]);
    assert!(find(&docs, "PodDisruptionBudget", "t-ocisync-controller").is_none());
    assert!(parsed(&controller_args(&docs)).leader_elect);

    let docs = render(&["--set", "controller.podAntiAffinity=hard"]);
    let anti = &pod_spec(&docs, "t-ocisync-controller")["affinity"]["podAntiAffinity"];
    let required = &anti["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(required["topologyKey"], "kubernetes.io/hostname");
    assert!(anti["preferredDuringSchedulingIgnoredDuringExecution"].is_null());

    let docs = render(&["--set", "controller.podAntiAffinity="]);
    assert!(pod_spec(&docs, "t-ocisync-controller")["affinity"].is_null());
    let mine = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["infra"]}]}]}}});
    let docs = render(&["--set-json", &format!("controller.affinity={mine}")]);
    assert_eq!(pod_spec(&docs, "t-ocisync-controller")["affinity"], mine);
    let err = render_fails(&["--set", "controller.podAntiAffinity=sometimes"]);
    assert!(
        err.contains("controller.podAntiAffinity must be soft, hard"),
        "{err}"
    );

    // without the Lease: one replica, replaced with Recreate, no Lease RBAC
    let docs = render(&[
        "--set",
        "controller.replicas=1",
        "--set",
        "controller.leaderElection.enabled=false",
    ]);
    assert!(!parsed(&controller_args(&docs)).leader_elect);
    let deploy = get(&docs, "Deployment", "t-ocisync-controller");
    assert_eq!(deploy["spec"]["strategy"], json!({"type": "Recreate"}));
    assert!(find(&docs, "Role", "t-ocisync-controller-lease").is_none());
    let err = render_fails(&["--set", "controller.leaderElection.enabled=false"]);
    assert!(
        err.contains("controller.replicas > 1 needs controller.leaderElection.enabled"),
        "{err}"
    );

    let docs = render(&[
        "--set",
        "controller.leaderElection.leaseDuration=30s",
        "--set",
        "controller.advertiseURL=http://[$(POD_IP)]:9090",
    ]);
    let args = parsed(&controller_args(&docs));
    assert_eq!(args.lease_duration, std::time::Duration::from_secs(30));
    assert_eq!(
        args.advertise_url.as_deref(),
        Some("http://[$(POD_IP)]:9090")
    );
}

fn webhook_values() -> Vec<&'static str> {
    vec![
        "--set",
        "webhook.enabled=true",
        "--set",
        "webhook.existingSecret=registry-webhook",
        "--set",
        "webhook.secretKeys.hmacKey=hmac",
        "--set",
        "webhook.service.annotations.example\\.com/lb=internal",
        "--set-json",
        r#"webhook.from=[{"ipBlock":{"cidr":"192.0.2.0/24"}}]"#,
    ]
}

#[test]
fn the_webhook_receiver_gets_its_port_secret_service_and_policy() {
    let docs = render(&webhook_values());
    let args = parsed(&controller_args(&docs));
    assert_eq!(
        args.webhook_listen,
        Some("0.0.0.0:9292".parse().expect("addr"))
    );
    let token = args.webhook_token_file.expect("token file");
    let hmac = args.webhook_hmac_key_file.expect("hmac key file");
    let spec = pod_spec(&docs, "t-ocisync-controller");
    let container = &spec["containers"][0];
    assert!(
        container["ports"]
            .as_array()
            .expect("ports")
            .contains(&json!({"name": "webhook", "containerPort": 9292, "protocol": "TCP"}))
    );
    let mount = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "webhook-secret")
        .expect("the Secret is mounted");
    assert_eq!(mount["readOnly"], true);
    let dir = std::path::Path::new(mount["mountPath"].as_str().expect("path"));
    assert_eq!(token, dir.join("token"));
    assert_eq!(hmac, dir.join("hmac-key"));
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "webhook-secret")
        .expect("volume");
    assert_eq!(
        volume["secret"],
        json!({"secretName": "registry-webhook", "defaultMode": 0o440,
               "items": [{"key": "token", "path": "token"}, {"key": "hmac", "path": "hmac-key"}]})
    );

    let service = get(&docs, "Service", "t-ocisync-webhook");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "webhook", "port": 9292, "targetPort": "webhook", "protocol": "TCP"}])
    );
    assert_eq!(
        service["metadata"]["annotations"],
        json!({"example.com/lb": "internal"})
    );
    let labels =
        &get(&docs, "Deployment", "t-ocisync-controller")["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&service["spec"]["selector"], labels));
    // the ServiceMonitor selects the artifact server's Service, not this one
    assert_ne!(
        service["metadata"]["labels"]["app.kubernetes.io/component"],
        "controller"
    );

    let ingress = &get(&docs, "NetworkPolicy", "t-ocisync-controller")["spec"]["ingress"];
    assert_eq!(
        ingress[1],
        json!({"ports": [{"protocol": "TCP", "port": 9292}], "from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]})
    );
}

#[test]
fn the_webhook_is_off_by_default_and_never_without_a_secret() {
    let docs = render(&[]);
    assert!(find(&docs, "Service", "t-ocisync-webhook").is_none());
    let ingress = &get(&docs, "NetworkPolicy", "t-ocisync-controller")["spec"]["ingress"];
    assert_eq!(ingress.as_array().map(Vec::len), Some(1));
    let volumes = &pod_spec(&docs, "t-ocisync-controller")["volumes"];
    assert_eq!(volumes.as_array().map(Vec::len), Some(1), "{volumes}");

    let err = render_fails(&["--set", "webhook.enabled=true"]);
    assert!(
        err.contains("webhook.enabled needs webhook.existingSecret"),
        "{err}"
    );
    let err = render_fails(&[
        "--set",
        "webhook.enabled=true",
        "--set",
        "webhook.existingSecret=s",
        "--set",
        "webhook.secretKeys.token=",
    ]);
    assert!(
        err.contains("webhook.secretKeys.token or webhook.secretKeys.hmacKey"),
        "{err}"
    );
    // token only, and no `from`: every source may reach the (authenticating) receiver
    let docs = render(&[
        "--set",
        "webhook.enabled=true",
        "--set",
        "webhook.existingSecret=s",
        "--set",
        "webhook.port=8443",
    ]);
    let args = parsed(&controller_args(&docs));
    assert!(args.webhook_hmac_key_file.is_none());
    assert!(args.webhook_token_file.is_some());
    let ingress = &get(&docs, "NetworkPolicy", "t-ocisync-controller")["spec"]["ingress"];
    assert_eq!(
        ingress[1],
        json!({"ports": [{"protocol": "TCP", "port": 8443}]})
    );
}

// --- config/ (kustomize) against the chart's defaults ---

fn kubectl() -> std::process::Command {
    let bundled = root().join("target/tools/kubectl");
    let mut c = std::process::Command::new(if bundled.exists() {
        bundled
    } else {
        "kubectl".into()
    });
    c.current_dir(root());
    c
}

fn kustomize(dir: &str) -> Vec<Value> {
    documents(&run_ok(kubectl().args(["kustomize", dir])))
}

/// The chart's objects as the kustomize bases name them: no release prefix, no instance
/// label, the namespace as the pod learns it.
fn unrelease(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "app.kubernetes.io/instance")
                .map(|(k, v)| (k.clone(), unrelease(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(unrelease).collect()),
        Value::String(s) => Value::String(s.replace("t-ocisync-", "ocisync-")),
        other => other.clone(),
    }
}

fn unrelease_arg(arg: &str) -> String {
    arg.replace("t-ocisync-", "ocisync-")
        .replace("ocisync-system", "$(POD_NAMESPACE)")
}

#[test]
fn the_kustomize_bases_run_the_controller_as_the_chart_does() {
    let chart = render(&[]);
    let config = kustomize("config/default");
    let chart_pod = unrelease(pod_spec(&chart, "t-ocisync-controller"));
    let config_pod = pod_spec(&config, "ocisync-controller");
    let chart_deploy = get(&chart, "Deployment", "t-ocisync-controller");
    let config_deploy = get(&config, "Deployment", "ocisync-controller");
    for key in ["replicas", "strategy"] {
        assert_eq!(
            chart_deploy["spec"][key], config_deploy["spec"][key],
            "{key}"
        );
    }
    let chart_args: Vec<String> = controller_args(&chart)
        .iter()
        .map(|a| unrelease_arg(a))
        .collect();
    let config_args = strings(&config_pod["containers"][0]["args"]);
    assert_eq!(
        format!("{:?}", parsed(&chart_args)),
        format!("{:?}", parsed(&config_args)),
        "the same controller options"
    );
    let (chart_c, config_c) = (&chart_pod["containers"][0], &config_pod["containers"][0]);
    for key in [
        "env",
        "readinessProbe",
        "livenessProbe",
        "ports",
        "securityContext",
    ] {
        assert_eq!(chart_c[key], config_c[key], "{key}");
    }
    assert_eq!(chart_pod["affinity"], config_pod["affinity"]);

    let service = |docs: &[Value], name: &str| unrelease(&get(docs, "Service", name)["spec"]);
    assert_eq!(
        service(&chart, "t-ocisync-controller")["selector"],
        service(&config, "ocisync-controller")["selector"]
    );
    let pdb = kustomize("config/pdb");
    assert_eq!(
        unrelease(&get(&chart, "PodDisruptionBudget", "t-ocisync-controller")["spec"]),
        get(&pdb, "PodDisruptionBudget", "ocisync-controller")["spec"]
    );
    assert_eq!(
        unrelease(&get(&chart, "NetworkPolicy", "t-ocisync-controller")["spec"]),
        get(&config, "NetworkPolicy", "ocisync-controller")["spec"]
    );
}

#[test]
fn the_kustomize_rbac_is_the_charts() {
    let chart = render(&[]);
    let config = kustomize("config/default");
    for (kind, name) in [
        ("ClusterRole", "ocisync-controller"),
        ("ClusterRole", "ocisync-agent"),
        ("Role", "ocisync-controller-lease"),
    ] {
        let mine = unrelease(&get(&chart, kind, &format!("t-{name}"))["rules"]);
        assert_eq!(mine, get(&config, kind, name)["rules"], "{kind} {name}");
    }
    let binding = get(&config, "RoleBinding", "ocisync-controller-lease");
    assert_eq!(binding["metadata"]["namespace"], "ocisync-system");
    assert_eq!(binding["subjects"][0]["name"], "ocisync-controller");
    let args = parsed(&strings(
        &pod_spec(&config, "ocisync-controller")["containers"][0]["args"],
    ));
    let role = get(&config, "Role", "ocisync-controller-lease");
    assert_eq!(
        strings(&role["rules"][0]["resourceNames"]),
        [args.lease_name]
    );
}
