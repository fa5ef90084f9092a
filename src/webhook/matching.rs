//! Which ArtifactSources a push concerns.
//!
//! A push to repository `R` (with tag `T`, or none) concerns a source whose `spec.url`
//! names the repository path `R`, on any registry and in any namespace:
//!
//! - following a tag: when `T` is that tag, or the push has no tag (a manifest pushed by
//!   digest, perhaps the index the tag is about to name);
//! - following a semver range: when `T` is a version the range accepts (the same test
//!   the check uses, a leading `v` allowed), or the push has no tag;
//! - pinned to a digest: never, nothing a push does changes it;
//! - suspended: never.
//!
//! A source that verifies signatures is also concerned by a push whose tag is a cosign
//! signature, attestation or referrers tag (`sha256-<hex>`, `.sig`, `.att`): the revision
//! it waits on may have just been signed.
//!
//! The registry host is not compared: Distribution reports the `Host` header the pusher
//! used (`localhost:5000`, a node IP, a load balancer name), Harbor its own external URL,
//! and sources may name the same registry by a Service name or a mirror. A push to the
//! same repository path on another registry costs the source one manifest HEAD.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::ResourceExt;

use super::payload::PushEvent;
use crate::api::ArtifactSource;
use crate::oci::reference::{self, RefSelector, Reference};

/// A source, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The sources `pushes` concern, each once, in order.
pub fn concerned(sources: &[Arc<ArtifactSource>], pushes: &[PushEvent]) -> Vec<SourceKey> {
    let mut keys = BTreeSet::new();
    for source in sources {
        if pushes.iter().any(|p| concerns(source, p)) {
            keys.insert(SourceKey {
                namespace: source.namespace().unwrap_or_default(),
                name: source.name_any(),
            });
        }
    }
    keys.into_iter().collect()
}

/// Whether `push` concerns `source` (see the module's rules).
pub fn concerns(source: &ArtifactSource, push: &PushEvent) -> bool {
    let spec = &source.spec;
    if spec.suspend {
        return false;
    }
    let selector = spec.reference.as_ref();
    let Ok(wanted) = Reference::from_spec(
        &spec.url,
        selector.and_then(|r| r.tag.as_deref()),
        selector.and_then(|r| r.semver.as_deref()),
        selector.and_then(|r| r.digest.as_deref()),
    ) else {
        // an invalid spec is the controller's to report; no push changes it
        return false;
    };
    if wanted.repository.name != push.repository {
        return false;
    }
    let Some(tag) = push.tag.as_deref() else {
        return !matches!(wanted.selector, RefSelector::Digest(_));
    };
    match &wanted.selector {
        RefSelector::Digest(_) => false,
        _ if spec.verify.is_some() && is_signature_tag(tag) => true,
        RefSelector::Tag(t) => t == tag,
        RefSelector::Semver(range) => reference::highest_matching(range, [tag]).is_some(),
    }
}

/// A tag cosign or the OCI referrers fallback writes next to an artifact:
/// `sha256-<64 hex>` with or without `.sig`, `.att` or another suffix.
fn is_signature_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let hex = rest.split_once('.').map_or(rest, |(hex, _)| hex);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
#[path = "matching_tests.rs"]
mod tests;
