//! When to check a source next: pure functions of the last check, the interval, failures
//! and a per-object jitter seed, so they are tested on plain numbers.

use std::time::Duration;

use crate::api::reason::Class;
use crate::backoff::jitter;
use crate::backoff::retry_delay;

/// The shortest interval a source may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Default of the controller's `--registry-operation-timeout`: the longest any check's
/// registry work may take as a whole.
pub const REGISTRY_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// The deadline of a check's registry work: the source's `spec.timeout`, capped by the
/// controller-wide maximum, so no source can hold a worker longer.
pub fn registry_deadline(spec_timeout: Duration, controller_max: Duration) -> Duration {
    spec_timeout.min(controller_max)
}

/// What the controller knows when deciding whether to check the registry now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckState {
    /// Time since the last check, if there was one.
    pub since_last_check: Option<Duration>,
    /// The spec changed since the last reconcile (generation != observedGeneration).
    pub spec_changed: bool,
    /// A new `ocisync.dev/requested-at` value was set.
    pub requested: bool,
    /// The current revision is in status but missing from the store (for example after a
    /// controller restart with a fresh store).
    pub content_missing: bool,
    /// Consecutive failed checks.
    pub failures: u32,
    /// The class of the last failed check's reason (`None`: transient).
    pub failure_class: Option<Class>,
    /// The registry asked to wait this long (429 `Retry-After`).
    pub retry_after: Option<Duration>,
}

/// Check now, or wait this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Now,
    In(Duration),
}

/// Decides whether a check is due. Spec changes, requests and missing content check at
/// once; otherwise the next check is one interval (or one backoff step after failures)
/// after the last.
pub fn due(state: &CheckState, interval: Duration, seed: u64) -> Due {
    let Some(since) = state.since_last_check else {
        return Due::Now;
    };
    if state.spec_changed || state.requested || state.content_missing && state.failures == 0 {
        return Due::Now;
    }
    let class = state.failure_class.unwrap_or(Class::Transient);
    let wait = next_delay(interval, state.failures, class, state.retry_after, seed);
    match wait.checked_sub(since) {
        Some(left) if !left.is_zero() => Due::In(left),
        _ => Due::Now,
    }
}

/// The delay until the next check after one: the interval with up to +5% jitter on
/// success; after failures, the backoff of the last failure's class ([`retry_delay`]),
/// which for a source waiting on the registry's content (or a stalled one, which a spec
/// change checks at once) never goes past the interval. Never less than `retry_after`.
pub fn next_delay(
    interval: Duration,
    failures: u32,
    class: Class,
    retry_after: Option<Duration>,
    seed: u64,
) -> Duration {
    let interval = jitter(interval.max(MIN_INTERVAL), seed, 20);
    let at_least = retry_after.unwrap_or(Duration::ZERO);
    if failures == 0 {
        return interval.max(at_least);
    }
    match class {
        Class::Transient | Class::Ready | Class::Progressing => {
            retry_delay(Class::Transient, failures, seed, retry_after).unwrap_or(interval)
        }
        Class::Waiting | Class::Stalled => retry_delay(Class::Waiting, failures, seed, None)
            .map_or(interval, |d| d.min(interval))
            .max(at_least),
    }
}

/// Whether the `requested-at` value `asked` still wants a check: neither the status nor
/// this replica's memory says a check for it ran. (A reconcile may see a status older than
/// the check that just ended, for example the progress a pull wrote; checking again then
/// would run two checks for one request.)
pub fn is_new_request(
    asked: Option<&str>,
    in_status: Option<&str>,
    in_memory: Option<&str>,
) -> bool {
    asked.is_some() && asked != in_status && asked != in_memory
}

pub use crate::backoff::seed_of;

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn first_check_and_forced_checks_are_immediate() {
        assert_eq!(due(&CheckState::default(), MIN, 1), Due::Now);
        let recent = CheckState {
            since_last_check: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        assert!(matches!(due(&recent, MIN, 1), Due::In(_)));
        for forced in [
            CheckState {
                spec_changed: true,
                ..recent.clone()
            },
            CheckState {
                requested: true,
                ..recent.clone()
            },
            CheckState {
                content_missing: true,
                ..recent.clone()
            },
        ] {
            assert_eq!(due(&forced, MIN, 1), Due::Now, "{forced:?}");
        }
    }

    #[test]
    fn a_request_is_checked_once_even_when_the_status_seen_is_older() {
        assert!(is_new_request(Some("b"), Some("a"), None));
        assert!(is_new_request(Some("b"), Some("a"), Some("a")));
        // the check for "b" ran; the status seen is still from before it
        assert!(!is_new_request(Some("b"), Some("a"), Some("b")));
        assert!(!is_new_request(Some("b"), Some("b"), None));
        assert!(!is_new_request(None, Some("a"), None));
    }

    #[test]
    fn waits_out_the_interval_with_bounded_jitter() {
        let state = CheckState {
            since_last_check: Some(Duration::from_secs(20)),
            ..Default::default()
        };
        for seed in 0..200 {
            let Due::In(left) = due(&state, MIN, seed) else {
                panic!("not due yet")
            };
            assert!(
                left >= Duration::from_secs(40) && left <= Duration::from_secs(43),
                "{left:?}"
            );
        }
        let late = CheckState {
            since_last_check: Some(Duration::from_secs(64)),
            ..Default::default()
        };
        assert_eq!(due(&late, MIN, 7), Due::Now);
    }

    #[test]
    fn failures_back_off_exponentially_to_a_cap() {
        let max = Duration::from_secs(300);
        let hour = Duration::from_secs(3600);
        let mut last = Duration::ZERO;
        for failures in 1..=10 {
            let d = next_delay(hour, failures, Class::Transient, None, 3);
            assert!(d >= last.min(max * 3 / 4), "{failures}: {d:?} < {last:?}");
            assert!(d <= max, "{d:?}");
            last = d;
        }
        assert!(next_delay(hour, 1, Class::Transient, None, 3) <= Duration::from_secs(5));
        assert!(next_delay(hour, 3, Class::Transient, None, 3) >= Duration::from_secs(15));
        // a failed source waits for the backoff, not the (longer) interval
        let state = CheckState {
            since_last_check: Some(Duration::from_secs(1)),
            failures: 1,
            ..Default::default()
        };
        let Due::In(left) = due(&state, Duration::from_secs(3600), 0) else {
            panic!()
        };
        assert!(left < Duration::from_secs(6), "{left:?}");
        // and missing content does not skip the backoff of a failing source
        let missing = CheckState {
            content_missing: true,
            ..state
        };
        assert!(matches!(due(&missing, MIN, 0), Due::In(_)));
    }

    #[test]
    fn waiting_failures_back_off_slower_but_never_past_the_interval() {
        let hour = Duration::from_secs(3600);
        let first = next_delay(hour, 1, Class::Waiting, None, 3);
        assert!(first > Duration::from_secs(5) && first <= Duration::from_secs(10));
        let late = next_delay(hour, 20, Class::Waiting, None, 3);
        assert!(late > Duration::from_secs(300) && late <= Duration::from_secs(600));
        // a source checked every minute still looks every minute for its missing tag
        let d = next_delay(MIN, 20, Class::Waiting, None, 3);
        assert!(d <= MIN + MIN / 20, "{d:?}");
        let d = next_delay(MIN, 20, Class::Stalled, None, 3);
        assert!(d <= MIN + MIN / 20, "{d:?}");
    }

    #[test]
    fn retry_after_is_honoured() {
        for class in [Class::Transient, Class::Waiting] {
            let d = next_delay(MIN, 1, class, Some(Duration::from_secs(120)), 0);
            assert!(d >= Duration::from_secs(120), "{class:?}");
        }
    }

    #[test]
    fn intervals_under_the_minimum_are_raised() {
        let d = next_delay(Duration::from_secs(1), 0, Class::Transient, None, 0);
        assert!(d >= MIN_INTERVAL);
    }

    #[test]
    fn the_controller_caps_registry_deadlines() {
        let cap = Duration::from_secs(300);
        assert_eq!(
            registry_deadline(Duration::from_secs(60), cap),
            Duration::from_secs(60)
        );
        assert_eq!(registry_deadline(Duration::from_secs(3600), cap), cap);
    }

    #[test]
    fn seeds_differ_per_uid_and_are_stable() {
        assert_eq!(seed_of("a-b-c"), seed_of("a-b-c"));
        assert_ne!(seed_of("a-b-c"), seed_of("a-b-d"));
    }
}
