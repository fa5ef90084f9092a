//! cosign's classic payload ("simple signing"), what a classic signature signs:
//! `{"critical":{"identity":{"docker-reference":…},"image":{"docker-manifest-digest":…},
//! "type":"cosign container image signature"},"optional":{…}}`.
//!
//! The signature covers the payload bytes; the payload names the manifest digest. A payload
//! naming another digest is a replayed signature, however valid its bytes.

use serde::{Deserialize, Serialize};

use super::Failed;
use crate::digest::Digest;

pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Payloads larger than this are refused before parsing.
pub const MAX_PAYLOAD: u64 = 64 * 1024;

#[derive(Debug, Deserialize, Serialize)]
struct Payload {
    critical: Critical,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optional: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, Serialize)]
struct Critical {
    identity: IdentityClaim,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct IdentityClaim {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Checks that a payload is cosign's and names `digest`.
pub fn check_payload(payload: &[u8], digest: &Digest) -> Result<(), Failed> {
    if payload.len() as u64 > MAX_PAYLOAD {
        return Err(Failed::invalid(format!(
            "the signature payload is {} bytes, over the limit of {MAX_PAYLOAD}",
            payload.len()
        )));
    }
    let p: Payload = serde_json::from_slice(payload)
        .map_err(|e| Failed::invalid(format!("the signature payload is not cosign's: {e}")))?;
    if p.critical.kind != PAYLOAD_TYPE {
        return Err(Failed::invalid(format!(
            "the signature payload has type {:?}, not {PAYLOAD_TYPE:?}",
            p.critical.kind
        )));
    }
    let claimed = &p.critical.image.docker_manifest_digest;
    if claimed != digest.as_str() {
        return Err(Failed::invalid(format!(
            "the signature is for {claimed}, not for {digest}"
        )));
    }
    Ok(())
}

/// The payload `ocisync push --sign-key` signs, as cosign writes it.
pub fn payload_for(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    let p = Payload {
        critical: Critical {
            identity: IdentityClaim {
                docker_reference: docker_reference.to_string(),
            },
            image: Image {
                docker_manifest_digest: digest.to_string(),
            },
            kind: PAYLOAD_TYPE.to_string(),
        },
        optional: None,
    };
    serde_json::to_vec(&p).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Refusal;

    #[test]
    fn a_payload_for_the_digest_passes_and_one_for_another_digest_does_not() {
        let d = Digest::of(b"manifest");
        let p = payload_for("registry.local/rules", &d);
        assert_eq!(check_payload(&p, &d), Ok(()));
        let other = Digest::of(b"other manifest");
        let e = check_payload(&p, &other).expect_err("replayed");
        assert_eq!(e.refusal, Refusal::SignatureInvalid);
        assert!(e.message.contains(d.as_str()), "{}", e.message);
    }

    #[test]
    fn cosigns_own_payload_shape_is_read() {
        let d = Digest::of(b"m");
        let text = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"ghcr.io/x/y"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":{{"creator":"x"}}}}"#
        );
        assert_eq!(check_payload(text.as_bytes(), &d), Ok(()));
        let wrong = text.replace("cosign container image signature", "in-toto");
        assert!(check_payload(wrong.as_bytes(), &d).is_err());
        assert!(check_payload(b"not json", &d).is_err());
        let huge = vec![b' '; MAX_PAYLOAD as usize + 1];
        assert!(check_payload(&huge, &d).is_err());
    }
}
