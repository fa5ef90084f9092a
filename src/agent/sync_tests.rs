//! Passes against a temporary host root, with the API server mocked (tower-test).

use super::*;
use crate::agent::desired::AllowList;
use crate::agent::disk::Target;
use crate::agent::records;
use crate::agent::safedir::SafeDir;
use crate::api::rule_bundle::{BundleFile, NodeFilesTarget, RuleBundleSpec, RuleBundleStatus};
use crate::digest::Digest;
use http::{Request, Response};
use kube::client::Body;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

pub(crate) type ApiHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub(crate) const NODE: &str = "node-1";
pub(crate) const UID: &str = "0000-uid";

/// A node's agent in a temporary host root granting `/etc/falco`, its API mocked.
pub(crate) struct Fixture {
    pub root: tempfile::TempDir,
    pub host: Host,
    pub budget: Budget,
    pub http: reqwest::Client,
    pub reporter: Reporter,
}

impl Fixture {
    pub fn new() -> (Fixture, ApiHandle) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/falco")).unwrap();
        let allow = AllowList::new(&["/etc/falco".into()]).unwrap();
        let host = Host::new(root.path().into(), root.path().join("state"), allow);
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let reporter = Reporter::new(kube::Api::all(client), NODE.into());
        let http = super::super::fetch::client(Duration::from_secs(10)).unwrap();
        let fixture = Fixture {
            root,
            host,
            budget: Budget::default(),
            http,
            reporter,
        };
        (fixture, handle)
    }

    pub fn env<'a>(&'a self, controller_url: &'a str) -> Env<'a> {
        Env {
            host: &self.host,
            budget: &self.budget,
            controller_url,
            http: &self.http,
            reporter: &self.reporter,
            seed: crate::backoff::seed_of(NODE),
        }
    }

    /// The bundle's directory on the host.
    pub fn dir(&self) -> std::path::PathBuf {
        self.root.path().join("etc/falco/rules.d")
    }

    /// Writes `revision` with `rules.yaml` holding `bytes` the way a pass does, and records
    /// the bundle, as a pass before this one would have.
    pub fn applied(&self, revision: &str, bytes: &[u8]) {
        let dir = SafeDir::open(
            &self.root.path().join("etc/falco"),
            Path::new("rules.d"),
            true,
        )
        .unwrap()
        .unwrap();
        let target = Target::new(dir, "ns.b".into());
        let staging = target.stage().unwrap();
        staging
            .create("rules.yaml")
            .unwrap()
            .write_all(bytes)
            .unwrap();
        target
            .commit(staging, revision, &[wanted_file(bytes)])
            .unwrap();
        records::save(&self.root.path().join("state"), &record()).unwrap();
    }
}

pub(crate) fn record() -> Record {
    Record {
        namespace: "ns".into(),
        name: "b".into(),
        uid: UID.into(),
        directory: "/etc/falco/rules.d".into(),
        moved_from: Vec::new(),
    }
}

pub(crate) fn wanted_file(bytes: &[u8]) -> WantedFile {
    WantedFile {
        key: "rules.yaml".into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
    }
}

/// Bundle `ns/b` for every node, in `/etc/falco/rules.d`, planned at `revision` with
/// `rules.yaml` holding `bytes`.
pub(crate) fn bundle(revision: &str, bytes: &[u8]) -> Arc<RuleBundle> {
    let mut b = RuleBundle::new(
        "b",
        RuleBundleSpec {
            node_files: Some(NodeFilesTarget {
                directory: "/etc/falco/rules.d".into(),
                node_selector: None,
            }),
            ..Default::default()
        },
    );
    b.metadata.namespace = Some("ns".into());
    b.metadata.uid = Some(UID.into());
    b.metadata.generation = Some(1);
    b.status = Some(RuleBundleStatus {
        observed_generation: Some(1),
        revision: Some(revision.into()),
        files: vec![BundleFile {
            path: "rules.yaml".into(),
            source: "s".into(),
            digest: Digest::of(bytes).to_string(),
            size: bytes.len() as i64,
        }],
        ..Default::default()
    });
    Arc::new(b)
}

/// More than a pipe holds (64 KiB), so its writer can only finish once a reader has read.
const THROUGH_A_PIPE: usize = 1 << 20;

/// A pass hashes files on a blocking thread: with the runtime's only thread, a task that
/// feeds the file the pass is hashing (a named pipe in place of the applied file) still
/// runs. Were the file hashed on the runtime thread, the pass would wait forever for bytes
/// that task can never send (the watchdog then fails the test).
#[test]
fn a_pass_hashing_a_file_leaves_the_runtime_free() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reports = runtime.block_on(pass_over_a_pipe());
        let _ = done.send(reports);
    });
    let reports = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("the pass blocked the async runtime while hashing a file");
    assert_eq!(
        reports
            .iter()
            .map(|r| (r.reason.as_str(), r.revision.as_deref()))
            .collect::<Vec<_>>(),
        [("Applied", Some("r1"))]
    );
}

/// Applies `r1`, puts a named pipe where its file is, and runs a full pass (which verifies
/// the file) while a task writes the file's bytes into the pipe.
async fn pass_over_a_pipe() -> Vec<BundleReport> {
    let (fixture, _api) = Fixture::new();
    let bytes: Vec<u8> = (0..THROUGH_A_PIPE).map(|i| (i % 251) as u8).collect();
    fixture.applied("r1", &bytes);
    let data = fixture.dir().join("..ocisync.ns.b..a/rules.yaml");
    std::fs::remove_file(&data).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &data,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Opened for reading and writing, so neither this open nor the pass's waits.
    let mut pipe = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(&data)
        .unwrap();
    let fed = bytes.clone();
    let feeder = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        pipe.write_all(&fed).await.unwrap();
    });
    let env = fixture.env("http://127.0.0.1:9");
    let mut memory = Memory::default();
    let labels = BTreeMap::new();
    let wanted = [bundle("r1", &bytes)];
    let reports = pass(&env, &mut memory, &wanted, &labels, true).await;
    feeder.await.unwrap();
    reports
}
