//! Signature verification: a revision is stored only when a signature over its manifest
//! digest passes the source's policy (trusted keys, or keyless Sigstore identities).
//!
//! - [`keys`]: public keys (PEM/SPKI) and signature checks with ring.
//! - [`simplesigning`]: cosign's classic payload, and its check against the digest.
//! - [`discover`]: finding signatures in the registry (referrers, their tag fallback, the
//!   classic `.sig` tag), every read bounded.
//! - [`keyless`] and its parts (`trust_root`, `cert`, `sct`, `rekor`, `bundle`, `dsse`):
//!   Fulcio certificates, Rekor entries and Sigstore bundles, all checked offline.
//!
//! Every decision here is a pure function over bytes; only `discover` talks to a registry.

pub mod bundle;
pub mod cert;
pub mod discover;
pub mod dsse;
pub mod keyless;
pub mod keys;
pub mod rekor;
pub mod sct;
pub mod simplesigning;
pub mod trust_root;

use std::sync::Arc;

use crate::api::reason::SourceReason;
use crate::digest::Digest;

pub use keys::PublicKey;
pub use trust_root::TrustedRoot;

/// What a source trusts.
#[derive(Clone, Debug)]
pub enum Policy {
    /// Any of these keys (key mode, `secretRef`).
    Keys(Vec<PublicKey>),
    /// A Fulcio certificate for one of these identities, proven by the transparency log of
    /// this trusted root (keyless mode).
    Keyless {
        identities: Vec<Identity>,
        root: Arc<TrustedRoot>,
    },
}

/// One accepted identity: the issuer regex matches the certificate's OIDC issuer and the
/// subject regex matches one of its subject alternative names. Both unanchored, as in
/// cosign: anchor them with `^…$`.
#[derive(Clone, Debug)]
pub struct Identity {
    pub issuer: regex::Regex,
    pub subject: regex::Regex,
}

/// A signature found in the registry, not yet checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// One layer of a classic `sha256-<hex>.sig` manifest.
    Classic(ClassicSignature),
    /// A Sigstore bundle (JSON) attached as a referrer.
    Bundle(Vec<u8>),
}

/// A classic cosign signature layer: the payload blob and the layer's annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassicSignature {
    pub payload: Vec<u8>,
    /// `dev.cosignproject.cosign/signature`: base64 of the signature over the payload.
    pub signature: String,
    /// `dev.sigstore.cosign/certificate`: PEM leaf (keyless).
    pub certificate: Option<String>,
    /// `dev.sigstore.cosign/chain`: PEM intermediates and root (keyless, untrusted).
    pub chain: Option<String>,
    /// `dev.sigstore.cosign/bundle`: the Rekor bundle JSON (keyless).
    pub rekor_bundle: Option<String>,
}

/// How a revision was verified (for `status.artifact.verification`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    pub method: Method,
    /// Key mode: `sha256:<hex>` of the key's SubjectPublicKeyInfo DER.
    pub key_fingerprint: Option<String>,
    /// Keyless: the certificate's OIDC issuer.
    pub issuer: Option<String>,
    /// Keyless: the subject alternative name that matched.
    pub subject: Option<String>,
    pub format: Format,
    /// Keyless: the transparency log's integrated time (Unix seconds).
    pub integrated_time: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    #[default]
    Key,
    Keyless,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Key => "key",
            Method::Keyless => "keyless",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Classic,
    BundleV02,
    BundleV03,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Classic => "classic",
            Format::BundleV02 => "bundle-v0.2",
            Format::BundleV03 => "bundle-v0.3",
        }
    }
}

/// Why a signature (or all of them) did not verify. Ordered: when several candidates fail,
/// the highest kind is reported (it says the most about what is wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    SignatureNotFound,
    UntrustedKey,
    SignatureInvalid,
    IdentityMismatch,
    TrustedRootInvalid,
}

impl Refusal {
    pub fn reason(self) -> SourceReason {
        match self {
            Refusal::SignatureNotFound => SourceReason::SignatureNotFound,
            Refusal::UntrustedKey => SourceReason::UntrustedKey,
            Refusal::SignatureInvalid => SourceReason::SignatureInvalid,
            Refusal::IdentityMismatch => SourceReason::IdentityMismatch,
            Refusal::TrustedRootInvalid => SourceReason::TrustedRootInvalid,
        }
    }
}

/// A refusal with what was wrong. Messages hold public data only (digests, identities,
/// key fingerprints), never key material or credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failed {
    pub refusal: Refusal,
    pub message: String,
}

impl Failed {
    pub fn new(refusal: Refusal, message: impl Into<String>) -> Self {
        Failed {
            refusal,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Failed::new(Refusal::SignatureInvalid, message)
    }
}

/// Checks one candidate signature of `digest` (whose manifest bytes are `manifest`).
pub fn verify_candidate(
    policy: &Policy,
    digest: &Digest,
    manifest: &[u8],
    candidate: &Candidate,
) -> Result<Verified, Failed> {
    match (policy, candidate) {
        (Policy::Keys(keys), Candidate::Classic(sig)) => classic_with_keys(keys, digest, sig),
        (Policy::Keyless { identities, root }, Candidate::Classic(sig)) => {
            keyless::verify_classic(identities, root, digest, sig)
        }
        (policy, Candidate::Bundle(json)) => keyless::verify_bundle(policy, digest, manifest, json),
    }
}

/// Key mode, classic layer: the payload names the digest and one trusted key signed it.
/// The transparency log is not consulted (as `cosign verify --key` with a private key).
fn classic_with_keys(
    keys: &[PublicKey],
    digest: &Digest,
    sig: &ClassicSignature,
) -> Result<Verified, Failed> {
    simplesigning::check_payload(&sig.payload, digest)?;
    let signature = decode_b64(&sig.signature)
        .ok_or_else(|| Failed::invalid("the signature annotation is not base64"))?;
    let key = keys
        .iter()
        .find(|k| k.verifies(&sig.payload, &signature))
        .ok_or_else(|| untrusted(keys, digest))?;
    Ok(Verified {
        method: Method::Key,
        key_fingerprint: Some(key.fingerprint()),
        format: Format::Classic,
        ..Verified::default()
    })
}

pub(crate) fn untrusted(keys: &[PublicKey], digest: &Digest) -> Failed {
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    Failed::new(
        Refusal::UntrustedKey,
        format!(
            "a signature for {digest} was found, but none of the trusted keys ({}) verifies it",
            names.join(", ")
        ),
    )
}

/// Standard base64, as cosign writes signatures (surrounding whitespace ignored).
pub(crate) fn decode_b64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}
