//! The one retry backoff of the controller and the agent: exponential, capped, with jitter
//! from a per-object (or per-node) seed, so many objects or nodes failing together do not
//! retry in lockstep, and never sooner than a server's `Retry-After`.

use std::time::Duration;

use crate::api::reason::Class;

/// Exponential backoff from `base`, doubling per consecutive failure up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The delay after `failures` consecutive failures (1 for the first): `base`, twice
    /// that, … capped at `max`, then spread over [75%, 100%] of itself by `seed`, and
    /// never less than `retry_after`. No failures: zero.
    pub fn delay(&self, failures: u32, seed: u64, retry_after: Option<Duration>) -> Duration {
        if failures == 0 {
            return retry_after.unwrap_or(Duration::ZERO);
        }
        let exp = failures.saturating_sub(1).min(20);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.max);
        let spread = raw / 4;
        let delay = raw - spread + jitter_part(spread, seed.wrapping_add(u64::from(failures)));
        delay.max(retry_after.unwrap_or(Duration::ZERO))
    }
}

/// Retries of transient failures: 5 s, 10 s … up to 5 min, jittered per object.
pub const TRANSIENT: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
/// Looks again at objects waiting for something else (which usually wakes them first):
/// 10 s, 20 s … up to 10 min.
pub const WAITING: Backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(600));

/// How a watch waits before it tries the API server again: from half a second, doubling per
/// failure up to `max`, spread over [50%, 100%] of the step by `seed`. kube's default waits up
/// to 30 s, and after an API server outage a watch needs two tries (the reconnect, then the
/// relist that the new server's `410 Expired` asks for), so a change made during the outage
/// waited up to a minute after the API server was back (40.7 s measured in
/// `tests/faults_cluster.rs`). The controller waits at most [`CONTROLLER_WATCH_MAX`]; agents,
/// of which there are thousands, at most [`AGENT_WATCH_MAX`], so their retries after an
/// outage spread over 4-8 s.
///
/// kube's `StreamBackoff` resets a backoff on every item a watch yields, and a watcher
/// yields `Init` before each LIST: a reset there would start over at half a second on every
/// failed relist (a LIST answered 429 by an overloaded API server, thousands of agents at
/// once). So `reset` does nothing; the count starts over once no failure came for
/// [`WATCH_QUIET`].
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    steps: Backoff,
    seed: u64,
    failures: u32,
    last_failure: Option<std::time::Instant>,
    quiet: Duration,
}

pub const CONTROLLER_WATCH_MAX: Duration = Duration::from_secs(4);
pub const AGENT_WATCH_MAX: Duration = Duration::from_secs(8);
/// How long a watch must go without a failure before its backoff starts over.
pub const WATCH_QUIET: Duration = Duration::from_secs(30);

impl WatchBackoff {
    pub fn new(max: Duration, seed: u64, quiet: Duration) -> Self {
        WatchBackoff {
            steps: Backoff::new(Duration::from_millis(500), max),
            seed,
            failures: 0,
            last_failure: None,
            quiet,
        }
    }
}

/// A controller watch's backoff, seeded by the pod and the process (a pod's process is
/// often pid 1 in every replica, so the pid alone would make replicas retry together).
pub fn controller_watch() -> WatchBackoff {
    let pod = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let seed = seed_of(&pod) ^ u64::from(std::process::id()).rotate_left(32);
    WatchBackoff::new(CONTROLLER_WATCH_MAX, seed, WATCH_QUIET)
}

/// An agent watch's backoff, seeded by its node's name.
pub fn agent_watch(node_name: &str) -> WatchBackoff {
    WatchBackoff::new(AGENT_WATCH_MAX, seed_of(node_name), WATCH_QUIET)
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) >= self.quiet)
        {
            self.failures = 0;
        }
        self.last_failure = Some(now);
        self.failures = self.failures.saturating_add(1);
        let exp = (self.failures - 1).min(20);
        let step = self
            .steps
            .base
            .saturating_mul(1u32 << exp)
            .min(self.steps.max);
        let half = step / 2;
        let seed = self.seed.wrapping_add(u64::from(self.failures));
        Some(half + jitter_part(step - half, seed))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    /// Nothing: see [`WatchBackoff`] (the count starts over after [`WATCH_QUIET`]).
    fn reset(&mut self) {}
}

/// How long after the `failures`-th failure in a row of `class` to look again (`None`:
/// only when the object changes). Never sooner than `retry_after`.
pub fn retry_delay(
    class: Class,
    failures: u32,
    seed: u64,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let failures = failures.max(1);
    match class {
        Class::Stalled => None,
        Class::Waiting => Some(WAITING.delay(failures, seed, retry_after)),
        Class::Transient | Class::Ready | Class::Progressing => {
            Some(TRANSIENT.delay(failures, seed, retry_after))
        }
    }
}

/// `d` plus up to `1/fraction` of it, chosen by `seed` (spreads requeues; the same seed
/// gives the same delay, so tests are exact).
pub fn jitter(d: Duration, seed: u64, fraction: u32) -> Duration {
    d + jitter_part(d / fraction.max(1), seed)
}

/// A part of `spread` in [0, spread), chosen by `seed`.
fn jitter_part(spread: Duration, seed: u64) -> Duration {
    let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(mix(seed) % nanos)
}

/// A stable seed from a name or uid (FNV-1a).
pub fn seed_of(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_watch_backoff_grows_through_the_resets_of_failed_relists_and_is_capped() {
        use kube::runtime::utils::Backoff as _;
        use std::time::Duration;
        let quiet = Duration::from_secs(3600);
        let mut b = super::WatchBackoff::new(super::AGENT_WATCH_MAX, 7, quiet);
        let mut delays = Vec::new();
        for _ in 0..12 {
            delays.push(b.next().expect("a delay"));
            b.reset(); // the watcher's Init before the next LIST
        }
        let first = delays[0];
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        assert!(delays[4] >= Duration::from_secs(4), "grows: {delays:?}");
        let cap = super::AGENT_WATCH_MAX;
        assert!(delays.iter().all(|d| *d <= cap), "capped: {delays:?}");
        assert!(
            delays[8..].iter().all(|d| *d >= cap / 2),
            "over [50%, 100%]"
        );
    }

    #[test]
    fn a_watch_backoff_starts_over_after_a_quiet_period() {
        let quiet = std::time::Duration::ZERO;
        let mut b = super::WatchBackoff::new(super::CONTROLLER_WATCH_MAX, 7, quiet);
        let first = b.next();
        assert_eq!(
            b.next(),
            first,
            "no failure within the quiet period: the first step"
        );
    }

    use super::*;

    const B: Backoff = Backoff::new(Duration::from_secs(4), Duration::from_secs(60));

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter() {
        for (failures, raw) in [(1u32, 4u64), (2, 8), (3, 16), (5, 60), (40, 60)] {
            let d = B.delay(failures, 7, None);
            let raw = Duration::from_secs(raw);
            assert!(d <= raw && d >= raw * 3 / 4, "{failures}: {d:?}");
        }
        assert_eq!(B.delay(0, 7, None), Duration::ZERO);
        let later = Some(Duration::from_secs(90));
        assert_eq!(B.delay(1, 7, later), Duration::from_secs(90));
        assert_eq!(B.delay(0, 7, later), Duration::from_secs(90));
    }

    #[test]
    fn seeds_spread_nodes_apart() {
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|n| B.delay(3, seed_of(&format!("node-{n}")), None))
            .collect();
        assert!(delays.len() > 40, "{}", delays.len());
        assert_eq!(
            B.delay(3, seed_of("node-1"), None),
            B.delay(3, seed_of("node-1"), None)
        );
    }

    #[test]
    fn jitter_adds_at_most_its_fraction() {
        let d = Duration::from_secs(100);
        for seed in 0..100 {
            let j = jitter(d, seed, 10);
            assert!(j >= d && j < d + Duration::from_secs(10));
        }
        assert_eq!(jitter(Duration::ZERO, 3, 10), Duration::ZERO);
    }
}
