//! Process and disk faults: the controller SIGKILLed in the middle of a 100 MiB pull and
//! around its ConfigMap writes, the store's filesystem full, and an agent restarted while
//! its controller is unreachable. After each: no partial revision in the store, nothing
//! served that was not verified, the last good content kept, and convergence by itself.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Which;
use common::agent::{Agent, bundle_ready, delete_nodes, node, report_entry, revision_of};
use common::controller::{Harness, harness, push_files, wait_on};
use common::faults::Row;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use ocisync::api::{ArtifactSource, NodeReport, RuleBundle};
use ocisync::oci::registry::sha256_digest;

/// Whether source `o` is Ready at manifest `digest`.
fn ready_at(digest: &str) -> impl Fn(&ArtifactSource) -> bool + '_ {
    move |o| {
        o.status
            .as_ref()
            .and_then(|s| s.artifact.as_ref())
            .is_some_and(|a| a.digest == digest)
            && common::source_ready(o).is_some_and(|(status, _, _)| status == "True")
    }
}

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

    let parts: Vec<Vec<u8>> = (0..4).map(|i| noise(25 << 20, 11 + i)).collect();
    let names = ["a.bin", "b.bin", "c.bin", "d.bin"];
    let files: Vec<(&str, &[u8])> = names.iter().copied().zip(parts.iter().map(|p| &p[..])).collect();
    let d2 = push(&h, work.path(), &repo, &files);
    let watched = sha256_digest(&parts[3]);
    let start = Instant::now();
    h.request_check_nowait("files", "big").await;
    // kill once the pull has written 30 MiB of its 100 into the store's staging area
    while bytes_under(&store.path().join("tmp")) < 30 << 20 {
        assert!(start.elapsed() < Duration::from_secs(60), "the pull did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let staged = bytes_under(&store.path().join("tmp"));
    h.kill_controller();
    let revisions = std::fs::read_dir(store.path().join("revisions")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(revisions, 1, "the index of the last good revision kept, and only it");
    let index = store.path().join("revisions").join(format!("{}.json", d2.trim_start_matches("sha256:")));
    assert!(!index.exists(), "no index of the revision whose pull was killed");
    let blobs = store.path().join("blobs/sha256");
    let committed = names.len() - parts.iter().filter(|p| !blobs.join(sha256_digest(p).trim_start_matches("sha256:")).exists()).count();
    let (whole, broken) = blobs_intact(&blobs);
    assert!(broken.is_empty(), "blobs whose bytes do not hash to their name: {broken:?}");

    h.restart_controller(store.path(), &[]);
    // whatever is served meanwhile is whole (its bytes hash to the digest asked for)
    let restarted = Instant::now();
    loop {
        let o = h.api.get("files").await.expect("source");
        if ready_at(&d2)(&o) {
            break;
        }
        let (status, intact) = served(&h, &watched).await;
        assert!(status != 200 || intact, "served bytes that do not match their digest");
        assert!(restarted.elapsed() < Duration::from_secs(120), "not Ready at the new revision");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = restarted.elapsed();
    for (name, part) in names.iter().zip(&parts) {
        assert_eq!(served(&h, &sha256_digest(part)).await, (200, true), "{name} served whole");
    }
    Row::new("process", "controller-sigkill-mid-100mib-pull")
        .injected(format!("controller SIGKILLed with {} MiB of a 100 MiB layer staged", staged >> 20))
        .outcome(format!("after the kill: no index of the new revision, {whole} blobs all hashing to their names ({committed} of its 4 files, verified, already there), {revisions} index (the last good revision's) kept; after restart every file served whole; Ready at the new revision {:.1} s after the restart", took.as_secs_f64()))
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
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
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
    let failed = h.wait("files", "StoreFailed", reason_is("StoreFailed")).await;
    let message = common::source_ready(&failed).map(|(_, _, m)| m.to_string()).unwrap_or_default();
    assert!(message.contains("No space left on device"), "a clear message: {message}");
    let o = h.api.get("files").await.expect("source");
    assert_eq!(o.status.and_then(|s| s.artifact).map(|a| a.digest), Some(d1.clone()), "status keeps the last good revision");
    assert_eq!(served(&h, &sha256_digest(&v1)).await, (200, true), "the last good revision still served");
    assert_eq!(bytes_under(&store.join("tmp")), 0, "nothing half-written left in the staging area");

    std::fs::remove_file(&fill).expect("space returns");
    let back = Instant::now();
    h.wait("files", "Ready at v2 once space returned", ready_at(&d2)).await;
    let took = back.elapsed();
    assert_eq!(served(&h, &sha256_digest(&v2)).await, (200, true), "the new revision served whole");
    Row::new("disk", "store-filesystem-full")
        .injected("the store's 32 MiB volume filled by another writer to 2 MiB free; an 8 MiB revision pushed")
        .outcome(format!("StoreFailed ({message}); status and artifact server kept the last good revision; staging area empty; Ready at the new revision {:.1} s after space returned, without being asked", took.as_secs_f64()))
        .recovered_after(took)
        .record();
    h.cleanup().await;
    drop(volume);
}
