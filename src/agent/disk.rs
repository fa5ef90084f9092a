//! Writing a bundle's files into a directory so that readers only ever see one complete
//! revision, the way kubelet writes projected volumes:
//!
//! ```text
//! dir/..ocisync.<id>            -> ..ocisync.<id>.<stamp>   (the data link, swapped by rename)
//! dir/..ocisync.<id>.<stamp>/   the revision's files, plus `..revision`
//! dir/<key>                     -> ..ocisync.<id>/<key>     (stable visible links)
//! ```
//!
//! A new revision is staged in a fresh data directory, fsynced, and made visible by one
//! `rename` of a new data link over the old one. Files that left the bundle resolve to
//! nothing from that instant (their links dangle until removed just after); new files'
//! links are created before the swap and resolve from that instant. Killing the process at
//! any point leaves either the old or the new revision visible, never a mix; leftovers are
//! removed by the next apply. Only entries whose link points into this bundle's data link
//! are ever touched: other files in the directory are never overwritten or removed.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The name of the file inside a data directory that holds its revision (no key can start
/// with `..`).
const REVISION_FILE: &str = "..revision";

/// One file a revision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedFile {
    pub key: String,
    pub digest: String,
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
    pub fn reason(&self) -> &'static str {
        match self {
            DiskError::Io { .. } => "WriteFailed",
            DiskError::Conflict(_) => "FileConflict",
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One bundle's files in one directory.
#[derive(Clone, Debug)]
pub struct Target {
    /// The directory, as this process sees it (under the host root).
    pub dir: PathBuf,
    /// Unique per bundle: `<namespace>.<name>`.
    pub id: String,
}

/// A revision being staged; dropped without [`Target::commit`] it is removed.
pub struct Staging {
    path: PathBuf,
    name: String,
    committed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl Staging {
    /// Where the file `key` goes.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.path.join(key)
    }
}

impl Target {
    fn link_name(&self) -> String {
        format!("..ocisync.{}", self.id)
    }

    fn link(&self) -> PathBuf {
        self.dir.join(self.link_name())
    }

    /// The data directory the link points at now.
    fn current_data(&self) -> Option<PathBuf> {
        let target = fs::read_link(self.link()).ok()?;
        let name = target.file_name()?.to_str()?.to_string();
        name.starts_with(&format!("{}.", self.link_name()))
            .then(|| self.dir.join(name))
    }

    /// The revision visible now, if any.
    pub fn current_revision(&self) -> Option<String> {
        let data = self.current_data()?;
        fs::read_to_string(data.join(REVISION_FILE))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// True when `revision` is visible with exactly `files`, byte for byte (by digest), and
    /// every visible link is in place: nothing to repair.
    pub fn verify(&self, revision: &str, files: &[WantedFile]) -> bool {
        if self.current_revision().as_deref() != Some(revision) {
            return false;
        }
        let Some(data) = self.current_data() else {
            return false;
        };
        let ours = self.visible_links();
        let wanted: BTreeSet<&str> = files.iter().map(|f| f.key.as_str()).collect();
        if ours.iter().map(String::as_str).collect::<BTreeSet<_>>() != wanted {
            return false;
        }
        files
            .iter()
            .all(|f| file_digest(&data.join(&f.key)).ok().as_deref() == Some(f.digest.as_str()))
    }

    /// Removes what an interrupted write left behind (staging directories, a half-made
    /// link), keeping the current revision.
    pub fn tidy(&self) -> Result<(), DiskError> {
        let current = self
            .current_data()
            .and_then(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_string));
        self.remove_data_dirs(current.as_deref())
    }

    /// Creates a fresh data directory for a new revision.
    pub fn stage(&self) -> Result<Staging, DiskError> {
        fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!("{}.{stamp:x}", self.link_name());
        let path = self.dir.join(&name);
        fs::create_dir(&path).map_err(io_at(&path))?;
        Ok(Staging {
            path,
            name,
            committed: false,
        })
    }

    /// Copies a file of the current revision into the staging directory when it still has
    /// `digest` (hashing it on the way); false when it cannot be reused.
    pub fn reuse(&self, staging: &Staging, file: &WantedFile) -> bool {
        let Some(data) = self.current_data() else {
            return false;
        };
        let from = data.join(&file.key);
        let to = staging.path_of(&file.key);
        let copied = (|| -> io::Result<String> {
            let mut input = fs::File::open(&from)?;
            let mut output = fs::File::create(&to)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                output.write_all(&buf[..n])?;
            }
            output.sync_all()?;
            Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
        })();
        match copied {
            Ok(d) if d == file.digest => true,
            _ => {
                let _ = fs::remove_file(&to);
                false
            }
        }
    }

    /// Makes the staged revision visible in one rename, then removes what the previous one
    /// left: links of files no longer in the bundle and old data directories.
    pub fn commit(
        &self,
        mut staging: Staging,
        revision: &str,
        files: &[WantedFile],
    ) -> Result<(), DiskError> {
        let rev_path = staging.path.join(REVISION_FILE);
        write_synced(&rev_path, revision.as_bytes()).map_err(io_at(&rev_path))?;
        for f in files {
            let p = staging.path_of(&f.key);
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).map_err(io_at(&p))?;
        }
        sync_dir(&staging.path).map_err(io_at(&staging.path))?;
        let previous = self.current_keys();
        // Links of new files: they resolve only once the data link is swapped.
        for f in files {
            let visible = self.dir.join(&f.key);
            let target = Path::new(&self.link_name()).join(&f.key);
            match fs::symlink_metadata(&visible) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    symlink(&target, &visible).map_err(io_at(&visible))?;
                }
                Err(e) => return Err(io_at(&visible)(e)),
                Ok(_) if fs::read_link(&visible).ok().as_deref() == Some(target.as_path()) => {}
                // Ours before (the current revision has it), replaced by someone: put back.
                Ok(m) if !m.is_dir() && previous.contains(&f.key) => {
                    let tmp = self.dir.join(format!("{}.tmp-file", self.link_name()));
                    let _ = fs::remove_file(&tmp);
                    symlink(&target, &tmp).map_err(io_at(&tmp))?;
                    fs::rename(&tmp, &visible).map_err(io_at(&visible))?;
                }
                Ok(_) => return Err(DiskError::Conflict(visible.display().to_string())),
            }
        }
        // The swap.
        let tmp_link = self.dir.join(format!("{}.tmp-link", self.link_name()));
        let _ = fs::remove_file(&tmp_link);
        symlink(&staging.name, &tmp_link).map_err(io_at(&tmp_link))?;
        fs::rename(&tmp_link, self.link()).map_err(io_at(&self.link()))?;
        staging.committed = true;
        sync_dir(&self.dir).map_err(io_at(&self.dir))?;
        // Clean-up of what no longer resolves.
        let keep: BTreeSet<&str> = files.iter().map(|f| f.key.as_str()).collect();
        for key in self.visible_links() {
            if !keep.contains(key.as_str()) {
                let p = self.dir.join(&key);
                fs::remove_file(&p).map_err(io_at(&p))?;
            }
        }
        self.remove_data_dirs(Some(&staging.name))?;
        sync_dir(&self.dir).map_err(io_at(&self.dir))
    }

    /// Removes everything this bundle wrote in the directory, and only that.
    pub fn remove(&self) -> Result<(), DiskError> {
        if !self.dir.exists() {
            return Ok(());
        }
        for key in self.visible_links() {
            let p = self.dir.join(&key);
            fs::remove_file(&p).map_err(io_at(&p))?;
        }
        match fs::remove_file(self.link()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&self.link())(e)),
        }
        self.remove_data_dirs(None)?;
        sync_dir(&self.dir).map_err(io_at(&self.dir))
    }

    /// The keys of the revision visible now.
    fn current_keys(&self) -> BTreeSet<String> {
        let Some(data) = self.current_data() else {
            return BTreeSet::new();
        };
        fs::read_dir(data)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n != REVISION_FILE)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Names in the directory that are links into this bundle's data link.
    fn visible_links(&self) -> Vec<String> {
        let prefix = Path::new(&self.link_name()).to_path_buf();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
            .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t.parent() == Some(prefix.as_path())))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }

    /// Removes this bundle's data directories (and a half-made link), except `keep`.
    fn remove_data_dirs(&self, keep: Option<&str>) -> Result<(), DiskError> {
        let prefix = format!("{}.", self.link_name());
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !name.starts_with(&prefix) || Some(name.as_str()) == keep {
                continue;
            }
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(io_at(&p))?;
        }
        Ok(())
    }
}

/// `sha256:<hex>` of a file's bytes.
pub fn file_digest(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut f, &mut hasher)?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
