//! Writing one bundle's revision into its open directory: the disk work (hashing, copying,
//! fsync, rename) runs on blocking threads, the fetches and the report write on the async
//! runtime.

use std::fs::File;

use super::disk::{Staging, Target, WantedFile};
use super::host::{Failed, on_disk};
use super::sync::{Env, Memory, Wanted, before_swap, changing};
use super::{budget, fetch};
use crate::api::reason::NodeReason;

/// A revision staged, with the new files still to fetch into.
struct Staged {
    target: Target,
    staging: Staging,
    fetch: Vec<(WantedFile, File)>,
}

/// Verifies the bundle's directory and, when it differs, writes the revision.
pub(super) async fn write(
    env: &Env<'_>,
    memory: &mut Memory,
    target: Target,
    wanted: &Wanted<'_>,
) -> Result<(), Failed> {
    let (record, revision) = (wanted.record, wanted.revision);
    let files = wanted.files.to_vec();
    let min_free = env.budget.min_free_bytes;
    let (rev, wanted_files) = (revision.to_string(), files.clone());
    let prepared = on_disk(move || prepare(target, &rev, &wanted_files, min_free)).await??;
    // None: the revision is on disk already (leftovers of an interrupted write tidied)
    let Some(Staged {
        target,
        staging,
        fetch,
    }) = prepared
    else {
        return Ok(());
    };
    let fetched = async {
        for (f, out) in fetch {
            fetch::fetch(env.http, env.controller_url, &f, out)
                .await
                .map_err(|e| (e.reason(), e.to_string()))?;
        }
        let applying = changing(
            record,
            NodeReason::Applying,
            format!("writing revision {revision}"),
        );
        before_swap(env, memory, &record.uid, Some(revision), Some(applying))
            .await
            .map_err(|e| {
                let m = format!("cannot mark the NodeReport Applying before the write: {e}");
                (NodeReason::ReportFailed, m)
            })
    }
    .await;
    if let Err(e) = fetched {
        // the staged revision is removed on a blocking thread too
        on_disk(move || drop(staging)).await?;
        return Err(e);
    }
    let rev = revision.to_string();
    on_disk(move || target.commit(staging, &rev, &files))
        .await?
        .map_err(|e| (e.reason(), e.to_string()))?;
    tracing::info!(bundle = %record.id(), revision, directory = %record.directory.display(), files = wanted.files.len(), "applied");
    Ok(())
}

/// The disk side before any fetch: verify (and tidy; `None` when the revision is there), or
/// check space, stage, and copy the files the current revision already has.
fn prepare(
    target: Target,
    revision: &str,
    files: &[WantedFile],
    min_free: u64,
) -> Result<Option<Staged>, Failed> {
    let failed = |e: super::disk::DiskError| (e.reason(), e.to_string());
    let verified = target.verify(revision, files);
    // killed mid-write: clear the leftovers
    target.tidy().map_err(failed)?;
    if verified {
        return Ok(None);
    }
    check_space(&target, files, min_free)?;
    let staging = target.stage().map_err(failed)?;
    let mut fetch = Vec::new();
    for f in files {
        if !target.reuse(&staging, f) {
            let out = staging
                .create(&f.key)
                .map_err(|e| (NodeReason::WriteFailed, format!("{}: {e}", f.key)))?;
            fetch.push((f.clone(), out));
        }
    }
    Ok(Some(Staged {
        target,
        staging,
        fetch,
    }))
}

/// The directory's filesystem must keep `--min-free-bytes` free after the revision is
/// staged (a full copy: reused files are copied too; counted in whole blocks).
fn check_space(target: &Target, files: &[WantedFile], min_free: u64) -> Result<(), Failed> {
    let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
    let needed = budget::total(&sizes).unwrap_or(u64::MAX);
    let free = target
        .available_bytes()
        .map_err(|e| (NodeReason::WriteFailed, format!("free space: {e}")))?;
    if needed.saturating_add(min_free) > free {
        return Err((
            NodeReason::InsufficientSpace,
            format!(
                "the revision needs {needed} bytes and {min_free} must stay free; {free} bytes are free"
            ),
        ));
    }
    Ok(())
}
