//! End-to-end: `ocisync verify` and `ocisync push --sign-key` against both registries, with
//! signatures made independently (openssl keys and signatures, oras-py manifests).

mod common;

use std::path::Path;
use std::process::Output;

use common::signing::{self, KeyKind, KeyPair, Layer};
use common::{BOTH, Env, Which};
use ocisync::digest::Digest;
use ocisync::oci::reference::Repository;

/// An artifact pushed with `ocisync push`: its repository and manifest digest.
struct Pushed {
    repo: Repository,
    digest: Digest,
}

impl Pushed {
    fn tagged(&self) -> String {
        format!("{}:v1", self.repo)
    }
    fn pinned(&self) -> String {
        format!("{}@{}", self.repo, self.digest)
    }
}

/// Pushes a small artifact (unique content) with `ocisync push`, plus `extra` flags.
fn push(env: &Env, which: Which, work: &Path, name: &str, extra: &[&str]) -> (Pushed, Value) {
    let repo = env.repo(which, name);
    push_to(env, which, work, &repo, &common::unique(), extra)
}

type Value = serde_json::Value;

fn push_to(
    env: &Env,
    which: Which,
    work: &Path,
    repo: &Repository,
    salt: &str,
    extra: &[&str],
) -> (Pushed, Value) {
    let file = work.join("rules.yaml");
    std::fs::write(&file, format!("# {salt}\n- rule: r\n")).expect("write");
    let mut cmd = common::ocisync();
    cmd.arg("push")
        .arg(&file)
        .arg(format!("{repo}:v1"))
        .args(["--type", "falco-rules", "-O", "json"])
        .args(extra)
        .args(env.cli_flags(which, work));
    let json: Value = serde_json::from_str(&common::run_ok(&mut cmd)).expect("push JSON");
    let digest = Digest::parse(json["digest"].as_str().expect("digest")).expect("sha256");
    let pushed = Pushed {
        repo: repo.clone(),
        digest,
    };
    (pushed, json)
}

/// Runs `ocisync verify REF ARGS -O json`: exit code, stdout JSON, stderr.
fn verify(env: &Env, which: Which, work: &Path, reference: &str, args: &[&str]) -> Verify {
    let mut cmd = common::ocisync();
    cmd.arg("verify")
        .arg(reference)
        .args(args)
        .args(["-O", "json"])
        .args(env.cli_flags(which, work));
    let out: Output = cmd.output().expect("run ocisync verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    Verify {
        code: out.status.code(),
        json,
        stderr,
    }
}

struct Verify {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

impl Verify {
    /// Asserts a success; the JSON result.
    fn ok(self, what: &str) -> Value {
        assert_eq!(self.code, Some(0), "{what}: {}", self.stderr);
        assert_eq!(self.json["verified"], true, "{what}: {}", self.json);
        eprintln!("{what}: requests {}", self.json["requests"]);
        self.json
    }

    /// Asserts a refusal for `reason`, on stderr (one line) and in the JSON.
    fn refused(self, what: &str, reason: &str) -> Value {
        assert_eq!(self.code, Some(1), "{what}: {} {}", self.stderr, self.json);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: {}", self.stderr);
        assert!(
            lines[0].starts_with(&format!("error: {reason}: ")),
            "{what}: {}",
            self.stderr
        );
        assert_eq!(self.json["verified"], false, "{what}");
        assert_eq!(self.json["reason"], reason, "{what}: {}", self.json);
        eprintln!("{what}: requests {}", self.json["requests"]);
        self.json
    }
}

fn key_flag(key: &KeyPair) -> [&str; 2] {
    ["--key", key.public.to_str().expect("utf8")]
}

#[test]
#[ignore = "needs the test environment (e2e/testenv.sh); make test runs it"]
fn classic_key_signatures_from_openssl_and_oras_py_verify() {
    let env = common::env();
    for which in BOTH {
        let work = tempfile::tempdir().expect("tempdir");
        let key = signing::generate(work.path(), "cosign", KeyKind::P256);
        let (a, _) = push(&env, which, work.path(), "signed", &[]);
        let payload = signing::payload(&a.repo.to_string(), a.digest.as_str());
        signing::push_classic(
            &env,
            which,
            &a.repo,
            a.digest.as_str(),
            &[Layer::signed(payload, &key)],
        );

        let what = format!("{which:?} signed by tag");
        let json = verify(&env, which, work.path(), &a.tagged(), &key_flag(&key)).ok(&what);
        assert_eq!(json["digest"], a.digest.as_str());
        assert_eq!(json["method"], "key");
        assert_eq!(json["format"], "classic");
        assert_eq!(json["keyFingerprint"], key.fingerprint());
        // no referrers API on Distribution 2.8: referrers, their tag, the .sig tag, its payload
        assert_eq!(json["requests"], 4, "{what}: {json}");
        let what = format!("{which:?} signed by digest");
        verify(&env, which, work.path(), &a.pinned(), &key_flag(&key)).ok(&what);

        // the human line
        let mut cmd = common::ocisync();
        cmd.args(["verify", &a.tagged()])
            .args(key_flag(&key))
            .args(env.cli_flags(which, work.path()));
        let line = common::run_ok(&mut cmd);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains(&key.fingerprint()) && line.contains(a.digest.as_str()),
            "{line}"
        );
    }
}

#[test]
#[ignore = "needs the test environment (e2e/testenv.sh); make test runs it"]
fn unsigned_other_key_and_replayed_signatures_are_refused() {
    let env = common::env();
    for which in BOTH {
        let work = tempfile::tempdir().expect("tempdir");
        let key = signing::generate(work.path(), "cosign", KeyKind::P256);
        let other = signing::generate(work.path(), "other", KeyKind::P256);

        let (unsigned, _) = push(&env, which, work.path(), "unsigned", &[]);
        let what = format!("{which:?} unsigned");
        let json = verify(
            &env,
            which,
            work.path(),
            &unsigned.tagged(),
            &key_flag(&key),
        )
        .refused(&what, "SignatureNotFound");
        // referrers, their tag, the .sig tag
        assert_eq!(json["requests"], 3, "{what}: {json}");

        let (a, _) = push(&env, which, work.path(), "other-key", &[]);
        let payload = signing::payload(&a.repo.to_string(), a.digest.as_str());
        signing::push_classic(
            &env,
            which,
            &a.repo,
            a.digest.as_str(),
            &[Layer::signed(payload, &other)],
        );
        verify(&env, which, work.path(), &a.tagged(), &key_flag(&key))
            .refused(&format!("{which:?} other key"), "UntrustedKey");
        // either of two keys
        let both = [key_flag(&key), key_flag(&other)].concat();
        let json = verify(&env, which, work.path(), &a.tagged(), &both).ok("two keys");
        assert_eq!(json["keyFingerprint"], other.fingerprint());

        // a valid signature by the trusted key, over a payload naming another digest
        let (b, _) = push(&env, which, work.path(), "replayed", &[]);
        let elsewhere = signing::payload(&a.repo.to_string(), a.digest.as_str());
        signing::push_classic(
            &env,
            which,
            &b.repo,
            b.digest.as_str(),
            &[Layer::signed(elsewhere, &key)],
        );
        verify(&env, which, work.path(), &b.tagged(), &key_flag(&key))
            .refused(&format!("{which:?} replayed"), "SignatureInvalid");

        // a registry failure is the registry's reason
        let missing = format!("{}-missing:v1", b.repo);
        verify(&env, which, work.path(), &missing, &key_flag(&key))
            .refused(&format!("{which:?} missing"), "NotFound");
    }
}

#[test]
#[ignore = "needs the test environment (e2e/testenv.sh); make test runs it"]
fn ed25519_and_rsa_signatures_verify() {
    let env = common::env();
    let which = Which::Tls;
    let work = tempfile::tempdir().expect("tempdir");
    for kind in [KeyKind::Ed25519, KeyKind::Rsa] {
        let key = signing::generate(work.path(), &format!("{kind:?}"), kind);
        let (a, _) = push(&env, which, work.path(), "algorithms", &[]);
        let payload = signing::payload(&a.repo.to_string(), a.digest.as_str());
        // a layer that is not ours first: every layer is tried
        let p256 = signing::generate(work.path(), "p256", KeyKind::P256);
        let layers = [
            Layer::signed(payload.clone(), &p256),
            Layer::signed(payload, &key),
        ];
        signing::push_classic(&env, which, &a.repo, a.digest.as_str(), &layers);
        let what = format!("{kind:?}");
        let json = verify(&env, which, work.path(), &a.tagged(), &key_flag(&key)).ok(&what);
        assert_eq!(json["keyFingerprint"], key.fingerprint(), "{what}");
        // the second layer's payload is the same blob: one fetch per layer all the same
        assert_eq!(json["requests"], 5, "{what}: {json}");
    }
}

#[test]
#[ignore = "needs the test environment (e2e/testenv.sh); make test runs it"]
fn push_sign_key_signatures_verify_with_ocisync_and_openssl() {
    let env = common::env();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for which in BOTH {
        let work = tempfile::tempdir().expect("tempdir");
        let p256 = signing::generate(work.path(), "p256", KeyKind::P256);
        let ed = signing::generate(work.path(), "ed", KeyKind::Ed25519);
        let repo = env.repo(which, "sign-key");
        let salt = common::unique();
        let (a, json) = push_to(&env, which, work.path(), &repo, &salt, &sign(&p256));
        assert_eq!(
            json["signature"]["keyFingerprint"],
            p256.fingerprint(),
            "{json}"
        );
        assert_eq!(json["signature"]["signatures"], 1, "{json}");
        let what = format!("{which:?} push --sign-key");
        let v = verify(&env, which, work.path(), &a.tagged(), &key_flag(&p256)).ok(&what);
        assert_eq!(v["keyFingerprint"], p256.fingerprint());

        // openssl agrees, on what the registry holds
        let registry = env.registry(which);
        let (config, layers) = rt.block_on(signing::read_classic(&registry, &repo, &a.digest));
        assert_eq!(config, "application/vnd.oci.image.config.v1+json");
        assert_eq!(layers.len(), 1);
        assert_openssl_verifies(&p256, &layers[0], &repo, &a.digest);

        // the same content pushed again, signed by another key: the signature is appended
        let (again, json) = push_to(&env, which, work.path(), &repo, &salt, &sign(&ed));
        assert_eq!(again.digest, a.digest, "packaging is reproducible");
        assert_eq!(json["signature"]["signatures"], 2, "{json}");
        let (_, layers) = rt.block_on(signing::read_classic(&registry, &repo, &a.digest));
        assert_eq!(layers.len(), 2);
        assert_openssl_verifies(&p256, &layers[0], &repo, &a.digest);
        assert_openssl_verifies(&ed, &layers[1], &repo, &a.digest);
        for key in [&p256, &ed] {
            let v = verify(&env, which, work.path(), &a.pinned(), &key_flag(key)).ok(&what);
            assert_eq!(v["keyFingerprint"], key.fingerprint());
        }

        // signing again with a key that already signed adds nothing
        let (_, json) = push_to(&env, which, work.path(), &repo, &salt, &sign(&p256));
        assert_eq!(json["signature"]["written"], false, "{json}");
        assert_eq!(json["signature"]["signatures"], 2, "{json}");
    }
}

fn sign(key: &KeyPair) -> [&str; 2] {
    ["--sign-key", key.private.to_str().expect("utf8")]
}

fn assert_openssl_verifies(
    key: &KeyPair,
    layer: &(Vec<u8>, std::collections::BTreeMap<String, String>),
    repo: &Repository,
    digest: &Digest,
) {
    use base64::Engine as _;
    let (payload, annotations) = layer;
    let text = annotations
        .get(signing::SIGNATURE_ANNOTATION)
        .expect("signature annotation");
    let signature = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    assert!(
        key.openssl_verifies(payload, &signature),
        "openssl refuses the signature"
    );
    let p: Value = serde_json::from_slice(payload).expect("payload JSON");
    assert_eq!(
        p["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    assert_eq!(
        p["critical"]["identity"]["docker-reference"],
        repo.to_string()
    );
    assert_eq!(p["critical"]["type"], "cosign container image signature");
}

/// The keyless signer of e2e/sigstore (an offline Sigstore mock), when installed.
fn keyless_signer() -> Option<std::path::PathBuf> {
    let script = common::root().join("e2e/sigstore/sign.mjs");
    let modules = common::root().join("target/sigstore/node_modules");
    (script.exists() && modules.exists()).then_some(script)
}

#[test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
fn keyless_classic_and_bundle_signatures_verify() {
    let env = common::env();
    let script = keyless_signer()
        .expect("e2e/sigstore/sign.mjs and target/sigstore/node_modules (e2e/deps.sh)");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let issuer = "https://token.actions.githubusercontent.com";
    let subject = "https://github.com/example/rules/.github/workflows/release.yaml@refs/tags/v1";
    for which in BOTH {
        let work = tempfile::tempdir().expect("tempdir");
        let registry = env.registry(which);
        let identity = [
            "--certificate-identity-regexp",
            "^https://github\\.com/example/rules/\\.github/workflows/release\\.yaml@refs/tags/",
            "--certificate-oidc-issuer-regexp",
            "^https://token\\.actions\\.githubusercontent\\.com$",
        ];
        let sign = |a: &Pushed, out: &Path| {
            let mut cmd = std::process::Command::new("node");
            cmd.arg(&script)
                .arg("--out")
                .arg(out)
                .args(["--digest", a.digest.as_str()])
                .args(["--reference", &a.repo.to_string()]);
            common::run_ok(&mut cmd);
        };
        let flags = |out: &Path| -> Vec<String> {
            let mut f: Vec<String> = identity.iter().map(|s| s.to_string()).collect();
            f.push("--trusted-root".into());
            f.push(out.join("trusted_root.json").display().to_string());
            f
        };

        // classic: payload + certificate, chain and Rekor bundle annotations
        let (a, _) = push(&env, which, work.path(), "keyless-classic", &[]);
        let out = work.path().join("classic");
        sign(&a, &out);
        let layer = Layer {
            payload: std::fs::read(out.join("classic/payload.json")).expect("payload"),
            annotations: serde_json::from_slice(
                &std::fs::read(out.join("classic/annotations.json")).expect("annotations"),
            )
            .expect("annotations JSON"),
        };
        signing::push_classic(&env, which, &a.repo, a.digest.as_str(), &[layer]);
        let f = flags(&out);
        let args: Vec<&str> = f.iter().map(String::as_str).collect();
        let what = format!("{which:?} keyless classic");
        let json = verify(&env, which, work.path(), &a.tagged(), &args).ok(&what);
        assert_eq!(json["method"], "keyless");
        assert_eq!(json["format"], "classic");
        assert_eq!(json["issuer"], issuer);
        assert_eq!(json["subject"], subject);
        assert!(json["integratedTime"].as_i64().is_some(), "{json}");

        // bundle v0.3 as a referrer (through the fallback index)
        let (b, _) = push(&env, which, work.path(), "keyless-bundle", &[]);
        let out = work.path().join("bundle");
        sign(&b, &out);
        let bundle = std::fs::read(out.join("bundle-v03.json")).expect("bundle");
        let media = "application/vnd.dev.sigstore.bundle.v0.3+json";
        rt.block_on(signing::attach_bundle(
            &registry, &b.repo, &b.digest, &bundle, media,
        ));
        let f = flags(&out);
        let args: Vec<&str> = f.iter().map(String::as_str).collect();
        let what = format!("{which:?} keyless bundle");
        let json = verify(&env, which, work.path(), &b.tagged(), &args).ok(&what);
        assert_eq!(json["format"], "bundle-v0.3");
        assert_eq!(json["subject"], subject);
        // referrers (404), their tag, the referrer manifest, its bundle blob
        assert_eq!(json["requests"], 4, "{what}: {json}");

        // another identity: refused
        let mut wrong = f.clone();
        wrong[1] = "^https://github\\.com/someone-else/".into();
        let args: Vec<&str> = wrong.iter().map(String::as_str).collect();
        verify(&env, which, work.path(), &b.tagged(), &args)
            .refused(&format!("{which:?} other identity"), "IdentityMismatch");
    }
}
