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
//! The API is blocking (`std::fs`); async callers use `spawn_blocking`. Digests are
//! [`Digest`]s, validated where they come in (a registry's answer, an index read from
//! disk), so whatever the store turns into a path is `sha256:` plus 64 lowercase hex.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::api::reason::SourceReason;
use crate::digest::{self, Digest};

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
    /// The digest of the file's bytes.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// The image index platform (`os/arch[/variant]`) it is a file of, when the source
    /// takes every platform (`platform: all`); staged under that platform's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl IndexFile {
    /// Where a pull stages it, relative to the staging directory: its path, below its
    /// platform's directory when it has one (a platform that is not plain is refused).
    pub fn staged_path(&self) -> Result<String, StoreError> {
        check_relative_path(&self.path)?;
        match &self.platform {
            None => Ok(self.path.clone()),
            Some(p) => match crate::oci::platform::Platform::parse(p) {
                Some(p) => Ok(format!("{}/{}", p.dir_name(), self.path)),
                None => Err(StoreError::UnsafePath(format!(
                    "platform {:?}",
                    p.chars().take(MAX_ECHO).collect::<String>()
                ))),
            },
        }
    }
}

impl From<&crate::oci::unpack::WrittenFile> for IndexFile {
    fn from(f: &crate::oci::unpack::WrittenFile) -> Self {
        IndexFile {
            path: f.path.clone(),
            digest: f.digest.clone(),
            size: f.size,
            platform: f.platform.as_ref().map(ToString::to_string),
        }
    }
}

/// The files of one revision, stored as `revisions/<hex>.json` where `sha256:<hex>` is
/// its [`key`](RevisionIndex::key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionIndex {
    /// The manifest digest.
    pub digest: Digest,
    /// What of the manifest the files are; absent for the default (every layer).
    #[serde(default, skip_serializing_if = "Selection::is_default")]
    pub selection: Selection,
    /// The files, sorted by platform (none first) and path.
    pub files: Vec<IndexFile>,
}

impl RevisionIndex {
    /// The key the revision is stored and served under.
    pub fn key(&self) -> Digest {
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
    /// The ArtifactSource reason of a revision the store could not take: a path that is
    /// not safe is the artifact's fault; a staged file that no longer hashes to its digest,
    /// or a failed read or write, is the store's.
    pub fn reason(&self) -> SourceReason {
        match self {
            StoreError::UnsafePath(_) => SourceReason::UnsafeContent,
            StoreError::DigestMismatch { .. } | StoreError::Io { .. } => SourceReason::StoreFailed,
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

/// Kept for the agent, which checks digests with it: [`crate::digest::is_sha256_hex`].
pub use crate::digest::is_sha256_hex;

/// Checks that `path` is a relative path of plain components (no `..`, `.`, root or
/// empty segment, no NUL).
pub fn check_relative_path(path: &str) -> Result<(), StoreError> {
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

    fn index_path(&self, key: &Digest) -> PathBuf {
        self.revisions_dir().join(format!("{}.json", key.hex()))
    }

    /// Where the blob of `file_digest` lives, without checking that it exists. For callers
    /// that open the file themselves (the async server).
    pub fn blob_location(&self, file_digest: &Digest) -> PathBuf {
        self.blobs_dir().join(file_digest.hex())
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
        digest: &Digest,
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
        digest: &Digest,
        selection: &Selection,
        staging: &Path,
        files: &[IndexFile],
    ) -> Result<RevisionIndex, StoreError> {
        let index_path = self.index_path(&revision_key(digest, selection));
        let mut seen = HashSet::new();
        for file in files {
            if !seen.insert(file.staged_path()?) {
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
        sorted.sort_by(|a, b| (&a.platform, &a.path).cmp(&(&b.platform, &b.path)));
        let index = RevisionIndex {
            digest: digest.clone(),
            selection: selection.clone(),
            files: sorted,
        };
        self.write_index(&index, &index_path)?;
        Ok(index)
    }

    /// Verifies one staged file and moves it to its blob unless that blob exists; whether
    /// it stored a new blob.
    fn commit_file(&self, staging: &Path, file: &IndexFile, n: usize) -> Result<bool, StoreError> {
        let staged = staged_regular_file(staging, &file.staged_path()?)?;
        let hex = file.digest.hex();
        let blob = self.blob_location(&file.digest);
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
    pub fn has(&self, key: &Digest) -> bool {
        self.index(key).is_some_and(|index| {
            index
                .files
                .iter()
                .all(|f| self.blob_path(&f.digest).is_some())
        })
    }

    /// The index of the revision `key`, if stored, readable, at most [`MAX_INDEX_BYTES`]
    /// long (checked before it is read) and really the index of that key.
    pub fn index(&self, key: &Digest) -> Option<RevisionIndex> {
        let file = fs::File::open(self.index_path(key)).ok()?;
        let len = file.metadata().ok()?.len();
        if len > MAX_INDEX_BYTES {
            return None;
        }
        let mut raw = Vec::with_capacity(usize::try_from(len).ok()?);
        file.take(MAX_INDEX_BYTES).read_to_end(&mut raw).ok()?;
        // every digest in it is parsed, and must be valid, as it is read
        let index: RevisionIndex = serde_json::from_slice(&raw).ok()?;
        (index.key() == *key).then_some(index)
    }

    /// The path of the blob `file_digest`, if it exists.
    pub fn blob_path(&self, file_digest: &Digest) -> Option<PathBuf> {
        let path = self.blob_location(file_digest);
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
    let (actual, size) = digest::hash_all(&mut f, u64::MAX).map_err(|e| match e {
        digest::CopyError::Read(e) | digest::CopyError::Write(e) => StoreError::io(context(), e),
        digest::CopyError::OverLimit(e) => StoreError::io(context(), io::Error::other(e)),
    })?;
    if actual != file.digest {
        return Err(StoreError::DigestMismatch {
            path: file.path.clone(),
            expected: file.digest.to_string(),
            actual: actual.to_string(),
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
