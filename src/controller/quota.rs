//! The store's limits as a check sees them: which revisions a namespace's sources keep,
//! how much a pull may unpack, and whether a pulled revision may be committed.

use std::collections::BTreeSet;

use kube::ResourceExt;

use crate::api::ArtifactSource;
use crate::oci::OciError;
use crate::oci::unpack::Limits;
use crate::store::{QuotaExceeded, QuotaScope, RevisionIndex};

use super::context::{Context, stored_key};

/// How much one pull may unpack: the default limit, lowered to what the store and the
/// namespace have left, so that a pull stops before it fills the store's volume.
#[derive(Clone, Copy, Debug)]
pub struct PullBudget {
    limits: Limits,
    /// The quota that lowered the limit, if one did.
    lowered_by: Option<QuotaExceeded>,
}

impl PullBudget {
    /// The limits for the pull.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A pull's result, with a "too large" failure the lowered limit caused turned into
    /// the quota it hit.
    pub fn blame<T>(
        &self,
        pulled: Result<T, OciError>,
    ) -> Result<Result<T, OciError>, QuotaExceeded> {
        match (pulled, self.lowered_by) {
            (Err(OciError::TooLarge(_)), Some(quota)) => Err(quota),
            (pulled, _) => Ok(pulled),
        }
    }
}

/// The budget of the next pull: at most what the store may still take, and at most the
/// namespace quota (a revision larger than the quota can never be kept).
pub async fn pull_budget(ctx: &Context) -> PullBudget {
    let limits = ctx.store.limits();
    let store = ctx.store.clone();
    let stored = tokio::task::spawn_blocking(move || store.usage().bytes)
        .await
        .unwrap_or(0);
    lowered(
        Limits::default(),
        limits.max_bytes,
        limits.namespace_max_bytes,
        stored,
    )
}

/// `defaults` with `max_unpacked_bytes` lowered to the store's and the namespace's room.
fn lowered(
    defaults: Limits,
    max_bytes: Option<u64>,
    namespace_max_bytes: Option<u64>,
    stored: u64,
) -> PullBudget {
    let mut budget = PullBudget {
        limits: defaults,
        lowered_by: None,
    };
    let rooms = [
        max_bytes.map(|limit| (limit.saturating_sub(stored), QuotaScope::Store, limit)),
        namespace_max_bytes.map(|limit| (limit, QuotaScope::Namespace, limit)),
    ];
    for (room, scope, limit) in rooms.into_iter().flatten() {
        if room < budget.limits.max_unpacked_bytes {
            budget.limits.max_unpacked_bytes = room;
            budget.lowered_by = Some(QuotaExceeded {
                scope,
                needed: None,
                limit,
            });
        }
    }
    budget
}

/// Whether the revision `incoming` may become the current revision of `source`:
/// with it, the store stays within its size limit and the revisions the source's
/// namespace keeps (each source's current and previous one, this source's previous one
/// being the current one it replaces) within the namespace quota. A store over its limit
/// is garbage collected once before refusing. No other revision is admitted while the
/// returned guard is held: keep it until the revision is committed.
pub async fn admit(
    ctx: &Context,
    source: &ArtifactSource,
    mut incoming: RevisionIndex,
) -> Result<Admitted, QuotaExceeded> {
    let admission = ctx.store.admission().await;
    incoming.files.sort_by(|a, b| a.path.cmp(&b.path));
    let kept: Vec<String> = kept_by_namespace(ctx, source).into_iter().collect();
    let check = || {
        let store = ctx.store.clone();
        let (incoming, kept) = (incoming.clone(), kept.clone());
        async move {
            match tokio::task::spawn_blocking(move || store.check_quota(&incoming, &kept)).await {
                Ok(decision) => decision,
                Err(e) => {
                    tracing::warn!(error = %e, "quota check failed; admitting the revision");
                    Ok(())
                }
            }
        }
    };
    match check().await {
        Err(e) if e.scope == QuotaScope::Store => {
            super::collect_garbage(ctx).await;
            check().await
        }
        other => other,
    }
    .map(|()| Admitted {
        _admission: admission,
    })
}

/// A revision admitted by [`admit`]; no other is admitted until this is dropped.
#[must_use = "hold it until the admitted revision is committed"]
pub struct Admitted {
    _admission: tokio::sync::OwnedMutexGuard<()>,
}

/// [`admit`] for the revision stored under `key` (pulled for another source).
pub async fn admit_stored(
    ctx: &Context,
    source: &ArtifactSource,
    key: &str,
) -> Result<(), QuotaExceeded> {
    let store = ctx.store.clone();
    let lookup = key.to_string();
    let index = tokio::task::spawn_blocking(move || store.index(&lookup))
        .await
        .ok()
        .flatten();
    match index {
        Some(index) => admit(ctx, source, index).await.map(drop),
        None => Ok(()),
    }
}

/// The store keys of the revisions the sources of `source`'s namespace keep once `source`
/// moves on.
fn kept_by_namespace(ctx: &Context, source: &ArtifactSource) -> BTreeSet<String> {
    let sources = ctx.sources.state();
    let held: Vec<Held> = sources
        .iter()
        .map(|s| {
            let memory = s.uid().map(|uid| ctx.memory_of(&uid)).unwrap_or_default();
            Held {
                namespace: s.namespace(),
                uid: s.uid(),
                status: s
                    .status
                    .as_ref()
                    .and_then(|st| st.artifact.as_ref())
                    .map(stored_key),
                current: memory.current,
                previous: memory.previous,
            }
        })
        .collect();
    kept(
        &held,
        source.namespace().as_deref(),
        source.uid().as_deref(),
    )
}

/// What one source holds in the store: the revision in its status and the current and
/// previous ones the controller remembers.
#[derive(Clone, Debug, Default)]
struct Held {
    namespace: Option<String>,
    uid: Option<String>,
    status: Option<String>,
    current: Option<String>,
    previous: Option<String>,
}

/// The revisions the sources of `namespace` keep once the source `this` takes a new
/// revision: each other source's revisions, and of `this` only its current one (its
/// previous one is dropped when the new one comes in).
fn kept(sources: &[Held], namespace: Option<&str>, this: Option<&str>) -> BTreeSet<String> {
    let mut kept = BTreeSet::new();
    for s in sources
        .iter()
        .filter(|s| s.namespace.as_deref() == namespace)
    {
        if this.is_some() && s.uid.as_deref() == this {
            kept.extend(s.current.clone().or_else(|| s.status.clone()));
        } else {
            kept.extend(
                s.status
                    .iter()
                    .chain(&s.current)
                    .chain(&s.previous)
                    .cloned(),
            );
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn the_pull_budget_is_the_room_left() {
        let defaults = Limits::default();
        let b = lowered(defaults, None, None, 0);
        assert_eq!(b.limits().max_unpacked_bytes, defaults.max_unpacked_bytes);
        assert!(b.lowered_by.is_none());

        let b = lowered(defaults, Some(100 * MIB), None, 30 * MIB);
        assert_eq!(b.limits().max_unpacked_bytes, 70 * MIB);
        assert_eq!(b.lowered_by.map(|q| q.scope), Some(QuotaScope::Store));

        let b = lowered(defaults, Some(100 * MIB), Some(10 * MIB), 30 * MIB);
        assert_eq!(b.limits().max_unpacked_bytes, 10 * MIB);
        assert_eq!(b.lowered_by.map(|q| q.scope), Some(QuotaScope::Namespace));

        // A store over its limit leaves no room at all.
        let b = lowered(defaults, Some(10 * MIB), None, 30 * MIB);
        assert_eq!(b.limits().max_unpacked_bytes, 0);
    }

    #[test]
    fn only_a_lowered_limit_blames_the_quota() {
        let too_large = || Err::<(), _>(OciError::TooLarge("more".into()));
        let lowered_budget = lowered(Limits::default(), Some(MIB), None, 0);
        let quota = lowered_budget.blame(too_large()).unwrap_err();
        assert_eq!(quota.scope, QuotaScope::Store);
        assert_eq!(quota.reason(), "QuotaExceeded");
        assert_eq!(
            quota.to_string(),
            "the artifact unpacks to more than the content store has room for (its limit is 1048576 bytes)"
        );
        assert!(matches!(lowered_budget.blame(Ok(())), Ok(Ok(()))));

        let default_budget = lowered(Limits::default(), None, None, 0);
        assert!(matches!(
            default_budget.blame(too_large()),
            Ok(Err(OciError::TooLarge(_)))
        ));
    }

    fn held(namespace: &str, uid: &str, revisions: [Option<&str>; 3]) -> Held {
        let [status, current, previous] = revisions.map(|r| r.map(String::from));
        Held {
            namespace: Some(namespace.into()),
            uid: Some(uid.into()),
            status,
            current,
            previous,
        }
    }

    #[test]
    fn a_namespace_keeps_its_own_sources_revisions() {
        let sources = [
            held("a", "1", [Some("s1"), Some("c1"), Some("p1")]),
            held("a", "2", [Some("s2"), None, None]),
            held("b", "3", [Some("s3"), Some("c3"), Some("p3")]),
        ];
        let names = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
        // Source 1 moves on: it keeps its current revision, not its previous one.
        assert_eq!(names(kept(&sources, Some("a"), Some("1"))), ["c1", "s2"]);
        // Another source of `a` moves on: source 1 keeps all it holds.
        assert_eq!(
            names(kept(&sources, Some("a"), Some("2"))),
            ["c1", "p1", "s1", "s2"]
        );
        // Namespace `b` is charged for its own only.
        assert_eq!(names(kept(&sources, Some("b"), Some("3"))), ["c3"]);
        assert_eq!(
            names(kept(&sources, Some("b"), Some("9"))),
            ["c3", "p3", "s3"]
        );
        // Before the first check, the status is the current revision.
        let fresh = [held("a", "1", [Some("s1"), None, None])];
        assert_eq!(names(kept(&fresh, Some("a"), Some("1"))), ["s1"]);
    }
}
