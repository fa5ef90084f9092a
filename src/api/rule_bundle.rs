//! `RuleBundle`: which files from which ArtifactSources a consumer needs, and where they go.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::artifact_source::LocalObjectReference;
use super::condition::Condition;

/// Selects files from ready ArtifactSources and materialises them as a ConfigMap and/or as
/// files on nodes.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "ocisync.dev",
    version = "v1alpha1",
    kind = "RuleBundle",
    namespaced,
    status = "RuleBundleStatus",
    shortname = "rb",
    category = "ocisync",
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.nodes.updated"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RuleBundleSpec {
    /// The ArtifactSources to take files from (at most 32); order matters only for listing.
    #[schemars(length(min = 1, max = 32))]
    pub sources: Vec<BundleSource>,
    /// Write the selected files into a ConfigMap in the bundle's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapTarget>,
    /// Write the selected files onto the selected nodes (by the node agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_files: Option<NodeFilesTarget>,
    /// Stop updating the targets; what is there stays.
    #[serde(default)]
    pub suspend: bool,
    /// The Falco that reads the bundle: revisions whose config blob requires more are held
    /// back (`RequirementsNotMet`), and rules' plugin dependencies are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub falco: Option<FalcoConsumer>,
}

/// What a bundle knows of the Falco that consumes it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FalcoConsumer {
    /// The rules engine version of that Falco (`falco --version` prints it as "Engine"),
    /// checked against each artifact's `engine_version_semver` requirement: same major,
    /// at least the minor and patch (falcoctl's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = "^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)$"))]
    pub engine_version: Option<String>,
    /// A Node label holding the engine version of the Falco on that node: each node's
    /// agent checks the revision against it, and a node whose Falco is older (or whose
    /// label is missing) reports `RequirementsNotMet` and keeps the files it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub engine_version_from_node_label: Option<String>,
    /// A rules artifact that depends on a plugin no source of the bundle provides at a
    /// compatible version: `Warn` (default) sets `DependenciesMet=False` and applies it,
    /// `Block` holds it back with `DependencyMissing`.
    #[serde(default)]
    pub dependencies: DependencyPolicy,
}

/// What a missing dependency does.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum DependencyPolicy {
    #[default]
    Warn,
    Block,
}

/// One source of files.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleSource {
    /// An ArtifactSource in the same namespace.
    pub source_ref: LocalObjectReference,
    /// Glob patterns over the artifact's file paths (`*.yaml`), at most 64 of at most 256
    /// characters each; default: every file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    pub include: Vec<String>,
}

/// The ConfigMap target.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct ConfigMapTarget {
    /// Name of the ConfigMap; default: the bundle's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Extra labels for the ConfigMap.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations for the ConfigMap.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The node files target.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeFilesTarget {
    /// Absolute directory on the node; must be inside one of the agent's allowed directories.
    #[schemars(extend("pattern" = "^/"))]
    pub directory: String,
    /// Which nodes get the files; default: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

/// A label selector, as in `metav1.LabelSelector`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels a node must have, all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// A set-based label requirement.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// One of `In`, `NotIn`, `Exists`, `DoesNotExist`.
    #[schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist"]))]
    pub operator: String,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether a set of labels satisfies every requirement (an empty selector selects all).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => !value.is_some_and(|v| r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false, // the schema allows no other operator
                }
            })
    }
}

impl NodeFilesTarget {
    /// Whether a node with these labels is selected.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .as_ref()
            .is_none_or(|s| s.matches(labels))
    }
}

/// Observed state of a RuleBundle.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleBundleStatus {
    /// The metadata.generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, plus `Reconciling` or `Stalled` while they apply.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Digest over the ordered source revisions and the file selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The source revisions the bundle was built from.
    #[serde(default)]
    pub sources: Vec<SourceRevision>,
    /// The files in the bundle.
    #[serde(default)]
    pub files: Vec<BundleFile>,
    /// The ConfigMap written, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapStatus>,
    /// Node rollout counts, aggregated from the agents' reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,
}

/// A source and the revision the bundle used.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct SourceRevision {
    /// The ArtifactSource's name.
    pub name: String,
    /// Its artifact revision.
    pub revision: String,
    /// The engine version (`engine_version_semver`) that revision requires, for agents
    /// that check it against their node's Falco (`spec.falco.engineVersionFromNodeLabel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
}

/// A file in the bundle.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct BundleFile {
    /// Path inside the bundle.
    pub path: String,
    /// The ArtifactSource it came from.
    pub source: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// The platform (`os/arch[/variant]`) the file is for, from a source with
    /// `platform: all`: a node takes it only when it is the node's platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// The ConfigMap written for a bundle.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct ConfigMapStatus {
    /// Its name.
    pub name: String,
}

/// How many selected nodes have the current revision.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct NodeCounts {
    /// Nodes the bundle selects.
    pub desired: i32,
    /// Nodes that report the current revision.
    pub updated: i32,
    /// Nodes that report a failure.
    pub failed: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let node = labels(&[("role", "worker"), ("zone", "a")]);
        assert!(LabelSelector::default().matches(&node));
        let by_label = LabelSelector {
            match_labels: labels(&[("role", "worker")]),
            ..Default::default()
        };
        assert!(by_label.matches(&node));
        assert!(!by_label.matches(&labels(&[("role", "infra")])));
        for (r, want) in [
            (req("zone", "In", &["a", "b"]), true),
            (req("zone", "In", &["c"]), false),
            (req("zone", "NotIn", &["c"]), true),
            (req("gpu", "NotIn", &["x"]), true),
            (req("zone", "Exists", &[]), true),
            (req("gpu", "Exists", &[]), false),
            (req("gpu", "DoesNotExist", &[]), true),
            (req("zone", "Bogus", &[]), false),
        ] {
            let s = LabelSelector {
                match_expressions: vec![r.clone()],
                ..Default::default()
            };
            assert_eq!(s.matches(&node), want, "{r:?}");
        }
        let none = NodeFilesTarget::default();
        assert!(none.selects(&node), "no selector: every node");
    }
}
