//! The node's report: one `NodeReport` named after the node, written only by its agent.
//!
//! Every write is conditional on the report's `resourceVersion` as last read or written, and
//! carries this agent process's instance in an annotation, so its first write changes the
//! report. From then on no write of a predecessor (a request still in flight when that
//! agent was killed) can land: its version is stale. What the agent knows of its report is
//! therefore exactly what the report says.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};

use crate::api::FIELD_MANAGER;
use crate::api::node_report::{BundleReport, NodeReport, NodeReportSpec};
use crate::api::reason::{Class, NodeReason, ReportedReason};

/// The most bytes of entries one report holds: well under etcd's object limit (1.5 MiB by
/// default), whatever the number of bundles or the length of their messages.
pub const MAX_ENTRY_BYTES: usize = 768 << 10;
/// The longest message kept in an entry, in characters.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// The reason that decides when the next pass comes and labels the pass's metric: the most
/// pressing failure (transient before waiting before stalled), else `Applied`.
pub fn deciding_reason(bundles: &[BundleReport]) -> NodeReason {
    let urgency = |r: &NodeReason| match r.class() {
        Class::Transient => 3,
        Class::Waiting => 2,
        Class::Stalled => 1,
        Class::Ready | Class::Progressing => 0,
    };
    bundles
        .iter()
        .filter_map(|b| match &b.reason {
            ReportedReason::Known(r) if r.class().is_failure() => Some(*r),
            _ => None,
        })
        .max_by_key(urgency)
        .unwrap_or(NodeReason::Applied)
}

/// The report's spec from the per-bundle outcomes, bounded in size: long messages are cut,
/// then, past [`MAX_ENTRY_BYTES`], messages are dropped from the last entries, then the last
/// entries themselves (counted in `omitted`; the counts cover every bundle).
pub fn spec(bundles: Vec<BundleReport>) -> NodeReportSpec {
    spec_within(bundles, MAX_ENTRY_BYTES)
}

fn spec_within(mut bundles: Vec<BundleReport>, max_bytes: usize) -> NodeReportSpec {
    let applied = bundles
        .iter()
        .filter(|b| b.reason == NodeReason::Applied)
        .count();
    let failed = bundles.iter().filter(|b| b.is_failure()).count();
    for b in &mut bundles {
        if let Some((cut, _)) = b.message.char_indices().nth(MAX_MESSAGE_CHARS) {
            b.message.truncate(cut);
            b.message.push('…');
        }
    }
    let size = |b: &BundleReport| serde_json::to_vec(b).map_or(usize::MAX, |v| v.len() + 1);
    let mut total = bundles.iter().map(size).fold(0usize, usize::saturating_add);
    for b in bundles.iter_mut().rev() {
        if total <= max_bytes {
            break;
        }
        let before = size(b);
        b.message.clear();
        total = total.saturating_sub(before.saturating_sub(size(b)));
    }
    let mut omitted = 0usize;
    while total > max_bytes {
        let Some(last) = bundles.pop() else { break };
        total = total.saturating_sub(size(&last));
        omitted += 1;
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    NodeReportSpec {
        applied: count(applied),
        failed: count(failed),
        omitted: count(omitted),
        bundles,
    }
}

/// The report as it must be before the files of bundle `uid` change on disk, or `None`
/// when no write is needed: a report that says a revision other than `keeps` is applied
/// would turn false at the swap, and stay false if the agent died before its next report
/// (then a bundle going back to that revision would count this node as updated while the
/// node holds another). The claim is replaced by `replacement`, or dropped.
pub fn withdraw(
    known: &NodeReportSpec,
    uid: &str,
    keeps: Option<&str>,
    replacement: Option<BundleReport>,
) -> Option<NodeReportSpec> {
    let claims_other = |b: &BundleReport| {
        b.uid == uid && b.reason == NodeReason::Applied && b.revision.as_deref() != keeps
    };
    if !known.bundles.iter().any(claims_other) {
        return None;
    }
    let (gone, mut bundles): (Vec<BundleReport>, Vec<BundleReport>) =
        known.bundles.iter().cloned().partition(|b| b.uid == uid);
    let counts = |entries: &[BundleReport]| {
        let s = spec_within(entries.to_vec(), usize::MAX);
        (i64::from(s.applied), i64::from(s.failed))
    };
    let (gone_applied, gone_failed) = counts(&gone);
    let (new_applied, new_failed) = counts(replacement.as_slice());
    bundles.extend(replacement);
    bundles.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    // The counts and `omitted` also cover the entries a bounded report left out.
    let mut next = spec(bundles);
    let adjust = |count: i32, minus: i64, plus: i64| {
        let n = i64::from(count) - minus + plus;
        i32::try_from(n.max(0)).unwrap_or(i32::MAX)
    };
    next.applied = adjust(known.applied, gone_applied, new_applied);
    next.failed = adjust(known.failed, gone_failed, new_failed);
    next.omitted = next.omitted.saturating_add(known.omitted);
    Some(next)
}

/// The annotation naming the agent process that last wrote the report.
pub const INSTANCE_ANNOTATION: &str = "ocisync.dev/agent-instance";

/// The report as this agent last read or wrote it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Known {
    pub spec: NodeReportSpec,
    /// `None` when there is no report yet.
    pub version: Option<String>,
    /// The instance that wrote it.
    pub instance: Option<String>,
}

impl Known {
    fn of(report: NodeReport) -> Known {
        Known {
            instance: report
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INSTANCE_ANNOTATION).cloned()),
            version: report.metadata.resource_version,
            spec: report.spec,
        }
    }
}

/// Reads and writes this node's report.
pub struct Reporter {
    pub api: Api<NodeReport>,
    pub node: String,
    /// This agent process, unique per start.
    pub instance: String,
}

impl Reporter {
    pub fn new(api: Api<NodeReport>, node: String) -> Reporter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Reporter {
            api,
            node,
            instance: format!("{}-{nanos:x}", std::process::id()),
        }
    }

    /// The report as stored now (empty, with no version, when there is none).
    pub async fn read(&self) -> Result<Known, kube::Error> {
        Ok(self
            .api
            .get_opt(&self.node)
            .await?
            .map(Known::of)
            .unwrap_or_default())
    }

    /// Writes the report with server-side apply, owned by the Node so it goes with it, on the
    /// condition that it is still at `version` (none: it may be created).
    pub async fn write(
        &self,
        node_uid: &str,
        spec: &NodeReportSpec,
        version: Option<&str>,
    ) -> Result<Known, kube::Error> {
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid: node_uid.into(),
            ..OwnerReference::default()
        };
        let mut body = serde_json::json!({
            "apiVersion": "ocisync.dev/v1alpha1",
            "kind": "NodeReport",
            "metadata": {
                "name": self.node,
                "ownerReferences": [owner],
                "annotations": {INSTANCE_ANNOTATION: self.instance},
            },
            "spec": spec,
        });
        if let Some(v) = version {
            body["metadata"]["resourceVersion"] = v.into();
        }
        let written = self
            .api
            .patch(
                &self.node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await?;
        Ok(Known::of(written))
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

    #[test]
    fn the_most_pressing_failure_decides_the_next_pass() {
        let pass = |reasons: &[&str]| {
            let entries: Vec<BundleReport> = reasons.iter().map(|r| entry(r)).collect();
            deciding_reason(&entries)
        };
        assert_eq!(pass(&[]), NodeReason::Applied);
        assert_eq!(
            pass(&["Applied", "Applying", "Waiting"]),
            NodeReason::Applied
        );
        assert_eq!(
            pass(&["InvalidPath", "FileConflict", "Applied"]),
            NodeReason::FileConflict
        );
        assert_eq!(
            pass(&["InsufficientSpace", "FetchFailed", "DirectoryNotAllowed"]),
            NodeReason::FetchFailed
        );
        assert_eq!(
            pass(&["DirectoryNotAllowed"]),
            NodeReason::DirectoryNotAllowed
        );
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
        let w = withdraw(&known, "a", Some("r2"), Some(applying.clone())).unwrap();
        assert_eq!(w.bundles, vec![applying, claim("b", "Applied", Some("r1"))]);
        assert_eq!((w.applied, w.failed), (1, 0));
        // a removal drops the entry
        let w = withdraw(&known, "a", None, None).unwrap();
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
        assert_eq!(withdraw(&known, "a", Some("r2"), None), None);
        assert_eq!(withdraw(&known, "b", Some("r2"), None), None);
        assert_eq!(withdraw(&known, "c", Some("r2"), None), None);
        assert_eq!(withdraw(&known, "new", Some("r2"), None), None);
    }

    #[test]
    fn a_report_stays_within_its_size_whatever_the_bundles() {
        let long = |i: usize| BundleReport {
            namespace: "ns".into(),
            name: format!("b{i:05}"),
            uid: format!("{i:036}"),
            reason: "FetchFailed".into(),
            message: "x".repeat(10_000),
            ..Default::default()
        };
        let s = spec(vec![long(0)]);
        assert_eq!(s.bundles[0].message.chars().count(), MAX_MESSAGE_CHARS + 1);
        // messages go first, from the last entries
        let s = spec((0..2_000).map(long).collect());
        assert_eq!((s.omitted, s.bundles.len()), (0, 2_000));
        assert!(serde_json::to_vec(&s).unwrap().len() <= MAX_ENTRY_BYTES + 100);
        assert!(
            !s.bundles[0].message.is_empty(),
            "first entries keep theirs"
        );
        assert!(s.bundles[1_999].message.is_empty());
        // then the last entries, counted
        let s = spec((0..20_000).map(long).collect());
        let bytes = serde_json::to_vec(&s).unwrap().len();
        assert!(bytes <= MAX_ENTRY_BYTES + 100, "{bytes}");
        assert_eq!(s.failed, 20_000, "counts cover every bundle");
        assert!(s.omitted > 0 && s.bundles.len() + s.omitted as usize == 20_000);
        // small reports are untouched
        let s = spec_within(vec![long(1)], 1 << 20);
        assert_eq!((s.omitted, s.bundles.len()), (0, 1));
    }

    #[test]
    fn a_withdrawal_from_a_bounded_report_keeps_the_counts_of_what_it_left_out() {
        let entry = |i: usize| BundleReport {
            namespace: "ns".into(),
            name: format!("{i:05}{}", "n".repeat(240)),
            uid: format!("{i:036}"),
            revision: Some("r1".into()),
            reason: "Applied".into(),
            ..Default::default()
        };
        let full = spec((0..4000).map(entry).collect());
        assert_eq!(full.applied, 4000);
        assert!(full.omitted > 0);
        let applying = BundleReport {
            reason: "Applying".into(),
            revision: None,
            ..entry(0)
        };
        let w = withdraw(&full, &format!("{:036}", 0), Some("r2"), Some(applying)).unwrap();
        assert_eq!((w.applied, w.failed), (3999, 0));
        assert_eq!(w.omitted, full.omitted);
        assert_eq!(w.bundles.len(), full.bundles.len());
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
