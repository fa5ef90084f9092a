//! End-to-end: sources that select different layers of one manifest are stored, served
//! and bundled apart, against the real API server and a real registry. Each test runs its
//! own controller and waits on status with a deadline.

mod common;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::Which;
use common::controller::{Harness, harness};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use ocisync::api::artifact_source::Artifact;
use ocisync::api::{ArtifactSource, RuleBundle};
use ocisync::oci::content;
use ocisync::oci::reference::Repository;
use ocisync::oci::registry::sha256_digest;

const TYPE_A: &str = "application/vnd.ocisync.e2e.part-a";
const TYPE_B: &str = "application/vnd.ocisync.e2e.part-b";

/// One file layer of the test artifact: media type, title, content.
struct Part {
    media_type: &'static str,
    title: &'static str,
    content: String,
}

/// Pushes one manifest holding each part as a titled file layer, as `tag`; its digest.
async fn push_parts(h: &Harness, repo: &Repository, tag: &str, parts: &[&Part]) -> String {
    let registry = h.env.registry(Which::Plain);
    let config = Bytes::from_static(b"{}");
    let config_digest = sha256_digest(&config);
    registry
        .push_blob(repo, &config_digest, config.clone())
        .await
        .expect("config");
    let mut layers = Vec::new();
    for part in parts {
        let bytes = Bytes::from(part.content.clone().into_bytes());
        let digest = sha256_digest(&bytes);
        registry
            .push_blob(repo, &digest, bytes.clone())
            .await
            .expect("layer");
        layers.push(serde_json::json!({
            "mediaType": part.media_type, "digest": digest, "size": bytes.len(),
            "annotations": {content::ANNOTATION_TITLE: part.title},
        }));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": content::MANIFEST_V1,
        "config": {"mediaType": content::EMPTY_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers,
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("json"));
    registry
        .push_manifest(repo, tag, content::MANIFEST_V1, bytes.clone())
        .await
        .expect("manifest");
    sha256_digest(&bytes)
}

fn ready_artifact(o: Option<&ArtifactSource>) -> Option<&Artifact> {
    let o = o?;
    let status = o.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    (ready && status.observed_generation == o.metadata.generation)
        .then_some(status.artifact.as_ref())
        .flatten()
}

/// Creates a source on `tag` taking the layers of `media_type` (every layer: `None`) and
/// waits until it is Ready; its artifact.
async fn source(
    h: &Harness,
    name: &str,
    repo: &Repository,
    tag: &str,
    media_type: Option<&str>,
) -> Artifact {
    let mut spec = serde_json::json!({"url": format!("oci://{repo}"), "ref": {"tag": tag}, "interval": "1h", "insecure": true});
    if let Some(m) = media_type {
        spec["layerSelector"] = serde_json::json!({"mediaType": m});
    }
    h.create(name, spec).await;
    artifact_when(h, name, "Ready", |_| true).await
}

/// Waits until the source is Ready with an artifact for which `cond` holds.
async fn artifact_when(
    h: &Harness,
    name: &str,
    what: &str,
    cond: impl Fn(&Artifact) -> bool + Send + 'static,
) -> Artifact {
    let source = h
        .wait_for::<ArtifactSource>(name, what, move |o| ready_artifact(o).is_some_and(&cond))
        .await;
    ready_artifact(source.as_ref())
        .cloned()
        .expect("a ready artifact")
}

fn paths(a: &Artifact) -> Vec<&str> {
    a.files.iter().map(|f| f.path.as_str()).collect()
}

/// The revision index served at the artifact's URL.
async fn served_index(a: &Artifact) -> serde_json::Value {
    let url = a.url.as_deref().expect("url");
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("index json")
}

/// The served index lists exactly the artifact's files, for its manifest digest.
async fn assert_served(a: &Artifact, media_type: Option<&str>) {
    let index = served_index(a).await;
    assert_eq!(index["digest"], a.digest.as_str(), "{index}");
    assert_eq!(
        index["selection"]["layerMediaType"].as_str(),
        media_type,
        "{index}"
    );
    let served: Vec<(&str, &str)> = index["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default(),
                f["digest"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let listed: Vec<(&str, &str)> = a
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.digest.as_str()))
        .collect();
    assert_eq!(served, listed, "{index}");
}

/// Registry GETs of `blob` in `repo` logged after line `from`.
fn blob_gets(h: &Harness, repo: &Repository, blob: &str, from: usize) -> usize {
    let text = std::fs::read_to_string(h.env.log(Which::Plain)).expect("registry log");
    text.lines()
        .skip(from)
        .filter(|l| l.contains("\"GET ") && l.contains(&format!("/v2/{}/blobs/{blob} ", repo.name)))
        .count()
}

/// The data of the ConfigMap a Ready bundle over `source` writes.
async fn bundled(h: &Harness, bundle: &str, source: &str) -> Vec<(String, String)> {
    h.apply::<RuleBundle>(
        bundle,
        serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": source}}], "configMap": {}}}),
    )
    .await;
    let ready = |b: Option<&RuleBundle>| {
        b.is_some_and(|b| {
            b.status.as_ref().is_some_and(|s| {
                s.observed_generation == b.metadata.generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
    };
    h.wait_for::<RuleBundle>(bundle, "Ready", ready).await;
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    let cm = cms.get(bundle).await.expect("configmap");
    cm.data.unwrap_or_default().into_iter().collect()
}

/// Restarts the harness's controller with the same command line (its namespace, port and
/// store): what it remembered in memory is gone, the store and the statuses stay.
fn restart(h: &mut Harness) {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", h.controller.id())).expect("cmdline");
    let args: Vec<OsString> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| OsStr::from_bytes(a).to_owned())
        .collect();
    h.controller.kill().expect("stop the controller");
    h.controller.wait().expect("reap the controller");
    let log = std::env::temp_dir().join(format!("ocisync-controller-{}-restarted.log", h.ns));
    h.controller = Command::new(&args[0])
        .args(&args[1..])
        .env("RUST_LOG", "info,ocisync=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("restart controller");
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn sources_selecting_other_layers_of_one_manifest_get_their_own_files() {
    let mut h = harness().await;
    let repo = h.env.repo(Which::Plain, "selectors");
    let unique = common::unique();
    let a = Part {
        media_type: TYPE_A,
        title: "a.yaml",
        content: format!("# {unique}\n- rule: only in part a\n"),
    };
    let b = Part {
        media_type: TYPE_B,
        title: "b.yaml",
        content: format!("# {unique}\n- rule: only in part b\n"),
    };
    let (blob_a, blob_b) = (
        sha256_digest(a.content.as_bytes()),
        sha256_digest(b.content.as_bytes()),
    );
    let log_from = common::log_lines(h.env.log(Which::Plain));
    let digest = push_parts(&h, &repo, "1", &[&a, &b]).await;

    // two sources on one tag, each taking another layer; a third taking the same as the
    // first (one pull per digest and selection)
    let got_a = source(&h, "take-a", &repo, "1", Some(TYPE_A)).await;
    let got_b = source(&h, "take-b", &repo, "1", Some(TYPE_B)).await;
    let got_a2 = source(&h, "take-a-too", &repo, "1", Some(TYPE_A)).await;
    for got in [&got_a, &got_b, &got_a2] {
        assert_eq!(got.digest, digest, "the digest users see is the manifest's");
    }
    assert_eq!(paths(&got_a), ["a.yaml"]);
    assert_eq!(paths(&got_b), ["b.yaml"]);
    assert_eq!(paths(&got_a2), ["a.yaml"]);
    assert_ne!(got_a.url, got_b.url, "each selection is its own revision");
    assert_eq!(got_a.url, got_a2.url);
    assert_served(&got_a, Some(TYPE_A)).await;
    assert_served(&got_b, Some(TYPE_B)).await;
    assert_eq!(blob_gets(&h, &repo, &blob_a, log_from), 1, "one pull of a");
    assert_eq!(blob_gets(&h, &repo, &blob_b, log_from), 1, "one pull of b");

    // each bundle gets its own source's file
    assert_eq!(
        bundled(&h, "bundle-a", "take-a").await,
        [("a.yaml".to_string(), a.content.clone())]
    );
    assert_eq!(
        bundled(&h, "bundle-b", "take-b").await,
        [("b.yaml".to_string(), b.content.clone())]
    );

    // every layer: keyed by the manifest digest as before. Storing it collects garbage,
    // which keeps both selections.
    let all = source(&h, "take-all", &repo, "1", None).await;
    assert_eq!(paths(&all), ["a.yaml", "b.yaml"]);
    assert!(
        all.url
            .as_deref()
            .is_some_and(|u| u.ends_with(&ocisync::server::revision_path(&digest))),
        "{:?}",
        all.url
    );
    assert_served(&all, None).await;
    assert_served(&got_a, Some(TYPE_A)).await;
    assert_served(&got_b, Some(TYPE_B)).await;

    // after a restart only the statuses say what is in use: a new revision's garbage
    // collection still keeps both selections
    restart(&mut h);
    let c = Part {
        media_type: TYPE_A,
        title: "c.yaml",
        content: format!("# {unique}\n- rule: newer\n"),
    };
    push_parts(&h, &repo, "2", &[&c]).await;
    let newer = source(&h, "take-newer", &repo, "2", None).await;
    assert_eq!(paths(&newer), ["c.yaml"]);
    assert_served(&all, None).await;
    assert_served(&got_a, Some(TYPE_A)).await;
    assert_served(&got_b, Some(TYPE_B)).await;

    // a source switching to the other layer of the same digest takes that one
    let sources: Api<ArtifactSource> = Api::namespaced(h.client.clone(), &h.ns);
    let patch = serde_json::json!({"spec": {"layerSelector": {"mediaType": TYPE_B}}});
    sources
        .patch("take-a-too", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch source");
    let switched = artifact_when(&h, "take-a-too", "switched to part b", |a| {
        a.files.iter().any(|f| f.path == "b.yaml")
    })
    .await;
    assert_eq!(paths(&switched), ["b.yaml"]);
    assert_eq!(switched.url, got_b.url);
    // and the bundles still hold their own files
    for (bundle, source, part) in [("bundle-a", "take-a", &a), ("bundle-b", "take-b", &b)] {
        assert_eq!(
            bundled(&h, bundle, source).await,
            [(part.title.to_string(), part.content.clone())]
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", h.controller.id()));
    let peak = status.ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .map(str::to_string)
    });
    eprintln!("controller after the restart: {peak:?}");
    h.cleanup().await;
}
