//! `ocisync controller`'s process: the artifact server (which every replica runs), the
//! push webhook receiver, and either leading (alone, or holding the Lease) or following
//! (filling the store from the revisions in status) until SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;

use super::lease::{self, Election, Elector, Leadership};
use super::{Options, follow, lead, open_store, view};
use crate::metrics::Metrics;
use crate::server::{self, ServerState};
use crate::store::Store;

/// What every mode of the process shares.
pub struct Shared {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// The ArtifactSources the current mode's watch holds (for the webhook receiver).
    pub view: view::SourcesView,
    /// The artifact server's misses (see [`ServerState::misses`]).
    pub misses: Arc<crate::server::misses::Misses>,
    ready: Arc<AtomicBool>,
}

impl Shared {
    /// What `/readyz` answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// Runs until SIGTERM/SIGINT: the artifact server and, without leader election, the
/// controllers; with it, follows and leads as the Lease says. On the way out, the Lease is
/// released (so another replica takes over at once), then the server stops.
pub async fn run(client: Client, options: Options) -> anyhow::Result<()> {
    let store = Arc::new(open_store(options.store_dir.clone(), options.store_limits).await?);
    let metrics = Arc::new(Metrics::new());
    metrics.set_store_limit(store.limits().max_bytes);
    let server = Served::start(&options, store.clone(), metrics.clone()).await?;
    let stop = on_signal();
    let shared = Shared {
        store,
        metrics,
        view: view::SourcesView::default(),
        misses: server.misses.clone(),
        ready: server.ready.clone(),
    };
    let webhook = spawn_webhook(&options, &client, &shared, &server.shutdown);
    match options.election.clone() {
        None => {
            shared.metrics.set_leader(true); // alone: the only writer leads
            lead::lead(client, &options, &shared, stop).await
        }
        Some(election) => elect(client, &options, &shared, election, &stop).await,
    }
    tracing::info!("shutting down");
    if let Some(w) = webhook {
        w.abort();
    }
    server.stop().await;
    Ok(())
}

/// Follows until this replica holds the Lease, then leads until it loses it (and follows
/// again) or until `stop`.
async fn elect(
    client: Client,
    options: &Options,
    shared: &Shared,
    election: Election,
    stop: &CancellationToken,
) {
    let leadership = Leadership::elected(election.renew_deadline);
    let guarded = lease::guarded(client.clone(), leadership.clone());
    let advertise = options.advertise_url.clone();
    let mut elector = Elector::new(client.clone(), election.clone(), advertise, leadership);
    loop {
        shared.metrics.set_leader(false);
        shared.misses.set_following(true);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = elector.acquire() => {}
            _ = follow::follow(client.clone(), options, shared, &election) => {}
        }
        shared.metrics.set_leader(true);
        shared.misses.set_following(false);
        let term = stop.child_token();
        tokio::select! {
            _ = lead::lead(guarded.clone(), options, shared, term.clone()) => {
                elector.release().await;
                return;
            }
            _ = elector.keep() => {
                term.cancel();
                shared.metrics.set_objects(&[]); // a follower's counts would be stale
                tracing::warn!("lost the leader Lease: writes stopped, following again");
            }
        }
    }
}

/// Cancelled on SIGTERM or SIGINT.
fn on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received");
        token.cancel();
    });
    stop
}

/// The artifact server (with metrics and health), and what stops it.
struct Served {
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    ready: Arc<AtomicBool>,
    misses: Arc<crate::server::misses::Misses>,
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
        let misses = Arc::new(crate::server::misses::Misses::default());
        let state = Arc::new(ServerState {
            misses: misses.clone(),
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
            misses,
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

/// The push webhook receiver, when enabled; it stops with the artifact server.
fn spawn_webhook(
    options: &Options,
    client: &Client,
    shared: &Shared,
    stop: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let webhook = options.webhook.clone()?;
    let (client, view, stop) = (client.clone(), shared.view.clone(), stop.clone());
    let metrics = shared.metrics.clone();
    Some(tokio::spawn(async move {
        if let Err(e) = crate::webhook::serve(webhook, client, view, metrics, stop).await {
            tracing::error!(error = %e, "webhook receiver stopped");
        }
    }))
}
