//! End-to-end: artifact content built to exhaust memory or disk is refused with a clear
//! reason and bounded memory and disk. A layer of a few hundred kilobytes whose PAX header
//! declares a 300 MiB path, pulled by `ocisync pull`; a Falco rules file whose YAML aliases
//! expand a 10,000-item list 10,000 times, read by a real controller that keeps serving the
//! other bundles; a tar of 1,800-level paths and one of 6,000 directories, pulled by
//! `ocisync pull` and by a real controller, whose disk use stays small.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Which;
use common::controller::{Harness, harness, push_file};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use ocisync::api::{ArtifactSource, RuleBundle};
use ocisync::oci::content;
use ocisync::oci::reference::Repository;
use ocisync::oci::registry::{Registry, sha256_digest};

const MIB: u64 = 1024 * 1024;

/// The peak resident memory (`VmHWM`, KiB) of a live process, from `/proc`.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `cmd` to its end, sampling its `VmHWM` every 2 ms while it lives (a high-water
/// mark, so a sample taken after the peak still sees it). The output and the highest
/// sample, in KiB; fails if no sample could be taken.
fn run_sampling_peak(cmd: &mut Command) -> (Output, u64) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let pipes = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .map(|p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                p.read_to_end(&mut buf).expect("read the child's output");
            }
            buf
        })
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut peak, mut samples) = (0, 0);
    let status = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
            samples += 1;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            // best effort before failing: the panic below says what went wrong
            child.kill().ok();
            child.wait().ok();
            panic!("{cmd:?} still running after 120 s; peak so far {peak} KiB");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(samples > 0, "no VmHWM sample of {cmd:?}");
    let [out, err] = pipes.map(|t| t.join().expect("pipe reader"));
    (
        Output {
            status,
            stdout: out,
            stderr: err,
        },
        peak,
    )
}

/// A gzip'd tar: a PAX header whose one `path` record is `path_len` bytes, then a small
/// rules file. Streamed through the encoder, so the path never sits in memory here.
fn pax_bomb(path_len: u64) -> Vec<u8> {
    let digits = |n: u64| n.to_string().len() as u64;
    let body = "path=".len() as u64 + path_len + 2; // the space and the newline
    let mut record_len = body + digits(body);
    if digits(record_len) != digits(body) {
        record_len += 1;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut pax = tar::Header::new_ustar();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(record_len);
    pax.set_mode(0o644);
    pax.set_path("PaxHeaders/rules.yaml").expect("path");
    pax.set_cksum();
    gz.write_all(pax.as_bytes()).expect("gzip");
    gz.write_all(format!("{record_len} path=").as_bytes())
        .expect("gzip");
    let chunk = vec![b'a'; MIB as usize];
    let mut left = path_len;
    while left > 0 {
        let n = left.min(MIB);
        gz.write_all(&chunk[..n as usize]).expect("gzip");
        left -= n;
    }
    gz.write_all(b"\n").expect("gzip");
    let pad = (512 - record_len % 512) % 512;
    gz.write_all(&vec![0u8; pad as usize]).expect("gzip");
    let mut rules = tar::Builder::new(Vec::new());
    let data = b"- rule: x\n";
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    rules
        .append_data(&mut h, "rules.yaml", &data[..])
        .expect("tar");
    gz.write_all(&rules.into_inner().expect("tar"))
        .expect("gzip");
    gz.finish().expect("gzip")
}

/// Pushes a Falco rules artifact whose one layer is `layer` (tar+gzip) as tag `1`.
async fn push_layer(registry: &Registry, repo: &Repository, layer: Vec<u8>) {
    let config = Bytes::from_static(b"{\"name\":\"hostile\",\"version\":\"1.0.0\"}");
    let config_digest = sha256_digest(&config);
    registry
        .push_blob(repo, &config_digest, config.clone())
        .await
        .expect("config");
    let layer_digest = sha256_digest(&layer);
    let size = layer.len();
    registry
        .push_blob(repo, &layer_digest, Bytes::from(layer))
        .await
        .expect("layer");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": content::MANIFEST_V1,
        "config": {"mediaType": content::FALCO_RULES_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": content::FALCO_RULES_LAYER, "digest": layer_digest, "size": size}]
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("json"));
    registry
        .push_manifest(repo, "1", content::MANIFEST_V1, bytes)
        .await
        .expect("manifest");
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_pax_path_bomb_is_refused_in_bounded_memory() {
    let env = common::env();
    let which = Which::Plain;
    let layer = pax_bomb(300 * MIB);
    assert!(layer.len() < 1024 * 1024, "layer is {} bytes", layer.len());
    let repo = env.repo(which, "pax-bomb");
    push_layer(&env.registry(which), &repo, layer.clone()).await;

    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("out");
    let started = Instant::now();
    let (result, peak_kib) = run_sampling_peak(
        common::ocisync()
            .args(["pull", &format!("{repo}:1"), "-o"])
            .arg(&out)
            .args(env.cli_flags(which, work.path()))
            .args(["-O", "json"]),
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    eprintln!(
        "pull of a {}-byte PAX bomb: {:?}, VmHWM {peak_kib} KiB: {stderr}",
        layer.len(),
        started.elapsed()
    );
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unsafe content") && stderr.contains("extension header"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written");
    assert!(peak_kib < 64 * 1024, "VmHWM {peak_kib} KiB");
}

fn ready(b: &RuleBundle) -> Option<(String, String, String)> {
    common::bundle_ready(b)
}

fn is_ready(b: Option<&RuleBundle>) -> bool {
    b.is_some_and(|b| {
        ready(b).is_some_and(|(s, r, _)| s == "True" && r == "Succeeded")
            && b.status.as_ref().and_then(|s| s.observed_generation) == b.metadata.generation
    })
}

fn source_ready_at(tag: &'static str) -> impl Fn(Option<&ArtifactSource>) -> bool + Send {
    move |s| {
        s.is_some_and(|s| {
            s.spec.reference.as_ref().and_then(|r| r.tag.as_deref()) == Some(tag)
                && s.status.as_ref().is_some_and(|st| {
                    st.observed_generation == s.metadata.generation
                        && st
                            .conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
        })
    }
}

/// A Falco rules file of ~110 KB: a 10,000-item list, then another list that aliases it
/// 10,000 times (10^8 items once expanded).
fn alias_bomb() -> Vec<u8> {
    let items: Vec<String> = (0..10_000).map(|i| format!("x{i}")).collect();
    let aliases = vec!["*a"; 10_000].join(", ");
    format!(
        "- list: base\n  items: &a [{}]\n- list: bomb\n  items: [{aliases}]\n",
        items.join(", ")
    )
    .into_bytes()
}

/// A tenant: a source at `tag` of a fresh repository holding `rules`, and a bundle of it
/// with a ConfigMap.
async fn tenant(h: &Harness, name: &str, rules: &[u8]) -> Repository {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = h.env.repo(Which::Plain, name);
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:good"),
        "rules.yaml",
        rules,
        &[],
    );
    h.create(
        name,
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "good"}, "interval": "10s", "insecure": true}),
    )
    .await;
    h.wait_for::<ArtifactSource>(name, "Ready", source_ready_at("good"))
        .await;
    h.apply::<RuleBundle>(
        name,
        serde_json::json!({"spec": {
            "sources": [{"sourceRef": {"name": name}}],
            "configMap": {},
        }}),
    )
    .await;
    h.wait_for::<RuleBundle>(name, "Ready", is_ready).await;
    repo
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_yaml_alias_bomb_fails_its_bundle_only() {
    let mut h = harness().await;
    let good = format!("# {}\n- rule: shell\n  condition: x\n", common::unique());
    let repo = tenant(&h, "tenant-a", good.as_bytes()).await;
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(h.client.clone(), &h.ns);
    let before = cms.get("tenant-a").await.expect("ConfigMap");
    assert_eq!(before.data.as_ref().expect("data")["rules.yaml"], good);

    // the next version of tenant A's rules is an alias bomb
    let bomb = alias_bomb();
    assert!(bomb.len() < 128 * 1024, "{} bytes", bomb.len());
    let work = tempfile::tempdir().expect("tempdir");
    push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:bomb"),
        "rules.yaml",
        &bomb,
        &[],
    );
    h.api
        .patch(
            "tenant-a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"ref": {"tag": "bomb"}}})),
        )
        .await
        .expect("patch source");
    h.wait_for::<ArtifactSource>("tenant-a", "Ready at the bomb", source_ready_at("bomb"))
        .await;
    let started = Instant::now();
    let failed = h
        .wait_for::<RuleBundle>("tenant-a", "failed with InvalidContent", |b| {
            b.and_then(ready)
                .is_some_and(|(s, r, _)| s == "False" && r == "InvalidContent")
        })
        .await
        .expect("bundle");
    let (_, _, message) = ready(&failed).expect("Ready condition");
    assert!(
        message.contains("rules.yaml") && message.contains("aliases are followed"),
        "{message}"
    );

    // the last good content stays, the controller lives, its memory stayed bounded
    let after = cms.get("tenant-a").await.expect("ConfigMap");
    assert_eq!(after.data, before.data);
    assert_eq!(
        after.metadata.annotations, before.metadata.annotations,
        "revision unchanged"
    );
    assert!(
        h.controller.try_wait().expect("controller").is_none(),
        "the controller is alive"
    );
    let peak = vm_hwm_kib(h.controller.id()).expect("controller VmHWM");
    eprintln!(
        "alias bomb refused {:?} after the source was ready; controller VmHWM {peak} KiB: {message}",
        started.elapsed()
    );
    assert!(peak < 256 * 1024, "controller VmHWM {peak} KiB");

    // another tenant is served afterwards by the same controller
    tenant(&h, "tenant-b", b"- macro: m\n  condition: y\n").await;
    assert!(h.controller.try_wait().expect("controller").is_none());
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_pax_path_bomb_fails_its_source_only() {
    let mut h = harness().await;
    let repo = h.env.repo(Which::Plain, "pax-bomb-source");
    push_layer(&h.env.registry(Which::Plain), &repo, pax_bomb(300 * MIB)).await;
    h.create(
        "bomb",
        serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "10s", "insecure": true}),
    )
    .await;
    let failed = h
        .wait("bomb", "failed with UnsafeContent", |s| {
            s.status.as_ref().is_some_and(|st| {
                st.conditions.iter().any(|c| {
                    c.type_ == "Ready" && c.status == "False" && c.reason == "UnsafeContent"
                })
            })
        })
        .await;
    let message = failed
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("extension header"), "{message}");
    assert!(message.len() < 1024, "the 300 MiB path is not echoed");
    assert!(h.controller.try_wait().expect("controller").is_none());
    let peak = vm_hwm_kib(h.controller.id()).expect("controller VmHWM");
    eprintln!("controller VmHWM after the PAX bomb: {peak} KiB");
    assert!(peak < 256 * 1024, "controller VmHWM {peak} KiB");
    // another source of the same controller is served
    tenant(&h, "tenant-c", b"- rule: c\n  condition: z\n").await;
    h.cleanup().await;
}

/// The disk space (allocated blocks) of everything under `dir`, without following links.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        total += entries
            .flatten()
            .map(|e| disk_bytes(&e.path()))
            .sum::<u64>();
    }
    total
}

/// Samples the disk use under a directory every 10 ms on a thread of its own, keeping the
/// highest; [`DiskPeak::stop`] ends it and gives the peak in bytes.
struct DiskPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl DiskPeak {
    fn watch(dir: PathBuf) -> Self {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(disk_bytes(&dir), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak.fetch_max(disk_bytes(&dir), Ordering::Relaxed);
            })
        };
        DiskPeak { stop, peak, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("disk sampler");
        self.peak.load(Ordering::Relaxed)
    }
}

/// A gzip'd tar of 50 one-byte files, each under a path of its own 1,800 levels deep: half
/// named by GNU long-name entries, half by PAX `path` records. Unpacked naively it creates
/// 90,050 directories.
fn deep_paths() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dirs = vec!["d"; 1800].join("/");
    for i in 0..50 {
        let path = format!("p{i}/{dirs}/f{i}.yaml");
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        if i % 2 == 0 {
            b.append_data(&mut h, &path, &b"x"[..]).expect("tar"); // a GNU 'L' entry
        } else {
            b.append_pax_extensions([("path", path.as_bytes())])
                .expect("pax");
            h.set_path(format!("f{i}.yaml")).expect("path");
            h.set_cksum();
            b.append(&h, &b"x"[..]).expect("tar");
        }
    }
    gzip(&b.into_inner().expect("tar"))
}

/// A gzip'd tar of 6,000 directory entries and one rules file.
fn many_directories() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..6000 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_path(format!("d{i}/")).expect("path");
        h.set_cksum();
        b.append(&h, std::io::empty()).expect("tar");
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "rules.yaml", &b"[]"[..])
        .expect("tar");
    gzip(&b.into_inner().expect("tar"))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn deep_paths_and_many_directories_are_refused_by_pull_in_bounded_disk() {
    let env = common::env();
    let which = Which::Plain;
    let cases = [
        (
            "deep-paths",
            deep_paths(),
            "unsafe content",
            "over the limit of 1024",
        ),
        (
            "many-dirs",
            many_directories(),
            "too large",
            "more than 4096 directories",
        ),
    ];
    for (name, layer, class, detail) in cases {
        let repo = env.repo(which, name);
        let size = layer.len();
        push_layer(&env.registry(which), &repo, layer).await;
        let work = tempfile::tempdir().expect("tempdir");
        let out = work.path().join("out");
        let disk = DiskPeak::watch(work.path().to_path_buf());
        let started = Instant::now();
        let result = tokio::task::spawn_blocking({
            let mut cmd = common::ocisync();
            cmd.args(["pull", &format!("{repo}:1"), "-o"])
                .arg(&out)
                .args(env.cli_flags(which, work.path()));
            move || cmd.output().expect("run")
        })
        .await
        .expect("join");
        let elapsed = started.elapsed();
        let peak = disk.stop();
        let stderr = String::from_utf8_lossy(&result.stderr);
        eprintln!(
            "pull of {repo}:1 ({size} bytes): {elapsed:?}, peak disk under the work dir {peak} bytes: {stderr}"
        );
        assert_eq!(result.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(class) && stderr.contains(detail),
            "{name}: {stderr}"
        );
        assert!(!out.exists(), "{name}: nothing is written");
        let left: Vec<_> = std::fs::read_dir(work.path())
            .expect("work dir")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with(".ocisync") || *n == "out")
            .collect();
        assert!(left.is_empty(), "{name}: left behind {left:?}");
        // 4,096 directories of 4 KiB at most, and the CLI's own files
        assert!(peak < 24 * MIB, "{name}: {peak} bytes on disk");
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn deep_paths_fail_their_source_only_and_the_store_stays_small() {
    let mut h = harness().await;
    let good = format!("# {}\n- rule: deep\n  condition: x\n", common::unique());
    let repo = tenant(&h, "deep", good.as_bytes()).await;
    let before = h.api.get("deep").await.expect("source");
    let good_digest = before
        .status
        .as_ref()
        .and_then(|s| s.artifact.as_ref())
        .map(|a| a.digest.clone())
        .expect("a stored revision");
    let store_before = disk_bytes(h.store_dir());
    push_layer(&h.env.registry(Which::Plain), &repo, deep_paths()).await;
    let disk = DiskPeak::watch(h.store_dir().to_path_buf());
    h.api
        .patch(
            "deep",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"ref": {"tag": "1"}}})),
        )
        .await
        .expect("patch source");
    let failed = h
        .wait("deep", "failed with UnsafeContent or TooLarge", |s| {
            s.status.as_ref().is_some_and(|st| {
                st.observed_generation == s.metadata.generation
                    && st.conditions.iter().any(|c| {
                        c.type_ == "Ready"
                            && c.status == "False"
                            && (c.reason == "UnsafeContent" || c.reason == "TooLarge")
                    })
            })
        })
        .await;
    let peak = disk.stop();
    let message = failed
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    eprintln!(
        "store: {store_before} bytes before, peak {peak} bytes while the deep paths were refused: {message}"
    );
    assert!(
        message.contains("unsafe content") && message.contains("over the limit of 1024"),
        "{message}"
    );
    assert!(message.len() < 1024, "the path is not echoed whole");
    assert!(
        peak < store_before + 8 * MIB,
        "the store grew from {store_before} to {peak} bytes"
    );
    let artifact = failed.status.as_ref().and_then(|s| s.artifact.as_ref());
    assert_eq!(
        artifact.map(|a| a.digest.as_str()),
        Some(good_digest.as_str()),
        "the last good revision is kept"
    );
    assert!(h.controller.try_wait().expect("controller").is_none());
    // another tenant is served by the same controller
    tenant(&h, "tenant-d", b"- rule: d\n  condition: z\n").await;
    h.cleanup().await;
}
