//! Writing a bundle's files into a directory so that readers only ever see one complete
//! revision, the way kubelet writes projected volumes:
//!
//! ```text
//! dir/..ocisync.<id>            -> ..ocisync.<id>..a        (the data link, swapped by rename)
//! dir/..ocisync.<id>..a/        the revision's files, plus `..revision` (revision and keys)
//! dir/..ocisync.<id>..b/        the next revision, staged
//! dir/<key>                     -> ..ocisync.<id>/<key>     (stable visible links)
//! ```
//!
//! A new revision is staged in the data slot the link does not point at, fsynced, and made
//! visible by one `rename` of a new data link over the old one. Files that left the bundle
//! resolve to nothing from that instant (their links dangle until removed just after); new
//! files' links are created before the swap and resolve from that instant. Killing the
//! process at any point leaves either the old or the new revision visible, never a mix;
//! leftovers are removed by the next apply.
//!
//! What a bundle owns is decided from names derived from its id and from its own records
//! (the `..revision` file lists the keys it wrote), never from a directory listing: an id
//! (`<namespace>.<name>`) never contains `..`, so `..ocisync.<id>..` is a prefix no other
//! bundle's names can have, and a visible name is touched only when it is one of the keys
//! the bundle wrote and still a link to exactly `..ocisync.<id>/<key>`. Every operation
//! goes through [`SafeDir`]: nothing placed in the directory by someone else is followed.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;

use serde::{Deserialize, Serialize};

use crate::api::reason::NodeReason;

use super::budget;
use super::safedir::{Kind, SafeDir};
use crate::digest::{self, Digest};

/// The name of the file inside a data directory that holds its revision and keys (no key
/// can start with `..`).
const REVISION_FILE: &str = "..revision";
/// The largest `..revision` file read back (a bundle's keys, as JSON).
const MAX_REVISION_FILE: u64 = 8 << 20;

/// One file a revision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedFile {
    pub key: String,
    pub digest: Digest,
    pub size: u64,
}

/// A disk problem, with the reason the node report carries.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} exists and was not written by this bundle; it is left alone")]
    Conflict(String),
}

impl DiskError {
    pub fn reason(&self) -> NodeReason {
        match self {
            DiskError::Io { .. } => NodeReason::WriteFailed,
            DiskError::Conflict(_) => NodeReason::FileConflict,
        }
    }
}

fn io_at(dir: &SafeDir, name: &str) -> impl FnOnce(io::Error) -> DiskError {
    let path = dir.shown(name).display().to_string();
    move |source| DiskError::Io { path, source }
}

/// What the `..revision` file records.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Written {
    revision: String,
    keys: Vec<String>,
    /// What the files take on disk (see [`budget::on_disk`]); 0 before 0.2.
    #[serde(default)]
    bytes: u64,
}

/// The revision visible now.
struct Current {
    /// The data directory's name.
    data: String,
    dir: SafeDir,
    written: Written,
}

/// One bundle's files in one open directory.
#[derive(Debug)]
pub struct Target {
    dir: SafeDir,
    /// Unique per bundle: `<namespace>.<name>` (never contains `..`).
    id: String,
}

/// A revision being staged; dropped without [`Target::commit`] it is removed, with the
/// visible links a failed commit had already made for its new keys.
pub struct Staging {
    parent: SafeDir,
    dir: SafeDir,
    name: String,
    /// The bundle's data link name, what the visible links point into.
    link: String,
    /// Visible links made for keys new in this revision.
    created: Vec<String>,
    committed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            for key in &self.created {
                if self.parent.read_link(key) == Some(format!("{}/{key}", self.link)) {
                    let _ = self.parent.unlink(key);
                }
            }
            let _ = self.parent.remove_dir(&self.name);
        }
    }
}

impl Staging {
    /// A new file `key` in the staged revision.
    pub fn create(&self, key: &str) -> io::Result<File> {
        let f = self.dir.create_file(key)?;
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        Ok(f)
    }
}

impl Target {
    /// Bundle `id`'s files in `dir`, an open directory.
    pub fn new(dir: SafeDir, id: String) -> Target {
        Target { dir, id }
    }

    fn link_name(&self) -> String {
        format!("..ocisync.{}", self.id)
    }

    /// A name only this bundle has: `..ocisync.<id>..<what>`.
    fn own(&self, what: &str) -> String {
        format!("..ocisync.{}..{what}", self.id)
    }

    /// The link a visible key must be to count as this bundle's.
    fn key_target(&self, key: &str) -> String {
        format!("{}/{key}", self.link_name())
    }

    fn is_ours(&self, key: &str) -> bool {
        self.dir.read_link(key) == Some(self.key_target(key))
    }

    /// The revision the data link points at now, with the keys it wrote.
    fn current(&self) -> Option<Current> {
        let data = self.dir.read_link(&self.link_name())?;
        if !self.is_data_name(&data) {
            return None;
        }
        let dir = self.dir.subdir(&data).ok()?;
        let written = read_written(&dir)?;
        Some(Current { data, dir, written })
    }

    /// True for this bundle's data directory names: the two slots, or
    /// `..ocisync.<id>.<hex stamp>` (the layout before 0.2). Nothing else, so a link someone
    /// points elsewhere (say at `..ocisync.<id>.b..a`, bundle `<id>.b`'s slot) is not ours.
    fn is_data_name(&self, name: &str) -> bool {
        let legacy = format!("{}.", self.link_name());
        name == self.own("a")
            || name == self.own("b")
            || name.strip_prefix(&legacy).is_some_and(|stamp| {
                !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_hexdigit())
            })
    }

    /// Removes the slot `name` (not the current one), first unlinking the visible links of
    /// its keys that are still ours and not the current revision's: the links of a write
    /// killed before its swap, or of keys a write killed after its swap had not yet removed.
    fn forget_slot(&self, name: &str, current: Option<&Current>) -> Result<(), DiskError> {
        if let Some(written) = self.dir.subdir(name).ok().and_then(|d| read_written(&d)) {
            let keep: BTreeSet<&str> = current
                .iter()
                .flat_map(|c| c.written.keys.iter().map(String::as_str))
                .collect();
            for key in written.keys.iter().filter(|k| !keep.contains(k.as_str())) {
                if self.is_ours(key) {
                    self.dir.unlink(key).map_err(io_at(&self.dir, key))?;
                }
            }
        }
        self.dir.remove_dir(name).map_err(io_at(&self.dir, name))
    }

    /// The revision visible now, if any.
    pub fn current_revision(&self) -> Option<String> {
        self.current().map(|c| c.written.revision)
    }

    /// The revision visible now and what it takes on disk, as its record says.
    pub fn current_state(&self) -> Option<(String, u64)> {
        self.current()
            .map(|c| (c.written.revision, c.written.bytes))
    }

    /// Bytes free on the directory's filesystem.
    pub fn available_bytes(&self) -> io::Result<u64> {
        self.dir.available_bytes()
    }

    /// True when `revision` is visible with exactly `files`, byte for byte (by digest), and
    /// every visible link is in place: nothing to repair.
    pub fn verify(&self, revision: &str, files: &[WantedFile]) -> bool {
        let Some(current) = self.current() else {
            return false;
        };
        let wanted: BTreeSet<&str> = files.iter().map(|f| f.key.as_str()).collect();
        let recorded: BTreeSet<&str> = current.written.keys.iter().map(String::as_str).collect();
        current.written.revision == revision
            && wanted == recorded
            && files.iter().all(|f| {
                self.is_ours(&f.key)
                    && digest_of(current.dir.open_file(&f.key), f.size)
                        .ok()
                        .as_ref()
                        == Some(&f.digest)
            })
    }

    /// Removes what an interrupted write left behind (a staged slot, a half-made link),
    /// keeping the current revision.
    pub fn tidy(&self) -> Result<(), DiskError> {
        let current = self.current();
        for slot in [self.own("a"), self.own("b")] {
            if current.as_ref().map(|c| c.data.as_str()) != Some(slot.as_str()) {
                self.forget_slot(&slot, current.as_ref())?;
            }
        }
        for tmp in [self.own("link"), self.own("file")] {
            self.dir.unlink(&tmp).map_err(io_at(&self.dir, &tmp))?;
        }
        Ok(())
    }

    /// Creates a fresh data directory for a new revision, in the slot not visible now.
    pub fn stage(&self) -> Result<Staging, DiskError> {
        let name = match self.current() {
            Some(c) if c.data == self.own("a") => self.own("b"),
            _ => self.own("a"),
        };
        self.forget_slot(&name, self.current().as_ref())?;
        self.dir.mkdir(&name).map_err(io_at(&self.dir, &name))?;
        let dir = self.dir.subdir(&name).map_err(io_at(&self.dir, &name))?;
        let parent = self.dir.try_clone().map_err(io_at(&self.dir, "."))?;
        Ok(Staging {
            parent,
            dir,
            name,
            link: self.link_name(),
            created: Vec::new(),
            committed: false,
        })
    }

    /// Copies a file of the current revision into the staging directory when it still has
    /// `digest` (hashing it on the way); false when it cannot be reused.
    pub fn reuse(&self, staging: &Staging, file: &WantedFile) -> bool {
        let Some(current) = self.current() else {
            return false;
        };
        // More bytes than the file has cannot be the file: the copy stops there.
        let copied = (|| -> Result<Digest, digest::CopyError> {
            let mut input = current
                .dir
                .open_file(&file.key)
                .map_err(digest::CopyError::Read)?;
            let mut output = staging
                .create(&file.key)
                .map_err(digest::CopyError::Write)?;
            let (d, _) = digest::copy_hashed(&mut input, &mut output, file.size)?;
            output.sync_all().map_err(digest::CopyError::Write)?;
            Ok(d)
        })();
        match copied {
            Ok(d) if d == file.digest => true,
            _ => {
                let _ = staging.dir.unlink(&file.key);
                false
            }
        }
    }

    /// Makes the staged revision visible in one rename, then removes what the previous one
    /// left: links of files no longer in the bundle and the previous data directory.
    pub fn commit(
        &self,
        mut staging: Staging,
        revision: &str,
        files: &[WantedFile],
    ) -> Result<(), DiskError> {
        let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
        let written = Written {
            revision: revision.to_string(),
            keys: files.iter().map(|f| f.key.clone()).collect(),
            bytes: budget::total(&sizes).unwrap_or(u64::MAX),
        };
        let bytes = serde_json::to_vec(&written)
            .map_err(|e| io_at(&staging.dir, REVISION_FILE)(io::Error::other(e)))?;
        write_synced(&staging, REVISION_FILE, &bytes)
            .map_err(io_at(&staging.dir, REVISION_FILE))?;
        staging.dir.sync().map_err(io_at(&staging.dir, "."))?;
        let previous = self.current();
        let previous_keys: BTreeSet<&str> = previous
            .iter()
            .flat_map(|c| c.written.keys.iter().map(String::as_str))
            .collect();
        // Links of new files: they resolve only once the data link is swapped.
        for f in files {
            if self.link_key(&f.key, previous_keys.contains(f.key.as_str()))? {
                staging.created.push(f.key.clone());
            }
        }
        // The swap.
        let tmp_link = self.own("link");
        self.dir
            .unlink(&tmp_link)
            .map_err(io_at(&self.dir, &tmp_link))?;
        self.dir
            .symlink(&staging.name, &tmp_link)
            .map_err(io_at(&self.dir, &tmp_link))?;
        self.dir
            .rename(&tmp_link, &self.link_name())
            .map_err(io_at(&self.dir, &self.link_name()))?;
        staging.committed = true;
        self.dir.sync().map_err(io_at(&self.dir, "."))?;
        // Clean-up of what no longer resolves.
        let keep: BTreeSet<&str> = files.iter().map(|f| f.key.as_str()).collect();
        for key in previous_keys.difference(&keep) {
            if self.is_ours(key) {
                self.dir.unlink(key).map_err(io_at(&self.dir, key))?;
            }
        }
        if let Some(old) = previous.filter(|c| c.data != staging.name) {
            self.dir
                .remove_dir(&old.data)
                .map_err(io_at(&self.dir, &old.data))?;
        }
        self.dir.sync().map_err(io_at(&self.dir, "."))
    }

    /// Puts the visible link of `key` in place (true when it made a new one); `was_ours`:
    /// the bundle wrote `key` before, so an entry someone put in its place is replaced
    /// (drift repair).
    fn link_key(&self, key: &str, was_ours: bool) -> Result<bool, DiskError> {
        let target = self.key_target(key);
        match self.dir.kind(key).map_err(io_at(&self.dir, key))? {
            None => {
                self.dir
                    .symlink(&target, key)
                    .map_err(io_at(&self.dir, key))?;
                Ok(true)
            }
            Some(Kind::Symlink) if self.is_ours(key) => Ok(false),
            Some(Kind::File | Kind::Symlink) if was_ours => {
                let tmp = self.own("file");
                self.dir.unlink(&tmp).map_err(io_at(&self.dir, &tmp))?;
                self.dir
                    .symlink(&target, &tmp)
                    .map_err(io_at(&self.dir, &tmp))?;
                self.dir.rename(&tmp, key).map_err(io_at(&self.dir, key))?;
                Ok(false)
            }
            Some(_) => Err(DiskError::Conflict(
                self.dir.shown(key).display().to_string(),
            )),
        }
    }

    /// Removes everything this bundle wrote in the directory, and only that.
    pub fn remove(&self) -> Result<(), DiskError> {
        let current = self.current();
        if let Some(c) = &current {
            for key in &c.written.keys {
                if self.is_ours(key) {
                    self.dir.unlink(key).map_err(io_at(&self.dir, key))?;
                }
            }
        }
        let link = self.link_name();
        if self.dir.read_link(&link).is_some() {
            self.dir.unlink(&link).map_err(io_at(&self.dir, &link))?;
        }
        if let Some(c) = current {
            self.dir
                .remove_dir(&c.data)
                .map_err(io_at(&self.dir, &c.data))?;
        }
        self.tidy()?;
        self.dir.sync().map_err(io_at(&self.dir, "."))
    }
}

/// The data directory's record: JSON, or (before 0.2) the revision alone, whose keys are
/// then the directory's files.
fn read_written(dir: &SafeDir) -> Option<Written> {
    let mut text = String::new();
    dir.open_file(REVISION_FILE)
        .ok()?
        .take(MAX_REVISION_FILE)
        .read_to_string(&mut text)
        .ok()?;
    if let Ok(w) = serde_json::from_str::<Written>(&text) {
        return Some(w);
    }
    let keys = dir
        .names()
        .ok()?
        .into_iter()
        .filter(|n| n != REVISION_FILE)
        .collect();
    Some(Written {
        revision: text.trim().to_string(),
        keys,
        bytes: 0,
    })
}

/// The digest of a file's bytes, read no further than `size` (a file grown on the host is
/// not the one written, however large it became).
pub fn digest_of(file: io::Result<File>, size: u64) -> Result<Digest, digest::CopyError> {
    let (d, _) = digest::hash_all(&mut file.map_err(digest::CopyError::Read)?, size)?;
    Ok(d)
}

fn write_synced(staging: &Staging, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut f = staging.create(name)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
