//! RuleBundle status after each outcome: pure functions of the previous status.

use super::nodes::Rollout;
use super::plan::Plan;
use super::{BundleReason, Problem};
use crate::api::condition::{ConditionType, Status, conclude, remove_condition, set_condition};
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
    dependencies(&mut s, plan, generation, now);
    s.nodes = rollout.map(|r| r.counts.clone());
    let (reason, message) = rollout_outcome(rollout, &plan.revision, message);
    let class = reason.class();
    conclude(
        &mut s.conditions,
        class,
        reason.as_str(),
        &message,
        generation,
        now,
    );
    s
}

/// `DependenciesMet`: False naming what is missing, True when something was checked and
/// everything is there, absent when no source declares dependencies.
fn dependencies(s: &mut RuleBundleStatus, plan: &Plan, generation: Option<i64>, now: &str) {
    let Some(missing) = &plan.missing_dependencies else {
        remove_condition(&mut s.conditions, ConditionType::DependenciesMet);
        return;
    };
    let (status, reason, message) = match missing.as_slice() {
        [] => (
            Status::True,
            "DependenciesMet",
            "every plugin the rules need is provided".to_string(),
        ),
        missing => (
            Status::False,
            BundleReason::DependencyMissing.as_str(),
            crate::bundle::requirements::summary(missing),
        ),
    };
    set_condition(
        &mut s.conditions,
        ConditionType::DependenciesMet,
        status,
        reason,
        &message,
        generation,
        now,
    );
}

/// The reason of an applied revision: its nodes' failures first, then nodes still
/// pending, else done.
pub fn rollout_reason(rollout: Option<&Rollout>) -> BundleReason {
    rollout_outcome(rollout, "", String::new()).0
}

/// The reason and message of an applied revision (see [`rollout_reason`]).
fn rollout_outcome(
    rollout: Option<&Rollout>,
    revision: &str,
    message: String,
) -> (BundleReason, String) {
    match rollout {
        Some(r) if r.counts.failed > 0 => (
            BundleReason::NodeFailed,
            format!(
                "{} of {} nodes failed: {}",
                r.counts.failed,
                r.counts.desired,
                r.failures.join("; ")
            ),
        ),
        Some(r) if r.counts.updated < r.counts.desired => (
            BundleReason::NodesPending,
            format!(
                "{} of {} nodes have revision {revision}",
                r.counts.updated, r.counts.desired
            ),
        ),
        Some(r) => (
            BundleReason::Succeeded,
            format!(
                "{message}, on {} of {} nodes",
                r.counts.updated, r.counts.desired
            ),
        ),
        None => (BundleReason::Succeeded, message),
    }
}

/// The bundle could not be brought up to date: what was applied stays, and says so.
/// A reason of the stalled class (an invalid spec) also sets `Stalled`.
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
    let (class, reason) = (problem.reason.class(), problem.reason.as_str());
    conclude(&mut s.conditions, class, reason, &message, generation, now);
    if problem.reason == BundleReason::DependencyMissing {
        set_condition(
            &mut s.conditions,
            ConditionType::DependenciesMet,
            Status::False,
            reason,
            &problem.message,
            generation,
            now,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::condition::ConditionType;
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
            missing_dependencies: None,
        }
    }

    #[test]
    fn dependencies_met_is_set_only_when_something_was_checked() {
        let mut p = plan("sha256:a");
        let base = RuleBundleStatus::default();
        let none = applied(&base, Some(1), &p, None, None, "t");
        assert!(find(&none.conditions, ConditionType::DependenciesMet).is_none());
        p.missing_dependencies = Some(vec!["rules needs k8saudit 0.7.0".into()]);
        let missing = applied(&none, Some(1), &p, None, None, "t");
        let c = find(&missing.conditions, ConditionType::DependenciesMet).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "DependencyMissing")
        );
        assert!(c.message.contains("k8saudit"));
        p.missing_dependencies = Some((0..50).map(|i| format!("needs p{i}")).collect());
        let many = applied(&missing, Some(1), &p, None, None, "t");
        let m = &find(&many.conditions, ConditionType::DependenciesMet)
            .unwrap()
            .message;
        assert!(m.ends_with("and 45 more") && !m.contains("p5;"), "{m}");
        let r = find(&missing.conditions, ConditionType::Ready).unwrap();
        assert_eq!(r.status, "True", "a warning: the bundle is applied");
        p.missing_dependencies = Some(vec![]);
        let met = applied(&missing, Some(1), &p, None, None, "t");
        assert_eq!(
            find(&met.conditions, ConditionType::DependenciesMet)
                .unwrap()
                .status,
            "True"
        );
        p.missing_dependencies = None;
        let gone = applied(&met, Some(2), &p, None, None, "t");
        assert!(find(&gone.conditions, ConditionType::DependenciesMet).is_none());
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
            &Problem::new(BundleReason::InvalidContent, "r.yaml: not valid YAML"),
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
            &Problem::new(BundleReason::InvalidSpec, "bad glob"),
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
