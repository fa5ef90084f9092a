//! Waking sources: a JSON merge patch of the `ocisync.dev/requested-at` annotation to a
//! fresh RFC 3339 time (nanoseconds, strictly increasing in this process), which is what
//! `flux reconcile` does. The leader's controller sees the new value in its watch and
//! checks at once (a value it has not handled yet is a requested check); any replica may
//! write it, so a follower receiving the webhook wakes sources as well as the leader.
//!
//! Coalescing: a source is patched at once on its first wake, then not again for
//! [`WINDOW`]. Wakes that arrive before its patch is sent ride on it; wakes that arrive
//! after it was sent (the check might already have read the registry) earn one more patch
//! when the window ends. So a burst gives one patch, or two when it straddles the send.
//!
//! Confirmation: CNCF Distribution queues a push's event before it writes the tag (in
//! about a third of pushes a receiver that asks at once still reads the old digest), so a
//! check woken by a tag push may find nothing new. When the check has handled the request
//! and status still names the digest it named before the wake, and not the pushed one,
//! the source is patched again, at most [`CONFIRMS`] times.
//!
//! At most [`CONCURRENCY`] patches run at once, and at most [`MAX_PENDING`] sources are
//! held; beyond that a wake is dropped with a warning (the source's interval still
//! applies).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::matching::SourceKey;
use super::observe::Observer;
use crate::api::ArtifactSource;
use crate::controller::source::REQUESTED_AT;
use crate::metrics::Metrics;

/// Wakes of one source within this long after its patch was sent share one more patch.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Patches in flight at once.
pub const CONCURRENCY: usize = 8;
/// Sources held (waiting for a slot, or in their window) at once.
pub const MAX_PENDING: usize = 10_000;
/// The longest one patch may take.
const PATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Patches more, each when the check of the last found status unchanged.
pub const CONFIRMS: u32 = 3;
/// How often a woken source is looked at while its check is awaited.
const POLL: Duration = Duration::from_millis(50);
/// How long a check may take to handle a request before the waker stops watching it.
const HANDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a patch did not apply.
#[derive(Debug)]
pub enum PatchError {
    /// The source is gone.
    NotFound,
    Failed(String),
}

/// Writes the annotation; the Kubernetes API, or a recorder in tests.
pub trait RequestCheck: Send + Sync + 'static {
    fn request_check(
        &self,
        key: &SourceKey,
        value: &str,
    ) -> impl Future<Output = Result<(), PatchError>> + Send;
}

/// Patches ArtifactSources through the API server.
pub struct KubeRequestCheck(pub kube::Client);

impl RequestCheck for KubeRequestCheck {
    async fn request_check(&self, key: &SourceKey, value: &str) -> Result<(), PatchError> {
        let api: Api<ArtifactSource> = Api::namespaced(self.0.clone(), &key.namespace);
        let patch = serde_json::json!({"metadata": {"annotations": {REQUESTED_AT: value}}});
        let params = PatchParams {
            field_manager: Some("ocisync-webhook".into()),
            ..PatchParams::default()
        };
        match api.patch(&key.name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Err(PatchError::NotFound),
            Err(e) => Err(PatchError::Failed(e.to_string())),
        }
    }
}

/// What a wake expects the check to find: status moving away from `before`, or at
/// `pushed`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// The digest status named when the push arrived.
    pub before: Option<String>,
    /// The digest the push reported, when it did.
    pub pushed: Option<String>,
}

impl Expect {
    /// Two wakes ridden by one patch: the earliest `before`, the latest `pushed`.
    fn merge(old: Option<Expect>, new: Option<Expect>) -> Option<Expect> {
        match (old, new) {
            (Some(old), Some(new)) => Some(Expect {
                before: old.before,
                pushed: new.pushed.or(old.pushed),
            }),
            (old, new) => new.or(old),
        }
    }
}

/// What [`Waker::wake`] did with a wake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// A patch is on its way.
    Scheduled,
    /// It rides on a patch not sent yet, or on the one after the window.
    Coalesced,
    /// Too many sources held: dropped.
    Dropped,
}

#[derive(Debug)]
enum Entry {
    /// Waiting for a patch slot; its patch is not sent.
    Pending { expect: Option<Expect> },
    /// Patch sent; `again`: a wake came after it (with what it expects).
    Sent { again: bool, expect: Option<Expect> },
}

/// Coalesces wakes and runs their patches; cheap to clone.
pub struct Waker<P> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for Waker<P> {
    fn clone(&self) -> Self {
        Waker {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<P> {
    patcher: P,
    observer: Observer,
    metrics: Arc<Metrics>,
    entries: Mutex<HashMap<SourceKey, Entry>>,
    slots: Semaphore,
    window: Duration,
    max_pending: usize,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// How a [`Waker`] runs.
pub struct Limits {
    pub window: Duration,
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window: WINDOW,
            max_pending: MAX_PENDING,
        }
    }
}

impl<P: RequestCheck> Waker<P> {
    pub fn new(
        patcher: P,
        observer: Observer,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        limits: Limits,
    ) -> Self {
        Waker {
            shared: Arc::new(Shared {
                patcher,
                observer,
                metrics,
                entries: Mutex::new(HashMap::new()),
                slots: Semaphore::new(CONCURRENCY),
                window: limits.window,
                max_pending: limits.max_pending,
                stop,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Asks for a check of `key` (see the module's coalescing rules); `expect`: what a tag
    /// push expects the check to find.
    pub fn wake(&self, key: SourceKey, expect: Option<Expect>) -> Wake {
        let Ok(mut entries) = self.shared.entries.lock() else {
            return Wake::Dropped;
        };
        let held = entries.len();
        match entries.get_mut(&key) {
            Some(Entry::Pending { expect: e }) => {
                *e = Expect::merge(e.take(), expect);
                Wake::Coalesced
            }
            Some(Entry::Sent { again, expect: e }) => {
                *again = true;
                *e = Expect::merge(e.take(), expect);
                Wake::Coalesced
            }
            None if held >= self.shared.max_pending => {
                tracing::warn!(source = %key, "webhook: too many sources waking at once; this one waits for its interval");
                Wake::Dropped
            }
            None => {
                entries.insert(key.clone(), Entry::Pending { expect });
                let shared = self.shared.clone();
                self.shared.tasks.spawn(shared.run(key));
                Wake::Scheduled
            }
        }
    }

    /// How many sources are held (waiting, in their window, or awaiting their check).
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.shared.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Waits until every held source is let go.
    #[cfg(test)]
    pub async fn idle(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.tasks.reopen();
    }
}

#[path = "wake_run.rs"]
mod run;

/// Now as RFC 3339 with nanoseconds, later than any value this process gave before.
pub fn requested_at_value() -> String {
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = jiff::Timestamp::now().as_nanosecond();
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or(now);
    let nanos = now.max(previous.saturating_add(1));
    let stamp = jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    format!("{stamp:.9}")
}

#[cfg(test)]
#[path = "wake_tests.rs"]
mod tests;
