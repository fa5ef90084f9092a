//! Garbage collection and usage of the store.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{GcReport, Store, StoreError, StoreUsage, is_sha256_hex};

impl Store {
    /// Removes every revision index whose key is not in `keep`, then every blob that no
    /// remaining index references. An unreadable index in `keep` is removed too (it could
    /// not be served).
    pub fn gc(&self, keep: &HashSet<String>) -> Result<GcReport, StoreError> {
        let _guard = self.guard();
        let mut report = GcReport::default();
        let mut referenced = HashSet::new();
        for (hex, path) in list_dir(&self.revisions_dir(), |name| {
            name.strip_suffix(".json").filter(|h| is_sha256_hex(h))
        })? {
            let key = format!("sha256:{hex}");
            let kept = if keep.contains(&key) {
                self.index(&key)
            } else {
                None
            };
            match kept {
                Some(index) => referenced.extend(index.files.into_iter().map(|f| f.digest)),
                None => {
                    remove(&path)?;
                    report.removed_revisions += 1;
                }
            }
        }
        for (hex, path) in list_dir(&self.blobs_dir(), any_name)? {
            if referenced.contains(&format!("sha256:{hex}")) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                continue;
            }
            remove(&path)?;
            report.removed_blobs += 1;
            report.freed_bytes = report.freed_bytes.saturating_add(meta.len());
        }
        Ok(report)
    }

    /// Counts revisions and blobs. Best effort: entries that cannot be read are skipped.
    pub fn usage(&self) -> StoreUsage {
        let mut usage = StoreUsage::default();
        if let Ok(revisions) = list_dir(&self.revisions_dir(), |name| {
            name.strip_suffix(".json").filter(|h| is_sha256_hex(h))
        }) {
            usage.revisions = revisions.len() as u64;
        }
        if let Ok(blobs) = list_dir(&self.blobs_dir(), |name| {
            Some(name).filter(|h| is_sha256_hex(h))
        }) {
            for (_, path) in blobs {
                if let Ok(meta) = fs::metadata(&path)
                    && meta.is_file()
                {
                    usage.blobs += 1;
                    usage.bytes = usage.bytes.saturating_add(meta.len());
                }
            }
        }
        usage
    }
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
