//! End-to-end: `spec.verify` against the real API server and registry. Signatures are made
//! in the test (openssl for keys, the offline Sigstore of e2e/sigstore for keyless) and
//! pushed in cosign's layouts; each refusal keeps the last verified revision in status, the
//! store, and the ConfigMap, byte for byte.

mod common;

use std::path::{Path, PathBuf};

use common::Which;
use common::agent::{self, Agent};
use common::controller::{Harness, harness, push_file};
use common::signing::{self, KeyKind, KeyPair, Layer};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use ocisync::api::{ArtifactSource, RuleBundle};
use ocisync::digest::Digest;

/// `(status, reason)` of a condition of the source.
fn condition<'a>(o: &'a ArtifactSource, type_: &str) -> Option<(&'a str, &'a str)> {
    let c = o
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
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

/// cosign's payload for `digest`, signed by `key` with openssl.
fn signed(key: &KeyPair, digest: &str) -> Layer {
    Layer::signed(signing::payload("registry.local/rules", digest), key)
}

/// Whether the store under `dir` holds a file with these bytes.
fn stored(dir: &Path, text: &str) -> bool {
    let blob = Digest::of(text.as_bytes());
    dir.join("blobs/sha256").join(blob.hex()).is_file()
}

/// A RuleBundle of the source `rules` into a ConfigMap.
fn bundle_spec() -> serde_json::Value {
    serde_json::json!({"spec": {"sources": [{"sourceRef": {"name": "rules"}}], "configMap": {}}})
}

async fn config_map_data(
    h: &Harness,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
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
    move |b| {
        b.and_then(common::bundle_ready)
            .is_some_and(|(s, r, _)| s == "False" && r == reason)
    }
}

/// A repository whose tag `1` holds a revision signed by a fresh P-256 key, and a source
/// that verifies it with that key (Secret `keys`), already verified.
struct SignedSource {
    work: tempfile::TempDir,
    key: KeyPair,
    repo: ocisync::oci::reference::Repository,
    v1: String,
    d1: String,
    source: ArtifactSource,
}

impl SignedSource {
    async fn new(h: &Harness, prefix: &str, name: &str) -> Self {
        let work = tempfile::tempdir().expect("tempdir");
        let key = signing::generate(work.path(), "a", KeyKind::P256);
        let repo = h
            .env
            .repo(Which::Plain, &format!("{prefix}-{}", common::unique()));
        let v1 = format!("# v1 {}\n- rule: one\n", common::unique());
        let mut s = SignedSource {
            work,
            key,
            repo,
            v1,
            d1: String::new(),
            source: ArtifactSource::new(name, Default::default()),
        };
        s.d1 = s.push(h, &s.v1.clone());
        signing::push_classic(
            &h.env,
            Which::Plain,
            &s.repo,
            &s.d1,
            &[signed(&s.key, &s.d1)],
        );
        let public = std::fs::read(&s.key.public).expect("public key");
        h.secret("keys", &[("cosign.pub", public)], "Opaque").await;
        h.create(name, serde_json::json!({
            "url": format!("oci://{}", s.repo), "ref": {"tag": "1"}, "interval": "1h", "insecure": true,
            "verify": {"provider": "cosign", "secretRef": {"name": "keys"}},
        }))
        .await;
        s.source = h
            .wait(name, "verified", |o| {
                condition(o, "SourceVerified") == Some(("True", "Verified"))
                    && condition(o, "Ready") == Some(("True", "Succeeded"))
            })
            .await;
        s
    }

    /// Pushes `text` as `rules.yaml` to tag `1`; its digest.
    fn push(&self, h: &Harness, text: &str) -> String {
        let target = format!("{}:1", self.repo);
        let work = self.work.path();
        push_file(
            &h.env,
            Which::Plain,
            work,
            &target,
            "rules.yaml",
            text.as_bytes(),
            &[],
        )
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn key_mode_serves_only_revisions_signed_by_a_trusted_key() {
    let h = harness().await;
    let signed_v1 = SignedSource::new(&h, "verify-key", "rules").await;
    let (key_a, repo, v1, d1, o) = (
        &signed_v1.key,
        &signed_v1.repo,
        &signed_v1.v1,
        &signed_v1.d1,
        &signed_v1.source,
    );
    let key_b = signing::generate(signed_v1.work.path(), "b", KeyKind::P256);
    let v = o
        .status
        .as_ref()
        .and_then(|s| s.artifact.as_ref())
        .and_then(|a| a.verification.clone())
        .expect("verification");
    let expected = key_a.fingerprint();
    assert_eq!(
        (
            v.method.as_str(),
            v.key_fingerprint.as_deref(),
            v.format.as_str()
        ),
        ("key", Some(expected.as_str()), "classic")
    );
    // a bundle into a ConfigMap and onto a node (a local agent on a fake Node)
    let run = common::unique();
    let node = format!("e2e-node-{run}-verify");
    agent::node(&h, &node, serde_json::json!({"e2e-run": run})).await;
    let on_node = Agent::start(&h, &node, &h.base_url);
    let mut spec = bundle_spec();
    spec["spec"]["nodeFiles"] = serde_json::json!({
        "directory": "/etc/falco/rules.d", "nodeSelector": {"matchLabels": {"e2e-run": run}},
    });
    h.apply::<RuleBundle>("b", spec).await;
    agent::rolled_out(&h, "b", "on its node", (1, 1, 0)).await;
    let served = config_map_data(&h, "b").await.expect("ConfigMap");
    assert_eq!(
        served.get("rules.yaml").map(String::as_str),
        Some(v1.as_str())
    );
    let node_files = on_node.files();
    assert!(
        node_files.values().any(|f| f == v1.as_bytes()),
        "{node_files:?}"
    );

    // each hostile new revision is refused with its reason; v1 stays everywhere
    let v2 = format!("# v2 {}\n- rule: two\n", common::unique());
    let d2 = signed_v1.push(&h, &v2);
    let mut tampered = signed(key_a, &d2);
    tampered.payload.push(b' ');
    let steps: Vec<(&str, &'static str, Vec<Layer>)> = vec![
        ("unsigned", "SignatureNotFound", vec![]),
        ("another key", "UntrustedKey", vec![signed(&key_b, &d2)]),
        // v1's valid signature replayed onto v2's tag: its payload names v1
        ("replayed", "SignatureInvalid", vec![signed(key_a, d1)]),
        // payload bytes changed after signing: no trusted key verifies them
        ("tampered", "UntrustedKey", vec![tampered]),
    ];
    for (i, (what, reason, layers)) in steps.into_iter().enumerate() {
        if !layers.is_empty() {
            signing::push_classic(&h.env, Which::Plain, repo, &d2, &layers);
        }
        let o = h.request_check("rules", &format!("step-{i}")).await;
        let o = if refused_with(reason)(&o) {
            o
        } else {
            h.wait("rules", what, refused_with(reason)).await
        };
        assert_eq!(
            verified_digest(&o).as_deref(),
            Some(d1.as_str()),
            "{what}: v1 stays verified in status"
        );
        assert_eq!(digest_of(&o).as_deref(), Some(d1.as_str()));
        let still = config_map_data(&h, "b").await.expect("ConfigMap");
        assert_eq!(
            still, served,
            "{what}: the ConfigMap keeps v1 byte for byte"
        );
    }
    // the store never took v2's blobs
    assert!(stored(h.store_dir(), v1), "v1 is in the store");
    assert!(!stored(h.store_dir(), &v2), "v2 was stored");

    // signed properly: v2 is taken and reaches the ConfigMap
    signing::push_classic(&h.env, Which::Plain, repo, &d2, &[signed(key_a, &d2)]);
    h.request_check("rules", "signed").await;
    h.wait("rules", "v2 verified", move |o| {
        verified_digest(o).as_deref() == Some(d2.as_str())
    })
    .await;
    let v2c = v2.clone();
    h.wait_for::<ConfigMap>("b", "v2", move |cm| {
        cm.and_then(|c| c.data.as_ref())
            .and_then(|d| d.get("rules.yaml"))
            .map(String::as_str)
            == Some(v2c.as_str())
    })
    .await;
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn adding_verify_stops_an_unsigned_revision_for_new_consumers_and_keeps_old_ones() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let key = signing::generate(work.path(), "a", KeyKind::P256);
    let pub_a = std::fs::read(&key.public).expect("public key");
    let name = format!("verify-add-{}", common::unique());
    let repo = h.env.repo(Which::Plain, &name);
    let v1 = format!("# unsigned {}\n", common::unique());
    let d1 = push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "rules.yaml",
        v1.as_bytes(),
        &[],
    );
    h.create(
        "rules",
        serde_json::json!({
            "url": format!("oci://{repo}"), "ref": {"tag": "1"}, "interval": "1h", "insecure": true,
        }),
    )
    .await;
    h.wait("rules", "Ready", |o| {
        condition(o, "Ready") == Some(("True", "Succeeded"))
    })
    .await;
    h.apply::<RuleBundle>("old", bundle_spec()).await;
    h.wait_for::<RuleBundle>("old", "Ready", bundle_ready).await;
    let served = config_map_data(&h, "old").await.expect("ConfigMap");

    h.secret("cosign-keys", &[("cosign.pub", pub_a)], "Opaque")
        .await;
    let sources: Api<ArtifactSource> = Api::namespaced(h.client.clone(), &h.ns);
    let patch = serde_json::json!({"spec": {"verify": {"secretRef": {"name": "cosign-keys"}}}});
    sources
        .patch("rules", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("add verify");
    let o = h
        .wait("rules", "refused", refused_with("SignatureNotFound"))
        .await;
    assert_eq!(
        digest_of(&o).as_deref(),
        Some(d1.as_str()),
        "the revision stays in status"
    );
    assert!(verified_digest(&o).is_none(), "but it is not verified");
    // a new consumer gets nothing; the existing ConfigMap is kept (removing security rules
    // would fail open) and its bundle says why it is not ready
    h.apply::<RuleBundle>("new", bundle_spec()).await;
    let b = h
        .wait_for::<RuleBundle>("new", "SourceNotReady", bundle_reason("SourceNotReady"))
        .await
        .expect("bundle");
    let message = common::bundle_ready(&b)
        .map(|(_, _, m)| m)
        .unwrap_or_default();
    assert!(
        message.contains("SignatureNotFound") || message.contains("not verified"),
        "{message}"
    );
    assert!(
        config_map_data(&h, "new").await.is_none(),
        "no ConfigMap for a new consumer"
    );
    h.wait_for::<RuleBundle>("old", "SourceNotReady", bundle_reason("SourceNotReady"))
        .await;
    assert_eq!(config_map_data(&h, "old").await.expect("kept"), served);
    h.cleanup().await;
}

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const SUBJECT: &str =
    "https://github.com/example/rules/.github/workflows/release.yaml@refs/tags/v1";

/// Signs `digest` keyless with the offline Sigstore (e2e/sigstore/sign.mjs); the directory
/// it wrote (trusted root, classic layer, v0.3 bundle).
fn sign_keyless(dir: &Path, digest: &str) -> PathBuf {
    let out = dir.join(format!("sig-{}", &digest[7..19]));
    let script = common::root().join("e2e/sigstore/sign.mjs");
    let status = std::process::Command::new("node")
        .arg(script)
        .args(["--out", out.to_str().expect("path"), "--digest", digest])
        .status()
        .expect("node (e2e/deps.sh installs the Sigstore mock)");
    assert!(status.success(), "sign.mjs failed");
    out
}

/// The classic layer sign.mjs wrote.
fn classic_layer(dir: &Path) -> Layer {
    let annotations = std::fs::read(dir.join("classic/annotations.json")).expect("annotations");
    Layer {
        payload: std::fs::read(dir.join("classic/payload.json")).expect("payload"),
        annotations: serde_json::from_slice(&annotations).expect("annotations JSON"),
    }
}

async fn trusted_root(h: &Harness, name: &str, dir: &Path) {
    let root = std::fs::read_to_string(dir.join("trusted_root.json")).expect("root");
    h.apply::<ConfigMap>(
        name,
        serde_json::json!({"data": {"trusted_root.json": root}}),
    )
    .await;
}

fn keyless(repo: &str, tag: &str, root: &str, issuer: &str, subject: &str) -> serde_json::Value {
    serde_json::json!({
        "url": format!("oci://{repo}"), "ref": {"tag": tag}, "interval": "1h", "insecure": true,
        "verify": {"provider": "cosign", "trustedRootRef": {"name": root},
                   "matchOIDCIdentity": [{"issuer": issuer, "subject": subject}]},
    })
}

fn verified_as(o: &ArtifactSource) -> Option<(String, String, String)> {
    let v = o.status.as_ref()?.artifact.as_ref()?.verification.clone()?;
    Some((v.method, v.subject?, v.format))
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn keyless_bundles_and_classic_signatures_verify_by_identity_and_root() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let name = format!("verify-keyless-{}", common::unique());
    let repo = h.env.repo(Which::Plain, &name);
    let push = |tag: &str, text: &str| {
        let target = format!("{repo}:{tag}");
        push_file(
            &h.env,
            Which::Plain,
            work.path(),
            &target,
            "r.yaml",
            text.as_bytes(),
            &[],
        )
    };
    // tag "bundle": a v0.3 bundle attached as a referrer (through the fallback tag: the
    // registry has no referrers API); tag "classic": cosign's classic keyless layer
    let d_bundle = push("bundle", &format!("# b {}\n", common::unique()));
    let d_classic = push("classic", &format!("# c {}\n", common::unique()));
    let signed_bundle = sign_keyless(work.path(), &d_bundle);
    let signed_classic = sign_keyless(work.path(), &d_classic);
    let registry = h.env.registry(Which::Plain);
    let bundle = std::fs::read(signed_bundle.join("bundle-v03.json")).expect("bundle");
    let subject = Digest::parse(&d_bundle).expect("digest");
    let media = "application/vnd.dev.sigstore.bundle.v0.3+json";
    signing::attach_bundle(&registry, &repo, &subject, &bundle, media).await;
    signing::push_classic(
        &h.env,
        Which::Plain,
        &repo,
        &d_classic,
        &[classic_layer(&signed_classic)],
    );
    trusted_root(&h, "root-bundle", &signed_bundle).await;
    trusted_root(&h, "root-classic", &signed_classic).await;

    let anchored = |s: &str| format!("^{}$", regex_escape(s));
    let (issuer, subject) = (anchored(ISSUER), anchored(SUBJECT));
    let repo = repo.to_string();
    let cases = [
        (
            "bundle",
            keyless(&repo, "bundle", "root-bundle", &issuer, &subject),
            None,
        ),
        (
            "classic",
            keyless(&repo, "classic", "root-classic", &issuer, &subject),
            None,
        ),
        (
            "other-subject",
            keyless(
                &repo,
                "bundle",
                "root-bundle",
                &issuer,
                "^https://github\\.com/other/",
            ),
            Some("IdentityMismatch"),
        ),
        (
            "other-issuer",
            keyless(
                &repo,
                "classic",
                "root-classic",
                "^https://accounts\\.google\\.com$",
                &subject,
            ),
            Some("IdentityMismatch"),
        ),
        // the classic signature's certificate is from another run's CA than this root's
        (
            "other-ca",
            keyless(&repo, "classic", "root-bundle", &issuer, &subject),
            Some("SignatureInvalid"),
        ),
        (
            "no-root",
            keyless(&repo, "bundle", "missing", &issuer, &subject),
            Some("TrustedRootInvalid"),
        ),
    ];
    for (source, spec, _) in &cases {
        h.create(source, spec.clone()).await;
    }
    for (source, _, refused) in cases {
        match refused {
            None => {
                let o = h
                    .wait(source, "verified", |o| {
                        condition(o, "SourceVerified") == Some(("True", "Verified"))
                    })
                    .await;
                let format = if source == "bundle" {
                    "bundle-v0.3"
                } else {
                    "classic"
                };
                assert_eq!(
                    verified_as(&o),
                    Some(("keyless".into(), SUBJECT.into(), format.into())),
                    "{source}"
                );
                assert_eq!(condition(&o, "Ready"), Some(("True", "Succeeded")));
            }
            Some(reason) => {
                let o = h.wait(source, reason, refused_with(reason)).await;
                assert!(digest_of(&o).is_none(), "{source}: nothing stored");
            }
        }
    }
    h.cleanup().await;
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// The registry requests of `repo` logged since line `from`, as "METHOD path" lines.
fn requests_since(h: &Harness, from: usize, repo: &str) -> Vec<String> {
    let text = std::fs::read_to_string(h.env.log(Which::Plain)).expect("registry log");
    text.lines()
        .skip(from)
        .filter(|l| l.starts_with("127.0.0.1") && l.contains(&format!("/v2/{repo}/")))
        .filter_map(|l| {
            let request = l.split('"').nth(1)?;
            let mut parts = request.split(' ');
            Some(format!("{} {}", parts.next()?, parts.next()?))
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn a_verified_unchanged_tag_costs_one_head_per_check_and_a_new_revision_is_verified_once() {
    let h = harness().await;
    let signed_v1 = SignedSource::new(&h, "verify-quiet", "quiet").await;
    let (key, repo) = (&signed_v1.key, &signed_v1.repo);
    let before = common::log_lines(h.env.log(Which::Plain));
    for i in 0..10 {
        let o = h.request_check("quiet", &format!("check-{i}")).await;
        assert_eq!(condition(&o, "Ready"), Some(("True", "Succeeded")));
    }
    let unchanged = requests_since(&h, before, &repo.name);
    assert_eq!(
        unchanged,
        vec![format!("HEAD /v2/{}/manifests/1", repo.name); 10],
        "verification adds no request to an unchanged tag"
    );

    // a new signed revision: the manifest, then discovery (referrers, their fallback tag,
    // the .sig tag and its payload), then the blobs; verified once, not per check
    let d2 = signed_v1.push(&h, &format!("# 2 {}\n", common::unique()));
    signing::push_classic(&h.env, Which::Plain, repo, &d2, &[signed(key, &d2)]);
    let before = common::log_lines(h.env.log(Which::Plain));
    let d2c = d2.clone();
    h.request_check("quiet", "new").await;
    h.wait("quiet", "v2", move |o| {
        verified_digest(o).as_deref() == Some(d2c.as_str())
    })
    .await;
    let new = requests_since(&h, before, &repo.name);
    let hex = &d2[7..];
    let discovery: Vec<&String> = new
        .iter()
        .filter(|r| {
            r.contains(&format!("referrers/{d2}")) || r.contains(&format!("manifests/sha256-{hex}"))
        })
        .collect();
    assert_eq!(
        discovery.len(),
        3,
        "referrers, fallback tag, .sig tag: {new:#?}"
    );
    println!(
        "requests of the check that took a new verified revision ({}): {new:#?}",
        new.len()
    );
    let before = common::log_lines(h.env.log(Which::Plain));
    h.request_check("quiet", "again").await;
    let again = requests_since(&h, before, &repo.name);
    assert_eq!(
        again,
        vec![format!("HEAD /v2/{}/manifests/1", repo.name)],
        "{again:#?}"
    );
    h.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn after_a_restart_on_an_empty_store_the_kept_verified_revision_is_pulled_back() {
    let mut h = harness().await;
    let signed_v1 = SignedSource::new(&h, "verify-restart", "rules").await;
    let (v1, d1, o) = (&signed_v1.v1, &signed_v1.d1, signed_v1.source.clone());
    let url = o
        .status
        .and_then(|s| s.artifact)
        .and_then(|a| a.url)
        .expect("artifact url");
    // the tag moves to an unsigned revision while the controller restarts on an empty store
    // (an emptyDir after a reschedule)
    let v2 = format!("# 2 {}\n", common::unique());
    signed_v1.push(&h, &v2);
    let store = tempfile::tempdir().expect("new store");
    h.restart_controller(store.path(), &["--watch-secrets"]);
    let o = h.request_check("rules", "after-restart").await;
    let o = if refused_with("SignatureNotFound")(&o) {
        o
    } else {
        h.wait("rules", "refused", refused_with("SignatureNotFound"))
            .await
    };
    assert_eq!(digest_of(&o).as_deref(), Some(d1.as_str()));
    assert!(
        stored(store.path(), v1),
        "the kept revision is back in the store"
    );
    assert!(!stored(store.path(), &v2));
    let index = reqwest::get(&url).await.expect("artifact server");
    assert!(index.status().is_success(), "{url}: {}", index.status());
    h.cleanup().await;
}
