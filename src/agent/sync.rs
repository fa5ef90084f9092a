//! One pass over every bundle: apply what this node should have, repair drift, remove what
//! it should no longer have, and build the node report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::desired::{self, AllowList, Decision, reason};
use super::disk::{Target, WantedFile};
use super::fetch;
use super::records::{self, Record};
use super::report::{self, Known, Reporter};
use crate::api::RuleBundle;
use crate::api::node_report::{BundleReport, NodeReportSpec};

/// What the agent needs for a pass.
pub struct Env<'a> {
    pub host_root: &'a std::path::Path,
    pub state_dir: &'a std::path::Path,
    pub allow: &'a AllowList,
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
pub async fn pass(
    env: &Env<'_>,
    memory: &mut Memory,
    bundles: &[std::sync::Arc<RuleBundle>],
    labels: &BTreeMap<String, String>,
    full: bool,
) -> Vec<BundleReport> {
    let records: HashMap<String, Record> = memory
        .records
        .get_or_insert_with(|| {
            records::load_all(env.state_dir)
                .into_iter()
                .map(|r| (r.uid.clone(), r))
                .collect()
        })
        .clone();
    let mut reports = Vec::new();
    let mut keep = HashSet::new();
    for bundle in bundles {
        let uid = bundle.uid().unwrap_or_default();
        let decision = desired::decide(bundle, labels, env.allow);
        if decision == Decision::NotHere || uid.is_empty() {
            continue;
        }
        keep.insert(uid.clone());
        let record = Record {
            namespace: bundle.namespace().unwrap_or_default(),
            name: bundle.name_any(),
            uid: uid.clone(),
            directory: PathBuf::new(),
        };
        let on_disk = records.get(&uid);
        let current = on_disk.and_then(|r| target_of(env, r).current_revision());
        let report = |reason: &str, message: String, revision: Option<String>| BundleReport {
            namespace: record.namespace.clone(),
            name: record.name.clone(),
            uid: uid.clone(),
            generation: bundle.metadata.generation,
            revision,
            reason: reason.to_string(),
            message,
        };
        let entry = match decision {
            Decision::NotHere => continue,
            Decision::Wait => report(reason::WAITING, String::new(), current),
            Decision::Refuse { reason, message } => report(reason, message, current),
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
                match apply(
                    env, memory, &record, on_disk, &allowed, &revision, &files, full,
                )
                .await
                {
                    Ok(()) => report(reason::APPLIED, String::new(), Some(revision)),
                    Err((r, message)) => {
                        let now = target_of(env, &record).current_revision().or(current);
                        report(r, message, now)
                    }
                }
            }
        };
        reports.push(entry);
    }
    // Bundles gone, or no longer selecting this node: remove their files, only theirs.
    for (uid, record) in records {
        if keep.contains(&uid) {
            continue;
        }
        let removing = changing(
            &record,
            reason::REMOVING,
            format!("removing files from {}", record.directory.display()),
        );
        if let Err(e) = before_swap(env, memory, &uid, None, Some(removing)).await {
            tracing::warn!(bundle = %record.id(), error = %e, "cannot update the NodeReport; files kept for now");
            continue;
        }
        match target_of(env, &record).remove() {
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
    reports.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    reports
}

fn target_of(env: &Env<'_>, record: &Record) -> Target {
    Target {
        dir: desired::on_host(env.host_root, &record.directory),
        id: record.id(),
    }
}

/// Brings one bundle's directory to `revision`; the error is (reason, message).
#[allow(clippy::too_many_arguments)]
async fn apply(
    env: &Env<'_>,
    memory: &mut Memory,
    record: &Record,
    previous: Option<&Record>,
    allowed: &std::path::Path,
    revision: &str,
    files: &[WantedFile],
    full: bool,
) -> Result<(), (&'static str, String)> {
    let key = (revision.to_string(), record.directory.clone());
    if !full && memory.applied.get(&record.uid) == Some(&key) {
        return Ok(());
    }
    if let Some(f) = memory.failed.get(&record.uid)
        && f.key == key
        && Instant::now() < f.retry_at
    {
        return Err((f.reason, f.message.clone()));
    }
    let result = match check_and_record(env, memory, record, previous, allowed) {
        Ok(()) => write(env, memory, record, previous, revision, files).await,
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

/// Checks that the directory stays inside its allowed directory, then records the bundle on
/// the node (before any file, so a crash mid-write is still cleaned up later).
fn check_and_record(
    env: &Env<'_>,
    memory: &mut Memory,
    record: &Record,
    previous: Option<&Record>,
    allowed: &std::path::Path,
) -> Result<(), (&'static str, String)> {
    if !desired::stays_inside(env.host_root, &record.directory, allowed) {
        return Err((
            reason::INVALID_PATH,
            format!(
                "{} leads outside {} through a symbolic link, or {} is not mounted",
                record.directory.display(),
                allowed.display(),
                allowed.display()
            ),
        ));
    }
    if previous != Some(record) {
        records::save(env.state_dir, record)
            .map_err(|e| (reason::WRITE_FAILED, format!("agent state: {e}")))?;
        if let Some(r) = memory.records.as_mut() {
            r.insert(record.uid.clone(), record.clone());
        }
    }
    Ok(())
}

/// Verifies the bundle's directory and, when it differs, writes the revision.
async fn write(
    env: &Env<'_>,
    memory: &mut Memory,
    record: &Record,
    previous: Option<&Record>,
    revision: &str,
    files: &[WantedFile],
) -> Result<(), (&'static str, String)> {
    let target = target_of(env, record);
    if target.verify(revision, files) {
        // killed mid-write after this revision landed: clear the leftovers
        target.tidy().map_err(|e| (e.reason(), e.to_string()))?;
    } else {
        let staging = target.stage().map_err(|e| (e.reason(), e.to_string()))?;
        for f in files {
            if !target.reuse(&staging, f) {
                fetch::fetch(env.http, env.controller_url, f, &staging.path_of(&f.key))
                    .await
                    .map_err(|e| (e.reason(), e.to_string()))?;
            }
        }
        let applying = changing(
            record,
            reason::APPLYING,
            format!("writing revision {revision}"),
        );
        before_swap(env, memory, &record.uid, Some(revision), Some(applying))
            .await
            .map_err(|e| {
                let m = format!("cannot mark the NodeReport Applying before the write: {e}");
                (reason::REPORT_FAILED, m)
            })?;
        target
            .commit(staging, revision, files)
            .map_err(|e| (e.reason(), e.to_string()))?;
        tracing::info!(bundle = %record.id(), revision, directory = %record.directory.display(), files = files.len(), "applied");
    }
    // A bundle that moved to another directory: the old one is cleaned once the new one holds.
    if let Some(old) = previous.filter(|p| p.directory != record.directory)
        && let Err(e) = target_of(env, old).remove()
    {
        tracing::warn!(bundle = %old.id(), error = %e, "cannot remove files from the old directory");
    }
    Ok(())
}

/// Before bundle `uid`'s files change: this process's first write to the report (so no
/// write of a killed predecessor can land after this point), and the withdrawal of a claim
/// the change would falsify (see [`report::withdraw`]). The error is the API's reason.
async fn before_swap(
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
    let summary = |e: kube::Error| crate::controller::api_error_summary(&e);
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
fn changing(record: &Record, reason: &str, message: String) -> BundleReport {
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
