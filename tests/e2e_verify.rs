//! End-to-end: `spec.verify` against the real API server and registry. Signatures are made
//! in the test (openssl for keys, the offline Sigstore of e2e/sigstore for keyless) and
//! pushed in cosign's layouts; each refusal keeps the last verified revision in status, the
//! store, and the ConfigMap, byte for byte.

mod common;

use std::path::Path;

use common::Which;
use common::controller::{Harness, harness, push_file};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use ocisync::api::{ArtifactSource, RuleBundle};
use ocisync::digest::Digest;
use ocisync::oci::reference::Repository;
use ocisync::verify::discover;

const IGNORE: &str = "";

/// `(status, reason)` of a condition of the source.
fn condition<'a>(o: &'a ArtifactSource, type_: &str) -> Option<(&'a str, &'a str)> {
    let c = o.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.as_str(), c.reason.as_str()))
}

fn digest_of(o: &ArtifactSource) -> Option<String> {
    Some(o.status.as_ref()?.artifact.as_ref()?.digest.clone())
}

fn verified_digest(o: &ArtifactSource) -> Option<String> {
    let a = o.status.as_ref()?.artifact.as_ref()?;
    a.verification.as_ref()?;
    Some(a.digest.clone())
}

fn refused_with(reason: &'static str) -> impl Fn(&ArtifactSource) -> bool {
    move |o| {
        condition(o, "Ready") == Some(("False", reason))
            && condition(o, "SourceVerified") == Some(("False", reason))
    }
}

/// openssl, or the test fails (it is on every machine this runs on).
fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    if let Some(bytes) = input {
        child.stdin.take().expect("stdin").write_all(bytes).expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl {args:?} failed");
    out.stdout
}

/// A P-256 key pair made by openssl: (private key file, public key PEM).
fn p256(dir: &Path, name: &str) -> (std::path::PathBuf, Vec<u8>) {
    let key = dir.join(format!("{name}.key"));
    let pem = openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout"], None);
    let pkcs8 = openssl(&["pkcs8", "-topk8", "-nocrypt"], Some(&pem));
    std::fs::write(&key, pkcs8).expect("write key");
    let public = openssl(&["pkey", "-pubout", "-in", key.to_str().expect("path")], None);
    (key, public)
}

/// cosign's payload for `digest`, and its signature by `key` (base64), made by openssl.
fn sign(key: &Path, digest: &str) -> (Vec<u8>, String) {
    let d = Digest::parse(digest).expect("digest");
    let payload = ocisync::verify::simplesigning::payload_for("registry.local/rules", &d);
    let der = openssl(
        &["dgst", "-sha256", "-sign", key.to_str().expect("path")],
        Some(&payload),
    );
    (payload, common::base64_encode_bytes(&der))
}

/// Pushes the classic signature manifest of `digest` (tag `sha256-<hex>.sig`) holding one
/// layer per (payload, annotations), as cosign lays it out.
async fn push_classic(h: &Harness, repo: &Repository, digest: &str, layers: &[(Vec<u8>, serde_json::Value)]) {
    let registry = h.env.registry(Which::Plain);
    let config = b"{}".to_vec();
    let config_digest = Digest::of(&config).to_string();
    registry
        .push_blob(repo, &config_digest, config.clone().into())
        .await
        .expect("config");
    let mut descriptors = Vec::new();
    for (payload, annotations) in layers {
        let d = Digest::of(payload).to_string();
        registry
            .push_blob(repo, &d, payload.clone().into())
            .await
            .expect("payload");
        descriptors.push(serde_json::json!({
            "mediaType": discover::SIMPLESIGNING, "digest": d, "size": payload.len(),
            "annotations": annotations,
        }));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descriptors,
    });
    let tag = discover::signature_tag(&Digest::parse(digest).expect("digest"));
    registry
        .push_manifest(
            repo,
            &tag,
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::to_vec(&manifest).expect("json").into(),
        )
        .await
        .expect("signature manifest");
}

fn key_layer(payload: Vec<u8>, signature: &str) -> (Vec<u8>, serde_json::Value) {
    (payload, serde_json::json!({ discover::SIGNATURE_ANNOTATION: signature }))
}

async fn config_map_data(h: &Harness, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let maps: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns);
    maps.get_opt(name).await.expect("get ConfigMap")?.data
}

fn bundle_ready(b: Option<&RuleBundle>) -> bool {
    b.is_some_and(|b| {
        common::bundle_ready(b).is_some_and(|(s, _, _)| s == "True")
            && b.status.as_ref().and_then(|s| s.observed_generation) == b.metadata.generation
    })
}

fn bundle_reason(reason: &'static str) -> impl Fn(Option<&RuleBundle>) -> bool + Send + 'static {
    move |b| b.and_then(common::bundle_ready).is_some_and(|(s, r, _)| s == "False" && r == reason)
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn key_mode_serves_only_revisions_signed_by_a_trusted_key() {
    let _ = IGNORE;
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let (key_a, pub_a) = p256(work.path(), "a");
    let (key_b, _) = p256(work.path(), "b");
    let name = format!("verify-key-{}", common::unique());
    let repo_text = h.env.repo(Which::Plain, &name);
    let repo = repo_text.clone();
    let v1 = format!("# v1 {}\n- rule: one\n", common::unique());
    let d1 = push_file(&h.env, Which::Plain, work.path(), &format!("{repo}:1"), "rules.yaml", v1.as_bytes(), &[]);
    let (payload, sig) = sign(&key_a, &d1);
    push_classic(&h, &repo, &d1, &[key_layer(payload, &sig)]).await;
    h.secret("cosign-keys", &[("cosign.pub", pub_a.clone())], "Opaque").await;
    h.create("rules", serde_json::json!({
        "url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true,
        "verify": {"provider": "cosign", "secretRef": {"name": "cosign-keys"}},
    })).await;
    let o = h.wait("rules", "verified", |o| condition(o, "SourceVerified") == Some(("True", "Verified")) && condition(o, "Ready") == Some(("True", "Succeeded"))).await;
    let v = o.status.as_ref().and_then(|s| s.artifact.as_ref()).and_then(|a| a.verification.clone()).expect("verification");
    let expected = ocisync::verify::PublicKey::from_pem("a", &pub_a).expect("pub").fingerprint();
    assert_eq!((v.method.as_str(), v.key_fingerprint.as_deref(), v.format.as_str()), ("key", Some(expected.as_str()), "classic"));
    h.apply::<RuleBundle>("b", serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "rules"}}], "configMap": {}}})).await;
    h.wait_for::<RuleBundle>("b", "Ready", bundle_ready).await;
    let served = config_map_data(&h, "b").await.expect("ConfigMap");
    assert_eq!(served.get("rules.yaml").map(String::as_str), Some(v1.as_str()));

    // each hostile new revision is refused with its reason; v1 stays everywhere
    let v2 = format!("# v2 {}\n- rule: two\n", common::unique());
    let d2 = push_file(&h.env, Which::Plain, work.path(), &format!("{repo}:1"), "rules.yaml", v2.as_bytes(), &[]);
    let steps: Vec<(&str, &'static str, Vec<(Vec<u8>, serde_json::Value)>)> = vec![
        ("unsigned", "SignatureNotFound", vec![]),
        ("another key", "UntrustedKey", { let (p, s) = sign(&key_b, &d2); vec![key_layer(p, &s)] }),
        // v1's valid signature replayed onto v2's tag: its payload names v1
        ("replayed", "SignatureInvalid", { let (p, s) = sign(&key_a, &d1); vec![key_layer(p, &s)] }),
        ("tampered", "UntrustedKey", { let (mut p, s) = sign(&key_a, &d2); p.push(b' '); vec![key_layer(p, &s)] }),
    ];
    for (i, (what, reason, layers)) in steps.into_iter().enumerate() {
        if !layers.is_empty() {
            push_classic(&h, &repo, &d2, &layers).await;
        }
        let o = h.request_check("rules", &format!("step-{i}")).await;
        let o = if refused_with(reason)(&o) { o } else { h.wait("rules", what, refused_with(reason)).await };
        assert_eq!(verified_digest(&o).as_deref(), Some(d1.as_str()), "{what}: v1 stays verified in status");
        assert_eq!(digest_of(&o).as_deref(), Some(d1.as_str()));
        let still = config_map_data(&h, "b").await.expect("ConfigMap");
        assert_eq!(still, served, "{what}: the ConfigMap keeps v1 byte for byte");
        let url = o.status.as_ref().and_then(|s| s.artifact.as_ref()).and_then(|a| a.url.clone()).expect("url");
        let _ = url;
    }
    // the store never took v2's blobs
    let v2_blob = Digest::of(v2.as_bytes());
    assert!(!h.store_dir().join("blobs/sha256").join(v2_blob.hex()).exists(), "v2 was stored");

    // signed properly: v2 is taken and reaches the ConfigMap
    let (p, s) = sign(&key_a, &d2);
    push_classic(&h, &repo, &d2, &[key_layer(p, &s)]).await;
    h.request_check("rules", "signed").await;
    h.wait("rules", "v2 verified", move |o| verified_digest(o).as_deref() == Some(d2.as_str())).await;
    let v2c = v2.clone();
    h.wait_for::<ConfigMap>("b", "v2", move |cm| cm.and_then(|c| c.data.as_ref()).and_then(|d| d.get("rules.yaml")).map(String::as_str) == Some(v2c.as_str())).await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn adding_verify_stops_an_unsigned_revision_for_new_consumers_and_keeps_old_ones() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let (_, pub_a) = p256(work.path(), "a");
    let name = format!("verify-add-{}", common::unique());
    let repo = h.env.repo(Which::Plain, &name);
    let v1 = format!("# unsigned {}\n", common::unique());
    let d1 = push_file(&h.env, Which::Plain, work.path(), &format!("{repo}:1"), "rules.yaml", v1.as_bytes(), &[]);
    h.create("rules", serde_json::json!({
        "url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true,
    })).await;
    h.wait("rules", "Ready", |o| condition(o, "Ready") == Some(("True", "Succeeded"))).await;
    h.apply::<RuleBundle>("old", serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "rules"}}], "configMap": {}}})).await;
    h.wait_for::<RuleBundle>("old", "Ready", bundle_ready).await;
    let served = config_map_data(&h, "old").await.expect("ConfigMap");

    h.secret("cosign-keys", &[("cosign.pub", pub_a)], "Opaque").await;
    let sources: Api<ArtifactSource> = Api::namespaced(h.client.clone(), &h.ns);
    let patch = serde_json::json!({"spec": {"verify": {"secretRef": {"name": "cosign-keys"}}}});
    sources.patch("rules", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("add verify");
    let o = h.wait("rules", "refused", refused_with("SignatureNotFound")).await;
    assert_eq!(digest_of(&o).as_deref(), Some(d1.as_str()), "the revision stays in status");
    assert!(verified_digest(&o).is_none(), "but it is not verified");
    // a new consumer gets nothing; the existing ConfigMap is kept (removing security rules
    // would fail open) and its bundle says why it is not ready
    h.apply::<RuleBundle>("new", serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "rules"}}], "configMap": {}}})).await;
    let b = h.wait_for::<RuleBundle>("new", "SourceNotReady", bundle_reason("SourceNotReady")).await.expect("bundle");
    let message = common::bundle_ready(&b).map(|(_, _, m)| m).unwrap_or_default();
    assert!(message.contains("SignatureNotFound") || message.contains("not verified"), "{message}");
    assert!(config_map_data(&h, "new").await.is_none(), "no ConfigMap for a new consumer");
    h.wait_for::<RuleBundle>("old", "SourceNotReady", bundle_reason("SourceNotReady")).await;
    assert_eq!(config_map_data(&h, "old").await.expect("kept"), served);
    h.cleanup().await;
}
