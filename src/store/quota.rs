//! Limits on what the store holds: a global size limit (by default 90% of the store's
//! volume) and a per-namespace quota on what one namespace's sources keep stored. The
//! decisions are pure functions on plain data; [`Store`] only supplies the figures.
//!
//! What a set of revisions costs ([`charge`]): each distinct blob, rounded up to whole
//! [`BLOCK`]s, plus one block for every entry of every revision, where the directories a
//! revision's paths imply count as entries like its files. A revision of many empty files
//! or deep directories is therefore not free: it costs index space here and inodes on
//! every node the agent writes it to. The global limit counts the store the same way,
//! plus each revision index file's own bytes ([`index_charge`]).
//!
//! Pulls in progress unpack into `tmp/` before they are admitted; each first reserves
//! the room it may fill ([`Store::try_reserve`]) out of what the store and its namespace
//! have left after what the other pulls in progress reserved, so that concurrent pulls
//! cannot together fill the volume.

use std::collections::{BTreeSet, HashMap};
use std::io;

use crate::api::reason::SourceReason;
use std::sync::Arc;

use super::{RevisionIndex, Store, encode_index};
use crate::digest::Digest;

/// The unit of the charge: a filesystem block.
pub const BLOCK: u64 = 4096;

/// The share of the store's volume the store fills at most when no limit is given.
const VOLUME_SHARE_PERCENT: u64 = 90;

/// The store's limits; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most bytes of blobs the whole store holds.
    pub max_bytes: Option<u64>,
    /// Most bytes (as [`charge`]d) the revisions one namespace's sources keep may cost.
    pub namespace_max_bytes: Option<u64>,
}

/// The figures a quota decision is taken on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// What the store holds now ([`StoreUsage::bytes`](super::StoreUsage::bytes)).
    pub stored_bytes: u64,
    /// What storing the incoming revision adds: its blobs not stored yet and its index if
    /// that is not stored yet.
    pub new_bytes: u64,
    /// What the other pulls in progress have reserved.
    pub reserved_bytes: u64,
    /// What the namespace's revisions cost with the incoming one.
    pub namespace_bytes: u64,
}

/// Which limit a revision would exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaScope {
    Store,
    Namespace,
}

/// A revision refused because it would exceed a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(self))]
pub struct QuotaExceeded {
    pub scope: QuotaScope,
    /// What the store or the namespace would hold, in bytes; `None` when a pull was
    /// stopped at the room left, before the artifact's size was known.
    pub needed: Option<u64>,
    pub limit: u64,
}

impl QuotaExceeded {
    /// The condition reason.
    pub fn reason(&self) -> SourceReason {
        SourceReason::QuotaExceeded
    }
}

fn describe(e: &QuotaExceeded) -> String {
    let limit = e.limit;
    match (e.scope, e.needed) {
        (QuotaScope::Store, Some(needed)) => {
            format!("the content store would hold {needed} bytes, over its limit of {limit} bytes")
        }
        (QuotaScope::Store, None) => format!(
            "the artifact unpacks to more than the content store has room for (its limit is {limit} bytes)"
        ),
        (QuotaScope::Namespace, Some(needed)) => format!(
            "this namespace's stored revisions would cost {needed} bytes, over its quota of {limit} bytes"
        ),
        (QuotaScope::Namespace, None) => {
            format!(
                "the artifact unpacks to more than is left of this namespace's quota of {limit} bytes"
            )
        }
    }
}

/// Whether a revision may be stored: the store stays within `max_bytes` and the
/// namespace within `namespace_max_bytes`.
pub fn admit(limits: &StoreLimits, a: &Admission) -> Result<(), QuotaExceeded> {
    let stored = a
        .stored_bytes
        .saturating_add(a.new_bytes)
        .saturating_add(a.reserved_bytes);
    if let Some(limit) = limits.max_bytes
        && a.new_bytes > 0
        && stored > limit
    {
        return Err(QuotaExceeded {
            scope: QuotaScope::Store,
            needed: Some(stored),
            limit,
        });
    }
    if let Some(limit) = limits.namespace_max_bytes
        && a.namespace_bytes > limit
    {
        return Err(QuotaExceeded {
            scope: QuotaScope::Namespace,
            needed: Some(a.namespace_bytes),
            limit,
        });
    }
    Ok(())
}

/// What `revisions` cost together: their distinct blobs in whole blocks, plus a block
/// per entry (file or implied directory) of each revision.
pub fn charge<'a>(revisions: impl IntoIterator<Item = &'a RevisionIndex>) -> u64 {
    let mut blobs: HashMap<&Digest, u64> = HashMap::new();
    let mut entries = 0u64;
    for revision in revisions {
        blobs.extend(revision.files.iter().map(|f| (&f.digest, f.size)));
        entries = entries.saturating_add(entries_of(revision));
    }
    blobs
        .values()
        .map(|size| blob_charge(*size))
        .fold(entries.saturating_mul(BLOCK), u64::saturating_add)
}

/// `bytes` rounded up to whole [`BLOCK`]s.
pub(super) fn whole_blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// What a blob of `size` bytes costs: whole blocks, at least one (an empty file too).
pub fn blob_charge(size: u64) -> u64 {
    whole_blocks(size).max(BLOCK)
}

/// The entries of a revision: its files and the directories their paths imply.
fn entries_of(revision: &RevisionIndex) -> u64 {
    let mut dirs = BTreeSet::new();
    for file in &revision.files {
        let mut parts: Vec<&str> = file.path.split('/').collect();
        parts.pop();
        for depth in 1..=parts.len() {
            dirs.insert(parts[..depth].join("/"));
        }
    }
    (revision.files.len() as u64).saturating_add(dirs.len() as u64)
}

/// What a revision's index costs the store: a block per entry, plus its own
/// `index_bytes` in whole blocks.
pub fn index_charge(revision: &RevisionIndex, index_bytes: u64) -> u64 {
    entries_of(revision)
        .saturating_mul(BLOCK)
        .saturating_add(whole_blocks(index_bytes))
}

/// How much of `want` a pull gets when `free` is left after the `others` reserved by the
/// pulls in progress: all of it if it fits, else what is free if no other pull holds
/// anything; `None` (wait for one to end) when others hold room the pull needs.
pub fn grant(want: u64, free: u64, others: u64) -> Option<u64> {
    (want <= free || others == 0).then_some(want.min(free))
}

/// What the pulls in progress have reserved.
#[derive(Debug, Default)]
pub(super) struct Book {
    booked: std::sync::Mutex<Booked>,
    released: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Booked {
    store: u64,
    namespaces: HashMap<String, u64>,
}

impl Book {
    fn booked(&self) -> std::sync::MutexGuard<'_, Booked> {
        // Plain counters: a poisoned lock still holds usable figures.
        self.booked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The namespace a pull is for, and what its sources keep in the store (as [`charge`]d).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRoom {
    pub namespace: String,
    pub kept: u64,
}

/// Room reserved for one pull in progress, in the store and in its namespace; given back
/// when dropped (after the pull is committed, or has failed).
#[must_use = "the room is given back when this is dropped"]
#[derive(Debug)]
pub struct Reservation {
    book: Arc<Book>,
    bytes: u64,
    namespace: Option<String>,
    /// The limit that made the reservation smaller than wanted, if one did.
    pub lowered_by: Option<QuotaExceeded>,
}

impl Reservation {
    /// The bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut booked = self.book.booked();
        booked.store = booked.store.saturating_sub(self.bytes);
        if let Some(ns) = &self.namespace
            && let Some(held) = booked.namespaces.get_mut(ns)
        {
            *held = held.saturating_sub(self.bytes);
            if *held == 0 {
                booked.namespaces.remove(ns);
            }
        }
        drop(booked);
        self.book.released.notify_waiters();
    }
}

/// The store's size limit: `max_bytes` if given, else 90% of the volume, which is the
/// smaller of the filesystem's size and `volume_limit` (an emptyDir's `sizeLimit`, which
/// the filesystem does not show). `None` when neither is known.
pub fn global_limit(
    max_bytes: Option<u64>,
    volume_limit: Option<u64>,
    filesystem_bytes: Option<u64>,
) -> Option<u64> {
    max_bytes.or_else(|| {
        let volume = match (volume_limit, filesystem_bytes) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(volume / 100 * VOLUME_SHARE_PERCENT + volume % 100 * VOLUME_SHARE_PERCENT / 100)
    })
}

impl Store {
    /// The store's limits.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// The store with these limits.
    pub fn with_limits(mut self, limits: StoreLimits) -> Store {
        self.limits = limits;
        self
    }

    /// The right to check a revision against the limits and commit it before anyone else
    /// checks: two pulls admitted at once would each fit alone and overshoot together.
    pub async fn admission(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.admissions.clone().lock_owned().await
    }

    /// The size of the filesystem the store is on, in bytes.
    pub fn filesystem_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(self.root())?;
        Ok(stat.f_blocks.saturating_mul(stat.f_frsize))
    }

    /// What storing `revision` adds to the store: its blobs not stored yet (each once,
    /// in whole blocks) and its index if that is not stored yet.
    pub fn missing_bytes(&self, revision: &RevisionIndex) -> u64 {
        let mut seen = BTreeSet::new();
        let blobs = revision
            .files
            .iter()
            .filter(|f| seen.insert(&f.digest))
            .filter(|f| self.blob_path(&f.digest).is_none())
            .map(|f| blob_charge(f.size))
            .fold(0, u64::saturating_add);
        let stored = self.index_path(&revision.key()).exists();
        let index = match stored {
            true => 0,
            false => index_charge(
                revision,
                encode_index(revision).map_or(u64::MAX, |j| j.len() as u64),
            ),
        };
        blobs.saturating_add(index)
    }

    /// Reserves room for a pull that may unpack `want` bytes (as charged), in the store
    /// and in `namespace` if given: what it wants, or what is left when that is less and
    /// no other pull holds room. `None` when other pulls hold room it needs: wait for one
    /// to end ([`Store::released`]) and ask again, or ask with `wait: false` to take
    /// what is left now.
    pub fn try_reserve(
        &self,
        want: u64,
        namespace: Option<&NamespaceRoom>,
        wait: bool,
    ) -> Option<Reservation> {
        let mut booked = self.book.booked();
        let stored = self.usage().bytes;
        let scopes = [
            self.limits.max_bytes.map(|limit| {
                let others = booked.store;
                (
                    limit,
                    stored.saturating_add(others),
                    others,
                    QuotaScope::Store,
                )
            }),
            namespace
                .zip(self.limits.namespace_max_bytes)
                .map(|(ns, limit)| {
                    let others = booked.namespaces.get(&ns.namespace).copied().unwrap_or(0);
                    (
                        limit,
                        ns.kept.saturating_add(others),
                        others,
                        QuotaScope::Namespace,
                    )
                }),
        ];
        let (mut bytes, mut lowered_by) = (want, None);
        for (limit, used, others, scope) in scopes.into_iter().flatten() {
            let free = limit.saturating_sub(used);
            let granted = match wait {
                true => grant(want, free, others)?,
                false => want.min(free),
            };
            if granted < bytes {
                bytes = granted;
                lowered_by = Some(QuotaExceeded {
                    scope,
                    needed: None,
                    limit,
                });
            }
        }
        booked.store = booked.store.saturating_add(bytes);
        let namespace = namespace.map(|ns| ns.namespace.clone());
        if let Some(ns) = &namespace {
            let held = booked.namespaces.entry(ns.clone()).or_default();
            *held = held.saturating_add(bytes);
        }
        Some(Reservation {
            book: self.book.clone(),
            bytes,
            namespace,
            lowered_by,
        })
    }

    /// Completes when a pull gives back its reservation after this is called.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.book.released.notified()
    }

    /// What the pulls in progress have reserved in the store, less `own`.
    pub fn reserved_by_others(&self, own: Option<&Reservation>) -> u64 {
        let total = self.book.booked().store;
        total.saturating_sub(own.map_or(0, Reservation::bytes))
    }

    /// Whether `incoming` may be stored for a namespace whose sources would then keep
    /// `kept` (the keys of the other stored revisions they need; unreadable ones are
    /// skipped), while other pulls in progress hold `reserved` bytes of the store.
    pub fn check_quota(
        &self,
        incoming: &RevisionIndex,
        kept: &[Digest],
        reserved: u64,
    ) -> Result<(), QuotaExceeded> {
        let incoming_key = incoming.key();
        let mut revisions: Vec<RevisionIndex> = kept
            .iter()
            .filter(|k| **k != incoming_key)
            .filter_map(|d| self.index(d))
            .collect();
        revisions.push(incoming.clone());
        let admission = Admission {
            stored_bytes: self.usage().bytes,
            new_bytes: self.missing_bytes(incoming),
            reserved_bytes: reserved,
            namespace_bytes: charge(&revisions),
        };
        admit(&self.limits, &admission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::IndexFile;

    const MIB: u64 = 1024 * 1024;

    fn digest(n: u8) -> Digest {
        Digest::from_hex(&hex::encode([n; 32])).unwrap()
    }

    fn revision(n: u8, files: &[(&str, u8, u64)]) -> RevisionIndex {
        RevisionIndex {
            digest: digest(n),
            selection: Default::default(),
            files: files
                .iter()
                .map(|(path, blob, size)| IndexFile {
                    path: path.to_string(),
                    digest: digest(*blob),
                    size: *size,
                    platform: None,
                })
                .collect(),
        }
    }

    fn limits(max: Option<u64>, namespace: Option<u64>) -> StoreLimits {
        StoreLimits {
            max_bytes: max,
            namespace_max_bytes: namespace,
        }
    }

    #[test]
    fn blobs_cost_whole_blocks_and_entries_a_block_each() {
        // one file of 1 byte: one block of content, one entry
        assert_eq!(charge([&revision(1, &[("a", 10, 1)])]), 2 * BLOCK);
        // an empty file still takes a block
        assert_eq!(charge([&revision(1, &[("a", 10, 0)])]), 2 * BLOCK);
        // 3 blocks + 1 of content, one entry
        assert_eq!(
            charge([&revision(1, &[("a", 10, 3 * BLOCK + 1)])]),
            5 * BLOCK
        );
        // directories are entries: x, x/y, x/y/z and the file
        assert_eq!(charge([&revision(1, &[("x/y/z/f", 10, 1)])]), 5 * BLOCK);
        // shared directories count once per revision
        assert_eq!(
            charge([&revision(1, &[("x/f", 10, 1), ("x/g", 11, 1)])]),
            5 * BLOCK
        );
        assert_eq!(charge(&[]), 0);
    }

    #[test]
    fn shared_contents_are_charged_once() {
        let old = revision(1, &[("rules.yaml", 10, MIB), ("extra.yaml", 11, MIB)]);
        let new = revision(2, &[("rules.yaml", 10, MIB), ("extra.yaml", 12, MIB)]);
        // blobs 10, 11, 12 once each; two entries in each revision
        assert_eq!(charge([&old, &new]), 3 * MIB + 4 * BLOCK);
        // the same file under many names: one blob, many entries
        let names: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
        let copies: Vec<(&str, u8, u64)> = names.iter().map(|n| (n.as_str(), 7, MIB)).collect();
        assert_eq!(charge([&revision(3, &copies)]), MIB + 100 * BLOCK);
    }

    #[test]
    fn the_store_limit_counts_only_new_contents() {
        let full = Admission {
            stored_bytes: 90 * MIB,
            new_bytes: 20 * MIB,
            reserved_bytes: 0,
            namespace_bytes: 0,
        };
        let refused = admit(&limits(Some(100 * MIB), None), &full).unwrap_err();
        assert_eq!(refused.scope, QuotaScope::Store);
        assert_eq!(
            (refused.needed, refused.limit),
            (Some(110 * MIB), 100 * MIB)
        );
        assert_eq!(refused.reason().as_str(), "QuotaExceeded");
        assert!(
            refused
                .to_string()
                .contains("over its limit of 104857600 bytes")
        );
        assert_eq!(admit(&limits(Some(110 * MIB), None), &full), Ok(()));
        assert_eq!(admit(&limits(None, None), &full), Ok(()));
        // Nothing new to store: a store over its limit still serves stored revisions.
        let stored = Admission {
            stored_bytes: 200 * MIB,
            new_bytes: 0,
            reserved_bytes: 0,
            namespace_bytes: 0,
        };
        assert_eq!(admit(&limits(Some(100 * MIB), None), &stored), Ok(()));
    }

    #[test]
    fn the_store_limit_counts_what_other_pulls_reserved() {
        let a = Admission {
            stored_bytes: 50 * MIB,
            new_bytes: 10 * MIB,
            reserved_bytes: 40 * MIB,
            namespace_bytes: 0,
        };
        assert_eq!(admit(&limits(Some(100 * MIB), None), &a), Ok(()));
        let over = Admission {
            reserved_bytes: 40 * MIB + 1,
            ..a
        };
        let refused = admit(&limits(Some(100 * MIB), None), &over).unwrap_err();
        assert_eq!(refused.needed, Some(100 * MIB + 1));
    }

    #[test]
    fn the_namespace_quota_counts_what_the_namespace_keeps() {
        let a = Admission {
            stored_bytes: 0,
            new_bytes: 0,
            reserved_bytes: 0,
            namespace_bytes: 10 * MIB,
        };
        assert_eq!(admit(&limits(None, Some(10 * MIB)), &a), Ok(()));
        let refused = admit(&limits(None, Some(10 * MIB - 1)), &a).unwrap_err();
        assert_eq!(refused.scope, QuotaScope::Namespace);
        assert!(refused.to_string().contains("namespace"), "{refused}");
        // Both exceeded: the store's limit is reported.
        let both = Admission {
            stored_bytes: 100 * MIB,
            new_bytes: MIB,
            reserved_bytes: 0,
            namespace_bytes: 10 * MIB,
        };
        let refused = admit(&limits(Some(100 * MIB), Some(MIB)), &both).unwrap_err();
        assert_eq!(refused.scope, QuotaScope::Store);
    }

    #[test]
    fn the_global_limit_is_a_share_of_the_volume() {
        let gib = 1024 * MIB;
        assert_eq!(global_limit(Some(5), Some(gib), Some(gib)), Some(5));
        assert_eq!(
            global_limit(None, Some(gib), Some(100 * gib)),
            Some(966_367_641)
        );
        assert_eq!(
            global_limit(None, Some(100 * gib), Some(10 * gib)),
            Some(9 * gib)
        );
        assert_eq!(global_limit(None, None, Some(1000)), Some(900));
        assert_eq!(global_limit(None, None, None), None);
        assert_eq!(
            global_limit(None, None, Some(u64::MAX)).map(|l| l > u64::MAX / 10 * 8),
            Some(true)
        );
    }

    #[test]
    fn the_store_supplies_its_figures() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path())
            .unwrap()
            .with_limits(limits(None, Some(20 * BLOCK)));
        assert!(store.filesystem_bytes().unwrap() > 0);
        let staging = store.staging_dir().unwrap();
        let bytes = vec![7u8; 5000];
        std::fs::write(staging.path().join("big"), &bytes).unwrap();
        let file = IndexFile {
            path: "big".into(),
            digest: Digest::of(&bytes),
            size: 5000,
            platform: None,
        };
        let first = RevisionIndex {
            digest: digest(1),
            selection: Default::default(),
            files: vec![file.clone()],
        };
        // two blocks of content, one entry, one block of index
        assert_eq!(store.missing_bytes(&first), 4 * BLOCK);
        store
            .commit(&first.digest, staging.path(), &first.files)
            .unwrap();
        assert_eq!(store.missing_bytes(&first), 0);
        // A second revision: the stored one (3 blocks) plus 16 files under d/ (blob once,
        // 17 entries) is 20 blocks, within the quota; one more file is over.
        let mut second = revision(2, &[]);
        for i in 0..16 {
            second.files.push(IndexFile {
                path: format!("d/f{i}"),
                ..file.clone()
            });
        }
        let kept = [first.digest.clone()];
        assert_eq!(store.check_quota(&second, &kept, 0), Ok(()));
        second.files.push(IndexFile {
            path: "d/f16".into(),
            ..file.clone()
        });
        let refused = store.check_quota(&second, &kept, 0).unwrap_err();
        assert_eq!(refused.scope, QuotaScope::Namespace);
        assert_eq!(refused.needed, Some(21 * BLOCK));
        // Without the old revision it fits.
        assert_eq!(store.check_quota(&second, &[], 0), Ok(()));
    }

    #[test]
    fn another_selection_of_a_kept_digest_is_charged_as_well() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path())
            .unwrap()
            .with_limits(limits(None, Some(4 * BLOCK)));
        let staging = store.staging_dir().unwrap();
        std::fs::write(staging.path().join("a"), b"a").unwrap();
        let layers = |m: &str| crate::store::Selection {
            platform: None,
            layer_media_type: Some(m.into()),
        };
        let a_file = IndexFile {
            path: "a".into(),
            digest: Digest::of(b"a"),
            size: 1,
            platform: None,
        };
        let kept = store
            .commit_selection(&digest(1), &layers("a"), staging.path(), &[a_file])
            .unwrap();
        // selection b of the same manifest: 2 blocks, with a's 2 blocks at the quota
        let mut incoming = revision(1, &[("b", 2, 1)]);
        incoming.selection = layers("b");
        assert_eq!(store.check_quota(&incoming, &[kept.key()], 0), Ok(()));
        incoming.files.push(IndexFile {
            path: "c".into(),
            digest: digest(3),
            size: 1,
            platform: None,
        });
        let refused = store.check_quota(&incoming, &[kept.key()], 0).unwrap_err();
        assert_eq!(refused.needed, Some(6 * BLOCK), "a's revision is counted");
        // the incoming revision itself among the kept is counted once
        assert_eq!(store.check_quota(&incoming, &[incoming.key()], 0), Ok(()));
        incoming.files.pop();
        assert_eq!(
            store.check_quota(&incoming, &[incoming.key(), kept.key()], 0),
            Ok(())
        );
    }

    /// A store at `root` with a global limit of `max` bytes.
    fn limited(root: &std::path::Path, max: Option<u64>, namespace: Option<u64>) -> Store {
        Store::open(root)
            .unwrap()
            .with_limits(limits(max, namespace))
    }

    /// `n` empty files under `dir/`, staged.
    fn empty_files(store: &Store, dir: &str, n: usize) -> (tempfile::TempDir, Vec<IndexFile>) {
        let staging = store.staging_dir().unwrap();
        std::fs::create_dir_all(staging.path().join(dir)).unwrap();
        let empty = Digest::of(b"");
        let files = (0..n)
            .map(|i| {
                let path = format!("{dir}/f{i}");
                std::fs::write(staging.path().join(&path), b"").unwrap();
                IndexFile {
                    path,
                    digest: empty.clone(),
                    size: 0,
                    platform: None,
                }
            })
            .collect();
        (staging, files)
    }

    #[test]
    fn many_empty_files_are_refused_by_a_small_store() {
        let root = tempfile::tempdir().unwrap();
        let store = limited(root.path(), Some(64 * BLOCK), None);
        let (staging, files) = empty_files(&store, "d", 10);
        let first = revision(1, &[]);
        let first = RevisionIndex { files, ..first };
        // one empty blob, 11 entries, one block of index
        assert_eq!(store.missing_bytes(&first), 13 * BLOCK);
        assert_eq!(store.check_quota(&first, &[], 0), Ok(()));
        store
            .commit(&first.digest, staging.path(), &first.files)
            .unwrap();
        assert_eq!(store.usage().bytes, 13 * BLOCK);
        // 100 more empty files: no new blob at all, yet 101 entries and their index.
        let (_staging, files) = empty_files(&store, "e", 100);
        let second = RevisionIndex {
            files,
            ..revision(2, &[])
        };
        let added = store.missing_bytes(&second);
        assert!(added > 101 * BLOCK, "{added}");
        let refused = store.check_quota(&second, &[], 0).unwrap_err();
        assert_eq!(refused.scope, QuotaScope::Store);
        assert_eq!(refused.needed, Some(13 * BLOCK + added));
        // What is stored already costs nothing more, even over the limit.
        let over = limited(root.path(), Some(BLOCK), None);
        assert_eq!(over.missing_bytes(&first), 0);
        assert_eq!(over.check_quota(&first, &[], 0), Ok(()));
    }

    #[test]
    fn index_bytes_are_counted_and_the_running_total_matches_a_scan() {
        let root = tempfile::tempdir().unwrap();
        let store = limited(root.path(), None, None);
        // 300 files with long names: their index is over 20 blocks by itself.
        let dir = "x".repeat(200);
        let (staging, files) = empty_files(&store, &dir, 300);
        let incoming = RevisionIndex {
            files,
            ..revision(1, &[])
        };
        let added = store.missing_bytes(&incoming);
        store
            .commit(&incoming.digest, staging.path(), &incoming.files)
            .unwrap();
        let hex = incoming.digest.hex();
        let index_len = std::fs::metadata(root.path().join(format!("revisions/{hex}.json")))
            .unwrap()
            .len();
        assert!(index_len > 20 * BLOCK, "{index_len}");
        let expected = BLOCK + 301 * BLOCK + index_len.div_ceil(BLOCK) * BLOCK;
        assert_eq!((added, store.usage().bytes), (expected, expected));
        // A second revision sharing nothing, then gc of the first: the running figures
        // are what a fresh scan finds.
        let (staging, files) = empty_files(&store, "y", 3);
        std::fs::write(staging.path().join("y/f0"), b"not empty").unwrap();
        let mut files = files;
        files[0].digest = Digest::of(b"not empty");
        files[0].size = 9;
        store.commit(&digest(2), staging.path(), &files).unwrap();
        let fresh = || Store::open(root.path()).unwrap().usage();
        assert_eq!(store.usage(), fresh());
        let keep = [digest(2)].into_iter().collect();
        let report = store.gc(&keep).unwrap();
        assert_eq!((report.removed_revisions, report.removed_blobs), (1, 0));
        assert_eq!(store.usage(), fresh());
        assert_eq!(store.gc(&Default::default()).unwrap().removed_blobs, 2);
        assert_eq!(store.usage(), crate::store::StoreUsage::default());
        assert_eq!(fresh(), crate::store::StoreUsage::default());
    }

    #[test]
    fn concurrent_reservations_cannot_together_exceed_the_room() {
        let root = tempfile::tempdir().unwrap();
        let store = limited(root.path(), Some(100 * MIB), None);
        let first = store.try_reserve(60 * MIB, None, true).unwrap();
        assert_eq!((first.bytes(), first.lowered_by), (60 * MIB, None));
        // The second wants 60 MiB as well: only 40 are left while the first holds its room.
        assert!(store.try_reserve(60 * MIB, None, true).is_none(), "waits");
        let second = store.try_reserve(60 * MIB, None, false).unwrap();
        assert_eq!(second.bytes(), 40 * MIB);
        assert_eq!(second.lowered_by.map(|q| q.scope), Some(QuotaScope::Store));
        let third = store.try_reserve(MIB, None, false).unwrap();
        assert_eq!(third.bytes(), 0);
        assert_eq!(store.reserved_by_others(Some(&second)), 60 * MIB);
        // Room given back is room again; a small pull fits beside the others.
        drop((first, third));
        assert_eq!(store.reserved_by_others(None), 40 * MIB);
        let small = store.try_reserve(10 * MIB, None, true).unwrap();
        assert_eq!((small.bytes(), small.lowered_by), (10 * MIB, None));
        drop((second, small));
        assert_eq!(store.reserved_by_others(None), 0);
        // Alone, a pull takes what is left rather than wait for nobody.
        let alone = store.try_reserve(500 * MIB, None, true).unwrap();
        assert_eq!(alone.bytes(), 100 * MIB);
        // Stored content is not room.
        drop(alone);
        let (staging, files) = empty_files(&store, "d", 1);
        store.commit(&digest(1), staging.path(), &files).unwrap();
        let stored = store.usage().bytes;
        let after = store.try_reserve(500 * MIB, None, true).unwrap();
        assert_eq!(after.bytes(), 100 * MIB - stored);
    }

    #[tokio::test]
    async fn a_released_reservation_wakes_a_waiting_pull() {
        let root = tempfile::tempdir().unwrap();
        let store = limited(root.path(), Some(MIB), None);
        let held = store.try_reserve(MIB, None, true).unwrap();
        let released = store.released();
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), released)
            .await
            .expect("woken");
        assert!(store.try_reserve(MIB, None, true).is_some());
    }

    #[test]
    fn a_namespaces_second_pull_gets_only_what_is_left() {
        let root = tempfile::tempdir().unwrap();
        let store = limited(root.path(), None, Some(100 * MIB));
        let ns = |name: &str, kept: u64| NamespaceRoom {
            namespace: name.into(),
            kept,
        };
        // The namespace's sources keep 30 MiB: 70 are left.
        let first = store
            .try_reserve(50 * MIB, Some(&ns("a", 30 * MIB)), true)
            .unwrap();
        assert_eq!(first.bytes(), 50 * MIB);
        assert!(
            store
                .try_reserve(50 * MIB, Some(&ns("a", 30 * MIB)), true)
                .is_none()
        );
        let second = store
            .try_reserve(50 * MIB, Some(&ns("a", 30 * MIB)), false)
            .unwrap();
        assert_eq!(second.bytes(), 20 * MIB);
        assert_eq!(
            second.lowered_by.map(|q| q.scope),
            Some(QuotaScope::Namespace)
        );
        // Another namespace has its whole quota.
        let other = store
            .try_reserve(100 * MIB, Some(&ns("b", 0)), true)
            .unwrap();
        assert_eq!((other.bytes(), other.lowered_by), (100 * MIB, None));
        drop((first, second));
        let again = store
            .try_reserve(50 * MIB, Some(&ns("a", 30 * MIB)), true)
            .unwrap();
        assert_eq!(again.bytes(), 50 * MIB);
    }

    #[test]
    fn reservations_are_granted_only_when_they_fit_or_nobody_else_holds_room() {
        assert_eq!(grant(10, 20, 5), Some(10));
        assert_eq!(grant(10, 5, 0), Some(5));
        assert_eq!(grant(10, 5, 1), None);
        assert_eq!(grant(10, 0, 0), Some(0));
    }
}
