//! What every reconcile shares: clients, the content store, metrics, events, and the small
//! in-memory state the API objects do not hold (failure counts, the previous revision).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, ObjectReference, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use super::events::Recorder;
use super::source_users::SourceUsers;
use crate::api::artifact_source::{Artifact, Verification};
use crate::api::reason::{BundleReason, Class, Problem};
use crate::api::rule_bundle::NodeFilesTarget;
use crate::api::{ArtifactSource, FIELD_MANAGER, NodeReport, RuleBundle};
use crate::bundle::nodes::{self, Rollout};
use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::store::Store;

/// Per-source memory, keyed by uid.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub failures: u32,
    /// The class of the last failed check's reason.
    pub failure_class: Option<Class>,
    pub retry_after: Option<Duration>,
    pub last_check: Option<Instant>,
    /// The generation the last check was for (the cached object's status may lag behind).
    pub checked_generation: Option<i64>,
    /// The `requested-at` value the last check was for (the cached object's status may lag
    /// behind: a check's own progress patch wakes the source again before its result is seen).
    pub checked_request: Option<String>,
    /// A referenced Secret changed since the last check.
    pub secret_changed: bool,
    /// The last check stopped because another source was pulling the same revision: the
    /// next one is due at once, not after the interval.
    pub pull_busy: bool,
    /// The revision being served and the one before it (kept for rollback by GC), by
    /// store key ([`stored_key`]).
    pub current: Option<Digest>,
    pub previous: Option<Digest>,
    /// The revision this source last proved it can fetch itself (a verified GET of the
    /// manifest by digest, from its own registry and repository, with its own credentials).
    pub proven: Option<ProvenRevision>,
    /// The status revision last found in this replica's store (its store key).
    pub present: Option<Digest>,
}

/// A manifest digest as served by one repository of one registry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProvenRevision {
    pub registry: String,
    pub repository: String,
    pub digest: Digest,
}

pub struct Context {
    pub client: Client,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// `http://host:port` agents use to reach the artifact server.
    pub base_url: String,
    /// The longest a check's registry work may take as a whole, whatever a source asks.
    pub registry_timeout: Duration,
    pub sources: reflector::Store<ArtifactSource>,
    pub bundles: reflector::Store<RuleBundle>,
    /// Which bundles use which source (from the bundles' watch).
    pub source_users: Arc<SourceUsers>,
    /// The ConfigMaps ocisync manages (metadata only, by label).
    pub config_maps: reflector::Store<PartialObjectMeta<ConfigMap>>,
    /// Nodes by metadata, and the agents' reports (for `RuleBundle.status.nodes`).
    pub nodes: reflector::Store<PartialObjectMeta<Node>>,
    pub reports: reflector::Store<NodeReport>,
    /// What reconciles remember between runs; private, behind the methods below.
    pub state: State,
}

/// The controller's memory that the API objects do not hold. Each map is behind its own
/// lock, reached only through [`Context`]'s methods; [`Context::prune`] forgets what
/// belongs to objects that are gone.
pub struct State {
    /// Per bundle uid: the ConfigMap resourceVersion this controller last wrote, so an edit
    /// by anyone else is put back.
    written: Mutex<HashMap<String, String>>,
    memory: Mutex<HashMap<String, Memory>>,
    /// Stored artifacts by store key (manifest digest and selection, see
    /// [`revision_key`](crate::store::revision_key)), so sources sharing a revision reuse
    /// one pull of its blobs; a source reuses one only after proving it can fetch the
    /// manifest itself ([`Memory::proven`]).
    artifacts: Mutex<HashMap<Digest, Artifact>>,
    /// One lock per store key being pulled.
    pull_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Per object uid: reconciles in a row that ended with an API error, and bundle
    /// reconciles in a row that ended with a problem (each drives its backoff).
    api_failures: Mutex<HashMap<String, u32>>,
    bundle_failures: Mutex<HashMap<String, u32>>,
    /// Per bundle uid: the content check that failed for a generation and plan revision.
    /// Files are named by digest, so the same check fails the same way: it is not run
    /// again (every wake-up of a bad bundle would parse its files anew).
    failed_checks: Mutex<HashMap<String, (CheckedPlan, Problem<BundleReason>)>>,
    /// Content checks running at once (each holds a file of up to 8 MiB and its parse).
    checks: tokio::sync::Semaphore,
    /// Signature checks that passed, by (manifest digest, policy fingerprint): a revision
    /// is verified once per policy, not at every check of its tag.
    verified: Mutex<HashMap<(Digest, Digest), Verification>>,
    /// The `engine_version_semver` requirements of a revision's config, by manifest digest
    /// and platform selection: read once (from bytes checked against the digest) for a
    /// semver source's version pick.
    requirements: Mutex<HashMap<RequirementKey, Vec<String>>>,
    /// Per bundle uid: when its nodes' rollout was last counted (see
    /// [`Context::count_rollout`]).
    rollouts: Mutex<HashMap<String, Instant>>,
    /// Per bundle uid: the resourceVersion before this controller's last status write
    /// that moved it, and when (see [`Context::behind_own_write`]).
    status_writes: Mutex<HashMap<String, (String, Instant)>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            written: Mutex::default(),
            memory: Mutex::default(),
            artifacts: Mutex::default(),
            pull_locks: Mutex::default(),
            api_failures: Mutex::default(),
            bundle_failures: Mutex::default(),
            failed_checks: Mutex::default(),
            checks: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
            verified: Mutex::default(),
            requirements: Mutex::default(),
            rollouts: Mutex::default(),
            status_writes: Mutex::default(),
        }
    }
}

/// A revision whose requirements are remembered: its manifest digest and the platform
/// selection (`spec.platform`) that picks from an index.
pub type RequirementKey = (Digest, Option<String>);

/// Most remembered verifications (each a few hundred bytes).
pub const MAX_VERIFIED: usize = 4096;

/// The least time between two counts of a bundle's rollout over its nodes while nothing
/// but the nodes' reports changed: with 5,000 agents reporting one after another, the count
/// (a pass over every node) and the status write happen at most once a second, not once
/// per report.
pub const ROLLOUT_EVERY: Duration = Duration::from_secs(1);

/// The longest a bundle reconcile waits for the cache to hold this controller's own last
/// status write (see [`Context::behind_own_write`]).
pub const OWN_WRITE_WAIT: Duration = Duration::from_secs(30);

/// How many content checks run at once, whatever `--concurrency`: their memory adds up.
pub const CONCURRENT_CHECKS: usize = 2;

impl Context {
    /// A copy of a source's memory.
    pub fn memory_of(&self, uid: &str) -> Memory {
        self.state
            .memory
            .lock()
            .ok()
            .and_then(|m| m.get(uid).cloned())
            .unwrap_or_default()
    }

    /// Updates a source's memory.
    pub fn remember(&self, uid: &str, f: impl FnOnce(&mut Memory)) {
        if let Ok(mut m) = self.state.memory.lock() {
            f(m.entry(uid.to_string()).or_default());
        }
    }

    /// The ConfigMap resourceVersion this controller last wrote for the bundle `uid`.
    pub fn written_version(&self, uid: &str) -> Option<String> {
        self.state.written.lock().ok()?.get(uid).cloned()
    }

    pub fn remember_written(&self, uid: &str, resource_version: String) {
        if let Ok(mut w) = self.state.written.lock() {
            w.insert(uid.to_string(), resource_version);
        }
    }

    /// Counts one more reconcile of `uid` that ended with an API error; returns the count.
    pub fn api_failed(&self, uid: &str) -> u32 {
        bump(&self.state.api_failures, uid)
    }

    /// Counts one more bundle reconcile of `uid` that ended with a problem; returns the
    /// count.
    pub fn bundle_failed(&self, uid: &str) -> u32 {
        bump(&self.state.bundle_failures, uid)
    }

    /// A reconcile of `uid` went through without an API error: its API errors in a row end.
    pub fn api_succeeded(&self, uid: &str) {
        clear(&self.state.api_failures, uid);
    }

    /// A bundle reconcile of `uid` ended without a problem: its problems in a row end.
    pub fn bundle_succeeded(&self, uid: &str) {
        clear(&self.state.bundle_failures, uid);
    }

    /// The problem the content check of this bundle's `plan` found, if it ran and failed.
    pub fn failed_check(&self, uid: &str, plan: &CheckedPlan) -> Option<Problem<BundleReason>> {
        let checks = self.state.failed_checks.lock().ok()?;
        checks
            .get(uid)
            .filter(|(checked, _)| checked == plan)
            .map(|(_, problem)| problem.clone())
    }

    /// Remembers a content check's failure when it can only fail the same way again (the
    /// files' content or size), and forgets an earlier one otherwise.
    pub fn remember_check(
        &self,
        uid: &str,
        plan: CheckedPlan,
        problem: Option<&Problem<BundleReason>>,
    ) {
        let Ok(mut checks) = self.state.failed_checks.lock() else {
            return;
        };
        match problem {
            Some(p) if is_final(p.reason) => {
                checks.insert(uid.to_string(), (plan, p.clone()));
            }
            _ => {
                checks.remove(uid);
            }
        }
    }

    /// A permit to run one content check (at most [`CONCURRENT_CHECKS`] at once).
    pub async fn check_permit(
        &self,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, tokio::sync::AcquireError> {
        self.state.checks.acquire().await
    }

    /// The lock that serialises pulls of one store key.
    pub fn pull_lock(&self, key: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        match self.state.pull_locks.lock() {
            Ok(mut locks) => locks.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// A revision this controller stored before under `key` (its files, kind and config).
    pub fn known_artifact(&self, key: &Digest) -> Option<Artifact> {
        self.state.artifacts.lock().ok()?.get(key).cloned()
    }

    pub fn remember_artifact(&self, key: &Digest, artifact: &Artifact) {
        if let Ok(mut a) = self.state.artifacts.lock() {
            a.insert(key.clone(), artifact.clone());
        }
    }

    /// The verification of `digest` under the policy `fingerprint`, if it passed before.
    pub fn verified(&self, digest: &Digest, fingerprint: &Digest) -> Option<Verification> {
        let key = (digest.clone(), fingerprint.clone());
        self.state.verified.lock().ok()?.get(&key).cloned()
    }

    /// Remembers a passed verification (at most [`MAX_VERIFIED`]; the oldest are not
    /// tracked, so when full the map starts again: a forgotten one costs one more check).
    pub fn remember_verified(&self, digest: &Digest, fingerprint: &Digest, v: &Verification) {
        if let Ok(mut m) = self.state.verified.lock() {
            if m.len() >= MAX_VERIFIED {
                m.clear();
            }
            m.insert((digest.clone(), fingerprint.clone()), v.clone());
        }
    }

    /// The engine requirements remembered for a revision, if read before.
    pub fn engine_requirements(&self, key: &RequirementKey) -> Option<Vec<String>> {
        self.state.requirements.lock().ok()?.get(key).cloned()
    }

    /// Remembers a revision's engine requirements (at most [`MAX_VERIFIED`], then the map
    /// starts again, as [`Context::remember_verified`]).
    pub fn remember_engine_requirements(&self, key: &RequirementKey, requirements: Vec<String>) {
        if let Ok(mut m) = self.state.requirements.lock() {
            if m.len() >= MAX_VERIFIED {
                m.clear();
            }
            m.insert(key.clone(), requirements);
        }
    }

    /// The sources a changed Secret affects; marks them so their next reconcile checks.
    pub fn sources_using(
        &self,
        secret: &PartialObjectMeta<Secret>,
    ) -> Vec<ObjectRef<ArtifactSource>> {
        let name = secret.name_any();
        let namespace = secret.namespace();
        let hits: Vec<Arc<ArtifactSource>> = self
            .sources
            .state()
            .into_iter()
            .filter(|s| s.namespace() == namespace)
            .filter(|s| {
                let verify = s.spec.verify.as_ref().and_then(|v| v.secret_ref.as_ref());
                [
                    s.spec.secret_ref.as_ref(),
                    s.spec.cert_secret_ref.as_ref(),
                    verify,
                ]
                .into_iter()
                .flatten()
                .any(|r| r.name == name)
            })
            .collect();
        for s in &hits {
            if let Some(uid) = s.uid() {
                self.remember(&uid, |m| m.secret_changed = true);
            }
        }
        hits.iter()
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect()
    }

    /// The bundles that take files from a source.
    pub fn bundles_using(&self, source: &ArtifactSource) -> Vec<ObjectRef<RuleBundle>> {
        let namespace = source.namespace().unwrap_or_default();
        self.source_users.of(&namespace, &source.name_any())
    }

    /// The bundles a node's report speaks of.
    pub fn bundles_in_report(&self, report: &NodeReport) -> Vec<ObjectRef<RuleBundle>> {
        report
            .spec
            .bundles
            .iter()
            .map(|b| ObjectRef::new(&b.name).within(&b.namespace))
            .collect()
    }

    /// Remembers that this controller's status write moved the bundle `uid` from the
    /// resourceVersion `before` to `after`. A write that changed nothing (the same
    /// resourceVersion: another field manager keeps a field this one leaves out) brings no
    /// watch event, and is not remembered.
    pub fn remember_status_write(&self, uid: &str, before: Option<String>, after: Option<String>) {
        let Ok(mut w) = self.state.status_writes.lock() else {
            return;
        };
        match (before, after) {
            (Some(before), Some(after)) if before != after => {
                w.insert(uid.to_string(), (before, Instant::now()));
            }
            _ => {
                w.remove(uid);
            }
        }
    }

    /// Whether the cache still holds the bundle `uid` as it was before this controller's
    /// last status write (at `resource_version`), within [`OWN_WRITE_WAIT`] of it: a
    /// reconcile woken by the ConfigMap it just wrote would see its old status and do the
    /// work again (a second ConfigMap write, Event and status write). The write's own watch
    /// event wakes it once the cache has it; past the wait, the reconcile runs anyway.
    pub fn behind_own_write(&self, uid: &str, resource_version: Option<&str>) -> bool {
        let Ok(mut w) = self.state.status_writes.lock() else {
            return false;
        };
        let behind = w.get(uid).is_some_and(|(before, at)| {
            Some(before.as_str()) == resource_version && at.elapsed() < OWN_WRITE_WAIT
        });
        if !behind {
            w.remove(uid);
        }
        behind
    }

    /// Whether the rollout of the bundle `uid` is counted now: always when the bundle moved
    /// (`moved`: a new generation or revision), else at most once per [`ROLLOUT_EVERY`];
    /// `Err` holds how long until the next count.
    pub fn count_rollout(&self, uid: &str, moved: bool) -> Result<(), Duration> {
        let Ok(mut counted) = self.state.rollouts.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let since = counted
            .get(uid)
            .map(|at| now.saturating_duration_since(*at));
        match since {
            Some(since) if !moved && since < ROLLOUT_EVERY => Err(ROLLOUT_EVERY - since),
            _ => {
                counted.insert(uid.to_string(), now);
                Ok(())
            }
        }
    }

    /// The rollout of `revision` of the bundle `uid` at `generation` over the nodes `target`
    /// selects.
    pub fn rollout(
        &self,
        target: &NodeFilesTarget,
        uid: &str,
        generation: Option<i64>,
        revision: &str,
    ) -> Rollout {
        let nodes = self.nodes.state();
        let named = nodes
            .iter()
            .filter_map(|n| Some((n.meta().name.as_deref()?, n.labels())));
        let report_of = |name: &str| self.reports.get(&ObjectRef::new(name));
        nodes::rollout(target, uid, generation, Some(revision), named, report_of)
    }

    /// Records an Event on an object; a failure to record is logged, never fatal.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
        action: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.to_string()), // cut to what the API server takes by the recorder
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, object).await {
            tracing::debug!(error = %crate::errors::api_error_summary(&e), "event not recorded");
        }
    }

    /// The store keys of every revision some source still needs: each status's, each
    /// remembered current and previous revision of sources that still exist, and each
    /// being pulled (held locks). Changes nothing; see [`Context::prune`].
    pub fn revisions_in_use(&self) -> HashSet<Digest> {
        let sources = self.sources.state();
        let live: HashSet<String> = sources.iter().filter_map(|s| s.uid()).collect();
        let mut keep: HashSet<Digest> = sources
            .iter()
            .filter_map(|s| stored_key(s.status.as_ref()?.artifact.as_ref()?))
            .collect();
        if let Ok(memory) = self.state.memory.lock() {
            for (_, m) in memory.iter().filter(|(uid, _)| live.contains(*uid)) {
                keep.extend(m.current.iter().cloned());
                keep.extend(m.previous.iter().cloned());
            }
        }
        if let Ok(locks) = self.state.pull_locks.lock() {
            // a revision being pulled or just stored, not yet in any status
            keep.extend(
                locks
                    .iter()
                    .filter(|(_, lock)| Arc::strong_count(lock) > 1)
                    .map(|(key, _)| key.clone()),
            );
        }
        keep
    }

    /// Forgets what belongs to objects that are gone and revisions not in `keep`: the
    /// memory and failure counts of deleted sources (and of deleted bundles when
    /// `bundles_known`: the bundle cache holds every bundle), idle pull locks and known
    /// artifacts of revisions no longer kept.
    pub fn prune(&self, keep: &HashSet<Digest>, bundles_known: bool) {
        let sources: HashSet<String> = self
            .sources
            .state()
            .iter()
            .filter_map(|s| s.uid())
            .collect();
        let bundles: HashSet<String> = self
            .bundles
            .state()
            .iter()
            .filter_map(|b| b.uid())
            .collect();
        let bundle = |uid: &String| !bundles_known || bundles.contains(uid);
        if let Ok(mut m) = self.state.memory.lock() {
            m.retain(|uid, _| sources.contains(uid));
        }
        if let Ok(mut w) = self.state.written.lock() {
            w.retain(|uid, _| bundle(uid));
        }
        if let Ok(mut f) = self.state.failed_checks.lock() {
            f.retain(|uid, _| bundle(uid));
        }
        if let Ok(mut r) = self.state.rollouts.lock() {
            r.retain(|uid, _| bundle(uid));
        }
        if let Ok(mut w) = self.state.status_writes.lock() {
            w.retain(|uid, _| bundle(uid));
        }
        for counts in [&self.state.api_failures, &self.state.bundle_failures] {
            if let Ok(mut c) = counts.lock() {
                c.retain(|uid, _| sources.contains(uid) || bundle(uid));
            }
        }
        if let Ok(mut l) = self.state.pull_locks.lock() {
            l.retain(|key, lock| Arc::strong_count(lock) > 1 || keep.contains(key));
        }
        if let Ok(mut a) = self.state.artifacts.lock() {
            a.retain(|key, _| keep.contains(key));
        }
    }
}

/// A bundle's generation (its targets) and plan revision (its files, by digest): what a
/// content check's outcome depends on.
pub type CheckedPlan = (Option<i64>, String);

/// Whether a content check that failed with `reason` fails the same way for the same plan
/// (a file missing from the store may be there next time).
fn is_final(reason: BundleReason) -> bool {
    matches!(
        reason,
        BundleReason::InvalidContent | BundleReason::TooLargeForConfigMap
    )
}

fn clear(counts: &Mutex<HashMap<String, u32>>, uid: &str) {
    if let Ok(mut c) = counts.lock() {
        c.remove(uid);
    }
}

/// Adds one to `uid`'s count; returns the new count.
fn bump(counts: &Mutex<HashMap<String, u32>>, uid: &str) -> u32 {
    match counts.lock() {
        Ok(mut c) => {
            let n = c.entry(uid.to_string()).or_default();
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    }
}

/// The store key of a status artifact: the one its URL names (`.../revisions/sha256/<hex>`),
/// else its manifest digest (the key of every layer, which is what a status without a
/// URL was stored under).
/// `None` when neither is a digest (a status someone else wrote).
pub fn stored_key(artifact: &Artifact) -> Option<Digest> {
    artifact
        .url
        .as_deref()
        .and_then(|url| url.rsplit_once("/revisions/sha256/"))
        .and_then(|(_, hex)| Digest::from_hex(hex).ok())
        .or_else(|| Digest::parse(&artifact.digest).ok())
}

/// Writes an object's status with server-side apply under ocisync's field manager; returns
/// the object's new resourceVersion.
pub async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<Option<String>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(Error::Kube)?;
    Ok(written.meta().resource_version.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_that_changed_nothing_does_not_hold_the_bundle_back() {
        let (client, _api) = crate::mock_api::pair();
        let (_root, ctx) = super::super::mock_tests::bare_context(client);
        // a write that moved the object: the cache at the old version is behind
        ctx.remember_status_write("u", Some("1".into()), Some("2".into()));
        assert!(ctx.behind_own_write("u", Some("1")));
        assert!(!ctx.behind_own_write("u", Some("2")));
        // once caught up, the old version no longer counts (the entry is gone)
        assert!(!ctx.behind_own_write("u", Some("1")));
        // a write the API server found unchanged brings no event: never behind
        ctx.remember_status_write("u", Some("2".into()), Some("2".into()));
        assert!(!ctx.behind_own_write("u", Some("2")));
        ctx.remember_status_write("u", Some("2".into()), None);
        assert!(!ctx.behind_own_write("u", Some("2")));
    }

    #[test]
    fn a_status_names_its_store_key_in_its_url() {
        let digest = Some(Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap());
        let key = Some(Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap());
        let artifact = |url: Option<String>| Artifact {
            digest: format!("sha256:{}", "a".repeat(64)),
            url,
            ..Default::default()
        };
        let served = |hex: &str| Some(format!("http://ocisync.system:9090/revisions/sha256/{hex}"));
        assert_eq!(stored_key(&artifact(served(&"b".repeat(64)))), key);
        // a URL from before selections were keyed names the manifest digest
        assert_eq!(stored_key(&artifact(served(&"a".repeat(64)))), digest);
        // no URL, or one that names no key: the manifest digest
        for url in [
            None,
            Some("http://x/".into()),
            served("B".repeat(64).as_str()),
            served(&format!("{}/x", "b".repeat(64))),
            served("b"),
        ] {
            assert_eq!(stored_key(&artifact(url.clone())), digest, "{url:?}");
        }
        // a status naming no digest at all names nothing stored
        let broken = Artifact {
            digest: "sha256:a".into(),
            ..Default::default()
        };
        assert_eq!(stored_key(&broken), None);
    }
}
