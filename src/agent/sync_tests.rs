//! Passes against a temporary host root, with the API server mocked (tower-test).

use super::*;
use crate::agent::desired::AllowList;
use crate::agent::disk::Target;
use crate::agent::records;
use crate::agent::safedir::SafeDir;
use crate::api::NodeReport;
use crate::api::reason::NodeReason;
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
            platform: None,
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

/// What the API server saw of one request: method, path, the (reason, revision) of each
/// entry in the report written, and what the bundle's visible file held at that moment.
type Seen = (String, String, Vec<(String, Option<String>)>, String);

/// A pass that applies a new revision marks the bundle `Applying` in the NodeReport before
/// the files swap (a report never claims a revision a crash mid-write replaced), and the
/// loop's report after the pass says `Applied`.
#[tokio::test]
async fn the_report_says_applying_before_the_swap_and_applied_after() {
    let (fixture, mut api) = Fixture::new();
    let (old, new) = ("- rule: old\n", "- rule: new\n");
    fixture.applied("r1", old.as_bytes());
    let (blobs, fetched) = serve_blob(new.as_bytes().to_vec()).await;
    let env = fixture.env(&blobs);
    let mut memory = Memory {
        node_uid: "node-uid".into(),
        ..Memory::default()
    };
    let agent = async {
        let bundles = [bundle("r2", new.as_bytes())];
        let outcome = pass(&env, &mut memory, &bundles, &BTreeMap::new(), false).await;
        report_pass(&env, &mut memory, report::spec(outcome), false).await
    };
    let mut seen: Vec<Seen> = Vec::new();
    let visible = fixture.dir().join("rules.yaml");
    let server = answer(&mut api, &visible, &mut seen);
    let written = tokio::select! {
        written = agent => written,
        _ = server => unreachable!("the API server answers until the agent is done"),
    };
    written.unwrap();
    let entry = |reason: &str, revision: Option<&str>| {
        vec![(reason.to_string(), revision.map(str::to_string))]
    };
    let path = "/apis/ocisync.dev/v1alpha1/nodereports/node-1".to_string();
    assert_eq!(
        seen,
        [
            ("GET".into(), path.clone(), vec![], old.into()),
            (
                "PATCH".into(),
                path.clone(),
                entry("Applying", None),
                old.into()
            ),
            (
                "PATCH".into(),
                path,
                entry("Applied", Some("r2")),
                new.into()
            ),
        ]
    );
    let hex = Digest::of(new.as_bytes()).hex().to_string();
    assert_eq!(*fetched.lock().unwrap(), [format!("/blobs/sha256/{hex}")]);
}

/// Answers the agent's NodeReport requests as the API server would (the report starts as
/// `Applied` at `r1`, at resourceVersion 1; each write stores its spec and bumps the
/// version), noting each request in `seen`.
async fn answer(api: &mut ApiHandle, visible: &Path, seen: &mut Vec<Seen>) {
    use http_body_util::BodyExt as _;
    let mut stored = NodeReport::new(
        NODE,
        NodeReportSpec {
            applied: 1,
            bundles: vec![BundleReport {
                namespace: "ns".into(),
                name: "b".into(),
                uid: UID.into(),
                generation: Some(1),
                revision: Some("r1".into()),
                reason: "Applied".into(),
                message: String::new(),
            }],
            ..NodeReportSpec::default()
        },
    );
    let mut version = 1;
    stored.metadata.resource_version = Some(version.to_string());
    while let Some((request, respond)) = api.next_request().await {
        let on_disk = std::fs::read_to_string(visible).unwrap();
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let mut entries = Vec::new();
        if parts.method == http::Method::PATCH {
            let patch: serde_json::Value = serde_json::from_slice(&body).unwrap();
            // every write is conditional on the version last seen
            let expected = version.to_string();
            assert_eq!(patch["metadata"]["resourceVersion"], expected.as_str());
            stored.spec = serde_json::from_value(patch["spec"].clone()).unwrap();
            version += 1;
            stored.metadata.resource_version = Some(version.to_string());
            entries = (stored.spec.bundles.iter())
                .map(|b| (b.reason.to_string(), b.revision.clone()))
                .collect();
        }
        let json = serde_json::to_vec(&stored).unwrap();
        respond.send_response(Response::new(Body::from(json)));
        let method = parts.method.to_string();
        seen.push((method, parts.uri.path().to_string(), entries, on_disk));
    }
}

/// Serves `bytes` to every GET on a local port (the controller's artifact server, for the
/// fetch); returns its base URL and the paths requested.
async fn serve_blob(bytes: Vec<u8>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = paths.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut stream = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            let path = line.split(' ').nth(1).unwrap_or_default().to_string();
            noted.lock().unwrap().push(path);
            while line != "\r\n" {
                line.clear();
                stream.read_line(&mut line).await.unwrap();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                bytes.len()
            );
            let stream = stream.get_mut();
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
        }
    });
    (base, paths)
}

/// Answers every GET with `headers` and `body`, then keeps the connection open.
async fn serve_raw(headers: &'static [u8], body: &'static [u8]) -> String {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let mut stream = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            while stream.read_line(&mut line).await.is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let inner = stream.get_mut();
            inner.write_all(b"HTTP/1.1 200 OK\r\n").await.ok();
            inner.write_all(headers).await.ok();
            inner.write_all(b"\r\n").await.ok();
            inner.write_all(body).await.ok();
            open.push(stream); // never finished: a client that reads on waits
        }
    });
    base
}

#[test]
fn a_fetch_may_take_its_grace_plus_a_second_per_256_kib() {
    use super::super::fetch::fetch_deadline;
    assert_eq!(fetch_deadline(0), Duration::from_secs(30));
    assert_eq!(fetch_deadline(5 << 20), Duration::from_secs(50));
    assert_eq!(
        fetch_deadline(u64::MAX).as_secs(),
        30 + u64::MAX / (256 * 1024)
    );
}

/// A fetch keeps what the artifact server sends only when it is the file: a byte past its
/// size or another digest is refused, with the reason the report carries.
#[tokio::test]
async fn a_fetch_refuses_bytes_that_are_not_the_file() {
    use super::super::fetch::{FetchError, fetch};
    let http = super::super::fetch::client(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wanted = wanted_file(b"- rule: a\n");
    let cases = [
        (&b"- rule: b\n"[..], "another digest"),
        (&b"- rule: a\n\n"[..], "too large"),
        (&b"- rule: a\n"[..], "kept"),
    ];
    for (i, (sent, expected)) in cases.into_iter().enumerate() {
        let (base, _) = serve_blob(sent.to_vec()).await;
        let path = dir.path().join(i.to_string());
        let out = std::fs::File::create_new(&path).unwrap();
        let outcome = match fetch(&http, &base, &wanted, out).await {
            Err(e @ FetchError::DigestMismatch { .. }) => ("another digest", e.reason().as_str()),
            Err(e @ FetchError::TooLarge { .. }) => ("too large", e.reason().as_str()),
            Err(e) => panic!("{e}"),
            Ok(()) => {
                assert_eq!(std::fs::read(&path).unwrap(), sent);
                ("kept", "")
            }
        };
        let reason = if expected == "kept" {
            ""
        } else {
            "DigestMismatch"
        };
        assert_eq!(outcome, (expected, reason));
    }
    // a response announcing more than the file is refused before its body is read (this
    // server sends 10 bytes of a claimed GiB, then nothing: streaming it would wait)
    let base = serve_raw(b"content-length: 1073741824\r\n", b"- rule: a\n").await;
    let out = std::fs::File::create_new(dir.path().join("huge")).unwrap();
    let e = fetch(&http, &base, &wanted, out).await.unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { .. }), "{e}");
    // nothing listens on the discard port
    let out = std::fs::File::create_new(dir.path().join("none")).unwrap();
    let e = fetch(&http, "http://127.0.0.1:9", &wanted, out)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), NodeReason::FetchFailed, "{e}");
}
