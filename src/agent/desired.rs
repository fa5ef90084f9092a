//! What the agent should do with one bundle on this node: pure decisions from the bundle,
//! the node's labels and the agent's allow-list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::disk::WantedFile;
use crate::api::RuleBundle;
use crate::store::is_sha256_hex;

/// Reasons a bundle is not applied on a node.
pub mod reason {
    pub const APPLIED: &str = "Applied";
    /// The bundle has no revision yet (its controller has not planned it).
    pub const WAITING: &str = "Waiting";
    /// A new revision is being swapped in (written before the swap, so no report ever
    /// claims a revision that a crash mid-write replaced).
    pub const APPLYING: &str = "Applying";
    /// The bundle's files are being removed from this node (written before the removal).
    pub const REMOVING: &str = "Removing";
    /// The report could not be marked `Applying`, so the files were left as they are.
    pub const REPORT_FAILED: &str = "ReportFailed";
    pub const DIRECTORY_NOT_ALLOWED: &str = "DirectoryNotAllowed";
    /// A directory, file name or digest that could escape the directory or is malformed.
    pub const INVALID_PATH: &str = "InvalidPath";
    pub const FETCH_FAILED: &str = "FetchFailed";
    pub const DIGEST_MISMATCH: &str = "DigestMismatch";
    pub const WRITE_FAILED: &str = "WriteFailed";
    pub const FILE_CONFLICT: &str = "FileConflict";
}

/// The allowed host directories: absolute, normalised.
#[derive(Clone, Debug, Default)]
pub struct AllowList(Vec<PathBuf>);

impl AllowList {
    /// Parses `--allowed-dir` values; each must be absolute and plain.
    pub fn new(dirs: &[String]) -> Result<Self, String> {
        dirs.iter()
            .map(|d| {
                plain_absolute(d).ok_or_else(|| {
                    format!("--allowed-dir {d:?} must be an absolute path without . or .. parts")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(AllowList)
    }

    /// The allowed directory `dir` is inside (or equal to).
    pub fn containing(&self, dir: &Path) -> Option<&Path> {
        self.0
            .iter()
            .map(PathBuf::as_path)
            .find(|a| dir.starts_with(a))
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.0
    }
}

/// `/a/b/c` as a path when absolute with only plain parts (no `.`, `..` or empty parts; one
/// trailing `/` is fine).
fn plain_absolute(dir: &str) -> Option<PathBuf> {
    let rest = dir.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(PathBuf::from("/"));
    }
    rest.split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..")
        .then(|| Path::new("/").join(rest))
}

/// What to do with a bundle on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not for this node (no `nodeFiles`, or not selected): remove anything it left here.
    NotHere,
    /// Selected, but nothing to write yet.
    Wait,
    /// Selected and cannot be applied here: report why, keep what is on disk.
    Refuse {
        reason: &'static str,
        message: String,
    },
    /// Write `files` at `revision` into `directory` (the path on the node).
    Apply {
        directory: PathBuf,
        allowed: PathBuf,
        revision: String,
        files: Vec<WantedFile>,
    },
}

/// Decides for one bundle.
pub fn decide(
    bundle: &RuleBundle,
    node_labels: &BTreeMap<String, String>,
    allow: &AllowList,
) -> Decision {
    let Some(target) = &bundle.spec.node_files else {
        return Decision::NotHere;
    };
    if !target.selects(node_labels) {
        return Decision::NotHere;
    }
    let Some(directory) = plain_absolute(&target.directory) else {
        return Decision::Refuse {
            reason: reason::INVALID_PATH,
            message: format!(
                "nodeFiles.directory {:?} must be absolute without . or .. parts",
                target.directory
            ),
        };
    };
    let Some(allowed) = allow.containing(&directory) else {
        let dirs: Vec<String> = allow
            .dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        return Decision::Refuse {
            reason: reason::DIRECTORY_NOT_ALLOWED,
            message: format!(
                "{} is not inside an allowed directory ({})",
                directory.display(),
                if dirs.is_empty() {
                    "none".to_string()
                } else {
                    dirs.join(", ")
                }
            ),
        };
    };
    let Some(status) = &bundle.status else {
        return Decision::Wait;
    };
    let Some(revision) = &status.revision else {
        return Decision::Wait;
    };
    let mut files = Vec::new();
    for f in &status.files {
        if !valid_key(&f.path) {
            return Decision::Refuse {
                reason: reason::INVALID_PATH,
                message: format!("file name {:?} is not a plain file name", f.path),
            };
        }
        if !f.digest.strip_prefix("sha256:").is_some_and(is_sha256_hex) {
            return Decision::Refuse {
                reason: reason::INVALID_PATH,
                message: format!("file {} has an invalid digest {:?}", f.path, f.digest),
            };
        }
        files.push(WantedFile {
            key: f.path.clone(),
            digest: f.digest.clone(),
            size: u64::try_from(f.size).unwrap_or(0),
        });
    }
    Decision::Apply {
        directory,
        allowed: allowed.to_path_buf(),
        revision: revision.clone(),
        files,
    }
}

/// A file name the controller could have produced: `[-._a-zA-Z0-9]+`, not `.`, not `..*`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && !key.starts_with("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// `dir` under the host root (`/etc/x` with root `/host` is `/host/etc/x`).
pub fn on_host(host_root: &Path, dir: &Path) -> PathBuf {
    host_root.join(dir.strip_prefix("/").unwrap_or(dir))
}

/// After symbolic links on the host are resolved, is `dir` still inside `allowed`? The
/// deepest existing ancestor is resolved; parts that do not exist yet are created plain.
pub fn stays_inside(host_root: &Path, dir: &Path, allowed: &Path) -> bool {
    let Ok(allowed_real) = on_host(host_root, allowed).canonicalize() else {
        return false; // the allowed directory itself is not there (not mounted)
    };
    let mut probe = on_host(host_root, dir);
    let mut rest = Vec::new();
    loop {
        match probe.canonicalize() {
            Ok(real) => {
                let full: PathBuf = rest
                    .iter()
                    .rev()
                    .fold(real, |p, part: &std::ffi::OsString| p.join(part));
                return full.starts_with(&allowed_real);
            }
            Err(_) => {
                let Some(name) = probe.file_name().map(|n| n.to_os_string()) else {
                    return false;
                };
                rest.push(name);
                if !probe.pop() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
