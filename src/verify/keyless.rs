//! Keyless (Fulcio certificate + Rekor entry) verification and Sigstore bundles.
//! Placeholder: replaced by the keyless implementation.

use super::{ClassicSignature, Failed, Identity, Policy, TrustedRoot, Verified};
use crate::digest::Digest;

pub fn verify_classic(
    _identities: &[Identity],
    _root: &TrustedRoot,
    _digest: &Digest,
    _sig: &ClassicSignature,
) -> Result<Verified, Failed> {
    Err(Failed::invalid(
        "keyless classic signatures are not verified yet",
    ))
}

pub fn verify_bundle(
    _policy: &Policy,
    _digest: &Digest,
    _manifest: &[u8],
    _json: &[u8],
) -> Result<Verified, Failed> {
    Err(Failed::invalid("Sigstore bundles are not verified yet"))
}
