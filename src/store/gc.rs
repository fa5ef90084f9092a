//! Garbage collection and usage of the store. What the store holds is counted once when
//! it is opened and then kept up to date by each commit and collection, so that a quota
//! check does not scan the store.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    GcReport, Store, StoreError, StoreUsage, blob_charge, encode_index, index_charge,
    quota::whole_blocks,
};
use crate::digest::{Digest, is_sha256_hex};

/// The running figures behind [`Store::usage`].
#[derive(Debug, Default)]
pub(super) struct Totals {
    blobs: u64,
    blob_bytes: u64,
    /// The charge of each revision index, by the hex of its key.
    indexes: HashMap<String, u64>,
}

impl Totals {
    fn usage(&self) -> StoreUsage {
        StoreUsage {
            revisions: self.indexes.len() as u64,
            blobs: self.blobs,
            bytes: self
                .indexes
                .values()
                .fold(self.blob_bytes, |sum, c| sum.saturating_add(*c)),
        }
    }
}

impl Store {
    /// Removes every revision index whose key is not in `keep`, then every blob that no
    /// remaining index references. An unreadable index in `keep` is removed too (it could
    /// not be served).
    pub fn gc(&self, keep: &HashSet<Digest>) -> Result<GcReport, StoreError> {
        let _guard = self.guard();
        let mut report = GcReport::default();
        let mut referenced = HashSet::new();
        for (hex, path) in list_dir(&self.revisions_dir(), index_name)? {
            let kept = Digest::from_hex(&hex)
                .ok()
                .filter(|key| keep.contains(key))
                .and_then(|key| self.index(&key));
            match kept {
                Some(index) => referenced.extend(index.files.into_iter().map(|f| f.digest)),
                None => {
                    remove(&path)?;
                    self.totals().indexes.remove(&hex);
                    report.removed_revisions += 1;
                }
            }
        }
        for (name, path) in list_dir(&self.blobs_dir(), any_name)? {
            let blob = Digest::from_hex(&name).ok();
            if blob.as_ref().is_some_and(|d| referenced.contains(d)) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                continue;
            }
            remove(&path)?;
            if blob.is_some() && meta.is_file() {
                let mut totals = self.totals();
                totals.blobs = totals.blobs.saturating_sub(1);
                totals.blob_bytes = totals.blob_bytes.saturating_sub(blob_charge(meta.len()));
            }
            report.removed_blobs += 1;
            report.freed_bytes = report.freed_bytes.saturating_add(meta.len());
        }
        Ok(report)
    }

    /// What the store holds: revisions, blobs and their charge. Kept up to date by commit
    /// and gc, so it costs no I/O.
    pub fn usage(&self) -> StoreUsage {
        self.totals().usage()
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        // Plain counters: a poisoned lock still holds usable figures.
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a blob of `size` bytes just stored.
    pub(super) fn count_blob(&self, size: u64) {
        let mut totals = self.totals();
        totals.blobs = totals.blobs.saturating_add(1);
        totals.blob_bytes = totals.blob_bytes.saturating_add(blob_charge(size));
    }

    /// Counts the index of revision `key` just written, with its `charge`.
    pub(super) fn count_index(&self, key: &Digest, charge: u64) {
        self.totals().indexes.insert(key.hex().to_string(), charge);
    }

    /// Counts what the store holds from its directories (once, when it is opened). An
    /// index that cannot be read is charged its own bytes: it is removed by the next gc.
    pub(super) fn rescan(&self) -> io::Result<()> {
        let mut totals = Totals::default();
        let listed = |e: StoreError| io::Error::other(e.to_string());
        for (hex, path) in list_dir(&self.revisions_dir(), index_name).map_err(listed)? {
            let charge = match Digest::from_hex(&hex).ok().and_then(|k| self.index(&k)) {
                Some(index) => {
                    index_charge(&index, encode_index(&index).map_or(0, |j| j.len() as u64))
                }
                None => fs::metadata(&path).map_or(0, |m| whole_blocks(m.len())),
            };
            totals.indexes.insert(hex, charge);
        }
        for (_, path) in
            list_dir(&self.blobs_dir(), |n| Some(n).filter(|h| is_sha256_hex(h))).map_err(listed)?
        {
            if let Ok(meta) = fs::metadata(&path)
                && meta.is_file()
            {
                totals.blobs += 1;
                totals.blob_bytes = totals.blob_bytes.saturating_add(blob_charge(meta.len()));
            }
        }
        *self.totals() = totals;
        Ok(())
    }
}

/// Selects revision indexes (`<hex>.json`) by the hex of their key.
fn index_name(name: &str) -> Option<&str> {
    name.strip_suffix(".json").filter(|h| is_sha256_hex(h))
}

/// The entries of `dir` whose file name `select` maps to a key, as `(key, path)`.
fn list_dir(
    dir: &Path,
    select: impl Fn(&str) -> Option<&str>,
) -> Result<HashMap<String, PathBuf>, StoreError> {
    let context = || format!("list {}", dir.display());
    let mut out = HashMap::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(context(), e))? {
        let entry = entry.map_err(|e| StoreError::io(context(), e))?;
        let name = entry.file_name();
        if let Some(name) = name.to_str()
            && let Some(key) = select(name)
        {
            out.insert(key.to_string(), entry.path());
        }
    }
    Ok(out)
}

/// Selects every entry of a directory by its name.
fn any_name(name: &str) -> Option<&str> {
    Some(name)
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("remove {}", path.display()), e)),
    }
}
