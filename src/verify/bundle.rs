//! Sigstore bundles (protobuf JSON of `dev.sigstore.bundle.v1.Bundle`, v0.2 and v0.3):
//! bytes are base64, 64-bit integers are strings (numbers are read too), zero values may be
//! omitted. The signing certificate comes as a chain (v0.2) or a single certificate (v0.3);
//! key-mode bundles carry a public key hint instead.

use serde::{Deserialize, Deserializer};

use super::rekor::{Entry, Proof};
use super::{Failed, Format};

pub const MAX_BUNDLE: usize = 1024 * 1024;
pub const MAX_TLOG_ENTRIES: usize = 8;
const MAX_DSSE_SIGNATURES: usize = 1;

const V02: &str = "application/vnd.dev.sigstore.bundle+json;version=0.2";
const V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const V03_LEGACY: &str = "application/vnd.dev.sigstore.bundle+json;version=0.3";

/// A parsed bundle: its format, signing material, log entries and signed content.
pub struct Bundle {
    pub format: Format,
    pub material: Material,
    pub entries: Vec<Entry>,
    pub content: Content,
}

pub enum Material {
    /// The leaf certificate (DER) and any further certificates the bundle carries.
    Certificate { leaf: Vec<u8>, chain: Vec<Vec<u8>> },
    /// Key mode: a hint naming the key (not trusted; every trusted key is tried).
    PublicKey,
}

pub enum Content {
    Message {
        algorithm: String,
        digest: Vec<u8>,
        signature: Vec<u8>,
    },
    Envelope {
        payload: Vec<u8>,
        payload_type: String,
        signature: Vec<u8>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    media_type: String,
    verification_material: RawMaterial,
    #[serde(default)]
    message_signature: Option<RawMessage>,
    #[serde(default)]
    dsse_envelope: Option<RawEnvelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMaterial {
    #[serde(default)]
    x509_certificate_chain: Option<RawChain>,
    #[serde(default)]
    certificate: Option<RawCert>,
    #[serde(default)]
    public_key: Option<serde_json::Value>,
    #[serde(default)]
    tlog_entries: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawChain {
    #[serde(default)]
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCert {
    raw_bytes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    #[serde(default, deserialize_with = "int64")]
    log_index: i64,
    log_id: RawLogId,
    #[serde(default, deserialize_with = "int64")]
    integrated_time: i64,
    #[serde(default)]
    inclusion_promise: Option<RawPromise>,
    #[serde(default)]
    inclusion_proof: Option<RawProof>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPromise {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProof {
    #[serde(default, deserialize_with = "int64")]
    log_index: i64,
    root_hash: String,
    #[serde(default, deserialize_with = "int64")]
    tree_size: i64,
    #[serde(default)]
    hashes: Vec<String>,
    checkpoint: RawCheckpoint,
}

#[derive(Deserialize)]
struct RawCheckpoint {
    envelope: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMessage {
    message_digest: RawDigest,
    signature: String,
}

#[derive(Deserialize)]
struct RawDigest {
    #[serde(default)]
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    payload: String,
    payload_type: String,
    #[serde(default)]
    signatures: Vec<RawSignature>,
}

#[derive(Deserialize)]
struct RawSignature {
    sig: String,
}

/// Protobuf JSON writes int64 as a string; numbers are accepted too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Number(i64),
        Text(String),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn bytes(text: &str, what: &str) -> Result<Vec<u8>, Failed> {
    use base64::Engine;
    super::decode_b64(text)
        .or_else(|| {
            base64::engine::general_purpose::URL_SAFE
                .decode(text.trim())
                .ok()
        })
        .ok_or_else(|| Failed::invalid(format!("the bundle's {what} is not base64")))
}

impl Bundle {
    pub fn parse(json: &[u8]) -> Result<Bundle, Failed> {
        if json.len() > MAX_BUNDLE {
            return Err(Failed::invalid(format!(
                "the bundle is {} bytes, over the limit of {MAX_BUNDLE}",
                json.len()
            )));
        }
        let raw: Raw = serde_json::from_slice(json)
            .map_err(|e| Failed::invalid(format!("not a Sigstore bundle: {e}")))?;
        let format = match raw.media_type.as_str() {
            V02 => Format::BundleV02,
            V03 | V03_LEGACY => Format::BundleV03,
            other => {
                return Err(Failed::invalid(format!(
                    "bundle media type {other:?} is not supported (v0.2 and v0.3 are)"
                )));
            }
        };
        let m = raw.verification_material;
        if m.tlog_entries.len() > MAX_TLOG_ENTRIES {
            return Err(Failed::invalid(format!(
                "the bundle holds {} transparency log entries; at most {MAX_TLOG_ENTRIES}",
                m.tlog_entries.len()
            )));
        }
        let entries = m
            .tlog_entries
            .iter()
            .map(RawEntry::convert)
            .collect::<Result<_, _>>()?;
        let material = material(m.x509_certificate_chain, m.certificate, m.public_key)?;
        let content = content(raw.message_signature, raw.dsse_envelope)?;
        Ok(Bundle {
            format,
            material,
            entries,
            content,
        })
    }
}

fn material(
    chain: Option<RawChain>,
    cert: Option<RawCert>,
    key: Option<serde_json::Value>,
) -> Result<Material, Failed> {
    match (chain, cert, key) {
        (Some(chain), None, None) => {
            if chain.certificates.len() > super::cert::MAX_CHAIN {
                return Err(Failed::invalid(
                    "the bundle's certificate chain is too long",
                ));
            }
            let mut certs = chain
                .certificates
                .iter()
                .map(|c| bytes(&c.raw_bytes, "certificate"))
                .collect::<Result<Vec<_>, _>>()?;
            if certs.is_empty() {
                return Err(Failed::invalid("the bundle's certificate chain is empty"));
            }
            let leaf = certs.remove(0);
            Ok(Material::Certificate { leaf, chain: certs })
        }
        (None, Some(c), None) => Ok(Material::Certificate {
            leaf: bytes(&c.raw_bytes, "certificate")?,
            chain: Vec::new(),
        }),
        (None, None, Some(_)) => Ok(Material::PublicKey),
        _ => Err(Failed::invalid(
            "the bundle must carry exactly one of a certificate chain, a certificate or a \
             public key",
        )),
    }
}

fn content(message: Option<RawMessage>, envelope: Option<RawEnvelope>) -> Result<Content, Failed> {
    match (message, envelope) {
        (Some(m), None) => Ok(Content::Message {
            algorithm: m.message_digest.algorithm,
            digest: bytes(&m.message_digest.digest, "message digest")?,
            signature: bytes(&m.signature, "signature")?,
        }),
        (None, Some(e)) => {
            let [sig] = e.signatures.as_slice() else {
                return Err(Failed::invalid(format!(
                    "the DSSE envelope has {} signatures; exactly {MAX_DSSE_SIGNATURES} is read",
                    e.signatures.len()
                )));
            };
            Ok(Content::Envelope {
                payload: bytes(&e.payload, "DSSE payload")?,
                payload_type: e.payload_type,
                signature: bytes(&sig.sig, "DSSE signature")?,
            })
        }
        _ => Err(Failed::invalid(
            "the bundle must carry exactly one of a message signature or a DSSE envelope",
        )),
    }
}

impl RawEntry {
    fn convert(&self) -> Result<Entry, Failed> {
        let proof = match &self.inclusion_proof {
            Some(p) => {
                if p.hashes.len() > super::rekor::MAX_PROOF_HASHES {
                    return Err(Failed::invalid("the inclusion proof is too long"));
                }
                Some(Proof {
                    log_index: p.log_index,
                    tree_size: p.tree_size,
                    root_hash: bytes(&p.root_hash, "root hash")?,
                    hashes: p
                        .hashes
                        .iter()
                        .map(|h| bytes(h, "proof hash"))
                        .collect::<Result<_, _>>()?,
                    checkpoint: p.checkpoint.envelope.clone(),
                })
            }
            None => None,
        };
        Ok(Entry {
            body: bytes(&self.canonicalized_body, "entry body")?,
            integrated_time: self.integrated_time,
            log_index: self.log_index,
            log_id: bytes(&self.log_id.key_id, "log id")?,
            set: self
                .inclusion_promise
                .as_ref()
                .map(|p| bytes(&p.signed_entry_timestamp, "signed entry timestamp"))
                .transpose()?,
            proof,
        })
    }
}
