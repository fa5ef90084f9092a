//! `status.nodes` of a bundle with a `nodeFiles` target, from the Nodes' labels and the
//! agents' reports.

use std::collections::BTreeMap;

use crate::api::NodeReport;
use crate::api::reason::NodeReason;
use crate::api::rule_bundle::{NodeCounts, NodeFilesTarget};

/// The rollout of one revision over the selected nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub counts: NodeCounts,
    /// `node: Reason: message` for each failed node, sorted, at most a few.
    pub failures: Vec<String>,
}

/// Counts the nodes the target selects, those whose report says `revision` is applied for
/// the bundle `uid`, and those that report a failure. Only entries written for the bundle's
/// current `generation` count, as with a workload's `observedGeneration`: an agent still
/// acting on an older spec may be about to move its files away from `revision`. Reports of
/// unselected or unknown nodes do not count.
pub fn rollout<'a>(
    target: &NodeFilesTarget,
    uid: &str,
    generation: Option<i64>,
    revision: Option<&str>,
    nodes: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
    report_of: impl Fn(&str) -> Option<std::sync::Arc<NodeReport>>,
) -> Rollout {
    let mut r = Rollout::default();
    for (name, labels) in nodes {
        if !target.selects(labels) {
            continue;
        }
        r.counts.desired += 1;
        let report = report_of(name);
        let entry = report
            .as_ref()
            .and_then(|rep| rep.spec.bundles.iter().find(|b| b.uid == uid))
            .filter(|e| e.generation.is_some() && e.generation == generation);
        match entry {
            Some(e) if e.reason == NodeReason::Applied && e.revision.as_deref() == revision => {
                r.counts.updated += 1
            }
            Some(e) if e.is_failure() => {
                r.counts.failed += 1;
                r.failures
                    .push(format!("{name}: {}: {}", e.reason, e.message));
            }
            _ => {}
        }
    }
    r.failures.sort();
    r.failures.truncate(5);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodeReportSpec;
    use crate::api::node_report::BundleReport;
    use crate::api::rule_bundle::LabelSelector;

    /// A node's report whose entries were written for the bundle's generation `generation`.
    fn report_at(
        generation: i64,
        node: &str,
        entries: &[(&str, &str, Option<&str>)],
    ) -> (String, std::sync::Arc<NodeReport>) {
        let spec = NodeReportSpec {
            bundles: entries
                .iter()
                .map(|(uid, reason, rev)| BundleReport {
                    uid: uid.to_string(),
                    reason: (*reason).into(),
                    revision: rev.map(str::to_string),
                    message: "m".into(),
                    generation: Some(generation),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        (
            node.to_string(),
            std::sync::Arc::new(NodeReport::new(node, spec)),
        )
    }

    fn report(
        node: &str,
        entries: &[(&str, &str, Option<&str>)],
    ) -> (String, std::sync::Arc<NodeReport>) {
        report_at(7, node, entries)
    }

    #[test]
    fn counts_selected_nodes_only_and_the_current_revision_only() {
        let worker: BTreeMap<String, String> = [("role".to_string(), "w".to_string())].into();
        let infra: BTreeMap<String, String> = [("role".to_string(), "i".to_string())].into();
        let target = NodeFilesTarget {
            directory: "/etc/falco".into(),
            node_selector: Some(LabelSelector {
                match_labels: worker.clone(),
                ..Default::default()
            }),
        };
        let nodes = [
            ("n1", &worker),
            ("n2", &worker),
            ("n3", &worker),
            ("n4", &infra),
            ("n5", &worker),
            ("n6", &worker),
            ("n7", &worker),
        ];
        let reports: BTreeMap<_, _> = [
            report("n1", &[("u", "Applied", Some("r2"))]),
            report(
                "n2",
                &[
                    ("u", "Applied", Some("r1")),
                    ("other", "Applied", Some("r2")),
                ],
            ),
            report("n3", &[("u", "DirectoryNotAllowed", None)]),
            report("n4", &[("u", "Applied", Some("r2"))]),
            report("n5", &[("u", "Applying", None)]),
            // written for an older spec: the agent may still move away from r2
            report_at(6, "n6", &[("u", "Applied", Some("r2"))]),
            report_at(6, "n7", &[("u", "FetchFailed", None)]),
        ]
        .into();
        let r = rollout(&target, "u", Some(7), Some("r2"), nodes, |n| {
            reports.get(n).cloned()
        });
        assert_eq!(
            r.counts,
            NodeCounts {
                desired: 6,
                updated: 1,
                failed: 1
            }
        );
        assert_eq!(r.failures, ["n3: DirectoryNotAllowed: m"]);
    }
}
