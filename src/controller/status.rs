//! ArtifactSource status after each kind of outcome: pure functions of the previous status.

use crate::api::artifact_source::{Artifact, ArtifactSourceStatus};
use crate::api::condition::{ConditionType, Status, conclude, set_condition, stall};
use crate::api::reason::SourceReason;

/// The outcome of a check that found the revision stored.
pub fn ready(
    prev: &ArtifactSourceStatus,
    generation: Option<i64>,
    artifact: Artifact,
    now: &str,
    requested_at: Option<&str>,
) -> ArtifactSourceStatus {
    let message = format!("stored revision {}", artifact.revision);
    let mut s = prev.clone();
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
/// Stalled=True when the reason is of that class).
pub fn failed(
    prev: &ArtifactSourceStatus,
    generation: Option<i64>,
    reason: SourceReason,
    message: &str,
    now: &str,
    requested_at: Option<&str>,
) -> ArtifactSourceStatus {
    let message = match &prev.artifact {
        Some(a) => format!("{message} (still serving {})", a.revision),
        None => message.to_string(),
    };
    checked(
        prev.clone(),
        generation,
        reason,
        &message,
        now,
        requested_at,
    )
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
    fn failure_keeps_the_last_artifact_and_says_so() {
        let ok = ready(
            &ArtifactSourceStatus::default(),
            Some(1),
            artifact("1@sha256:aa"),
            "t1",
            None,
        );
        let bad = failed(
            &ok,
            Some(1),
            SourceReason::Unauthorized,
            "unauthorized: 401",
            "t2",
            Some("now"),
        );
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

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let a = ready(
            &ArtifactSourceStatus::default(),
            Some(1),
            artifact("1@x"),
            "t1",
            None,
        );
        let b = ready(&a, Some(1), artifact("2@y"), "t2", None);
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
        let fixed = ready(&s, Some(2), artifact("1@x"), "t2", None);
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
        let done = ready(&s, Some(1), artifact("1@x"), "t2", None);
        assert!(find(&done.conditions, ConditionType::Reconciling).is_none());
    }
}
