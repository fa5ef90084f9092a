//! The node's report: one `NodeReport` named after the node, written only by its agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};

use super::desired::reason;
use crate::api::FIELD_MANAGER;
use crate::api::node_report::{BundleReport, NodeReport, NodeReportSpec};

/// The report's spec from the per-bundle outcomes.
pub fn spec(bundles: Vec<BundleReport>) -> NodeReportSpec {
    let applied = bundles
        .iter()
        .filter(|b| b.reason == reason::APPLIED)
        .count();
    let failed = bundles
        .iter()
        .filter(|b| b.reason != reason::APPLIED && b.reason != reason::WAITING)
        .count();
    NodeReportSpec {
        applied: i32::try_from(applied).unwrap_or(i32::MAX),
        failed: i32::try_from(failed).unwrap_or(i32::MAX),
        bundles,
    }
}

/// Writes the report with server-side apply, owned by the Node so it goes with it.
pub async fn write(
    api: &Api<NodeReport>,
    node: &str,
    node_uid: &str,
    spec: &NodeReportSpec,
) -> Result<(), kube::Error> {
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: node_uid.into(),
        ..OwnerReference::default()
    };
    let body = serde_json::json!({
        "apiVersion": "ocisync.dev/v1alpha1",
        "kind": "NodeReport",
        "metadata": {"name": node, "ownerReferences": [owner]},
        "spec": spec,
    });
    api.patch(
        node,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(reason: &str) -> BundleReport {
        BundleReport {
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_applied_and_failed_but_not_waiting() {
        let s = spec(vec![
            entry("Applied"),
            entry("Applied"),
            entry("Waiting"),
            entry("FetchFailed"),
        ]);
        assert_eq!((s.applied, s.failed), (2, 1));
    }
}
