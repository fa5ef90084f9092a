//! The ArtifactSources this replica sees, whichever watch holds them: the leader's
//! controllers' or a follower's own.

use std::sync::{Arc, RwLock};

use kube::runtime::reflector;

use crate::api::ArtifactSource;

/// A handle on the current ArtifactSource cache; cheap to clone.
#[derive(Clone, Default)]
pub struct SourcesView(Arc<RwLock<Option<reflector::Store<ArtifactSource>>>>);

impl SourcesView {
    /// From now on, sources are read from `store`.
    pub fn set(&self, store: reflector::Store<ArtifactSource>) {
        if let Ok(mut s) = self.0.write() {
            *s = Some(store);
        }
    }

    /// Every source the cache holds (empty before any watch started).
    pub fn snapshot(&self) -> Vec<Arc<ArtifactSource>> {
        self.0
            .read()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.state()))
            .unwrap_or_default()
    }

    /// Whether the cache has listed every source at least once.
    pub async fn is_ready(&self) -> bool {
        let store = self.0.read().ok().and_then(|s| s.clone());
        match store {
            Some(s) => tokio::time::timeout(std::time::Duration::ZERO, s.wait_until_ready())
                .await
                .is_ok_and(|r| r.is_ok()),
            None => false,
        }
    }
}
