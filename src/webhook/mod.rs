//! The push webhook receiver: registries (CNCF Distribution notifications, Harbor, or a
//! generic `{"repository": ..., "tag": ...}`) tell the controller a tag moved, and the
//! ArtifactSources tracking that repository are asked to check at once.
//!
//! An HTTP/1.1 server on its own port. It answers `POST` on any path (`/hook` in the
//! docs; other methods get 405), after authentication (see [`auth`]): `202` once the
//! pushes are matched to sources (the patches that wake them run afterwards, see
//! [`wake`]), `401` to anything unauthenticated, `400` to a payload it does not know,
//! `413` to a body over 1 MiB, `503` while this replica has not listed the sources yet
//! (the registry retries), `500` when a configured secret file cannot be read.
//!
//! Limits: at most 64 connections (more are closed at once), request headers within
//! 10 s, the body within 10 s more, read through a 1 MiB bound.

mod auth;
mod handler;
mod matching;
mod observe;
mod payload;
mod wake;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::Client;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::controller::view::SourcesView;
use crate::metrics::Metrics;
use observe::Observer;
use wake::{KubeRequestCheck, Limits, RequestCheck, Waker};

/// The largest body read.
pub const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send a request's headers (and how long an idle
/// keep-alive connection stays open).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// How long in-flight requests may take to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the receiver runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    /// File holding the bearer token (read at each request, so a rotated Secret applies).
    pub token_file: Option<PathBuf>,
    /// File holding the HMAC-SHA256 key.
    pub hmac_key_file: Option<PathBuf>,
}

/// What every request needs.
struct Receiver<P> {
    options: Options,
    sources: SourcesView,
    metrics: Arc<Metrics>,
    waker: Waker<P>,
}

/// Serves the receiver until `shutdown`.
pub async fn serve(
    options: Options,
    client: Client,
    sources: SourcesView,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    tracing::info!(
        listen = %options.listen,
        bearer_token = options.token_file.is_some(),
        hmac_signature = options.hmac_key_file.is_some(),
        "webhook receiver listening"
    );
    let view = sources.clone();
    let observer = Observer::new(Arc::new(move || view.snapshot()));
    let waker = Waker::new(
        KubeRequestCheck(client),
        observer,
        metrics.clone(),
        shutdown.clone(),
        Limits::default(),
    );
    let receiver = Arc::new(Receiver {
        options,
        sources,
        metrics,
        waker,
    });
    serve_on(listener, receiver, shutdown).await;
    Ok(())
}

/// Accepts connections until `shutdown`, then lets requests in flight finish.
async fn serve_on<P: RequestCheck>(
    listener: TcpListener,
    receiver: Arc<Receiver<P>>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "webhook: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(remote = %peer, "webhook: too many connections; closing this one");
            continue;
        };
        let (receiver, stop, hard) = (receiver.clone(), shutdown.clone(), hard_stop.clone());
        tracker.spawn(async move {
            connection(stream, peer, receiver, stop, hard).await;
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        hard_stop.cancel();
        tracker.wait().await;
    }
}

/// Serves one connection; on shutdown, finishes the request in flight and closes.
async fn connection<P: RequestCheck>(
    stream: TcpStream,
    peer: SocketAddr,
    receiver: Arc<Receiver<P>>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let service = service_fn(move |request| {
        let receiver = receiver.clone();
        async move { Ok::<_, std::convert::Infallible>(handler::handle(&receiver, peer, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = hard_stop.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(remote = %peer, error = %e, "webhook: connection error");
    }
}
