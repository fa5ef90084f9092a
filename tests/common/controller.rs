//! A controller process of its own per test: its namespace, port and content store, the
//! CRDs applied, and waits on status with a deadline.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use ocisync::api::ArtifactSource;
use serde::de::DeserializeOwned;

use super::{Env, Which};

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Harness {
    pub env: Env,
    pub client: kube::Client,
    pub ns: String,
    pub api: Api<ArtifactSource>,
    pub base_url: String,
    pub controller: Child,
    _store: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // best effort: the test is over, perhaps failed, and a panic here would hide why
        self.controller.kill().ok();
        self.controller.wait().ok();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub async fn harness() -> Harness {
    harness_with(&[]).await
}

/// [`harness`] with more `ocisync controller` arguments.
pub async fn harness_with(extra_args: &[&str]) -> Harness {
    let env = super::env();
    let client = env.client().await;
    // CRDs (idempotent) and a namespace of our own
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in ocisync::api::crds() {
        let name = crd.metadata.name.clone().expect("name");
        crds.patch(
            &name,
            &PatchParams::apply("ocisync-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        tokio::time::timeout(
            DEADLINE,
            await_condition(
                crds.clone(),
                &name,
                kube::runtime::conditions::is_crd_established(),
            ),
        )
        .await
        .expect("CRD established in time")
        .expect("watch CRD");
    }
    let ns = format!("e2e-{}", super::unique());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .expect("namespace");

    let store = tempfile::tempdir().expect("store dir");
    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}");
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("ocisync-controller-{ns}.log")))
            .expect("log file");
    let controller = super::ocisync()
        .args([
            "controller",
            "--namespace",
            &ns,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--watch-secrets",
            "--artifact-base-url",
            &base_url,
            "--store-dir",
        ])
        .arg(store.path())
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(extra_args)
        .env("POD_NAME", format!("controller-{port}"))
        .env("RUST_LOG", "info,ocisync=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start controller");
    let api = Api::namespaced(client.clone(), &ns);
    Harness {
        env,
        client,
        ns,
        api,
        base_url,
        controller,
        _store: store,
    }
}

impl Harness {
    /// Replaces the harness's controller with one on `store` and `extra` flags.
    pub fn restart_controller(&mut self, store: &std::path::Path, extra: &[&str]) {
        self.kill_controller();
        let listen = self.base_url.trim_start_matches("http://").to_string();
        let log = std::env::temp_dir().join(format!(
            "ocisync-controller-{}-{}.log",
            self.ns,
            super::unique()
        ));
        self.controller = super::ocisync()
            .args(["controller", "--namespace", &self.ns, "--listen", &listen])
            .args(["--artifact-base-url", &self.base_url])
            .args(extra)
            .arg("--store-dir")
            .arg(store)
            .arg("--kubeconfig")
            .arg(&self.env.kubeconfig)
            .env("POD_NAME", format!("controller-{listen}"))
            .env("RUST_LOG", "info,ocisync=debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("start controller");
    }

    /// The controller's content store directory.
    pub fn store_dir(&self) -> &Path {
        self._store.path()
    }

    pub async fn create(&self, name: &str, spec: serde_json::Value) {
        let obj: ArtifactSource = serde_json::from_value(serde_json::json!({
            "apiVersion": "ocisync.dev/v1alpha1", "kind": "ArtifactSource",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("source");
        self.api
            .create(&PostParams::default(), &obj)
            .await
            .expect("create source");
    }

    /// Waits until `cond` holds for the source, or fails with its last status.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&ArtifactSource) -> bool,
    ) -> ArtifactSource {
        let c = move |o: Option<&ArtifactSource>| o.is_some_and(&cond);
        match tokio::time::timeout(DEADLINE, await_condition(self.api.clone(), name, c)).await {
            Ok(Ok(Some(o))) => o,
            _ => {
                let last = self.api.get(name).await.ok().and_then(|o| o.status);
                panic!("{name}: not {what} within {DEADLINE:?}; status: {last:#?}");
            }
        }
    }

    /// SIGKILLs the controller and reaps it.
    pub fn kill_controller(&mut self) {
        self.controller.kill().expect("kill the controller");
        self.controller.wait().expect("reap the controller");
    }

    /// Asks for a check of source `name` now, without waiting for it.
    pub async fn request_check_nowait(&self, name: &str, value: &str) {
        let patch =
            serde_json::json!({"metadata": {"annotations": {"ocisync.dev/requested-at": value}}});
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
    }

    pub async fn request_check(&self, name: &str, value: &str) -> ArtifactSource {
        self.request_check_nowait(name, value).await;
        let v = value.to_string();
        self.wait(name, "checked", move |o| {
            o.status
                .as_ref()
                .and_then(|s| s.last_handled_requested_at.as_deref())
                == Some(v.as_str())
        })
        .await
    }

    pub async fn secret(&self, name: &str, data: &[(&str, Vec<u8>)], type_: &str) {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    serde_json::Value::String(super::base64_encode_bytes(v)),
                )
            })
            .collect();
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": type_, "data": data});
        secrets
            .patch(
                name,
                &PatchParams::apply("ocisync-e2e").force(),
                &Patch::Apply(&body),
            )
            .await
            .expect("apply secret");
    }

    pub async fn cleanup(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        super::deleted(
            namespaces.delete(&self.ns, &DeleteParams::default()).await,
            &format!("namespace {}", self.ns),
        );
    }
}

impl Harness {
    /// Applies any namespaced object of ours (server-side apply, test field manager).
    pub async fn apply<K>(&self, name: &str, body: serde_json::Value) -> K
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.ns);
        let mut body = body;
        body["apiVersion"] = K::api_version(&()).into();
        body["kind"] = K::kind(&()).into();
        body["metadata"]["name"] = name.into();
        api.patch(
            name,
            &PatchParams::apply("ocisync-e2e").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {name}: {e}", K::kind(&())))
    }

    /// Waits until `cond` holds for a namespaced object (`None`: absent).
    pub async fn wait_for<K>(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(Option<&K>) -> bool + Send + 'static,
    ) -> Option<K>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug
            + Send
            + 'static,
    {
        wait_on(
            Api::namespaced(self.client.clone(), &self.ns),
            name,
            what,
            cond,
        )
        .await
    }
}

/// Waits until `cond` holds for an object of `api` (`None`: absent), or fails with its last
/// state.
pub async fn wait_on<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    cond: impl Fn(Option<&K>) -> bool + Send + 'static,
) -> Option<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static,
{
    match wait_within(api.clone(), name, DEADLINE, cond).await {
        Some(o) => o,
        None => {
            let last = api.get_opt(name).await.ok().flatten();
            let last = last
                .map(|o| serde_json::to_string_pretty(&o).unwrap_or_default())
                .unwrap_or_else(|| "absent".into());
            panic!(
                "{} {name}: not {what} within {DEADLINE:?}; last: {last}",
                K::kind(&())
            );
        }
    }
}

/// The object once `cond` holds for it (`Some(None)`: it is absent), or `None` when the
/// deadline passed first.
pub async fn wait_within<K>(
    api: Api<K>,
    name: &str,
    deadline: Duration,
    cond: impl Fn(Option<&K>) -> bool + Send + 'static,
) -> Option<Option<K>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    match tokio::time::timeout(deadline, await_condition(api, name, cond)).await {
        Ok(Ok(o)) => Some(o),
        _ => None,
    }
}

/// `ocisync push` of one Falco rules file, returning the pushed digest.
pub fn push_file(
    env: &Env,
    which: Which,
    dir: &Path,
    target: &str,
    name: &str,
    content: &[u8],
    extra: &[&str],
) -> String {
    push_files(
        env,
        which,
        dir,
        target,
        "falco-rules",
        &[(name, content)],
        extra,
    )
}

/// `ocisync push --type <type>` of files written fresh under `dir`; the pushed digest.
pub fn push_files(
    env: &Env,
    which: Which,
    dir: &Path,
    target: &str,
    type_: &str,
    files: &[(&str, &[u8])],
    extra: &[&str],
) -> String {
    let (_, paths) = write_tree(dir, files);
    push_paths(env, which, dir, &paths, target, type_, extra)
}

/// `ocisync push --type <type>` of one directory holding `files` (relative paths, written
/// fresh under `dir`); the pushed digest.
pub fn push_tree(
    env: &Env,
    which: Which,
    dir: &Path,
    target: &str,
    type_: &str,
    files: &[(&str, &[u8])],
) -> String {
    let (root, _) = write_tree(dir, files);
    push_paths(env, which, dir, &[root], target, type_, &[])
}

/// Writes `files` under a new directory below `dir`: that directory and the files' paths.
fn write_tree(
    dir: &Path,
    files: &[(&str, &[u8])],
) -> (std::path::PathBuf, Vec<std::path::PathBuf>) {
    let root = dir.join(super::unique());
    let mut paths = Vec::new();
    for (name, content) in files {
        let file = root.join(name);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write");
        paths.push(file);
    }
    (root, paths)
}

/// `ocisync push` of `paths`, printing JSON; the pushed digest.
fn push_paths(
    env: &Env,
    which: Which,
    dir: &Path,
    paths: &[std::path::PathBuf],
    target: &str,
    type_: &str,
    extra: &[&str],
) -> String {
    let out = super::ocisync()
        .arg("push")
        .args(paths)
        .arg(target)
        .args(["--type", type_, "-O", "json"])
        .args(extra)
        .args(env.cli_flags(which, dir))
        .output()
        .expect("push");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["digest"].as_str().expect("digest").to_string()
}

/// Short Lease times for tests that run several replicas.
pub const TEST_LEASE: [&str; 6] = [
    "--lease-duration",
    "4s",
    "--renew-deadline",
    "3s",
    "--lease-retry-period",
    "500ms",
];

/// Another controller process, killed and reaped when dropped (the test passed or failed).
pub struct Replica {
    pub child: Child,
    /// Its artifact server, `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Harness {
    /// A replica beside the harness's controller: same namespace and Lease (leader
    /// election with [`TEST_LEASE`]), its own port, `store`, log and name (`<name>-<port>`),
    /// and `extra` flags.
    pub fn replica(&self, name: &str, store: &Path, extra: &[&str]) -> Replica {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("ocisync-controller-{}-{name}.log", self.ns));
        let child = super::ocisync()
            .args(["controller", "--namespace", &self.ns, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "--artifact-base-url",
                &self.base_url,
                "--advertise-url",
                &base,
            ])
            .args(["--leader-elect", "--lease-namespace", &self.ns])
            .args(TEST_LEASE)
            .args(extra)
            .arg("--store-dir")
            .arg(store)
            .arg("--kubeconfig")
            .arg(&self.env.kubeconfig)
            .env("POD_NAME", format!("{name}-{port}"))
            .env("RUST_LOG", "info,ocisync=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("start a replica");
        Replica { child, base }
    }

    /// The holder of the leader Lease in the harness's namespace.
    pub async fn lease_holder(&self) -> Option<String> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), &self.ns);
        leases
            .get_opt("ocisync-controller")
            .await
            .ok()??
            .spec?
            .holder_identity
    }
}
