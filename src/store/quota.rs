//! Limits on what the store holds: a global size limit (by default 90% of the store's
//! volume) and a per-namespace quota on what one namespace's sources keep stored. The
//! decisions are pure functions on plain data; [`Store`] only supplies the figures.
//!
//! What a set of revisions costs ([`charge`]): each distinct blob, rounded up to whole
//! [`BLOCK`]s, plus one block for every entry of every revision, where the directories a
//! revision's paths imply count as entries like its files. A revision of many empty files
//! or deep directories is therefore not free: it costs index space here and inodes on
//! every node the agent writes it to.

use std::collections::{BTreeSet, HashMap};
use std::io;

use super::{RevisionIndex, Store, digest_hex};

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
    /// Bytes of the blobs stored now.
    pub stored_bytes: u64,
    /// Bytes of the incoming revision's blobs not stored yet.
    pub new_bytes: u64,
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
    pub fn reason(&self) -> &'static str {
        "QuotaExceeded"
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
            format!("the artifact unpacks to more than this namespace's quota of {limit} bytes")
        }
    }
}

/// Whether a revision may be stored: the store stays within `max_bytes` and the
/// namespace within `namespace_max_bytes`.
pub fn admit(limits: &StoreLimits, a: &Admission) -> Result<(), QuotaExceeded> {
    let stored = a.stored_bytes.saturating_add(a.new_bytes);
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
    let mut blobs: HashMap<&str, u64> = HashMap::new();
    let mut entries = 0u64;
    for revision in revisions {
        let mut dirs = BTreeSet::new();
        for file in &revision.files {
            blobs.insert(file.digest.as_str(), file.size);
            let mut parts: Vec<&str> = file.path.split('/').collect();
            parts.pop();
            for depth in 1..=parts.len() {
                dirs.insert(parts[..depth].join("/"));
            }
        }
        entries = entries.saturating_add(revision.files.len() as u64 + dirs.len() as u64);
    }
    let blob_blocks: u64 = blobs
        .values()
        .map(|size| size.div_ceil(BLOCK).max(1))
        .fold(0, u64::saturating_add);
    blob_blocks.saturating_add(entries).saturating_mul(BLOCK)
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

    /// Bytes of the blobs of `revision` that are not stored yet (each blob once).
    pub fn missing_bytes(&self, revision: &RevisionIndex) -> u64 {
        let mut seen = BTreeSet::new();
        revision
            .files
            .iter()
            .filter(|f| digest_hex(&f.digest).is_some() && seen.insert(f.digest.as_str()))
            .filter(|f| self.blob_path(&f.digest).is_none())
            .map(|f| f.size)
            .fold(0, u64::saturating_add)
    }

    /// Whether `incoming` may be stored for a namespace whose sources would then keep
    /// `kept` (the keys of the other stored revisions they need; unreadable ones are
    /// skipped).
    pub fn check_quota(
        &self,
        incoming: &RevisionIndex,
        kept: &[String],
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

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
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
            namespace_bytes: 0,
        };
        let refused = admit(&limits(Some(100 * MIB), None), &full).unwrap_err();
        assert_eq!(refused.scope, QuotaScope::Store);
        assert_eq!(
            (refused.needed, refused.limit),
            (Some(110 * MIB), 100 * MIB)
        );
        assert_eq!(refused.reason(), "QuotaExceeded");
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
            namespace_bytes: 0,
        };
        assert_eq!(admit(&limits(Some(100 * MIB), None), &stored), Ok(()));
    }

    #[test]
    fn the_namespace_quota_counts_what_the_namespace_keeps() {
        let a = Admission {
            stored_bytes: 0,
            new_bytes: 0,
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
            digest: format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
            ),
            size: 5000,
        };
        let first = RevisionIndex {
            digest: digest(1),
            selection: Default::default(),
            files: vec![file.clone()],
        };
        assert_eq!(store.missing_bytes(&first), 5000);
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
        assert_eq!(store.check_quota(&second, &kept), Ok(()));
        second.files.push(IndexFile {
            path: "d/f16".into(),
            ..file.clone()
        });
        let refused = store.check_quota(&second, &kept).unwrap_err();
        assert_eq!(refused.scope, QuotaScope::Namespace);
        assert_eq!(refused.needed, Some(21 * BLOCK));
        // Without the old revision it fits.
        assert_eq!(store.check_quota(&second, &[]), Ok(()));
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
            digest: format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"a"))
            ),
            size: 1,
        };
        let kept = store
            .commit_selection(&digest(1), &layers("a"), staging.path(), &[a_file])
            .unwrap();
        // selection b of the same manifest: 2 blocks, with a's 2 blocks at the quota
        let mut incoming = revision(1, &[("b", 2, 1)]);
        incoming.selection = layers("b");
        assert_eq!(store.check_quota(&incoming, &[kept.key()]), Ok(()));
        incoming.files.push(IndexFile {
            path: "c".into(),
            digest: digest(3),
            size: 1,
        });
        let refused = store.check_quota(&incoming, &[kept.key()]).unwrap_err();
        assert_eq!(refused.needed, Some(6 * BLOCK), "a's revision is counted");
        // the incoming revision itself among the kept is counted once
        assert_eq!(store.check_quota(&incoming, &[incoming.key()]), Ok(()));
        incoming.files.pop();
        assert_eq!(
            store.check_quota(&incoming, &[incoming.key(), kept.key()]),
            Ok(())
        );
    }
}
