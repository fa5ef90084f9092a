//! A semver source feeding a Falco: of the versions its range matches, the highest whose
//! `engine_version_semver` requirement the oldest Falco among the RuleBundles over it
//! (`spec.falco.engineVersion`) meets, instead of one those bundles would hold back.

use kube::ResourceExt;
use oci_client::manifest::{OciImageIndex, OciImageManifest};

use super::context::Context;
use crate::api::artifact_source::Artifact;
use crate::api::{ArtifactSource, RuleBundle};
use crate::bundle::requirements::{compatible, engine_requirements_of};
use crate::digest::Digest;
use crate::oci::OciError;
use crate::oci::content::{self, FalcoConfig};
use crate::oci::platform;
use crate::oci::pull::{self, Deadline, Resolved};
use crate::oci::reference::{RefSelector, Reference, Repository};
use crate::oci::registry::Registry;

/// The most versions below the highest tried, each a HEAD (and, unless remembered, a
/// manifest and config GET): a range of hundreds of releases costs a bounded walk.
pub const MAX_CANDIDATES: usize = 16;

/// The oldest Falco a source feeds: the bundle naming it and its engine version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    pub bundle: String,
    pub engine: String,
}

/// Of the bundles in `namespace` that take files from source `name` into a target, are not
/// suspended and name their Falco's engine version, the one with the oldest (versions that
/// do not parse are left out: the CRD's pattern refuses them). The namespace is the tenant:
/// a bundle elsewhere never steers the pick.
pub fn oldest_consumer<'a>(
    bundles: impl IntoIterator<Item = &'a RuleBundle>,
    namespace: &str,
    name: &str,
) -> Option<Consumer> {
    bundles
        .into_iter()
        .filter(|b| b.namespace().as_deref() == Some(namespace))
        .filter(|b| b.spec.sources.iter().any(|s| s.source_ref.name == name))
        .filter(|b| !b.spec.suspend && (b.spec.config_map.is_some() || b.spec.node_files.is_some()))
        .filter_map(|b| {
            let engine = b.spec.falco.as_ref()?.engine_version.clone()?;
            let version = semver::Version::parse(&engine).ok()?;
            Some((version, b.name_any(), engine))
        })
        .min()
        .map(|(_, bundle, engine)| Consumer { bundle, engine })
}

/// The tags matching `range` below version `highest`, highest first, at most
/// [`MAX_CANDIDATES`].
pub fn candidates_below<'t>(
    range: &semver::VersionReq,
    tags: &'t [String],
    highest: &semver::Version,
) -> Vec<(&'t str, semver::Version)> {
    let mut below: Vec<(&str, semver::Version)> = tags
        .iter()
        .filter_map(|t| {
            let v = semver::Version::parse(t.strip_prefix('v').unwrap_or(t)).ok()?;
            (range.matches(&v) && v < *highest).then_some((t.as_str(), v))
        })
        .collect();
    below.sort_by(|a, b| b.1.cmp(&a.1));
    below.dedup_by(|a, b| a.1 == b.1);
    below.truncate(MAX_CANDIDATES);
    below
}

/// What [`pick`] chose instead of the highest version, and why, for the Ready message.
pub struct Picked {
    pub resolved: Resolved,
    pub note: String,
}

/// Where a source's engine requirements come from: its status artifact (no request), then
/// what the controller remembers by digest and platform selection, then the registry.
pub struct Lookup<'a> {
    pub registry: &'a Registry,
    pub repo: &'a Repository,
    /// `spec.platform`: which manifest of an index the source takes.
    pub platform: Option<&'a str>,
    pub known: Option<&'a Artifact>,
    pub ctx: &'a Context,
    pub deadline: &'a Deadline,
}

/// With a semver reference whose highest match requires a newer engine than `consumer`
/// runs: the highest lower match whose requirement it meets, if any of the
/// [`MAX_CANDIDATES`] below does. `None`: keep the highest (the bundles then report
/// `RequirementsNotMet`).
pub async fn pick(
    lookup: &Lookup<'_>,
    reference: &Reference,
    highest: &Resolved,
    consumer: &Consumer,
) -> Result<Option<Picked>, OciError> {
    let RefSelector::Semver(range) = &reference.selector else {
        return Ok(None);
    };
    let needs = lookup.requirements(&highest.head.digest).await?;
    let Some(needs) = needs.iter().find(|r| !compatible(r, &consumer.engine)) else {
        return Ok(None);
    };
    let Ok(top) = semver::Version::parse(&highest.label) else {
        return Ok(None);
    };
    let tags = lookup
        .deadline
        .run("tags", lookup.registry.list_tags(lookup.repo, 100_000))
        .await?;
    for (tag, version) in candidates_below(range, &tags, &top) {
        let head = lookup
            .deadline
            .run("resolve", lookup.registry.resolve(lookup.repo, tag))
            .await?;
        let fits = lookup
            .requirements(&head.digest)
            .await?
            .iter()
            .all(|r| compatible(r, &consumer.engine));
        if fits {
            let note = format!(
                "{} was picked over {}, which requires engine_version_semver {needs}: RuleBundle {} names Falco engine {}",
                version, highest.label, consumer.bundle, consumer.engine
            );
            let resolved = Resolved {
                label: version.to_string(),
                head,
            };
            return Ok(Some(Picked { resolved, note }));
        }
    }
    Ok(None)
}

/// For source `source` whose reference resolved to `highest`: the revision to take (a
/// lower version when the bundles over it run an older Falco than it needs) and, then, the
/// note saying so.
pub async fn for_source(
    ctx: &Context,
    source: &ArtifactSource,
    registry: &Registry,
    reference: &Reference,
    highest: Resolved,
    deadline: &Deadline,
) -> Result<(Resolved, Option<String>), OciError> {
    if !matches!(reference.selector, RefSelector::Semver(_)) {
        return Ok((highest, None));
    }
    let namespace = source.namespace().unwrap_or_default();
    let name = source.name_any();
    let bundles: Vec<_> = (ctx.source_users.of(&namespace, &name).iter())
        .filter_map(|b| ctx.bundles.get(b))
        .collect();
    let consumer = oldest_consumer(bundles.iter().map(|b| b.as_ref()), &namespace, &name);
    let Some(consumer) = consumer else {
        return Ok((highest, None));
    };
    let known = source.status.as_ref().and_then(|s| s.artifact.as_ref());
    let lookup = Lookup {
        registry,
        repo: &reference.repository,
        platform: source.spec.platform.as_deref(),
        known,
        ctx,
        deadline,
    };
    Ok(match pick(&lookup, reference, &highest, &consumer).await? {
        Some(p) => (p.resolved, Some(p.note)),
        None => (highest, None),
    })
}

impl Lookup<'_> {
    /// The engine requirements of the revision `digest`.
    async fn requirements(&self, digest: &Digest) -> Result<Vec<String>, OciError> {
        if let Some(a) = self.known.filter(|a| a.digest == digest.as_str()) {
            return Ok(a
                .config
                .as_ref()
                .map(engine_requirements_of)
                .unwrap_or_default());
        }
        let key = (digest.clone(), self.platform.map(String::from));
        if let Some(r) = self.ctx.engine_requirements(&key) {
            return Ok(r);
        }
        let r = self
            .deadline
            .run("requirements", self.fetch_requirements(digest))
            .await?;
        self.ctx.remember_engine_requirements(&key, r.clone());
        Ok(r)
    }

    /// The manifest (of an index: the one the source's platform takes, as a pull takes it)
    /// and, for a Falco rules or plugin artifact, its config blob of at most 1 MiB. Only
    /// bytes checked against their digests decide, never a registry's Content-Type.
    async fn fetch_requirements(&self, digest: &Digest) -> Result<Vec<String>, OciError> {
        let mut raw = self.fetch(digest).await?;
        if let Some(index) = as_index(&raw) {
            let entry = match self.platform {
                Some(platform::ALL) => platform::every_platform(&index)?.swap_remove(0).1,
                Some(p) => pull::pick_platform(&index, p)?,
                None => pull::pick_platform(&index, &pull::default_platform())?,
            };
            raw = self.fetch(&entry).await?;
            if as_index(&raw).is_some() {
                return Ok(Vec::new());
            }
        }
        let Ok(manifest) = serde_json::from_slice::<OciImageManifest>(&raw) else {
            return Ok(Vec::new());
        };
        let falco = matches!(
            manifest.config.media_type.as_str(),
            content::FALCO_RULES_CONFIG | content::FALCO_PLUGIN_CONFIG
        );
        if !falco || manifest.config.size <= 0 {
            return Ok(Vec::new());
        }
        let config = Digest::parse(&manifest.config.digest).map_err(|_| {
            OciError::InvalidManifest("the config descriptor's digest is not sha256".into())
        })?;
        let blob = self
            .registry
            .fetch_small_blob(self.repo, &config, 1024 * 1024)
            .await?;
        Ok(FalcoConfig::parse(&blob)
            .map(|c| engine_requirements_of(&c))
            .unwrap_or_default())
    }

    /// The bytes of manifest `digest`, checked against it.
    async fn fetch(&self, digest: &Digest) -> Result<bytes::Bytes, OciError> {
        let raw = self
            .registry
            .fetch_manifest(self.repo, digest.as_str(), Some(digest))
            .await?;
        Ok(raw.bytes)
    }
}

/// The image index `bytes` are, by their own content (a `manifests` list).
fn as_index(bytes: &[u8]) -> Option<OciImageIndex> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    value.get("manifests")?;
    serde_json::from_value(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::artifact_source::LocalObjectReference;
    use crate::api::rule_bundle::{BundleSource, FalcoConsumer, RuleBundleSpec};

    fn bundle(ns: &str, name: &str, sources: &[&str], engine: Option<&str>) -> RuleBundle {
        let mut b = RuleBundle::new(
            name,
            RuleBundleSpec {
                sources: sources
                    .iter()
                    .map(|s| BundleSource {
                        source_ref: LocalObjectReference {
                            name: s.to_string(),
                        },
                        include: vec![],
                    })
                    .collect(),
                falco: engine.map(|e| FalcoConsumer {
                    engine_version: Some(e.into()),
                    ..Default::default()
                }),
                config_map: Some(Default::default()),
                ..Default::default()
            },
        );
        b.metadata.namespace = Some(ns.into());
        b
    }

    #[test]
    fn the_oldest_falco_over_the_source_in_its_namespace_decides() {
        let bundles = [
            bundle("a", "new", &["rules"], Some("0.50.1")),
            bundle("a", "old", &["other", "rules"], Some("0.41.0")),
            bundle("a", "unnamed", &["rules"], None),
            bundle("a", "elsewhere", &["other"], Some("0.10.0")),
            bundle("b", "other-namespace", &["rules"], Some("0.9.0")),
            bundle("a", "ten", &["rules"], Some("0.100.0")),
        ];
        let mut idle = [
            bundle("a", "suspended", &["rules"], Some("0.1.0")),
            bundle("a", "no-target", &["rules"], Some("0.1.0")),
        ];
        idle[0].spec.suspend = true;
        idle[1].spec.config_map = None;
        let with_idle: Vec<&RuleBundle> = bundles.iter().chain(&idle).collect();
        assert_eq!(
            oldest_consumer(with_idle, "a", "rules").map(|c| c.bundle),
            Some("old".into()),
            "a suspended bundle or one without a target does not steer the pick"
        );
        assert_eq!(
            oldest_consumer(&bundles, "a", "rules"),
            Some(Consumer {
                bundle: "old".into(),
                engine: "0.41.0".into()
            })
        );
        assert_eq!(oldest_consumer(&bundles, "a", "nothing"), None);
        assert_eq!(oldest_consumer(&bundles[2..3], "a", "rules"), None);
    }

    #[test]
    fn candidates_are_the_matching_versions_below_the_highest_newest_first_and_bounded() {
        let range = semver::VersionReq::parse(">=1.0.0, <3").unwrap();
        let mut tags: Vec<String> = [
            "latest", "1.0.0", "v1.2.0", "2.0.0", "1.1.0", "3.0.0", "1.2.0",
        ]
        .map(String::from)
        .to_vec();
        let top = semver::Version::parse("2.0.0").unwrap();
        let got: Vec<&str> = candidates_below(&range, &tags, &top)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(
            got,
            ["v1.2.0", "1.1.0", "1.0.0"],
            "1.2.0 and v1.2.0 are one version"
        );
        tags.extend((0..100).map(|i| format!("1.5.{i}")));
        assert_eq!(candidates_below(&range, &tags, &top).len(), MAX_CANDIDATES);
        assert_eq!(candidates_below(&range, &tags, &top)[0].0, "1.5.99");
    }

    #[test]
    fn an_index_is_told_by_its_bytes_not_by_what_the_registry_calls_it() {
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "config":{"mediaType":"application/vnd.cncf.falco.rulesfile.config.v1+json","digest":"sha256:aa","size":1},"layers":[]}"#;
        assert!(
            as_index(manifest).is_none(),
            "a manifest calling itself an index"
        );
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(as_index(index).is_some());
        assert!(as_index(b"not json").is_none());
    }
}
