//! The node's byte budgets: how much one bundle may write, and how much all bundles together
//! may write into one granted directory, its subdirectories included. Decided from the sizes in the bundles' status, before any
//! fetch, in whole 4 KiB blocks per file: a bundle over a budget keeps what it has and
//! reports `QuotaExceeded`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The agent's limits (flags `--max-bundle-bytes`, `--max-directory-bytes`,
/// `--min-free-bytes`).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub bundle_bytes: u64,
    pub directory_bytes: u64,
    /// Bytes the directory's filesystem must still have free after a revision is staged.
    pub min_free_bytes: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            bundle_bytes: 64 << 20,
            directory_bytes: 256 << 20,
            min_free_bytes: 16 << 20,
        }
    }
}

/// One bundle's claim: the files of the revision it wants, in the directory of a grant.
#[derive(Clone, Debug)]
pub struct Claim<'a> {
    pub uid: &'a str,
    /// The granted directory its directory is in: the directory budget covers a grant with
    /// all its subdirectories.
    pub grant: &'a Path,
    /// The sizes of its files (from status).
    pub sizes: Vec<u64>,
    /// Earlier claims are served first: (creation time, namespace, name).
    pub order: (String, &'a str, &'a str),
}

/// What a bundle holds on disk now: its grant and bytes. Every bundle the agent wrote
/// holds what it wrote, whatever happens to it in this pass (refused, waiting, over a
/// budget), until its files are removed.
pub type Held = HashMap<String, (PathBuf, u64)>;

/// What a file of `size` bytes takes on disk, as `du` counts it: whole 4 KiB blocks, at
/// least one (so a bundle of many empty files is not free).
pub fn on_disk(size: u64) -> Option<u64> {
    const BLOCK: u64 = 4096;
    size.div_ceil(BLOCK).max(1).checked_mul(BLOCK)
}

/// The disk a set of files takes; `None` on overflow.
pub fn total(sizes: &[u64]) -> Option<u64> {
    sizes
        .iter()
        .try_fold(0u64, |a, s| a.checked_add(on_disk(*s)?))
}

/// The claims refused, by uid, with the message. Each grant starts with what every bundle
/// holds there; claims are then served oldest first, each swapping what it holds for what
/// it wants, so a new bundle can never push out one that was there before it.
pub fn refused(budget: &Budget, held: &Held, claims: &[Claim<'_>]) -> HashMap<String, String> {
    let mut used: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for (grant, bytes) in held.values() {
        let u = used.entry(grant.clone()).or_default();
        *u = u.saturating_add(*bytes);
    }
    let mut sorted: Vec<&Claim<'_>> = claims.iter().collect();
    sorted.sort_by(|a, b| a.order.cmp(&b.order));
    let mut out = HashMap::new();
    for c in sorted {
        let Some(bytes) = total(&c.sizes).filter(|b| *b <= budget.bundle_bytes) else {
            out.insert(
                c.uid.to_string(),
                format!(
                    "the revision's files exceed the agent's per-bundle budget of {} bytes",
                    budget.bundle_bytes
                ),
            );
            continue;
        };
        let mine = match held.get(c.uid) {
            Some((g, b)) if g.as_path() == c.grant => *b,
            _ => 0,
        };
        let in_grant = used.entry(c.grant.to_path_buf()).or_default();
        let others = in_grant.saturating_sub(mine);
        match others.checked_add(bytes) {
            Some(sum) if sum <= budget.directory_bytes => *in_grant = sum,
            _ => {
                out.insert(
                    c.uid.to_string(),
                    format!(
                        "{bytes} bytes would take {} past the agent's per-directory budget of {} bytes ({others} held by other bundles)",
                        c.grant.display(),
                        budget.directory_bytes,
                    ),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim<'a>(uid: &'a str, dir: &'a str, sizes: &[u64], created: &str) -> Claim<'a> {
        Claim {
            uid,
            grant: Path::new(dir),
            sizes: sizes.to_vec(),
            order: (created.to_string(), "ns", uid),
        }
    }

    #[test]
    fn bundles_are_served_oldest_first_within_each_budget() {
        const K: u64 = 4096;
        let budget = Budget {
            bundle_bytes: 100 * K,
            directory_bytes: 150 * K,
            min_free_bytes: 0,
        };
        let claims = [
            claim("new", "/d", &[60 * K], "2026-02"),
            claim("old", "/d", &[50 * K, 50 * K], "2026-01"),
            claim("huge", "/d", &[100 * K + 1], "2025-01"),
            claim("other-dir", "/e", &[100 * K], "2026-03"),
            claim("small", "/d", &[49 * K, 1], "2026-03"),
            claim("overflow", "/e", &[u64::MAX, 2], "2020-01"),
            claim("empties", "/f", &[0; 101], "2020-01"),
        ];
        let r = refused(&budget, &Held::new(), &claims);
        let mut uids: Vec<&str> = r.keys().map(String::as_str).collect();
        uids.sort();
        // old (100 blocks) fits; new (60) would make 160; small (49 + 1 block) makes 150
        assert_eq!(uids, ["empties", "huge", "new", "overflow"]);
        assert!(
            r["new"].contains("per-directory budget of 614400"),
            "{}",
            r["new"]
        );
        assert!(r["huge"].contains("per-bundle budget"), "{}", r["huge"]);
    }

    #[test]
    fn what_bundles_hold_counts_whatever_they_do_now() {
        const K: u64 = 4096;
        let budget = Budget {
            bundle_bytes: 100 * K,
            directory_bytes: 150 * K,
            min_free_bytes: 0,
        };
        // "refused" holds 100 blocks but makes no claim (its directory is no longer
        // granted, say): a newcomer cannot take that space
        let held: Held = [
            ("refused".to_string(), (PathBuf::from("/d"), 100 * K)),
            ("grows".to_string(), (PathBuf::from("/d"), 40 * K)),
        ]
        .into();
        let claims = [
            claim("grows", "/d", &[50 * K], "2026-01"),
            claim("newcomer", "/d", &[10 * K], "2026-02"),
        ];
        let r = refused(&budget, &held, &claims);
        // grows swaps 40 for 50: 150 in all; the newcomer's 10 does not fit
        assert_eq!(r.keys().collect::<Vec<_>>(), ["newcomer"]);
        assert!(
            r["newcomer"].contains("(614400 held by other"),
            "{}",
            r["newcomer"]
        );
    }
}
