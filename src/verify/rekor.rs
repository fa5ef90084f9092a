//! Rekor (v1) transparency log entries, checked offline:
//!
//! - the signed entry timestamp (SET), Rekor's signature over the canonical JSON
//!   `{"body","integratedTime","logID","logIndex"}`: it makes `integratedTime` trusted;
//! - the RFC 6962 inclusion proof and the signed checkpoint (a signed note) it leads to;
//! - the body's consistency with what was verified (signature, certificate, content hash):
//!   without it any SET could be replayed for another signature (CVE-2022-36056).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::Failed;
use super::trust_root::{LogKey, TrustedRoot};

pub const MAX_PROOF_HASHES: usize = 64;
const MAX_CHECKPOINT: usize = 8 * 1024;
const MAX_BODY: usize = 512 * 1024;

/// A log entry as a bundle or cosign's classic annotation carries it.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// The canonicalized body (decoded).
    pub body: Vec<u8>,
    pub integrated_time: i64,
    /// The global log index (what the SET signs).
    pub log_index: i64,
    pub log_id: Vec<u8>,
    pub set: Option<Vec<u8>>,
    pub proof: Option<Proof>,
}

#[derive(Clone, Debug, Default)]
pub struct Proof {
    /// The index in the log's current tree (not the global index).
    pub log_index: i64,
    pub tree_size: i64,
    pub root_hash: Vec<u8>,
    pub hashes: Vec<Vec<u8>>,
    pub checkpoint: String,
}

/// What the verified signature is, for the body check.
pub struct Signed<'a> {
    pub signature: &'a [u8],
    /// The signing certificate (DER).
    pub certificate: &'a [u8],
    pub content: Content<'a>,
}

pub enum Content<'a> {
    /// A signature over a message with this SHA-256 (hashedrekord).
    Message { sha256: [u8; 32] },
    /// A DSSE envelope (intoto 0.0.2, dsse 0.0.1).
    Envelope {
        payload: &'a [u8],
        payload_type: &'a str,
    },
}

/// cosign's `dev.sigstore.cosign/bundle` annotation.
#[derive(Deserialize)]
struct Classic {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: ClassicPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClassicPayload {
    body: String,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

/// What the SET signs, in canonical (RFC 8785) order: keys sorted, no spaces. The values
/// are ASCII strings and integers, so serde_json's output is canonical.
#[derive(Serialize)]
struct SetPayload<'a> {
    body: &'a str,
    #[serde(rename = "integratedTime")]
    integrated_time: i64,
    #[serde(rename = "logID")]
    log_id: &'a str,
    #[serde(rename = "logIndex")]
    log_index: i64,
}

impl Entry {
    /// Reads cosign's classic Rekor bundle annotation.
    pub fn from_classic(json: &str) -> Result<Entry, Failed> {
        let c: Classic = serde_json::from_str(json)
            .map_err(|e| Failed::invalid(format!("the Rekor bundle annotation: {e}")))?;
        let bad = |what: &str| Failed::invalid(format!("the Rekor bundle's {what} is malformed"));
        Ok(Entry {
            body: super::decode_b64(&c.payload.body).ok_or_else(|| bad("body"))?,
            integrated_time: c.payload.integrated_time,
            log_index: c.payload.log_index,
            log_id: hex::decode(&c.payload.log_id).map_err(|_| bad("logID"))?,
            set: Some(super::decode_b64(&c.set).ok_or_else(|| bad("SET"))?),
            proof: None,
        })
    }
}

/// Verifies the entry's SET (and its inclusion proof and checkpoint when present) against
/// a log of `root`. Returns the integrated time, now trusted.
pub fn verify_entry(root: &TrustedRoot, entry: &Entry) -> Result<i64, Failed> {
    let log = root.tlog(&entry.log_id).ok_or_else(|| {
        Failed::invalid(format!(
            "the transparency log entry is from log {}, not a log of the trusted root",
            hex::encode(&entry.log_id)
        ))
    })?;
    let key = log
        .key
        .as_ref()
        .ok_or_else(|| Failed::invalid(format!("the key of log {} is not usable", log.base_url)))?;
    let Some(set) = &entry.set else {
        return Err(Failed::invalid(
            "the transparency log entry carries no signed entry timestamp: Rekor v2 entries \
             need a signed timestamp (RFC 3161), which is not supported",
        ));
    };
    if !log.valid.contains(entry.integrated_time) {
        return Err(Failed::invalid(format!(
            "log {} was not valid at the entry's integrated time {}",
            log.base_url, entry.integrated_time
        )));
    }
    if entry.body.len() > MAX_BODY {
        return Err(Failed::invalid(
            "the transparency log entry body is too large",
        ));
    }
    let body = base64_std(&entry.body);
    let log_id = hex::encode(&entry.log_id);
    let signed = serde_json::to_vec(&SetPayload {
        body: &body,
        integrated_time: entry.integrated_time,
        log_id: &log_id,
        log_index: entry.log_index,
    })
    .map_err(|e| Failed::invalid(format!("SET payload: {e}")))?;
    if !key.verifies(&signed, set) {
        return Err(Failed::invalid(format!(
            "the signed entry timestamp does not verify under log {}",
            log.base_url
        )));
    }
    if let Some(proof) = &entry.proof {
        verify_inclusion(proof, &entry.body)?;
        verify_checkpoint(log, proof)?;
    }
    Ok(entry.integrated_time)
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn node(left: &[u8], right: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

pub fn leaf_hash(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

/// The root an RFC 6962 inclusion proof leads to (RFC 9162 §2.1.3.2), or None when the
/// proof does not fit the tree.
pub fn root_from_proof(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    path: &[Vec<u8>],
) -> Option<[u8; 32]> {
    if index >= size {
        return None;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in path {
        if s == 0 || p.len() != 32 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

fn verify_inclusion(proof: &Proof, body: &[u8]) -> Result<(), Failed> {
    if proof.hashes.len() > MAX_PROOF_HASHES {
        return Err(Failed::invalid("the inclusion proof is too long"));
    }
    let (Ok(index), Ok(size)) = (
        u64::try_from(proof.log_index),
        u64::try_from(proof.tree_size),
    ) else {
        return Err(Failed::invalid(
            "the inclusion proof has a negative index or size",
        ));
    };
    match root_from_proof(index, size, leaf_hash(body), &proof.hashes) {
        Some(root) if root.as_slice() == proof.root_hash => Ok(()),
        _ => Err(Failed::invalid(
            "the inclusion proof does not lead to the proof's root hash",
        )),
    }
}

/// Checks the checkpoint (a signed note: origin, tree size, base64 root hash, optional
/// lines, a blank line, then `— <name> <base64(key hint ‖ signature)>` lines): signed by
/// the log, for the proof's tree size and root hash.
fn verify_checkpoint(log: &LogKey, proof: &Proof) -> Result<(), Failed> {
    let bad = |why: &str| Failed::invalid(format!("the checkpoint {why}"));
    let text = &proof.checkpoint;
    if text.len() > MAX_CHECKPOINT {
        return Err(bad("is too large"));
    }
    let split = text.find("\n\n").ok_or_else(|| bad("has no signature"))?;
    let (note, signatures) = (&text[..split + 1], &text[split + 2..]);
    let key = log
        .key
        .as_ref()
        .ok_or_else(|| bad("log key is not usable"))?;
    let hint = log
        .key_id
        .get(..4)
        .ok_or_else(|| bad("log id is too short"))?;
    let signed = signatures.lines().any(|line| {
        let Some(rest) = line.strip_prefix("\u{2014} ") else {
            return false;
        };
        let Some(sig) = rest.rsplit(' ').next().and_then(super::decode_b64) else {
            return false;
        };
        sig.len() > 4 && &sig[..4] == hint && key.verifies(note.as_bytes(), &sig[4..])
    });
    if !signed {
        return Err(bad("is not signed by the log"));
    }
    let mut lines = note.lines();
    let origin = lines.next().unwrap_or_default();
    if !is_origin_of(origin, &log.base_url) {
        return Err(bad(&format!(
            "origin {origin:?} is not the log {} (another log's tree)",
            log.base_url
        )));
    }
    let size = lines.next().and_then(|s| s.parse::<i64>().ok());
    let root = lines.next().and_then(super::decode_b64);
    if size != Some(proof.tree_size) || root.as_deref() != Some(proof.root_hash.as_slice()) {
        return Err(bad("names another tree size or root hash than the proof"));
    }
    Ok(())
}

/// Whether a checkpoint's origin line names the log at `base_url`: Rekor writes
/// `<host> - <tree id>` (one per shard, all signed by the same key).
fn is_origin_of(origin: &str, base_url: &str) -> bool {
    let host = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    !host.is_empty()
        && origin
            .strip_prefix(host)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(" - "))
}

/// Checks that the entry body records this signature, certificate and content.
pub fn check_body(body: &[u8], signed: &Signed<'_>) -> Result<(), Failed> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Failed::invalid(format!("the transparency log entry body: {e}")))?;
    let kind = v["kind"].as_str().unwrap_or_default();
    let version = v["apiVersion"].as_str().unwrap_or_default();
    let ok = match (kind, version, &signed.content) {
        ("hashedrekord", "0.0.1", Content::Message { sha256 }) => hashedrekord(&v, signed, sha256),
        (
            "intoto",
            "0.0.2",
            Content::Envelope {
                payload,
                payload_type,
            },
        ) => intoto(&v, signed, payload, payload_type),
        ("dsse", "0.0.1", Content::Envelope { payload, .. }) => dsse(&v, signed, payload),
        _ => {
            return Err(Failed::invalid(format!(
                "transparency log entries of kind {kind} {version} are not supported for this \
                 signature"
            )));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Failed::invalid(format!(
            "the transparency log entry ({kind} {version}) is for another signature, key or \
             content"
        )))
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn b64(v: &Value, pointer: &str) -> Option<Vec<u8>> {
    super::decode_b64(v.pointer(pointer)?.as_str()?)
}

fn same_certificate(pem_b64: Option<Vec<u8>>, der: &[u8]) -> bool {
    pem_b64
        .and_then(|pem| CertificateDer::from_pem_slice(&pem).ok())
        .is_some_and(|c| c.as_ref() == der)
}

fn sha256_is(v: &Value, pointer: &str, expected: &[u8]) -> bool {
    text(v, &format!("{pointer}/algorithm")) == "sha256"
        && text(v, &format!("{pointer}/value")) == hex::encode(expected)
}

fn hashedrekord(v: &Value, s: &Signed<'_>, sha256: &[u8; 32]) -> bool {
    b64(v, "/spec/signature/content").as_deref() == Some(s.signature)
        && same_certificate(b64(v, "/spec/signature/publicKey/content"), s.certificate)
        && sha256_is(v, "/spec/data/hash", sha256)
}

/// intoto 0.0.2 stores the envelope with its payload and signatures base64-encoded twice.
fn intoto(v: &Value, s: &Signed<'_>, payload: &[u8], payload_type: &str) -> bool {
    let payload_hash = Sha256::digest(payload);
    let sigs = v
        .pointer("/spec/content/envelope/signatures")
        .and_then(Value::as_array);
    sha256_is(v, "/spec/content/payloadHash", &payload_hash)
        && text(v, "/spec/content/envelope/payloadType") == payload_type
        && sigs.is_some_and(|sigs| {
            sigs.iter().any(|sig| {
                let once = b64(sig, "/sig");
                let twice = once
                    .and_then(|t| String::from_utf8(t).ok())
                    .and_then(|t| super::decode_b64(&t));
                twice.as_deref() == Some(s.signature)
                    && same_certificate(b64(sig, "/publicKey"), s.certificate)
            })
        })
}

fn dsse(v: &Value, s: &Signed<'_>, payload: &[u8]) -> bool {
    let sigs = v.pointer("/spec/signatures").and_then(Value::as_array);
    sha256_is(v, "/spec/payloadHash", &Sha256::digest(payload))
        && sigs.is_some_and(|sigs| {
            sigs.iter().any(|sig| {
                b64(sig, "/signature").as_deref() == Some(s.signature)
                    && same_certificate(b64(sig, "/verifier"), s.certificate)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_hash(leaves: &[[u8; 32]]) -> [u8; 32] {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = leaves.len().next_power_of_two() / 2;
        node(&tree_hash(&leaves[..k]), &tree_hash(&leaves[k..]))
    }

    fn path(index: usize, leaves: &[[u8; 32]]) -> Vec<Vec<u8>> {
        if leaves.len() == 1 {
            return Vec::new();
        }
        let k = leaves.len().next_power_of_two() / 2;
        if index < k {
            let mut p = path(index, &leaves[..k]);
            p.push(tree_hash(&leaves[k..]).to_vec());
            p
        } else {
            let mut p = path(index - k, &leaves[k..]);
            p.push(tree_hash(&leaves[..k]).to_vec());
            p
        }
    }

    #[test]
    fn inclusion_proofs_lead_to_the_root_for_every_leaf_of_trees_up_to_nine() {
        for size in 1..=9usize {
            let leaves: Vec<[u8; 32]> = (0..size).map(|i| leaf_hash(&[i as u8])).collect();
            let root = tree_hash(&leaves);
            for i in 0..size {
                let p = path(i, &leaves);
                let got = root_from_proof(i as u64, size as u64, leaves[i], &p);
                assert_eq!(got, Some(root), "size {size} index {i}");
                let wrong = root_from_proof(i as u64, size as u64, leaf_hash(b"x"), &p);
                assert_ne!(wrong, Some(root));
                if size > 1 {
                    let short = root_from_proof(i as u64, size as u64, leaves[i], &p[1..]);
                    assert_ne!(short, Some(root), "size {size} index {i}");
                }
            }
            assert_eq!(
                root_from_proof(size as u64, size as u64, leaves[0], &[]),
                None
            );
        }
    }

    #[test]
    fn the_set_payload_is_canonical_json() {
        let p = SetPayload {
            body: "Ym9keQ==",
            integrated_time: 5,
            log_id: "ab",
            log_index: 7,
        };
        assert_eq!(
            serde_json::to_string(&p).expect("json"),
            r#"{"body":"Ym9keQ==","integratedTime":5,"logID":"ab","logIndex":7}"#
        );
    }
}

#[cfg(test)]
mod origin_tests {
    use super::is_origin_of;

    #[test]
    fn a_checkpoint_origin_names_the_logs_host() {
        let rekor = "https://rekor.sigstore.dev";
        assert!(is_origin_of(
            "rekor.sigstore.dev - 1193050959916656506",
            rekor
        ));
        assert!(is_origin_of(
            "127.0.0.1:4000 - 42",
            "http://127.0.0.1:4000/"
        ));
        assert!(!is_origin_of("rekor.sigstore.dev.evil - 1", rekor));
        assert!(!is_origin_of("evil.example - 1", rekor));
        assert!(!is_origin_of("", rekor));
        assert!(!is_origin_of("x - 1", ""));
    }
}
