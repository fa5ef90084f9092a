//! `ocisync agent`: writes RuleBundles' `nodeFiles` onto this node, atomically, and reports
//! per bundle in this node's `NodeReport`. It reads RuleBundles and its own Node, fetches
//! file contents from the controller's artifact server by digest, and needs neither
//! registry credentials nor Secrets.

pub mod budget;
pub mod cache;
pub mod desired;
pub mod disk;
pub mod fetch;
mod host;
pub mod records;
pub mod report;
pub mod safedir;
pub mod sync;
mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::{NodeReport, RuleBundle};
use crate::metrics::Metrics;
use crate::server::ServerState;
use desired::AllowList;

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub node_name: String,
    /// Where the node's directories are mounted (`/host`).
    pub host_root: PathBuf,
    pub allow: AllowList,
    /// Byte budgets per bundle and per directory, and the free space kept.
    pub budget: budget::Budget,
    /// `http://host:port` of the controller's artifact server.
    pub controller_url: String,
    /// Where the agent remembers what it wrote (on the node, so it survives restarts).
    pub state_dir: PathBuf,
    /// How often every applied bundle is re-verified on disk (drift repair).
    pub resync: Duration,
    /// Read timeout for fetches.
    pub timeout: Duration,
    /// Address of `/healthz`, `/readyz` (ready after the first pass) and `/metrics`.
    pub listen: std::net::SocketAddr,
}

/// RuleBundles per page of the watch's list, where the API server paginates: each page is
/// held whole before its bundles are trimmed, and a bundle can be near the 1.5 MiB object
/// limit. (A list served from the API server's watch cache, as `any_semantic` asks for to
/// spare etcd, comes whole on servers that ignore the limit there.)
const LIST_PAGE: u32 = 20;

/// After a failed pass, the next one comes this soon (doubling up to `resync`).
const RETRY: Duration = Duration::from_secs(5);

/// Runs until SIGTERM/SIGINT.
pub async fn run(client: Client, options: Options) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let http = fetch::client(options.timeout)
        .context("cannot set up the HTTP client for the controller's artifact server")?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let stop_server = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let server = tokio::spawn(crate::server::serve(
        listener,
        Arc::new(ServerState {
            store: None,
            metrics: metrics.clone(),
            ready: ready.clone(),
        }),
        stop_server.clone(),
    ));
    let wake = Arc::new(Notify::new());
    let (nodes, node_writer) = reflector::store::<PartialObjectMeta<Node>>();
    let (bundles, bundle_writer) = reflector::store::<RuleBundle>();
    let bundle_wake = wake.clone();
    // File lists are kept only for bundles that select this node (see `cache`).
    let (node_reader, node_name) = (nodes.clone(), options.node_name.clone());
    let allow = options.allow.clone();
    // Small list pages: a page is decoded whole before it is trimmed.
    let bundle_watch = watcher(
        Api::<RuleBundle>::all(client.clone()),
        watcher::Config::default()
            .any_semantic()
            .page_size(LIST_PAGE),
    )
    .default_backoff()
    .modify(move |b| {
        let node = node_reader.get(&ObjectRef::new(&node_name));
        cache::slim(b, node.as_ref().map(|n| n.labels()), &allow);
    })
    .reflect(bundle_writer)
    .for_each(move |event| {
        if let Err(e) = &event {
            tracing::warn!(error = %e, "RuleBundle watch");
        }
        bundle_wake.notify_one();
        async {}
    });

    let node_wake = wake.clone();
    // Only label changes matter; the Node's heartbeats do not wake the agent.
    let node_watch = watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default()
            .fields(&format!("metadata.name={}", options.node_name))
            .any_semantic(),
    )
    .default_backoff()
    .reflect(node_writer)
    .applied_objects()
    .predicate_filter(predicates::labels, Default::default())
    .for_each(move |event| {
        if let Err(e) = &event {
            tracing::warn!(error = %e, "Node watch");
        }
        node_wake.notify_one();
        async {}
    });
    let watches = tokio::spawn(async move {
        tokio::join!(bundle_watch, node_watch);
    });

    let reporter = report::Reporter::new(
        Api::<NodeReport>::all(client.clone()),
        options.node_name.clone(),
    );
    let host = host::Host::new(
        options.host_root.clone(),
        options.state_dir.clone(),
        options.allow.clone(),
    );
    let env = sync::Env {
        host: &host,
        seed: crate::backoff::seed_of(&options.node_name),
        budget: &options.budget,
        controller_url: options.controller_url.trim_end_matches('/'),
        http: &http,
        reporter: &reporter,
    };
    let mut memory = sync::Memory::default();
    let mut whole = cache::Whole::default();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    tracing::info!(node = %options.node_name, host_root = %options.host_root.display(), controller = %options.controller_url, "agent started");
    // Nothing is removed before both caches hold the full picture.
    tokio::select! {
        _ = &mut shutdown => { watches.abort(); stop_server.cancel(); return Ok(()); }
        _ = async { let _ = tokio::join!(bundles.wait_until_ready(), nodes.wait_until_ready()); } => {}
    }
    let mut next_full = tokio::time::Instant::now();
    let mut retry: Option<Duration> = None;
    loop {
        let full = tokio::time::Instant::now() >= next_full;
        if full {
            next_full = tokio::time::Instant::now() + options.resync;
        }
        let node = nodes.get(&ObjectRef::new(&options.node_name));
        let failed = match node {
            None => {
                tracing::warn!(node = %options.node_name, "this node's Node object is not found; waiting");
                true
            }
            Some(node) => {
                let started = std::time::Instant::now();
                memory.node_uid = node.uid().unwrap_or_default();
                let state = whole
                    .complete(&client, bundles.state(), node.labels(), &options.allow)
                    .await;
                let outcome = sync::pass(&env, &mut memory, &state, node.labels(), full).await;
                let spec = report::spec(outcome);
                let failed = spec.failed > 0;
                metrics.reconcile(
                    "NodeFiles",
                    if failed { "failure" } else { "success" },
                    started.elapsed().as_secs_f64(),
                );
                ready.store(true, Ordering::Relaxed);
                let written = sync::publish(&env, &mut memory, |known| {
                    let stale =
                        known.spec != spec || known.instance.as_deref() != Some(&reporter.instance);
                    (full || stale).then_some(spec)
                })
                .await;
                if let Err(e) = &written {
                    tracing::warn!(error = %e, "cannot write the NodeReport");
                }
                failed || written.is_err()
            }
        };
        retry = failed.then(|| retry.map_or(RETRY, |d| d * 2).min(options.resync));
        let wait = retry
            .unwrap_or(options.resync)
            .min(next_full.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            _ = &mut shutdown => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("shutting down");
    watches.abort();
    stop_server.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
