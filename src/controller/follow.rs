//! What a replica that does not lead does: keep its store holding every revision an
//! ArtifactSource status names ([`fill`](super::fill)), so the Service may send agents to
//! any ready replica, and drop the revisions no status names any more.
//!
//! Readiness: ready once one full pass has tried every revision status names. A revision
//! that cannot be copied (its registry lost it, the leader is gone too) is counted in
//! `ocisync_store_missing_revisions` and retried with backoff, but does not take readiness
//! away: one tenant's broken source must not take the artifact server from every other.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use super::fill::{self, Filler};
use super::lease::Election;
use super::{Options, Shared};
use crate::api::ArtifactSource;
use crate::digest::Digest;

/// How often the store is compared with status when no event comes.
const PASS_PERIOD: Duration = Duration::from_secs(10);
/// Watch events and artifact server misses start a pass at the next tick: at most one a
/// tick however many come (anyone may ask the server for digests that do not exist).
const TICK: Duration = Duration::from_secs(1);
/// Passes between two garbage collections of the follower's store.
const GC_EVERY: u64 = 60;
/// Backoff of a revision that could not be copied: from this, doubling, up to five minutes.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Revisions copied at once.
const FILLS_AT_ONCE: usize = 4;

/// Follows until dropped (this replica took the Lease) or for ever.
pub async fn follow(client: Client, options: &Options, shared: &Shared, election: &Election) {
    let api: Api<ArtifactSource> = match options.namespace.as_deref() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let mut events = watcher(api, watcher::Config::default().any_semantic())
        .backoff(crate::backoff::controller_watch())
        .reflect(writer)
        .touched_objects()
        .boxed();
    shared.view.set(reader.clone());
    let Ok(http) = crate::agent::fetch::client(Duration::from_secs(30)) else {
        tracing::error!("no HTTP client for the leader's artifact server");
        return std::future::pending().await;
    };
    let filler = Filler {
        client: client.clone(),
        store: shared.store.clone(),
        metrics: shared.metrics.clone(),
        http,
        leases: Api::namespaced(client, &election.namespace),
        lease_name: election.name.clone(),
        me: election.identity.clone(),
        registry_timeout: options.registry_timeout,
    };
    let mut known = Known::default();
    let mut tick = tokio::time::interval(TICK);
    let mut dirty = true;
    let mut last_pass: Option<Instant> = None;
    loop {
        tokio::select! {
            e = events.next() => match e {
                Some(_) => dirty = true,
                None => return std::future::pending().await,
            },
            _ = shared.misses.notify.notified() => dirty = true,
            _ = tick.tick() => {
                let due = last_pass.is_none_or(|t| t.elapsed() >= PASS_PERIOD);
                if !(dirty || due) {
                    continue;
                }
                // not awaited: the watch progresses only while this loop polls `events`
                let listed = tokio::time::timeout(Duration::ZERO, reader.wait_until_ready()).await;
                if !matches!(listed, Ok(Ok(()))) {
                    continue;
                }
                (dirty, last_pass) = (false, Some(Instant::now()));
                let sources = reader.state();
                let missing = pass(&filler, &sources, &mut known).await;
                shared.metrics.set_missing_revisions(missing);
                shared.set_ready(true);
                known.passes += 1;
                if known.passes.is_multiple_of(GC_EVERY) {
                    collect_garbage(&filler, &sources, &mut known).await;
                }
            }
        }
    }
}

/// What a follower remembers between passes.
#[derive(Default)]
struct Known {
    /// Store keys found in the store (a follower's store loses only what its own GC drops).
    present: HashSet<Digest>,
    backoff: Backoff,
    passes: u64,
}

/// One pass: copies in what status names and the store lacks (those not backing off);
/// returns how many revisions are still missing.
async fn pass(filler: &Filler, sources: &[Arc<ArtifactSource>], known: &mut Known) -> u64 {
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    for s in sources {
        let Some(w) = fill::wanted(s) else { continue };
        if !seen.insert(w.key.clone()) || known.present.contains(&w.key) {
            continue;
        }
        if has(filler, &w.key).await {
            known.present.insert(w.key);
        } else {
            missing.push(w);
        }
    }
    let total = missing.len() as u64;
    let due: Vec<_> = missing
        .into_iter()
        .filter(|w| known.backoff.due(&w.key))
        .collect();
    let results: Vec<_> = futures_util::stream::iter(due)
        .map(|w| async move {
            let size = u64::try_from(w.artifact.size).unwrap_or(u64::MAX);
            let limit = fill::deadline(size);
            let r = match tokio::time::timeout(limit, filler.fill(&w)).await {
                Ok(r) => r,
                Err(_) => Err(format!("not copied within {limit:?}")),
            };
            (w.key, r)
        })
        .buffer_unordered(FILLS_AT_ONCE)
        .collect()
        .await;
    let mut filled = 0u64;
    for (key, result) in results {
        match result {
            Ok(from) => {
                tracing::info!(%key, from, "revision copied into this replica's store");
                filler.metrics.store_fill(from, "ok");
                known.backoff.forget(&key);
                known.present.insert(key);
                filled += 1;
            }
            Err(e) => {
                filler.metrics.store_fill("registry", "failed");
                tracing::warn!(%key, error = %e, "cannot copy a revision status names into this replica's store");
                known.backoff.failed(&key);
            }
        }
    }
    known.backoff.keep_only(&seen);
    total - filled
}

async fn has(filler: &Filler, key: &Digest) -> bool {
    let (store, key) = (filler.store.clone(), key.clone());
    tokio::task::spawn_blocking(move || store.has(&key))
        .await
        .unwrap_or(false)
}

/// Removes from this replica's store what no status names (the leader keeps previous
/// revisions too; a follower serves what status references).
async fn collect_garbage(filler: &Filler, sources: &[Arc<ArtifactSource>], known: &mut Known) {
    let keep: HashSet<Digest> = sources
        .iter()
        .filter_map(|s| s.status.as_ref()?.artifact.as_ref())
        .filter_map(super::context::stored_key)
        .collect();
    known.present.retain(|k| keep.contains(k));
    let store = filler.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let report = store.gc(&keep);
        (report, store.usage())
    })
    .await;
    if let Ok((Ok(_), usage)) = result {
        filler.metrics.set_store(&usage);
    }
}

/// Per revision that failed to copy: when to try again.
#[derive(Default)]
struct Backoff(HashMap<Digest, (Instant, Duration)>);

impl Backoff {
    fn due(&self, key: &Digest) -> bool {
        self.0
            .get(key)
            .is_none_or(|(at, wait)| at.elapsed() >= *wait)
    }

    fn failed(&mut self, key: &Digest) {
        let wait = self
            .0
            .get(key)
            .map_or(RETRY_FIRST, |(_, w)| w.saturating_mul(2).min(RETRY_MAX));
        self.0.insert(key.clone(), (Instant::now(), wait));
    }

    fn forget(&mut self, key: &Digest) {
        self.0.remove(key);
    }

    fn keep_only(&mut self, named: &HashSet<Digest>) {
        self.0.retain(|k, _| named.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_that_failed_waits_longer_each_time_up_to_five_minutes() {
        let key = Digest::parse(&format!("sha256:{}", "b".repeat(64))).expect("digest");
        let mut b = Backoff::default();
        assert!(b.due(&key));
        b.failed(&key);
        assert!(!b.due(&key));
        for _ in 0..20 {
            b.failed(&key);
        }
        assert_eq!(b.0.get(&key).map(|(_, w)| *w), Some(RETRY_MAX));
        b.keep_only(&HashSet::new());
        assert!(b.due(&key));
    }
}
