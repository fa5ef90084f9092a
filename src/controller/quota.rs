//! The store's limits as a check sees them: which revisions a namespace's sources keep,
//! how much a pull may unpack, and whether a pulled revision may be committed.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt;

use crate::api::ArtifactSource;
use crate::api::reason::{Problem, SourceReason};
use crate::digest::Digest;
use crate::oci::OciError;
use crate::oci::content;
use crate::oci::registry::RawManifest;
use crate::oci::unpack::Limits;
use crate::store::{BLOCK, NamespaceRoom, QuotaExceeded, QuotaScope, Reservation, RevisionIndex};

use super::context::{Context, stored_key};

/// What each file of a pull may cost beyond its bytes: its last block and its entry.
const FILE_OVERHEAD: u64 = 2 * BLOCK;

/// A layer may unpack to this much whatever its size (the unpacker's bomb ratio applies
/// above it).
const LAYER_FLOOR: u64 = 16 * 1024 * 1024;

/// How long a pull waits for others to give back the room it wants before it takes
/// what is left.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// How much one pull may unpack: the room reserved for it in the store and its
/// namespace, given back when the budget is dropped (after the commit, or the failure).
#[derive(Debug)]
pub struct PullBudget {
    limits: Limits,
    reservation: Reservation,
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
        match (pulled, self.reservation.lowered_by) {
            (Err(OciError::TooLarge(_)), Some(quota)) => Err(quota),
            (pulled, _) => Ok(pulled),
        }
    }
}

/// The budget of a pull of `manifest` for `source`: room reserved out of what the store
/// and the namespace have left once the other pulls in progress have theirs. A pull that
/// wants more than is left while others hold room waits (up to [`MAX_WAIT`]) for them to
/// end.
pub async fn pull_budget(
    ctx: &Context,
    source: &ArtifactSource,
    manifest: &RawManifest,
    layer_media_type: Option<&str>,
) -> PullBudget {
    let defaults = Limits::default();
    let estimate = unpack_estimate(&defaults, manifest, layer_media_type);
    let want = estimate.saturating_add(defaults.max_files as u64 * FILE_OVERHEAD);
    let namespace = namespace_room(ctx, source).await;
    let give_up = tokio::time::Instant::now() + MAX_WAIT;
    let reservation = loop {
        let released = ctx.store.released();
        let wait = tokio::time::Instant::now() < give_up;
        if let Some(r) = ctx.store.try_reserve(want, namespace.as_ref(), wait) {
            break r;
        }
        // A release between the check and here is seen within a second.
        let _ = tokio::time::timeout(Duration::from_secs(1), released).await;
    };
    PullBudget {
        limits: limits_for(defaults, estimate, &reservation),
        reservation,
    }
}

/// The namespace of `source` with what its sources keep once `source` moves on.
async fn namespace_room(ctx: &Context, source: &ArtifactSource) -> Option<NamespaceRoom> {
    let namespace = source.namespace()?;
    if ctx.store.limits().namespace_max_bytes.is_none() {
        return Some(NamespaceRoom { namespace, kept: 0 });
    }
    let kept = kept_by_namespace(ctx, source);
    let store = ctx.store.clone();
    let kept = tokio::task::spawn_blocking(move || {
        let indexes: Vec<RevisionIndex> = kept.iter().filter_map(|k| store.index(k)).collect();
        crate::store::charge(&indexes)
    })
    .await
    .unwrap_or(0);
    Some(NamespaceRoom { namespace, kept })
}

/// The most a pull of `manifest` can unpack: for each layer it takes, the unpacker's bomb
/// cap (`max_ratio` times its size, at least 16 MiB), together at most the default
/// limit; the default limit for an image index, whose layers are not known yet.
fn unpack_estimate(defaults: &Limits, manifest: &RawManifest, media_type: Option<&str>) -> u64 {
    let image = matches!(
        manifest.media_type.as_str(),
        content::MANIFEST_V1 | content::DOCKER_MANIFEST_V2
    );
    let parsed = image
        .then(|| {
            serde_json::from_slice::<oci_client::manifest::OciImageManifest>(&manifest.bytes).ok()
        })
        .flatten();
    let Some(parsed) = parsed else {
        return defaults.max_unpacked_bytes;
    };
    parsed
        .layers
        .iter()
        .filter(|l| media_type.is_none_or(|m| l.media_type == m))
        .map(|l| {
            u64::try_from(l.size)
                .unwrap_or(u64::MAX)
                .saturating_mul(defaults.max_ratio)
                .max(LAYER_FLOOR)
        })
        .fold(0, u64::saturating_add)
        .min(defaults.max_unpacked_bytes)
}

/// The limits of a pull with `reservation`: the `estimate` (plus the entries' cost) and the
/// default file count if it got all it wanted; else fewer files (at most a quarter of the room in their
/// overhead) and the rest of the room in bytes.
fn limits_for(defaults: Limits, estimate: u64, reservation: &Reservation) -> Limits {
    let bytes = reservation.bytes();
    if reservation.lowered_by.is_none() {
        // the unpacker charges every file and directory it creates ENTRY_COST besides its
        // bytes; the reservation holds FILE_OVERHEAD (more) per possible file for that
        let entries = (defaults.max_files as u64).saturating_mul(crate::oci::unpack::ENTRY_COST);
        return Limits {
            max_unpacked_bytes: estimate.saturating_add(entries),
            ..defaults
        };
    }
    let files = (defaults.max_files as u64).min(bytes / (2 * FILE_OVERHEAD));
    Limits {
        max_unpacked_bytes: bytes.saturating_sub(files * FILE_OVERHEAD),
        max_files: usize::try_from(files).unwrap_or(defaults.max_files),
        ..defaults
    }
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
    budget: Option<&PullBudget>,
) -> Result<Admitted, Problem<SourceReason>> {
    let admission = ctx.store.admission().await;
    incoming.files.sort_by(|a, b| a.path.cmp(&b.path));
    // What the namespace keeps counts only against a namespace quota; without one, its
    // sources and their indexes are not read (that was O(sources) per admission, under the
    // store-wide admission lock: quadratic and serial at scale).
    let kept = if ctx.store.limits().namespace_max_bytes.is_some() {
        kept_by_namespace(ctx, source)
    } else {
        Vec::new()
    };
    let check = || {
        let store = ctx.store.clone();
        let (incoming, kept) = (incoming.clone(), kept.clone());
        // The room the other pulls in progress hold is not this revision's to take.
        let others = store.reserved_by_others(budget.map(|b| &b.reservation));
        tokio::task::spawn_blocking(move || store.check_quota(&incoming, &kept, others))
    };
    let decision = match check().await {
        Ok(Err(e)) if e.scope == QuotaScope::Store => {
            super::collect_garbage(ctx).await;
            check().await
        }
        other => other,
    };
    match decision {
        Ok(Ok(())) => Ok(Admitted {
            _admission: admission,
        }),
        Ok(Err(e)) => Err(Problem::new(e.reason(), e.to_string())),
        // a failed check admits nothing (the quota would not hold)
        Err(e) => Err(Problem::new(
            SourceReason::InternalError,
            format!("quota check: {e}"),
        )),
    }
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
    key: &Digest,
) -> Result<(), Problem<SourceReason>> {
    let store = ctx.store.clone();
    let lookup = key.clone();
    let index = tokio::task::spawn_blocking(move || store.index(&lookup))
        .await
        .ok()
        .flatten();
    match index {
        Some(index) => admit(ctx, source, index, None).await.map(drop),
        None => Ok(()),
    }
}

/// The store keys of the revisions the sources of `source`'s namespace keep once `source`
/// moves on.
fn kept_by_namespace(ctx: &Context, source: &ArtifactSource) -> Vec<Digest> {
    let sources = ctx.sources.state();
    let held: Vec<Held<Digest>> = sources
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
                    .and_then(stored_key),
                current: memory.current,
                previous: memory.previous,
            }
        })
        .collect();
    let namespace = source.namespace();
    kept(&held, namespace.as_deref(), source.uid().as_deref())
        .into_iter()
        .collect()
}

/// What one source holds in the store: the revision in its status and the current and
/// previous ones the controller remembers.
#[derive(Clone, Debug, Default)]
struct Held<K> {
    namespace: Option<String>,
    uid: Option<String>,
    status: Option<K>,
    current: Option<K>,
    previous: Option<K>,
}

/// The revisions the sources of `namespace` keep once the source `this` takes a new
/// revision: each other source's revisions, and of `this` only its current one (its
/// previous one is dropped when the new one comes in).
fn kept<K: Ord + Clone>(
    sources: &[Held<K>],
    namespace: Option<&str>,
    this: Option<&str>,
) -> BTreeSet<K> {
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

    fn store(max: Option<u64>, namespace: Option<u64>) -> (tempfile::TempDir, crate::store::Store) {
        let root = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(root.path()).unwrap().with_limits(
            crate::store::StoreLimits {
                max_bytes: max,
                namespace_max_bytes: namespace,
            },
        );
        (root, store)
    }

    fn budget(store: &crate::store::Store, estimate: u64, want: u64) -> PullBudget {
        let reservation = store.try_reserve(want, None, false).unwrap();
        PullBudget {
            limits: limits_for(Limits::default(), estimate, &reservation),
            reservation,
        }
    }

    #[test]
    fn the_pull_budget_is_the_room_reserved() {
        let defaults = Limits::default();
        let (_root, roomy) = store(None, None);
        let b = budget(&roomy, 20 * MIB, 100 * MIB);
        let entries = defaults.max_files as u64 * crate::oci::unpack::ENTRY_COST;
        assert_eq!(
            b.limits().max_unpacked_bytes,
            20 * MIB + entries,
            "the estimate, and what the unpacker charges per entry"
        );
        assert_eq!(b.limits().max_files, defaults.max_files);
        assert!(b.reservation.lowered_by.is_none());

        // 64 KiB of room: 4 files of 8 KiB overhead, and 32 KiB of bytes.
        let (_root, small) = store(Some(64 * 1024), None);
        let b = budget(&small, 20 * MIB, 100 * MIB);
        assert_eq!(b.limits().max_files, 4);
        assert_eq!(b.limits().max_unpacked_bytes, 32 * 1024);
        assert_eq!(
            b.reservation.lowered_by.map(|q| q.scope),
            Some(QuotaScope::Store)
        );
        // A large room keeps the default file count.
        let (_root, large) = store(Some(200 * MIB), None);
        let b = budget(&large, 2 * MIB * 1024, 4 * MIB * 1024);
        assert_eq!(b.limits().max_files, defaults.max_files);
        assert_eq!(
            b.limits().max_unpacked_bytes,
            200 * MIB - 10_000 * FILE_OVERHEAD
        );
        // No room at all.
        let (_root, none) = store(Some(0), None);
        let b = budget(&none, MIB, MIB);
        assert_eq!(b.limits().max_unpacked_bytes, 0);
        assert_eq!(b.limits().max_files, 0);
    }

    #[test]
    fn only_a_lowered_limit_blames_the_quota() {
        let too_large = || Err::<(), _>(OciError::TooLarge("more".into()));
        let (_root, small) = store(Some(MIB), None);
        let lowered_budget = budget(&small, 10 * MIB, 10 * MIB);
        let quota = lowered_budget.blame(too_large()).unwrap_err();
        assert_eq!(quota.scope, QuotaScope::Store);
        assert_eq!(quota.reason().as_str(), "QuotaExceeded");
        assert_eq!(
            quota.to_string(),
            "the artifact unpacks to more than the content store has room for (its limit is 1048576 bytes)"
        );
        assert!(matches!(lowered_budget.blame(Ok(())), Ok(Ok(()))));

        let (_root, roomy) = store(None, None);
        let default_budget = budget(&roomy, MIB, MIB);
        assert!(matches!(
            default_budget.blame(too_large()),
            Ok(Err(OciError::TooLarge(_)))
        ));
    }

    fn manifest(media_type: &str, layers: &[(&str, i64)]) -> RawManifest {
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(m, size)| {
                serde_json::json!({"mediaType": m, "size": size,
                    "digest": format!("sha256:{}", "a".repeat(64))})
            })
            .collect();
        let body = serde_json::json!({"schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": content::EMPTY_CONFIG, "size": 2,
                "digest": format!("sha256:{}", "b".repeat(64))},
            "layers": layers});
        RawManifest {
            digest: Digest::of(b"c"),
            media_type: media_type.into(),
            bytes: serde_json::to_vec(&body).unwrap().into(),
        }
    }

    #[test]
    fn a_pull_wants_what_its_layers_can_unpack_to() {
        let d = Limits::default();
        let small = manifest(content::MANIFEST_V1, &[("a", 1000), ("b", 1000)]);
        assert_eq!(unpack_estimate(&d, &small, None), 2 * LAYER_FLOOR);
        assert_eq!(unpack_estimate(&d, &small, Some("a")), LAYER_FLOOR);
        let big = manifest(content::MANIFEST_V1, &[("a", 1_000_000)]);
        assert_eq!(unpack_estimate(&d, &big, None), 200_000_000);
        let huge = manifest(content::MANIFEST_V1, &[("a", i64::MAX)]);
        assert_eq!(unpack_estimate(&d, &huge, None), d.max_unpacked_bytes);
        // An index (layers unknown) or an unreadable manifest: the default.
        let index = manifest(content::INDEX_V1, &[("a", 1)]);
        assert_eq!(unpack_estimate(&d, &index, None), d.max_unpacked_bytes);
        let mut broken = manifest(content::MANIFEST_V1, &[]);
        broken.bytes = b"{".to_vec().into();
        assert_eq!(unpack_estimate(&d, &broken, None), d.max_unpacked_bytes);
    }

    fn held(namespace: &str, uid: &str, revisions: [Option<&str>; 3]) -> Held<String> {
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
