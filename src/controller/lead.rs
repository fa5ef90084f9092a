//! What the leader does: watch ArtifactSources, RuleBundles, ConfigMaps, Nodes and
//! NodeReports, reconcile them, and collect the store's garbage. Everything it writes goes
//! through the API client it is given, which refuses writes once leadership is gone.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::events::Recorder;
use super::source_users::SourceUsers;
use super::{
    Options, Shared, bundle, collect_garbage, error_policy, node_watch, prune_reports, source,
};
use crate::api::{ArtifactSource, NodeReport, RuleBundle};
use crate::bundle::configmap::MANAGED_BY;

/// Leads until `stop`: the ArtifactSource and RuleBundle controllers and the garbage
/// collector; returns once in-flight reconciles finished. Dropping the future stops all of
/// it at once (leadership lost).
pub async fn lead(client: Client, options: &Options, shared: &Shared, stop: CancellationToken) {
    let apis = Apis::new(&client, options.namespace.as_deref());
    let Ok(SourceWatch {
        reader: source_reader,
        events: source_events,
        for_bundles,
        watch: source_watch,
    }) = SourceWatch::start(apis.sources)
    else {
        tracing::error!("the ArtifactSource watch could not be shared");
        return;
    };
    let _source_watch = AbortOnDrop(source_watch);
    let source_users = Arc::new(SourceUsers::default());
    let (bundle_reader, bundle_events) = bundle_watch(apis.bundles, source_users.clone());
    let bundle_controller: Controller<RuleBundle> =
        Controller::for_stream(bundle_events, bundle_reader.clone())
            .with_config(controller::Config::default().concurrency(options.concurrency))
            .trigger_backoff(crate::backoff::controller_watch());
    let (cm_reader, cm_events) = managed_config_maps(apis.config_maps);
    let (node_reader, node_events) = node_watch::watch(client.clone(), bundle_reader.clone());
    let (report_reader, report_events) = node_reports(client.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        store: shared.store.clone(),
        metrics: shared.metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter()),
        base_url: options.base_url.trim_end_matches('/').to_string(),
        registry_timeout: options.registry_timeout,
        sources: source_reader.clone(),
        bundles: bundle_reader,
        source_users,
        config_maps: cm_reader,
        nodes: node_reader,
        reports: report_reader,
        state: Default::default(),
    });
    shared.view.set(source_reader.clone());
    let _gc = AbortOnDrop(spawn_gc(ctx.clone(), stop.clone()));
    let _census = AbortOnDrop(super::census::spawn(ctx.clone(), stop.clone()));
    shared.set_ready(true);
    // each subscription to the shared watch is consumed by exactly one controller: one left
    // unread would hold the shared stream (and every controller) once its buffer filled
    let source_controller =
        source_controller(source_events, source_reader, options, apis.secrets, &ctx);
    let bundles_done = bundle_controller
        .owns_stream(cm_events)
        .watches_shared_stream(for_bundles, {
            let ctx = ctx.clone();
            move |s| ctx.bundles_using(&s)
        })
        .reconcile_on(node_events)
        .watches_stream(report_events, {
            let ctx = ctx.clone();
            move |r| ctx.bundles_in_report(&r)
        })
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(bundle::reconcile, error_policy, ctx.clone())
        .for_each(|r| log_error("RuleBundle", r));
    let sources_done = source_controller
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(source::reconcile, error_policy, ctx)
        .for_each(|r| log_error("ArtifactSource", r));
    tokio::join!(sources_done, bundles_done);
}

/// A task aborted when this is dropped (the leader's term ended).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The APIs the controller watches: in one namespace (`--namespace`) or all.
struct Apis {
    sources: Api<ArtifactSource>,
    secrets: Api<PartialObjectMeta<Secret>>,
    bundles: Api<RuleBundle>,
    config_maps: Api<PartialObjectMeta<ConfigMap>>,
}

impl Apis {
    fn new(client: &Client, namespace: Option<&str>) -> Self {
        fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
        where
            K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
            <K as kube::Resource>::DynamicType: Default,
        {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        Apis {
            sources: api(client, namespace),
            secrets: api(client, namespace),
            bundles: api(client, namespace),
            config_maps: api(client, namespace),
        }
    }
}

/// One watch of ArtifactSources feeds both controllers: their own, and the bundles' (a new
/// source revision reaches the bundles that use it at once).
struct SourceWatch {
    reader: reflector::Store<ArtifactSource>,
    events: reflector::ReflectHandle<ArtifactSource>,
    for_bundles: reflector::ReflectHandle<ArtifactSource>,
    watch: tokio::task::JoinHandle<()>,
}

impl SourceWatch {
    fn start(api: Api<ArtifactSource>) -> anyhow::Result<Self> {
        let (reader, writer) = reflector::store_shared::<ArtifactSource>(1024);
        let subscribe = || {
            writer
                .subscribe()
                .ok_or_else(|| anyhow::anyhow!("the ArtifactSource store is not shared"))
        };
        let (events, for_bundles) = (subscribe()?, subscribe()?);
        let watch = watcher(api, watcher::Config::default().any_semantic())
            .backoff(crate::backoff::controller_watch())
            .modify(|s| slim(&mut s.metadata))
            .reflect_shared(writer)
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "ArtifactSource watch");
                }
            });
        Ok(SourceWatch {
            reader,
            events,
            for_bundles,
            watch: tokio::spawn(watch),
        })
    }
}

/// The ArtifactSource controller, on the shared watch's `events`. With `--watch-secrets`,
/// Secrets by metadata only: a change re-checks the sources that use the Secret. Without
/// it (the chart's default) the controller needs only `get` on Secrets, reads the ones
/// sources name at each check, and cannot list any.
fn source_controller(
    events: reflector::ReflectHandle<ArtifactSource>,
    reader: reflector::Store<ArtifactSource>,
    options: &Options,
    secrets: Api<PartialObjectMeta<Secret>>,
    ctx: &Arc<Context>,
) -> Controller<ArtifactSource> {
    let controller = Controller::for_shared_stream(events, reader)
        .with_config(controller::Config::default().concurrency(options.concurrency))
        .trigger_backoff(crate::backoff::controller_watch());
    if !options.watch_secrets {
        return controller;
    }
    let changes = watcher(secrets, watcher::Config::default().any_semantic())
        .touched_objects()
        .predicate_filter(predicates::resource_version, Default::default());
    let ctx = ctx.clone();
    controller.watches_stream(changes, move |s| ctx.sources_using(&s))
}

/// The RuleBundles, without their managed fields (never read, and a large share of a small
/// object), feeding the index of the sources they use.
fn bundle_watch(
    api: Api<RuleBundle>,
    users: Arc<SourceUsers>,
) -> (
    reflector::Store<RuleBundle>,
    impl futures_util::Stream<Item = Result<RuleBundle, watcher::Error>>,
) {
    let (reader, writer) = reflector::store();
    let listed = reader.clone();
    let events = watcher(api, watcher::Config::default().any_semantic())
        .backoff(crate::backoff::controller_watch())
        .modify(|b| slim(&mut b.metadata))
        .map_ok(move |event| {
            users.apply(&event);
            event
        })
        .reflect(writer)
        .flat_map(move |event| futures_util::stream::iter(to_reconcile(event, &listed)));
    (reader, events)
}

/// The bundles one event of their watch wakes. A relist's bundles are woken once it is
/// complete (the cache swaps to the new list then): woken page by page, a bundle created
/// while the watch was down would not be in the cache yet, and its reconcile would be
/// dropped.
fn to_reconcile(
    event: Result<watcher::Event<RuleBundle>, watcher::Error>,
    listed: &reflector::Store<RuleBundle>,
) -> Vec<Result<RuleBundle, watcher::Error>> {
    match event {
        Ok(watcher::Event::Apply(b)) => vec![Ok(b)],
        Ok(watcher::Event::InitDone) => listed.state().iter().map(|b| Ok((**b).clone())).collect(),
        Ok(_) => Vec::new(),
        Err(e) => vec![Err(e)],
    }
}

/// The ConfigMaps ocisync wrote, by label and metadata only (without managedFields, which
/// were most of it): an edit or a deletion wakes the owning bundle, which puts it back.
fn managed_config_maps(
    api: Api<PartialObjectMeta<ConfigMap>>,
) -> (
    reflector::Store<PartialObjectMeta<ConfigMap>>,
    impl futures_util::Stream<Item = Result<PartialObjectMeta<ConfigMap>, watcher::Error>>,
) {
    let (reader, writer) = reflector::store();
    let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let events = watcher(
        api,
        watcher::Config::default().labels(&managed).any_semantic(),
    )
    .backoff(crate::backoff::controller_watch())
    .modify(|cm| slim(&mut cm.metadata))
    .reflect(writer)
    .touched_objects();
    (reader, events)
}

/// The agents' reports, which move `status.nodes`.
fn node_reports(
    client: Client,
) -> (
    reflector::Store<NodeReport>,
    impl futures_util::Stream<Item = Result<NodeReport, watcher::Error>>,
) {
    let (reader, writer) = reflector::store();
    let events = watcher(
        Api::<NodeReport>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .backoff(crate::backoff::controller_watch())
    .modify(|r| slim(&mut r.metadata))
    .reflect(writer)
    .touched_objects();
    (reader, events)
}

/// How this controller signs its Events.
fn reporter() -> Reporter {
    Reporter {
        controller: "ocisync-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// Every minute: the reports of deleted nodes; every fifth minute: the store's garbage.
fn spawn_gc(ctx: Arc<Context>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        let mut n = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    n = n.wrapping_add(1);
                    prune_reports(&ctx).await;
                    if n.is_multiple_of(5) {
                        collect_garbage(&ctx).await;
                    }
                }
            }
        }
    })
}

/// kubectl's copy of what was last applied client-side: a second copy of the object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What a cache keeps of an object's metadata: no managed fields and no `LAST_APPLIED`,
/// which together are often most of an object and are never read here.
fn slim(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

async fn log_error<T, E: std::fmt::Display>(kind: &'static str, result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(kind, error = %e, "reconcile");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api;
    use kube::ResourceExt;
    use kube::runtime::reflector::ObjectRef;

    #[tokio::test]
    async fn the_config_map_cache_holds_no_managed_fields_or_last_applied_copy() {
        let (client, mut server) = mock_api::pair();
        let (reader, events) = managed_config_maps(Api::all(client));
        let watch = tokio::spawn(events.for_each(|_| async {}));
        let listed = serde_json::json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadataList",
            "metadata": {"resourceVersion": "7"},
            "items": [{
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": {
                    "name": "cm", "namespace": "team", "resourceVersion": "6",
                    "labels": {"app.kubernetes.io/managed-by": "ocisync"},
                    "annotations": {LAST_APPLIED: "{}", "ocisync.dev/revision": "sha256:1"},
                    "managedFields": [{"manager": "ocisync", "operation": "Apply",
                        "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:rules.yaml": {}}}}],
                },
            }],
        });
        let seen = server
            .expect("GET", "/api/v1/configmaps", 200, listed)
            .await;
        assert!(seen.body.is_null());
        let ready = tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready()).await;
        assert!(matches!(ready, Ok(Ok(()))), "the cache never filled");
        let cm = reader.get(&ObjectRef::new("cm").within("team"));
        let cm = cm.expect("the listed ConfigMap is cached");
        assert!(cm.metadata.managed_fields.is_none(), "{:?}", cm.metadata);
        assert!(cm.metadata.labels.is_some(), "the labels are kept");
        let annotations: Vec<_> = cm.annotations().keys().collect();
        assert_eq!(
            annotations,
            ["ocisync.dev/revision"],
            "only kubectl's copy goes"
        );
        watch.abort();
    }

    #[test]
    fn a_relist_wakes_its_bundles_once_the_cache_holds_them() {
        let (reader, mut writer) = reflector::store::<RuleBundle>();
        let bundle = |name: &str| {
            let mut b = RuleBundle::new(name, Default::default());
            b.metadata.namespace = Some("team".into());
            b
        };
        let names = |woken: Vec<Result<RuleBundle, watcher::Error>>| -> Vec<String> {
            woken
                .into_iter()
                .filter_map(|b| b.ok()?.metadata.name)
                .collect()
        };
        let mut woken = Vec::new();
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(bundle("b1")),
            watcher::Event::InitApply(bundle("b2")),
            watcher::Event::InitDone,
        ] {
            writer.apply_watcher_event(&event);
            let now = names(to_reconcile(Ok(event), &reader));
            woken.push(now);
        }
        assert!(woken[..3].iter().all(Vec::is_empty), "{woken:?}");
        let mut all = woken[3].clone();
        all.sort();
        assert_eq!(all, ["b1", "b2"]);
        // between relists, each change wakes its bundle
        let applied = watcher::Event::Apply(bundle("b3"));
        writer.apply_watcher_event(&applied);
        assert_eq!(names(to_reconcile(Ok(applied), &reader)), ["b3"]);
        let deleted = watcher::Event::Delete(bundle("b3"));
        assert!(to_reconcile(Ok(deleted), &reader).is_empty());
    }
}
