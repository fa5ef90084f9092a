//! Packaging against the real API server: the Helm chart (lint, template, install,
//! uninstall), RBAC for real with the chart's own ServiceAccounts' tokens, the kustomize
//! bases, and every sample validated against the CRDs.

mod common;

use std::path::{Path, PathBuf};

use common::{helm, root, run_ok};
use std::process::Command;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use ocisync::api::{ArtifactSource, NodeReport, RuleBundle};

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name_suffix: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(name_suffix))
        })
        .unwrap_or_else(|| panic!("no {kind} *{name_suffix} rendered"))
}

#[test]
fn the_chart_lints_and_renders_least_privilege_and_hardened_pods() {
    run_ok(helm().args(["lint", "--strict", "charts/ocisync"]));
    let mut c = helm();
    c.args([
        "template",
        "t",
        "charts/ocisync",
        "--namespace",
        "ocisync-system",
    ]);
    let docs = documents(&run_ok(&mut c));
    for (kind, name) in [("Deployment", "-controller"), ("DaemonSet", "-agent")] {
        let pod = &find(&docs, kind, name)["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{kind}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{kind}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{kind}"
        );
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{kind} resources"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{kind}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{kind}");
    }
    let controller = &find(&docs, "Deployment", "-controller")["spec"]["template"]["spec"];
    assert_eq!(controller["securityContext"]["runAsNonRoot"], true);
    let agent = &find(&docs, "DaemonSet", "-agent")["spec"]["template"]["spec"];
    assert_eq!(
        agent["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let env = &agent["containers"][0]["env"];
    assert!(
        env.as_array()
            .is_some_and(|e| e.iter().any(|v| v["name"] == "NODE_NAME"
                && v["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")),
        "NODE_NAME from the downward API"
    );
    let mounts: Vec<&str> = agent["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(
        mounts,
        [
            "/host/etc/falco",
            "/host/var/lib/kubelet/seccomp/ocisync",
            "/host/var/lib/ocisync/agent"
        ]
    );

    let secrets_verbs = |docs: &[serde_json::Value]| {
        find(docs, "ClusterRole", "-controller")["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["resources"] == serde_json::json!(["secrets"]))
            .map(|r| r["verbs"].clone())
    };
    assert_eq!(secrets_verbs(&docs), Some(serde_json::json!(["get"])));
    let agent_role = find(&docs, "ClusterRole", "-agent").to_string();
    assert!(
        !agent_role.contains("secrets"),
        "the agent has no Secret access"
    );
    let mut c = helm();
    c.args([
        "template",
        "t",
        "charts/ocisync",
        "--set",
        "controller.watchSecrets=true",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "agent.enabled=false",
    ]);
    let docs = documents(&run_ok(&mut c));
    assert_eq!(
        secrets_verbs(&docs),
        Some(serde_json::json!(["get", "list", "watch"]))
    );
    find(&docs, "ServiceMonitor", "");
    assert!(
        !docs.iter().any(|d| d["kind"] == "DaemonSet"),
        "agent disabled"
    );
}

#[test]
fn every_value_is_in_the_chart_readme() {
    let values: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("charts/ocisync/values.yaml")).expect("values"),
    )
    .expect("yaml");
    let readme = std::fs::read_to_string(root().join("charts/ocisync/README.md")).expect("README");
    fn leaves(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v.as_object() {
            // maps that are values themselves (resources, selectors) are documented whole
            Some(m)
                if !m.is_empty()
                    && !["resources", "updateStrategy", "Selector"]
                        .iter()
                        .any(|k| prefix.ends_with(k)) =>
            {
                for (k, child) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(child, &p, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut keys = Vec::new();
    leaves(&values, "", &mut keys);
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !readme.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from charts/ocisync/README.md: {missing:?}"
    );
}

/// A client that authenticates as a ServiceAccount, with a token from the TokenRequest API.
async fn client_as(env: &common::Env, admin: &kube::Client, ns: &str, sa: &str) -> kube::Client {
    let token = common::service_account_token(admin, ns, sa).await;
    let kubeconfig = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    kube::Client::try_from(config).expect("client")
}

async fn can(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.split('/').next().unwrap_or(resource).into()),
                subresource: resource.split('/').nth(1).map(str::to_string),
                namespace: ns.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    api.create(&PostParams::default(), &review)
        .await
        .expect("access review")
        .status
        .is_some_and(|s| s.allowed)
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn helm_install_creates_everything_and_its_rbac_holds_for_real() {
    let env = common::env();
    let admin = env.client().await;
    let ns = format!("e2e-helm-{}", common::unique());
    let release = format!("r{}", common::unique());
    let mut c = helm();
    c.args([
        "install",
        &release,
        "charts/ocisync",
        "--namespace",
        &ns,
        "--create-namespace",
        "--kubeconfig",
    ])
    .arg(&env.kubeconfig)
    .args([
        "--set",
        "image.repository=127.0.0.1:1/ocisync",
        "--set",
        "image.tag=e2e",
    ]);
    run_ok(&mut c);
    // every object accepted, CRDs established
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(admin.clone());
    for name in [
        "artifactsources.ocisync.dev",
        "rulebundles.ocisync.dev",
        "nodereports.ocisync.dev",
    ] {
        let crd = crds.get(name).await.expect("CRD");
        let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        assert!(established, "{name} established");
    }
    let fullname = format!("{release}-ocisync");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin.clone(), &ns);
    deployments
        .get(&format!("{fullname}-controller"))
        .await
        .expect("controller Deployment");
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(admin.clone(), &ns);
    daemonsets
        .get(&format!("{fullname}-agent"))
        .await
        .expect("agent DaemonSet");
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(admin.clone(), &ns);
    services
        .get(&format!("{fullname}-controller"))
        .await
        .expect("Service");

    // RBAC for real: the chart's ServiceAccounts, their own tokens
    let agent = client_as(&env, &admin, &ns, &format!("{fullname}-agent")).await;
    let controller = client_as(&env, &admin, &ns, &format!("{fullname}-controller")).await;
    let secret_name = format!("named-{}", common::unique());
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let body: Secret = serde_json::from_value(
        serde_json::json!({"metadata": {"name": secret_name}, "stringData": {"k": "v"}}),
    )
    .expect("secret");
    secrets
        .create(&PostParams::default(), &body)
        .await
        .expect("secret");

    // the agent: what it does works...
    Api::<RuleBundle>::all(agent.clone())
        .list(&ListParams::default().limit(1))
        .await
        .expect("agent lists RuleBundles");
    Api::<Node>::all(agent.clone())
        .list(&ListParams::default().limit(1))
        .await
        .expect("agent lists Nodes");
    let report_name = format!("e2e-rbac-{}", common::unique());
    let report = serde_json::json!({"apiVersion": "ocisync.dev/v1alpha1", "kind": "NodeReport", "metadata": {"name": report_name}, "spec": {"bundles": []}});
    Api::<NodeReport>::all(agent.clone())
        .patch(
            &report_name,
            &PatchParams::apply("ocisync").force(),
            &Patch::Apply(&report),
        )
        .await
        .expect("agent writes a NodeReport");
    // ...and nothing else: no Secrets, no ConfigMaps, no bundles, no deleting reports
    forbidden(
        Api::<Secret>::namespaced(agent.clone(), &ns)
            .get(&secret_name)
            .await,
        "agent gets a Secret",
    );
    forbidden(
        Api::<Secret>::all(agent.clone())
            .list(&ListParams::default())
            .await,
        "agent lists Secrets",
    );
    forbidden(
        Api::<ConfigMap>::namespaced(agent.clone(), &ns)
            .list(&ListParams::default())
            .await,
        "agent lists ConfigMaps",
    );
    forbidden(
        Api::<NodeReport>::all(agent.clone())
            .delete(&report_name, &DeleteParams::default())
            .await,
        "agent deletes a report",
    );
    assert!(
        !can(
            &agent,
            "patch",
            "ocisync.dev",
            "rulebundles/status",
            Some(&ns)
        )
        .await
    );
    assert!(!can(&agent, "create", "", "configmaps", Some(&ns)).await);

    // the controller: its own kinds, ConfigMaps, named Secrets (get), reports, events
    Api::<ArtifactSource>::all(controller.clone())
        .list(&ListParams::default().limit(1))
        .await
        .expect("controller lists sources");
    Api::<Secret>::namespaced(controller.clone(), &ns)
        .get(&secret_name)
        .await
        .expect("controller gets a named Secret");
    forbidden(
        Api::<Secret>::namespaced(controller.clone(), &ns)
            .list(&ListParams::default())
            .await,
        "controller lists Secrets",
    );
    forbidden(
        Api::<Secret>::all(controller.clone())
            .list(&ListParams::default())
            .await,
        "controller lists all Secrets",
    );
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rbac-check"}, "data": {"a": "b"}});
    Api::<ConfigMap>::namespaced(controller.clone(), &ns)
        .patch(
            "rbac-check",
            &PatchParams::apply("ocisync").force(),
            &Patch::Apply(&cm),
        )
        .await
        .expect("controller writes a ConfigMap");
    Api::<NodeReport>::all(controller.clone())
        .delete(&report_name, &DeleteParams::default())
        .await
        .expect("controller deletes a stale report");
    for (verb, group, resource) in [
        ("patch", "ocisync.dev", "rulebundles/status"),
        ("patch", "ocisync.dev", "artifactsources/status"),
        ("delete", "", "configmaps"),
        ("create", "events.k8s.io", "events"),
        ("watch", "", "nodes"),
    ] {
        assert!(
            can(&controller, verb, group, resource, Some(&ns)).await,
            "controller {verb} {resource}"
        );
    }
    assert!(!can(&controller, "watch", "", "secrets", Some(&ns)).await);
    assert!(!can(&controller, "create", "", "secrets", Some(&ns)).await);

    // uninstall removes the cluster-scoped objects too
    let mut c = helm();
    c.args(["uninstall", &release, "--namespace", &ns, "--kubeconfig"])
        .arg(&env.kubeconfig);
    run_ok(&mut c);
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    assert!(
        roles
            .get_opt(&format!("{fullname}-controller"))
            .await
            .expect("get")
            .is_none()
    );
    common::deleted(
        Api::<Namespace>::all(admin)
            .delete(&ns, &DeleteParams::default())
            .await,
        "the namespace",
    );
}

/// Each YAML document of `path`, created with dryRun=All in `ns` (namespace stripped).
async fn dry_run_file(client: &kube::Client, ns: &str, path: &Path) -> usize {
    let text = std::fs::read_to_string(path).expect("read");
    let mut n = 0;
    for mut doc in documents(&text) {
        let (api_version, kind) = (
            doc["apiVersion"].as_str().expect("apiVersion").to_string(),
            doc["kind"].as_str().expect("kind").to_string(),
        );
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let plural = format!("{}s", kind.to_lowercase());
        let resource = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.clone(),
            kind: kind.clone(),
            plural,
        };
        if let Some(m) = doc["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let obj: DynamicObject = serde_json::from_value(doc).expect("object");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        let params = PostParams {
            dry_run: true,
            ..Default::default()
        };
        api.create(&params, &obj)
            .await
            .unwrap_or_else(|e| panic!("{}: {kind} rejected: {e}", path.display()));
        n += 1;
    }
    n
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn kustomize_bases_and_every_sample_validate_against_the_server() {
    let env = common::env();
    let admin = env.client().await;
    // CRDs first (idempotent), so the samples have schemas to meet
    let out = Command::new("kubectl")
        .args([
            "apply",
            "--server-side",
            "--field-manager=ocisync-e2e",
            "--force-conflicts",
            "-k",
            "config/crd",
        ])
        .current_dir(root())
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = format!("e2e-kustomize-{}", common::unique());
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let body: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &body)
        .await
        .expect("namespace");

    // config/default, in the test's namespace through an overlay, dry-run on the server
    // kustomize takes relative paths only: the overlay lives under target/
    let overlay = tempfile::tempdir_in(root().join("target")).expect("overlay");
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!("namespace: {ns}\nresources:\n  - ../../config/default\n"),
    )
    .expect("overlay");
    let out = Command::new("kubectl")
        .args(["apply", "--dry-run=server", "-k"])
        .arg(overlay.path())
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .expect("kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in [
        "deployment.apps/ocisync-controller",
        "daemonset.apps/ocisync-agent",
        "clusterrole.rbac.authorization.k8s.io/ocisync-agent",
    ] {
        assert!(stdout.contains(kind), "{kind} in {stdout}");
    }

    let mut samples: Vec<PathBuf> = Vec::new();
    for dir in ["config/samples", "examples/flux/clusters/production/rules"] {
        for e in std::fs::read_dir(root().join(dir))
            .expect("samples")
            .flatten()
        {
            samples.push(e.path());
        }
    }
    let mut objects = 0;
    for path in &samples {
        objects += dry_run_file(&admin, &ns, path).await;
    }
    assert!(objects >= 10, "{objects} sample objects validated");
    // and the schema does reject a broken one
    let broken = overlay.path().join("broken.yaml");
    std::fs::write(&broken, "apiVersion: ocisync.dev/v1alpha1\nkind: ArtifactSource\nmetadata: {name: b}\nspec: {url: https://not-oci, interval: 1m}\n").expect("write");
    let result = tokio::spawn({
        let admin = admin.clone();
        let ns = ns.clone();
        async move { dry_run_file(&admin, &ns, &broken).await }
    })
    .await;
    assert!(result.is_err(), "a non-oci URL must be rejected");
    common::deleted(
        namespaces.delete(&ns, &DeleteParams::default()).await,
        "the namespace",
    );
}
