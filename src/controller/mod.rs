//! `ocisync controller`: reconciles ArtifactSources into the content store, serves the
//! store in-cluster (artifact server, metrics, health), and reconciles RuleBundles into
//! ConfigMaps.

pub mod bundle;
pub mod context;
pub mod quota;
pub mod schedule;
pub mod secrets;
pub mod source;
pub mod spec;
pub mod status;

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
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::{ArtifactSource, NodeReport, RuleBundle};
use crate::bundle::configmap::MANAGED_BY;
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

/// Runs until SIGTERM/SIGINT: the artifact server and the ArtifactSource controller.
pub async fn run(client: Client, options: Options) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let store = Arc::new(open_store(options.store_dir.clone(), options.store_limits).await?);
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    tracing::info!(listen = %options.listen, base_url = %options.base_url, "artifact server listening");
    let server = tokio::spawn(server::serve_with(
        listener,
        Arc::new(ServerState {
            store: Some(store.clone()),
            metrics: metrics.clone(),
            ready: ready.clone(),
        }),
        options.server,
        shutdown.clone(),
    ));

    #[allow(clippy::type_complexity)]
    let (sources, secrets, bundles, config_maps): (
        Api<ArtifactSource>,
        Api<PartialObjectMeta<Secret>>,
        Api<RuleBundle>,
        Api<PartialObjectMeta<ConfigMap>>,
    ) = match &options.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    // One watch of ArtifactSources feeds both controllers: their own, and the bundles'
    // (a new source revision reaches the bundles that use it at once).
    let (source_reader, source_writer) = reflector::store_shared::<ArtifactSource>(1024);
    let subscribe = || {
        source_writer
            .subscribe()
            .ok_or_else(|| anyhow::anyhow!("the ArtifactSource store is not shared"))
    };
    let (source_events, source_events_for_bundles) = (subscribe()?, subscribe()?);
    let source_watch = watcher(sources, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect_shared(source_writer)
        .for_each(|event| async move {
            if let Err(e) = event {
                tracing::warn!(error = %e, "ArtifactSource watch");
            }
        });
    let source_watch = tokio::spawn(source_watch);
    let source_controller = Controller::for_shared_stream(source_events, source_reader.clone())
        .with_config(controller::Config::default().concurrency(options.concurrency));
    let bundle_controller: Controller<RuleBundle> =
        Controller::new(bundles, watcher::Config::default().any_semantic())
            .with_config(controller::Config::default().concurrency(options.concurrency));
    // The ConfigMaps ocisync wrote, by label and metadata only: an edit or a deletion wakes
    // the owning bundle, which puts it back.
    let (cm_reader, cm_writer) = reflector::store();
    let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let cm_events = watcher(
        config_maps,
        watcher::Config::default().labels(&managed).any_semantic(),
    )
    .default_backoff()
    .reflect(cm_writer)
    .touched_objects();
    // Nodes (labels only matter) and the agents' reports: they move `status.nodes`.
    let (node_reader, node_writer) = reflector::store();
    let node_events = watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(node_writer)
    .touched_objects()
    .predicate_filter(predicates::labels, Default::default());
    let (report_reader, report_writer) = reflector::store();
    let report_events = watcher(
        Api::<NodeReport>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(report_writer)
    .touched_objects();
    let reporter = Reporter {
        controller: "ocisync-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        store,
        metrics,
        recorder: Recorder::new(client.clone(), reporter),
        base_url: options.base_url.trim_end_matches('/').to_string(),
        registry_timeout: options.registry_timeout,
        sources: source_reader,
        bundles: bundle_controller.store(),
        config_maps: cm_reader,
        nodes: node_reader,
        reports: report_reader,
        written: Default::default(),
        memory: Default::default(),
        artifacts: Default::default(),
        pull_locks: Default::default(),
        checks: tokio::sync::Semaphore::new(context::CONCURRENT_CHECKS),
    });
    // With --watch-secrets, Secrets by metadata only: a change re-reconciles the sources
    // that use the Secret. Without it (the chart's default) the controller needs only `get`
    // on Secrets, reads the ones sources name at each check, and cannot list any.
    let source_controller = if options.watch_secrets {
        let secret_changes = watcher(secrets, watcher::Config::default().any_semantic())
            .touched_objects()
            .predicate_filter(
                kube::runtime::predicates::resource_version,
                Default::default(),
            );
        let mapper_ctx = ctx.clone();
        source_controller.watches_stream(secret_changes, move |s| mapper_ctx.sources_using(&s))
    } else {
        source_controller
    };
    let bundle_mapper_ctx = ctx.clone();
    let node_mapper_ctx = ctx.clone();
    let report_mapper_ctx = ctx.clone();
    let gc_ctx = ctx.clone();
    let gc_stop = shutdown.clone();
    // Every minute: reports of deleted nodes; every fifth minute: the store's garbage.
    let gc = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        let mut n = 0u32;
        loop {
            tokio::select! {
                _ = gc_stop.cancelled() => break,
                _ = tick.tick() => {
                    n = n.wrapping_add(1);
                    prune_reports(&gc_ctx).await;
                    if n.is_multiple_of(5) {
                        collect_garbage(&gc_ctx).await;
                    }
                }
            }
        }
    });
    ready.store(true, Ordering::Relaxed);
    let sources_done = source_controller
        .shutdown_on_signal()
        .run(source::reconcile, error_policy, ctx.clone())
        .for_each(|r| log_error("ArtifactSource", r));
    let bundles_done = bundle_controller
        .owns_stream(cm_events)
        .watches_shared_stream(source_events_for_bundles, move |s| {
            bundle_mapper_ctx.bundles_using(&s)
        })
        .watches_stream(node_events, move |_| node_mapper_ctx.bundles_on_nodes())
        .watches_stream(report_events, move |r| {
            report_mapper_ctx.bundles_in_report(&r)
        })
        .shutdown_on_signal()
        .run(bundle::reconcile, error_policy, ctx)
        .for_each(|r| log_error("RuleBundle", r));
    tokio::join!(sources_done, bundles_done);
    source_watch.abort();
    tracing::info!("shutting down");
    ready.store(false, Ordering::Relaxed);
    shutdown.cancel();
    gc.abort();
    match tokio::time::timeout(Duration::from_secs(15), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "artifact server"),
        Err(_) => tracing::warn!("artifact server did not stop within 15s"),
        _ => {}
    }
    Ok(())
}

async fn log_error<T, E: std::fmt::Display>(kind: &'static str, result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(kind, error = %e, "reconcile");
    }
}

fn error_policy<K>(_object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Removes stored revisions no source needs (keeping each source's previous revision).
pub async fn collect_garbage(ctx: &Context) {
    if tokio::time::timeout(Duration::from_secs(5), ctx.sources.wait_until_ready())
        .await
        .is_err()
    {
        return; // the full list of sources is not known yet: keep everything
    }
    // keys that are not digests name nothing stored
    let keep = ctx
        .revisions_in_use()
        .iter()
        .filter_map(|k| crate::digest::Digest::parse(k).ok())
        .collect();
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

/// A Kubernetes API error in one line, without request bodies.
pub fn api_error_summary(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

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
}
