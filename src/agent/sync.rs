//! One pass over every bundle: apply what this node should have, repair drift, remove what
//! it should no longer have, and build the node report. The disk work runs on blocking
//! threads, through [`Host`]; this module decides, and talks to the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::budget::{self, Budget};
use super::desired::{self, Decision};
use super::disk::WantedFile;
use super::host::{Failed, Host, OnDisk};
use super::records::Record;
use super::report::{self, Known, Reporter};
use super::write;
use crate::api::RuleBundle;
use crate::api::node_report::{BundleReport, NodeReportSpec};
use crate::api::reason::NodeReason;
use crate::backoff::Backoff;

/// What the agent needs for a pass.
pub struct Env<'a> {
    /// The node's directories and the agent's records, reached on blocking threads.
    pub host: &'a Host,
    pub budget: &'a Budget,
    pub controller_url: &'a str,
    pub http: &'a reqwest::Client,
    /// The node's report, where claims are withdrawn before files change.
    pub reporter: &'a Reporter,
    /// This node's retry seed ([`crate::backoff::seed_of`] its name): nodes whose writes
    /// fail together retry apart.
    pub seed: u64,
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
    /// The last pass could not remove the files of a bundle that is gone (retried soon:
    /// such a bundle is in no report entry).
    pub removal_failed: bool,
}

/// A failed apply, remembered for backoff.
#[derive(Clone, Debug)]
pub struct Failure {
    key: (String, PathBuf),
    reason: NodeReason,
    message: String,
    attempts: u32,
    retry_at: Instant,
}

/// A failed bundle is retried after 5 s, then twice as long per further failure, up to
/// five minutes (jittered per node).
const BUNDLE_RETRY: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));

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
    let decided = decide_all(env, bundles, labels);
    if memory.records.is_none() {
        match env.host.load_records().await {
            Ok(loaded) => memory.records = Some(loaded),
            Err(e) => return unavailable(&decided, e),
        }
    }
    let keep: HashSet<&str> = decided.iter().map(|(_, uid, _)| uid.as_str()).collect();
    memory.removal_failed = false;
    remove_gone(env, memory, &keep).await;
    let records = memory.records.clone().unwrap_or_default();
    let on_disk = match env.host.survey(records.values().cloned().collect()).await {
        Ok(s) => s,
        Err(e) => return unavailable(&decided, e),
    };
    let seen = Seen {
        refused: over_budget(env, &records, &on_disk, &decided),
        records,
        on_disk,
        full,
    };
    let mut reports = Vec::new();
    for (bundle, uid, decision) in decided {
        reports.extend(one_bundle(env, memory, &seen, bundle, uid, decision).await);
    }
    reports.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    reports
}

/// The bundles with something to do on this node (every one but `NotHere`), with their uids.
fn decide_all<'b>(
    env: &Env<'_>,
    bundles: &'b [std::sync::Arc<RuleBundle>],
    labels: &BTreeMap<String, String>,
) -> Vec<(&'b RuleBundle, String, Decision)> {
    bundles
        .iter()
        .filter_map(|b| {
            let uid = b.uid().filter(|u| !u.is_empty())?;
            let d = desired::decide(b, labels, env.host.allow());
            (d != Decision::NotHere).then_some((b.as_ref(), uid, d))
        })
        .collect()
}

/// Every bundle's entry when the agent cannot see what it has on disk: nothing is touched.
fn unavailable(decided: &[(&RuleBundle, String, Decision)], failed: Failed) -> Vec<BundleReport> {
    let (reason, message) = failed;
    tracing::warn!(reason = %reason, detail = %message, "cannot read the agent's state on the node");
    let mut reports: Vec<BundleReport> = decided
        .iter()
        .map(|(b, uid, _)| BundleReport {
            namespace: b.namespace().unwrap_or_default(),
            name: b.name_any(),
            uid: uid.clone(),
            generation: b.metadata.generation,
            revision: None,
            reason: reason.into(),
            message: format!("agent state: {message}"),
        })
        .collect();
    reports.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    reports
}

/// What a pass knows once removals are done.
struct Seen {
    /// The on-node records, by uid.
    records: HashMap<String, Record>,
    /// What each recorded bundle has on disk, by uid.
    on_disk: HashMap<String, OnDisk>,
    /// Bundles over a budget, by uid, with the message.
    refused: HashMap<String, String>,
    full: bool,
}

/// One bundle's report entry, applying its revision when it is to be applied.
async fn one_bundle(
    env: &Env<'_>,
    memory: &mut Memory,
    seen: &Seen,
    bundle: &RuleBundle,
    uid: String,
    decision: Decision,
) -> Option<BundleReport> {
    let record = Record {
        namespace: bundle.namespace().unwrap_or_default(),
        name: bundle.name_any(),
        uid,
        directory: PathBuf::new(),
        moved_from: Vec::new(),
    };
    let previous = seen.records.get(&record.uid);
    let current = seen
        .on_disk
        .get(&record.uid)
        .and_then(|d| d.revision.clone());
    let entry = |reason: NodeReason, message: String, revision: Option<String>| BundleReport {
        namespace: record.namespace.clone(),
        name: record.name.clone(),
        uid: record.uid.clone(),
        generation: bundle.metadata.generation,
        revision,
        reason: reason.into(),
        message,
    };
    // An earlier object of this name (another uid) with files in the same directory: its
    // removal comes first, or the two would share names on disk.
    let predecessor = |dir: &std::path::Path| {
        seen.records.values().any(|r| {
            r.uid != record.uid && r.id() == record.id() && r.directories().any(|d| d == dir)
        })
    };
    Some(match decision {
        Decision::NotHere => return None,
        Decision::Wait => entry(NodeReason::Waiting, String::new(), current),
        Decision::Refuse { reason, message } => entry(reason, message, current),
        Decision::Apply { ref directory, .. } if predecessor(directory) => entry(
            NodeReason::Waiting,
            "the files of an earlier RuleBundle of this name are still being removed".into(),
            None,
        ),
        Decision::Apply { .. } if seen.refused.contains_key(&record.uid) => {
            let message = seen.refused.get(&record.uid).cloned().unwrap_or_default();
            entry(NodeReason::QuotaExceeded, message, current)
        }
        Decision::Apply {
            directory,
            allowed,
            revision,
            files,
        } => {
            let record = Record {
                directory,
                ..record.clone()
            };
            let wanted = Wanted {
                record: &record,
                allowed: &allowed,
                revision: &revision,
                files: &files,
            };
            match apply(env, memory, &wanted, previous, seen.full).await {
                Ok(()) => entry(NodeReason::Applied, String::new(), Some(revision.clone())),
                Err((r, message)) => {
                    let now = env.host.current_revision(record.clone()).await;
                    entry(r, message, now.or(current))
                }
            }
        }
    })
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
            NodeReason::Removing,
            format!("removing files from {}", record.directory.display()),
        );
        if let Err(e) = before_swap(env, memory, &uid, None, Some(removing)).await {
            tracing::warn!(bundle = %record.id(), error = %e, "cannot update the NodeReport; files kept for now");
            memory.removal_failed = true;
            continue;
        }
        if let Err(e) = remove_everywhere(env, &record).await {
            tracing::warn!(bundle = %record.id(), error = %e, "cannot remove files");
            memory.removal_failed = true;
            continue;
        }
        tracing::info!(bundle = %record.id(), directory = %record.directory.display(), "files removed");
        memory.applied.remove(&uid);
        memory.failed.remove(&uid);
        match env.host.delete_record(uid.clone()).await {
            Ok(()) => {
                if let Some(r) = memory.records.as_mut() {
                    r.remove(&uid);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot delete the agent record"),
        }
    }
}

/// Removes the bundle's files from every directory it may have files in, stopping at the
/// first that fails.
async fn remove_everywhere(env: &Env<'_>, record: &Record) -> Result<(), String> {
    for dir in record.directories() {
        let one = Record {
            directory: dir.clone(),
            moved_from: Vec::new(),
            ..record.clone()
        };
        env.host.remove_files(one).await?;
    }
    Ok(())
}

/// The bundles over a node budget, by uid, from the sizes in their status and what every
/// recorded bundle holds on disk now.
fn over_budget(
    env: &Env<'_>,
    records: &HashMap<String, Record>,
    on_disk: &HashMap<String, OnDisk>,
    decided: &[(&RuleBundle, String, Decision)],
) -> HashMap<String, String> {
    let held: budget::Held = records
        .values()
        .filter_map(|r| {
            let grant = env.host.allow().deciding(&r.directory)?.path.clone();
            let bytes = on_disk.get(&r.uid)?.bytes?;
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
) -> Result<(), Failed> {
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
    let result = write_recorded(env, memory, wanted, previous).await;
    remember(env, memory, record, key, &result);
    result
}

/// Records the bundle on the node (before any file, so a crash mid-write is still cleaned
/// up later), writes its revision, then cleans the directories it moved from.
async fn write_recorded(
    env: &Env<'_>,
    memory: &mut Memory,
    wanted: &Wanted<'_>,
    previous: Option<&Record>,
) -> Result<(), Failed> {
    let record = wanted.record;
    let target = env
        .host
        .open_for_write(
            record.clone(),
            previous.cloned(),
            wanted.allowed.to_path_buf(),
        )
        .await?;
    if previous != Some(record)
        && let Some(r) = memory.records.as_mut()
    {
        r.insert(record.uid.clone(), record.clone());
    }
    write::write(env, memory, target, wanted).await?;
    clean_moved(env, memory, record).await;
    Ok(())
}

/// Remembers an apply's outcome: applied, or failed with its retry time.
fn remember(
    env: &Env<'_>,
    memory: &mut Memory,
    record: &Record,
    key: (String, PathBuf),
    result: &Result<(), Failed>,
) {
    let Err((reason, message)) = result else {
        memory.failed.remove(&record.uid);
        memory.applied.insert(record.uid.clone(), key);
        return;
    };
    let attempts = match memory.failed.get(&record.uid) {
        Some(f) if f.key == key => f.attempts.saturating_add(1),
        _ => 1,
    };
    if attempts == 1 {
        tracing::warn!(bundle = %record.id(), reason = %reason, detail = %message, "bundle not applied on this node");
    }
    memory.applied.remove(&record.uid);
    memory.failed.insert(
        record.uid.clone(),
        Failure {
            key,
            reason: *reason,
            message: message.clone(),
            attempts,
            retry_at: Instant::now() + BUNDLE_RETRY.delay(attempts, env.seed, None),
        },
    );
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
        if let Err(e) = env.host.remove_files(old).await {
            tracing::warn!(bundle = %record.id(), directory = %dir.display(), error = %e, "cannot remove files from the old directory yet");
            left.moved_from.push(dir.clone());
        }
    }
    match env.host.save_record(left.clone()).await {
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

/// Writes a pass's report when it differs from what the report holds or another agent
/// process wrote it, and after every full pass. The error (the API's reason) is logged.
pub async fn report_pass(
    env: &Env<'_>,
    memory: &mut Memory,
    spec: NodeReportSpec,
    full: bool,
) -> Result<(), String> {
    let instance = env.reporter.instance.as_str();
    let written = publish(env, memory, |known| {
        let stale = known.spec != spec || known.instance.as_deref() != Some(instance);
        (full || stale).then_some(spec)
    })
    .await;
    if let Err(e) = &written {
        tracing::warn!(error = %e, "cannot write the NodeReport");
    }
    written
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
pub(super) fn changing(record: &Record, reason: NodeReason, message: String) -> BundleReport {
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

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
