use super::*;

use std::sync::atomic::AtomicUsize;
use tokio::sync::mpsc;

use crate::webhook::observe::Observer;

/// How the fake controller answers a patch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// It does not (the cache holds no such source).
    Absent,
    /// It handles the request and finds the old digest.
    Unchanged,
    /// It handles the request and moves status to `sha256:new`.
    Moved,
    /// It has not handled the request yet.
    Slow,
}

/// Records patches; each waits until `gate` lets it through, if set. `cache` is what the
/// observer sees: the source "s" as the fake controller left it.
struct Recorder {
    sent: mpsc::UnboundedSender<(SourceKey, String)>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    gate: Option<Arc<Semaphore>>,
    checks: Mutex<Checks>,
    cache: Arc<Mutex<Vec<Arc<ArtifactSource>>>>,
}

impl Recorder {
    /// The fake controller's check of the patch with `value`.
    fn check(&self, value: &str) {
        let checks = self.checks.lock().map(|c| *c).unwrap_or(Checks::Absent);
        let digest = match checks {
            Checks::Absent => return,
            Checks::Slow => None,
            Checks::Unchanged => Some("sha256:old"),
            Checks::Moved => Some("sha256:new"),
        };
        let status = match digest {
            None => serde_json::json!({"artifact": artifact("sha256:old")}),
            Some(d) => {
                serde_json::json!({"artifact": artifact(d), "lastHandledRequestedAt": value})
            }
        };
        let source: ArtifactSource = serde_json::from_value(serde_json::json!({
            "apiVersion": "ocisync.dev/v1alpha1", "kind": "ArtifactSource",
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"url": "oci://r/org/rules", "interval": "1h"},
            "status": status,
        }))
        .expect("source");
        if let Ok(mut cache) = self.cache.lock() {
            *cache = vec![Arc::new(source)];
        }
    }

    fn set(&self, checks: Checks) {
        if let Ok(mut c) = self.checks.lock() {
            *c = checks;
        }
    }
}

fn artifact(digest: &str) -> serde_json::Value {
    serde_json::json!({"revision": format!("1@{digest}"), "digest": digest, "kind": "FalcoRules", "size": 1})
}

/// A tag push of `sha256:new` onto a source at `sha256:old`.
fn tag_push() -> Option<Expect> {
    Some(Expect {
        before: Some("sha256:old".into()),
        pushed: Some("sha256:new".into()),
    })
}

impl RequestCheck for Arc<Recorder> {
    async fn request_check(&self, key: &SourceKey, value: &str) -> Result<(), PatchError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate").forget();
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.sent
            .send((key.clone(), value.to_string()))
            .expect("receiver");
        self.check(value);
        if key.name == "gone" {
            return Err(PatchError::NotFound);
        }
        Ok(())
    }
}

fn recorder(
    gate: Option<Arc<Semaphore>>,
) -> (Arc<Recorder>, mpsc::UnboundedReceiver<(SourceKey, String)>) {
    let (sent, received) = mpsc::unbounded_channel();
    let r = Arc::new(Recorder {
        sent,
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
        gate,
        checks: Mutex::new(Checks::Absent),
        cache: Arc::default(),
    });
    (r, received)
}

fn key(name: &str) -> SourceKey {
    SourceKey {
        namespace: "ns".into(),
        name: name.into(),
    }
}

fn waker(r: &Arc<Recorder>, window: Duration, max: usize) -> Waker<Arc<Recorder>> {
    waker_until(r, window, max, CancellationToken::new())
}

fn waker_until(
    r: &Arc<Recorder>,
    window: Duration,
    max_pending: usize,
    stop: CancellationToken,
) -> Waker<Arc<Recorder>> {
    let cache = r.cache.clone();
    let snapshot = move || cache.lock().map(|c| c.clone()).unwrap_or_default();
    let observer = Observer::new(Arc::new(snapshot));
    let limits = Limits {
        window,
        max_pending,
    };
    Waker::new(r.clone(), observer, Arc::new(Metrics::new()), stop, limits)
}

fn drain(rx: &mut mpsc::UnboundedReceiver<(SourceKey, String)>) -> Vec<(SourceKey, String)> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_before_the_patch_is_sent_is_one_patch_per_source() {
    let (r, mut rx) = recorder(None);
    let w = waker(&r, Duration::from_millis(20), 100);
    // nothing runs between these wakes (one thread, no await): all ride on the first
    assert_eq!(w.wake(key("a"), None), Wake::Scheduled);
    assert_eq!(w.wake(key("b"), None), Wake::Scheduled);
    for _ in 0..49 {
        assert_eq!(w.wake(key("a"), None), Wake::Coalesced);
        assert_eq!(w.wake(key("b"), None), Wake::Coalesced);
    }
    w.idle().await;
    let mut sent: Vec<SourceKey> = drain(&mut rx).into_iter().map(|(k, _)| k).collect();
    sent.sort();
    assert_eq!(sent, vec![key("a"), key("b")]);
    assert_eq!(w.pending(), 0, "the map is empty after the window");
}

#[tokio::test(flavor = "current_thread")]
async fn wakes_after_the_send_earn_exactly_one_more_patch() {
    let (r, mut rx) = recorder(None);
    let w = waker(&r, Duration::from_millis(50), 100);
    assert_eq!(w.wake(key("a"), None), Wake::Scheduled);
    let (first_key, first) = rx.recv().await.expect("first patch");
    assert_eq!(first_key, key("a"));
    // the first patch is sent: these may have come too late for its check
    for _ in 0..50 {
        assert_eq!(w.wake(key("a"), None), Wake::Coalesced);
    }
    w.idle().await;
    let rest = drain(&mut rx);
    assert_eq!(rest.len(), 1, "one trailing patch: {rest:?}");
    assert!(
        rest[0].1 > first,
        "a fresh, later value: {first} then {}",
        rest[0].1
    );
    // after the windows a wake patches at once again
    assert_eq!(w.wake(key("a"), None), Wake::Scheduled);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn the_held_sources_are_bounded() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, mut rx) = recorder(Some(gate.clone()));
    let w = waker(&r, Duration::from_millis(1), 2);
    assert_eq!(w.wake(key("a"), None), Wake::Scheduled);
    assert_eq!(w.wake(key("b"), None), Wake::Scheduled);
    assert_eq!(w.wake(key("c"), None), Wake::Dropped);
    assert_eq!(w.wake(key("a"), None), Wake::Coalesced);
    assert_eq!(w.pending(), 2);
    gate.add_permits(10);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 2);
    assert_eq!(w.wake(key("c"), None), Wake::Scheduled, "room again");
    w.idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_run_with_bounded_concurrency() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, mut rx) = recorder(Some(gate.clone()));
    let w = waker(&r, Duration::from_millis(1), 100);
    for i in 0..20 {
        assert_eq!(w.wake(key(&format!("s{i}")), None), Wake::Scheduled);
    }
    // let the tasks reach the gate: as many as there are slots, no more
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while r.in_flight.load(Ordering::SeqCst) < CONCURRENCY {
        assert!(
            tokio::time::Instant::now() < deadline,
            "patches did not start"
        );
        tokio::task::yield_now().await;
    }
    gate.add_permits(20);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 20);
    assert_eq!(r.most_in_flight.load(Ordering::SeqCst), CONCURRENCY);
}

#[tokio::test(flavor = "current_thread")]
async fn a_gone_source_is_let_go() {
    let (r, mut rx) = recorder(None);
    let w = waker(&r, Duration::from_millis(1), 100);
    assert_eq!(w.wake(key("gone"), None), Wake::Scheduled);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 1);
    assert_eq!(w.pending(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn stopping_drops_what_waits() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, _rx) = recorder(Some(gate));
    let stop = CancellationToken::new();
    let w = waker_until(&r, Duration::from_secs(3600), 100, stop.clone());
    for i in 0..(CONCURRENCY + 3) {
        w.wake(key(&format!("s{i}")), None);
    }
    tokio::task::yield_now().await;
    stop.cancel();
    // the patches held at the gate time out only after PATCH_TIMEOUT; the waiting ones
    // leave at once
    tokio::time::timeout(Duration::from_secs(1), async {
        while w.pending() > CONCURRENCY {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the waiting wakes left");
}

#[test]
fn requested_at_values_are_rfc3339_with_nanoseconds_and_increase() {
    let values: Vec<String> = (0..1000).map(|_| requested_at_value()).collect();
    for pair in values.windows(2) {
        assert!(pair[0] < pair[1], "{pair:?}");
    }
    let first = &values[0];
    assert!(first.ends_with('Z'), "{first}");
    let fraction = first.rsplit('.').next().expect("fraction");
    assert_eq!(fraction.len(), 10, "9 digits and Z: {first}");
    assert!(first.parse::<jiff::Timestamp>().is_ok(), "{first}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_check_that_found_status_unchanged_is_asked_again_a_few_times() {
    let (r, mut rx) = recorder(None);
    r.set(Checks::Unchanged);
    let w = waker(&r, Duration::from_millis(20), 100);
    assert_eq!(w.wake(key("s"), tag_push()), Wake::Scheduled);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 1 + CONFIRMS as usize);
    assert_eq!(w.pending(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_check_that_moved_status_is_not_asked_again() {
    let (r, mut rx) = recorder(None);
    r.set(Checks::Moved);
    let w = waker(&r, Duration::from_millis(20), 100);
    assert_eq!(w.wake(key("s"), tag_push()), Wake::Scheduled);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 1);
    // a push whose digest status already names (a re-push): nothing more either
    r.set(Checks::Unchanged);
    let same = Some(Expect {
        before: Some("sha256:old".into()),
        pushed: Some("sha256:old".into()),
    });
    assert_eq!(w.wake(key("s"), same), Wake::Scheduled);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_not_handled_yet_is_awaited_not_repeated() {
    let (r, mut rx) = recorder(None);
    r.set(Checks::Slow);
    let w = waker(&r, Duration::from_millis(20), 100);
    assert_eq!(w.wake(key("s"), tag_push()), Wake::Scheduled);
    let (_, value) = rx.recv().await.expect("first patch");
    // many windows pass while the check is slow: no second patch, the source is held
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(drain(&mut rx).is_empty());
    assert_eq!(w.pending(), 1);
    // the check ends and finds the push
    r.set(Checks::Moved);
    r.check(&value);
    w.idle().await;
    assert!(drain(&mut rx).is_empty());
    assert_eq!(w.pending(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn without_an_expectation_or_a_listed_source_nothing_is_confirmed() {
    let (r, mut rx) = recorder(None);
    r.set(Checks::Unchanged);
    let w = waker(&r, Duration::from_millis(20), 100);
    // "something changed" (no tag): status may well stay
    assert_eq!(w.wake(key("s"), None), Wake::Scheduled);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 1);
    // a source the cache does not list (gone) is let go
    r.set(Checks::Absent);
    assert_eq!(w.wake(key("t"), tag_push()), Wake::Scheduled);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 1);
}
