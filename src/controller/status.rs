//! ArtifactSource status after each kind of outcome: pure functions of the previous status.

use crate::api::artifact_source::{Artifact, ArtifactSourceStatus};
use crate::api::condition::{
    ConditionType, Status, conclude, remove_condition, set_condition, stall,
};
use crate::api::reason::{Problem, SourceReason};

/// The reason of `SourceVerified=True`.
pub const VERIFIED: &str = "Verified";

/// The outcome of a check that found the revision stored.
pub fn ready(
    prev: &ArtifactSourceStatus,
    generation: Option<i64>,
    artifact: Artifact,
    note: Option<&str>,
    now: &str,
    requested_at: Option<&str>,
) -> ArtifactSourceStatus {
    let message = match note {
        Some(note) => format!("stored revision {} ({note})", artifact.revision),
        None => format!("stored revision {}", artifact.revision),
    };
    let mut s = prev.clone();
    match &artifact.verification {
        Some(v) => set_condition(
            &mut s.conditions,
            ConditionType::SourceVerified,
            Status::True,
            VERIFIED,
            &super::verification::describe(v),
            generation,
            now,
        ),
        None => remove_condition(&mut s.conditions, ConditionType::SourceVerified),
    }
    s.artifact = Some(artifact);
    checked(
        s,
        generation,
        SourceReason::Succeeded,
        &message,
        now,
        requested_at,
    )
}

/// A check that failed: the last good artifact stays; Ready=False with the reason (and
/// Stalled=True when the reason is of that class). A signature's failure also sets
/// `SourceVerified=False`, and when the policy (`policy`, its fingerprint, when known) is not
/// the one that verified the artifact kept, that artifact's verification is dropped: it was
/// not verified under the policy asked for now, and consumers stop taking it.
pub fn failed(
    prev: &ArtifactSourceStatus,
    generation: Option<i64>,
    problem: &Problem<SourceReason>,
    now: &str,
    requested_at: Option<&str>,
    policy: Option<&str>,
) -> ArtifactSourceStatus {
    let mut s = prev.clone();
    let message = match &prev.artifact {
        Some(a) => format!("{} (still serving {})", problem.message, a.revision),
        None => problem.message.clone(),
    };
    if let Some(a) = s.artifact.as_mut()
        && let Some(p) = policy
        && a.verification.as_ref().is_some_and(|v| v.policy != p)
    {
        a.verification = None;
    }
    if problem.reason.is_signature() {
        set_condition(
            &mut s.conditions,
            ConditionType::SourceVerified,
            Status::False,
            problem.reason.as_str(),
            &problem.message,
            generation,
            now,
        );
    }
    checked(s, generation, problem.reason, &message, now, requested_at)
}

/// What every finished check records: when, for which generation and request, and the
/// conditions of the reason's class.
fn checked(
    mut s: ArtifactSourceStatus,
    generation: Option<i64>,
    reason: SourceReason,
    message: &str,
    now: &str,
    requested_at: Option<&str>,
) -> ArtifactSourceStatus {
    s.observed_generation = generation;
    s.last_check_time = Some(now.to_string());
    if let Some(r) = requested_at {
        s.last_handled_requested_at = Some(r.to_string());
    }
    let class = reason.class();
    conclude(
        &mut s.conditions,
        class,
        reason.as_str(),
        message,
        generation,
        now,
    );
    s
}

/// A spec that cannot work: Stalled=True and Ready=False until the object changes.
pub fn stalled(
    prev: &ArtifactSourceStatus,
    generation: Option<i64>,
    message: &str,
    now: &str,
) -> ArtifactSourceStatus {
    let mut s = prev.clone();
    s.observed_generation = generation;
    stall(
        &mut s.conditions,
        SourceReason::InvalidSpec.as_str(),
        message,
        generation,
        now,
    );
    s
}

/// Before a download: Reconciling=True (and Ready=Unknown on a first pull), so
/// `kubectl wait` and kstatus see progress.
pub fn reconciling(
    prev: &ArtifactSourceStatus,
    generation: Option<i64>,
    message: &str,
    now: &str,
) -> ArtifactSourceStatus {
    let mut s = prev.clone();
    set_condition(
        &mut s.conditions,
        ConditionType::Reconciling,
        Status::True,
        SourceReason::Progressing.as_str(),
        message,
        generation,
        now,
    );
    if s.artifact.is_none()
        && crate::api::condition::find(&s.conditions, ConditionType::Ready).is_none()
    {
        set_condition(
            &mut s.conditions,
            ConditionType::Ready,
            Status::Unknown,
            SourceReason::Progressing.as_str(),
            message,
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

    fn artifact(rev: &str) -> Artifact {
        Artifact {
            revision: rev.into(),
            digest: "sha256:aa".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_picked_lower_version_says_why_in_the_ready_message() {
        let note = "1.0.0 was picked over 2.0.0, which requires engine_version_semver 0.50.0";
        let ok = ready(
            &ArtifactSourceStatus::default(),
            Some(1),
            artifact("1.0.0@sha256:aa"),
            Some(note),
            "t1",
            None,
        );
        let r = find(&ok.conditions, ConditionType::Ready).unwrap();
        assert_eq!(r.status, "True");
        assert_eq!(
            r.message,
            format!("stored revision 1.0.0@sha256:aa ({note})")
        );
    }

    #[test]
    fn failure_keeps_the_last_artifact_and_says_so() {
        let ok = ready(
            &ArtifactSourceStatus::default(),
            Some(1),
            artifact("1@sha256:aa"),
            None,
            "t1",
            None,
        );
        let problem = Problem::new(SourceReason::Unauthorized, "unauthorized: 401");
        let bad = failed(&ok, Some(1), &problem, "t2", Some("now"), None);
        assert_eq!(bad.artifact, ok.artifact);
        let r = find(&bad.conditions, ConditionType::Ready).unwrap();
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "Unauthorized")
        );
        assert!(r.message.contains("still serving 1@sha256:aa"));
        assert_eq!(r.last_transition_time, "t2");
        assert_eq!(bad.last_handled_requested_at.as_deref(), Some("now"));
    }

    fn verified(policy: &str) -> Artifact {
        Artifact {
            verification: Some(crate::api::artifact_source::Verification {
                method: "key".into(),
                key_fingerprint: Some("sha256:k".into()),
                format: "classic".into(),
                policy: policy.into(),
                ..Default::default()
            }),
            ..artifact("1@sha256:aa")
        }
    }

    #[test]
    fn a_verified_revision_sets_source_verified_and_a_signature_failure_clears_it() {
        let ok = ready(
            &ArtifactSourceStatus::default(),
            Some(1),
            verified("p1"),
            None,
            "t1",
            None,
        );
        let v = find(&ok.conditions, ConditionType::SourceVerified).expect("condition");
        assert_eq!((v.status.as_str(), v.reason.as_str()), ("True", VERIFIED));
        assert!(v.message.contains("sha256:k"), "{}", v.message);
        // a new revision without a signature, same policy: the verified one stays verified
        let missing = Problem::new(
            SourceReason::SignatureNotFound,
            "no signature for sha256:bb",
        );
        let bad = failed(&ok, Some(1), &missing, "t2", None, Some("p1"));
        assert_eq!(bad.artifact, ok.artifact);
        let v = find(&bad.conditions, ConditionType::SourceVerified).expect("condition");
        assert_eq!(
            (v.status.as_str(), v.reason.as_str()),
            ("False", "SignatureNotFound")
        );
        // the policy changed (another key): the kept revision is no longer verified
        let other = failed(&ok, Some(2), &missing, "t3", None, Some("p2"));
        assert_eq!(
            other.artifact.as_ref().map(|a| a.verification.is_none()),
            Some(true)
        );
        // the policy could not be read (the key Secret is gone): no verification is claimed
        let gone = Problem::new(SourceReason::SecretNotFound, "Secret keys does not exist");
        let unreadable = crate::controller::verification::UNREADABLE_POLICY;
        let blind = failed(&ok, Some(1), &gone, "t3", None, Some(unreadable));
        assert_eq!(
            blind.artifact.as_ref().map(|a| a.verification.is_none()),
            Some(true)
        );
        // a registry failure says nothing about signatures
        let down = Problem::new(SourceReason::RegistryUnavailable, "503");
        let flaky = failed(&ok, Some(1), &down, "t4", None, Some("p1"));
        let v = find(&flaky.conditions, ConditionType::SourceVerified).expect("kept");
        assert_eq!(v.status, "True");
        // verify removed: the next stored revision drops the condition
        let plain = ready(&ok, Some(3), artifact("2@sha256:cc"), None, "t5", None);
        assert!(find(&plain.conditions, ConditionType::SourceVerified).is_none());
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let a = ready(
            &ArtifactSourceStatus::default(),
            Some(1),
            artifact("1@x"),
            None,
            "t1",
            None,
        );
        let b = ready(&a, Some(1), artifact("2@y"), None, "t2", None);
        let r = find(&b.conditions, ConditionType::Ready).unwrap();
        assert_eq!(r.last_transition_time, "t1");
        assert!(r.message.contains("2@y"));
        assert_eq!(b.last_check_time.as_deref(), Some("t2"));
    }

    #[test]
    fn stalled_then_fixed_clears_stalled() {
        let s = stalled(&ArtifactSourceStatus::default(), Some(1), "bad url", "t1");
        assert_eq!(
            find(&s.conditions, ConditionType::Stalled).unwrap().status,
            "True"
        );
        assert!(s.last_check_time.is_none());
        let fixed = ready(&s, Some(2), artifact("1@x"), None, "t2", None);
        assert!(find(&fixed.conditions, ConditionType::Stalled).is_none());
        assert_eq!(fixed.observed_generation, Some(2));
    }

    #[test]
    fn reconciling_marks_a_first_pull_unknown() {
        let s = reconciling(&ArtifactSourceStatus::default(), Some(1), "pulling", "t1");
        assert_eq!(
            find(&s.conditions, ConditionType::Ready).unwrap().status,
            "Unknown"
        );
        let done = ready(&s, Some(1), artifact("1@x"), None, "t2", None);
        assert!(find(&done.conditions, ConditionType::Reconciling).is_none());
    }
}
