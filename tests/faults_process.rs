//! Process and disk faults: the controller SIGKILLed in the middle of a 100 MiB pull and
//! around its ConfigMap writes, the store's filesystem full, and an agent restarted while
//! its controller is unreachable. After each: no partial revision in the store, nothing
//! served that was not verified, the last good content kept, and convergence by itself.

mod common;

use common::ready_at;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Which;
use common::agent::{Agent, bundle_ready, delete_nodes, node, report_entry, revision_of};
use common::controller::{Harness, harness, push_files};
use common::faults::Row;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use ocisync::api::{ArtifactSource, NodeReport, RuleBundle};
use ocisync::oci::registry::sha256_digest;

fn reason_is(reason: &'static str) -> impl Fn(&ArtifactSource) -> bool {
    move |o| common::source_ready(o).is_some_and(|(_, r, _)| r == reason)
}

/// Bytes that do not compress, so the layer is as large as the files.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Total bytes of the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Checks every blob in `dir` hashes to its name: (how many, the names that do not).
fn blobs_intact(dir: &Path) -> (usize, Vec<String>) {
    let mut broken = Vec::new();
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("blobs dir").flatten() {
        count += 1;
        let name = entry.file_name().to_string_lossy().to_string();
        let bytes = std::fs::read(entry.path()).expect("read blob");
        if sha256_digest(&bytes) != format!("sha256:{name}") {
            broken.push(name);
        }
    }
    (count, broken)
}

/// The status of a GET of the artifact server's copy of the file with digest `file`, and
/// whether its bytes hash to that digest.
async fn served(h: &Harness, file: &str) -> (u16, bool) {
    let hex = file.trim_start_matches("sha256:");
    match reqwest::get(format!("{}/blobs/sha256/{hex}", h.base_url)).await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap_or_default();
            (status, sha256_digest(&body) == file)
        }
        Err(_) => (0, false),
    }
}

fn push(h: &Harness, dir: &Path, repo: &str, files: &[(&str, &[u8])]) -> String {
    push_files(
        &h.env,
        Which::Plain,
        dir,
        &format!("{repo}:1"),
        "generic",
        files,
        &[],
    )
}

async fn source(h: &Harness, repo: &str, interval: &str) {
    h.create(
        "files",
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"},
            "interval": interval, "insecure": true}),
    )
    .await;
}

/// Four 25 MiB files of noise: one 100 MiB layer.
fn big_files() -> Vec<(String, Vec<u8>)> {
    ["a.bin", "b.bin", "c.bin", "d.bin"]
        .iter()
        .zip(11u64..)
        .map(|(name, seed)| (name.to_string(), noise(25 << 20, seed)))
        .collect()
}

/// Waits until `min` bytes of a pull are staged in `store`, then SIGKILLs the controller;
/// returns the bytes staged then.
async fn kill_mid_pull(h: &mut Harness, store: &Path, min: u64) -> u64 {
    let start = Instant::now();
    while bytes_under(&store.join("tmp")) < min {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the pull did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let staged = bytes_under(&store.join("tmp"));
    h.kill_controller();
    staged
}

/// What a killed pull left in `store`: no index of revision `digest` and only the last
/// good one's, every blob hashing to its name. Returns (blobs, files of it already there).
fn nothing_partial(store: &Path, digest: &str, files: &[(String, Vec<u8>)]) -> (usize, usize) {
    let indexes = std::fs::read_dir(store.join("revisions"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        indexes, 1,
        "the index of the last good revision kept, and only it"
    );
    let index = format!("revisions/{}.json", digest.trim_start_matches("sha256:"));
    assert!(
        !store.join(index).exists(),
        "no index of the revision whose pull was killed"
    );
    let blobs = store.join("blobs/sha256");
    let (whole, broken) = blobs_intact(&blobs);
    assert!(
        broken.is_empty(),
        "blobs whose bytes do not hash to their name: {broken:?}"
    );
    let there = |bytes: &[u8]| {
        blobs
            .join(sha256_digest(bytes).trim_start_matches("sha256:"))
            .exists()
    };
    (whole, files.iter().filter(|(_, b)| there(b)).count())
}

/// Polls until source `files` is Ready at `digest`, asserting that the file `watched` is
/// never served with bytes other than its own; returns how long that took.
async fn whole_until_ready(h: &Harness, digest: &str, watched: &str) -> Duration {
    let start = Instant::now();
    loop {
        let o = h.api.get("files").await.expect("source");
        if ready_at(digest)(&o) {
            return start.elapsed();
        }
        let (status, intact) = served(h, watched).await;
        assert!(
            status != 200 || intact,
            "served bytes that do not match their digest"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not Ready at the new revision"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_controller_killed_in_the_middle_of_a_100_mib_pull_leaves_nothing_partial() {
    let mut h = harness().await;
    let store = tempfile::tempdir().expect("store");
    h.restart_controller(store.path(), &[]);
    let work = tempfile::tempdir().expect("work");
    let repo = h.env.repo(Which::Plain, "killed-mid-pull").to_string();
    let d1 = push(&h, work.path(), &repo, &[("small.bin", b"v1")]);
    source(&h, &repo, "1h").await;
    h.wait("files", "Ready at v1", ready_at(&d1)).await;

    let files = big_files();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    let d2 = push(&h, work.path(), &repo, &refs);
    h.request_check_nowait("files", "big").await;
    let staged = kill_mid_pull(&mut h, store.path(), 30 << 20).await;
    let (whole, committed) = nothing_partial(store.path(), &d2, &files);

    h.restart_controller(store.path(), &[]);
    let took = whole_until_ready(&h, &d2, &sha256_digest(&files[3].1)).await;
    assert_eq!(
        bytes_under(&store.path().join("tmp")),
        0,
        "the staging area emptied"
    );
    for (name, bytes) in &files {
        assert_eq!(
            served(&h, &sha256_digest(bytes)).await,
            (200, true),
            "{name} served whole"
        );
    }
    Row::new("process", "controller-sigkill-mid-100mib-pull")
        .injected(format!("controller SIGKILLed with {} MiB of a 100 MiB layer staged", staged >> 20))
        .outcome(format!("after the kill: no index of the new revision, only the last good one's; {whole} blobs, all hashing to their names ({committed} of the new revision's 4 files, verified, already there); after restart everything served whole, staging emptied; Ready at the new revision {:.1} s after the restart", took.as_secs_f64()))
        .recovered_after(took)
        .record();
    h.cleanup().await;
}

/// A tmpfs of `mib` MiB mounted for the test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` where this process may not mount (not root) and the environment does not
    /// require it.
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("mount point");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(!common::required(), "cannot mount a tmpfs (needs root)");
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Fills the filesystem of `dir` until about `leave` bytes are free: another tenant of
/// the volume, which the store's own accounting does not see.
fn ballast(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("ballast");
    let free = rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail * s.f_frsize)
        .expect("statvfs");
    std::fs::write(&path, vec![1u8; free.saturating_sub(leave) as usize]).expect("ballast");
    path
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_full_store_filesystem_is_store_failed_keeps_the_last_good_revision_and_recovers() {
    let Some(volume) = Tmpfs::mount(32) else {
        return;
    };
    let mut h = harness().await;
    let store = volume.path().join("store");
    h.restart_controller(&store, &[]);
    let work = tempfile::tempdir().expect("work");
    let repo = h.env.repo(Which::Plain, "full-store").to_string();
    let v1 = noise(1 << 20, 3);
    let d1 = push(&h, work.path(), &repo, &[("v1.bin", &v1)]);
    source(&h, &repo, "1h").await;
    h.wait("files", "Ready at v1", ready_at(&d1)).await;

    let fill = ballast(volume.path(), 2 << 20);
    let v2 = noise(8 << 20, 4);
    let d2 = push(&h, work.path(), &repo, &[("v2.bin", &v2)]);
    h.request_check_nowait("files", "full").await;
    let failed = h
        .wait("files", "StoreFailed", reason_is("StoreFailed"))
        .await;
    let message = common::source_ready(&failed)
        .map(|(_, _, m)| m.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("No space left on device"),
        "a clear message: {message}"
    );
    let o = h.api.get("files").await.expect("source");
    assert_eq!(
        o.status.and_then(|s| s.artifact).map(|a| a.digest),
        Some(d1.clone()),
        "status keeps the last good revision"
    );
    assert_eq!(
        served(&h, &sha256_digest(&v1)).await,
        (200, true),
        "the last good revision still served"
    );
    assert_eq!(
        bytes_under(&store.join("tmp")),
        0,
        "nothing half-written left in the staging area"
    );

    std::fs::remove_file(&fill).expect("space returns");
    let back = Instant::now();
    h.wait("files", "Ready at v2 once space returned", ready_at(&d2))
        .await;
    let took = back.elapsed();
    assert_eq!(
        served(&h, &sha256_digest(&v2)).await,
        (200, true),
        "the new revision served whole"
    );
    Row::new("disk", "store-filesystem-full")
        .injected("the store's 32 MiB volume filled by another writer to 2 MiB free; an 8 MiB revision pushed")
        .outcome(format!("StoreFailed ({message}); status and artifact server kept the last good revision; staging area empty; Ready at the new revision {:.1} s after space returned, without being asked", took.as_secs_f64()))
        .recovered_after(took)
        .record();
    h.cleanup().await;
    drop(volume);
}

/// A TCP forwarder between an agent and its controller, to cut and restore the path.
struct Link {
    port: u16,
    to: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Link {
    async fn new(to: &str) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut link = Link {
            port,
            to: to.to_string(),
            task: None,
        };
        link.task = Some(tokio::spawn(forward(listener, link.to.clone())));
        link
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Refuses connections and drops the open ones.
    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind again");
        self.task = Some(tokio::spawn(forward(listener, self.to.clone())));
    }
}

async fn forward(listener: tokio::net::TcpListener, to: String) {
    let mut open = tokio::task::JoinSet::new();
    while let Ok((mut client, _)) = listener.accept().await {
        let to = to.clone();
        open.spawn(async move {
            if let Ok(mut server) = tokio::net::TcpStream::connect(&to).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

/// The bundle's entry in the node's report: (reason, revision).
async fn entry(h: &Harness, node: &str) -> Option<(String, Option<String>)> {
    let reports: Api<NodeReport> = Api::all(h.client.clone());
    let r = reports.get_opt(node).await.ok().flatten();
    report_entry(r.as_ref(), "falco")
}

/// One node and its agent, reaching its controller through a [`Link`] the test can cut,
/// and a bundle of source `rules` onto that node.
struct CutNode {
    h: Harness,
    node: String,
    link: Link,
    agent: Agent,
    repo: String,
    work: tempfile::TempDir,
}

impl CutNode {
    async fn new() -> CutNode {
        let h = harness().await;
        let node_name = format!("e2e-fault-{}", common::unique());
        node(&h, &node_name, serde_json::json!({"e2e-fault": node_name})).await;
        let link = Link::new(h.base_url.trim_start_matches("http://")).await;
        let agent = Agent::start(&h, &node_name, &link.url());
        let repo = h.env.repo(Which::Plain, "agent-cut").to_string();
        let work = tempfile::tempdir().expect("work");
        CutNode {
            h,
            node: node_name,
            link,
            agent,
            repo,
            work,
        }
    }

    fn rules(&self, v: &str) -> String {
        format!("- rule: {v} {}\n", self.node)
    }

    fn push(&self, v: &str) {
        let target = format!("{}:1", self.repo);
        let files = [("rules.yaml", self.rules(v).into_bytes())];
        let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, &b[..])).collect();
        push_files(
            &self.h.env,
            Which::Plain,
            self.work.path(),
            &target,
            "falco-rules",
            &files,
            &[],
        );
    }

    /// Source and bundle at `v1`, on the node.
    async fn at_v1(&self) -> String {
        self.push("v1");
        let spec = serde_json::json!({"url": format!("oci://{}", self.repo), "ref": {"tag": "1"}, "interval": "1h", "insecure": true});
        self.h.create("rules", spec).await;
        let spec = serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "rules"}}],
            "nodeFiles": {"directory": "/etc/falco/rules.d", "nodeSelector": {"matchLabels": {"e2e-fault": self.node}}}}});
        self.h.apply::<RuleBundle>("falco", spec).await;
        let b = self
            .h
            .wait_for::<RuleBundle>("falco", "Ready", |b| b.is_some_and(bundle_ready))
            .await;
        let start = Instant::now();
        while self.on_node() != self.rules("v1") {
            assert!(start.elapsed() < Duration::from_secs(60), "v1 on the node");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b.and_then(|b| revision_of(&b)).expect("revision")
    }

    fn on_node(&self) -> String {
        std::fs::read_to_string(self.agent.dir().join("rules.yaml")).unwrap_or_default()
    }

    /// Waits until the node's report says `reason` at `revision` (any revision: `None`),
    /// and `also` holds, asserting the files stay at `v1` meanwhile.
    async fn reported(
        &self,
        reason: &str,
        revision: Option<&str>,
        also: impl Fn() -> bool,
        keep: Option<&str>,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let e = entry(&self.h, &self.node).await;
            let matches = e.as_ref().is_some_and(|(r, rev)| {
                r == reason && (revision.is_none() || rev.as_deref() == revision)
            });
            if matches && also() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{reason} reported: {e:?}"
            );
            if let Some(v) = keep {
                assert_eq!(
                    self.on_node(),
                    self.rules(v),
                    "the files stay while the controller is unreachable"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn an_agent_restarted_while_its_controller_is_unreachable_keeps_its_files_and_catches_up() {
    let mut c = CutNode::new().await;
    let r1 = c.at_v1().await;
    // the path to the controller is cut; v2 is pushed and becomes the bundle's revision
    c.link.cut();
    c.push("v2");
    c.h.request_check("rules", "v2").await;
    let b =
        c.h.wait_for::<RuleBundle>("falco", "at v2", move |b| {
            b.and_then(revision_of).is_some_and(|r| r != r1)
        })
        .await;
    let r2 = b.and_then(|b| revision_of(&b)).expect("revision");
    c.agent.kill();
    let logged = c.agent.log_text().len();
    c.agent.spawn();
    // the restarted agent itself fails to fetch (its own log says so), then reports it
    let log = c.agent.log.clone();
    let its_own = move || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .get(logged..)
            .is_some_and(|t| t.contains("FetchFailed"))
    };
    c.reported("FetchFailed", None, its_own, Some("v1")).await;
    assert_eq!(
        c.on_node(),
        c.rules("v1"),
        "the files stay after the restart"
    );

    c.link.restore().await;
    let took = c.reported("Applied", Some(&r2), || true, None).await;
    assert_eq!(c.on_node(), c.rules("v2"), "the new revision on the node");
    Row::new("node", "agent-restarted-controller-unreachable")
        .injected("the agent's path to the controller cut (connections refused), a new revision pushed, the agent restarted")
        .outcome(format!("the agent kept the old files across the restart and its new process reported FetchFailed; Applied at the new revision {:.1} s after the path was restored", took.as_secs_f64()))
        .recovered_after(took)
        .record();
    delete_nodes(&c.h, &[&c.node]).await;
    c.h.cleanup().await;
}

/// The marker both files of the ConfigMap carry, if they agree (`None`: absent or mixed).
async fn config_map_marker(h: &Harness) -> Option<String> {
    let maps: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let data = maps.get_opt("rules").await.ok().flatten()?.data?;
    let (a, b) = (data.get("a.yaml")?, data.get("b.yaml")?);
    let marker = |s: &str| s.split_whitespace().last().map(str::to_string);
    (marker(a) == marker(b)).then(|| marker(a)).flatten()
}

/// Waits until `store` holds revision `digest`'s index (the controller then writes status,
/// then the ConfigMap), waits `delay` more, SIGKILLs the controller and returns the
/// ConfigMap's marker then.
async fn kill_after_index(
    h: &mut Harness,
    store: &Path,
    digest: &str,
    delay: Duration,
) -> Option<String> {
    let index = store.join(format!(
        "revisions/{}.json",
        digest.trim_start_matches("sha256:")
    ));
    let start = Instant::now();
    while !index.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "{digest} stored");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(delay).await;
    h.kill_controller();
    config_map_marker(h).await
}

/// Waits until the ConfigMap holds version `want` and the bundle is Ready, asserting the
/// ConfigMap is never mixed or missing meanwhile; returns how long that took.
async fn config_map_reaches(h: &Harness, want: &str) -> Duration {
    let start = Instant::now();
    let bundles: Api<RuleBundle> = Api::namespaced(h.client.clone(), &h.ns);
    loop {
        let marker = config_map_marker(h).await;
        assert!(marker.is_some(), "never a mixed or missing ConfigMap");
        let b = bundles.get("falco").await.expect("bundle");
        if marker.as_deref() == Some(want) && bundle_ready(&b) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "v{want} in the ConfigMap after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_controller_killed_around_its_config_map_writes_converges_without_a_mixed_config_map() {
    let mut h = harness().await;
    let store = tempfile::tempdir().expect("store");
    h.restart_controller(store.path(), &[]);
    let work = tempfile::tempdir().expect("work");
    let repo = h.env.repo(Which::Plain, "killed-mid-write").to_string();
    let env = common::env();
    let push_version = |i: usize| {
        let (a, b) = (format!("- rule: a {i}\n"), format!("- macro: b {i}\n"));
        let files = [("a.yaml", a.as_bytes()), ("b.yaml", b.as_bytes())];
        push_files(
            &env,
            Which::Plain,
            work.path(),
            &format!("{repo}:1"),
            "falco-rules",
            &files,
            &[],
        )
    };
    let d0 = push_version(0);
    h.create("rules", serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true})).await;
    h.wait("rules", "Ready at v0", ready_at(&d0)).await;
    let spec = serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "rules"}}], "configMap": {"name": "rules"}}});
    h.apply::<RuleBundle>("falco", spec).await;
    h.wait_for::<RuleBundle>("falco", "Ready at v0", |b| b.is_some_and(bundle_ready))
        .await;

    let (mut worst, mut before_write) = (Duration::ZERO, 0);
    for (i, delay_ms) in (1usize..).zip([0u64, 0, 5, 10, 20, 40, 80, 160]) {
        let d = push_version(i);
        h.request_check_nowait("rules", &format!("v{i}")).await;
        let seen =
            kill_after_index(&mut h, store.path(), &d, Duration::from_millis(delay_ms)).await;
        assert!(seen.is_some(), "the ConfigMap holds one whole revision");
        if seen != Some(i.to_string()) {
            before_write += 1;
        }
        h.restart_controller(store.path(), &[]);
        worst = worst.max(config_map_reaches(&h, &i.to_string()).await);
    }
    assert!(
        before_write > 0,
        "no kill landed before the ConfigMap write: the test did not test it"
    );
    Row::new("process", "controller-sigkill-around-configmap-writes")
        .injected("controller SIGKILLed 8 times, 0 to 160 ms after a new revision's index was committed (before or while the bundle's ConfigMap is written), restarted on the same store")
        .outcome(format!("{before_write} of 8 kills landed before the ConfigMap held the new revision; after each restart it and the bundle reached the latest revision (worst {:.1} s)", worst.as_secs_f64()))
        .recovered_after(worst)
        .record();
    h.cleanup().await;
}
