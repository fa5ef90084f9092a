//! End-to-end: `ocisync push` / `ocisync pull` and the pull pipeline against the real local
//! registries, with honest and with hostile content.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use bytes::Bytes;
use common::{BOTH, Env, Which};
use ocisync::oci::content;
use ocisync::oci::pull::{self, PullOptions};
use ocisync::oci::reference::Repository;
use ocisync::oci::registry::{Registry, sha256_digest};

fn run(args: &[String]) -> Output {
    common::ocisync().args(args).output().expect("run ocisync")
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "ocisync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// Every regular file below `dir`, by relative path.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .expect("rel")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn write(dir: &Path, rel: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, data).expect("write");
    p
}

fn push(
    env: &Env,
    which: Which,
    work: &Path,
    paths: &[PathBuf],
    target: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["push".to_string()];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    args.push(target.to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(env.cli_flags(which, work));
    args.extend(["-O".to_string(), "json".to_string()]);
    ok_json(&run(&args))
}

fn pull(env: &Env, which: Which, work: &Path, target: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "pull".to_string(),
        target.to_string(),
        "-o".to_string(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(env.cli_flags(which, work));
    args.extend(["-O".to_string(), "json".to_string()]);
    run(&args)
}

/// No file and no staging directory left next to `out`.
fn assert_nothing_written(out: &Path) {
    assert!(!out.exists(), "{} must not exist", out.display());
    let parent = out.parent().expect("parent");
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .expect("read parent")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".ocisync-pull-")
        })
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

fn salt() -> String {
    format!("# {}\n", common::unique())
}

#[test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
fn every_kind_round_trips_on_both_registries() {
    let env = common::env();
    for which in BOTH {
        let work = tempfile::tempdir().expect("tempdir");
        let input = work.path().join("in");
        let s = salt();
        let cases: Vec<(&str, &str, Vec<PathBuf>)> = vec![
            (
                "falco-rules",
                "FalcoRules",
                vec![write(
                    &input.join("r"),
                    "my_rules.yaml",
                    format!("{s}- rule: demo\n  condition: evt.type = open\n").as_bytes(),
                )],
            ),
            (
                "falco-plugin",
                "FalcoPlugin",
                vec![write(
                    &input.join("p"),
                    "libdemo.so",
                    &[0x7f, b'E', b'L', b'F', 1, 2, 3],
                )],
            ),
            (
                "falco-asset",
                "FalcoAsset",
                vec![write(&input.join("a"), "asset.bin", s.as_bytes())],
            ),
            (
                "seccomp",
                "Seccomp",
                vec![write(
                    &input.join("s"),
                    "profile.json",
                    format!(
                        "{{\"defaultAction\":\"SCMP_ACT_LOG\",\"_\":\"{}\"}}",
                        s.trim()
                    )
                    .as_bytes(),
                )],
            ),
            (
                "apparmor",
                "AppArmor",
                vec![write(
                    &input.join("aa"),
                    "ocisync-demo",
                    format!("{s}profile ocisync-demo flags=(attach_disconnected) {{}}\n")
                        .as_bytes(),
                )],
            ),
            (
                "kyverno",
                "Kyverno",
                vec![
                    write(
                        &input.join("k"),
                        "require-labels.yaml",
                        format!("{s}kind: ClusterPolicy\n").as_bytes(),
                    ),
                    write(
                        &input.join("k"),
                        "disallow-latest.yaml",
                        format!("{s}kind: ClusterPolicy\n").as_bytes(),
                    ),
                ],
            ),
            (
                "flux",
                "Flux",
                vec![{
                    write(&input.join("f"), "apps/deploy.yaml", s.as_bytes());
                    write(
                        &input.join("f"),
                        "kustomization.yaml",
                        b"resources: [apps/deploy.yaml]\n",
                    );
                    input.join("f")
                }],
            ),
            (
                "generic",
                "Generic",
                vec![
                    write(&input.join("g"), "a.txt", s.as_bytes()),
                    write(&input.join("g"), "b.bin", &[0, 1, 2, 255]),
                ],
            ),
        ];
        for (kind, detected, paths) in cases {
            let repo = env.repo(which, kind);
            let pushed = push(
                &env,
                which,
                work.path(),
                &paths,
                &format!("{repo}:1.0.0"),
                &["--type", kind],
            );
            let out = work.path().join(format!("out-{kind}"));
            let pulled = ok_json(&pull(
                &env,
                which,
                work.path(),
                &format!("oci://{repo}:1.0.0"),
                &out,
                &[],
            ));
            assert_eq!(pulled["kind"], detected, "{which:?} {kind}");
            assert_eq!(pulled["digest"], pushed["digest"], "{which:?} {kind}");
            // the files read back are the files pushed (a directory by its contents)
            let mut want = BTreeMap::new();
            for p in &paths {
                if p.is_dir() {
                    want.extend(tree(p));
                } else {
                    want.insert(
                        p.file_name().expect("name").to_string_lossy().into_owned(),
                        std::fs::read(p).expect("read"),
                    );
                }
            }
            assert_eq!(tree(&out), want, "{which:?} {kind}");
            let listed: Vec<&str> = pulled["files"]
                .as_array()
                .expect("files")
                .iter()
                .map(|f| f["path"].as_str().expect("path"))
                .collect();
            assert_eq!(
                listed,
                want.keys().map(String::as_str).collect::<Vec<_>>(),
                "{which:?} {kind}"
            );
            if kind == "falco-rules" {
                let name = pulled["config"]["name"].as_str().expect("config name");
                assert!(name.starts_with("falco-rules-"), "{name}");
                assert_eq!(pulled["config"]["version"], "");
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn floating_tags_and_platform_indexes() {
    let env = common::env();
    let which = Which::Plain;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = env.repo(which, "floating");
    let file = write(work.path(), "in/rules.yaml", salt().as_bytes());
    let pushed = push(
        &env,
        which,
        work.path(),
        &[file],
        &format!("{repo}"),
        &[
            "--type",
            "falco-rules",
            "--version",
            "1.2.3",
            "--floating-tags",
        ],
    );
    let registry = env.registry(which);
    for tag in ["1.2.3", "1.2", "1"] {
        let head = registry
            .resolve(&repo, tag)
            .await
            .unwrap_or_else(|e| panic!("tag {tag}: {e}"));
        assert_eq!(
            head.digest,
            pushed["digest"].as_str().expect("digest"),
            "tag {tag}"
        );
    }
    assert_eq!(
        registry
            .resolve(&repo, "latest")
            .await
            .expect_err("no latest")
            .reason()
            .as_str(),
        "NotFound"
    );

    // one tag, two platforms: each pull gets its own platform's files
    let prepo = env.repo(which, "plugin");
    let amd = write(work.path(), "amd/libx.so", b"amd64 build");
    let arm = write(work.path(), "arm/libx.so", b"arm64 build");
    push(
        &env,
        which,
        work.path(),
        &[amd],
        &format!("{prepo}:0.1.0"),
        &["--type", "falco-plugin", "--platform", "linux/amd64"],
    );
    push(
        &env,
        which,
        work.path(),
        &[arm],
        &format!("{prepo}:0.1.0"),
        &["--type", "falco-plugin", "--platform", "linux/arm64"],
    );
    for (platform, want) in [
        ("linux/arm64", &b"arm64 build"[..]),
        ("linux/amd64", b"amd64 build"),
    ] {
        let out = work
            .path()
            .join(format!("out-{}", platform.replace('/', "-")));
        ok_json(&pull(
            &env,
            which,
            work.path(),
            &format!("{prepo}:0.1.0"),
            &out,
            &["--platform", platform],
        ));
        assert_eq!(
            std::fs::read(out.join("libx.so")).expect("pulled"),
            want,
            "{platform}"
        );
    }
    // every platform, each in a directory of its own, listed with its platform
    let out = work.path().join("out-all");
    let all = ok_json(&pull(
        &env,
        which,
        work.path(),
        &format!("{prepo}:0.1.0"),
        &out,
        &["--platform", "all"],
    ));
    for (dir, want) in [
        ("linux-amd64", &b"amd64 build"[..]),
        ("linux-arm64", b"arm64 build"),
    ] {
        assert_eq!(
            std::fs::read(out.join(dir).join("libx.so")).expect(dir),
            want
        );
    }
    let listed: Vec<(&str, &str)> = all["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or(""),
                f["platform"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("linux-amd64/libx.so", "linux/amd64"),
            ("linux-arm64/libx.so", "linux/arm64")
        ]
    );
    let out = work.path().join("out-none");
    let missing = pull(
        &env,
        which,
        work.path(),
        &format!("{prepo}:0.1.0"),
        &out,
        &["--platform", "windows/s390x"],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert_nothing_written(&out);
}

/// The file holding a blob in a Distribution filesystem store.
fn blob_file(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    root.join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_tampered_blob_is_a_digest_mismatch_and_nothing_is_written() {
    let env = common::env();
    for which in BOTH {
        let work = tempfile::tempdir().expect("tempdir");
        let repo = env.repo(which, "tamper");
        let file = write(
            work.path(),
            "in/rules.yaml",
            format!("{}- rule: x\n", salt()).repeat(50).as_bytes(),
        );
        let pushed = push(
            &env,
            which,
            work.path(),
            &[file],
            &format!("{repo}:1"),
            &["--type", "falco-rules"],
        );
        let layer = pushed["layers"][0]["digest"]
            .as_str()
            .expect("layer digest")
            .to_string();
        let path = blob_file(env.storage_root(which), &layer);
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff; // same size, different content
        std::fs::write(&path, &bytes).expect("tamper");

        let out = work.path().join("out");
        let result = pull(&env, which, work.path(), &format!("{repo}:1"), &out, &[]);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{which:?}: {stderr}");
        assert!(stderr.contains("digest mismatch"), "{which:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert_nothing_written(&out);

        // the library reports the typed reason
        let registry = env.registry(which);
        let dest = tempfile::tempdir().expect("tempdir");
        let head = registry.resolve(&repo, "1").await.expect("resolve");
        let e = pull::pull_into(
            &registry,
            &repo,
            &head.digest,
            dest.path(),
            &PullOptions::default(),
            &|_| {},
        )
        .await
        .expect_err("tampered");
        assert_eq!(e.reason().as_str(), "DigestMismatch", "{e}");

        // A manifest changed in storage: the registry still announces the old digest, and
        // a pull by tag (one GET, no HEAD) checks the bytes against it.
        let manifest = pushed["manifestDigest"].as_str().expect("manifest digest");
        let path = blob_file(env.storage_root(which), manifest);
        let text = std::fs::read_to_string(&path).expect("manifest");
        assert!(text.contains(".tar.gz\""), "{text}");
        std::fs::write(&path, text.replace(".tar.gz\"", ".tar.gx\"")).expect("tamper");
        let result = pull(&env, which, work.path(), &format!("{repo}:1"), &out, &[]);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{which:?}: {stderr}");
        assert!(stderr.contains("digest mismatch"), "{which:?}: {stderr}");
        assert!(
            stderr.contains(manifest),
            "names the announced digest: {stderr}"
        );
        assert_nothing_written(&out);
    }
}

/// Pushes a Falco-rules-shaped artifact whose single layer is `layer` (tar.gz bytes), with
/// the layer descriptor's size overridden when `lie_size` is set.
async fn push_raw(
    registry: &Registry,
    repo: &Repository,
    layer: Vec<u8>,
    lie_size: Option<i64>,
) -> String {
    let config = Bytes::from_static(b"{\"name\":\"hostile\",\"version\":\"1.0.0\"}");
    let config_digest = sha256_digest(&config);
    registry
        .push_blob(repo, &config_digest, config.clone())
        .await
        .expect("config");
    let layer_digest = sha256_digest(&layer);
    let size = lie_size.unwrap_or(layer.len() as i64);
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
        .push_manifest(repo, "1", content::MANIFEST_V1, bytes.clone())
        .await
        .expect("manifest");
    sha256_digest(&bytes)
}

fn hostile_tar(
    path: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    extra: Option<&str>,
) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut entries = vec![(path, kind, link)];
    if let Some(e) = extra {
        entries.push((e, tar::EntryType::Regular, None));
    }
    for (p, k, l) in entries {
        let data: &[u8] = if k == tar::EntryType::Regular {
            b"owned\n"
        } else {
            b""
        };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(k);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.as_old_mut().name[..p.len()].copy_from_slice(p.as_bytes());
        if let Some(l) = l {
            h.set_link_name(l).expect("link name");
        }
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    gzip(&b.into_inner().expect("tar"))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn hostile_content_gets_a_typed_reason_and_nothing_is_written() {
    let env = common::env();
    use tar::EntryType as T;
    let bomb = {
        let mut b = tar::Builder::new(Vec::new());
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let mut h = tar::Header::new_gnu();
        h.set_size(zeros.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "zeros", &zeros[..]).expect("append");
        gzip(&b.into_inner().expect("tar"))
    };
    let honest = hostile_tar("rules.yaml", T::Regular, None, None);
    let cases: Vec<(&str, Vec<u8>, Option<i64>, &str)> = vec![
        (
            "absolute path",
            hostile_tar("/tmp/ocisync-owned", T::Regular, None, None),
            None,
            "UnsafeContent",
        ),
        (
            "dot-dot",
            hostile_tar("../../escape", T::Regular, None, None),
            None,
            "UnsafeContent",
        ),
        (
            "symlink out",
            hostile_tar("link", T::Symlink, Some("/etc/passwd"), None),
            None,
            "UnsafeContent",
        ),
        (
            "symlink then write through",
            hostile_tar("dir", T::Symlink, Some("/tmp"), Some("dir/owned")),
            None,
            "UnsafeContent",
        ),
        (
            "hard link",
            hostile_tar("hard", T::Link, Some("/etc/passwd"), None),
            None,
            "UnsafeContent",
        ),
        (
            "char device",
            hostile_tar("dev", T::Char, None, None),
            None,
            "UnsafeContent",
        ),
        (
            "block device",
            hostile_tar("blk", T::Block, None, None),
            None,
            "UnsafeContent",
        ),
        (
            "fifo",
            hostile_tar("fifo", T::Fifo, None, None),
            None,
            "UnsafeContent",
        ),
        (
            "duplicate path",
            hostile_tar("dup.yaml", T::Regular, None, Some("./dup.yaml")),
            None,
            "UnsafeContent",
        ),
        (
            "not gzip",
            b"this is not a gzip stream at all".to_vec(),
            None,
            "UnsafeContent",
        ),
        ("decompression bomb", bomb, None, "TooLarge"),
        (
            "size smaller than the blob",
            honest.clone(),
            Some(honest.len() as i64 - 7),
            "DigestMismatch",
        ),
        (
            "size larger than the blob",
            honest.clone(),
            Some(honest.len() as i64 + 7),
            "DigestMismatch",
        ),
    ];
    for which in BOTH {
        let registry = env.registry(which);
        for (name, layer, lie, reason) in &cases {
            let repo = env.repo(which, "hostile");
            let digest = push_raw(&registry, &repo, layer.clone(), *lie).await;
            let work = tempfile::tempdir().expect("tempdir");
            let dest = work.path().join("lib");
            std::fs::create_dir(&dest).expect("mkdir");
            let e = pull::pull_into(
                &registry,
                &repo,
                &digest.parse().expect("digest"),
                &dest,
                &PullOptions::default(),
                &|_| {},
            )
            .await
            .expect_err(name);
            assert_eq!(e.reason().as_str(), *reason, "{which:?} {name}: {e}");
            assert!(
                !work.path().join("escape").exists()
                    && !Path::new("/tmp/ocisync-owned").exists()
                    && !Path::new("/tmp/owned").exists(),
                "{name} escaped"
            );
            // the CLI: exit 1, one line, no output directory
            let out = work.path().join("out");
            let result = pull(&env, which, work.path(), &format!("{repo}:1"), &out, &[]);
            let stderr = String::from_utf8_lossy(&result.stderr);
            assert_eq!(result.status.code(), Some(1), "{which:?} {name}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
            assert!(!stderr.contains("panicked"), "{name}: {stderr}");
            assert_nothing_written(&out);
        }
    }
}

#[test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
fn oversized_artifacts_are_refused_before_download() {
    let env = common::env();
    let which = Which::Tls;
    let work = tempfile::tempdir().expect("tempdir");
    let repo = env.repo(which, "big");
    let file = write(work.path(), "in/big.bin", &vec![7u8; 200_000]);
    push(
        &env,
        which,
        work.path(),
        &[file],
        &format!("{repo}:1"),
        &["--type", "generic"],
    );
    let before = common::log_lines(env.log(which));
    let out = work.path().join("out");
    let result = pull(
        &env,
        which,
        work.path(),
        &format!("{repo}:1"),
        &out,
        &["--max-size", "100000"],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("too large"), "{stderr}");
    assert_nothing_written(&out);
    let log = std::fs::read_to_string(env.log(which)).expect("log");
    let blob_gets = log
        .lines()
        .skip(before)
        .filter(|l| l.contains(&format!("/v2/{}/blobs/sha256:", repo.name)) && l.contains("\"GET "))
        .count();
    assert_eq!(
        blob_gets, 0,
        "no blob may be fetched for a refused artifact"
    );
}
