//! End-to-end: the content store's limits against the real API server and registry. A
//! source whose new revision would take its namespace over the quota, or the store over
//! its size limit, fails with `QuotaExceeded` and keeps serving its last good revision,
//! while the other sources go on and the controller keeps running.

mod common;

use common::Which;
use common::controller::{Harness, harness_with, push_files};
use ocisync::api::ArtifactSource;

fn ready(o: &ArtifactSource) -> Option<(String, String)> {
    let c = o
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

fn digest(o: &ArtifactSource) -> Option<String> {
    Some(o.status.as_ref()?.artifact.as_ref()?.digest.clone())
}

/// Pushes Falco rules files (`name`, bytes) to `target`; the digest.
fn push(h: &Harness, dir: &std::path::Path, target: &str, files: &[(&str, Vec<u8>)]) -> String {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    push_files(
        &h.env,
        Which::Plain,
        dir,
        target,
        "falco-rules",
        &files,
        &[],
    )
}

/// A rules file of about `size` bytes, unique to this run.
fn rules(size: usize) -> Vec<u8> {
    let mut text = format!("# {}\n- rule: r\n", common::unique());
    while text.len() < size {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    text.into_bytes()
}

/// Pushes a directory holding `files` (relative paths) as Falco rules; the digest.
fn push_dir(h: &Harness, dir: &std::path::Path, target: &str, files: &[(&str, Vec<u8>)]) -> String {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    common::controller::push_tree(&h.env, Which::Plain, dir, target, "falco-rules", &files)
}

async fn create(h: &Harness, name: &str, repo: &str) {
    h.create(
        name,
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "10s", "insecure": true}),
    )
    .await;
}

/// Asks for a check of `name` now (a push was just made) and waits until it is handled.
async fn check_now(h: &Harness, name: &str) {
    h.request_check(name, &common::unique()).await;
}

/// Waits until the source is Ready with revision `want`.
async fn ready_with(h: &Harness, name: &str, want: &str) -> ArtifactSource {
    let want = want.to_string();
    h.wait(name, "Ready with the pushed revision", move |o| {
        ready(o) == Some(("True".into(), "Succeeded".into())) && digest(o).as_deref() == Some(&want)
    })
    .await
}

/// Waits until the source fails with QuotaExceeded while still holding revision `kept`.
async fn refused_keeping(h: &Harness, name: &str, kept: &str) -> ArtifactSource {
    let kept = kept.to_string();
    h.wait(name, "QuotaExceeded on its last good revision", move |o| {
        ready(o) == Some(("False".into(), "QuotaExceeded".into()))
            && digest(o).as_deref() == Some(&kept)
    })
    .await
}

async fn status_of(url: &str) -> u16 {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
        .as_u16()
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_namespace_over_its_quota_keeps_its_last_good_revision_and_others_go_on() {
    // 64 KiB: the small revisions (two 4 KiB blocks each) fit many times, the 100 KiB one
    // does not.
    let h = harness_with(&["--namespace-quota", "64Ki"]).await;
    let work = tempfile::tempdir().expect("tempdir");
    let big_repo = h.env.repo(Which::Plain, "quota-big").to_string();
    let other_repo = h.env.repo(Which::Plain, "quota-other").to_string();
    let target = |repo: &str| format!("{repo}:1");

    let small = push(
        &h,
        work.path(),
        &target(&big_repo),
        &[("rules.yaml", rules(100))],
    );
    create(&h, "grows", &big_repo).await;
    let before = ready_with(&h, "grows", &small).await;

    let big = push(
        &h,
        work.path(),
        &target(&big_repo),
        &[("rules.yaml", rules(100 * 1024))],
    );
    check_now(&h, "grows").await;
    let refused = refused_keeping(&h, "grows", &small).await;
    let message = refused
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("quota of 65536 bytes"), "{message}");
    assert_ne!(big, small);
    // The last good revision is still served.
    let url = before
        .status
        .and_then(|s| s.artifact)
        .and_then(|a| a.url)
        .expect("artifact url");
    assert_eq!(status_of(&url).await, 200);

    // Another source of the namespace still takes revisions within the quota, twice.
    let first = push(
        &h,
        work.path(),
        &target(&other_repo),
        &[("rules.yaml", rules(200))],
    );
    create(&h, "other", &other_repo).await;
    ready_with(&h, "other", &first).await;
    let second = push(
        &h,
        work.path(),
        &target(&other_repo),
        &[("rules.yaml", rules(300))],
    );
    check_now(&h, "other").await;
    ready_with(&h, "other", &second).await;
    // A revision that fits alone but not with what the namespace keeps is refused too:
    // 50 KiB on top of the 8 KiB each of "grows" and "other" keep. The pull is stopped at
    // the 48 KiB the namespace has left, before it is unpacked whole.
    let third = push(
        &h,
        work.path(),
        &target(&other_repo),
        &[("rules.yaml", rules(50 * 1024))],
    );
    check_now(&h, "other").await;
    let refused = refused_keeping(&h, "other", &second).await;
    let message = format!("{:?}", refused.status.map(|s| s.conditions));
    assert!(
        message.contains("more than is left of this namespace's quota of 65536 bytes"),
        "{message}"
    );
    assert_ne!(third, second);
    // ... and the refused one recovers once its artifact fits again.
    let fits = push(
        &h,
        work.path(),
        &target(&big_repo),
        &[("rules.yaml", rules(150))],
    );
    check_now(&h, "grows").await;
    ready_with(&h, "grows", &fits).await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn directories_count_against_the_quota() {
    let h = harness_with(&["--namespace-quota", "64Ki"]).await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "quota-dirs").to_string();
    let small = push(
        &h,
        work.path(),
        &format!("{repo}:1"),
        &[("rules.yaml", rules(100))],
    );
    create(&h, "deep", &repo).await;
    ready_with(&h, "deep", &small).await;
    // One tiny file, 20 directories deep: 21 entries of 4 KiB are over 64 KiB.
    let path = format!("{}rules.yaml", "d/".repeat(20));
    push_dir(
        &h,
        work.path(),
        &format!("{repo}:1"),
        &[(path.as_str(), rules(10))],
    );
    check_now(&h, "deep").await;
    refused_keeping(&h, "deep", &small).await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_pull_larger_than_the_store_fails_with_quota_exceeded() {
    let h = harness_with(&["--store-max-bytes", "64Ki"]).await;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, "quota-store").to_string();
    let small = push(
        &h,
        work.path(),
        &format!("{repo}:1"),
        &[("rules.yaml", rules(100))],
    );
    create(&h, "store", &repo).await;
    ready_with(&h, "store", &small).await;
    push(
        &h,
        work.path(),
        &format!("{repo}:1"),
        &[("rules.yaml", rules(200 * 1024))],
    );
    check_now(&h, "store").await;
    refused_keeping(&h, "store", &small).await;
    // The controller is alive and serving.
    assert_eq!(status_of(&format!("{}/healthz", h.base_url)).await, 200);
    h.cleanup().await;
}

/// The store directory of the harness's controller, from its command line.
fn store_dir(h: &Harness) -> std::path::PathBuf {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", h.controller.id())).expect("cmdline");
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = args
        .iter()
        .position(|a| *a == b"--store-dir")
        .expect("--store-dir");
    std::path::PathBuf::from(String::from_utf8_lossy(args[at + 1]).to_string())
}

/// What `dir` takes on disk (allocated blocks) and how many entries it holds.
fn disk_use(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).expect("stat");
    let (mut bytes, mut entries) = (meta.blocks() * 512, 1);
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let (b, e) = disk_use(&entry.expect("entry").path());
            bytes += b;
            entries += e;
        }
    }
    (bytes, entries)
}

fn ready_message(o: &ArtifactSource) -> String {
    o.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn entries_and_empty_files_count_against_the_store_limit() {
    const LIMIT: u64 = 256 * 1024;
    let h = harness_with(&["--store-max-bytes", "256Ki"]).await;
    let work = tempfile::tempdir().expect("tempdir");
    let deep_repo = h.env.repo(Which::Plain, "quota-store-deep").to_string();
    let empty_repo = h.env.repo(Which::Plain, "quota-store-empty").to_string();
    let mut kept = Vec::new();
    for (name, repo) in [("deep", &deep_repo), ("empty", &empty_repo)] {
        let small = push(
            &h,
            work.path(),
            &format!("{repo}:1"),
            &[("rules.yaml", rules(100))],
        );
        create(&h, name, repo).await;
        ready_with(&h, name, &small).await;
        kept.push(small);
    }
    // 8 tiny files, each under 15 directories of its own: 128 entries, 512 KiB as
    // charged, though the blobs hold 80 bytes: refused while unpacking (each created
    // entry costs 4 KiB of the pull's budget) or at the commit.
    let deep: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let dirs: String = (0..15)
                .map(|d| format!("{}/", (b'a' + d) as char))
                .collect();
            (format!("{i}{dirs}rules.yaml"), rules(10))
        })
        .collect();
    let deep: Vec<(&str, Vec<u8>)> = deep.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    push_dir(&h, work.path(), &format!("{deep_repo}:1"), &deep);
    check_now(&h, "deep").await;
    let refused = refused_keeping(&h, "deep", &kept[0]).await;
    let message = ready_message(&refused);
    assert!(
        (message.contains("content store would hold") || message.contains("has room for"))
            && message.contains("262144"),
        "{message}"
    );
    // 2,000 empty files: no bytes at all, yet 2,000 inodes and entries.
    let names: Vec<String> = (0..2000).map(|i| format!("e/{i}")).collect();
    let mut empty: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (n.as_str(), Vec::new())).collect();
    empty.push(("rules.yaml", rules(10)));
    push_dir(&h, work.path(), &format!("{empty_repo}:1"), &empty);
    check_now(&h, "empty").await;
    let refused = refused_keeping(&h, "empty", &kept[1]).await;
    assert!(
        ready_message(&refused).contains("content store"),
        "{}",
        ready_message(&refused)
    );

    // The controller is alive, and the store holds what the limit allows.
    assert_eq!(status_of(&format!("{}/healthz", h.base_url)).await, 200);
    let (bytes, entries) = disk_use(&store_dir(&h));
    eprintln!("store on disk: {bytes} bytes, {entries} entries");
    assert!(bytes <= LIMIT, "{bytes} bytes on disk");
    assert!(entries < 64, "{entries} entries");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", h.controller.id())).unwrap_or_default();
    if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM")) {
        eprintln!("controller {hwm}");
    }
    h.cleanup().await;
}
