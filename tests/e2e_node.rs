//! End-to-end on a real node (`e2e/testenv.sh up --node`): the image built without Docker,
//! `helm install` of the chart, the controller and agent as pods Ready through their own
//! probes, a consumer pod mounting the ConfigMap, files written on the host by the agent
//! pod, new versions, the controller pod deleted mid-way, and `helm uninstall`.
//! Ignored unless asked for (`--include-ignored`, as `make test` does); it then fails without
//! a node (OCISYNC_NODE). `make test` brings one up; with KUBECONFIG's own cluster there is
//! none, and `make` leaves out the tests named `real_node_*` (saying so) unless
//! OCISYNC_NODE_REQUIRED=1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::controller::wait_on;
use common::{helm, root, run_ok};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use ocisync::api::RuleBundle;

struct Node {
    name: String,
    registry: String,
    state: PathBuf,
}

/// The real node of the environment; panics (the test fails) when there is none.
fn node() -> Node {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        var("OCISYNC_NODE"),
        var("OCISYNC_NODE_REGISTRY"),
        var("OCISYNC_NODE_STATE"),
    ) {
        (Some(name), Some(registry), Some(state)) => Node {
            name,
            registry,
            state: state.into(),
        },
        _ => panic!("there is no real node: run `eval \"$(e2e/testenv.sh up --node)\"` first"),
    }
}

/// Pod phases, container states and the last log lines of every pod in `ns`, read from the
/// node's log directory: what a failing wait prints.
async fn diagnose(client: &kube::Client, ns: &str) -> String {
    let mut out = String::new();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for p in pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let name = p.metadata.name.clone().unwrap_or_default();
        let status = p.status.clone().unwrap_or_default();
        out += &format!("\npod {name}: phase {:?}", status.phase);
        for c in status.container_statuses.unwrap_or_default() {
            out += &format!("\n  {}: ready {} state {:?}", c.name, c.ready, c.state);
        }
        let logs = Path::new("/var/log/pods");
        if let Ok(entries) = std::fs::read_dir(logs) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{ns}_{name}_"))
                {
                    for c in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                        for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                            let tail: Vec<&str> = text.lines().rev().take(8).collect();
                            out += &format!(
                                "\n  log {}:\n    {}",
                                f.path().display(),
                                tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
                            );
                        }
                    }
                }
            }
        }
    }
    out
}

/// Waits with a deadline; on failure prints the pods' states and logs.
async fn wait_or_diagnose<K>(
    client: &kube::Client,
    ns: &str,
    api: Api<K>,
    name: &str,
    what: &str,
    cond: impl Fn(Option<&K>) -> bool + Send + 'static,
) -> Option<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static,
{
    let deadline = Duration::from_secs(120);
    match common::controller::wait_within(api, name, deadline, cond).await {
        Some(o) => o,
        None => panic!(
            "{name}: not {what} within {deadline:?}; pods:{}",
            diagnose(client, ns).await
        ),
    }
}

fn push(env: &common::Env, dir: &Path, repo: &str, rules: &str) {
    let file = dir.join(common::unique()).join("falco_rules.yaml");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, rules).expect("write");
    run_ok(
        common::ocisync()
            .arg("push")
            .arg(&file)
            .arg(format!("{}/{repo}:1", env.plain))
            .args(["--type", "falco-rules", "--insecure", "-O", "json"]),
    );
}

fn bundle_at(rev_not: Option<String>) -> impl Fn(Option<&RuleBundle>) -> bool + Send + 'static {
    move |b| {
        b.and_then(|b| b.status.as_ref()).is_some_and(|s| {
            s.revision.is_some()
                && s.revision != rev_not
                && s.nodes
                    .as_ref()
                    .is_some_and(|n| n.desired == 1 && n.updated == 1)
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    }
}

#[tokio::test]
#[ignore = "needs the test environment with a real node: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn real_node_helm_installed_pods_deliver_rules_to_a_configmap_consumer_and_the_host() {
    let env = common::env();
    let node = node();
    let client = env.client().await;
    let u = common::unique();
    let ns = format!("e2e-node-{u}");
    let host = PathBuf::from(format!("/tmp/ocisync-node-e2e-{u}"));
    let work = tempfile::tempdir().expect("tempdir");

    // 1. the image without Docker, then helm install with it
    let image = format!("{}/e2e/ocisync", env.plain);
    run_ok(
        Command::new(root().join("e2e/image.sh"))
            .arg(format!("{image}:{u}"))
            .env("OCISYNC_BIN", env!("CARGO_BIN_EXE_ocisync")),
    );
    run_ok(
        helm()
            .args(["install", "ocisync", "charts/ocisync", "--namespace", &ns, "--create-namespace", "--kubeconfig"])
            .arg(&env.kubeconfig)
            .args(["--set", &format!("image.repository={image}"), "--set", &format!("image.tag={u}")])
            .args(["--set", &format!("agent.allowedDirs={{{}/rules}}", host.display())])
            .args(["--set", &format!("agent.stateDir={}/state", host.display())])
            // the real node only, whatever fake Nodes other tests leave behind
            .args(["--set", &format!("agent.nodeSelector.kubernetes\\.io/hostname={}", node.name)])
            // no cluster DNS here: the Service's environment variables instead
            .args(["--set", "agent.controllerURL=http://$(OCISYNC_CONTROLLER_SERVICE_HOST):$(OCISYNC_CONTROLLER_SERVICE_PORT)"]),
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    wait_or_diagnose(
        &client,
        &ns,
        deployments.clone(),
        "ocisync-controller",
        "available",
        |d| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.available_replicas == Some(2))
        },
    )
    .await;
    wait_or_diagnose(
        &client,
        &ns,
        daemonsets.clone(),
        "ocisync-agent",
        "ready on the node",
        |d| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.number_ready == 1 && s.desired_number_scheduled == 1)
        },
    )
    .await;

    // 2. an artifact, a source (reached from the pod on the bridge gateway), a bundle
    let repo = format!("e2e/node-rules-{u}");
    let v1 = format!("- rule: node v1 {u}\n  condition: evt.type = open\n");
    push(&env, work.path(), &repo, &v1);
    let dir = format!("{}/rules/falco", host.display());
    // the real node only, whatever fake Nodes other tests leave behind
    let selector = serde_json::json!({"matchLabels": {"kubernetes.io/hostname": node.name}});
    let sources: Api<ocisync::api::ArtifactSource> = Api::namespaced(client.clone(), &ns);
    let bundles: Api<RuleBundle> = Api::namespaced(client.clone(), &ns);
    let source = serde_json::json!({"apiVersion": "ocisync.dev/v1alpha1", "kind": "ArtifactSource", "metadata": {"name": "rules"},
        "spec": {"url": format!("oci://{}/{repo}", node.registry), "ref": {"tag": "1"}, "interval": "10s", "insecure": true}});
    sources
        .patch(
            "rules",
            &PatchParams::apply("ocisync-e2e").force(),
            &Patch::Apply(&source),
        )
        .await
        .expect("source");
    let bundle = serde_json::json!({"apiVersion": "ocisync.dev/v1alpha1", "kind": "RuleBundle", "metadata": {"name": "falco"},
        "spec": {"sources": [{"sourceRef": {"name": "rules"}}], "configMap": {"name": "falco-rules"}, "nodeFiles": {"directory": dir, "nodeSelector": selector}}});
    bundles
        .patch(
            "falco",
            &PatchParams::apply("ocisync-e2e").force(),
            &Patch::Apply(&bundle),
        )
        .await
        .expect("bundle");
    let b = wait_or_diagnose(
        &client,
        &ns,
        bundles.clone(),
        "falco",
        "on the node",
        bundle_at(None),
    )
    .await
    .expect("bundle");
    let r1 = b.status.and_then(|s| s.revision);
    let host_file = PathBuf::from(&dir).join("falco_rules.yaml");
    assert_eq!(
        std::fs::read_to_string(&host_file).ok().as_deref(),
        Some(v1.as_str()),
        "host file written by the agent pod"
    );

    // 3. a consumer pod mounting the ConfigMap
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let consumer: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "consumer"}, "spec": {
        "containers": [{"name": "c", "image": format!("{}/e2e/busybox:1", env.plain), "command": ["/bin/sleep", "3600"],
            "volumeMounts": [{"name": "rules", "mountPath": "/etc/falco/rules.d"}]}],
        "volumes": [{"name": "rules", "configMap": {"name": "falco-rules"}}], "terminationGracePeriodSeconds": 0}}))
    .expect("pod");
    pods.create(&PostParams::default(), &consumer)
        .await
        .expect("consumer pod");
    let pod = wait_or_diagnose(&client, &ns, pods.clone(), "consumer", "running", |p| {
        p.and_then(|p| p.status.as_ref())
            .is_some_and(|s| s.phase.as_deref() == Some("Running"))
    })
    .await
    .expect("pod");
    let uid = pod.metadata.uid.clone().expect("uid");
    let mounted = node.state.join(format!(
        "kubelet/pods/{uid}/volumes/kubernetes.io~configmap/rules/falco_rules.yaml"
    ));
    assert_eq!(
        std::fs::read_to_string(&mounted).ok().as_deref(),
        Some(v1.as_str()),
        "the consumer sees the rules"
    );

    // 4. a new version: the mounted file and the host file change; nodes 1/1
    let v2 = format!("- rule: node v2 {u}\n  condition: evt.type = open\n");
    push(&env, work.path(), &repo, &v2);
    let b = wait_or_diagnose(
        &client,
        &ns,
        bundles.clone(),
        "falco",
        "at the new version",
        bundle_at(r1.clone()),
    )
    .await
    .expect("bundle");
    let r2 = b.status.and_then(|s| s.revision);
    assert_eq!(
        std::fs::read_to_string(&host_file).ok().as_deref(),
        Some(v2.as_str())
    );
    eventually_file(&mounted, &v2).await;

    // 5. high availability: two controller replicas Ready; SIGKILL of the leader's process
    // and a push inside the failover; then the leader's pod deleted (graceful) and a push
    // inside its termination window (the old pod still running, the new one starting)
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let leader = holder(&leases).await.expect("a leader holds the Lease");
    let leader_pod = leader.split('_').next().unwrap_or_default().to_string();
    let pid = process_of_pod(&leader_pod).expect("the leader's process on this node");
    let killed = Instant::now();
    run_ok(Command::new("kill").args(["-KILL", &pid.to_string()]));
    let v3 = format!("- rule: node v3 {u}\n  condition: evt.type = open\n");
    push(&env, work.path(), &repo, &v3);
    let b = wait_or_diagnose(
        &client,
        &ns,
        bundles.clone(),
        "falco",
        "at v3 after the leader was killed",
        bundle_at(r2),
    )
    .await
    .expect("bundle");
    let converged = killed.elapsed();
    let r3 = b.status.and_then(|s| s.revision);
    let new_leader = holder(&leases).await.unwrap_or_default();
    assert_eq!(
        std::fs::read_to_string(&host_file).ok().as_deref(),
        Some(v3.as_str())
    );
    eventually_file(&mounted, &v3).await;
    eprintln!(
        "failover: leader {leader} SIGKILLed; {new_leader} leads; v3 in the ConfigMap and on the host after {converged:?}"
    );
    // whichever candidate leads now (the other replica, or the killed container restarted
    // in its pod with a new identity), it is not the killed process
    assert_ne!(new_leader, leader, "a new process holds the Lease");
    let new_pod = new_leader.split('_').next().unwrap_or_default().to_string();
    wait_or_diagnose(
        &client,
        &ns,
        deployments.clone(),
        "ocisync-controller",
        "two replicas available after the kill",
        |d| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.available_replicas == Some(2))
        },
    )
    .await;
    pods.delete(&new_pod, &DeleteParams::default())
        .await
        .expect("delete the leader pod");
    let v4 = format!("- rule: node v4 {u}\n  condition: evt.type = open\n");
    push(&env, work.path(), &repo, &v4);
    let r4 = wait_or_diagnose(
        &client,
        &ns,
        bundles.clone(),
        "falco",
        "at v4 after the leader pod was replaced",
        bundle_at(r3),
    )
    .await
    .expect("bundle")
    .status
    .and_then(|s| s.revision);
    assert_eq!(
        std::fs::read_to_string(&host_file).ok().as_deref(),
        Some(v4.as_str())
    );
    eventually_file(&mounted, &v4).await;
    wait_or_diagnose(
        &client,
        &ns,
        deployments.clone(),
        "ocisync-controller",
        "available again",
        |d| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.available_replicas == Some(2))
        },
    )
    .await;

    // 6b. push webhooks through the chart: the receiver on (a rolling update of both
    // replicas), the source's interval 1 h so only the webhook can bring a push quickly; a
    // wrong token is refused and changes nothing, the right one brings the push in seconds
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let token = format!("tok-{u}");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "hook"}, "stringData": {"token": token}}),
    )
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    run_ok(
        helm()
            .args([
                "upgrade",
                "ocisync",
                "charts/ocisync",
                "--namespace",
                &ns,
                "--reuse-values",
                "--kubeconfig",
            ])
            .arg(&env.kubeconfig)
            .args([
                "--set",
                "webhook.enabled=true",
                "--set",
                "webhook.existingSecret=hook",
                "--wait",
                "--timeout",
                "180s",
            ]),
    );
    // the rollout settled: two controller pods, none terminating (an agent sent to a pod
    // that is stopping gets a refusal and retries after its backoff: that is the failover
    // case above, not what this step measures)
    let settled = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=controller"))
            .await
            .expect("pods");
        let ready = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        let stable = list.items.len() == 2
            && list
                .items
                .iter()
                .all(|p| p.metadata.deletion_timestamp.is_none() && ready(p));
        if stable {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(120),
            "the rollout did not settle"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let slow = serde_json::json!({"apiVersion": "ocisync.dev/v1alpha1", "kind": "ArtifactSource", "metadata": {"name": "rules"},
        "spec": {"url": format!("oci://{}/{repo}", node.registry), "ref": {"tag": "1"}, "interval": "1h", "insecure": true}});
    sources
        .patch(
            "rules",
            &PatchParams::apply("ocisync-e2e").force(),
            &Patch::Apply(&slow),
        )
        .await
        .expect("source");
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns);
    let hook_ip = services
        .get("ocisync-webhook")
        .await
        .expect("webhook Service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("cluster IP");
    let hook = format!("http://{hook_ip}:9292/hook");
    let body = format!(r#"{{"repository": "{repo}", "tag": "1"}}"#);
    let post = |auth: String| {
        let (hook, body) = (hook.clone(), body.clone());
        async move {
            reqwest::Client::new()
                .post(&hook)
                .header("Authorization", auth)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let v5 = format!("- rule: node hook {u}\n  condition: evt.type = open\n");
    push(&env, work.path(), &repo, &v5);
    assert_eq!(post(format!("Bearer {token}x")).await, 401, "a wrong token");
    let s = sources.get("rules").await.expect("source");
    assert!(
        !s.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ocisync.dev/requested-at"),
        "a refused webhook changes nothing"
    );
    let posted = Instant::now();
    assert_eq!(
        post(format!("Bearer {token}")).await,
        202,
        "the right token"
    );
    let b = wait_or_diagnose(
        &client,
        &ns,
        bundles.clone(),
        "falco",
        "at the webhook's push",
        bundle_at(r4.clone()),
    )
    .await
    .expect("bundle");
    let in_config_map = posted.elapsed();
    eventually_file(&host_file, &v5).await;
    eprintln!(
        "webhook: push in the ConfigMap {in_config_map:?} and on the host {:?} after the notification",
        posted.elapsed()
    );
    // the goal is 2 s (bench/RESULTS.md has p50/p99); 5 s leaves room for a loaded machine
    assert!(in_config_map < Duration::from_secs(5), "{in_config_map:?}");
    let r5 = b.status.and_then(|s| s.revision);
    assert_ne!(r5, r4);
    sources
        .patch(
            "rules",
            &PatchParams::apply("ocisync-e2e").force(),
            &Patch::Apply(&source),
        )
        .await
        .expect("the 10 s interval again");

    // 7. bad input, each a clear reason, never a hang:
    // a node directory not mounted into the agent
    let unmounted = serde_json::json!({"apiVersion": "ocisync.dev/v1alpha1", "kind": "RuleBundle", "metadata": {"name": "unmounted"},
        "spec": {"sources": [{"sourceRef": {"name": "rules"}}], "nodeFiles": {"directory": format!("/tmp/ocisync-not-mounted-{u}"), "nodeSelector": selector}}});
    bundles
        .patch(
            "unmounted",
            &PatchParams::apply("ocisync-e2e").force(),
            &Patch::Apply(&unmounted),
        )
        .await
        .expect("bundle");
    let b = wait_or_diagnose(
        &client,
        &ns,
        bundles.clone(),
        "unmounted",
        "NodeFailed",
        |b| {
            b.and_then(|b| b.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "NodeFailed"))
        },
    )
    .await
    .expect("bundle");
    let message = b
        .status
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| c.message.clone())
                .collect::<String>()
        })
        .unwrap_or_default();
    assert!(message.contains("DirectoryNotAllowed"), "{message}");
    // an image that cannot be pulled
    let broken: Pod = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "unpullable"}, "spec": {
        "containers": [{"name": "c", "image": format!("{}/e2e/does-not-exist:1", env.plain)}]}}),
    )
    .expect("pod");
    pods.create(&PostParams::default(), &broken)
        .await
        .expect("pod");
    wait_or_diagnose(
        &client,
        &ns,
        pods.clone(),
        "unpullable",
        "failing to pull",
        |p| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
        },
    )
    .await;
    // a controller Service that does not answer: the agent reports FetchFailed, the last
    // good files stay
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns);
    let dead: k8s_openapi::api::core::v1::Service =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "dead"},
        "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 9090}]}}))
        .expect("service");
    services
        .create(&PostParams::default(), &dead)
        .await
        .expect("service");
    run_ok(
        helm()
            .args([
                "upgrade",
                "ocisync",
                "charts/ocisync",
                "--namespace",
                &ns,
                "--reuse-values",
                "--kubeconfig",
            ])
            .arg(&env.kubeconfig)
            .args([
                "--set",
                "agent.controllerURL=http://$(DEAD_SERVICE_HOST):$(DEAD_SERVICE_PORT)",
            ]),
    );
    let v6 = format!("- rule: node v6 {u}\n  condition: evt.type = open\n");
    push(&env, work.path(), &repo, &v6);
    let b = wait_or_diagnose(
        &client,
        &ns,
        bundles.clone(),
        "falco",
        "NodeFailed with FetchFailed",
        |b| {
            b.and_then(|b| b.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.reason == "NodeFailed" && c.message.contains("FetchFailed"))
            })
        },
    )
    .await
    .expect("bundle");
    let message = b
        .status
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| c.message.clone())
                .collect::<String>()
        })
        .unwrap_or_default();
    eprintln!("controller Service not answering: {message}");
    assert_eq!(
        std::fs::read_to_string(&host_file).ok().as_deref(),
        Some(v5.as_str()),
        "last good files kept"
    );

    // 6. helm uninstall: the agent goes, the files it wrote stay (Falco keeps its rules)
    run_ok(
        helm()
            .args([
                "uninstall",
                "ocisync",
                "--namespace",
                &ns,
                "--wait",
                "--kubeconfig",
            ])
            .arg(&env.kubeconfig),
    );
    wait_on(daemonsets.clone(), "ocisync-agent", "deleted", |d| {
        d.is_none()
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&host_file).ok().as_deref(),
        Some(v5.as_str()),
        "files kept after uninstall"
    );
    common::deleted(
        Api::<Namespace>::all(client.clone())
            .delete(&ns, &DeleteParams::default())
            .await,
        "the namespace",
    );
    std::fs::remove_dir_all(&host).expect("remove the files on the host");
}

/// Kubelet refreshes ConfigMap volumes on its sync period (10 s here): poll with a deadline.
/// The holder of the chart's leader Lease.
async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("ocisync-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// The pid, on this machine (the real node), of the controller process of pod `name`.
fn process_of_pod(name: &str) -> Option<u32> {
    let want = format!("POD_NAME={name}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let is_it = environ.split(|b| *b == 0).any(|v| v == want.as_bytes())
            && cmdline.split(|b| *b == 0).any(|a| a == b"controller");
        is_it.then_some(pid)
    })
}

async fn eventually_file(path: &Path, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if std::fs::read_to_string(path).ok().as_deref() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not get the new version in 90 s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
