//! RuleBundle status after each outcome: pure functions of the previous status.

use super::nodes::Rollout;
use super::plan::Plan;
use super::{Problem, reason};
use crate::api::condition::{
    ConditionType, Status, remove_condition, set_condition, settle, stall,
};
use crate::api::rule_bundle::{ConfigMapStatus, RuleBundleStatus};

/// The ConfigMap (if any) holds `plan`'s revision; `Ready` also waits for the nodes when
/// there is a `nodeFiles` target (`rollout`).
pub fn applied(
    prev: &RuleBundleStatus,
    generation: Option<i64>,
    plan: &Plan,
    config_map: Option<String>,
    rollout: Option<&Rollout>,
    now: &str,
) -> RuleBundleStatus {
    let mut s = prev.clone();
    s.observed_generation = generation;
    s.revision = Some(plan.revision.clone());
    s.sources = plan.sources.clone();
    s.files = plan.status_files();
    let message = match &config_map {
        Some(name) => format!(
            "{} files from {} sources in ConfigMap {name}",
            plan.files.len(),
            plan.sources.len()
        ),
        None => format!(
            "{} files from {} sources",
            plan.files.len(),
            plan.sources.len()
        ),
    };
    s.config_map = config_map.map(|name| ConfigMapStatus { name });
    s.nodes = rollout.map(|r| r.counts.clone());
    match rollout {
        Some(r) if r.counts.failed > 0 => settle(
            &mut s.conditions,
            Status::False,
            reason::NODE_FAILED,
            &format!(
                "{} of {} nodes failed: {}",
                r.counts.failed,
                r.counts.desired,
                r.failures.join("; ")
            ),
            generation,
            now,
        ),
        Some(r) if r.counts.updated < r.counts.desired => {
            let progress = format!(
                "{} of {} nodes have revision {}",
                r.counts.updated, r.counts.desired, plan.revision
            );
            set_condition(
                &mut s.conditions,
                ConditionType::Ready,
                Status::False,
                reason::NODES_PENDING,
                &progress,
                generation,
                now,
            );
            set_condition(
                &mut s.conditions,
                ConditionType::Reconciling,
                Status::True,
                reason::NODES_PENDING,
                &progress,
                generation,
                now,
            );
            remove_condition(&mut s.conditions, ConditionType::Stalled);
        }
        _ => {
            let message = match rollout {
                Some(r) => format!(
                    "{message}, on {} of {} nodes",
                    r.counts.updated, r.counts.desired
                ),
                None => message,
            };
            settle(
                &mut s.conditions,
                Status::True,
                reason::SUCCEEDED,
                &message,
                generation,
                now,
            )
        }
    }
    s
}

/// The bundle could not be brought up to date: what was applied stays, and says so.
/// An invalid spec also sets `Stalled`.
pub fn failed(
    prev: &RuleBundleStatus,
    generation: Option<i64>,
    problem: &Problem,
    now: &str,
) -> RuleBundleStatus {
    let mut s = prev.clone();
    s.observed_generation = generation;
    let message = match &prev.revision {
        Some(r) => format!("{} (keeping revision {r})", problem.message),
        None => problem.message.clone(),
    };
    if problem.reason == reason::INVALID_SPEC {
        stall(&mut s.conditions, problem.reason, &message, generation, now);
    } else {
        settle(
            &mut s.conditions,
            Status::False,
            problem.reason,
            &message,
            generation,
            now,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::condition::find;
    use crate::api::rule_bundle::NodeCounts;

    #[test]
    fn ready_waits_for_every_selected_node() {
        let rollout = |desired, updated, failed| Rollout {
            counts: NodeCounts {
                desired,
                updated,
                failed,
            },
            failures: if failed > 0 {
                vec!["n1: DirectoryNotAllowed: /etc".into()]
            } else {
                vec![]
            },
        };
        let p = plan("sha256:a");
        let base = RuleBundleStatus::default();
        let pending = applied(&base, Some(1), &p, None, Some(&rollout(2, 1, 0)), "t");
        let r = find(&pending.conditions, ConditionType::Ready).unwrap();
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "NodesPending")
        );
        assert!(r.message.contains("1 of 2 nodes"));
        assert!(find(&pending.conditions, ConditionType::Reconciling).is_some());
        let failed = applied(&base, Some(1), &p, None, Some(&rollout(2, 1, 1)), "t");
        let r = find(&failed.conditions, ConditionType::Ready).unwrap();
        assert_eq!(r.reason, "NodeFailed");
        assert!(r.message.contains("n1: DirectoryNotAllowed"));
        let done = applied(&pending, Some(1), &p, None, Some(&rollout(2, 2, 0)), "t");
        assert_eq!(
            find(&done.conditions, ConditionType::Ready).unwrap().status,
            "True"
        );
        assert!(find(&done.conditions, ConditionType::Reconciling).is_none());
        assert_eq!(done.nodes.as_ref().map(|n| n.updated), Some(2));
        let none_selected = applied(&base, Some(1), &p, None, Some(&rollout(0, 0, 0)), "t");
        assert_eq!(
            find(&none_selected.conditions, ConditionType::Ready)
                .unwrap()
                .status,
            "True"
        );
    }

    fn plan(rev: &str) -> Plan {
        Plan {
            revision: rev.into(),
            sources: vec![],
            files: vec![],
        }
    }

    #[test]
    fn failure_keeps_the_applied_revision() {
        let ok = applied(
            &RuleBundleStatus::default(),
            Some(1),
            &plan("sha256:a"),
            Some("cm".into()),
            None,
            "t1",
        );
        let bad = failed(
            &ok,
            Some(2),
            &Problem::new(reason::INVALID_CONTENT, "r.yaml: not valid YAML"),
            "t2",
        );
        assert_eq!(bad.revision.as_deref(), Some("sha256:a"));
        assert_eq!(bad.config_map, ok.config_map);
        let r = find(&bad.conditions, ConditionType::Ready).unwrap();
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "InvalidContent")
        );
        assert!(r.message.contains("keeping revision sha256:a"));
        assert!(find(&bad.conditions, ConditionType::Stalled).is_none());
    }

    #[test]
    fn invalid_spec_stalls_until_fixed() {
        let s = failed(
            &RuleBundleStatus::default(),
            Some(1),
            &Problem::new(reason::INVALID_SPEC, "bad glob"),
            "t1",
        );
        assert_eq!(
            find(&s.conditions, ConditionType::Stalled).unwrap().status,
            "True"
        );
        let fixed = applied(&s, Some(2), &plan("sha256:b"), None, None, "t2");
        assert!(find(&fixed.conditions, ConditionType::Stalled).is_none());
        assert_eq!(
            find(&fixed.conditions, ConditionType::Ready)
                .unwrap()
                .status,
            "True"
        );
        assert_eq!(fixed.observed_generation, Some(2));
    }
}
