//! The Sigstore trusted root (`trusted_root.json`, protobuf JSON of
//! `dev.sigstore.trustroot.v1.TrustedRoot`): the Fulcio CAs, the Rekor logs and the CT logs a
//! keyless signature is checked against, each with the period it may be used for.
//!
//! The public instance's root ships with ocisync (`public_trusted_root.json`). It is the
//! TUF-distributed `trusted_root.json` embedded in npm `@sigstore/tuf@4.0.2`'s `seeds.json`
//! (`["https://tuf-repo-cdn.sigstore.dev"].targets["trusted_root.json"]`, base64). Refresh:
//!
//! ```text
//! npm pack @sigstore/tuf@<version> && tar xzf sigstore-tuf-*.tgz && node -e '
//!   const s = require("./package/seeds.json");
//!   const t = s["https://tuf-repo-cdn.sigstore.dev"].targets["trusted_root.json"];
//!   process.stdout.write(Buffer.from(t, "base64"))' > src/verify/public_trusted_root.json
//! ```
//!
//! ocisync does not follow TUF updates itself: a newer root is set per source
//! (`trustedRootRef`).

use serde::Deserialize;
use x509_cert::Certificate;
use x509_cert::der::Decode;

use super::keys::PublicKey;

const PUBLIC: &[u8] = include_bytes!("public_trusted_root.json");

/// Bounds on what a trusted root may hold.
pub const MAX_ROOT: usize = 1024 * 1024;
const MAX_ENTRIES: usize = 64;
const MAX_CHAIN: usize = 8;

/// A period in Unix seconds; no end means still valid. Both ends inclusive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Validity {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl Validity {
    pub fn contains(&self, t: i64) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }
}

/// A Fulcio CA: its chain (DER; intermediates first, the self-signed root last).
#[derive(Clone, Debug)]
pub struct CertificateAuthority {
    pub uri: String,
    pub chain: Vec<Vec<u8>>,
    pub valid: Validity,
}

impl CertificateAuthority {
    /// The trust anchor: the last certificate of the chain.
    pub fn anchor(&self) -> &[u8] {
        self.chain.last().map(Vec::as_slice).unwrap_or_default()
    }

    /// The certificates between a leaf and the anchor.
    pub fn intermediates(&self) -> &[Vec<u8>] {
        &self.chain[..self.chain.len().saturating_sub(1)]
    }
}

/// A transparency log (Rekor) or certificate transparency log key.
#[derive(Clone, Debug)]
pub struct LogKey {
    pub base_url: String,
    /// `logId.keyId`: SHA-256 of the key's SPKI for ECDSA logs.
    pub key_id: Vec<u8>,
    /// None when the key's algorithm is not one ocisync verifies (unusable, not an error).
    pub key: Option<PublicKey>,
    pub valid: Validity,
}

#[derive(Clone, Debug)]
pub struct TrustedRoot {
    cas: Vec<CertificateAuthority>,
    tlogs: Vec<LogKey>,
    ctlogs: Vec<LogKey>,
}

impl TrustedRoot {
    /// Parses a `trusted_root.json`; the error says what is wrong (public data only).
    pub fn parse(json: &[u8]) -> Result<TrustedRoot, String> {
        if json.len() > MAX_ROOT {
            return Err(format!(
                "the trusted root is {} bytes, over the limit of {MAX_ROOT}",
                json.len()
            ));
        }
        let raw: RawRoot = serde_json::from_slice(json)
            .map_err(|e| format!("the trusted root is not a trusted_root.json: {e}"))?;
        if raw.certificate_authorities.is_empty() {
            return Err("the trusted root lists no certificate authority".into());
        }
        for (what, n) in [
            ("certificate authorities", raw.certificate_authorities.len()),
            ("tlogs", raw.tlogs.len()),
            ("ctlogs", raw.ctlogs.len()),
        ] {
            if n > MAX_ENTRIES {
                return Err(format!(
                    "the trusted root lists {n} {what}; at most {MAX_ENTRIES}"
                ));
            }
        }
        let cas = raw
            .certificate_authorities
            .into_iter()
            .enumerate()
            .map(|(i, ca)| ca.convert(i))
            .collect::<Result<_, _>>()?;
        let logs = |v: Vec<RawLog>, what: &str| -> Result<Vec<LogKey>, String> {
            v.into_iter()
                .enumerate()
                .map(|(i, l)| l.convert(&format!("{what}[{i}]")))
                .collect()
        };
        Ok(TrustedRoot {
            cas,
            tlogs: logs(raw.tlogs, "tlogs")?,
            ctlogs: logs(raw.ctlogs, "ctlogs")?,
        })
    }

    /// The public Sigstore instance's root, shipped with ocisync.
    pub fn public() -> Result<TrustedRoot, String> {
        Self::parse(PUBLIC)
    }

    pub fn certificate_authorities(&self) -> &[CertificateAuthority] {
        &self.cas
    }

    pub fn tlogs(&self) -> &[LogKey] {
        &self.tlogs
    }

    pub fn ctlogs(&self) -> &[LogKey] {
        &self.ctlogs
    }

    /// The Rekor log with this log id.
    pub fn tlog(&self, key_id: &[u8]) -> Option<&LogKey> {
        self.tlogs.iter().find(|l| l.key_id == key_id)
    }

    /// The CT log with this log id.
    pub fn ctlog(&self, key_id: &[u8]) -> Option<&LogKey> {
        self.ctlogs.iter().find(|l| l.key_id == key_id)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoot {
    #[serde(default)]
    tlogs: Vec<RawLog>,
    #[serde(default)]
    certificate_authorities: Vec<RawCa>,
    #[serde(default)]
    ctlogs: Vec<RawLog>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCa {
    #[serde(default)]
    uri: String,
    cert_chain: RawChain,
    #[serde(default)]
    valid_for: RawValidity,
}

#[derive(Deserialize)]
struct RawChain {
    #[serde(default)]
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Default, Deserialize)]
struct RawValidity {
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    #[serde(default)]
    base_url: String,
    public_key: RawKey,
    log_id: RawLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKey {
    #[serde(default)]
    raw_bytes: Option<String>,
    #[serde(default)]
    valid_for: RawValidity,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

impl RawCa {
    fn convert(self, i: usize) -> Result<CertificateAuthority, String> {
        let what = format!("certificateAuthorities[{i}] ({})", self.uri);
        let n = self.cert_chain.certificates.len();
        if n == 0 || n > MAX_CHAIN {
            return Err(format!(
                "{what} has {n} certificates; between 1 and {MAX_CHAIN}"
            ));
        }
        let mut chain = Vec::with_capacity(n);
        for (j, c) in self.cert_chain.certificates.iter().enumerate() {
            let der = super::decode_b64(&c.raw_bytes)
                .ok_or_else(|| format!("{what}: certificate {j} is not base64"))?;
            Certificate::from_der(&der)
                .map_err(|e| format!("{what}: certificate {j} is not a DER certificate: {e}"))?;
            chain.push(der);
        }
        Ok(CertificateAuthority {
            uri: self.uri,
            chain,
            valid: self.valid_for.convert(&what)?,
        })
    }
}

impl RawLog {
    fn convert(self, what: &str) -> Result<LogKey, String> {
        let what = format!("{what} ({})", self.base_url);
        let key_id = super::decode_b64(&self.log_id.key_id)
            .ok_or_else(|| format!("{what}: logId.keyId is not base64"))?;
        // a key in a form ocisync does not verify is unusable (entries signed by it fail),
        // but bytes that are not base64 make the file invalid
        let der = match self.public_key.raw_bytes.as_deref() {
            Some(b64) => Some(
                super::decode_b64(b64)
                    .ok_or_else(|| format!("{what}: publicKey.rawBytes is not base64"))?,
            ),
            None => None,
        };
        let key = der.and_then(|der| PublicKey::from_spki(&self.base_url, &der).ok());
        Ok(LogKey {
            valid: self.public_key.valid_for.convert(&what)?,
            base_url: self.base_url,
            key_id,
            key,
        })
    }
}

impl RawValidity {
    fn convert(&self, what: &str) -> Result<Validity, String> {
        let time = |s: &Option<String>| -> Result<Option<i64>, String> {
            s.as_deref()
                .map(|t| {
                    t.parse::<jiff::Timestamp>()
                        .map(|t| t.as_second())
                        .map_err(|e| format!("{what}: validFor time {t:?}: {e}"))
                })
                .transpose()
        };
        Ok(Validity {
            start: time(&self.start)?,
            end: time(&self.end)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::keys::Algorithm;

    #[test]
    fn the_public_root_parses_with_its_cas_and_logs() {
        let root = TrustedRoot::public().expect("public root");
        let cas = root.certificate_authorities();
        assert_eq!(cas.len(), 2);
        assert_eq!(cas[0].chain.len(), 1);
        assert_eq!(cas[1].chain.len(), 2, "intermediate and root");
        assert!(cas[0].valid.end.is_some() && cas[1].valid.end.is_none());
        let algs: Vec<_> = root
            .tlogs()
            .iter()
            .map(|l| l.key.as_ref().map(|k| k.algorithm()))
            .collect();
        assert!(algs.contains(&Some(Algorithm::EcdsaP256)), "{algs:?}");
        assert!(algs.contains(&Some(Algorithm::Ed25519)), "{algs:?}");
        assert_eq!(root.ctlogs().len(), 2);
        let rekor = &root.tlogs()[0];
        let key = rekor.key.as_ref().expect("rekor key");
        use sha2::Digest as _;
        assert_eq!(rekor.key_id, sha2::Sha256::digest(key.spki()).to_vec());
    }

    #[test]
    fn bad_roots_are_refused_with_what_is_wrong() {
        let e = TrustedRoot::parse(b"not json").expect_err("not JSON");
        assert!(e.contains("not a trusted_root.json"), "{e}");
        let e = TrustedRoot::parse(br#"{"tlogs":[]}"#).expect_err("no CA");
        assert!(e.contains("no certificate authority"), "{e}");
        let bad = r#"{"certificateAuthorities":[{"uri":"x","certChain":{"certificates":[{"rawBytes":"aGVsbG8="}]}}]}"#;
        let e = TrustedRoot::parse(bad.as_bytes()).expect_err("not DER");
        assert!(e.contains("not a DER certificate"), "{e}");
        // a log key that is not base64 makes the file invalid (not a silently unusable key)
        let mut root: serde_json::Value =
            serde_json::from_slice(include_bytes!("public_trusted_root.json")).expect("JSON");
        root["tlogs"][0]["publicKey"]["rawBytes"] = "!!".into();
        let text = serde_json::to_vec(&root).expect("JSON");
        let e = TrustedRoot::parse(&text).expect_err("bad base64");
        assert!(e.contains("rawBytes is not base64"), "{e}");
        let e = TrustedRoot::parse(&vec![b' '; MAX_ROOT + 1]).expect_err("too big");
        assert!(e.contains("over the limit"), "{e}");
    }

    #[test]
    fn validity_ends_are_inclusive_and_open_ends_are_unbounded() {
        let v = Validity {
            start: Some(10),
            end: Some(20),
        };
        assert!(v.contains(10) && v.contains(20) && !v.contains(9) && !v.contains(21));
        assert!(Validity::default().contains(i64::MIN));
    }
}
