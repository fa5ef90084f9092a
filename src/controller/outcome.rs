//! The one place a reconcile's result becomes what users see. A reason's [`Class`] decides
//! the Event type, the metric label and when the object is looked at again (with the
//! agent's, through [`crate::backoff::retry_delay`]); conditions follow the same class in
//! [`condition::conclude`].
//!
//! [`condition::conclude`]: crate::api::condition::conclude

use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::api::reason::Class;
use crate::backoff::{jitter, retry_delay};

/// The requeue after a reconcile: `resync` (up to 5% later) when done or under way, else
/// [`retry_delay`](crate::backoff::retry_delay).
pub fn requeue(
    class: Class,
    failures: u32,
    seed: u64,
    retry_after: Option<Duration>,
    resync: Duration,
) -> Action {
    let delay = match class {
        Class::Ready | Class::Progressing => Some(jitter(resync, seed, 20)),
        _ => retry_delay(class, failures, seed, retry_after),
    };
    delay.map_or_else(Action::await_change, Action::requeue)
}

/// The Event type of a reason's class.
pub fn event_type(class: Class) -> EventType {
    match class {
        Class::Ready | Class::Progressing => EventType::Normal,
        Class::Stalled | Class::Waiting | Class::Transient => EventType::Warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_decide_when_to_look_again() {
        assert_eq!(retry_delay(Class::Stalled, 3, 1, None), None);
        let transient = retry_delay(Class::Transient, 1, 1, None).unwrap();
        assert!(transient <= Duration::from_secs(5), "{transient:?}");
        let waiting = retry_delay(Class::Waiting, 1, 1, None).unwrap();
        assert!(waiting > Duration::from_secs(5) && waiting <= Duration::from_secs(10));
        // the backoff grows, is capped, and honours Retry-After
        let late = retry_delay(Class::Transient, 30, 1, None).unwrap();
        assert!(late <= Duration::from_secs(300) && late >= Duration::from_secs(225));
        let asked = Some(Duration::from_secs(400));
        assert_eq!(
            retry_delay(Class::Transient, 1, 1, asked),
            Some(Duration::from_secs(400))
        );
        assert_eq!(
            requeue(Class::Stalled, 1, 1, None, Duration::from_secs(600)),
            Action::await_change()
        );
        let resync = Duration::from_secs(600);
        let ready = requeue(Class::Ready, 0, 1, None, resync);
        assert_eq!(ready, Action::requeue(jitter(resync, 1, 20)));
        assert_ne!(ready, Action::requeue(resync), "no jitter");
    }

    #[test]
    fn only_failures_are_warnings() {
        assert_eq!(event_type(Class::Ready), EventType::Normal);
        assert_eq!(event_type(Class::Progressing), EventType::Normal);
        for c in [Class::Stalled, Class::Waiting, Class::Transient] {
            assert_eq!(event_type(c), EventType::Warning);
        }
    }
}
