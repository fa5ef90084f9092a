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
    let failed = bundles.iter().filter(|b| b.is_failure()).count();
    NodeReportSpec {
        applied: i32::try_from(applied).unwrap_or(i32::MAX),
        failed: i32::try_from(failed).unwrap_or(i32::MAX),
        bundles,
    }
}

/// The report as it must be before the files of bundle `uid` change on disk, or `None`
/// when no write is needed: a report that says a revision other than `keeps` is applied
/// would turn false at the swap, and stay false if the agent died before its next report
/// (then a bundle going back to that revision would count this node as updated while the
/// node holds another). The claim is replaced by `replacement`, or dropped. An unknown
/// report (`known` is `None`) may claim anything.
pub fn withdraw(
    known: Option<&NodeReportSpec>,
    uid: &str,
    keeps: Option<&str>,
    replacement: Option<BundleReport>,
) -> Option<NodeReportSpec> {
    let claims_other = |b: &BundleReport| {
        b.uid == uid && b.reason == reason::APPLIED && b.revision.as_deref() != keeps
    };
    let mut bundles = match known {
        None => Vec::new(),
        Some(k) if !k.bundles.iter().any(claims_other) => return None,
        Some(k) => k.bundles.iter().filter(|b| b.uid != uid).cloned().collect(),
    };
    bundles.extend(replacement);
    bundles.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Some(spec(bundles))
}

/// Reads and writes this node's report.
pub struct Reporter {
    pub api: Api<NodeReport>,
    pub node: String,
}

impl Reporter {
    /// The report as stored now (empty when there is none), or `None` when it cannot be read.
    pub async fn read(&self) -> Option<NodeReportSpec> {
        match self.api.get_opt(&self.node).await {
            Ok(r) => Some(r.map(|r| r.spec).unwrap_or_default()),
            Err(e) => {
                tracing::warn!(error = %crate::controller::api_error_summary(&e), "cannot read the NodeReport");
                None
            }
        }
    }

    /// Writes the report with server-side apply, owned by the Node so it goes with it.
    pub async fn write(&self, node_uid: &str, spec: &NodeReportSpec) -> Result<(), kube::Error> {
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid: node_uid.into(),
            ..OwnerReference::default()
        };
        let body = serde_json::json!({
            "apiVersion": "ocisync.dev/v1alpha1",
            "kind": "NodeReport",
            "metadata": {"name": self.node, "ownerReferences": [owner]},
            "spec": spec,
        });
        self.api
            .patch(
                &self.node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await?;
        Ok(())
    }
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

    fn claim(uid: &str, reason: &str, revision: Option<&str>) -> BundleReport {
        BundleReport {
            name: uid.into(),
            uid: uid.into(),
            reason: reason.into(),
            revision: revision.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn a_claim_of_another_revision_is_withdrawn_before_the_swap() {
        let known = spec(vec![
            claim("a", "Applied", Some("r1")),
            claim("b", "Applied", Some("r1")),
        ]);
        let applying = claim("a", "Applying", None);
        let w = withdraw(Some(&known), "a", Some("r2"), Some(applying.clone())).unwrap();
        assert_eq!(w.bundles, vec![applying, claim("b", "Applied", Some("r1"))]);
        assert_eq!((w.applied, w.failed), (1, 0));
        // a removal drops the entry
        let w = withdraw(Some(&known), "a", None, None).unwrap();
        assert_eq!(w.bundles, vec![claim("b", "Applied", Some("r1"))]);
    }

    #[test]
    fn no_write_when_the_report_claims_nothing_a_swap_can_falsify() {
        let known = spec(vec![
            claim("a", "Applied", Some("r2")),
            claim("b", "FetchFailed", Some("r1")),
            claim("c", "Applying", None),
        ]);
        // repairing drift of the claimed revision keeps the claim true
        assert_eq!(withdraw(Some(&known), "a", Some("r2"), None), None);
        assert_eq!(withdraw(Some(&known), "b", Some("r2"), None), None);
        assert_eq!(withdraw(Some(&known), "c", Some("r2"), None), None);
        assert_eq!(withdraw(Some(&known), "new", Some("r2"), None), None);
    }

    #[test]
    fn an_unknown_report_is_replaced_by_the_withdrawal_alone() {
        let applying = claim("a", "Applying", None);
        let w = withdraw(None, "a", Some("r2"), Some(applying.clone())).unwrap();
        assert_eq!(w.bundles, vec![applying]);
        assert_eq!(withdraw(None, "a", None, None).unwrap().bundles, vec![]);
    }

    #[test]
    fn counts_applied_and_failed_but_not_waiting() {
        let s = spec(vec![
            entry("Applied"),
            entry("Applied"),
            entry("Waiting"),
            entry("Applying"),
            entry("FetchFailed"),
        ]);
        assert_eq!((s.applied, s.failed), (2, 1));
    }
}
