//! Falco's requirements and dependencies, as falcoctl checks them: a revision whose config
//! blob requires a newer engine than the bundle's Falco is held back; a rules artifact
//! whose plugin dependency no source of the bundle provides is reported (or held back).
//! Versions compare as falcoctl does: the same major, and at least the required one.

use semver::Version;

use super::{BundleReason, Problem};
use crate::api::artifact_source::Artifact;
use crate::api::rule_bundle::{DependencyPolicy, FalcoConsumer};
use crate::oci::content::{FalcoConfig, FalcoDependency};

/// The requirement a rules file's engine version goes under (falcoctl's push).
pub const ENGINE_REQUIREMENT: &str = "engine_version_semver";

/// Checks every source's requirements against `consumer`; the dependencies no source
/// provides (empty when all are met), or `None` when no source declares any (or there is
/// no consumer). `sources` are (source name, artifact).
pub fn check(
    consumer: Option<&FalcoConsumer>,
    sources: &[(&str, &Artifact)],
) -> Result<Option<Vec<String>>, Problem> {
    let Some(consumer) = consumer else {
        return Ok(None);
    };
    if let Some(engine) = &consumer.engine_version {
        for (name, artifact) in sources {
            engine_met(name, artifact, engine)?;
        }
    }
    let declared = sources.iter().any(|(_, a)| {
        a.config
            .as_ref()
            .is_some_and(|c| !c.dependencies.is_empty())
    });
    if !declared {
        return Ok(None);
    }
    let missing = missing_dependencies(sources);
    if consumer.dependencies == DependencyPolicy::Block && !missing.is_empty() {
        return Err(Problem::new(
            BundleReason::DependencyMissing,
            missing.join("; "),
        ));
    }
    Ok(Some(missing))
}

fn engine_met(name: &str, artifact: &Artifact, engine: &str) -> Result<(), Problem> {
    let Some(config) = &artifact.config else {
        return Ok(());
    };
    for r in config
        .requirements
        .iter()
        .filter(|r| r.name == ENGINE_REQUIREMENT)
    {
        if !compatible(&r.version, engine) {
            let message = format!(
                "ArtifactSource {name} revision {} requires {} {}; spec.falco.engineVersion is {engine}",
                artifact.revision, r.name, r.version
            );
            return Err(Problem::new(BundleReason::RequirementsNotMet, message));
        }
    }
    Ok(())
}

/// The engine version an artifact's config blob requires, if any.
pub fn engine_requirement(artifact: &Artifact) -> Option<String> {
    engine_requirement_of(artifact.config.as_ref()?)
}

/// Every engine version a Falco config blob requires (a revision fits an engine that
/// meets them all, as [`check`] decides).
pub fn engine_requirements_of(config: &crate::oci::content::FalcoConfig) -> Vec<String> {
    config
        .requirements
        .iter()
        .filter(|r| r.name == ENGINE_REQUIREMENT)
        .map(|r| r.version.clone())
        .collect()
}

/// The engine version a Falco config blob requires, if any.
pub fn engine_requirement_of(config: &crate::oci::content::FalcoConfig) -> Option<String> {
    let r = config
        .requirements
        .iter()
        .find(|r| r.name == ENGINE_REQUIREMENT)?;
    Some(r.version.chars().take(64).collect())
}

/// Whether `have` meets `required`: same major, at least the version. A plain integer N
/// is `0.N.0` (how falcoctl turns a rules file's `required_engine_version` into semver);
/// a version that does not parse is not met.
pub fn compatible(required: &str, have: &str) -> bool {
    match (version(required), version(have)) {
        // precedence, as semver orders versions: build metadata does not count
        (Some(req), Some(have)) => req.major == have.major && have.cmp_precedence(&req).is_ge(),
        _ => false,
    }
}

/// The first few messages, and how many more: a message goes into a condition and a log.
pub fn summary(messages: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = messages
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if messages.len() > SHOWN {
        text.push_str(&format!("; and {} more", messages.len() - SHOWN));
    }
    text
}

fn version(s: &str) -> Option<Version> {
    let s = s.trim();
    if s.len() > 64 {
        return None;
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok().map(|minor| Version::new(0, minor, 0));
    }
    Version::parse(s.strip_prefix('v').unwrap_or(s)).ok()
}

/// The dependencies of every source that no source's config (name and version) meets,
/// alternatives included, as messages.
fn missing_dependencies(sources: &[(&str, &Artifact)]) -> Vec<String> {
    let provided: Vec<&FalcoConfig> = sources
        .iter()
        .filter_map(|(_, a)| a.config.as_ref())
        .collect();
    let mut missing = Vec::new();
    for (name, artifact) in sources {
        let Some(config) = &artifact.config else {
            continue;
        };
        for dep in &config.dependencies {
            if !met(dep, &provided) {
                missing.push(format!(
                    "ArtifactSource {name} needs {} {} and no source of the bundle provides it",
                    dep.name, dep.version
                ));
            }
        }
    }
    missing
}

fn met(dep: &FalcoDependency, provided: &[&FalcoConfig]) -> bool {
    let provides = |want: &str, version: &str| {
        provided.iter().any(|c| {
            c.name.as_deref() == Some(want)
                && c.version
                    .as_deref()
                    .is_some_and(|have| compatible(version, have))
        })
    };
    provides(&dep.name, &dep.version)
        || dep
            .alternatives
            .iter()
            .any(|a| provides(&a.name, &a.version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::content::{FalcoAlternative, FalcoRequirement};

    fn artifact(
        name: &str,
        version: &str,
        requires: &[(&str, &str)],
        deps: Vec<FalcoDependency>,
    ) -> Artifact {
        let requirements = requires
            .iter()
            .map(|(n, v)| FalcoRequirement {
                name: n.to_string(),
                version: v.to_string(),
            })
            .collect();
        let config = FalcoConfig {
            name: Some(name.into()),
            version: Some(version.into()),
            dependencies: deps,
            requirements,
        };
        Artifact {
            revision: format!("{version}@sha256:x"),
            config: Some(config),
            ..Artifact::default()
        }
    }

    fn dep(name: &str, version: &str, alternatives: &[(&str, &str)]) -> FalcoDependency {
        let alternatives = alternatives
            .iter()
            .map(|(n, v)| FalcoAlternative {
                name: n.to_string(),
                version: v.to_string(),
            })
            .collect();
        FalcoDependency {
            name: name.into(),
            version: version.into(),
            alternatives,
        }
    }

    fn consumer(engine: Option<&str>, dependencies: DependencyPolicy) -> FalcoConsumer {
        FalcoConsumer {
            engine_version: engine.map(String::from),
            dependencies,
            ..FalcoConsumer::default()
        }
    }

    #[test]
    fn versions_compare_as_falcoctl_compares_them() {
        for (required, have, ok) in [
            ("0.31.0", "0.31.0", true),
            ("0.31.0", "0.41.2", true),
            ("0.41.0", "0.40.9", false),
            ("1.0.0", "0.99.0", false),
            ("0.31.0", "1.0.0", false), // another major
            ("26", "0.26.0", true),     // an integer engine version is 0.N.0
            ("27", "0.26.5", false),
            ("v0.3.0", "0.3.1", true),
            ("not a version", "1.0.0", false),
            ("0.41.0+build.7", "0.41.0", true), // build metadata has no precedence
            ("0.50.0-rc1", "0.49.9", false),
            ("0.50.0", "0.50.0-rc1", false),
            ("0.31.0", "", false),
        ] {
            assert_eq!(compatible(required, have), ok, "{required} against {have}");
        }
    }

    #[test]
    fn a_revision_requiring_a_newer_engine_is_held_back_naming_both_versions() {
        let rules = artifact(
            "falco-rules",
            "5.0.0",
            &[(ENGINE_REQUIREMENT, "0.50.0"), ("other", "9.0.0")],
            vec![],
        );
        let old = consumer(Some("0.41.0"), DependencyPolicy::Warn);
        let e = check(Some(&old), &[("rules", &rules)]).expect_err("held back");
        assert_eq!(e.reason, BundleReason::RequirementsNotMet);
        assert!(
            e.message.contains("0.50.0")
                && e.message.contains("0.41.0")
                && e.message.contains("rules"),
            "{}",
            e.message
        );
        let new = consumer(Some("0.50.1"), DependencyPolicy::Warn);
        assert_eq!(
            check(Some(&new), &[("rules", &rules)]),
            Ok(None),
            "requirements other than the engine's are not the bundle's to check"
        );
        assert_eq!(
            check(None, &[("rules", &rules)]),
            Ok(None),
            "no spec.falco: nothing checked"
        );
    }

    #[test]
    fn dependencies_are_met_by_a_source_alternatives_included_and_otherwise_warn_or_block() {
        let rules = artifact(
            "k8saudit-rules",
            "0.11.0",
            &[],
            vec![dep("k8saudit", "0.7.0", &[("k8saudit-eks", "0.5.0")])],
        );
        let warn = consumer(None, DependencyPolicy::Warn);
        let missing = check(Some(&warn), &[("rules", &rules)])
            .expect("warn applies")
            .expect("declared");
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("k8saudit 0.7.0"), "{missing:?}");
        let block = consumer(None, DependencyPolicy::Block);
        assert_eq!(
            check(Some(&block), &[("rules", &rules)]).map_err(|e| e.reason),
            Err(BundleReason::DependencyMissing)
        );
        for (plugin, version, met) in [
            ("k8saudit", "0.7.3", true),
            ("k8saudit", "0.6.0", false),
            ("k8saudit", "1.0.0", false),
            ("k8saudit-eks", "0.5.0", true),
        ] {
            let p = artifact(plugin, version, &[], vec![]);
            let got = check(Some(&block), &[("rules", &rules), ("plugin", &p)]).is_ok();
            assert_eq!(got, met, "{plugin} {version}");
        }
    }
}
