//! The content-addressed store of pulled revisions.
//!
//! Layout under the root directory:
//!
//! - `blobs/sha256/<hex>`: file contents, named by the SHA-256 of their bytes, read-only and
//!   shared by every revision (and every source) that contains the same bytes;
//! - `revisions/<hex>.json`: a [`RevisionIndex`] per revision key (see [`revision_key`]:
//!   the manifest digest, or a hash of it with the platform and layer selection when a
//!   source narrows what it takes of the manifest), listing each file's path, digest and
//!   size;
//! - `tmp/`: staging directories and half-written indexes, on the same filesystem so that
//!   moving a file into the store is a rename. Cleared by [`Store::open`].
//!
//! The API is blocking (`std::fs`); async callers use `spawn_blocking`. Every digest given
//! to the store is validated as `sha256:` plus 64 lowercase hex characters before it is
//! turned into a path, because these strings come from registries.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod gc;
mod key;
mod quota;
#[cfg(test)]
mod tests;

pub use key::{Selection, revision_key};
pub use quota::{
    Admission, BLOCK, NamespaceRoom, QuotaExceeded, QuotaScope, Reservation, StoreLimits, admit,
    blob_charge, charge, global_limit, grant, index_charge,
};

/// One file of a revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexFile {
    /// Relative path with `/` separators.
    pub path: String,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// The files of one revision, stored as `revisions/<hex>.json` where `sha256:<hex>` is
/// its [`key`](RevisionIndex::key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionIndex {
    /// The manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// What of the manifest the files are; absent for the default (every layer).
    #[serde(default, skip_serializing_if = "Selection::is_default")]
    pub selection: Selection,
    /// The files, sorted by path.
    pub files: Vec<IndexFile>,
}

impl RevisionIndex {
    /// The key the revision is stored and served under.
    pub fn key(&self) -> String {
        revision_key(&self.digest, &self.selection)
    }
}

/// What [`Store::gc`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed_revisions: u64,
    pub removed_blobs: u64,
    /// Bytes of the removed blobs.
    pub freed_bytes: u64,
}

/// What the store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    pub revisions: u64,
    pub blobs: u64,
    /// What the blobs and revision indexes take, as counted against the store's limit:
    /// each blob in whole [`BLOCK`]s (at least one), each index a block per entry plus
    /// its own bytes in whole blocks (see [`blob_charge`] and [`index_charge`]).
    pub bytes: u64,
}

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
    InvalidDigest(String),
    #[error("unsafe file path {0:?}")]
    UnsafePath(String),
    #[error("digest mismatch for {path}: expected {expected}, got {actual}")]
    DigestMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("store I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// The stable, low-cardinality reason (CamelCase, for conditions and metric labels).
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::InvalidDigest(_) => "InvalidDigest",
            StoreError::UnsafePath(_) => "UnsafePath",
            StoreError::DigestMismatch { .. } => "DigestMismatch",
            StoreError::Io { .. } => "IoError",
        }
    }

    fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The largest revision index read: 10,000 files (the unpacker's limit) of paths up to
/// `PATH_MAX` fit well within it.
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// The longest part of a rejected string kept in an error message.
const MAX_ECHO: usize = 100;

fn invalid_digest(digest: &str) -> StoreError {
    StoreError::InvalidDigest(digest.chars().take(MAX_ECHO).collect())
}

/// Whether `hex` is exactly 64 lowercase hexadecimal characters.
pub fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The hex part of a valid `sha256:<64 lowercase hex>` digest, or `None`.
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| is_sha256_hex(h))
}

/// Checks that `path` is a relative path of plain components (no `..`, `.`, root or
/// empty segment, no NUL).
fn check_relative_path(path: &str) -> Result<(), StoreError> {
    let unsafe_path = || StoreError::UnsafePath(path.chars().take(MAX_ECHO).collect());
    if path.is_empty() || path.contains('\0') || path.split('/').any(|s| s.is_empty()) {
        return Err(unsafe_path());
    }
    if Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        && !path.split('/').any(|s| s == "." || s == "..")
    {
        Ok(())
    } else {
        Err(unsafe_path())
    }
}

/// The content-addressed store. Shared between tasks behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Held by [`Store::commit`] and [`Store::gc`], so that gc never removes a blob of a
    /// commit in progress.
    lock: Mutex<()>,
    limits: StoreLimits,
    /// Held from a quota check to the commit it admits (see [`Store::admission`]).
    admissions: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// What the store holds, kept up to date by commit and gc (scanned once by `open`).
    totals: Mutex<gc::Totals>,
    /// What the pulls in progress have reserved (see [`Store::reserve`]).
    book: std::sync::Arc<quota::Book>,
}

impl Store {
    /// Opens (creating if needed) the store at `root` and removes stale entries of `tmp/`
    /// left by an earlier process.
    pub fn open(root: &Path) -> io::Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
            lock: Mutex::new(()),
            limits: StoreLimits::default(),
            admissions: Default::default(),
            totals: Default::default(),
            book: Default::default(),
        };
        fs::create_dir_all(store.blobs_dir())?;
        fs::create_dir_all(store.revisions_dir())?;
        fs::create_dir_all(store.tmp_dir())?;
        for entry in fs::read_dir(store.tmp_dir())? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
        store.rescan()?;
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn revisions_dir(&self) -> PathBuf {
        self.root.join("revisions")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index_path(&self, key: &str) -> Option<PathBuf> {
        digest_hex(key).map(|hex| self.revisions_dir().join(format!("{hex}.json")))
    }

    /// Where the blob of `file_digest` lives, without checking that it exists; `None` for
    /// an invalid digest. For callers that open the file themselves (the async server).
    pub fn blob_location(&self, file_digest: &str) -> Option<PathBuf> {
        digest_hex(file_digest).map(|hex| self.blobs_dir().join(hex))
    }

    /// A fresh, empty staging directory under `tmp/` (removed when dropped).
    pub fn staging_dir(&self) -> io::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("staging-")
            .tempdir_in(self.tmp_dir())
    }

    /// [`Store::commit_selection`] of every layer of manifest `digest`.
    pub fn commit(
        &self,
        digest: &str,
        staging: &Path,
        files: &[IndexFile],
    ) -> Result<RevisionIndex, StoreError> {
        self.commit_selection(digest, &Selection::default(), staging, files)
    }

    /// Moves the `files` of `selection` of manifest `digest` from `staging` into the store
    /// and writes its index under its [`revision_key`]. Each staged file is re-hashed and
    /// must match its claimed digest and size; files whose blob exists already are
    /// verified and left in `staging`. Committing a revision again is harmless. On error,
    /// `staging` may have lost some files.
    pub fn commit_selection(
        &self,
        digest: &str,
        selection: &Selection,
        staging: &Path,
        files: &[IndexFile],
    ) -> Result<RevisionIndex, StoreError> {
        if digest_hex(digest).is_none() {
            return Err(invalid_digest(digest));
        }
        let index_path = self
            .index_path(&revision_key(digest, selection))
            .ok_or_else(|| invalid_digest(digest))?;
        let mut seen = HashSet::new();
        for file in files {
            check_relative_path(&file.path)?;
            if digest_hex(&file.digest).is_none() {
                return Err(invalid_digest(&file.digest));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(StoreError::UnsafePath(format!(
                    "{} (listed twice)",
                    file.path
                )));
            }
        }

        let _guard = self.guard();
        for (n, file) in files.iter().enumerate() {
            if self.commit_file(staging, file, n)? {
                self.count_blob(file.size);
            }
        }
        let mut sorted = files.to_vec();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        let index = RevisionIndex {
            digest: digest.to_string(),
            selection: selection.clone(),
            files: sorted,
        };
        self.write_index(&index, &index_path)?;
        Ok(index)
    }

    /// Verifies one staged file and moves it to its blob unless that blob exists; whether
    /// it stored a new blob.
    fn commit_file(&self, staging: &Path, file: &IndexFile, n: usize) -> Result<bool, StoreError> {
        let staged = staged_regular_file(staging, &file.path)?;
        let hex = digest_hex(&file.digest).ok_or_else(|| invalid_digest(&file.digest))?;
        let blob = self.blobs_dir().join(hex);
        if fs::symlink_metadata(&blob).is_ok() {
            return verify(&staged, file).map(|_| false);
        }
        // Move the file out of the caller's reach before hashing it, so that what is
        // verified is what ends up in the store.
        let private = self.tmp_dir().join(format!("commit-{n}-{hex}"));
        fs::rename(&staged, &private)
            .map_err(|e| StoreError::io(format!("move staged {}", file.path), e))?;
        let result = verify(&private, file)
            .and_then(|f| {
                // Durable before it becomes visible under its digest.
                f.sync_all()
                    .map_err(|e| StoreError::io(format!("sync {}", file.path), e))
            })
            .and_then(|()| {
                fs::set_permissions(&private, fs::Permissions::from_mode(0o444))
                    .map_err(|e| StoreError::io(format!("make {} read-only", file.path), e))
            })
            .and_then(|()| {
                fs::rename(&private, &blob)
                    .map_err(|e| StoreError::io(format!("store blob {}", file.digest), e))
            });
        if result.is_err() {
            let _ = fs::remove_file(&private);
        }
        result.map(|()| true)
    }

    /// Writes an index atomically: a temporary file in `tmp/`, synced, then renamed.
    fn write_index(&self, index: &RevisionIndex, dest: &Path) -> Result<(), StoreError> {
        let json = encode_index(index)?;
        let context = || format!("write revision index {}", index.digest);
        let mut tmp = tempfile::Builder::new()
            .prefix("index-")
            .tempfile_in(self.tmp_dir())
            .map_err(|e| StoreError::io(context(), e))?;
        tmp.write_all(&json)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| StoreError::io(context(), e))?;
        tmp.persist(dest)
            .map_err(|e| StoreError::io(context(), e.error))?;
        self.count_index(&index.key(), index_charge(index, json.len() as u64));
        Ok(())
    }

    /// Whether the revision `key` is complete: its index and every blob it lists exist.
    pub fn has(&self, key: &str) -> bool {
        self.index(key).is_some_and(|index| {
            index
                .files
                .iter()
                .all(|f| self.blob_path(&f.digest).is_some())
        })
    }

    /// The index of the revision `key`, if stored, readable, at most [`MAX_INDEX_BYTES`]
    /// long (checked before it is read) and really the index of that key.
    pub fn index(&self, key: &str) -> Option<RevisionIndex> {
        let file = fs::File::open(self.index_path(key)?).ok()?;
        let len = file.metadata().ok()?.len();
        if len > MAX_INDEX_BYTES {
            return None;
        }
        let mut raw = Vec::with_capacity(usize::try_from(len).ok()?);
        file.take(MAX_INDEX_BYTES).read_to_end(&mut raw).ok()?;
        let index: RevisionIndex = serde_json::from_slice(&raw).ok()?;
        (digest_hex(&index.digest).is_some() && index.key() == key).then_some(index)
    }

    /// The path of the blob `file_digest`, if the digest is valid and the blob exists.
    pub fn blob_path(&self, file_digest: &str) -> Option<PathBuf> {
        let path = self.blob_location(file_digest)?;
        fs::metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .map(|_| path)
    }
}

/// The bytes of `index` as it is stored.
fn encode_index(index: &RevisionIndex) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(index)
        .map_err(|e| StoreError::io("encode revision index", io::Error::other(e)))
}

/// `staging/rel`, checked to be a regular file reached through real directories only (no
/// symbolic link anywhere below `staging`).
fn staged_regular_file(staging: &Path, rel: &str) -> Result<PathBuf, StoreError> {
    let mut path = staging.to_path_buf();
    let segments: Vec<&str> = rel.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        path.push(segment);
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| StoreError::io(format!("staged file {rel}"), e))?;
        let last = i + 1 == segments.len();
        let ok = if last { meta.is_file() } else { meta.is_dir() };
        if !ok {
            return Err(StoreError::UnsafePath(format!(
                "{rel} (not a regular file in the staging directory)"
            )));
        }
    }
    Ok(path)
}

/// Hashes the file at `path` and compares its digest and size with `file`'s claims;
/// returns the open file.
fn verify(path: &Path, file: &IndexFile) -> Result<fs::File, StoreError> {
    let context = || format!("hash staged {}", file.path);
    let mut f = fs::File::open(path).map_err(|e| StoreError::io(context(), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| StoreError::io(context(), e))?;
        if n == 0 {
            break;
        }
        size = size.saturating_add(n as u64);
        hasher.update(&buf[..n]);
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != file.digest {
        return Err(StoreError::DigestMismatch {
            path: file.path.clone(),
            expected: file.digest.clone(),
            actual,
        });
    }
    if size != file.size {
        return Err(StoreError::DigestMismatch {
            path: file.path.clone(),
            expected: format!("{} bytes", file.size),
            actual: format!("{size} bytes"),
        });
    }
    Ok(f)
}
