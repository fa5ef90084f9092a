//! `ocisync controller`: reconciles ArtifactSources into the content store, serves the
//! store in-cluster (artifact server, metrics, health), and reconciles RuleBundles into
//! ConfigMaps.

pub mod bundle;
mod census;
pub mod context;
mod engine_pick;
pub mod events;
pub mod fill;
mod follow;
mod lead;
pub mod lease;
pub mod node_watch;
pub mod outcome;
pub mod quota;
mod run;
pub mod schedule;
pub mod secrets;
pub mod source;
pub mod source_users;
pub mod spec;
pub mod status;
pub mod verification;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::{Api, Resource, ResourceExt};

use crate::api::NodeReport;
use crate::api::reason::Class;
use crate::errors::api_error_summary;
use crate::server::ServerLimits;
use crate::store::{Store, StoreLimits};

use context::Context;
pub use run::{Shared, run};

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
