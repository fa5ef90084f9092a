//! Reconciling one RuleBundle: plan it from its sources' status (pure), read and check the
//! selected files from the content store, write the ConfigMap with server-side apply, and
//! record the outcome. Nothing is written unless every check passed.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use crate::api::condition::is_news;
use crate::api::rule_bundle::ConfigMapTarget;
use crate::api::rule_bundle::RuleBundleStatus;
use crate::api::{ArtifactSource, FIELD_MANAGER, RuleBundle};
use crate::bundle::nodes::Rollout;
use crate::bundle::plan::{self, Plan, PlannedFile};
use crate::bundle::{BundleReason, Problem, configmap, content, status};
use crate::store::Store;

use super::context::{Context, patch_status};
use super::outcome;
use super::{Error, now_rfc3339};
use crate::errors::api_error_summary;

/// How often a bundle is looked at again with nothing changed (drift repair).
const RESYNC: Duration = Duration::from_secs(600);
/// When a bundle whose cached copy is older than this controller's last status write is
/// looked at again, if its watch has not brought the write by then.
const BEHIND_OWN_WRITE: Duration = Duration::from_secs(5);

/// How long a new bundle waits for its sources' first check before it looks again (their
/// first status write wakes it sooner; see [`plan::awaits_first_check`]).
const FIRST_CHECK_WAIT: Duration = Duration::from_secs(30);

/// How long after its creation a bundle may wait quietly for its sources' first check;
/// past it, it says `SourceNotReady` like any other wait (so a source whose status can
/// never be written leaves its bundles without a status for 5 minutes at most).
const FIRST_CHECK_GRACE: Duration = Duration::from_secs(300);

/// How far ahead of ours an API server's clock may be for [`FIRST_CHECK_GRACE`].
const CLOCK_SKEW: Duration = Duration::from_secs(30);

pub async fn reconcile(bundle: Arc<RuleBundle>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&bundle, &ctx).await;
    let uid = bundle.uid().unwrap_or_default();
    let (label, reason) = match &result {
        Ok(_) if bundle.spec.suspend => ("skipped", ""),
        Ok((reason, _)) => (reason.class().metric_label(), reason.as_str()),
        Err(e) => (e.metric_label(), e.reason()),
    };
    let seconds = started.elapsed().as_secs_f64();
    ctx.metrics.reconcile("RuleBundle", label, reason, seconds);
    let (reason, count_in) = result?;
    ctx.api_succeeded(&uid);
    let class = reason.class();
    if bundle.spec.suspend {
        return Ok(Action::await_change());
    }
    if let Some(wait) = count_in {
        return Ok(Action::requeue(wait)); // the nodes' rollout is counted then
    }
    let failures = if class.is_failure() {
        ctx.bundle_failed(&uid)
    } else {
        ctx.bundle_succeeded(&uid);
        0
    };
    let seed = crate::backoff::seed_of(&uid);
    Ok(outcome::requeue(class, failures, seed, None, RESYNC))
}

/// Brings the bundle up to date; the reason its status now has (`Succeeded` when
/// suspended: nothing to do), and when to count its nodes' rollout if not counted now.
async fn reconcile_inner(
    bundle: &RuleBundle,
    ctx: &Context,
) -> Result<(BundleReason, Option<Duration>), Error> {
    if bundle.spec.suspend {
        return Ok((BundleReason::Succeeded, None));
    }
    let uid = bundle.uid().unwrap_or_default();
    if ctx.behind_own_write(&uid, bundle.resource_version().as_deref()) {
        // the watch event of that write wakes the bundle again; this is only a safety net
        return Ok((current_reason(bundle), Some(BEHIND_OWN_WRITE)));
    }
    let prev = bundle.status.clone().unwrap_or_default();
    let now = now_rfc3339();
    let (next, reason, count_in) = match bring_up_to_date(bundle, ctx, &prev).await {
        Ok((plan, cm_name)) => applied(bundle, ctx, &prev, &plan, cm_name, &now).await,
        Err(p) if bundle.status.is_none() && awaits_first_check(bundle, ctx, &p) => {
            return Ok((p.reason, Some(FIRST_CHECK_WAIT)));
        }
        Err(problem) => {
            let (next, reason) = failed(bundle, ctx, &prev, problem, &now).await;
            (next, reason, None)
        }
    };
    if next != prev {
        let namespace = bundle.namespace().unwrap_or_default();
        let api: Api<RuleBundle> = Api::namespaced(ctx.client.clone(), &namespace);
        let written = patch_status(&api, &bundle.name_any(), &next).await?;
        let before = bundle.resource_version();
        ctx.remember_status_write(&uid, before, written);
    }
    Ok((reason, count_in))
}

/// Whether `problem` is only that the bundle's sources wait for their first check.
fn awaits_first_check(bundle: &RuleBundle, ctx: &Context, problem: &Problem) -> bool {
    let namespace = bundle.namespace().unwrap_or_default();
    let created = bundle.meta().creation_timestamp.as_ref().map(|t| t.0);
    problem.reason == BundleReason::SourceNotReady
        && created_within(created, jiff::Timestamp::now(), FIRST_CHECK_GRACE)
        && plan::awaits_first_check(&bundle.spec, |name| {
            ctx.sources.get(&ObjectRef::new(name).within(&namespace))
        })
}

/// Whether an object created at `created` is less than `grace` old at `now`, allowing for
/// an API server's clock up to [`CLOCK_SKEW`] ahead of ours; one without a creation time
/// is not.
fn created_within(created: Option<jiff::Timestamp>, now: jiff::Timestamp, grace: Duration) -> bool {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    let skew = i64::try_from(CLOCK_SKEW.as_secs()).unwrap_or(i64::MAX);
    created.is_some_and(|c| (-skew..grace).contains(&(now.as_second() - c.as_second())))
}

/// The reason the bundle's Ready condition gives (`Succeeded` when there is none).
fn current_reason(bundle: &RuleBundle) -> BundleReason {
    bundle
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| BundleReason::parse(&c.reason))
        .unwrap_or(BundleReason::Succeeded)
}

/// Plans the bundle, and unless its ConfigMap already holds that plan's revision (and
/// nobody changed it), reads and checks the files and writes them; deletes a ConfigMap
/// this bundle no longer targets. Returns the plan and the ConfigMap's name.
async fn bring_up_to_date(
    bundle: &RuleBundle,
    ctx: &Context,
    prev: &RuleBundleStatus,
) -> Result<(Plan, Option<String>), Problem> {
    let name = bundle.name_any();
    let plan = plan_of(bundle, ctx, &bundle.namespace().unwrap_or_default())?;
    let cm_name = bundle
        .spec
        .config_map
        .as_ref()
        .map(|t| configmap::name(t, &name));
    // What was applied for this generation is still what the plan says: nothing to
    // read, check or write (status-only wake-ups, node reports).
    let in_sync = prev.observed_generation == bundle.meta().generation
        && prev.revision.as_deref() == Some(plan.revision.as_str())
        && cm_name
            .as_deref()
            .is_none_or(|n| config_map_in_sync(ctx, bundle, n, &plan.revision));
    if !in_sync {
        let files = checked_files(ctx, bundle, &plan, cm_name.is_some()).await?;
        if let Some(target) = &bundle.spec.config_map {
            apply_config_map(ctx, bundle, target, &plan, files).await?;
        }
    }
    if let Some(old) = &prev.config_map
        && cm_name.as_deref() != Some(old.name.as_str())
    {
        delete_config_map(ctx, bundle, &old.name).await?;
    }
    Ok((plan, cm_name))
}

/// The status of an applied plan (with its nodes' rollout), and an Event for a new
/// revision. When only the nodes' reports can have changed and their rollout was counted
/// within [`ROLLOUT_EVERY`](super::context::ROLLOUT_EVERY), the status stays as it is and
/// the time until the next count is returned.
async fn applied(
    bundle: &RuleBundle,
    ctx: &Context,
    prev: &RuleBundleStatus,
    plan: &Plan,
    cm_name: Option<String>,
    now: &str,
) -> (RuleBundleStatus, BundleReason, Option<Duration>) {
    let generation = bundle.meta().generation;
    let uid = bundle.uid().unwrap_or_default();
    let moved = prev.observed_generation != generation
        || prev.revision.as_deref() != Some(plan.revision.as_str())
        || prev.nodes.is_none();
    let rollout = match &bundle.spec.node_files {
        None => None,
        Some(target) => match ctx.count_rollout(&uid, moved) {
            Ok(()) => Some(ctx.rollout(target, &uid, generation, &plan.revision)),
            Err(wait) => {
                let counted = Rollout {
                    counts: prev.nodes.clone().unwrap_or_default(),
                    failures: Vec::new(),
                };
                let reason = status::rollout_reason(Some(&counted));
                return (prev.clone(), reason, Some(wait));
            }
        },
    };
    let next = status::applied(prev, generation, plan, cm_name, rollout.as_ref(), now);
    if prev.revision.as_deref() != Some(plan.revision.as_str()) {
        let note = format!("applied revision {}", plan.revision);
        let object = bundle.object_ref(&());
        ctx.publish(&object, EventType::Normal, "Applied", &note, "Apply")
            .await;
    }
    (next, status::rollout_reason(rollout.as_ref()), None)
}

/// The status of a problem (what was applied stays), and an Event and a log line when the
/// reason is news.
async fn failed(
    bundle: &RuleBundle,
    ctx: &Context,
    prev: &RuleBundleStatus,
    problem: Problem,
    now: &str,
) -> (RuleBundleStatus, BundleReason) {
    let (reason, class) = (problem.reason, problem.reason.class());
    if is_news(&prev.conditions, class, reason.as_str()) {
        let object = bundle.object_ref(&());
        let type_ = outcome::event_type(class);
        ctx.publish(&object, type_, reason.as_str(), &problem.message, "Apply")
            .await;
        let name = format!(
            "{}/{}",
            bundle.namespace().unwrap_or_default(),
            bundle.name_any()
        );
        tracing::warn!(bundle = %name, %reason, detail = %problem.message, "bundle not applied");
    }
    let next = status::failed(prev, bundle.meta().generation, &problem, now);
    (next, reason)
}

/// The plan from the sources as the controller's cache sees them.
fn plan_of(bundle: &RuleBundle, ctx: &Context, namespace: &str) -> Result<Plan, Problem> {
    let sources: HashMap<&str, Option<Arc<ArtifactSource>>> = bundle
        .spec
        .sources
        .iter()
        .map(|s| {
            let name = s.source_ref.name.as_str();
            (
                name,
                ctx.sources.get(&ObjectRef::new(name).within(namespace)),
            )
        })
        .collect();
    plan::plan(&bundle.spec, |name| {
        plan::source_state(sources.get(name).and_then(|s| s.as_deref()))
    })
}

/// The ConfigMap exists, is this bundle's, carries `revision`, and nobody changed it since
/// this controller wrote it.
fn config_map_in_sync(ctx: &Context, bundle: &RuleBundle, name: &str, revision: &str) -> bool {
    let uid = bundle.uid().unwrap_or_default();
    let Some(cm) = ctx
        .config_maps
        .get(&ObjectRef::new(name).within(&bundle.namespace().unwrap_or_default()))
    else {
        return false;
    };
    let written = ctx.written_version(&uid);
    configmap::controlled_by(cm.metadata.owner_references.as_deref(), &uid)
        && cm
            .annotations()
            .get(configmap::REVISION_ANNOTATION)
            .map(String::as_str)
            == Some(revision)
        && written.is_some()
        && written == cm.metadata.resource_version
}

/// [`read_and_check`], unless it failed before for this generation and plan (a hostile
/// tenant's many bad bundles cost one check each, not one per wake-up).
async fn checked_files(
    ctx: &Context,
    bundle: &RuleBundle,
    plan: &Plan,
    keep_bytes: bool,
) -> Result<Vec<(String, Vec<u8>)>, Problem> {
    let uid = bundle.uid().unwrap_or_default();
    let checked = (bundle.meta().generation, plan.revision.clone());
    if let Some(problem) = ctx.failed_check(&uid, &checked) {
        return Err(problem);
    }
    let result = read_and_check(ctx, plan, keep_bytes).await;
    ctx.remember_check(&uid, checked, result.as_ref().err());
    result
}

/// Reads each file the targets need from the store and checks it by kind. Bytes are kept
/// only when a ConfigMap will hold them. Sizes are checked, from the store's file lengths,
/// before anything is read.
async fn read_and_check(
    ctx: &Context,
    plan: &Plan,
    keep_bytes: bool,
) -> Result<Vec<(String, Vec<u8>)>, Problem> {
    let store = ctx.store.clone();
    let files: Vec<PlannedFile> = plan.files.clone();
    let internal = |e: &dyn std::fmt::Display| {
        Problem::new(
            BundleReason::InternalError,
            format!("checking content: {e}"),
        )
    };
    let _permit = ctx.check_permit().await.map_err(|e| internal(&e))?;
    tokio::task::spawn_blocking(move || read_files(&store, &files, keep_bytes))
        .await
        .map_err(|e| internal(&e))?
}

/// The blocking part of [`read_and_check`].
fn read_files(
    store: &Store,
    files: &[PlannedFile],
    keep_bytes: bool,
) -> Result<Vec<(String, Vec<u8>)>, Problem> {
    let wanted: Vec<&PlannedFile> = files
        .iter()
        .filter(|f| keep_bytes || content::is_checked(f.kind, &f.path))
        .collect();
    let sizes = wanted
        .iter()
        .map(|f| stored_size(store, f))
        .collect::<Result<Vec<u64>, Problem>>()?;
    // the target's limit first: its message says what to do (use nodeFiles)
    if keep_bytes {
        configmap::fits(sizes.iter().copied())?;
    }
    for (f, size) in wanted.iter().zip(&sizes) {
        content::size_ok(f.kind, &f.path, *size).map_err(|e| invalid_content(f, &e))?;
    }
    let mut out = Vec::new();
    for (f, size) in wanted.into_iter().zip(sizes) {
        let bytes = read_stored(store, f, size)?;
        content::check(f.kind, &f.path, &bytes).map_err(|e| invalid_content(f, &e))?;
        if keep_bytes {
            out.push((f.key.clone(), bytes));
        }
    }
    Ok(out)
}

fn invalid_content(f: &PlannedFile, e: &str) -> Problem {
    Problem::new(
        BundleReason::InvalidContent,
        format!("{} from ArtifactSource {}: {e}", f.path, f.source),
    )
}

fn not_stored(f: &PlannedFile) -> Problem {
    Problem::new(
        BundleReason::SourceNotReady,
        format!(
            "{} of ArtifactSource {} is not in the content store yet",
            f.path, f.source
        ),
    )
}

/// The length of the file's blob in the store.
fn stored_size(store: &Store, f: &PlannedFile) -> Result<u64, Problem> {
    store
        .blob_path(&f.digest)
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .ok_or_else(|| not_stored(f))
}

/// Reads the file's blob, never more than the `size` it had when its size was checked.
fn read_stored(store: &Store, f: &PlannedFile, size: u64) -> Result<Vec<u8>, Problem> {
    let file = std::fs::File::open(store.blob_location(&f.digest)).map_err(|_| not_stored(f))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|_| not_stored(f))?;
    if bytes.len() as u64 != size {
        return Err(not_stored(f)); // changed under us: the store is being rewritten
    }
    Ok(bytes)
}

/// Writes the ConfigMap, unless one of that name exists and belongs to someone else.
async fn apply_config_map(
    ctx: &Context,
    bundle: &RuleBundle,
    target: &ConfigMapTarget,
    plan: &Plan,
    files: Vec<(String, Vec<u8>)>,
) -> Result<(), Problem> {
    let namespace = bundle.namespace().unwrap_or_default();
    let bundle_name = bundle.name_any();
    let uid = bundle.uid().unwrap_or_default();
    let owner = bundle
        .controller_owner_ref(&())
        .ok_or_else(|| Problem::new(BundleReason::ConfigMapFailed, "the bundle has no uid yet"))?;
    let cm = configmap::build(
        target,
        &bundle_name,
        &namespace,
        owner,
        &plan.revision,
        files,
    )?;
    let name = configmap::name(target, &bundle_name);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let failed = |e: kube::Error| {
        Problem::new(
            BundleReason::ConfigMapFailed,
            format!("ConfigMap {name}: {}", api_error_summary(&e)),
        )
    };
    if !owned_or_absent(ctx, &api, &namespace, &name, &uid)
        .await
        .map_err(failed)?
    {
        return Err(Problem::new(
            BundleReason::ConfigMapNotOwned,
            format!(
                "ConfigMap {name} exists and is not managed by this RuleBundle; delete it or set spec.configMap.name"
            ),
        ));
    }
    let written = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map_err(failed)?;
    if let Some(rv) = written.metadata.resource_version {
        ctx.remember_written(&uid, rv);
    }
    Ok(())
}

/// True when no ConfigMap `name` exists, or it is controlled by the bundle `uid`. The cache
/// holds only ocisync's ConfigMaps; any other is looked up.
async fn owned_or_absent(
    ctx: &Context,
    api: &Api<ConfigMap>,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<bool, kube::Error> {
    if let Some(cm) = ctx.config_maps.get(&ObjectRef::new(name).within(namespace)) {
        return Ok(configmap::controlled_by(
            cm.metadata.owner_references.as_deref(),
            uid,
        ));
    }
    Ok(match api.get_metadata_opt(name).await? {
        Some(cm) => configmap::controlled_by(cm.metadata.owner_references.as_deref(), uid),
        None => true,
    })
}

/// Deletes a ConfigMap this bundle wrote and no longer wants (target removed or renamed).
async fn delete_config_map(ctx: &Context, bundle: &RuleBundle, name: &str) -> Result<(), Problem> {
    let namespace = bundle.namespace().unwrap_or_default();
    let uid = bundle.uid().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let failed = |e: kube::Error| {
        Problem::new(
            BundleReason::ConfigMapFailed,
            format!("deleting ConfigMap {name}: {}", api_error_summary(&e)),
        )
    };
    let Some(cm) = api.get_metadata_opt(name).await.map_err(failed)? else {
        return Ok(());
    };
    if !configmap::controlled_by(cm.metadata.owner_references.as_deref(), &uid) {
        return Ok(()); // someone else's now: leave it
    }
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: cm.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::content::ContentKind;
    use crate::store::IndexFile;

    #[test]
    fn only_a_young_bundle_waits_quietly() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Some(jiff::Timestamp::from_second(s).unwrap());
        let grace = Duration::from_secs(300);
        assert!(created_within(at(1_000_000 - 299), now, grace));
        assert!(
            !created_within(at(1_000_000 - 300), now, grace),
            "past the grace"
        );
        assert!(
            created_within(at(1_000_000 + 5), now, grace),
            "a clock a little ahead"
        );
        assert!(
            !created_within(at(1_000_000 + 31), now, grace),
            "not a minute ahead"
        );
        assert!(!created_within(None, now, grace));
    }

    /// A store holding `files`, and the plan entries for them (Falco rules).
    fn stored(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, Store, Vec<PlannedFile>) {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let staging = store.staging_dir().unwrap();
        let mut index = Vec::new();
        let mut planned = Vec::new();
        for (path, bytes) in files {
            std::fs::write(staging.path().join(path), bytes).unwrap();
            let digest = crate::digest::Digest::of(bytes);
            index.push(IndexFile {
                path: path.to_string(),
                digest: digest.clone(),
                size: bytes.len() as u64,
                platform: None,
            });
            planned.push(PlannedFile {
                key: path.to_string(),
                path: path.to_string(),
                source: "s".into(),
                kind: ContentKind::FalcoRules,
                digest,
                size: bytes.len() as u64,
                platform: None,
            });
        }
        let manifest = crate::digest::Digest::of(b"manifest");
        store.commit(&manifest, staging.path(), &index).unwrap();
        (root, store, planned)
    }

    #[test]
    fn files_are_read_and_checked() {
        let (_root, store, plan) = stored(&[
            ("a.yaml", b"- rule: a\n".to_vec()),
            ("b.txt", b"not checked".to_vec()),
        ]);
        let read = read_files(&store, &plan, true).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], ("a.yaml".to_string(), b"- rule: a\n".to_vec()));
        // node targets only: nothing kept, unchecked files not even read
        assert!(read_files(&store, &plan, false).unwrap().is_empty());
    }

    #[test]
    fn sizes_are_checked_from_the_store_before_reading() {
        // what the plan (the source's status) claims does not matter: the store's length does
        let half = configmap::MAX_BYTES / 2 + 1;
        let (_root, store, mut plan) =
            stored(&[("a.txt", vec![b'a'; half]), ("b.txt", vec![b'b'; half])]);
        for f in &mut plan {
            f.size = 1;
        }
        let e = read_files(&store, &plan, true).unwrap_err();
        assert_eq!(
            e.reason,
            BundleReason::TooLargeForConfigMap,
            "{}",
            e.message
        );
        assert!(read_files(&store, &plan, false).unwrap().is_empty());

        let big = content::MAX_CHECKED_BYTES as usize + 1;
        let (_root, store, plan) = stored(&[("big.yaml", vec![b'#'; big])]);
        let e = read_files(&store, &plan, true).unwrap_err();
        assert_eq!(e.reason, BundleReason::TooLargeForConfigMap);
        let e = read_files(&store, &plan, false).unwrap_err();
        assert_eq!(e.reason, BundleReason::InvalidContent);
        assert!(
            e.message
                .starts_with("big.yaml from ArtifactSource s: it is"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_missing_blob_is_not_ready() {
        let (_root, store, mut plan) = stored(&[("a.yaml", b"- rule: a\n".to_vec())]);
        plan[0].digest = crate::digest::Digest::of(b"elsewhere");
        let e = read_files(&store, &plan, true).unwrap_err();
        assert_eq!(e.reason, BundleReason::SourceNotReady);
    }
}
