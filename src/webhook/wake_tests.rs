use super::*;

use std::sync::atomic::AtomicUsize;
use tokio::sync::mpsc;

/// Records patches; each waits until `gate` lets it through, if set.
struct Recorder {
    sent: mpsc::UnboundedSender<(SourceKey, String)>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    gate: Option<Arc<Semaphore>>,
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
    Waker::with_limits(
        r.clone(),
        Arc::new(Metrics::new()),
        CancellationToken::new(),
        window,
        max,
    )
}

fn drain(rx: &mut mpsc::UnboundedReceiver<(SourceKey, String)>) -> Vec<(SourceKey, String)> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_before_the_patch_is_sent_is_one_patch_per_source() {
    let (r, mut rx) = recorder(None);
    let w = waker(&r, Duration::from_millis(20), 100);
    // nothing runs between these wakes (one thread, no await): all ride on the first
    assert_eq!(w.wake(key("a")), Wake::Scheduled);
    assert_eq!(w.wake(key("b")), Wake::Scheduled);
    for _ in 0..49 {
        assert_eq!(w.wake(key("a")), Wake::Coalesced);
        assert_eq!(w.wake(key("b")), Wake::Coalesced);
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
    assert_eq!(w.wake(key("a")), Wake::Scheduled);
    let (first_key, first) = rx.recv().await.expect("first patch");
    assert_eq!(first_key, key("a"));
    // the first patch is sent: these may have come too late for its check
    for _ in 0..50 {
        assert_eq!(w.wake(key("a")), Wake::Coalesced);
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
    assert_eq!(w.wake(key("a")), Wake::Scheduled);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn the_held_sources_are_bounded() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, mut rx) = recorder(Some(gate.clone()));
    let w = waker(&r, Duration::from_millis(1), 2);
    assert_eq!(w.wake(key("a")), Wake::Scheduled);
    assert_eq!(w.wake(key("b")), Wake::Scheduled);
    assert_eq!(w.wake(key("c")), Wake::Dropped);
    assert_eq!(w.wake(key("a")), Wake::Coalesced);
    assert_eq!(w.pending(), 2);
    gate.add_permits(10);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 2);
    assert_eq!(w.wake(key("c")), Wake::Scheduled, "room again");
    w.idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_run_with_bounded_concurrency() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, mut rx) = recorder(Some(gate.clone()));
    let w = waker(&r, Duration::from_millis(1), 100);
    for i in 0..20 {
        assert_eq!(w.wake(key(&format!("s{i}"))), Wake::Scheduled);
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
    assert_eq!(w.wake(key("gone")), Wake::Scheduled);
    w.idle().await;
    assert_eq!(drain(&mut rx).len(), 1);
    assert_eq!(w.pending(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn stopping_drops_what_waits() {
    let gate = Arc::new(Semaphore::new(0));
    let (r, _rx) = recorder(Some(gate));
    let stop = CancellationToken::new();
    let w = Waker::with_limits(
        r.clone(),
        Arc::new(Metrics::new()),
        stop.clone(),
        Duration::from_secs(3600),
        100,
    );
    for i in 0..(CONCURRENCY + 3) {
        w.wake(key(&format!("s{i}")));
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
