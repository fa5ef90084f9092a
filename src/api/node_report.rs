//! `NodeReport`: what the agent on one node applied, per bundle. One object per node, named
//! after the node and written only by that node's agent, so agents never contend; the
//! controller reads them all to fill `RuleBundle.status.nodes`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::reason::ReportedReason;

/// The bundles one node's agent has applied or failed to apply. Written only by the agent
/// on the node of the same name; removed with the Node (owner reference) and by the
/// controller when its Node is gone.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "ocisync.dev",
    version = "v1alpha1",
    kind = "NodeReport",
    shortname = "nrep",
    category = "ocisync",
    printcolumn = r#"{"name":"Bundles","type":"integer","jsonPath":".spec.applied"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".spec.failed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeReportSpec {
    /// How many bundles are applied at their current revision.
    #[serde(default)]
    pub applied: i32,
    /// How many bundles failed on this node.
    #[serde(default)]
    pub failed: i32,
    /// One entry per bundle selecting this node, sorted by namespace and name.
    #[serde(default)]
    pub bundles: Vec<BundleReport>,
    /// Entries left out (the last ones) to keep the report under the API server's object
    /// size limit; the counts above still cover them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The outcome of one bundle on one node.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleReport {
    /// The RuleBundle's namespace.
    pub namespace: String,
    /// The RuleBundle's name.
    pub name: String,
    /// The RuleBundle's uid, so a re-created bundle is not mistaken for the old one.
    pub uid: String,
    /// The RuleBundle's `metadata.generation` this entry was written for (the controller
    /// counts only entries of the current generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The bundle revision whose files are on disk now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `Applied`; `Waiting` (no revision planned yet), `Applying` or `Removing` (files are
    /// changing; written before they do); or why the current revision is not on disk
    /// (`DirectoryNotAllowed`, `FetchFailed`, `DigestMismatch`, `WriteFailed`,
    /// `FileConflict`, `InvalidPath`, `ReportFailed`, `QuotaExceeded`,
    /// `InsufficientSpace`).
    pub reason: ReportedReason,
    /// Details for a failure.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl BundleReport {
    /// True for a failure: neither applied nor in progress (`Waiting`, `Applying`,
    /// `Removing`); a reason this build does not know (a newer agent's) is a failure.
    pub fn is_failure(&self) -> bool {
        self.reason.class().is_failure()
    }
}
