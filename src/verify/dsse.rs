//! DSSE envelopes as cosign v3 signs images: the payload is an in-toto Statement v1 whose
//! subject holds the manifest digest and whose predicate type is cosign's sign predicate.
//! Other predicates (SBOMs, provenance) are attestations, not signatures, and are refused.

use serde::Deserialize;

use super::Failed;
use crate::digest::Digest;

pub const IN_TOTO: &str = "application/vnd.in-toto+json";
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
pub const COSIGN_SIGN: &str = "https://sigstore.dev/cosign/sign/v1";
const MAX_SUBJECTS: usize = 64;

/// DSSE's pre-authentication encoding, what the signature covers:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(default)]
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// Checks that an envelope's payload is cosign's signature statement for `digest`.
pub fn check_statement(payload_type: &str, payload: &[u8], digest: &Digest) -> Result<(), Failed> {
    if payload_type != IN_TOTO {
        return Err(Failed::invalid(format!(
            "the DSSE payload type is {payload_type:?}, not {IN_TOTO:?}"
        )));
    }
    let s: Statement = serde_json::from_slice(payload).map_err(|e| {
        Failed::invalid(format!("the DSSE payload is not an in-toto statement: {e}"))
    })?;
    if s.kind != STATEMENT_V1 {
        return Err(Failed::invalid(format!(
            "the statement type is {:?}, not {STATEMENT_V1:?}",
            s.kind
        )));
    }
    if s.predicate_type != COSIGN_SIGN {
        return Err(Failed::invalid(format!(
            "the statement's predicate is {:?}, not cosign's signature ({COSIGN_SIGN}): an \
             attestation is not a signature",
            s.predicate_type
        )));
    }
    if s.subject.len() > MAX_SUBJECTS {
        return Err(Failed::invalid("the statement has too many subjects"));
    }
    let names_digest = s
        .subject
        .iter()
        .any(|sub| sub.digest.get("sha256").is_some_and(|h| h == digest.hex()));
    if !names_digest {
        return Err(Failed::invalid(format!(
            "the statement's subjects do not include {digest}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Refusal;

    fn statement(hex: &str, predicate: &str) -> Vec<u8> {
        format!(
            r#"{{"_type":"{STATEMENT_V1}","subject":[{{"name":"x","digest":{{"sha256":"{hex}"}}}}],"predicateType":"{predicate}","predicate":{{}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn pae_follows_the_dsse_spec() {
        assert_eq!(pae("t", b"body"), b"DSSEv1 1 t 4 body".to_vec());
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn only_cosigns_statement_for_the_digest_passes() {
        let d = Digest::of(b"manifest");
        let ok = statement(d.hex(), COSIGN_SIGN);
        assert_eq!(check_statement(IN_TOTO, &ok, &d), Ok(()));
        let other = Digest::of(b"other");
        let e = check_statement(IN_TOTO, &ok, &other).expect_err("other digest");
        assert_eq!(e.refusal, Refusal::SignatureInvalid);
        let sbom = statement(d.hex(), "https://spdx.dev/Document");
        let e = check_statement(IN_TOTO, &sbom, &d).expect_err("an SBOM");
        assert!(e.message.contains("not a signature"), "{}", e.message);
        assert!(check_statement("text/plain", &ok, &d).is_err());
        assert!(check_statement(IN_TOTO, b"[]", &d).is_err());
    }
}
