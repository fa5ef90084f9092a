//! Node agents as local processes, one per fake Node (a `Node` object with labels and a
//! host-root directory of its own), and what the agent tests share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use ocisync::api::{ArtifactSource, NodeReport, RuleBundle};

use super::controller::{DEADLINE, Harness};

pub const RULES_DIR: &str = "etc/falco/rules.d";

/// One fake node: its Node object and its agent process.
pub struct Agent {
    pub root: tempfile::TempDir,
    pub child: Option<Child>,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl Agent {
    /// An agent allowed to write `/etc/falco` for every namespace.
    pub fn start(h: &Harness, node: &str, controller_url: &str) -> Agent {
        Agent::start_with(h, node, controller_url, &["--allowed-dir=/etc/falco"])
    }

    /// An agent with `flags` (its grants and budgets) besides the usual ones.
    pub fn start_with(h: &Harness, node: &str, controller_url: &str, flags: &[&str]) -> Agent {
        let root = tempfile::tempdir().expect("host root");
        std::fs::create_dir_all(root.path().join("etc/falco")).expect("allowed dir");
        let mut args = vec![
            "agent".to_string(),
            format!("--node-name={node}"),
            format!("--host-root={}", root.path().display()),
            format!("--controller-url={controller_url}"),
            "--resync=2s".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--kubeconfig={}", h.env.kubeconfig.display()),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let log = std::env::temp_dir().join(format!("ocisync-agent-{node}.log"));
        let mut a = Agent {
            root,
            child: None,
            args,
            log,
        };
        a.spawn();
        a
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = super::ocisync()
            .args(&self.args)
            .env("RUST_LOG", "info,ocisync=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill the agent"); // SIGKILL
            c.wait().expect("reap the agent");
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join(RULES_DIR)
    }

    /// Restarts the agent with the credentials of `kubeconfig`.
    pub fn restart_as(&mut self, kubeconfig: &Path) {
        self.kill();
        self.args.retain(|a| !a.starts_with("--kubeconfig="));
        self.args
            .push(format!("--kubeconfig={}", kubeconfig.display()));
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The visible files (following links) and their bytes; dangling links are absent.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        visible_files(&self.dir())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // best effort: the test is over, perhaps failed, and a panic here would hide why
            c.kill().ok();
            c.wait().ok();
        }
    }
}

pub fn visible_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name.starts_with("..") {
                return None;
            }
            Some((name, std::fs::read(e.path()).ok()?))
        })
        .collect()
}

pub async fn node(h: &Harness, name: &str, labels: serde_json::Value) {
    let nodes: Api<Node> = Api::all(h.client.clone());
    let body: Node = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}),
    )
    .expect("node");
    nodes
        .create(&PostParams::default(), &body)
        .await
        .expect("create node");
}

pub async fn relabel(h: &Harness, name: &str, labels: serde_json::Value) {
    let nodes: Api<Node> = Api::all(h.client.clone());
    let patch = serde_json::json!({"metadata": {"labels": labels}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("relabel");
}

pub async fn delete_nodes(h: &Harness, names: &[&str]) {
    let nodes: Api<Node> = Api::all(h.client.clone());
    for n in names {
        super::deleted(
            nodes.delete(n, &DeleteParams::default()).await,
            &format!("node {n}"),
        );
    }
}

/// Polls `check` until it holds or the deadline passes, then fails with `what`.
pub async fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if start.elapsed() > DEADLINE => panic!("{what}: not within {DEADLINE:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub fn nodes_of(b: &RuleBundle) -> Option<(i32, i32, i32)> {
    let n = b.status.as_ref()?.nodes.as_ref()?;
    Some((n.desired, n.updated, n.failed))
}

pub fn bundle_ready(b: &RuleBundle) -> bool {
    b.status.as_ref().is_some_and(|s| {
        s.observed_generation == b.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

pub fn revision_of(b: &RuleBundle) -> Option<String> {
    b.status.as_ref()?.revision.clone()
}

/// A bundle spec: the files of source `rules` (only `include`, unless empty) into
/// `directory` on the nodes `selector` selects.
pub fn node_bundle(
    include: &[&str],
    directory: &str,
    selector: serde_json::Value,
) -> serde_json::Value {
    let mut source = serde_json::json!({"sourceRef": {"name": "rules"}});
    if !include.is_empty() {
        source["include"] = serde_json::json!(include);
    }
    serde_json::json!({"spec": {
        "sources": [source],
        "nodeFiles": {"directory": directory, "nodeSelector": selector},
    }})
}

/// Waits until bundle `name` is Ready at its generation with node counts `counts`
/// (desired, updated, failed).
pub async fn rolled_out(
    h: &Harness,
    name: &str,
    what: &str,
    counts: (i32, i32, i32),
) -> RuleBundle {
    h.wait_for::<RuleBundle>(name, what, move |b| {
        b.is_some_and(|b| bundle_ready(b) && nodes_of(b) == Some(counts))
    })
    .await
    .expect("bundle")
}

pub async fn source(h: &Harness, name: &str, repo: &impl std::fmt::Display) {
    h.create(name, serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "10s", "insecure": true}))
        .await;
    h.wait_for::<ArtifactSource>(name, "Ready", |s| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await;
}

pub fn report_entry(r: Option<&NodeReport>, bundle: &str) -> Option<(String, Option<String>)> {
    let e = r?.spec.bundles.iter().find(|b| b.name == bundle)?;
    Some((e.reason.to_string(), e.revision.clone()))
}
