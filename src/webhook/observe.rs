//! What the waker needs to see of a woken source: whether its check handled the request,
//! and which digest status names. Read from this replica's cache, at most one snapshot
//! per [`REFRESH`] however many sources wait, each then a map lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::matching::SourceKey;
use crate::api::ArtifactSource;

/// How old a snapshot may be.
pub const REFRESH: Duration = Duration::from_millis(100);

/// A source's state as far as waking goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `status.artifact.digest`.
    pub digest: Option<String>,
    /// `status.lastHandledRequestedAt`.
    pub handled: Option<String>,
}

impl Observed {
    pub fn of(source: &ArtifactSource) -> Observed {
        let status = source.status.as_ref();
        Observed {
            digest: status.and_then(|s| Some(s.artifact.as_ref()?.digest.clone())),
            handled: status.and_then(|s| s.last_handled_requested_at.clone()),
        }
    }
}

/// Every source the cache holds (the controller's [`SourcesView::snapshot`]).
///
/// [`SourcesView::snapshot`]: crate::controller::view::SourcesView::snapshot
pub type Snapshot = Arc<dyn Fn() -> Vec<Arc<ArtifactSource>> + Send + Sync>;

/// Looks sources up in a recent snapshot.
pub struct Observer {
    snapshot: Snapshot,
    cache: Mutex<Option<(Instant, HashMap<SourceKey, Observed>)>>,
}

impl Observer {
    pub fn new(snapshot: Snapshot) -> Observer {
        Observer {
            snapshot,
            cache: Mutex::new(None),
        }
    }

    /// The source's state, at most [`REFRESH`] old; `None`: not in the cache (gone).
    pub fn get(&self, key: &SourceKey) -> Option<Observed> {
        let Ok(mut cache) = self.cache.lock() else {
            return None;
        };
        let fresh = cache.as_ref().is_some_and(|(at, _)| at.elapsed() < REFRESH);
        if !fresh {
            let map = (self.snapshot)()
                .iter()
                .map(|s| {
                    let key = SourceKey {
                        namespace: s.namespace().unwrap_or_default(),
                        name: s.name_any(),
                    };
                    (key, Observed::of(s))
                })
                .collect();
            *cache = Some((Instant::now(), map));
        }
        cache.as_ref().and_then(|(_, map)| map.get(key).cloned())
    }
}
