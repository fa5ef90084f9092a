//! Reconciling one ArtifactSource: validate, decide whether a check is due, resolve (one
//! HEAD), pull a new revision into the store, and record the outcome in status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::api::ArtifactSource;
use crate::api::artifact_source::{Artifact, ArtifactFile, ArtifactSourceStatus, Verification};
use crate::api::condition::is_news;
use crate::api::reason::{Class, Problem, SourceReason};
use crate::digest::Digest;
use crate::errors::api_error_summary;
use crate::oci::OciError;
use crate::oci::pull::{self, Deadline, PullOptions, Pulled};
use crate::oci::reference::{RefSelector, Repository};
use crate::oci::registry::{RawManifest, Registry, RegistryOptions};
use crate::store::{IndexFile, QuotaExceeded, RevisionIndex, Selection, revision_key};

use super::context::{Context, Memory, ProvenRevision, patch_status, stored_key};
use super::outcome;
use super::schedule::{self, CheckState, Due};
use super::secrets;
use super::spec::{self, ValidSpec};
use super::status;
use super::verification::{self, SourcePolicy};
use super::{Error, now_rfc3339, since};

/// The annotation that forces a check when its value changes.
pub const REQUESTED_AT: &str = "ocisync.dev/requested-at";

/// A failed check: its reason, message and the registry's `Retry-After`.
type Failure = Problem<SourceReason>;

impl From<OciError> for Failure {
    fn from(e: OciError) -> Self {
        Failure {
            reason: e.reason(),
            message: e.to_string(),
            retry_after: e.retry_after(),
        }
    }
}

impl From<QuotaExceeded> for Failure {
    fn from(e: QuotaExceeded) -> Self {
        Failure::new(e.reason(), e.to_string())
    }
}

/// A check that stopped because another source holds the pull of the same revision is
/// tried again this soon (no status reason: nothing failed).
const PULL_BUSY_RETRY: Duration = Duration::from_secs(2);
const PULL_BUSY_WAIT: Duration = Duration::from_secs(2);

/// What a check that did not fail found.
enum Checked {
    /// The revision is stored; the note says why it is not the highest version (a semver
    /// source picked one its bundles' Falco can run).
    Stored(Box<Artifact>, Option<String>),
    /// Another source is pulling this revision: try again in [`PULL_BUSY_RETRY`].
    PullBusy,
}

pub async fn reconcile(source: Arc<ArtifactSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&source, &ctx).await;
    let (label, reason) = match &result {
        Ok(Outcome::Checked { reason, .. }) => (reason.class().metric_label(), reason.as_str()),
        Ok(Outcome::Stalled) => (Class::Stalled.metric_label(), "InvalidSpec"),
        Ok(Outcome::Waiting(_)) | Ok(Outcome::Suspended) => ("skipped", ""),
        Err(e) => (e.metric_label(), e.reason()),
    };
    let seconds = started.elapsed().as_secs_f64();
    ctx.metrics
        .reconcile("ArtifactSource", label, reason, seconds);
    let outcome = result?;
    ctx.api_succeeded(&source.uid().unwrap_or_default());
    match outcome {
        Outcome::Checked { next, .. } | Outcome::Waiting(next) => Ok(Action::requeue(next)),
        Outcome::Stalled | Outcome::Suspended => Ok(Action::await_change()),
    }
}

enum Outcome {
    /// A check ran and ended with `reason`; the next one is due after `next` (a spec change
    /// or a request checks at once).
    Checked {
        reason: SourceReason,
        next: Duration,
    },
    /// No check was due (or another source was pulling the revision); look again then.
    Waiting(Duration),
    Stalled,
    Suspended,
}

/// What one reconcile of a source works with.
struct Reconcile<'a> {
    source: &'a ArtifactSource,
    ctx: &'a Context,
    api: Api<ArtifactSource>,
    uid: String,
    prev: ArtifactSourceStatus,
    generation: Option<i64>,
    now: String,
    requested_at: Option<String>,
    seed: u64,
}

async fn reconcile_inner(source: &ArtifactSource, ctx: &Context) -> Result<Outcome, Error> {
    if source.spec.suspend {
        return Ok(Outcome::Suspended);
    }
    let namespace = source.namespace().unwrap_or_default();
    let uid = source.uid().unwrap_or_default();
    let r = Reconcile {
        source,
        ctx,
        api: Api::namespaced(ctx.client.clone(), &namespace),
        seed: schedule::seed_of(&uid),
        uid,
        prev: source.status.clone().unwrap_or_default(),
        generation: source.meta().generation,
        now: now_rfc3339(),
        requested_at: source.annotations().get(REQUESTED_AT).cloned(),
    };
    let valid = match spec::validate(&source.spec) {
        Ok(v) => v,
        Err(message) => return r.stall(&message).await,
    };
    let memory = ctx.memory_of(&r.uid);
    let state = r.check_state(&memory, &valid).await;
    if let Due::In(left) = schedule::due(&state, valid.interval, r.seed) {
        return Ok(Outcome::Waiting(left));
    }
    let credentials_may_differ = state.spec_changed || memory.secret_changed;
    ctx.remember(&r.uid, |m| {
        m.last_check = Some(Instant::now());
        m.checked_generation = r.generation;
        m.checked_request = r.requested_at.clone();
        m.secret_changed = false;
        m.pull_busy = false;
        if credentials_may_differ {
            // another Secret or registry: what this source proved before no longer counts
            m.proven = None;
        }
    });
    let (checked, fingerprint) = r.check(&valid, state.content_missing).await;
    match checked {
        Ok(Checked::Stored(artifact, note)) => r.stored(*artifact, note, &valid).await,
        Ok(Checked::PullBusy) => {
            ctx.remember(&r.uid, |m| m.pull_busy = true);
            Ok(Outcome::Waiting(PULL_BUSY_RETRY))
        }
        Err(f) => {
            let policy = fingerprint.as_deref();
            r.failed(f, memory.failures, &valid, policy).await
        }
    }
}

impl Reconcile<'_> {
    /// Reads the source's verification policy, then checks; also the policy's fingerprint
    /// (when it could be read), which decides whether a kept verification still counts.
    async fn check(
        &self,
        valid: &ValidSpec,
        content_missing: bool,
    ) -> (Result<Checked, Failure>, Option<String>) {
        let policy = match verification::policy_for(self.source, self.ctx).await {
            Ok(p) => p,
            Err(f) => {
                let unreadable = self.source.spec.verify.as_ref();
                let policy = unreadable.map(|_| verification::UNREADABLE_POLICY.to_string());
                return (Err(f), policy);
            }
        };
        let fingerprint = policy.as_ref().map(|p| p.fingerprint.to_string());
        let (api, prev) = (&self.api, &self.prev);
        let checked = check(
            self.source,
            self.ctx,
            api,
            valid,
            prev,
            content_missing,
            policy.as_ref(),
        )
        .await;
        (checked, fingerprint)
    }

    /// The spec cannot work: Stalled, once (an unchanged status is not written again).
    async fn stall(&self, message: &str) -> Result<Outcome, Error> {
        let next = status::stalled(&self.prev, self.generation, message, &self.now);
        if next != self.prev {
            self.publish(SourceReason::InvalidSpec, message).await;
            patch_status(&self.api, &self.source.name_any(), &next).await?;
        }
        Ok(Outcome::Stalled)
    }

    /// What decides whether a check is due. The store is consulted only on the first
    /// reconcile since start (a fresh store) or when a check is due anyway, so status-only
    /// watch events never touch the disk.
    async fn check_state(&self, memory: &Memory, valid: &ValidSpec) -> CheckState {
        let last_check = [
            memory.last_check.map(|t| t.elapsed()),
            self.prev.last_check_time.as_deref().and_then(since),
        ]
        .into_iter()
        .flatten()
        .min();
        let requested = schedule::is_new_request(
            self.requested_at.as_deref(),
            self.prev.last_handled_requested_at.as_deref(),
            memory.checked_request.as_deref(),
        );
        let mut state = CheckState {
            since_last_check: last_check,
            spec_changed: self.generation != self.prev.observed_generation
                && self.generation != memory.checked_generation,
            requested: requested || memory.secret_changed || memory.pull_busy,
            content_missing: false,
            failures: memory.failures,
            failure_class: memory.failure_class,
            retry_after: memory.retry_after,
        };
        let due_now = schedule::due(&state, valid.interval, self.seed) == Due::Now;
        let status_key = self.prev.artifact.as_ref().map(stored_key);
        // a status naming a revision this replica has not seen in its store (written by
        // a previous leader, or before a restart) is looked up at once, and pulled if absent
        let unseen = status_key.as_ref().is_some_and(|k| *k != memory.present);
        if memory.last_check.is_none() || due_now || unseen {
            state.content_missing = match &status_key {
                Some(Some(key)) => !has_revision(self.ctx, key).await,
                Some(None) => true,
                None => false,
            };
            if !state.content_missing {
                self.ctx
                    .remember(&self.uid, |m| m.present = status_key.flatten());
            }
        }
        state
    }

    /// The check stored (or found) the revision: Ready.
    async fn stored(
        &self,
        artifact: Artifact,
        note: Option<String>,
        valid: &ValidSpec,
    ) -> Result<Outcome, Error> {
        let requested_at = self.requested_at.as_deref();
        let present = stored_key(&artifact);
        let next = status::ready(
            &self.prev,
            self.generation,
            artifact,
            note.as_deref(),
            &self.now,
            requested_at,
        );
        self.ctx.remember(&self.uid, |m| {
            m.present = present;
            m.failures = 0;
            m.failure_class = None;
            m.retry_after = None;
        });
        patch_status(&self.api, &self.source.name_any(), &next).await?;
        Ok(Outcome::Checked {
            reason: SourceReason::Succeeded,
            next: schedule::next_delay(valid.interval, 0, Class::Ready, None, self.seed),
        })
    }

    /// The check failed: the reason in status (the last artifact kept), an Event when the
    /// reason is news, and the backoff of its class.
    async fn failed(
        &self,
        f: Failure,
        before: u32,
        valid: &ValidSpec,
        policy: Option<&str>,
    ) -> Result<Outcome, Error> {
        let requested_at = self.requested_at.as_deref();
        let (prev, now) = (&self.prev, &self.now);
        let next = status::failed(prev, self.generation, &f, now, requested_at, policy);
        let class = f.reason.class();
        if is_news(&self.prev.conditions, class, f.reason.as_str()) {
            self.publish(f.reason, &f.message).await;
        }
        let failures = before.saturating_add(1);
        self.ctx.remember(&self.uid, |m| {
            m.failures = failures;
            m.failure_class = Some(class);
            m.retry_after = f.retry_after;
            // the backoff counts from the failure, not from the start of a check that may
            // have taken as long as its timeout (else the watch event of this very status
            // patch finds the first steps over and checks again at once)
            m.last_check = Some(Instant::now());
        });
        let name = format!(
            "{}/{}",
            self.source.namespace().unwrap_or_default(),
            self.source.name_any()
        );
        tracing::warn!(source = %name, reason = %f.reason, detail = %f.message, "check failed");
        patch_status(&self.api, &self.source.name_any(), &next).await?;
        let delay = schedule::next_delay(valid.interval, failures, class, f.retry_after, self.seed);
        Ok(Outcome::Checked {
            reason: f.reason,
            next: delay,
        })
    }

    async fn publish(&self, reason: SourceReason, note: &str) {
        let type_ = outcome::event_type(reason.class());
        publish(self.ctx, self.source, type_, reason.as_str(), note).await;
    }
}

/// One check: resolve; prove the revision is fetchable from this source's own repository
/// (unless this source proved it already); pull and store it when the store lacks it.
async fn check(
    source: &ArtifactSource,
    ctx: &Context,
    api: &Api<ArtifactSource>,
    valid: &ValidSpec,
    prev: &ArtifactSourceStatus,
    content_missing: bool,
    policy: Option<&SourcePolicy>,
) -> Result<Checked, Failure> {
    let registry = registry_for(source, ctx, valid).await?;
    let deadline = Deadline::after(schedule::registry_deadline(
        valid.timeout,
        ctx.registry_timeout,
    ));
    let resolved = deadline
        .run("resolve", pull::resolve(&registry, &valid.reference))
        .await;
    ctx.metrics.registry_request("resolve", outcome(&resolved));
    let (resolved, picked) = super::engine_pick::for_source(
        ctx,
        source,
        &registry,
        &valid.reference,
        resolved?,
        &deadline,
    )
    .await?;
    let found = Found::new(source, valid, resolved);
    let uid = source.uid().unwrap_or_default();
    let proven = ctx.memory_of(&uid).proven;
    let digest = &found.proof.digest;
    // with spec.verify, the verification this digest passed under this very policy
    let remembered = policy.map(|p| ctx.verified(digest, &p.fingerprint));
    let (status, proof) = (prev.artifact.as_ref(), &found.proof);
    let step = next_step(
        status,
        &found.store_key,
        proof,
        proven.as_ref(),
        content_missing,
    );
    if let (Step::Reuse, Some(a), None | Some(Some(_))) = (step, status, &remembered) {
        let v = remembered.flatten();
        let artifact = relabelled(a, &found.resolved, v);
        return Ok(Checked::Stored(Box::new(artifact), picked));
    }
    let repo = &valid.reference.repository;
    let pull = Pull {
        source,
        ctx,
        api,
        valid,
        prev,
        registry: &registry,
        deadline: &deadline,
    };
    let (manifest, verification) =
        match prove(ctx, &registry, repo, digest, policy, &deadline).await {
            Ok(proved) => proved,
            Err(f) => {
                if let (Step::ProveThenStore, true, Some(a)) = (step, content_missing, status) {
                    pull.restore(a, policy).await;
                }
                return Err(f);
            }
        };
    if let (Step::ProveThenReuse | Step::Reuse, Some(a)) = (step, status) {
        ctx.remember(&uid, |m| m.proven = Some(found.proof.clone()));
        let artifact = relabelled(a, &found.resolved, verification);
        return Ok(Checked::Stored(Box::new(artifact), picked));
    }
    // the pull lock is held until GC ran: a revision pulled now is in use before any status
    let Some(Taken {
        mut artifact,
        new,
        _pulling,
    }) = pull.take_or_pull(&found, manifest).await?
    else {
        return Ok(Checked::PullBusy);
    };
    artifact.revision = found.resolved.revision();
    artifact.verification = verification;
    remember_stored(ctx, source, prev, &found);
    if prev.artifact.as_ref().and_then(stored_key) != Some(found.store_key) {
        let note = format!("stored revision {}", artifact.revision);
        publish(ctx, source, EventType::Normal, "NewArtifact", &note).await;
    }
    if new {
        super::collect_garbage(ctx).await;
    }
    Ok(Checked::Stored(Box::new(artifact), picked))
}

/// The proof: this source's registry, with this source's credentials, serves the manifest
/// and its bytes hash to the digest; then, with `spec.verify`, its signature. Only then may
/// stored content be reused or any blob of the revision be stored.
async fn prove(
    ctx: &Context,
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
    policy: Option<&SourcePolicy>,
    deadline: &Deadline,
) -> Result<(RawManifest, Option<Verification>), Failure> {
    let manifest = deadline
        .run(
            "manifest",
            registry.fetch_manifest(repo, digest.as_str(), Some(digest)),
        )
        .await;
    ctx.metrics.registry_request("manifest", outcome(&manifest));
    let manifest = manifest?;
    let verification = match policy {
        Some(p) => {
            let bytes = &manifest.bytes;
            Some(verification::verify(ctx, registry, repo, digest, bytes, p, deadline).await?)
        }
        None => None,
    };
    Ok((manifest, verification))
}

/// What a check resolved: the revision, the proof this source would hold of it, and the
/// key the store holds this source's selection of it under.
struct Found {
    resolved: pull::Resolved,
    proof: ProvenRevision,
    selection: Selection,
    store_key: Digest,
}

impl Found {
    fn new(source: &ArtifactSource, valid: &ValidSpec, resolved: pull::Resolved) -> Self {
        let repo = &valid.reference.repository;
        let digest = resolved.head.digest.clone();
        let selection = selection_of(source);
        Found {
            store_key: revision_key(&digest, &selection),
            proof: ProvenRevision {
                registry: repo.registry.clone(),
                repository: repo.name.clone(),
                digest,
            },
            selection,
            resolved,
        }
    }
}

/// A revision taken from the store or pulled now, with the pull lock of its store key.
struct Taken {
    artifact: Artifact,
    /// Pulled now (not taken from another source's pull).
    new: bool,
    _pulling: tokio::sync::OwnedMutexGuard<()>,
}

/// What taking or pulling a proved revision works with.
struct Pull<'a> {
    source: &'a ArtifactSource,
    ctx: &'a Context,
    api: &'a Api<ArtifactSource>,
    valid: &'a ValidSpec,
    prev: &'a ArtifactSourceStatus,
    registry: &'a Registry,
    deadline: &'a Deadline,
}

impl Pull<'_> {
    /// The revision status still names, pulled back into a store that lost it (a restart on
    /// an emptyDir) while the new one is refused: pinned to its digest, proved and verified
    /// again. Best effort: the check's own failure is what status reports.
    async fn restore(&self, kept: &Artifact, policy: Option<&SourcePolicy>) {
        let Ok(digest) = Digest::parse(&kept.digest) else {
            return;
        };
        let mut valid = self.valid.clone();
        valid.reference.selector = RefSelector::Digest(digest.clone());
        let repo = &valid.reference.repository;
        let resolved = self
            .deadline
            .run("resolve", pull::resolve(self.registry, &valid.reference));
        let Ok(resolved) = resolved.await else {
            return;
        };
        let found = Found::new(self.source, &valid, resolved);
        let proved = prove(
            self.ctx,
            self.registry,
            repo,
            &digest,
            policy,
            self.deadline,
        )
        .await;
        let Ok((manifest, _)) = proved else {
            return;
        };
        let restored = Pull {
            valid: &valid,
            ..*self
        }
        .take_or_pull(&found, manifest)
        .await;
        if let Ok(Some(_)) = restored {
            tracing::info!(%digest, "pulled the kept revision back into the store");
        }
    }

    /// One pull of the blobs per revision and selection, however many sources point at it:
    /// the first source pulls, the others (each having proved access) take the stored
    /// artifact. `None` when another source's pull of it is still running.
    async fn take_or_pull(
        &self,
        found: &Found,
        manifest: RawManifest,
    ) -> Result<Option<Taken>, Failure> {
        let (ctx, key) = (self.ctx, &found.store_key);
        let lock = ctx.pull_lock(key);
        // Wait a little for another source's pull of the same revision (most take well
        // under a second), but never queue behind it for long (a slow registry, maybe a
        // hostile one, on the same digest): come back shortly, holding no worker.
        let Ok(pulling) = tokio::time::timeout(PULL_BUSY_WAIT, lock.lock_owned()).await else {
            return Ok(None);
        };
        let known = match ctx.known_artifact(key) {
            Some(a) if has_revision(ctx, key).await => Some(a),
            _ => None,
        };
        if let Some(a) = known {
            super::quota::admit_stored(ctx, self.source, key).await?;
            return Ok(Some(Taken {
                artifact: a,
                new: false,
                _pulling: pulling,
            }));
        }
        self.show_progress(&found.resolved).await;
        let target = Target {
            digest: &found.proof.digest,
            selection: &found.selection,
            manifest,
        };
        let (source, registry, valid) = (self.source, self.registry, self.valid);
        let (pulled, stored_at) =
            pull_and_store(source, ctx, registry, valid, target, self.deadline).await?;
        let artifact = artifact_of(ctx, &found.proof.digest, key, &pulled, stored_at);
        ctx.remember_artifact(key, &artifact);
        Ok(Some(Taken {
            artifact,
            new: true,
            _pulling: pulling,
        }))
    }

    /// Reconciling=True (and Ready=Unknown on a first pull) while the pull runs; best
    /// effort, as progress is informational.
    async fn show_progress(&self, resolved: &pull::Resolved) {
        let message = format!("pulling {}", resolved.revision());
        let generation = self.source.meta().generation;
        let progress = status::reconciling(self.prev, generation, &message, &now_rfc3339());
        if &progress != self.prev
            && let Err(e) = patch_status(self.api, &self.source.name_any(), &progress).await
        {
            tracing::debug!(error = %e, "progress not recorded");
        }
    }
}

/// Remembers the proof and the revision now served, moving the one before to `previous`
/// (kept for rollback by GC).
fn remember_stored(
    ctx: &Context,
    source: &ArtifactSource,
    prev: &ArtifactSourceStatus,
    found: &Found,
) {
    let uid = source.uid().unwrap_or_default();
    ctx.remember(&uid, |m| {
        m.proven = Some(found.proof.clone());
        if m.current.as_ref() != Some(&found.store_key) {
            m.previous = m
                .current
                .take()
                .or_else(|| prev.artifact.as_ref().and_then(stored_key));
            m.current = Some(found.store_key.clone());
        }
    });
}

/// What the source takes of the manifest: its platform and layer media type.
pub fn selection_of(source: &ArtifactSource) -> Selection {
    Selection {
        platform: source.spec.platform.clone(),
        layer_media_type: source
            .spec
            .layer_selector
            .as_ref()
            .map(|l| l.media_type.clone()),
    }
}

/// What a check does once it resolved the revision `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Keep the status artifact: same digest and selection (store key), still stored, and
    /// this source proved it can fetch it from this registry and repository since the
    /// controller started.
    Reuse,
    /// Keep the status artifact once the manifest is fetched and verified again (nothing
    /// proved since a restart, or since the Secret or spec changed).
    ProveThenReuse,
    /// Fetch and verify the manifest, then take the stored revision or pull it.
    ProveThenStore,
}

/// Decides the [`Step`]: a status alone proves nothing (it may be from another repository
/// or credentials, or from before a restart), so only a proof made by this very source for
/// this very registry, repository and digest skips the manifest fetch. A status holding
/// another selection of the digest (the layer selector or platform changed) is no longer
/// what the source asks for.
fn next_step(
    status: Option<&Artifact>,
    store_key: &Digest,
    key: &ProvenRevision,
    proven: Option<&ProvenRevision>,
    content_missing: bool,
) -> Step {
    let unchanged = status
        .is_some_and(|a| key.digest == a.digest && stored_key(a).as_ref() == Some(store_key))
        && !content_missing;
    match (unchanged, proven == Some(key)) {
        (true, true) => Step::Reuse,
        (true, false) => Step::ProveThenReuse,
        (false, _) => Step::ProveThenStore,
    }
}

/// The artifact of a source's status, labelled with the revision just resolved and the
/// verification of this check (none without `spec.verify`).
fn relabelled(
    artifact: &Artifact,
    resolved: &pull::Resolved,
    verification: Option<Verification>,
) -> Artifact {
    let mut artifact = artifact.clone();
    artifact.revision = resolved.revision();
    artifact.verification = verification;
    artifact
}

/// The status artifact for a freshly stored revision (its revision label is set per source):
/// `digest` is the manifest digest, the URL names the index under its store `key`.
fn artifact_of(
    ctx: &Context,
    digest: &Digest,
    key: &Digest,
    pulled: &Pulled,
    stored_at: String,
) -> Artifact {
    Artifact {
        revision: String::new(),
        digest: digest.to_string(),
        kind: pulled.kind,
        config: pulled.config.clone(),
        size: i64::try_from(pulled.size()).unwrap_or(i64::MAX),
        files: pulled
            .files
            .iter()
            .map(|f| ArtifactFile {
                path: f.path.clone(),
                digest: f.digest.to_string(),
                size: i64::try_from(f.size).unwrap_or(i64::MAX),
                platform: f.platform.as_ref().map(ToString::to_string),
            })
            .collect(),
        url: Some(format!(
            "{}{}",
            ctx.base_url,
            crate::server::revision_path(key.as_str())
        )),
        last_update_time: Some(stored_at),
        annotations: printable(&pulled.annotations),
        verification: None,
    }
}

/// The manifest annotations a status can hold: an entry with a control character would make
/// the API server refuse every status write of the source (it reads applies as YAML).
fn printable(
    annotations: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    annotations
        .iter()
        .filter(|(k, v)| crate::api::plain_name(k) && crate::api::yaml_printable(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The most bytes an artifact's file list may take in status, and its manifest annotations:
/// the whole object must stay under the API server's limit (etcd's 1.5 MiB by default), or
/// no status could ever be written for it.
const MAX_STATUS_FILES_BYTES: usize = 512 << 10;
const MAX_STATUS_ANNOTATIONS_BYTES: usize = 64 << 10;

/// Refuses, before it is stored, an artifact whose status would be too large to write.
fn status_fits(pulled: &Pulled) -> Result<(), Failure> {
    // {"path":"","digest":"","size":,"platform":""}, and the separator
    let files = pulled
        .files
        .iter()
        .map(|f| {
            f.path.len() + f.digest.as_str().len() + 50 + if f.platform.is_some() { 60 } else { 0 }
        })
        .fold(0usize, usize::saturating_add);
    let annotations = pulled
        .annotations
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .fold(0usize, usize::saturating_add);
    let too_large = |what: String| Failure::new(SourceReason::TooLarge, what);
    if files > MAX_STATUS_FILES_BYTES {
        return Err(too_large(format!(
            "its {} files make a file list of about {files} bytes, over the {MAX_STATUS_FILES_BYTES} an ArtifactSource status holds",
            pulled.files.len()
        )));
    }
    if annotations > MAX_STATUS_ANNOTATIONS_BYTES {
        return Err(too_large(format!(
            "its manifest annotations take {annotations} bytes, over the {MAX_STATUS_ANNOTATIONS_BYTES} an ArtifactSource status holds"
        )));
    }
    Ok(())
}

/// What [`pull_and_store`] pulls: a selection of a verified manifest.
struct Target<'a> {
    digest: &'a Digest,
    selection: &'a Selection,
    manifest: RawManifest,
}

async fn pull_and_store(
    source: &ArtifactSource,
    ctx: &Context,
    registry: &Registry,
    valid: &ValidSpec,
    target: Target<'_>,
    deadline: &Deadline,
) -> Result<(Pulled, String), Failure> {
    let store_failure = |e: &dyn std::fmt::Display| {
        Failure::new(SourceReason::StoreFailed, format!("content store: {e}"))
    };
    // Reserved before the staging directory exists and given back after it is removed.
    let media_type = target.selection.layer_media_type.as_deref();
    let budget = super::quota::pull_budget(ctx, source, &target.manifest, media_type).await;
    let staging = ctx.store.staging_dir().map_err(|e| store_failure(&e))?;
    let options = PullOptions {
        platform: target.selection.platform.clone(),
        layer_media_type: target.selection.layer_media_type.clone(),
        limits: budget.limits(),
    };
    let pulled = deadline
        .run(
            "pull",
            pull::pull_manifest_into(
                registry,
                &valid.reference.repository,
                target.manifest,
                staging.path(),
                &options,
                &|_| {},
            ),
        )
        .await;
    ctx.metrics.registry_request("pull", outcome(&pulled));
    let pulled = budget.blame(pulled)??;
    ctx.metrics.pulled_bytes(pulled.size());
    status_fits(&pulled)?;
    let files: Vec<IndexFile> = pulled.files.iter().map(IndexFile::from).collect();
    let incoming = RevisionIndex {
        digest: target.digest.clone(),
        selection: target.selection.clone(),
        files,
    };
    let _admitted = super::quota::admit(ctx, source, incoming.clone(), Some(&budget)).await?;
    let store = ctx.store.clone();
    tokio::task::spawn_blocking(move || {
        let r = store.commit_selection(
            &incoming.digest,
            &incoming.selection,
            staging.path(),
            &incoming.files,
        );
        drop(staging);
        r
    })
    .await
    .map_err(|e| {
        Failure::new(
            SourceReason::InternalError,
            format!("storing the revision: {e}"),
        )
    })?
    .map_err(|e| Failure::new(e.reason(), format!("content store: {e}")))?;
    Ok((pulled, now_rfc3339()))
}

/// A registry client with the source's credentials, CA and timeout.
async fn registry_for(
    source: &ArtifactSource,
    ctx: &Context,
    valid: &ValidSpec,
) -> Result<Registry, Failure> {
    registry_with(&ctx.client, ctx.registry_timeout, source, valid).await
}

/// [`registry_for`] with a client and the controller-wide timeout (a follower's fill).
pub async fn registry_with(
    client: &kube::Client,
    registry_timeout: Duration,
    source: &ArtifactSource,
    valid: &ValidSpec,
) -> Result<Registry, Failure> {
    let namespace = source.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let host = valid.reference.repository.registry.clone();
    let mut options = RegistryOptions {
        insecure: source.spec.insecure,
        timeout: schedule::registry_deadline(valid.timeout, registry_timeout),
        ..RegistryOptions::default()
    };
    if let Some(r) = &source.spec.secret_ref {
        let secret = get_secret(&secrets, &r.name).await?;
        options.credentials = secrets::credentials(&r.name, secret.as_ref(), &host)?;
    }
    if let Some(r) = &source.spec.cert_secret_ref {
        let secret = get_secret(&secrets, &r.name).await?;
        options.ca_pem = Some(secrets::ca_bundle(&r.name, secret.as_ref())?);
    }
    Ok(Registry::new(&host, options)?)
}

/// A Secret of the source's namespace; `None` when it does not exist. Any other error
/// (refused, for example 403 without RBAC for it, or the API server failing) is
/// `SecretNotReadable`, not `SecretNotFound`.
async fn get_secret(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, Failure> {
    api.get_opt(name)
        .await
        .map_err(|e| secret_not_readable(name, &e))
}

fn secret_not_readable(name: &str, e: &kube::Error) -> Failure {
    Failure::new(
        SourceReason::SecretNotReadable,
        format!("cannot read Secret {name}: {}", api_error_summary(e)),
    )
}

async fn has_revision(ctx: &Context, key: &Digest) -> bool {
    let store = ctx.store.clone();
    let key = key.clone();
    tokio::task::spawn_blocking(move || store.has(&key))
        .await
        .unwrap_or(false)
}

fn outcome<T>(r: &Result<T, OciError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.reason().as_str(),
    }
}

async fn publish(
    ctx: &Context,
    source: &ArtifactSource,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    ctx.publish(&source.object_ref(&()), type_, reason, note, "Check")
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_whose_status_could_not_be_written_is_refused() {
        let pulled = |files: usize, annotation: usize| Pulled {
            manifest_digest: Digest::of(b""),
            kind: crate::oci::content::ContentKind::FalcoRules,
            config: None,
            annotations: [("a".to_string(), "x".repeat(annotation))].into(),
            files: (0..files)
                .map(|i| crate::oci::unpack::WrittenFile {
                    path: format!("rules/{i:05}.yaml"),
                    digest: Digest::of(b""),
                    size: 1,
                    platform: None,
                })
                .collect(),
        };
        assert!(status_fits(&pulled(3_000, 100)).is_ok());
        let e = status_fits(&pulled(10_000, 100)).unwrap_err();
        assert_eq!(e.reason, SourceReason::TooLarge);
        assert!(e.message.contains("10000 files"), "{}", e.message);
        let e = status_fits(&pulled(1, 100_000)).unwrap_err();
        assert!(e.message.contains("annotations"), "{}", e.message);
    }

    #[test]
    fn annotations_a_status_cannot_hold_are_left_out() {
        let annotations = [
            (
                "org.opencontainers.image.description",
                "two\nlines are fine",
            ),
            ("del", "x\u{7f}"),
            ("nel", "a\u{85}b"),
            ("key\u{9b}", "v"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let kept: Vec<String> = printable(&annotations).into_keys().collect();
        assert_eq!(kept, ["org.opencontainers.image.description"]);
    }

    fn key(registry: &str, repository: &str, digest: &str) -> ProvenRevision {
        ProvenRevision {
            registry: registry.into(),
            repository: repository.into(),
            digest: Digest::parse(digest).unwrap(),
        }
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn only_what_this_source_proved_skips_the_manifest_fetch() {
        // store keys of the default selection are the manifest digests
        let (a, b) = (digest('a'), digest('b'));
        let (key_a, key_b) = (Digest::parse(&a).unwrap(), Digest::parse(&b).unwrap());
        let status = Artifact {
            digest: a.clone(),
            ..Default::default()
        };
        let here = key("r", "team-a/rules", &a);
        assert_eq!(
            next_step(Some(&status), &key_a, &here, Some(&here), false),
            Step::Reuse
        );
        // nothing proved since the start (a restart, a changed Secret or spec)
        assert_eq!(
            next_step(Some(&status), &key_a, &here, None, false),
            Step::ProveThenReuse
        );
        // proved from another repository or registry: no proof for this one
        for other in [
            key("r", "team-b/rules", &a),
            key("evil", "team-a/rules", &a),
        ] {
            assert_eq!(
                next_step(Some(&status), &key_a, &here, Some(&other), false),
                Step::ProveThenReuse
            );
        }
        // a new digest, no status yet, or the content gone from the store
        let newer = key("r", "team-a/rules", &b);
        assert_eq!(
            next_step(Some(&status), &key_b, &newer, Some(&newer), false),
            Step::ProveThenStore
        );
        assert_eq!(
            next_step(None, &key_a, &here, Some(&here), false),
            Step::ProveThenStore
        );
        assert_eq!(
            next_step(Some(&status), &key_a, &here, Some(&here), true),
            Step::ProveThenStore
        );
    }

    #[test]
    fn another_selection_of_the_same_digest_is_stored_anew() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let here = key("r", "team-a/rules", &digest);
        let layers = |m: &str| Selection {
            platform: None,
            layer_media_type: Some(m.into()),
        };
        let parsed = Digest::parse(&digest).unwrap();
        let key_a = revision_key(&parsed, &layers("application/vnd.a"));
        let key_b = revision_key(&parsed, &layers("application/vnd.b"));
        let status = Artifact {
            digest: digest.clone(),
            url: Some(format!(
                "http://s{}",
                crate::server::revision_path(key_a.as_str())
            )),
            ..Default::default()
        };
        assert_eq!(
            next_step(Some(&status), &key_a, &here, Some(&here), false),
            Step::Reuse
        );
        // the layer selector changed, or an old status stored every layer under the digest
        for other in [key_b, parsed.clone()] {
            assert_eq!(
                next_step(Some(&status), &other, &here, Some(&here), false),
                Step::ProveThenStore,
                "{other}"
            );
        }
    }

    #[test]
    fn a_source_selects_by_its_platform_and_layer_media_type() {
        let mut source = ArtifactSource::new("s", Default::default());
        assert!(selection_of(&source).is_default());
        source.spec.platform = Some("linux/arm64".into());
        source.spec.layer_selector = Some(crate::api::artifact_source::LayerSelector {
            media_type: "application/vnd.a".into(),
        });
        assert_eq!(
            selection_of(&source),
            Selection {
                platform: Some("linux/arm64".into()),
                layer_media_type: Some("application/vnd.a".into()),
            }
        );
    }
}
