//! One pass over every bundle: apply what this node should have, repair drift, remove what
//! it should no longer have, and build the node report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::budget::{self, Budget};
use super::desired::{self, AllowList, Decision, reason};
use super::disk::{Target, WantedFile};
use super::records::{self, Record};
use super::report::{self, Known, Reporter};
use super::safedir::SafeDir;
use super::write;
use crate::api::RuleBundle;
use crate::api::node_report::{BundleReport, NodeReportSpec};

/// What the agent needs for a pass.
pub struct Env<'a> {
    pub host_root: &'a std::path::Path,
    pub state_dir: &'a std::path::Path,
    pub allow: &'a AllowList,
    pub budget: &'a Budget,
    pub controller_url: &'a str,
    pub http: &'a reqwest::Client,
    /// The node's report, where claims are withdrawn before files change.
    pub reporter: &'a Reporter,
}

/// What stays between passes: per bundle uid, the revision and directory applied and
/// verified, so an unchanged bundle costs nothing until the next full check.
#[derive(Default)]
pub struct Memory {
    pub applied: HashMap<String, (String, PathBuf)>,
    /// Per bundle uid, the last failure for a revision and directory: not retried before
    /// its time, however often other changes wake the agent.
    pub failed: HashMap<String, Failure>,
    /// The on-node records (what was written where), read from disk once and then kept in
    /// step with every save and delete.
    pub records: Option<HashMap<String, Record>>,
    /// The node's report as last read or written (`None`: unknown, read before a write).
    pub reported: Option<Known>,
    /// True once this process has written the report: no predecessor's write can land since.
    pub fenced: bool,
    /// The Node's uid, the report's owner.
    pub node_uid: String,
}

/// A failed apply, remembered for backoff.
#[derive(Clone, Debug)]
pub struct Failure {
    key: (String, PathBuf),
    reason: &'static str,
    message: String,
    attempts: u32,
    retry_at: Instant,
}

/// The first retry of a failed bundle comes after this; each further failure doubles it,
/// up to five minutes.
const RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Runs one pass. With `full`, every applied bundle is re-verified on disk (drift repair).
/// Removals come first, so a bundle deleted and created again under the same name (another
/// uid, the same names on disk) is written only once the old one's files are gone.
pub async fn pass(
    env: &Env<'_>,
    memory: &mut Memory,
    bundles: &[std::sync::Arc<RuleBundle>],
    labels: &BTreeMap<String, String>,
    full: bool,
) -> Vec<BundleReport> {
    if memory.records.is_none() {
        let loaded = records::load_all(env.state_dir);
        memory.records = Some(loaded.into_iter().map(|r| (r.uid.clone(), r)).collect());
    }
    let decided: Vec<(&RuleBundle, String, Decision)> = bundles
        .iter()
        .filter_map(|b| {
            let uid = b.uid().filter(|u| !u.is_empty())?;
            let d = desired::decide(b, labels, env.allow);
            (d != Decision::NotHere).then_some((b.as_ref(), uid, d))
        })
        .collect();
    let keep: HashSet<&str> = decided.iter().map(|(_, uid, _)| uid.as_str()).collect();
    remove_gone(env, memory, &keep).await;
    let records = memory.records.clone().unwrap_or_default();
    let refused = over_budget(env, &records, &decided);
    let mut reports = Vec::new();
    for (bundle, uid, decision) in decided {
        let record = Record {
            namespace: bundle.namespace().unwrap_or_default(),
            name: bundle.name_any(),
            uid: uid.clone(),
            directory: PathBuf::new(),
            moved_from: Vec::new(),
        };
        let on_disk = records.get(&uid);
        let current = on_disk.and_then(|r| current_revision(env, r));
        let report = |reason: &str, message: String, revision: Option<String>| BundleReport {
            namespace: record.namespace.clone(),
            name: record.name.clone(),
            uid: uid.clone(),
            generation: bundle.metadata.generation,
            revision,
            reason: reason.into(),
            message,
        };
        // An earlier object of this name (another uid) with files in the same directory:
        // its removal comes first, or the two would share names on disk.
        let predecessor = |dir: &std::path::Path| {
            records
                .values()
                .any(|r| r.uid != uid && r.id() == record.id() && r.directories().any(|d| d == dir))
        };
        let entry = match decision {
            Decision::NotHere => continue,
            Decision::Wait => report(reason::WAITING, String::new(), current),
            Decision::Refuse { reason, message } => report(reason, message, current),
            Decision::Apply { ref directory, .. } if predecessor(directory) => report(
                reason::WAITING,
                "the files of an earlier RuleBundle of this name are still being removed".into(),
                None,
            ),
            Decision::Apply { .. } if refused.contains_key(&uid) => {
                let message = refused.get(&uid).cloned().unwrap_or_default();
                report(reason::QUOTA_EXCEEDED, message, current)
            }
            Decision::Apply {
                directory,
                allowed,
                revision,
                files,
            } => {
                let record = Record {
                    directory: directory.clone(),
                    ..record.clone()
                };
                let wanted = Wanted {
                    record: &record,
                    allowed: &allowed,
                    revision: &revision,
                    files: &files,
                };
                match apply(env, memory, &wanted, on_disk, full).await {
                    Ok(()) => report(reason::APPLIED, String::new(), Some(revision.clone())),
                    Err((r, message)) => {
                        let now = current_revision(env, &record).or(current);
                        report(r, message, now)
                    }
                }
            }
        };
        reports.push(entry);
    }
    reports.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    reports
}

/// Bundles gone, or no longer selecting this node: their files are removed, only theirs.
async fn remove_gone(env: &Env<'_>, memory: &mut Memory, keep: &HashSet<&str>) {
    let gone: Vec<Record> = memory
        .records
        .iter()
        .flat_map(|r| r.values())
        .filter(|r| !keep.contains(r.uid.as_str()))
        .cloned()
        .collect();
    for record in gone {
        let uid = record.uid.clone();
        let removing = changing(
            &record,
            reason::REMOVING,
            format!("removing files from {}", record.directory.display()),
        );
        if let Err(e) = before_swap(env, memory, &uid, None, Some(removing)).await {
            tracing::warn!(bundle = %record.id(), error = %e, "cannot update the NodeReport; files kept for now");
            continue;
        }
        let mut removed = Ok(());
        for dir in record.directories() {
            let one = Record {
                directory: dir.clone(),
                moved_from: Vec::new(),
                ..record.clone()
            };
            removed = remove_files(env, &one).await;
            if removed.is_err() {
                break;
            }
        }
        match removed {
            Ok(()) => {
                tracing::info!(bundle = %record.id(), directory = %record.directory.display(), "files removed");
                memory.applied.remove(&uid);
                memory.failed.remove(&uid);
                match records::delete(env.state_dir, &uid) {
                    Ok(()) => {
                        if let Some(r) = memory.records.as_mut() {
                            r.remove(&uid);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot delete the agent record"),
                }
            }
            Err(e) => tracing::warn!(bundle = %record.id(), error = %e, "cannot remove files"),
        }
    }
}

/// The bundles over a node budget, by uid, from the sizes in their status and what every
/// recorded bundle holds on disk now.
fn over_budget(
    env: &Env<'_>,
    records: &HashMap<String, Record>,
    decided: &[(&RuleBundle, String, Decision)],
) -> HashMap<String, String> {
    let held: budget::Held = records
        .values()
        .filter_map(|r| {
            let grant = env.allow.deciding(&r.directory)?.path.clone();
            let bytes = open_target(env, r).ok().flatten()?.current_bytes();
            Some((r.uid.clone(), (grant, bytes)))
        })
        .collect();
    let claims: Vec<budget::Claim<'_>> = decided
        .iter()
        .filter_map(|(b, uid, d)| match d {
            Decision::Apply { allowed, files, .. } => Some(budget::Claim {
                uid,
                grant: allowed,
                sizes: files.iter().map(|f| f.size).collect(),
                order: (
                    b.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_default(),
                    b.metadata.namespace.as_deref().unwrap_or_default(),
                    b.metadata.name.as_deref().unwrap_or_default(),
                ),
            }),
            _ => None,
        })
        .collect();
    budget::refused(env.budget, &held, &claims)
}

/// The bundle's existing directory, opened without following links below its allowed
/// directory; `Ok(None)` when it does not exist, or when a part of it is now a link or not
/// a directory (nothing of the bundle's can be reached there without following it).
fn open_target(env: &Env<'_>, record: &Record) -> Result<Option<Target>, String> {
    let Some(grant) = env.allow.deciding(&record.directory) else {
        return Err(format!(
            "{} is no longer inside an allowed directory",
            record.directory.display()
        ));
    };
    let below = record
        .directory
        .strip_prefix(&grant.path)
        .map_err(|e| e.to_string())?;
    let allowed = desired::on_host(env.host_root, &grant.path);
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

/// Removes what the bundle of `record` wrote in its `directory`, off the async runtime.
async fn remove_files(env: &Env<'_>, record: &Record) -> Result<(), String> {
    match open_target(env, record)? {
        Some(t) => write::on_disk(move || t.remove().map_err(|e| e.to_string()))
            .await
            .map_err(|(_, m)| m)?,
        None => Ok(()),
    }
}

fn current_revision(env: &Env<'_>, record: &Record) -> Option<String> {
    open_target(env, record).ok().flatten()?.current_revision()
}

/// What one bundle wants on this node.
pub(super) struct Wanted<'a> {
    pub(super) record: &'a Record,
    pub(super) allowed: &'a std::path::Path,
    pub(super) revision: &'a str,
    pub(super) files: &'a [WantedFile],
}

/// Brings one bundle's directory to `revision`; the error is (reason, message).
async fn apply(
    env: &Env<'_>,
    memory: &mut Memory,
    wanted: &Wanted<'_>,
    previous: Option<&Record>,
    full: bool,
) -> Result<(), (&'static str, String)> {
    let record = wanted.record;
    let key = (wanted.revision.to_string(), record.directory.clone());
    if !full && memory.applied.get(&record.uid) == Some(&key) {
        return Ok(());
    }
    if let Some(f) = memory.failed.get(&record.uid)
        && f.key == key
        && Instant::now() < f.retry_at
    {
        return Err((f.reason, f.message.clone()));
    }
    let moved = previous.map(|p| p.moved_to(record.directory.clone()));
    let wanted = &Wanted {
        record: moved.as_ref().unwrap_or(record),
        ..*wanted
    };
    let result = match check_and_record(env, memory, wanted.record, previous, wanted.allowed) {
        Ok(target) => match write::write(env, memory, target, wanted).await {
            Ok(()) => {
                clean_moved(env, memory, wanted.record).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match &result {
        Ok(()) => {
            memory.failed.remove(&record.uid);
            memory.applied.insert(record.uid.clone(), key);
        }
        Err((reason, message)) => {
            let attempts = match memory.failed.get(&record.uid) {
                Some(f) if f.key == key => f.attempts.saturating_add(1),
                _ => 1,
            };
            let delay = RETRY
                .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(10)))
                .min(MAX_RETRY);
            if attempts == 1 {
                tracing::warn!(bundle = %record.id(), reason = *reason, detail = %message, "bundle not applied on this node");
            }
            memory.applied.remove(&record.uid);
            memory.failed.insert(
                record.uid.clone(),
                Failure {
                    key,
                    reason,
                    message: message.clone(),
                    attempts,
                    retry_at: Instant::now() + delay,
                },
            );
        }
    }
    result
}

/// Opens the directory below its allowed directory, never following a link there, then
/// records the bundle on the node (before any file, so a crash mid-write is still cleaned
/// up later; with the directories it moved from, cleaned once this one holds).
fn check_and_record(
    env: &Env<'_>,
    memory: &mut Memory,
    record: &Record,
    previous: Option<&Record>,
    allowed: &std::path::Path,
) -> Result<Target, (&'static str, String)> {
    let invalid = |m: String| (reason::INVALID_PATH, m);
    let below = record
        .directory
        .strip_prefix(allowed)
        .map_err(|e| invalid(e.to_string()))?;
    let on_host = desired::on_host(env.host_root, allowed);
    if !on_host.is_dir() {
        return Err(invalid(format!(
            "the allowed directory {} is not mounted into the agent",
            allowed.display()
        )));
    }
    let target = match SafeDir::open(&on_host, below, true) {
        Ok(Some(dir)) => Target::new(dir, record.id()),
        Ok(None) => {
            return Err(invalid(format!(
                "{} is missing",
                record.directory.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(invalid(format!(
                "{}: {e}; nothing below {} is followed",
                record.directory.display(),
                allowed.display()
            )));
        }
        Err(e) => {
            return Err((
                reason::WRITE_FAILED,
                format!("{}: {e}", record.directory.display()),
            ));
        }
    };
    // Recorded once the directory is open (only directories were made so far), before
    // any file is written.
    if previous != Some(record) {
        records::save(env.state_dir, record)
            .map_err(|e| (reason::WRITE_FAILED, format!("agent state: {e}")))?;
        if let Some(r) = memory.records.as_mut() {
            r.insert(record.uid.clone(), record.clone());
        }
    }
    Ok(target)
}

/// Once a bundle's directory holds its revision, the directories it moved from are
/// cleaned; those that cannot be yet stay in its record for the next pass.
async fn clean_moved(env: &Env<'_>, memory: &mut Memory, record: &Record) {
    if record.moved_from.is_empty() {
        return;
    }
    let mut left = record.clone();
    left.moved_from.clear();
    for dir in &record.moved_from {
        let old = Record {
            directory: dir.clone(),
            moved_from: Vec::new(),
            ..record.clone()
        };
        if let Err(e) = remove_files(env, &old).await {
            tracing::warn!(bundle = %record.id(), directory = %dir.display(), error = %e, "cannot remove files from the old directory yet");
            left.moved_from.push(dir.clone());
        }
    }
    match records::save(env.state_dir, &left) {
        Ok(()) => {
            if let Some(r) = memory.records.as_mut() {
                r.insert(left.uid.clone(), left);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot save the agent record"),
    }
}

/// Before bundle `uid`'s files change: this process's first write to the report (so no
/// write of a killed predecessor can land after this point), and the withdrawal of a claim
/// the change would falsify (see [`report::withdraw`]). The error is the API's reason.
pub(super) async fn before_swap(
    env: &Env<'_>,
    memory: &mut Memory,
    uid: &str,
    keeps: Option<&str>,
    replacement: Option<BundleReport>,
) -> Result<(), String> {
    let fenced = memory.fenced;
    publish(env, memory, |known| {
        report::withdraw(&known.spec, uid, keeps, replacement)
            .or_else(|| (!fenced).then(|| known.spec.clone()))
    })
    .await
}

/// Writes the report when `next` asks for a change to what it holds now (read first when
/// unknown), on the condition that it still holds that. The error is the API's reason.
pub async fn publish(
    env: &Env<'_>,
    memory: &mut Memory,
    next: impl FnOnce(&Known) -> Option<NodeReportSpec>,
) -> Result<(), String> {
    let summary = |e: kube::Error| crate::errors::api_error_summary(&e);
    let known = match memory.reported.take() {
        Some(k) => k,
        None => env.reporter.read().await.map_err(summary)?,
    };
    let Some(spec) = next(&known) else {
        memory.reported = Some(known);
        return Ok(());
    };
    let written = env
        .reporter
        .write(&memory.node_uid, &spec, known.version.as_deref())
        .await
        .map_err(summary)?;
    memory.reported = Some(written);
    memory.fenced = true;
    Ok(())
}

/// The report entry of a bundle whose files are changing: it claims no revision.
pub(super) fn changing(record: &Record, reason: &str, message: String) -> BundleReport {
    BundleReport {
        namespace: record.namespace.clone(),
        name: record.name.clone(),
        uid: record.uid.clone(),
        generation: None,
        revision: None,
        reason: reason.into(),
        message,
    }
}
