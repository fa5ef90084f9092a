//! Keyless and bundle verification against fixtures made by `e2e/sigstore/sign.mjs` (the
//! offline Sigstore mock): `testdata/sigstore/<run>/`, every run a fresh CA and logs.
//! `main` signs `manifest.json`; `other-ca` is a second run; `legacy-issuer` writes another
//! issuer in the .1.1 extension; `late-log` logs the entry after the certificate expired.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::verify::keys::{PublicKey, SigningKey};
use crate::verify::{Candidate, Refusal, verify_candidate};

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const SUBJECT: &str =
    "https://github.com/example/rules/.github/workflows/release.yaml@refs/tags/v1";

fn read(path: &str) -> Vec<u8> {
    let p = format!(
        "{}/src/verify/testdata/sigstore/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn json_of(path: &str) -> Value {
    serde_json::from_slice(&read(path)).expect("fixture JSON")
}

fn manifest() -> Vec<u8> {
    read("manifest.json")
}

fn digest() -> Digest {
    Digest::of(&manifest())
}

fn root_json(run: &str) -> Value {
    json_of(&format!("{run}/trusted_root.json"))
}

fn root_of(v: &Value) -> Arc<TrustedRoot> {
    Arc::new(TrustedRoot::parse(v.to_string().as_bytes()).expect("root"))
}

fn root(run: &str) -> Arc<TrustedRoot> {
    root_of(&root_json(run))
}

fn ids(issuer: &str, subject: &str) -> Vec<Identity> {
    vec![Identity {
        issuer: regex::Regex::new(issuer).expect("regex"),
        subject: regex::Regex::new(subject).expect("regex"),
    }]
}

fn accepted() -> Vec<Identity> {
    ids(
        r"^https://token\.actions\.githubusercontent\.com$",
        r"^https://github\.com/example/rules/\.github/workflows/release\.yaml@refs/tags/",
    )
}

fn classic(run: &str) -> ClassicSignature {
    let a = json_of(&format!("{run}/classic/annotations.json"));
    let get = |k: &str| a[k].as_str().map(str::to_string);
    ClassicSignature {
        payload: read(&format!("{run}/classic/payload.json")),
        signature: get("dev.cosignproject.cosign/signature").unwrap_or_default(),
        certificate: get("dev.sigstore.cosign/certificate"),
        chain: get("dev.sigstore.cosign/chain"),
        rekor_bundle: get("dev.sigstore.cosign/bundle"),
    }
}

fn keyless(root: Arc<TrustedRoot>) -> Policy {
    Policy::Keyless {
        identities: accepted(),
        root,
    }
}

fn bundle_check(policy: &Policy, bundle: &Value) -> Result<Verified, Failed> {
    verify_bundle(
        policy,
        &digest(),
        &manifest(),
        bundle.to_string().as_bytes(),
    )
}

#[track_caller]
fn refused(r: Result<Verified, Failed>, refusal: Refusal, says: &str) {
    let e = r.expect_err("must be refused");
    assert_eq!(e.refusal, refusal, "{}", e.message);
    assert!(e.message.contains(says), "{:?} lacks {says:?}", e.message);
}

// ---- what verifies ----

#[test]
fn a_classic_keyless_layer_verifies_with_its_identity_and_time() {
    let v =
        verify_classic(&accepted(), &root("main"), &digest(), &classic("main")).expect("verifies");
    assert_eq!(v.method, Method::Keyless);
    assert_eq!(v.format, Format::Classic);
    assert_eq!(v.issuer.as_deref(), Some(ISSUER));
    assert_eq!(v.subject.as_deref(), Some(SUBJECT));
    let rekor: Value =
        serde_json::from_str(classic("main").rekor_bundle.as_deref().expect("bundle"))
            .expect("json");
    assert_eq!(
        v.integrated_time,
        rekor["Payload"]["integratedTime"].as_i64()
    );
    assert_eq!(v.key_fingerprint, None);
}

#[test]
fn a_v03_dsse_bundle_verifies() {
    let v = bundle_check(&keyless(root("main")), &json_of("main/bundle-v03.json")).expect("ok");
    assert_eq!((v.method, v.format), (Method::Keyless, Format::BundleV03));
    assert_eq!(v.subject.as_deref(), Some(SUBJECT));
    assert_eq!(v.issuer.as_deref(), Some(ISSUER));
    assert!(v.integrated_time.is_some());
}

#[test]
fn a_v02_message_signature_bundle_verifies_through_verify_candidate() {
    let policy = keyless(root("main"));
    let candidate = Candidate::Bundle(read("main/bundle-v02.json"));
    let v = verify_candidate(&policy, &digest(), &manifest(), &candidate).expect("verifies");
    assert_eq!((v.method, v.format), (Method::Keyless, Format::BundleV02));
    assert_eq!(v.subject.as_deref(), Some(SUBJECT));
}

/// v0.2 with its chain rewritten as v0.3's single certificate (neither field is signed).
fn v02_as_v03() -> Value {
    let mut b = json_of("main/bundle-v02.json");
    let vm = &mut b["verificationMaterial"];
    let leaf = vm["x509CertificateChain"]["certificates"][0].clone();
    vm.as_object_mut()
        .expect("object")
        .remove("x509CertificateChain");
    vm["certificate"] = leaf;
    b["mediaType"] = json!("application/vnd.dev.sigstore.bundle.v0.3+json");
    b
}

#[test]
fn a_v03_rewrite_of_the_v02_bundle_verifies() {
    let v = bundle_check(&keyless(root("main")), &v02_as_v03()).expect("verifies");
    assert_eq!(v.format, Format::BundleV03);
}

const P256_KEY: &str = include_str!("testdata/p256.key");
const P256_PUB: &str = include_str!("testdata/p256.pub");
const ED_PUB: &str = include_str!("testdata/ed25519.pub");

/// A key-mode v0.3 bundle (public key hint, no log entry) over cosign's statement.
fn key_bundle(predicate: &str) -> Value {
    let key = SigningKey::from_pem(P256_KEY.as_bytes()).expect("key");
    let statement = json!({
        "_type": dsse::STATEMENT_V1,
        "subject": [{"name": "registry.local/rules", "digest": {"sha256": digest().hex()}}],
        "predicateType": predicate,
        "predicate": {},
    })
    .to_string();
    let sig = key
        .sign(&dsse::pae(dsse::IN_TOTO, statement.as_bytes()))
        .expect("sign");
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "cosign.pub"}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": b64(statement.as_bytes()),
            "payloadType": dsse::IN_TOTO,
            "signatures": [{"sig": b64(&sig), "keyid": ""}],
        },
    })
}

#[test]
fn a_key_mode_bundle_verifies_under_the_trusted_key_only() {
    let public = PublicKey::from_pem("cosign.pub", P256_PUB.as_bytes()).expect("pub");
    let fingerprint = public.fingerprint();
    let bundle = key_bundle(dsse::COSIGN_SIGN);
    let v = bundle_check(&Policy::Keys(vec![public]), &bundle).expect("verifies");
    assert_eq!(v.method, Method::Key);
    assert_eq!(v.key_fingerprint, Some(fingerprint));
    assert_eq!(v.format, Format::BundleV03);
    let other = PublicKey::from_pem("other.pub", ED_PUB.as_bytes()).expect("pub");
    refused(
        bundle_check(&Policy::Keys(vec![other]), &bundle),
        Refusal::UntrustedKey,
        "other.pub",
    );
    refused(
        bundle_check(&keyless(root("main")), &bundle),
        Refusal::SignatureInvalid,
        "signed by a key",
    );
}

// ---- identity ----

#[test]
fn another_subject_or_issuer_is_an_identity_mismatch_naming_what_was_signed() {
    let sig = classic("main");
    let r = root("main");
    let wrong_subject = ids(ISSUER, "^https://github.com/falcosecurity/");
    let e = verify_classic(&wrong_subject, &r, &digest(), &sig).expect_err("subject");
    assert_eq!(e.refusal, Refusal::IdentityMismatch);
    assert!(
        e.message.contains(ISSUER) && e.message.contains(SUBJECT),
        "{}",
        e.message
    );
    let wrong_issuer = ids("^https://accounts.google.com$", ".*");
    refused(
        verify_classic(&wrong_issuer, &r, &digest(), &sig),
        Refusal::IdentityMismatch,
        SUBJECT,
    );
    // Issuer of one entry and subject of another do not combine.
    let mut split = ids(ISSUER, "^nobody$");
    split.extend(ids("^nobody$", SUBJECT));
    refused(
        verify_classic(&split, &r, &digest(), &sig),
        Refusal::IdentityMismatch,
        ISSUER,
    );
    let policy = Policy::Keyless {
        identities: wrong_subject,
        root: r,
    };
    refused(
        bundle_check(&policy, &json_of("main/bundle-v03.json")),
        Refusal::IdentityMismatch,
        SUBJECT,
    );
}

#[test]
fn a_legacy_issuer_unlike_the_v2_issuer_is_a_forged_certificate() {
    let r = root("legacy-issuer");
    refused(
        verify_classic(&accepted(), &r, &digest(), &classic("legacy-issuer")),
        Refusal::SignatureInvalid,
        "two OIDC issuers",
    );
    refused(
        bundle_check(&keyless(r), &json_of("legacy-issuer/bundle-v03.json")),
        Refusal::SignatureInvalid,
        "two OIDC issuers",
    );
}

// ---- certificate path ----

/// `main`'s root with another run's CA (or CT logs): the logs still vouch for the entries.
fn root_with(field: &str, from: &str) -> Arc<TrustedRoot> {
    let mut v = root_json("main");
    v[field] = root_json(from)[field].clone();
    root_of(&v)
}

#[test]
fn a_certificate_from_another_ca_does_not_verify() {
    let r = root_with("certificateAuthorities", "other-ca");
    refused(
        verify_classic(&accepted(), &r, &digest(), &classic("main")),
        Refusal::SignatureInvalid,
        "does not chain",
    );
    refused(
        bundle_check(&keyless(r), &json_of("main/bundle-v03.json")),
        Refusal::SignatureInvalid,
        "does not chain",
    );
    // Another run's whole signature: its log is not trusted either.
    refused(
        verify_classic(&accepted(), &root("main"), &digest(), &classic("other-ca")),
        Refusal::SignatureInvalid,
        "not a log of the trusted root",
    );
}

#[test]
fn a_forged_chain_annotation_or_a_self_signed_leaf_does_not_verify() {
    let r = root_with("certificateAuthorities", "other-ca");
    let mut sig = classic("main");
    // The real issuer offered as an (untrusted) intermediate towards the trusted CA.
    sig.chain = classic("main").chain.map(|c| c.repeat(2));
    refused(
        verify_classic(&accepted(), &r, &digest(), &sig),
        Refusal::SignatureInvalid,
        "does not chain",
    );
    let mut selfsigned = classic("main");
    selfsigned.certificate = classic("main").chain;
    refused(
        verify_classic(&accepted(), &root("main"), &digest(), &selfsigned),
        Refusal::SignatureInvalid,
        "names no OIDC issuer",
    );
    let mut long = classic("main");
    long.chain = classic("main").chain.map(|c| c.repeat(cert::MAX_CHAIN + 1));
    refused(
        verify_classic(&accepted(), &root("main"), &digest(), &long),
        Refusal::SignatureInvalid,
        "more than",
    );
}

#[test]
fn an_sct_from_a_ct_log_outside_the_root_does_not_verify() {
    let r = root_with("ctlogs", "other-ca");
    refused(
        verify_classic(&accepted(), &r, &digest(), &classic("main")),
        Refusal::SignatureInvalid,
        "SCT",
    );
    // The right log id with another key: the SCT's signature is checked.
    let mut v = root_json("main");
    v["ctlogs"][0]["publicKey"] = root_json("other-ca")["ctlogs"][0]["publicKey"].clone();
    refused(
        verify_classic(&accepted(), &root_of(&v), &digest(), &classic("main")),
        Refusal::SignatureInvalid,
        "signature of CT log",
    );
    // Without CT logs in the root, no SCT is required.
    let mut v = root_json("main");
    v["ctlogs"] = json!([]);
    assert!(verify_classic(&accepted(), &root_of(&v), &digest(), &classic("main")).is_ok());
}

#[test]
fn a_certificate_expired_when_logged_does_not_verify() {
    let r = root("late-log");
    refused(
        verify_classic(&accepted(), &r, &digest(), &classic("late-log")),
        Refusal::SignatureInvalid,
        "Expired",
    );
    refused(
        bundle_check(&keyless(r), &json_of("late-log/bundle-v03.json")),
        Refusal::SignatureInvalid,
        "Expired",
    );
}

#[test]
fn a_ca_outside_its_valid_for_period_does_not_verify() {
    for field in ["start", "end"] {
        let mut v = root_json("main");
        let when = if field == "start" {
            "2999-01-01T00:00:00Z"
        } else {
            "2000-01-01T00:00:00Z"
        };
        v["certificateAuthorities"][0]["validFor"][field] = json!(when);
        refused(
            verify_classic(&accepted(), &root_of(&v), &digest(), &classic("main")),
            Refusal::SignatureInvalid,
            "no certificate authority of the trusted root is valid then",
        );
    }
}

// ---- transparency log ----

fn rekor_bundle(sig: &ClassicSignature) -> Value {
    serde_json::from_str(sig.rekor_bundle.as_deref().expect("annotation")).expect("json")
}

#[test]
fn a_set_flipped_by_one_byte_does_not_verify() {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut sig = classic("main");
    let mut b = rekor_bundle(&sig);
    let mut set = engine
        .decode(b["SignedEntryTimestamp"].as_str().expect("set"))
        .expect("b64");
    let last = set.len() - 1;
    set[last] ^= 1;
    b["SignedEntryTimestamp"] = json!(engine.encode(&set));
    sig.rekor_bundle = Some(b.to_string());
    refused(
        verify_classic(&accepted(), &root("main"), &digest(), &sig),
        Refusal::SignatureInvalid,
        "signed entry timestamp does not verify",
    );
    let mut bundle = json_of("main/bundle-v03.json");
    let entry = &mut bundle["verificationMaterial"]["tlogEntries"][0];
    entry["integratedTime"] = json!(
        (entry["integratedTime"]
            .as_str()
            .expect("time")
            .parse::<i64>()
            .expect("int")
            - 1)
        .to_string()
    );
    refused(
        bundle_check(&keyless(root("main")), &bundle),
        Refusal::SignatureInvalid,
        "signed entry timestamp does not verify",
    );
}

#[test]
fn another_entrys_body_with_its_valid_set_does_not_verify() {
    // CVE-2022-36056: the entry of the v0.2 bundle (same log, valid SET) under the classic
    // signature.
    let v02 = json_of("main/bundle-v02.json");
    let e = &v02["verificationMaterial"]["tlogEntries"][0];
    let b64 = e["logId"]["keyId"].as_str().expect("key id");
    let log_id = hex::encode(super::super::decode_b64(b64).expect("b64"));
    let swapped = json!({
        "SignedEntryTimestamp": e["inclusionPromise"]["signedEntryTimestamp"],
        "Payload": {
            "body": e["canonicalizedBody"],
            "integratedTime": e["integratedTime"].as_str().expect("t").parse::<i64>().expect("int"),
            "logIndex": e["logIndex"].as_str().expect("i").parse::<i64>().expect("int"),
            "logID": log_id,
        },
    });
    let mut sig = classic("main");
    sig.rekor_bundle = Some(swapped.to_string());
    refused(
        verify_classic(&accepted(), &root("main"), &digest(), &sig),
        Refusal::SignatureInvalid,
        "is for another signature",
    );
    // A DSSE bundle carrying the message signature's entry: another kind of content.
    let mut v03 = json_of("main/bundle-v03.json");
    v03["verificationMaterial"]["tlogEntries"] = v02["verificationMaterial"]["tlogEntries"].clone();
    refused(
        bundle_check(&keyless(root("main")), &v03),
        Refusal::SignatureInvalid,
        "not supported for this signature",
    );
}

fn with_proof(edit: impl Fn(&mut Value)) -> Result<Verified, Failed> {
    let mut b = json_of("main/bundle-v03.json");
    edit(&mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]);
    bundle_check(&keyless(root("main")), &b)
}

#[test]
fn a_bad_inclusion_proof_or_checkpoint_does_not_verify() {
    let zero = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    refused(
        with_proof(|p| p["rootHash"] = json!(zero)),
        Refusal::SignatureInvalid,
        "inclusion proof",
    );
    refused(
        with_proof(|p| p["hashes"] = json!([zero])),
        Refusal::SignatureInvalid,
        "inclusion proof",
    );
    refused(
        with_proof(|p| p["treeSize"] = json!("2")),
        Refusal::SignatureInvalid,
        "inclusion proof",
    );
    refused(
        with_proof(|p| {
            let cp = p["checkpoint"]["envelope"]
                .as_str()
                .expect("cp")
                .to_string();
            p["checkpoint"]["envelope"] = json!(cp.replacen("\n1\n", "\n2\n", 1));
        }),
        Refusal::SignatureInvalid,
        "checkpoint is not signed by the log",
    );
    refused(
        with_proof(|p| {
            let cp = p["checkpoint"]["envelope"]
                .as_str()
                .expect("cp")
                .to_string();
            p["checkpoint"]["envelope"] = json!(cp.split("\n\n").next().expect("note"));
        }),
        Refusal::SignatureInvalid,
        "checkpoint has no signature",
    );
    refused(
        with_proof(|p| *p = Value::Null),
        Refusal::SignatureInvalid,
        "no inclusion proof",
    );
    let many: Vec<&str> = vec![zero; rekor::MAX_PROOF_HASHES + 1];
    refused(
        with_proof(|p| p["hashes"] = json!(many)),
        Refusal::SignatureInvalid,
        "too long",
    );
}

#[test]
fn rekor_v2_entries_without_a_set_are_refused_as_unsupported() {
    let mut b = json_of("main/bundle-v03.json");
    let entry = &mut b["verificationMaterial"]["tlogEntries"][0];
    entry
        .as_object_mut()
        .expect("entry")
        .remove("inclusionPromise");
    entry["kindVersion"] = json!({"kind": "dsse", "version": "0.0.2"});
    refused(
        bundle_check(&keyless(root("main")), &b),
        Refusal::SignatureInvalid,
        "Rekor v2 entries need a signed timestamp",
    );
}

#[test]
fn too_many_log_entries_are_refused_before_any_check() {
    let mut b = json_of("main/bundle-v03.json");
    let entry = b["verificationMaterial"]["tlogEntries"][0].clone();
    b["verificationMaterial"]["tlogEntries"] = json!(vec![entry; bundle::MAX_TLOG_ENTRIES + 1]);
    refused(
        bundle_check(&keyless(root("main")), &b),
        Refusal::SignatureInvalid,
        "at most",
    );
}

// ---- what is signed ----

#[test]
fn a_signature_for_another_digest_does_not_verify() {
    let other = Digest::of(b"another manifest");
    refused(
        verify_classic(&accepted(), &root("main"), &other, &classic("main")),
        Refusal::SignatureInvalid,
        "not for",
    );
    let policy = keyless(root("main"));
    let v03 = read("main/bundle-v03.json");
    refused(
        verify_bundle(&policy, &other, b"another manifest", &v03),
        Refusal::SignatureInvalid,
        "do not include",
    );
    let v02 = read("main/bundle-v02.json");
    refused(
        verify_bundle(&policy, &other, b"another manifest", &v02),
        Refusal::SignatureInvalid,
        "not over the manifest",
    );
}

#[test]
fn a_statement_with_another_predicate_is_not_a_signature() {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut b = json_of("main/bundle-v03.json");
    let payload = engine
        .decode(b["dsseEnvelope"]["payload"].as_str().expect("payload"))
        .expect("b64");
    let text = String::from_utf8(payload).expect("utf8");
    let sbom = text.replace(dsse::COSIGN_SIGN, "https://spdx.dev/Document");
    b["dsseEnvelope"]["payload"] = json!(engine.encode(sbom));
    refused(
        bundle_check(&keyless(root("main")), &b),
        Refusal::SignatureInvalid,
        "not a signature",
    );
    // A key-mode bundle signed with that predicate is refused too, before any key.
    let public = PublicKey::from_pem("cosign.pub", P256_PUB.as_bytes()).expect("pub");
    refused(
        bundle_check(
            &Policy::Keys(vec![public]),
            &key_bundle("https://slsa.dev/provenance/v1"),
        ),
        Refusal::SignatureInvalid,
        "not a signature",
    );
}

#[test]
fn a_tampered_signature_or_payload_does_not_verify() {
    let mut sig = classic("main");
    sig.signature = classic("other-ca").signature;
    refused(
        verify_classic(&accepted(), &root("main"), &digest(), &sig),
        Refusal::SignatureInvalid,
        "does not verify under its certificate",
    );
    let mut b = json_of("main/bundle-v03.json");
    b["dsseEnvelope"]["signatures"][0]["sig"] =
        json_of("other-ca/bundle-v03.json")["dsseEnvelope"]["signatures"][0]["sig"].clone();
    refused(
        bundle_check(&keyless(root("main")), &b),
        Refusal::SignatureInvalid,
        "does not verify",
    );
    refused(
        bundle_check(
            &keyless(root("main")),
            &json!({"mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1"}),
        ),
        Refusal::SignatureInvalid,
        "",
    );
}

#[test]
fn the_fixture_roots_parse() {
    let r = root("main");
    assert_eq!(r.certificate_authorities().len(), 1);
    assert_eq!(r.tlogs().len(), 1);
    assert_eq!(r.ctlogs().len(), 1);
}

/// A measurement, not a check: e2e/bench/verify.sh runs it in release mode for
/// bench/RESULTS.md (`cargo test --release --lib verification_time -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement (make bench runs it), not a pass/fail test"]
fn verification_time() {
    let policy = keyless(root("main"));
    let (m, d) = (manifest(), digest());
    for name in ["bundle-v03.json", "bundle-v02.json"] {
        let json = read(&format!("main/{name}"));
        let start = std::time::Instant::now();
        for _ in 0..100 {
            verify_bundle(&policy, &d, &m, &json).expect("ok");
        }
        println!("BENCH {name}: {:?} per verification", start.elapsed() / 100);
    }
    let sig = classic("main");
    let start = std::time::Instant::now();
    for _ in 0..100 {
        verify_classic(&accepted(), &root("main"), &d, &sig).expect("ok");
    }
    println!(
        "BENCH classic (with root parse): {:?}",
        start.elapsed() / 100
    );
}

/// dsse 0.0.1 (what real Rekor v1 logs for DSSE; the mock logs intoto 0.0.2): a body
/// written by hand from the v0.3 fixture's envelope and certificate.
#[test]
fn a_dsse_0_0_1_body_must_record_the_signature_certificate_and_payload() {
    use base64::Engine;
    use sha2::{Digest as _, Sha256};
    let engine = base64::engine::general_purpose::STANDARD;
    let b = json_of("main/bundle-v03.json");
    let de = |v: &Value| engine.decode(v.as_str().expect("text")).expect("b64");
    let leaf = de(&b["verificationMaterial"]["certificate"]["rawBytes"]);
    let payload = de(&b["dsseEnvelope"]["payload"]);
    let sig = de(&b["dsseEnvelope"]["signatures"][0]["sig"]);
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        engine.encode(&leaf)
    );
    let body = |sig: &[u8], payload: &[u8]| {
        json!({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": "00"},
            "payloadHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(payload))},
            "signatures": [{"signature": engine.encode(sig), "verifier": engine.encode(&pem)}],
        }})
        .to_string()
        .into_bytes()
    };
    let signed = Signed {
        signature: &sig,
        certificate: &leaf,
        content: rekor::Content::Envelope {
            payload: &payload,
            payload_type: dsse::IN_TOTO,
        },
    };
    assert_eq!(rekor::check_body(&body(&sig, &payload), &signed), Ok(()));
    let e = rekor::check_body(&body(b"another signature", &payload), &signed).expect_err("sig");
    assert!(e.message.contains("for another signature"), "{}", e.message);
    assert!(rekor::check_body(&body(&sig, b"another payload"), &signed).is_err());
}

/// Rekor signs the checkpoints of all its trees with one key: a checkpoint whose origin is
/// not this log's is another tree's, whatever its signature.
#[test]
fn a_checkpoint_from_another_log_than_the_roots_is_refused() {
    let mut moved = root_json("main");
    moved["tlogs"][0]["baseUrl"] = "https://rekor.other.example".into();
    let policy = keyless(root_of(&moved));
    let json = read("main/bundle-v03.json");
    let e = verify_bundle(&policy, &digest(), &manifest(), &json).expect_err("other origin");
    assert_eq!(e.refusal, Refusal::SignatureInvalid);
    assert!(e.message.contains("origin"), "{}", e.message);
    // the classic layer carries no checkpoint: the SET alone binds it, as cosign checks it
    assert!(verify_classic(&accepted(), &root_of(&moved), &digest(), &classic("main")).is_ok());
}
