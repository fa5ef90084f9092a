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

use crate::api::reason::Class;
use crate::backoff::retry_delay;

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

/// Runs until SIGTERM/SIGINT: serves `/healthz`, `/readyz` and `/metrics`, watches
/// RuleBundles and this node's Node, and runs a pass on every change they see.
pub async fn run(client: Client, options: Options) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let http = fetch::client(options.timeout)
        .context("cannot set up the HTTP client for the controller's artifact server")?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let server = Server::start(options.listen, metrics.clone(), ready.clone()).await?;
    let wake = Arc::new(Notify::new());
    let caches = Caches::watch(&client, &options, wake.clone());
    let host = host::Host::new(
        options.host_root.clone(),
        options.state_dir.clone(),
        options.allow.clone(),
    );
    let reporter = report::Reporter::new(
        Api::<NodeReport>::all(client.clone()),
        options.node_name.clone(),
    );
    let passes = Passes {
        client: &client,
        options: &options,
        env: sync::Env {
            host: &host,
            budget: &options.budget,
            controller_url: options.controller_url.trim_end_matches('/'),
            http: &http,
            reporter: &reporter,
            seed: crate::backoff::seed_of(&options.node_name),
        },
        metrics: &metrics,
        ready: &ready,
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    tracing::info!(node = %options.node_name, host_root = %options.host_root.display(), controller = %options.controller_url, "agent started");
    // Nothing is removed before both caches hold the full picture.
    let started = tokio::select! {
        _ = &mut shutdown => false,
        _ = caches.wait_until_ready() => true,
    };
    if started {
        passes.run(&caches, &wake, shutdown).await;
        tracing::info!("shutting down");
    }
    caches.task.abort();
    server.stop().await;
    Ok(())
}

/// `/healthz`, `/readyz` (ready after the first pass) and `/metrics`, until stopped.
struct Server {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(
        listen: std::net::SocketAddr,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
    ) -> anyhow::Result<Server> {
        use anyhow::Context as _;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let stop = CancellationToken::new();
        let state = ServerState {
            misses: Default::default(),
            store: None,
            metrics,
            ready,
        };
        let task = tokio::spawn(crate::server::serve(
            listener,
            Arc::new(state),
            stop.clone(),
        ));
        Ok(Server { stop, task })
    }

    /// Stops serving, waiting up to 5 s for requests in flight.
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// What the watches keep, each change waking the pass loop: every RuleBundle (trimmed to
/// what the agent reads, see [`cache`]) and this node's Node (labels only).
struct Caches {
    bundles: reflector::Store<RuleBundle>,
    nodes: reflector::Store<PartialObjectMeta<Node>>,
    /// Both watches.
    task: tokio::task::JoinHandle<()>,
}

impl Caches {
    fn watch(client: &Client, options: &Options, wake: Arc<Notify>) -> Caches {
        let (nodes, node_writer) = reflector::store::<PartialObjectMeta<Node>>();
        let (bundles, bundle_writer) = reflector::store::<RuleBundle>();
        let bundle_watch =
            watch_bundles(client, options, nodes.clone(), bundle_writer, wake.clone());
        let node_watch = watch_node(client, &options.node_name, node_writer, wake);
        let task = tokio::spawn(async move {
            tokio::join!(bundle_watch, node_watch);
        });
        Caches {
            bundles,
            nodes,
            task,
        }
    }

    async fn wait_until_ready(&self) {
        let _ = tokio::join!(
            self.bundles.wait_until_ready(),
            self.nodes.wait_until_ready()
        );
    }
}

/// Watches every RuleBundle in small list pages (a page is decoded whole before it is
/// trimmed), keeping file lists only for bundles that select this node (see [`cache`]).
fn watch_bundles(
    client: &Client,
    options: &Options,
    nodes: reflector::Store<PartialObjectMeta<Node>>,
    writer: reflector::store::Writer<RuleBundle>,
    wake: Arc<Notify>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (node_name, allow) = (options.node_name.clone(), options.allow.clone());
    watcher(
        Api::<RuleBundle>::all(client.clone()),
        watcher::Config::default()
            .any_semantic()
            .page_size(LIST_PAGE),
    )
    .backoff(crate::backoff::agent_watch(&node_name))
    .modify(move |b| {
        let node = nodes.get(&ObjectRef::new(&node_name));
        cache::slim(b, node.as_ref().map(|n| n.labels()), &allow);
    })
    .reflect(writer)
    .for_each(move |event| {
        if let Err(e) = &event {
            tracing::warn!(error = %e, "RuleBundle watch");
        }
        wake.notify_one();
        async {}
    })
}

/// Watches this node's Node: only label changes matter, its heartbeats do not wake the
/// agent.
fn watch_node(
    client: &Client,
    node_name: &str,
    writer: reflector::store::Writer<PartialObjectMeta<Node>>,
    wake: Arc<Notify>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default()
            .fields(&format!("metadata.name={node_name}"))
            .any_semantic(),
    )
    .backoff(crate::backoff::agent_watch(node_name))
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicates::labels, Default::default())
    .for_each(move |event| {
        if let Err(e) = &event {
            tracing::warn!(error = %e, "Node watch");
        }
        wake.notify_one();
        async {}
    })
}

/// The pass loop and what it needs.
struct Passes<'a> {
    client: &'a Client,
    options: &'a Options,
    env: sync::Env<'a>,
    metrics: &'a Metrics,
    ready: &'a AtomicBool,
}

impl Passes<'_> {
    /// Runs a pass now, then on every wake-up of the watches, after a failure (see
    /// [`next_wait`]), and every `resync` a full one (drift repair), until `shutdown`.
    async fn run(
        &self,
        caches: &Caches,
        wake: &Notify,
        mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) {
        let mut memory = sync::Memory::default();
        let mut whole = cache::Whole::default();
        let mut next_full = tokio::time::Instant::now();
        let mut failures = 0u32;
        let mut last: Option<Class> = None;
        loop {
            let full = tokio::time::Instant::now() >= next_full;
            if full {
                next_full = tokio::time::Instant::now() + self.options.resync;
            }
            let node = caches.nodes.get(&ObjectRef::new(&self.options.node_name));
            let failed = match node {
                None => {
                    tracing::warn!(node = %self.options.node_name, "this node's Node object is not found; waiting");
                    Some(Class::Waiting)
                }
                Some(node) => {
                    let bundles = caches.bundles.state();
                    self.one(&mut memory, &mut whole, bundles, &node, full)
                        .await
                }
            };
            failures = failures_in_a_row(failed, last, failures);
            last = failed;
            let until_full = next_full.saturating_duration_since(tokio::time::Instant::now());
            let (seed, resync) = (self.env.seed, self.options.resync);
            let wait = next_wait(failed, failures, seed, resync, until_full);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass and its report; the class of its most pressing failure (a report not
    /// written is transient), `None` when there was none.
    async fn one(
        &self,
        memory: &mut sync::Memory,
        whole: &mut cache::Whole,
        bundles: Vec<Arc<RuleBundle>>,
        node: &PartialObjectMeta<Node>,
        full: bool,
    ) -> Option<Class> {
        let started = std::time::Instant::now();
        memory.node_uid = node.uid().unwrap_or_default();
        let allow = &self.options.allow;
        let state = whole
            .complete(self.client, bundles, node.labels(), allow)
            .await;
        let outcome = sync::pass(&self.env, memory, &state, node.labels(), full).await;
        let deciding = report::deciding_reason(&outcome);
        let spec = report::spec(outcome);
        let seconds = started.elapsed().as_secs_f64();
        let result = deciding.class().metric_label();
        self.metrics
            .reconcile("NodeFiles", result, deciding.as_str(), seconds);
        self.ready.store(true, Ordering::Relaxed);
        let written = sync::report_pass(&self.env, memory, spec, full).await;
        if written.is_err() || memory.removal_failed {
            return Some(Class::Transient);
        }
        Some(deciding.class()).filter(|c| c.is_failure())
    }
}

/// Failed passes in a row of the same class, counting `failed` after `before`'s `count`:
/// a pass of another class starts the count again (a bundle stalled for good must not
/// slow another one's transient retries), and a stalled or clean pass resets it.
fn failures_in_a_row(failed: Option<Class>, before: Option<Class>, count: u32) -> u32 {
    match failed {
        None | Some(Class::Stalled) => 0,
        Some(class) if before == Some(class) => count.saturating_add(1),
        Some(_) => 1,
    }
}

/// How long the pass loop waits for a wake-up after a pass whose most pressing failure was
/// of class `failed`, the `failures`-th in a row: the backoff of that class (transient: 5 s
/// doubling, waiting: 10 s doubling), jittered by the node's `seed`, up to `resync`; a
/// stalled failure (a directory not allowed, a bad path) or none waits for a change or
/// `resync`. Never past the next full pass.
fn next_wait(
    failed: Option<Class>,
    failures: u32,
    seed: u64,
    resync: Duration,
    until_full: Duration,
) -> Duration {
    let wait = failed
        .and_then(|class| retry_delay(class, failures, seed, None))
        .map_or(resync, |d| d.min(resync));
    wait.min(until_full)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::seed_of;

    const RESYNC: Duration = Duration::from_secs(300);
    const LONG: Duration = Duration::from_secs(3600);

    const T: Option<Class> = Some(Class::Transient);

    #[test]
    fn failed_passes_back_off_by_class_with_jitter_up_to_resync() {
        let seed = seed_of("node-1");
        assert_eq!(next_wait(None, 0, seed, RESYNC, LONG), RESYNC);
        for (failures, raw) in [
            (1u32, 5u64),
            (2, 10),
            (3, 20),
            (6, 160),
            (7, 300),
            (50, 300),
        ] {
            let wait = next_wait(T, failures, seed, RESYNC, LONG);
            let raw = Duration::from_secs(raw);
            assert!(wait <= raw && wait >= raw * 3 / 4, "{failures}: {wait:?}");
        }
        // a host file in the way or a full disk: slower; a refused directory: a change
        let waiting = next_wait(Some(Class::Waiting), 1, seed, RESYNC, LONG);
        assert!(waiting > Duration::from_secs(5) && waiting <= Duration::from_secs(10));
        assert_eq!(
            next_wait(Some(Class::Stalled), 3, seed, RESYNC, LONG),
            RESYNC
        );
        // never past the next full pass
        let soon = Duration::from_secs(2);
        assert_eq!(next_wait(None, 0, seed, RESYNC, soon), soon);
        assert_eq!(next_wait(T, 4, seed, RESYNC, soon), soon);
    }

    #[test]
    fn a_failure_of_another_class_starts_the_backoff_again() {
        let stalled = Some(Class::Stalled);
        let mut count = 0;
        let mut last = None;
        // a bundle another namespace aimed at a refused directory, on every pass
        for _ in 0..8 {
            count = failures_in_a_row(stalled, last, count);
            last = stalled;
        }
        assert_eq!(count, 0);
        count = failures_in_a_row(T, last, count);
        assert_eq!(count, 1);
        let wait = next_wait(T, count, seed_of("node-1"), RESYNC, LONG);
        assert!(wait <= Duration::from_secs(5), "{wait:?}");
        assert_eq!(failures_in_a_row(T, T, 4), 5);
        assert_eq!(failures_in_a_row(Some(Class::Waiting), T, 4), 1);
        assert_eq!(failures_in_a_row(None, T, 4), 0);
    }

    #[test]
    fn nodes_failing_together_retry_apart() {
        let waits: std::collections::HashSet<Duration> = (0..100)
            .map(|i| next_wait(T, 3, seed_of(&format!("node-{i}")), RESYNC, LONG))
            .collect();
        assert!(waits.len() > 90, "{}", waits.len());
    }
}
