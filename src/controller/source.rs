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
use crate::api::artifact_source::{Artifact, ArtifactFile, ArtifactSourceStatus};
use crate::api::condition::{ConditionType, find};
use crate::digest::Digest;
use crate::oci::OciError;
use crate::oci::pull::{self, Deadline, PullOptions, Pulled};
use crate::oci::registry::{RawManifest, Registry, RegistryOptions};
use crate::store::{IndexFile, QuotaExceeded, RevisionIndex, Selection, revision_key};

use super::context::{Context, ProvenRevision, patch_status, stored_key};
use super::schedule::{self, CheckState, Due};
use super::secrets::{self, SecretProblem};
use super::spec::{self, ValidSpec};
use super::status::{self, reason};
use super::{Error, now_rfc3339, since};

/// The annotation that forces a check when its value changes.
pub const REQUESTED_AT: &str = "ocisync.dev/requested-at";

/// A failed check: the reason for the condition and the message.
struct Failure {
    reason: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl From<OciError> for Failure {
    fn from(e: OciError) -> Self {
        let retry_after = match &e {
            OciError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        Failure {
            reason: e.reason().as_str(),
            message: e.to_string(),
            retry_after,
        }
    }
}

impl From<SecretProblem> for Failure {
    fn from(p: SecretProblem) -> Self {
        Failure {
            reason: p.reason,
            message: p.message,
            retry_after: None,
        }
    }
}

impl From<QuotaExceeded> for Failure {
    fn from(e: QuotaExceeded) -> Self {
        Failure {
            reason: e.reason(),
            message: e.to_string(),
            retry_after: None,
        }
    }
}

/// Not a reason any status carries: the check stopped because another source holds the
/// pull of the same revision; it is tried again after [`PULL_BUSY_RETRY`].
const PULL_BUSY: &str = "PullBusy";
const PULL_BUSY_RETRY: Duration = Duration::from_secs(2);
const PULL_BUSY_WAIT: Duration = Duration::from_secs(2);

pub async fn reconcile(source: Arc<ArtifactSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&source, &ctx).await;
    let outcome = match &result {
        Ok(Outcome::Checked { failed: false, .. }) => "success",
        Ok(Outcome::Checked { failed: true, .. }) => "failure",
        Ok(Outcome::Stalled) => "stalled",
        Ok(Outcome::Waiting(_)) | Ok(Outcome::Suspended) => "skipped",
        Err(_) => "error",
    };
    ctx.metrics
        .reconcile("ArtifactSource", outcome, started.elapsed().as_secs_f64());
    match result? {
        Outcome::Checked { next, .. } | Outcome::Waiting(next) => Ok(Action::requeue(next)),
        Outcome::Stalled | Outcome::Suspended => Ok(Action::await_change()),
    }
}

enum Outcome {
    Checked { failed: bool, next: Duration },
    Waiting(Duration),
    Stalled,
    Suspended,
}

async fn reconcile_inner(source: &ArtifactSource, ctx: &Context) -> Result<Outcome, Error> {
    let uid = source.uid().unwrap_or_default();
    let namespace = source.namespace().unwrap_or_default();
    let api: Api<ArtifactSource> = Api::namespaced(ctx.client.clone(), &namespace);
    let prev = source.status.clone().unwrap_or_default();
    let generation = source.meta().generation;
    let now = now_rfc3339();

    if source.spec.suspend {
        return Ok(Outcome::Suspended);
    }
    let valid = match spec::validate(&source.spec) {
        Ok(v) => v,
        Err(message) => {
            let next = status::stalled(&prev, generation, &message, &now);
            if next != prev {
                publish(
                    ctx,
                    source,
                    EventType::Warning,
                    reason::INVALID_SPEC,
                    &message,
                )
                .await;
                patch_status(&api, &source.name_any(), &next).await?;
            }
            return Ok(Outcome::Stalled);
        }
    };

    let memory = ctx.memory_of(&uid);
    let requested_at = source.annotations().get(REQUESTED_AT).cloned();
    let last_check = [
        memory.last_check.map(|t| t.elapsed()),
        prev.last_check_time.as_deref().and_then(since),
    ]
    .into_iter()
    .flatten()
    .min();
    let mut state = CheckState {
        since_last_check: last_check,
        spec_changed: generation != prev.observed_generation
            && generation != memory.checked_generation,
        requested: requested_at.is_some() && requested_at != prev.last_handled_requested_at
            || memory.secret_changed
            || memory.pull_busy,
        content_missing: false,
        failures: memory.failures,
        retry_after: memory.retry_after,
    };
    let seed = schedule::seed_of(&uid);
    // The store is consulted only on the first reconcile since start (a fresh store) or
    // when a check is due anyway, so status-only watch events never touch the disk.
    if memory.last_check.is_none() || schedule::due(&state, valid.interval, seed) == Due::Now {
        state.content_missing = match &prev.artifact {
            Some(a) => !has_revision(ctx, &stored_key(a)).await,
            None => false,
        };
    }
    if let Due::In(left) = schedule::due(&state, valid.interval, seed) {
        return Ok(Outcome::Waiting(left));
    }
    let credentials_may_differ = state.spec_changed || memory.secret_changed;
    ctx.remember(&uid, |m| {
        m.last_check = Some(Instant::now());
        m.checked_generation = generation;
        m.secret_changed = false;
        m.pull_busy = false;
        if credentials_may_differ {
            // another Secret or registry: what this source proved before no longer counts
            m.proven = None;
        }
    });

    match check(source, ctx, &api, &valid, &prev, state.content_missing).await {
        Ok(artifact) => {
            let next = status::ready(&prev, generation, artifact, &now, requested_at.as_deref());
            ctx.remember(&uid, |m| {
                m.failures = 0;
                m.retry_after = None;
            });
            patch_status(&api, &source.name_any(), &next).await?;
            Ok(Outcome::Checked {
                failed: false,
                next: schedule::next_delay(valid.interval, 0, None, seed),
            })
        }
        Err(f) if f.reason == PULL_BUSY => {
            ctx.remember(&uid, |m| m.pull_busy = true);
            Ok(Outcome::Waiting(PULL_BUSY_RETRY))
        }
        Err(f) => {
            let next = status::failed(
                &prev,
                generation,
                f.reason,
                &f.message,
                &now,
                requested_at.as_deref(),
            );
            let was = find(&prev.conditions, ConditionType::Ready)
                .map(|c| (c.status.clone(), c.reason.clone()));
            if was != Some(("False".to_string(), f.reason.to_string())) {
                publish(ctx, source, EventType::Warning, f.reason, &f.message).await;
            }
            let failures = memory.failures.saturating_add(1);
            ctx.remember(&uid, |m| {
                m.failures = failures;
                m.retry_after = f.retry_after;
            });
            tracing::warn!(source = %format!("{namespace}/{}", source.name_any()), reason = f.reason, detail = %f.message, "check failed");
            patch_status(&api, &source.name_any(), &next).await?;
            Ok(Outcome::Checked {
                failed: true,
                next: schedule::next_delay(valid.interval, failures, f.retry_after, seed),
            })
        }
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
) -> Result<Artifact, Failure> {
    let registry = registry_for(source, ctx, valid).await?;
    let deadline = Deadline::after(schedule::registry_deadline(
        valid.timeout,
        ctx.registry_timeout,
    ));
    let resolved = deadline
        .run("resolve", pull::resolve(&registry, &valid.reference))
        .await;
    ctx.metrics.registry_request("resolve", outcome(&resolved));
    let resolved = resolved?;
    let digest = resolved.head.digest.clone();
    let repo = &valid.reference.repository;
    let key = ProvenRevision {
        registry: repo.registry.clone(),
        repository: repo.name.clone(),
        digest: digest.to_string(),
    };
    // what this source takes of the manifest, and the key the store holds that under
    let selection = selection_of(source);
    let store_key = revision_key(&digest, &selection).to_string();
    let uid = source.uid().unwrap_or_default();
    let proven = ctx.memory_of(&uid).proven;
    let step = next_step(
        prev.artifact.as_ref(),
        &store_key,
        &key,
        proven.as_ref(),
        content_missing,
    );
    if let (Step::Reuse, Some(a)) = (step, &prev.artifact) {
        return Ok(relabelled(a, &resolved));
    }
    // The proof: this source's registry, with this source's credentials, serves the
    // manifest, and its bytes hash to the digest. Only then may stored content be reused.
    let manifest = deadline
        .run(
            "manifest",
            registry.fetch_manifest(repo, digest.as_str(), Some(&digest)),
        )
        .await;
    ctx.metrics.registry_request("manifest", outcome(&manifest));
    let manifest = manifest?;
    if let (Step::ProveThenReuse, Some(a)) = (step, &prev.artifact) {
        ctx.remember(&uid, |m| m.proven = Some(key.clone()));
        return Ok(relabelled(a, &resolved));
    }
    // One pull of the blobs per revision and selection, however many sources point at it:
    // the first source pulls, the others (each having proved access above) reuse the
    // stored artifact.
    let lock = ctx.pull_lock(&store_key);
    // Wait a little for another source's pull of the same revision (most take well under
    // a second), but never queue behind it for long (a slow registry, maybe a hostile
    // one, on the same digest): come back shortly, without holding a worker or a failure.
    let Ok(_pulling) = tokio::time::timeout(PULL_BUSY_WAIT, lock.lock()).await else {
        return Err(Failure {
            reason: PULL_BUSY,
            message: "another source is pulling this revision".into(),
            retry_after: Some(PULL_BUSY_RETRY),
        });
    };
    let known = match ctx.known_artifact(&store_key) {
        Some(a) if has_revision(ctx, &store_key).await => Some(a),
        _ => None,
    };
    let (mut artifact, new) = match known {
        Some(a) => {
            super::quota::admit_stored(ctx, source, &store_key).await?;
            (a, false)
        }
        None => {
            let progress = status::reconciling(
                prev,
                source.meta().generation,
                &format!("pulling {}", resolved.revision()),
                &now_rfc3339(),
            );
            if &progress != prev {
                // best effort: progress is informational
                let _ = patch_status(api, &source.name_any(), &progress).await;
            }
            let target = Target {
                digest: &digest,
                selection: &selection,
                manifest,
            };
            let (pulled, stored_at) =
                pull_and_store(source, ctx, &registry, valid, target, &deadline).await?;
            let artifact = artifact_of(ctx, digest.as_str(), &store_key, &pulled, stored_at);
            ctx.remember_artifact(&store_key, &artifact);
            (artifact, true)
        }
    };
    artifact.revision = resolved.revision();
    ctx.remember(&uid, |m| {
        m.proven = Some(key.clone());
        if m.current.as_deref() != Some(store_key.as_str()) {
            m.previous = m
                .current
                .take()
                .or_else(|| prev.artifact.as_ref().map(stored_key));
            m.current = Some(store_key.clone());
        }
    });
    if prev.artifact.as_ref().map(stored_key) != Some(store_key) {
        publish(
            ctx,
            source,
            EventType::Normal,
            "NewArtifact",
            &format!("stored revision {}", artifact.revision),
        )
        .await;
    }
    if new {
        super::collect_garbage(ctx).await;
    }
    Ok(artifact)
}

/// What the source takes of the manifest: its platform and layer media type.
fn selection_of(source: &ArtifactSource) -> Selection {
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
    store_key: &str,
    key: &ProvenRevision,
    proven: Option<&ProvenRevision>,
    content_missing: bool,
) -> Step {
    let unchanged = status.is_some_and(|a| a.digest == key.digest && stored_key(a) == store_key)
        && !content_missing;
    match (unchanged, proven == Some(key)) {
        (true, true) => Step::Reuse,
        (true, false) => Step::ProveThenReuse,
        (false, _) => Step::ProveThenStore,
    }
}

/// The artifact of a source's status, labelled with the revision just resolved.
fn relabelled(artifact: &Artifact, resolved: &pull::Resolved) -> Artifact {
    let mut artifact = artifact.clone();
    artifact.revision = resolved.revision();
    artifact
}

/// The status artifact for a freshly stored revision (its revision label is set per source):
/// `digest` is the manifest digest, the URL names the index under its store `key`.
fn artifact_of(
    ctx: &Context,
    digest: &str,
    key: &str,
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
            })
            .collect(),
        url: Some(format!(
            "{}{}",
            ctx.base_url,
            crate::server::revision_path(key)
        )),
        last_update_time: Some(stored_at),
        annotations: pulled.annotations.clone(),
    }
}

/// The most bytes an artifact's file list may take in status, and its manifest annotations:
/// the whole object must stay under the API server's limit (etcd's 1.5 MiB by default), or
/// no status could ever be written for it.
const MAX_STATUS_FILES_BYTES: usize = 512 << 10;
const MAX_STATUS_ANNOTATIONS_BYTES: usize = 64 << 10;

/// Refuses, before it is stored, an artifact whose status would be too large to write.
fn status_fits(pulled: &Pulled) -> Result<(), Failure> {
    // {"path":"","digest":"","size":}, and the separator
    let files = pulled
        .files
        .iter()
        .map(|f| f.path.len() + f.digest.as_str().len() + 50)
        .fold(0usize, usize::saturating_add);
    let annotations = pulled
        .annotations
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .fold(0usize, usize::saturating_add);
    let too_large = |what: String| Failure {
        reason: crate::oci::error::Reason::TooLarge.as_str(),
        message: what,
        retry_after: None,
    };
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
    let store_failure = |e: &dyn std::fmt::Display| Failure {
        reason: reason::STORE_FAILED,
        message: format!("content store: {e}"),
        retry_after: None,
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
    let files: Vec<IndexFile> = pulled
        .files
        .iter()
        .map(|f| IndexFile {
            path: f.path.clone(),
            digest: f.digest.clone(),
            size: f.size,
        })
        .collect();
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
    .map_err(|e| store_failure(&e))?
    .map_err(|e| store_failure(&e))?;
    Ok((pulled, now_rfc3339()))
}

/// A registry client with the source's credentials, CA and timeout.
async fn registry_for(
    source: &ArtifactSource,
    ctx: &Context,
    valid: &ValidSpec,
) -> Result<Registry, Failure> {
    let namespace = source.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let host = valid.reference.repository.registry.clone();
    let mut options = RegistryOptions {
        insecure: source.spec.insecure,
        timeout: schedule::registry_deadline(valid.timeout, ctx.registry_timeout),
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

async fn get_secret(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, Failure> {
    api.get_opt(name).await.map_err(|e| Failure {
        reason: reason::SECRET_NOT_FOUND,
        message: format!(
            "cannot read Secret {name}: {}",
            super::api_error_summary(&e)
        ),
        retry_after: None,
    })
}

async fn has_revision(ctx: &Context, key: &str) -> bool {
    let store = ctx.store.clone();
    let Ok(key) = Digest::parse(key) else {
        return false;
    };
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
                })
                .collect(),
        };
        assert!(status_fits(&pulled(3_000, 100)).is_ok());
        let e = status_fits(&pulled(10_000, 100)).unwrap_err();
        assert_eq!(e.reason, "TooLarge");
        assert!(e.message.contains("10000 files"), "{}", e.message);
        let e = status_fits(&pulled(1, 100_000)).unwrap_err();
        assert!(e.message.contains("annotations"), "{}", e.message);
    }

    fn key(registry: &str, repository: &str, digest: &str) -> ProvenRevision {
        ProvenRevision {
            registry: registry.into(),
            repository: repository.into(),
            digest: digest.into(),
        }
    }

    /// Store keys of the default selection are the manifest digests.
    const A: &str = "sha256:a";
    const B: &str = "sha256:b";

    #[test]
    fn only_what_this_source_proved_skips_the_manifest_fetch() {
        let status = Artifact {
            digest: "sha256:a".into(),
            ..Default::default()
        };
        let here = key("r", "team-a/rules", "sha256:a");
        assert_eq!(
            next_step(Some(&status), A, &here, Some(&here), false),
            Step::Reuse
        );
        // nothing proved since the start (a restart, a changed Secret or spec)
        assert_eq!(
            next_step(Some(&status), A, &here, None, false),
            Step::ProveThenReuse
        );
        // proved from another repository or registry: no proof for this one
        for other in [
            key("r", "team-b/rules", "sha256:a"),
            key("evil", "team-a/rules", "sha256:a"),
        ] {
            assert_eq!(
                next_step(Some(&status), A, &here, Some(&other), false),
                Step::ProveThenReuse
            );
        }
        // a new digest, no status yet, or the content gone from the store
        let newer = key("r", "team-a/rules", "sha256:b");
        assert_eq!(
            next_step(Some(&status), B, &newer, Some(&newer), false),
            Step::ProveThenStore
        );
        assert_eq!(
            next_step(None, A, &here, Some(&here), false),
            Step::ProveThenStore
        );
        assert_eq!(
            next_step(Some(&status), A, &here, Some(&here), true),
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
        let key_a = revision_key(&parsed, &layers("application/vnd.a")).to_string();
        let key_b = revision_key(&parsed, &layers("application/vnd.b")).to_string();
        let status = Artifact {
            digest: digest.clone(),
            url: Some(format!("http://s{}", crate::server::revision_path(&key_a))),
            ..Default::default()
        };
        assert_eq!(
            next_step(Some(&status), &key_a, &here, Some(&here), false),
            Step::Reuse
        );
        // the layer selector changed, or an old status stored every layer under the digest
        for other in [key_b, digest.clone()] {
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
