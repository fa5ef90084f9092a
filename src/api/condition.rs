//! Typed status conditions, following the Kubernetes conventions kstatus reads:
//! `Ready` with `observedGeneration`, CamelCase reasons, and a `lastTransitionTime`
//! that moves only when the status itself changes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::reason::Class;

/// One observation of an object's state, as in `metav1.Condition`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of condition in CamelCase, for example `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition: `True`, `False` or `Unknown`.
    pub status: String,
    /// The metadata.generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Last time the condition's status changed (RFC 3339).
    pub last_transition_time: String,
    /// A stable CamelCase reason for the condition's last transition.
    pub reason: String,
    /// A human-readable one-line message with details about the transition.
    #[serde(default)]
    pub message: String,
}

/// The condition types ocisync sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The object's desired state is fully realised.
    Ready,
    /// Work is in progress towards the desired state.
    Reconciling,
    /// Progress is blocked until the spec changes.
    Stalled,
    /// ArtifactSource with `spec.verify`: the last check's signature verification.
    SourceVerified,
    /// RuleBundle whose rules declare plugin dependencies: whether its sources provide them.
    DependenciesMet,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Reconciling => "Reconciling",
            ConditionType::Stalled => "Stalled",
            ConditionType::SourceVerified => "SourceVerified",
            ConditionType::DependenciesMet => "DependenciesMet",
        }
    }
}

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// Sets (or replaces) a condition in `conditions`. The transition time is kept when the
/// status did not change; reason, message and generation are always refreshed.
/// `now` is passed in so the function stays pure.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: Status,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) {
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_.as_str() && c.status == status.as_str())
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    let new = Condition {
        type_: type_.as_str().to_string(),
        status: status.as_str().to_string(),
        observed_generation: generation,
        last_transition_time,
        reason: reason.to_string(),
        message: one_line(message),
    };
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => *existing = new,
        None => conditions.push(new),
    }
}

/// A finished reconcile: sets `Ready` and clears `Reconciling` and `Stalled`.
pub fn settle(
    conditions: &mut Vec<Condition>,
    ready: Status,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) {
    set_condition(
        conditions,
        ConditionType::Ready,
        ready,
        reason,
        message,
        generation,
        now,
    );
    remove_condition(conditions, ConditionType::Reconciling);
    remove_condition(conditions, ConditionType::Stalled);
}

/// A spec that cannot work as written: `Ready=False` and `Stalled=True` with one reason,
/// until the object changes.
pub fn stall(
    conditions: &mut Vec<Condition>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) {
    set_condition(
        conditions,
        ConditionType::Ready,
        Status::False,
        reason,
        message,
        generation,
        now,
    );
    set_condition(
        conditions,
        ConditionType::Stalled,
        Status::True,
        reason,
        message,
        generation,
        now,
    );
    remove_condition(conditions, ConditionType::Reconciling);
}

/// A finished reconcile, by the class of its reason: `Ready=True`; under way
/// (`Ready=False`, `Reconciling=True`); stalled (`Stalled=True`); or not ready
/// (`Ready=False`, no `Reconciling` or `Stalled`).
pub fn conclude(
    conditions: &mut Vec<Condition>,
    class: Class,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) {
    match class {
        Class::Ready => settle(conditions, Status::True, reason, message, generation, now),
        Class::Stalled => stall(conditions, reason, message, generation, now),
        Class::Waiting | Class::Transient => {
            settle(conditions, Status::False, reason, message, generation, now)
        }
        Class::Progressing => {
            for type_ in [ConditionType::Ready, ConditionType::Reconciling] {
                let status = match type_ {
                    ConditionType::Ready => Status::False,
                    _ => Status::True,
                };
                set_condition(conditions, type_, status, reason, message, generation, now);
            }
            remove_condition(conditions, ConditionType::Stalled);
        }
    }
}

/// Whether a `Ready` condition with `reason` (of `class`) is news: its status or reason
/// differs from what `conditions` hold. Events are published only for news.
pub fn is_news(conditions: &[Condition], class: Class, reason: &str) -> bool {
    let status = match class {
        Class::Ready => Status::True,
        _ => Status::False,
    };
    find(conditions, ConditionType::Ready)
        .is_none_or(|c| c.status != status.as_str() || c.reason != reason)
}

/// Removes a condition type (for example `Reconciling` once done).
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: ConditionType) {
    conditions.retain(|c| c.type_ != type_.as_str());
}

/// Finds a condition by type.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Messages are one line and bounded, so status stays readable in `kubectl get -o wide`.
fn one_line(message: &str) -> String {
    const MAX: usize = 1024;
    let flat: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(MAX) {
        Some((idx, _)) => format!("{}…", &flat[..idx]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            ConditionType::Ready,
            Status::False,
            "A",
            "m1",
            Some(1),
            "t1",
        );
        set_condition(
            &mut c,
            ConditionType::Ready,
            Status::False,
            "B",
            "m2",
            Some(2),
            "t2",
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, "t1");
        assert_eq!(c[0].reason, "B");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(
            &mut c,
            ConditionType::Ready,
            Status::True,
            "Ok",
            "",
            Some(2),
            "t3",
        );
        assert_eq!(c[0].last_transition_time, "t3");
        assert_eq!(c[0].status, "True");
    }

    #[test]
    fn messages_are_single_line_and_bounded() {
        let mut c = Vec::new();
        let long = format!("line1\nline2{}", "x".repeat(5000));
        set_condition(
            &mut c,
            ConditionType::Stalled,
            Status::True,
            "R",
            &long,
            None,
            "t",
        );
        assert!(!c[0].message.contains('\n'));
        assert!(c[0].message.chars().count() <= 1025);
        remove_condition(&mut c, ConditionType::Stalled);
        assert!(find(&c, ConditionType::Stalled).is_none());
    }
}
