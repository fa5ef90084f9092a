//! Keyless verification (a Fulcio certificate proven by a Rekor entry) and Sigstore
//! bundles, all offline against a trusted root:
//!
//! 1. the signature is over what names the digest (the simple-signing payload, the
//!    manifest itself, or cosign's in-toto statement in a DSSE envelope);
//! 2. a log entry of the root carries a valid SET (the integrated time is then trusted), its
//!    inclusion proof and checkpoint (bundles), and a body recording this very signature,
//!    certificate and content;
//! 3. the certificate chains to a CA of the root valid at the integrated time, for code
//!    signing, and carries an SCT of a CT log of the root;
//! 4. last, the certificate's issuer and SANs match an accepted identity: only a signature
//!    that is valid in every other way is reported as an identity mismatch.

use sha2::{Digest as _, Sha256};

use super::bundle::{self, Bundle, Material};
use super::cert::{self, Leaf};
use super::rekor::{self, Entry, Signed};
use super::{
    ClassicSignature, Failed, Format, Identity, Method, Policy, TrustedRoot, Verified, dsse,
    simplesigning,
};
use crate::digest::Digest;

pub fn verify_classic(
    identities: &[Identity],
    root: &TrustedRoot,
    digest: &Digest,
    sig: &ClassicSignature,
) -> Result<Verified, Failed> {
    simplesigning::check_payload(&sig.payload, digest)?;
    let signature = super::decode_b64(&sig.signature)
        .ok_or_else(|| Failed::invalid("the signature annotation is not base64"))?;
    let pem = sig.certificate.as_deref().ok_or_else(|| {
        Failed::invalid("the signature has no certificate annotation (not a keyless signature)")
    })?;
    let leaf = Leaf::from_pem(pem)?;
    // the chain annotation must be well formed (bounded), but the path is built from the
    // trusted root alone (see `Leaf::verify_path`)
    cert::pem_chain(sig.chain.as_deref().unwrap_or_default())?;
    let rekor = sig.rekor_bundle.as_deref().ok_or_else(|| {
        Failed::invalid("the signature has no Rekor bundle annotation (no transparency log proof)")
    })?;
    let entry = Entry::from_classic(rekor)?;
    if !leaf.key.verifies(&sig.payload, &signature) {
        return Err(Failed::invalid(
            "the signature does not verify under its certificate's key",
        ));
    }
    let signed = Signed {
        signature: &signature,
        certificate: &leaf.der,
        content: rekor::Content::Message {
            sha256: Sha256::digest(&sig.payload).into(),
        },
    };
    let time = proven(root, &leaf, &[entry], &signed, false)?;
    identified(identities, &leaf, Format::Classic, time)
}

pub fn verify_bundle(
    policy: &Policy,
    digest: &Digest,
    manifest: &[u8],
    json: &[u8],
) -> Result<Verified, Failed> {
    let b = Bundle::parse(json)?;
    let (message, signature, content) = signed_content(&b, digest, manifest)?;
    match policy {
        Policy::Keys(keys) => {
            let key = keys
                .iter()
                .find(|k| k.verifies(&message, signature))
                .ok_or_else(|| super::untrusted(keys, digest))?;
            Ok(Verified {
                method: Method::Key,
                key_fingerprint: Some(key.fingerprint()),
                format: b.format,
                ..Verified::default()
            })
        }
        Policy::Keyless { identities, root } => {
            let Material::Certificate { leaf, .. } = &b.material else {
                return Err(Failed::invalid(
                    "the bundle is signed by a key (public key hint), not keylessly",
                ));
            };
            let leaf = Leaf::from_der(leaf)?;
            if !leaf.key.verifies(&message, signature) {
                return Err(Failed::invalid(
                    "the bundle's signature does not verify under its certificate's key",
                ));
            }
            let signed = Signed {
                signature,
                certificate: &leaf.der,
                content,
            };
            let time = proven(root, &leaf, &b.entries, &signed, true)?;
            identified(identities, &leaf, b.format, time)
        }
    }
}

/// What the bundle's signature covers (checked to be about `digest`), the signature, and
/// the content a log entry must record.
fn signed_content<'a>(
    b: &'a Bundle,
    digest: &Digest,
    manifest: &[u8],
) -> Result<(Vec<u8>, &'a [u8], rekor::Content<'a>), Failed> {
    match &b.content {
        bundle::Content::Message {
            algorithm,
            digest: claimed,
            signature,
        } => {
            let sha256: [u8; 32] = Sha256::digest(manifest).into();
            if algorithm != "SHA2_256"
                || claimed.as_slice() != sha256
                || Digest::of(manifest) != *digest
            {
                return Err(Failed::invalid(format!(
                    "the bundle's message signature is not over the manifest {digest}"
                )));
            }
            Ok((
                manifest.to_vec(),
                signature,
                rekor::Content::Message { sha256 },
            ))
        }
        bundle::Content::Envelope {
            payload,
            payload_type,
            signature,
        } => {
            dsse::check_statement(payload_type, payload, digest)?;
            Ok((
                dsse::pae(payload_type, payload),
                signature,
                rekor::Content::Envelope {
                    payload,
                    payload_type,
                },
            ))
        }
    }
}

/// Steps 2 and 3: a log entry proves the signature existed at its integrated time, when the
/// certificate chained to the root and was logged. Returns the integrated time.
fn proven(
    root: &TrustedRoot,
    leaf: &Leaf,
    entries: &[Entry],
    signed: &Signed<'_>,
    need_proof: bool,
) -> Result<i64, Failed> {
    let mut last = Failed::invalid("the signature has no transparency log entry");
    let mut time = None;
    for e in entries.iter().take(bundle::MAX_TLOG_ENTRIES) {
        let checked = if need_proof && e.proof.is_none() {
            Err(Failed::invalid(
                "the transparency log entry has no inclusion proof",
            ))
        } else {
            rekor::verify_entry(root, e)
                .and_then(|t| rekor::check_body(&e.body, signed).map(|()| t))
        };
        match checked {
            Ok(t) => {
                time = Some(t);
                break;
            }
            Err(f) => last = f,
        }
    }
    let time = time.ok_or(last)?;
    let issuer_spki = leaf.verify_path(root, time)?;
    super::sct::verify(root, leaf, &issuer_spki)?;
    Ok(time)
}

/// Step 4: the identity, on a signature valid in every other way.
fn identified(
    identities: &[Identity],
    leaf: &Leaf,
    format: Format,
    time: i64,
) -> Result<Verified, Failed> {
    let (issuer, subject) = leaf.matching(identities)?;
    Ok(Verified {
        method: Method::Keyless,
        key_fingerprint: None,
        issuer: Some(issuer),
        subject: Some(subject),
        format,
        integrated_time: Some(time),
    })
}

#[cfg(test)]
#[path = "keyless_tests.rs"]
mod tests;
