//! What the end-to-end tests share: the environment printed by `e2e/testenv.sh up`.
//!
//! The tests that need that environment are `#[ignore]`d, so a plain `cargo test` reports
//! them as ignored, not passed; `make test` and `make e2e` run them with `--include-ignored`.
//! A test that runs without the environment fails: it never passes by doing nothing.
#![allow(dead_code)] // each test file uses a part of it

pub mod agent;
pub mod controller;
pub mod falcoctl;
pub mod faults;
pub mod signing;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ocisync::oci::auth::Credentials;
use ocisync::oci::reference::Repository;
use ocisync::oci::registry::{Registry, RegistryOptions};

/// The test environment.
pub struct Env {
    pub kubeconfig: PathBuf,
    pub plain: String,
    pub plain_root: PathBuf,
    pub plain_log: PathBuf,
    pub tls: String,
    pub tls_root: PathBuf,
    pub tls_log: PathBuf,
    pub ca: PathBuf,
    pub user: String,
    pub password: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The environment; panics (the test fails) when it is not set up.
pub fn env() -> Env {
    let found = (|| {
        Some(Env {
            kubeconfig: var("KUBECONFIG")?.into(),
            plain: var("OCISYNC_REGISTRY_PLAIN")?,
            plain_root: var("OCISYNC_REGISTRY_PLAIN_ROOT")?.into(),
            plain_log: var("OCISYNC_REGISTRY_PLAIN_LOG")?.into(),
            tls: var("OCISYNC_REGISTRY_TLS")?,
            tls_root: var("OCISYNC_REGISTRY_TLS_ROOT")?.into(),
            tls_log: var("OCISYNC_REGISTRY_TLS_LOG")?.into(),
            ca: var("OCISYNC_REGISTRY_CA")?.into(),
            user: var("OCISYNC_REGISTRY_USER")?,
            password: var("OCISYNC_REGISTRY_PASSWORD")?,
        })
    })();
    found.unwrap_or_else(|| {
        panic!(
            "the test environment is not set: run `eval \"$(e2e/testenv.sh up --node)\"` first, or `make e2e`"
        )
    })
}

/// Whether `OCISYNC_E2E_REQUIRED=1` (set by `make test` and `make e2e`): then a case a test
/// cannot set up here (such as a full disk, which needs root) is a failure, not a skip.
pub fn required() -> bool {
    var("OCISYNC_E2E_REQUIRED").as_deref() == Some("1")
}

/// Which of the two local registries.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    Plain,
    Tls,
}

pub const BOTH: [Which; 2] = [Which::Plain, Which::Tls];

impl Env {
    /// A client of the environment's cluster, as its kubeconfig's user.
    pub async fn client(&self) -> kube::Client {
        ocisync::tls::install_crypto_provider();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(config).expect("client")
    }

    pub fn host(&self, which: Which) -> &str {
        match which {
            Which::Plain => &self.plain,
            Which::Tls => &self.tls,
        }
    }

    pub fn storage_root(&self, which: Which) -> &PathBuf {
        match which {
            Which::Plain => &self.plain_root,
            Which::Tls => &self.tls_root,
        }
    }

    pub fn log(&self, which: Which) -> &PathBuf {
        match which {
            Which::Plain => &self.plain_log,
            Which::Tls => &self.tls_log,
        }
    }

    pub fn options(&self, which: Which) -> RegistryOptions {
        match which {
            Which::Plain => RegistryOptions {
                insecure: true,
                ..RegistryOptions::default()
            },
            Which::Tls => RegistryOptions {
                ca_pem: Some(std::fs::read(&self.ca).expect("read the test CA")),
                credentials: Some(Credentials {
                    username: self.user.clone(),
                    password: self.password.clone(),
                }),
                ..RegistryOptions::default()
            },
        }
    }

    pub fn registry(&self, which: Which) -> Registry {
        Registry::new(self.host(which), self.options(which)).expect("registry client")
    }

    /// A fresh repository name (registry data persists across runs).
    pub fn repo(&self, which: Which, name: &str) -> Repository {
        Repository {
            registry: self.host(which).to_string(),
            name: format!("e2e/{name}-{}", unique()),
        }
    }

    /// CLI flags to reach a registry: `--insecure`, or the CA and a Docker config.
    pub fn cli_flags(&self, which: Which, dir: &std::path::Path) -> Vec<String> {
        match which {
            Which::Plain => vec!["--insecure".into()],
            Which::Tls => {
                let config = dir.join("docker-config.json");
                let auth = base64_encode(&format!("{}:{}", self.user, self.password));
                std::fs::write(
                    &config,
                    format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.tls),
                )
                .expect("write docker config");
                vec![
                    "--ca-file".into(),
                    self.ca.display().to_string(),
                    "--docker-config".into(),
                    config.display().to_string(),
                ]
            }
        }
    }
}

/// Asserts that a cleanup delete worked: accepted, or the object was already gone (404).
pub fn deleted<T>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("delete {what}: {e}"),
    }
}

/// Lines in a registry access log, to count requests made between two points.
pub fn log_lines(path: &PathBuf) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A short unique suffix: time plus process id plus a counter.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    format!(
        "{:x}{:x}{}",
        nanos % 0xffff_ffff,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The ocisync binary built for these tests.
pub fn ocisync() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ocisync"));
    c.env_remove("RUST_BACKTRACE").env("NO_COLOR", "1");
    c
}

/// The Python with oras-py installed (`make deps`).
pub fn python() -> Option<PathBuf> {
    let p =
        PathBuf::from(var("OCISYNC_PYTHON").unwrap_or_else(|| "target/pyenv/bin/python".into()));
    let p = if p.is_relative() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
    } else {
        p
    };
    p.exists().then_some(p)
}

pub fn base64_encode_bytes(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The repository's root directory.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Helm binary `make deps` installs (or OCISYNC_HELM), run from the repository root.
pub fn helm() -> std::process::Command {
    let path = var("OCISYNC_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/tools/helm"));
    assert!(
        path.exists(),
        "no Helm at {}: run `make deps`",
        path.display()
    );
    let mut c = std::process::Command::new(path);
    c.current_dir(root());
    c
}

/// Runs a command that must succeed; its stdout.
pub fn run_ok(c: &mut std::process::Command) -> String {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 10-minute token for the ServiceAccount `sa` of `ns`, from the TokenRequest API.
pub async fn service_account_token(client: &kube::Client, ns: &str, sa: &str) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), ns);
    let request: TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 600}}),
    )
    .expect("token request");
    sas.create_token_request(sa, &kube::api::PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("token for {sa}: {e}"))
        .status
        .expect("token status")
        .token
}

/// The `Ready` condition of an ArtifactSource: (status, reason, message).
pub fn source_ready(o: &ocisync::api::ArtifactSource) -> Option<(String, String, String)> {
    ready_in(&o.status.as_ref()?.conditions)
}

/// Whether source `o` is Ready at manifest `digest`.
pub fn ready_at(digest: &str) -> impl Fn(&ocisync::api::ArtifactSource) -> bool + '_ {
    move |o| {
        o.status
            .as_ref()
            .and_then(|s| s.artifact.as_ref())
            .is_some_and(|a| a.digest == digest)
            && source_ready(o).is_some_and(|(status, _, _)| status == "True")
    }
}

/// The `Ready` condition of a RuleBundle: (status, reason, message).
pub fn bundle_ready(b: &ocisync::api::RuleBundle) -> Option<(String, String, String)> {
    ready_in(&b.status.as_ref()?.conditions)
}

fn ready_in(conditions: &[ocisync::api::condition::Condition]) -> Option<(String, String, String)> {
    let c = conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}
