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
/// signatures from `repo` only. A referrer or signature that cannot be read (gone, not
/// what it says, over a bound) is skipped, not fatal: junk next to a valid signature must
/// not deny it. Only a registry that cannot be reached or refuses us stops the search.
pub async fn check(
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
    manifest: &[u8],
    policy: &Policy,
    requests: &mut Requests,
) -> Result<Verified, CheckError> {
    let mut search = Search::default();
    for d in bundle_referrers(registry, repo, digest, requests, &mut search).await? {
        let bundle = bundle_of(registry, repo, digest, &d, requests).await;
        if let Some(bundle) = search.usable(bundle)?.flatten() {
            let candidate = Candidate::Bundle(bundle);
            if let Some(v) = search.try_one(policy, digest, manifest, &candidate) {
                return Ok(v);
            }
        }
    }
    let mut classic = Classic::new(registry, repo, digest);
    while let Some(candidate) = classic.next(requests, &mut search).await? {
        if let Some(v) = search.try_one(policy, digest, manifest, &candidate) {
            return Ok(v);
        }
    }
    Err(CheckError::Refused(search.refusal(digest)))
}

/// What a search saw: the most telling refusal, and what it skipped.
#[derive(Default)]
struct Search {
    worst: Option<Failed>,
    skipped: Vec<String>,
}

impl Search {
    fn try_one(
        &mut self,
        policy: &Policy,
        digest: &Digest,
        manifest: &[u8],
        candidate: &Candidate,
    ) -> Option<Verified> {
        match super::verify_candidate(policy, digest, manifest, candidate) {
            Ok(v) => Some(v),
            Err(f) => {
                if self.worst.as_ref().is_none_or(|w| f.refusal > w.refusal) {
                    self.worst = Some(f);
                }
                None
            }
        }
    }

    /// A read's result: fatal registry errors stop the search; others are noted and
    /// skipped (`Ok(None)`).
    fn usable<T>(&mut self, read: Result<T, OciError>) -> Result<Option<T>, OciError> {
        match read {
            Ok(t) => Ok(Some(t)),
            Err(e) if is_fatal(&e) => Err(e),
            Err(e) => {
                if self.skipped.len() < 4 {
                    self.skipped.push(e.to_string());
                }
                Ok(None)
            }
        }
    }

    fn refusal(self, digest: &Digest) -> Failed {
        if let Some(w) = self.worst {
            return w;
        }
        let mut message = format!(
            "no signature for {digest}: no Sigstore bundle among its referrers and no tag {}",
            signature_tag(digest)
        );
        if !self.skipped.is_empty() {
            message.push_str(&format!("; skipped: {}", self.skipped.join("; ")));
        }
        Failed::new(Refusal::SignatureNotFound, message)
    }
}

/// Errors that say the registry cannot be asked now (not that one object is bad).
fn is_fatal(e: &OciError) -> bool {
    matches!(
        e,
        OciError::RegistryUnavailable(_)
            | OciError::UnavailableFor { .. }
            | OciError::Unauthorized(_)
            | OciError::RateLimited { .. }
            | OciError::Internal(_)
            | OciError::Io { .. }
    )
}

/// The Sigstore bundle referrers of the digest (the first [`MAX_REFERRERS`]), from the
/// referrers API or its fallback tag.
async fn bundle_referrers(
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
    requests: &mut Requests,
    search: &mut Search,
) -> Result<Vec<Descriptor>, OciError> {
    requests.0 += 1;
    let listed = match registry.referrers(repo, digest, MAX_INDEX).await {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => {
            requests.0 += 1;
            let tag = referrers_tag(digest);
            match registry
                .fetch_manifest_limited(repo, &tag, None, MAX_INDEX)
                .await
            {
                Ok(m) => Ok(m.bytes),
                Err(OciError::NotFound(_)) => return Ok(Vec::new()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let Some(index) = search.usable(listed)? else {
        return Ok(Vec::new());
    };
    let parsed = serde_json::from_slice::<Listing>(&index)
        .map_err(|e| OciError::InvalidManifest(format!("referrers of {digest}: {e}")));
    let Some(listing) = search.usable(parsed)? else {
        return Ok(Vec::new());
    };
    let mut wanted: Vec<Descriptor> = listing
        .manifests
        .into_iter()
        .filter(|d| d.artifact_type.as_deref().is_some_and(is_bundle_type))
        .collect();
    if wanted.len() > MAX_REFERRERS {
        let n = wanted.len();
        search.skipped.push(format!(
            "{n} Sigstore bundles refer to {digest}; only the first {MAX_REFERRERS} are read"
        ));
        wanted.truncate(MAX_REFERRERS);
    }
    Ok(wanted)
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
        .fetch_manifest_limited(repo, referrer.as_str(), Some(&referrer), MAX_INDEX)
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

    /// The next readable signature layer (unreadable ones are noted in `search` and
    /// skipped); `None` when there are no more.
    async fn next(
        &mut self,
        requests: &mut Requests,
        search: &mut Search,
    ) -> Result<Option<Candidate>, OciError> {
        if self.layers.is_none() {
            let listed = self.list(requests).await;
            let layers = search.usable(listed)?.unwrap_or_default();
            self.layers = Some(truncated(layers, search, self.digest).into_iter());
        }
        while let Some(layer) = self.layers.as_mut().and_then(Iterator::next) {
            let payload = self.payload(&layer, requests).await;
            if let Some(payload) = search.usable(payload)? {
                let a = layer.annotations;
                return Ok(Some(Candidate::Classic(ClassicSignature {
                    payload,
                    signature: a.get(SIGNATURE_ANNOTATION).cloned().unwrap_or_default(),
                    certificate: a.get(CERTIFICATE_ANNOTATION).cloned(),
                    chain: a.get(CHAIN_ANNOTATION).cloned(),
                    rekor_bundle: a.get(BUNDLE_ANNOTATION).cloned(),
                })));
            }
        }
        Ok(None)
    }

    async fn payload(
        &self,
        layer: &Descriptor,
        requests: &mut Requests,
    ) -> Result<Vec<u8>, OciError> {
        let blob = Digest::parse(&layer.digest).map_err(|_| {
            OciError::InvalidManifest(format!(
                "signature layer digest {:?} is not sha256",
                layer.digest
            ))
        })?;
        requests.0 += 1;
        let limit = simplesigning::MAX_PAYLOAD;
        let payload = self
            .registry
            .fetch_small_blob(self.repo, &blob, limit)
            .await?;
        Ok(payload.to_vec())
    }

    /// The simple-signing layers of the `.sig` manifest (none when the tag is absent).
    async fn list(&self, requests: &mut Requests) -> Result<Vec<Descriptor>, OciError> {
        requests.0 += 1;
        let tag = signature_tag(self.digest);
        let raw = match self
            .registry
            .fetch_manifest_limited(self.repo, &tag, None, MAX_INDEX)
            .await
        {
            Ok(raw) => raw,
            Err(OciError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let m: Listing = serde_json::from_slice(&raw.bytes)
            .map_err(|e| OciError::InvalidManifest(format!("{tag}: {e}")))?;
        Ok(m.layers
            .into_iter()
            .filter(|l| l.media_type == SIMPLESIGNING)
            .collect())
    }
}

/// The first [`MAX_SIGNATURE_LAYERS`] layers; more are noted, not read.
fn truncated(mut layers: Vec<Descriptor>, search: &mut Search, digest: &Digest) -> Vec<Descriptor> {
    if layers.len() > MAX_SIGNATURE_LAYERS {
        search.skipped.push(format!(
            "{} holds {} signatures; only the first {MAX_SIGNATURE_LAYERS} are read",
            signature_tag(digest),
            layers.len()
        ));
        layers.truncate(MAX_SIGNATURE_LAYERS);
    }
    layers
}
