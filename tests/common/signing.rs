//! Signatures made without ocisync, for the signature tests: keys and signatures from the
//! `openssl` binary, classic `.sig` manifests pushed by oras-py, Sigstore bundles attached
//! as referrers in cosign v3's shape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use ocisync::digest::Digest;
use ocisync::oci::reference::Repository;
use ocisync::oci::registry::Registry;

use super::{Env, Which};

pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    Ed25519,
    Rsa,
}

/// A key pair in PEM files: PKCS#8 private key and SubjectPublicKeyInfo public key.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub kind: KeyKind,
    pub private: PathBuf,
    pub public: PathBuf,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Generates a key pair named `name` in `dir` with openssl.
pub fn generate(dir: &Path, name: &str, kind: KeyKind) -> KeyPair {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let algorithm: &[&str] = match kind {
        KeyKind::P256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        KeyKind::Ed25519 => &["-algorithm", "ed25519"],
        KeyKind::Rsa => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    };
    let mut args = vec!["genpkey"];
    args.extend_from_slice(algorithm);
    args.extend(["-out", path_str(&private)]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        path_str(&private),
        "-pubout",
        "-out",
        path_str(&public),
    ]);
    KeyPair {
        kind,
        private,
        public,
    }
}

impl KeyPair {
    /// The signature over `message` as cosign makes it: ECDSA (DER) and RSA PKCS#1 v1.5 over
    /// SHA-256, Ed25519 over the message itself.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("message");
        std::fs::write(&input, message).expect("write message");
        let key = path_str(&self.private);
        match self.kind {
            KeyKind::P256 | KeyKind::Rsa => {
                openssl(&["dgst", "-sha256", "-sign", key, path_str(&input)])
            }
            KeyKind::Ed25519 => openssl(&[
                "pkeyutl",
                "-sign",
                "-inkey",
                key,
                "-rawin",
                "-in",
                path_str(&input),
            ]),
        }
    }

    /// `sha256:<hex>` of the public key's DER SubjectPublicKeyInfo, from openssl.
    pub fn fingerprint(&self) -> String {
        let der = openssl(&[
            "pkey",
            "-pubin",
            "-in",
            path_str(&self.public),
            "-outform",
            "DER",
        ]);
        Digest::of(&der).to_string()
    }

    /// Whether openssl accepts `signature` over `message` under this public key.
    pub fn openssl_verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("message");
        let sig = dir.path().join("sig");
        std::fs::write(&input, message).expect("write message");
        std::fs::write(&sig, signature).expect("write signature");
        let (public, input, sig) = (path_str(&self.public), path_str(&input), path_str(&sig));
        let args: Vec<&str> = match self.kind {
            KeyKind::P256 | KeyKind::Rsa => vec![
                "dgst",
                "-sha256",
                "-verify",
                public,
                "-signature",
                sig,
                input,
            ],
            KeyKind::Ed25519 => vec![
                "pkeyutl", "-verify", "-pubin", "-inkey", public, "-rawin", "-in", input,
                "-sigfile", sig,
            ],
        };
        Command::new("openssl")
            .args(&args)
            .output()
            .expect("run openssl")
            .status
            .success()
    }
}

/// cosign's simple-signing payload, written out here (not by ocisync's code), with
/// `optional: null` as cosign writes it.
pub fn payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{docker_reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// One layer of a classic `.sig` manifest.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    pub payload: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

impl Layer {
    /// A key-mode signature: `payload` signed by `key`.
    pub fn signed(payload: Vec<u8>, key: &KeyPair) -> Self {
        let signature = super::base64_encode_bytes(&key.sign(&payload));
        Layer {
            payload,
            annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), signature)]),
        }
    }
}

/// Pushes a classic signature manifest for `digest` with these layers (replacing any at the
/// tag) with oras-py.
pub fn push_classic(env: &Env, which: Which, repo: &Repository, digest: &str, layers: &[Layer]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut specs = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let path = dir.path().join(format!("payload-{i}.json"));
        std::fs::write(&path, &layer.payload).expect("write payload");
        specs.push(serde_json::json!({"payload": path, "annotations": layer.annotations}));
    }
    let spec = dir.path().join("layers.json");
    std::fs::write(&spec, serde_json::to_vec(&specs).expect("json")).expect("write spec");
    let mut cmd = oras_py(env, which, "cosign_classic.py");
    cmd.arg("push").arg(repo.to_string()).arg(digest).arg(&spec);
    let out = cmd.output().expect("run oras-py");
    assert!(
        out.status.success(),
        "oras-py push of the classic signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A script of e2e/python run by the pyenv's Python, with the registry's access in its
/// environment.
pub fn oras_py(env: &Env, which: Which, script: &str) -> Command {
    let python = super::python().expect("oras-py is not installed: run `make deps`");
    let mut cmd = Command::new(python);
    cmd.arg(super::root().join("e2e/python").join(script));
    match which {
        Which::Plain => {
            cmd.env("ORAS_INSECURE", "1");
        }
        Which::Tls => {
            cmd.env("ORAS_CA", &env.ca)
                .env("ORAS_USER", &env.user)
                .env("ORAS_PASSWORD", &env.password);
        }
    }
    cmd
}

/// The classic signatures at `sha256-<hex>.sig`, read back: (payload, annotations) per
/// layer, and the manifest's config media type.
pub async fn read_classic(
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
) -> (String, Vec<(Vec<u8>, BTreeMap<String, String>)>) {
    let tag = format!("sha256-{}.sig", digest.hex());
    let raw = registry
        .fetch_manifest(repo, &tag, None)
        .await
        .unwrap_or_else(|e| panic!("{repo}:{tag}: {e}"));
    let m: serde_json::Value = serde_json::from_slice(&raw.bytes).expect("manifest JSON");
    let config = m["config"]["mediaType"].as_str().unwrap_or("").to_string();
    let mut out = Vec::new();
    for layer in m["layers"].as_array().expect("layers") {
        assert_eq!(layer["mediaType"], SIMPLESIGNING, "{layer}");
        let d = Digest::parse(layer["digest"].as_str().expect("digest")).expect("sha256");
        let payload = registry
            .fetch_small_blob(repo, &d, 1 << 20)
            .await
            .expect("payload blob");
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(layer["annotations"].clone()).unwrap_or_default();
        out.push((payload.to_vec(), annotations));
    }
    (config, out)
}

/// Attaches a Sigstore bundle to `subject` as cosign v3 does: a manifest with the bundle's
/// `artifactType`, the empty config `{}`, one layer (the bundle) and `subject`. The
/// registries here lack the referrers API, so the fallback index at tag `sha256-<hex>`
/// gets an entry for it too (kept with the entries already there). Returns the referrer's
/// digest.
pub async fn attach_bundle(
    registry: &Registry,
    repo: &Repository,
    subject: &Digest,
    bundle: &[u8],
    media_type: &str,
) -> Digest {
    let head = registry
        .resolve(repo, subject.as_str())
        .await
        .expect("subject");
    let empty = Bytes::from_static(b"{}");
    let empty_digest = Digest::of(&empty);
    registry
        .push_blob(repo, empty_digest.as_str(), empty.clone())
        .await
        .expect("empty config");
    let bundle_digest = Digest::of(bundle);
    registry
        .push_blob(repo, bundle_digest.as_str(), Bytes::copy_from_slice(bundle))
        .await
        .expect("bundle blob");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": media_type,
        "config": {"mediaType": EMPTY, "digest": empty_digest, "size": 2},
        "layers": [{"mediaType": media_type, "digest": bundle_digest, "size": bundle.len()}],
        "subject": {"mediaType": head.media_type, "digest": subject, "size": head.size},
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                        "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("json"));
    let digest = Digest::of(&bytes);
    registry
        .push_manifest(repo, digest.as_str(), MANIFEST, bytes.clone())
        .await
        .expect("referrer manifest");
    let entry = serde_json::json!({
        "mediaType": MANIFEST, "digest": digest, "size": bytes.len(), "artifactType": media_type,
    });
    add_to_fallback_index(registry, repo, subject, entry).await;
    digest
}

/// Adds a descriptor to the referrers tag `sha256-<hex>` (an index), as clients do on a
/// registry without the referrers API.
async fn add_to_fallback_index(
    registry: &Registry,
    repo: &Repository,
    subject: &Digest,
    entry: serde_json::Value,
) {
    let tag = format!("sha256-{}", subject.hex());
    let mut index = match registry.fetch_manifest(repo, &tag, None).await {
        Ok(raw) => serde_json::from_slice(&raw.bytes).expect("index JSON"),
        Err(ocisync::oci::OciError::NotFound(_)) => {
            serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": []})
        }
        Err(e) => panic!("{repo}:{tag}: {e}"),
    };
    index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(entry);
    let bytes = Bytes::from(serde_json::to_vec(&index).expect("json"));
    registry
        .push_manifest(repo, &tag, INDEX, bytes)
        .await
        .expect("fallback index");
}
