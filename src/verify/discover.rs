//! Finding a revision's signatures in its own repository, every read bounded:
//!
//! 1. Sigstore bundles attached as OCI 1.1 referrers: the referrers API, or the referrers tag
//!    `sha256-<hex>` (an index) when the registry lacks the API.
//! 2. cosign's classic signature manifest at tag `sha256-<hex>.sig`.
//!
//! Candidates are checked as they are found; the first that passes the policy wins, so a
//! signed revision costs the fewest requests its format allows.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Candidate, ClassicSignature, Failed, Policy, Refusal, Verified, simplesigning};
use crate::digest::Digest;
use crate::oci::OciError;
use crate::oci::reference::Repository;
use crate::oci::registry::Registry;

/// Bounds on what discovery reads.
pub const MAX_INDEX: u64 = 1024 * 1024;
pub const MAX_BUNDLE: u64 = 1024 * 1024;
pub const MAX_REFERRERS: usize = 16;
pub const MAX_SIGNATURE_LAYERS: usize = 16;

pub const BUNDLE_MEDIA_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";

/// Why discovery stopped: the registry failed (its own reason), or no signature passed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Registry(#[from] OciError),
    #[error(transparent)]
    Refused(#[from] Failed),
}

/// How many registry requests a check made (for the benchmark and logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests(pub u32);

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listing {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    subject: Option<Descriptor>,
}

/// The referrers tag of a digest: `sha256-<hex>`; the classic signature tag adds `.sig`.
pub fn referrers_tag(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

pub fn signature_tag(digest: &Digest) -> String {
    format!("{}.sig", referrers_tag(digest))
}

/// Verifies `digest` (whose manifest bytes are `manifest`) against `policy`, reading
/// signatures from `repo` only.
pub async fn check(
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
    manifest: &[u8],
    policy: &Policy,
    requests: &mut Requests,
) -> Result<Verified, CheckError> {
    let mut worst: Option<Failed> = None;
    let mut found = 0usize;
    for candidate in bundles(registry, repo, digest, requests).await? {
        found += 1;
        match super::verify_candidate(policy, digest, manifest, &candidate) {
            Ok(v) => return Ok(v),
            Err(f) => keep_worst(&mut worst, f),
        }
    }
    let mut classic = Classic::new(registry, repo, digest);
    while let Some(candidate) = classic.next(requests).await? {
        found += 1;
        match super::verify_candidate(policy, digest, manifest, &candidate) {
            Ok(v) => return Ok(v),
            Err(f) => keep_worst(&mut worst, f),
        }
    }
    Err(CheckError::Refused(worst.unwrap_or_else(|| {
        debug_assert_eq!(found, 0);
        Failed::new(
            Refusal::SignatureNotFound,
            format!(
                "no signature for {digest}: no Sigstore bundle among its referrers and no tag {}",
                signature_tag(digest)
            ),
        )
    })))
}

fn keep_worst(worst: &mut Option<Failed>, f: Failed) {
    if worst.as_ref().is_none_or(|w| f.refusal > w.refusal) {
        *worst = Some(f);
    }
}

/// The Sigstore bundles among the digest's referrers (at most [`MAX_REFERRERS`]).
async fn bundles(
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
    requests: &mut Requests,
) -> Result<Vec<Candidate>, OciError> {
    requests.0 += 1;
    let index = match registry.referrers(repo, digest, MAX_INDEX).await? {
        Some(bytes) => bytes,
        None => {
            requests.0 += 1;
            match registry
                .fetch_manifest(repo, &referrers_tag(digest), None)
                .await
            {
                Ok(m) => m.bytes,
                Err(OciError::NotFound(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
    };
    let listing: Listing = serde_json::from_slice(&index)
        .map_err(|e| OciError::InvalidManifest(format!("referrers of {digest}: {e}")))?;
    let wanted: Vec<&Descriptor> = listing
        .manifests
        .iter()
        .filter(|d| d.artifact_type.as_deref().is_some_and(is_bundle_type))
        .collect();
    if wanted.len() > MAX_REFERRERS {
        return Err(OciError::TooLarge(format!(
            "{} Sigstore bundles refer to {digest}; at most {MAX_REFERRERS} are read",
            wanted.len()
        )));
    }
    let mut out = Vec::new();
    for d in wanted {
        if let Some(bundle) = bundle_of(registry, repo, digest, d, requests).await? {
            out.push(Candidate::Bundle(bundle));
        }
    }
    Ok(out)
}

fn is_bundle_type(t: &str) -> bool {
    t.starts_with(BUNDLE_MEDIA_PREFIX)
}

/// The bundle blob of one referrer manifest, when it is one (exactly one bundle layer, and
/// a subject that is the digest being verified).
async fn bundle_of(
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
    d: &Descriptor,
    requests: &mut Requests,
) -> Result<Option<Vec<u8>>, OciError> {
    let Ok(referrer) = Digest::parse(&d.digest) else {
        return Ok(None);
    };
    requests.0 += 1;
    let raw = registry
        .fetch_manifest(repo, referrer.as_str(), Some(&referrer))
        .await?;
    let Ok(m) = serde_json::from_slice::<Listing>(&raw.bytes) else {
        return Ok(None);
    };
    let about_digest = m
        .subject
        .as_ref()
        .is_some_and(|s| s.digest == digest.as_str());
    let layers: Vec<&Descriptor> = m
        .layers
        .iter()
        .filter(|l| is_bundle_type(&l.media_type))
        .collect();
    let [layer] = layers.as_slice() else {
        return Ok(None);
    };
    if !about_digest || layer.size < 0 || layer.size as u64 > MAX_BUNDLE {
        return Ok(None);
    }
    let Ok(blob) = Digest::parse(&layer.digest) else {
        return Ok(None);
    };
    requests.0 += 1;
    let bytes = registry.fetch_small_blob(repo, &blob, MAX_BUNDLE).await?;
    Ok(Some(bytes.to_vec()))
}

/// The layers of the classic `.sig` manifest, read one payload at a time.
struct Classic<'a> {
    registry: &'a Registry,
    repo: &'a Repository,
    digest: &'a Digest,
    layers: Option<std::vec::IntoIter<Descriptor>>,
}

impl<'a> Classic<'a> {
    fn new(registry: &'a Registry, repo: &'a Repository, digest: &'a Digest) -> Self {
        Classic {
            registry,
            repo,
            digest,
            layers: None,
        }
    }

    async fn next(&mut self, requests: &mut Requests) -> Result<Option<Candidate>, OciError> {
        if self.layers.is_none() {
            self.layers = Some(self.list(requests).await?.into_iter());
        }
        let Some(layers) = self.layers.as_mut() else {
            return Ok(None);
        };
        let Some(layer) = layers.next() else {
            return Ok(None);
        };
        let Ok(blob) = Digest::parse(&layer.digest) else {
            return Err(OciError::InvalidManifest(format!(
                "signature layer digest {:?} is not sha256",
                layer.digest
            )));
        };
        requests.0 += 1;
        let limit = simplesigning::MAX_PAYLOAD;
        let payload = self
            .registry
            .fetch_small_blob(self.repo, &blob, limit)
            .await?;
        let a = layer.annotations;
        Ok(Some(Candidate::Classic(ClassicSignature {
            payload: payload.to_vec(),
            signature: a.get(SIGNATURE_ANNOTATION).cloned().unwrap_or_default(),
            certificate: a.get(CERTIFICATE_ANNOTATION).cloned(),
            chain: a.get(CHAIN_ANNOTATION).cloned(),
            rekor_bundle: a.get(BUNDLE_ANNOTATION).cloned(),
        })))
    }

    /// The simple-signing layers of the `.sig` manifest (none when the tag is absent).
    async fn list(&self, requests: &mut Requests) -> Result<Vec<Descriptor>, OciError> {
        requests.0 += 1;
        let tag = signature_tag(self.digest);
        let raw = match self.registry.fetch_manifest(self.repo, &tag, None).await {
            Ok(raw) => raw,
            Err(OciError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let m: Listing = serde_json::from_slice(&raw.bytes)
            .map_err(|e| OciError::InvalidManifest(format!("{tag}: {e}")))?;
        let layers: Vec<Descriptor> = m
            .layers
            .into_iter()
            .filter(|l| l.media_type == SIMPLESIGNING)
            .collect();
        if layers.len() > MAX_SIGNATURE_LAYERS {
            return Err(OciError::TooLarge(format!(
                "{tag} holds {} signatures; at most {MAX_SIGNATURE_LAYERS} are read",
                layers.len()
            )));
        }
        Ok(layers)
    }
}
