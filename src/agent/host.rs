//! The node's disk as a pass sees it, off the async runtime. Every function here that
//! touches the disk (directory opens, reads of what a revision recorded, removals, the
//! agent's records) is a plain sync function private to this module, reachable only through
//! an async method of [`Host`] that runs it on the blocking pool ([`on_disk`]). A blocking
//! task that panics or is cancelled is an ordinary failure (`WriteFailed`), never a panic
//! of the agent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::desired::{self, AllowList};
use super::disk::Target;
use super::records::{self, Record};
use super::safedir::SafeDir;
use crate::api::reason::NodeReason;

/// A failed step: (reason, message), as the node report carries it.
pub(super) type Failed = (NodeReason, String);

/// Runs disk work on the blocking pool; a task that panicked or was cancelled is a
/// `WriteFailed`.
pub(super) async fn on_disk<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failed> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| (NodeReason::WriteFailed, format!("disk task: {e}")))
}

/// Where the agent works on the node: cheap to clone, so each blocking task owns a copy.
#[derive(Clone, Debug)]
pub struct Host(Arc<Paths>);

#[derive(Debug)]
struct Paths {
    host_root: PathBuf,
    state_dir: PathBuf,
    allow: AllowList,
}

/// What a recorded bundle has in its directory now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct OnDisk {
    /// The revision visible there, if any.
    pub revision: Option<String>,
    /// What that revision takes on disk, as its record says; `None` when the directory
    /// cannot be reached (it holds nothing the budget can count).
    pub bytes: Option<u64>,
}

impl Host {
    /// The node's directories mounted at `host_root`, the agent's records in `state_dir`.
    pub fn new(host_root: PathBuf, state_dir: PathBuf, allow: AllowList) -> Host {
        Host(Arc::new(Paths {
            host_root,
            state_dir,
            allow,
        }))
    }

    pub fn allow(&self) -> &AllowList {
        &self.0.allow
    }

    /// The on-node records (what was written where), by bundle uid.
    pub(super) async fn load_records(&self) -> Result<HashMap<String, Record>, Failed> {
        let paths = self.0.clone();
        let loaded = on_disk(move || records::load_all(&paths.state_dir)).await?;
        let records = loaded.map_err(|e| {
            let message = format!("reading the agent's records: {e}");
            (NodeReason::WriteFailed, message)
        })?;
        Ok(records.into_iter().map(|r| (r.uid.clone(), r)).collect())
    }

    /// What each recorded bundle has in its directory now, by uid, in one blocking task.
    pub(super) async fn survey(
        &self,
        records: Vec<Record>,
    ) -> Result<HashMap<String, OnDisk>, Failed> {
        let paths = self.0.clone();
        on_disk(move || {
            records
                .into_iter()
                .map(|r| {
                    let target = open_target(&paths, &r).ok().flatten();
                    let state =
                        target
                            .map(|t| t.current_state())
                            .map_or_else(OnDisk::default, |current| OnDisk {
                                bytes: Some(current.as_ref().map_or(0, |c| c.1)),
                                revision: current.map(|c| c.0),
                            });
                    (r.uid, state)
                })
                .collect()
        })
        .await
    }

    /// The revision visible in the directory of `record`, if any.
    pub(super) async fn current_revision(&self, record: Record) -> Option<String> {
        let paths = self.0.clone();
        on_disk(move || {
            open_target(&paths, &record)
                .ok()
                .flatten()?
                .current_revision()
        })
        .await
        .ok()
        .flatten()
    }

    /// Removes what the bundle of `record` wrote in `record.directory` (only there).
    pub(super) async fn remove_files(&self, record: Record) -> Result<(), String> {
        let paths = self.0.clone();
        on_disk(move || match open_target(&paths, &record)? {
            Some(t) => t.remove().map_err(|e| e.to_string()),
            None => Ok(()),
        })
        .await
        .map_err(|(_, m)| m)?
    }

    /// Opens the bundle's directory for a write, and records the bundle on the node unless
    /// `previous` is already this record (see [`open_for_write`]).
    pub(super) async fn open_for_write(
        &self,
        record: Record,
        previous: Option<Record>,
        allowed: PathBuf,
    ) -> Result<Target, Failed> {
        let paths = self.0.clone();
        on_disk(move || open_for_write(&paths, &record, previous.as_ref(), &allowed)).await?
    }

    /// Saves (replaces) the record of a bundle.
    pub(super) async fn save_record(&self, record: Record) -> Result<(), String> {
        let paths = self.0.clone();
        on_disk(move || records::save(&paths.state_dir, &record).map_err(|e| e.to_string()))
            .await
            .map_err(|(_, m)| m)?
    }

    /// Deletes the record of bundle `uid`.
    pub(super) async fn delete_record(&self, uid: String) -> Result<(), String> {
        let paths = self.0.clone();
        on_disk(move || records::delete(&paths.state_dir, &uid).map_err(|e| e.to_string()))
            .await
            .map_err(|(_, m)| m)?
    }
}

/// The bundle's existing directory, opened without following links below its allowed
/// directory; `Ok(None)` when it does not exist, or when a part of it is now a link or not
/// a directory (nothing of the bundle's can be reached there without following it).
fn open_target(paths: &Paths, record: &Record) -> Result<Option<Target>, String> {
    let Some(grant) = paths.allow.deciding(&record.directory) else {
        return Err(format!(
            "{} is no longer inside an allowed directory",
            record.directory.display()
        ));
    };
    let below = record
        .directory
        .strip_prefix(&grant.path)
        .map_err(|e| e.to_string())?;
    let allowed = desired::on_host(&paths.host_root, &grant.path);
    match SafeDir::open(&allowed, below, false) {
        Ok(opened) => Ok(opened.map(|d| Target::new(d, record.id()))),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            tracing::warn!(bundle = %record.id(), directory = %record.directory.display(), error = %e, "directory no longer reachable without following a link; nothing removed there");
            Ok(None)
        }
        Err(e) => Err(format!(
            "{}: {e} (is {} mounted into the agent?)",
            record.directory.display(),
            grant.path.display()
        )),
    }
}

/// Opens the directory below its allowed directory, never following a link there, then
/// records the bundle on the node (before any file, so a crash mid-write is still cleaned
/// up later; with the directories it moved from, cleaned once this one holds).
fn open_for_write(
    paths: &Paths,
    record: &Record,
    previous: Option<&Record>,
    allowed: &Path,
) -> Result<Target, Failed> {
    let invalid = |m: String| (NodeReason::InvalidPath, m);
    let below = record
        .directory
        .strip_prefix(allowed)
        .map_err(|e| invalid(e.to_string()))?;
    let on_host = desired::on_host(&paths.host_root, allowed);
    if !on_host.is_dir() {
        return Err(invalid(format!(
            "the allowed directory {} is not mounted into the agent",
            allowed.display()
        )));
    }
    let shown = record.directory.display();
    let target = match SafeDir::open(&on_host, below, true) {
        Ok(Some(dir)) => Target::new(dir, record.id()),
        Ok(None) => return Err(invalid(format!("{shown} is missing"))),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(invalid(format!(
                "{shown}: {e}; nothing below {} is followed",
                allowed.display()
            )));
        }
        Err(e) => return Err((NodeReason::WriteFailed, format!("{shown}: {e}"))),
    };
    // Recorded once the directory is open (only directories were made so far), before
    // any file is written.
    if previous != Some(record) {
        records::save(&paths.state_dir, record)
            .map_err(|e| (NodeReason::WriteFailed, format!("agent state: {e}")))?;
    }
    Ok(target)
}
