//! `ocisync controller`: reconciles ArtifactSources into the content store, serves the
//! store in-cluster (artifact server, metrics, health), and reconciles RuleBundles into
//! ConfigMaps.

pub mod bundle;
pub mod context;
pub mod lease;
pub mod outcome;
pub mod quota;
pub mod schedule;
pub mod secrets;
pub mod source;
pub mod spec;
pub mod status;
pub mod verification;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::reason::Class;
use crate::api::{ArtifactSource, NodeReport, RuleBundle};
use crate::bundle::configmap::MANAGED_BY;
use crate::errors::api_error_summary;
use crate::metrics::Metrics;
use crate::server::{self, ServerLimits, ServerState};
use crate::store::{Store, StoreLimits};

use context::Context;

/// Errors that end a reconcile early (talking to the API server); registry and content
/// problems are not errors here, they are recorded in status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {}", api_error_summary(.0))]
    Kube(#[source] kube::Error),
}

impl Error {
    /// How to retry: a request the API server refused (a 4xx other than a conflict or
    /// throttling: invalid, forbidden, over a size limit) will not pass by itself soon, so
    /// it waits on the slow backoff; conflicts, throttling, 5xx and transport errors are
    /// transient.
    pub fn class(&self) -> Class {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.message.contains("request is too large") => {
                Class::Waiting // etcd's size limit, which API servers answer with 500
            }
            Error::Kube(kube::Error::Api(s)) => match s.code {
                409 | 429 => Class::Transient,
                400..=499 => Class::Waiting,
                _ => Class::Transient,
            },
            Error::Kube(_) => Class::Transient,
        }
    }

    /// The reason logs and Events give: `ApiRequestRefused` or `ApiUnavailable`.
    pub fn reason(&self) -> &'static str {
        match self.class() {
            Class::Waiting => "ApiRequestRefused",
            _ => "ApiUnavailable",
        }
    }

    /// The `result` label of `ocisync_reconciles_total` for a reconcile that ended early.
    pub fn metric_label(&self) -> &'static str {
        "error"
    }
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub store_dir: PathBuf,
    pub listen: SocketAddr,
    /// `http://host:port` of the artifact server as agents reach it.
    pub base_url: String,
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    pub concurrency: u16,
    /// Watch Secrets (needs list/watch on Secrets) so a changed Secret re-checks at once.
    pub watch_secrets: bool,
    /// The longest a check's registry work may take, whatever a source's `spec.timeout`.
    pub registry_timeout: Duration,
    /// What clients of the artifact server may hold.
    pub server: ServerLimits,
    /// The store's size limit and per-namespace quota, as given.
    pub store_limits: StoreSizing,
    /// Leader election (several replicas); `None`: this process always leads.
    pub election: Option<lease::Election>,
    /// This replica's own artifact server URL, which the other replicas fill from.
    pub advertise_url: Option<String>,
    /// The push webhook receiver, when enabled.
    pub webhook: Option<crate::webhook::Options>,
}

/// The store's limits as flags give them; the size limit defaults to 90% of the volume.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreSizing {
    /// Most bytes of blobs the store holds; default: 90% of the volume.
    pub max_bytes: Option<u64>,
    /// The store volume's size when the filesystem is larger (an emptyDir's sizeLimit).
    pub volume_bytes: Option<u64>,
    /// Most bytes the revisions one namespace's sources keep may cost.
    pub namespace_max_bytes: Option<u64>,
}

/// Opens the store at `dir` with the limits `sizing` works out to.
async fn open_store(dir: PathBuf, sizing: StoreSizing) -> anyhow::Result<Store> {
    use anyhow::Context as _;
    let shown = dir.display().to_string();
    tokio::task::spawn_blocking(move || {
        let store = Store::open(&dir)?;
        let filesystem = store.filesystem_bytes().ok();
        let limits = StoreLimits {
            max_bytes: crate::store::global_limit(
                sizing.max_bytes,
                sizing.volume_bytes,
                filesystem,
            ),
            namespace_max_bytes: sizing.namespace_max_bytes,
        };
        tracing::info!(
            max_bytes = ?limits.max_bytes,
            namespace_max_bytes = ?limits.namespace_max_bytes,
            "content store limits"
        );
        Ok::<_, std::io::Error>(store.with_limits(limits))
    })
    .await?
    .with_context(|| format!("cannot open the content store at {shown}"))
}

/// Runs until SIGTERM/SIGINT: the artifact server, the ArtifactSource and RuleBundle
/// controllers and the garbage collector, then stops them in that order's reverse.
pub async fn run(client: Client, options: Options) -> anyhow::Result<()> {
    let store = Arc::new(open_store(options.store_dir.clone(), options.store_limits).await?);
    let metrics = Arc::new(Metrics::new());
    let server = Served::start(&options, store.clone(), metrics.clone()).await?;
    let apis = Apis::new(&client, options.namespace.as_deref());
    let SourceWatch {
        reader: source_reader,
        events: source_events,
        for_bundles,
        watch: source_watch,
    } = SourceWatch::start(apis.sources)?;
    let bundle_controller: Controller<RuleBundle> =
        Controller::new(apis.bundles, watcher::Config::default().any_semantic())
            .with_config(controller::Config::default().concurrency(options.concurrency));
    let (cm_reader, cm_events) = managed_config_maps(apis.config_maps);
    let (node_reader, node_events) = node_labels(client.clone());
    let (report_reader, report_events) = node_reports(client.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        store,
        metrics,
        recorder: Recorder::new(client.clone(), reporter()),
        base_url: options.base_url.trim_end_matches('/').to_string(),
        registry_timeout: options.registry_timeout,
        sources: source_reader.clone(),
        bundles: bundle_controller.store(),
        config_maps: cm_reader,
        nodes: node_reader,
        reports: report_reader,
        state: Default::default(),
    });
    let view = view::SourcesView::default();
    view.set(source_reader.clone());
    let webhook = spawn_webhook(&options, &client, &view, &ctx.metrics, &server.shutdown);
    let gc = spawn_gc(ctx.clone(), server.shutdown.clone());
    server.ready.store(true, Ordering::Relaxed);
    // each subscription to the shared watch is consumed by exactly one controller: one left
    // unread would hold the shared stream (and every controller) once its buffer filled
    let source_controller =
        source_controller(source_events, source_reader, &options, apis.secrets, &ctx);
    let bundles_done = bundle_controller
        .owns_stream(cm_events)
        .watches_shared_stream(for_bundles, {
            let ctx = ctx.clone();
            move |s| ctx.bundles_using(&s)
        })
        .watches_stream(node_events, {
            let ctx = ctx.clone();
            move |_| ctx.bundles_on_nodes()
        })
        .watches_stream(report_events, {
            let ctx = ctx.clone();
            move |r| ctx.bundles_in_report(&r)
        })
        .shutdown_on_signal()
        .run(bundle::reconcile, error_policy, ctx.clone())
        .for_each(|r| log_error("RuleBundle", r));
    let sources_done = source_controller
        .shutdown_on_signal()
        .run(source::reconcile, error_policy, ctx)
        .for_each(|r| log_error("ArtifactSource", r));
    tokio::join!(sources_done, bundles_done);
    tracing::info!("shutting down");
    source_watch.abort();
    gc.abort();
    if let Some(w) = webhook {
        w.abort();
    }
    server.stop().await;
    Ok(())
}

/// The artifact server (with metrics and health), and what stops it.
struct Served {
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
}

impl Served {
    async fn start(
        options: &Options,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        tracing::info!(listen = %options.listen, base_url = %options.base_url, "artifact server listening");
        let ready = Arc::new(AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        let state = Arc::new(ServerState {
            store: Some(store),
            metrics,
            ready: ready.clone(),
        });
        let task = tokio::spawn(server::serve_with(
            listener,
            state,
            options.server,
            shutdown.clone(),
        ));
        Ok(Served {
            task,
            ready,
            shutdown,
        })
    }

    /// Not ready any more, then stops, letting requests in flight finish (up to 15 s).
    async fn stop(self) {
        self.ready.store(false, Ordering::Relaxed);
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(15), self.task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "artifact server"),
            Err(_) => tracing::warn!("artifact server did not stop within 15s"),
            _ => {}
        }
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
            .default_backoff()
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
        .with_config(controller::Config::default().concurrency(options.concurrency));
    if !options.watch_secrets {
        return controller;
    }
    let changes = watcher(secrets, watcher::Config::default().any_semantic())
        .touched_objects()
        .predicate_filter(predicates::resource_version, Default::default());
    let ctx = ctx.clone();
    controller.watches_stream(changes, move |s| ctx.sources_using(&s))
}

/// The ConfigMaps ocisync wrote, by label and metadata only: an edit or a deletion wakes
/// the owning bundle, which puts it back.
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
    .default_backoff()
    .reflect(writer)
    .touched_objects();
    (reader, events)
}

/// Nodes by metadata; only label changes wake bundles (they move `status.nodes`).
fn node_labels(
    client: Client,
) -> (
    reflector::Store<PartialObjectMeta<Node>>,
    impl futures_util::Stream<Item = Result<PartialObjectMeta<Node>, watcher::Error>>,
) {
    let (reader, writer) = reflector::store();
    let events = watcher(
        Api::<PartialObjectMeta<Node>>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects()
    .predicate_filter(predicates::labels, Default::default());
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
    .default_backoff()
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

/// The push webhook receiver, when enabled; it stops with the artifact server.
fn spawn_webhook(
    options: &Options,
    client: &Client,
    view: &view::SourcesView,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let webhook = options.webhook.clone()?;
    let (client, view, metrics, stop) =
        (client.clone(), view.clone(), metrics.clone(), stop.clone());
    Some(tokio::spawn(async move {
        if let Err(e) = crate::webhook::serve(webhook, client, view, metrics, stop).await {
            tracing::error!(error = %e, "webhook receiver stopped");
        }
    }))
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

async fn log_error<T, E: std::fmt::Display>(kind: &'static str, result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(kind, error = %e, "reconcile");
    }
}

/// After a reconcile that ended early: the backoff of the error's class, per object (so a
/// status the API server keeps refusing is retried at most every 10 minutes, not every
/// few seconds for ever), jittered by its uid.
fn error_policy<K: Resource>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let uid = object.meta().uid.clone().unwrap_or_default();
    let failures = ctx.api_failed(&uid);
    let delay = api_retry_delay(error.class(), failures, &uid);
    let name = object.meta().name.as_deref().unwrap_or_default();
    tracing::warn!(object = name, reason = error.reason(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// When to retry after the `failures`-th API error in a row of `class` for object `uid`.
fn api_retry_delay(class: Class, failures: u32, uid: &str) -> Duration {
    crate::backoff::retry_delay(class, failures, crate::backoff::seed_of(uid), None)
        .unwrap_or(crate::backoff::WAITING.max)
}

/// Removes stored revisions no source needs (keeping each source's previous revision).
pub async fn collect_garbage(ctx: &Context) {
    let wait = Duration::from_secs(5);
    if tokio::time::timeout(wait, ctx.sources.wait_until_ready())
        .await
        .is_err()
    {
        return; // the full list of sources is not known yet: keep everything
    }
    let keep = ctx.revisions_in_use();
    // what belongs to bundles is forgotten only once every bundle is known
    let bundles_known = tokio::time::timeout(Duration::ZERO, ctx.bundles.wait_until_ready())
        .await
        .is_ok();
    ctx.prune(&keep, bundles_known);
    let store = ctx.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let report = store.gc(&keep);
        (report, store.usage())
    })
    .await;
    match result {
        Ok((Ok(report), usage)) => {
            ctx.metrics.set_store(&usage);
            tracing::debug!(?report, "store garbage collected");
        }
        Ok((Err(e), _)) => tracing::warn!(error = %e, "store garbage collection failed"),
        Err(e) => tracing::warn!(error = %e, "store garbage collection task failed"),
    }
}

/// Deletes the NodeReports of Nodes that no longer exist (the garbage collector does it too,
/// through their owner reference, where it runs).
pub async fn prune_reports(ctx: &Context) {
    let ready =
        async { tokio::join!(ctx.nodes.wait_until_ready(), ctx.reports.wait_until_ready()) };
    if tokio::time::timeout(Duration::from_secs(5), ready)
        .await
        .is_err()
    {
        return;
    }
    let api: Api<NodeReport> = Api::all(ctx.client.clone());
    for report in ctx.reports.state() {
        let name = report.name_any();
        if ctx.nodes.get(&reflector::ObjectRef::new(&name)).is_none() {
            match api.delete(&name, &Default::default()).await {
                Ok(_) => tracing::info!(node = %name, "removed the report of a deleted node"),
                Err(e) => {
                    tracing::debug!(node = %name, error = %api_error_summary(&e), "report not removed")
                }
            }
        }
    }
}

/// Now, as Kubernetes writes times (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// How long ago an RFC 3339 time was (None if unparsable or in the future).
pub fn since(time: &str) -> Option<Duration> {
    let then: jiff::Timestamp = time.parse().ok()?;
    let d = jiff::Timestamp::now().duration_since(then);
    Duration::try_from(d).ok()
}

#[cfg(test)]
mod mock_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && now.len() == 20, "{now}");
        assert!(since(&now).is_some_and(|d| d < Duration::from_secs(2)));
        assert_eq!(since("not a time"), None);
    }

    fn api_error(code: u16, message: &str) -> Error {
        Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        })))
    }

    #[test]
    fn refused_requests_back_off_slowly_and_never_every_five_seconds() {
        // a status over the size limit: 413 from the API server, or etcd's 500
        for refused in [
            api_error(413, "Request entity too large"),
            api_error(422, "status.conditions: Invalid value"),
            api_error(500, "etcdserver: request is too large"),
            api_error(403, "forbidden"),
        ] {
            assert_eq!(refused.class(), Class::Waiting, "{refused}");
            assert_eq!(refused.reason(), "ApiRequestRefused");
        }
        for passing in [api_error(409, "conflict"), api_error(503, "unavailable")] {
            assert_eq!(passing.class(), Class::Transient, "{passing}");
        }
        let delays: Vec<Duration> = (1..=12)
            .map(|n| api_retry_delay(Class::Waiting, n, "uid-1"))
            .collect();
        assert!(delays[0] >= Duration::from_secs(7), "{delays:?}");
        assert!(
            delays
                .windows(2)
                .all(|w| w[1] >= w[0] || w[1] >= Duration::from_secs(450))
        );
        assert!(delays[11] >= Duration::from_secs(450) && delays[11] <= Duration::from_secs(600));
        // objects failing together spread out
        assert_ne!(
            api_retry_delay(Class::Transient, 3, "uid-1"),
            api_retry_delay(Class::Transient, 3, "uid-2")
        );
    }
}
