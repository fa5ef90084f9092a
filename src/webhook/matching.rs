//! Which ArtifactSources a push concerns.
//!
//! A push to repository `R` concerns a source whose `spec.url` names the repository path
//! `R`, on any registry and in any namespace, and which could see something new:
//!
//! - following a tag: a push of that tag;
//! - following a semver range: a push of a tag the range accepts (the test the check
//!   itself uses, a leading `v` allowed);
//! - either, when the sender did not say which tag (the generic shape without `tag`);
//! - pinned to a digest: never, no push changes it;
//! - suspended: never.
//!
//! A manifest pushed by digest moves no tag, so it concerns only sources that verify
//! signatures (it may be a signature or attestation attached through the referrers API),
//! as does a push of a cosign signature, attestation or referrers tag (`sha256-<hex>`,
//! `.sig`, `.att`): the revision such a source waits on may have just been signed.
//!
//! The registry host is not compared: Distribution reports the `Host` header the pusher
//! used (`localhost:5000`, a node IP, a load balancer name), Harbor its own external URL,
//! and sources may name the same registry by a Service name or a mirror. A push to the
//! same repository path on another registry costs the source one manifest HEAD.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::ResourceExt;

use super::observe::Observed;
use super::payload::{PushEvent, PushedTag};
use super::wake::Expect;
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

/// A source to wake, and what its check should find when a tag push woke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wakeup {
    pub key: SourceKey,
    pub expect: Option<Expect>,
}

/// The sources `pushes` concern, each once, in order. Each source's spec is parsed once
/// and its pushes looked up by repository, so a request costs sources + pushes, not their
/// product.
pub fn concerned(sources: &[Arc<ArtifactSource>], pushes: &[PushEvent]) -> Vec<Wakeup> {
    let mut by_repository: HashMap<&str, Vec<&PushEvent>> = HashMap::new();
    for p in pushes {
        by_repository
            .entry(p.repository.as_str())
            .or_default()
            .push(p);
    }
    let mut found = BTreeMap::new();
    for source in sources {
        let Some((wanted, verifies)) = wanted(source) else {
            continue;
        };
        let Some(pushed) = by_repository.get(wanted.repository.name.as_str()) else {
            continue;
        };
        let mut woken = false;
        let mut expect = None;
        for push in pushed
            .iter()
            .filter(|p| moves(&wanted.selector, verifies, &p.tag))
        {
            woken = true;
            if matches!(push.tag, PushedTag::Named(_)) {
                expect = Some(Expect {
                    before: Observed::of(source).digest,
                    pushed: push.digest.clone(),
                });
            }
        }
        if woken {
            let key = SourceKey {
                namespace: source.namespace().unwrap_or_default(),
                name: source.name_any(),
            };
            found.insert(key, expect);
        }
    }
    found
        .into_iter()
        .map(|(key, expect)| Wakeup { key, expect })
        .collect()
}

/// Whether `push` concerns `source` (see the module's rules); what [`concerned`] decides
/// for one pair.
#[cfg(test)]
pub fn concerns(source: &ArtifactSource, push: &PushEvent) -> bool {
    wanted(source).is_some_and(|(wanted, verifies)| {
        wanted.repository.name == push.repository && moves(&wanted.selector, verifies, &push.tag)
    })
}

/// What a source follows, and whether it verifies signatures; `None` when suspended or
/// its spec is invalid (the controller's to report; no push changes it).
fn wanted(source: &ArtifactSource) -> Option<(Reference, bool)> {
    let spec = &source.spec;
    if spec.suspend {
        return None;
    }
    let selector = spec.reference.as_ref();
    let wanted = Reference::from_spec(
        &spec.url,
        selector.and_then(|r| r.tag.as_deref()),
        selector.and_then(|r| r.semver.as_deref()),
        selector.and_then(|r| r.digest.as_deref()),
    )
    .ok()?;
    Some((wanted, spec.verify.is_some()))
}

/// Whether a push of `tag` may move what `selector` follows.
fn moves(selector: &RefSelector, verifies: bool, tag: &PushedTag) -> bool {
    match (selector, tag) {
        (RefSelector::Digest(_), _) => false,
        (_, PushedTag::Unsaid) => true,
        (_, PushedTag::Untagged) => verifies,
        (_, PushedTag::Named(tag)) if verifies && is_signature_tag(tag) => true,
        (RefSelector::Tag(t), PushedTag::Named(tag)) => t == tag,
        (RefSelector::Semver(range), PushedTag::Named(tag)) => {
            reference::highest_matching(range, [tag.as_str()]).is_some()
        }
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
