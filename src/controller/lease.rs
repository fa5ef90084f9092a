//! Leader election on a coordination.k8s.io/v1 Lease, written here rather than taken from a
//! crate: it is one small loop (the client-go algorithm: take a Lease whose holder has not
//! renewed it for its whole duration, as this replica's own clock observed), and the part
//! that matters most, stopping every write the moment leadership may be gone, needs
//! [`Leadership`] to be checked by the API client itself ([`guarded`]).
//!
//! Safety margin: the leader counts itself leading only until `renew_deadline` after its
//! last successful renewal; another replica takes over only after it saw the Lease unchanged
//! for `lease_duration`, which is longer. A paused or partitioned leader therefore stops
//! writing before anyone else may start.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::errors::api_error_summary;

/// How this replica takes part in leader election.
#[derive(Clone, Debug)]
pub struct Election {
    pub name: String,
    pub namespace: String,
    /// This replica's name in the Lease (the pod's name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// The annotation on the Lease naming the leader's own artifact server, which the other
/// replicas fill their stores from.
pub const ADVERTISE: &str = "ocisync.dev/artifact-server";

/// Whether this process may write: shared by the elector (which renews) and the API client
/// (which refuses writes when it may not).
#[derive(Clone, Debug)]
pub struct Leadership(Arc<Mutex<Term>>);

#[derive(Debug)]
enum Term {
    /// No election: this process always leads.
    Always,
    /// Leads until `renewed + renew_deadline`; `None`: not leading.
    Until {
        renewed: Option<Instant>,
        deadline: Duration,
    },
}

impl Leadership {
    /// A process that runs alone and always leads.
    pub fn always() -> Self {
        Leadership(Arc::new(Mutex::new(Term::Always)))
    }

    /// Not leading until renewals say so.
    pub fn elected(renew_deadline: Duration) -> Self {
        Leadership(Arc::new(Mutex::new(Term::Until {
            renewed: None,
            deadline: renew_deadline,
        })))
    }

    /// Whether writes are allowed now.
    pub fn is_leading(&self) -> bool {
        self.left().is_some()
    }

    /// How long leadership lasts without another renewal (`Duration::MAX`: always).
    pub fn left(&self) -> Option<Duration> {
        let Ok(term) = self.0.lock() else {
            return None;
        };
        match &*term {
            Term::Always => Some(Duration::MAX),
            Term::Until { renewed, deadline } => {
                let left = deadline.checked_sub(renewed.as_ref()?.elapsed())?;
                (!left.is_zero()).then_some(left)
            }
        }
    }

    fn renewed_at(&self, at: Option<Instant>) {
        if let Ok(mut term) = self.0.lock()
            && let Term::Until { renewed, .. } = &mut *term
        {
            *renewed = at;
        }
    }
}

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It does not exist: create it holding it.
    Create,
    /// This replica holds it: renew.
    Renew,
    /// Free, released, or not renewed for its duration: take it.
    TakeOver,
    /// Another replica holds it.
    Wait { holder: String },
}

/// Decides from the Lease's spec (`None`: no Lease) and how long this replica has seen its
/// record unchanged. Pure, for tests on plain data.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    if holder.is_empty() || unchanged_for >= duration {
        return Decision::TakeOver;
    }
    Decision::Wait {
        holder: holder.to_string(),
    }
}

/// Takes part in the election: tries to take the Lease, renews it, releases it.
pub struct Elector {
    api: Api<Lease>,
    election: Election,
    advertise: Option<String>,
    leadership: Leadership,
    /// The Lease record last seen (holder and renew time) and when it was first seen so.
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(
        client: kube::Client,
        election: Election,
        advertise: Option<String>,
        leadership: Leadership,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, &election.namespace),
            election,
            advertise,
            leadership,
            observed: None,
        }
    }

    /// Tries until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.bounded_attempt().await {
                Ok(true) => {
                    tracing::info!(lease = %self.election.name, identity = %self.election.identity, "leading");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.election.retry_period).await;
        }
    }

    /// Renews every retry period; returns once leadership is lost (no renewal within the
    /// renew deadline, or another replica holds the Lease).
    pub async fn keep(&mut self) {
        loop {
            let Some(left) = self.leadership.left() else {
                return;
            };
            tokio::time::sleep(self.election.retry_period.min(left)).await;
            match self.bounded_attempt().await {
                Ok(true) => {}
                Ok(false) => {
                    self.leadership.renewed_at(None);
                    return;
                }
                // a slow or failed renewal is retried until the renew deadline runs out
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
            }
        }
    }

    /// Gives the Lease up (on shutdown), so another replica takes it at once.
    pub async fn release(&mut self) {
        if !self.leadership.is_leading() {
            return;
        }
        self.leadership.renewed_at(None);
        let Ok(Some(mut lease)) = self.api.get_opt(&self.election.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.election.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.election.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader Lease"),
            Err(e) => tracing::debug!(error = %api_error_summary(&e), "Lease not released"),
        }
    }

    /// [`Self::attempt`] within half the renew deadline: a request that hangs must not
    /// stall the election (a follower would never take over, a leader never notice).
    async fn bounded_attempt(&mut self) -> Result<bool, String> {
        let limit = self.election.renew_deadline / 2;
        match tokio::time::timeout(limit, self.attempt()).await {
            Ok(r) => r.map_err(|e| api_error_summary(&e)),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// One read and, when due, one write of the Lease: `true` when this replica now holds
    /// it. A write that loses a race (409) is `false`.
    async fn attempt(&mut self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        let current = self.api.get_opt(&self.election.name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let unchanged_for = self.observe(spec);
        let decision = decide(spec, &self.election.identity, unchanged_for);
        if let (Decision::TakeOver, Some(s)) = (&decision, spec) {
            let from = s.holder_identity.as_deref().unwrap_or_default();
            tracing::info!(from, unchanged_for = ?unchanged_for, "taking the leader Lease over");
        }
        let written = match (&decision, current) {
            (Decision::Wait { .. }, _) => return Ok(false),
            (Decision::Create, _) => {
                let lease = self.record(Lease::default(), true);
                self.api.create(&PostParams::default(), &lease).await
            }
            (_, Some(lease)) => {
                let lease = self.record(lease, decision == Decision::TakeOver);
                let name = &self.election.name;
                self.api.replace(name, &PostParams::default(), &lease).await
            }
            (_, None) => return Ok(false),
        };
        match written {
            Ok(_) => {
                self.leadership.renewed_at(Some(started));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// How long the Lease record has looked the same to this replica.
    fn observe(&mut self, spec: Option<&LeaseSpec>) -> Duration {
        let record = spec.map(|s| {
            let renew = s.renew_time.as_ref().map(|t| t.0.to_string());
            format!("{:?}/{:?}", s.holder_identity, renew)
        });
        let record = record.unwrap_or_default();
        match &self.observed {
            Some((seen, at)) if *seen == record => at.elapsed(),
            _ => {
                self.observed = Some((record, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// The Lease held by this replica: renewed now, acquired now when `new_term`.
    fn record(&self, mut lease: Lease, new_term: bool) -> Lease {
        let now = MicroTime(jiff::Timestamp::now());
        let e = &self.election;
        if lease.metadata.name.is_none() {
            lease.metadata = ObjectMeta {
                name: Some(e.name.clone()),
                namespace: Some(e.namespace.clone()),
                ..Default::default()
            };
        }
        if let Some(url) = &self.advertise {
            let annotations = lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            annotations.insert(ADVERTISE.to_string(), url.clone());
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        if new_term {
            let transitions = spec.lease_transitions.unwrap_or(0);
            let taken = spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty());
            spec.lease_transitions = Some(transitions.saturating_add(i32::from(taken)));
            spec.acquire_time = Some(now.clone());
        }
        spec.holder_identity = Some(e.identity.clone());
        // whole seconds, rounded up: the others must never wait less than this replica leads
        let seconds = e.lease_duration.as_secs() + u64::from(e.lease_duration.subsec_nanos() > 0);
        spec.lease_duration_seconds = i32::try_from(seconds).ok();
        spec.renew_time = Some(now);
        lease
    }
}

/// The leader's artifact server as the Lease advertises it (for a follower's fill), unless
/// this replica is the holder.
pub async fn leader_url(api: &Api<Lease>, name: &str, me: &str) -> Option<String> {
    let lease = api.get_opt(name).await.ok()??;
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref()?;
    if holder.is_empty() || holder == me || !renewed_lately(spec) {
        return None;
    }
    lease.metadata.annotations?.remove(ADVERTISE)
}

/// Whether the Lease was renewed within its duration (by this machine's clock): a dead
/// leader's address may belong to another pod by now.
fn renewed_lately(spec: &LeaseSpec) -> bool {
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return false;
    };
    let age = jiff::Timestamp::now().duration_since(renewed.0);
    age < jiff::SignedDuration::from_secs(i64::from(seconds))
}

/// An API client that refuses every write (anything but GET) while `leadership` says this
/// process may not write: the one place that enforces "only the leader writes".
pub fn guarded(client: kube::Client, leadership: Leadership) -> kube::Client {
    let namespace = client.default_namespace().to_string();
    kube::Client::new(Guarded { client, leadership }, namespace)
}

#[derive(Clone)]
struct Guarded {
    client: kube::Client,
    leadership: Leadership,
}

/// A write refused because this replica does not lead.
#[derive(Debug, thiserror::Error)]
#[error("not the leader: writes are refused")]
pub struct NotLeader;

impl tower_service::Service<http::Request<kube::client::Body>> for Guarded {
    type Response = http::Response<kube::client::Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let left = match *request.method() {
            http::Method::GET => Some(Duration::MAX),
            _ => self.leadership.left(),
        };
        let client = self.client.clone();
        Box::pin(async move {
            let Some(left) = left else {
                return Err(Box::new(NotLeader) as Self::Error);
            };
            // a write still waiting for its answer when leadership may be gone is
            // abandoned; what the API server did with it, a later leader sees and repairs
            match tokio::time::timeout(left, client.send(request)).await {
                Ok(r) => r.map_err(|e| Box::new(e) as Self::Error),
                Err(_) => Err(Box::new(NotLeader) as Self::Error),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_or_not_renewed_for_its_duration() {
        let s = Duration::from_secs;
        assert_eq!(decide(None, "a", s(0)), Decision::Create);
        assert_eq!(decide(Some(&spec("a", 15)), "a", s(99)), Decision::Renew);
        let wait = Decision::Wait { holder: "b".into() };
        assert_eq!(decide(Some(&spec("b", 15)), "a", s(0)), wait);
        assert_eq!(decide(Some(&spec("b", 15)), "a", s(14)), wait);
        assert_eq!(decide(Some(&spec("b", 15)), "a", s(15)), Decision::TakeOver);
        // released on shutdown: taken at once
        assert_eq!(decide(Some(&spec("", 1)), "a", s(0)), Decision::TakeOver);
        let released = LeaseSpec::default();
        assert_eq!(decide(Some(&released), "a", s(0)), Decision::TakeOver);
    }

    #[test]
    fn leadership_ends_at_the_renew_deadline() {
        let l = Leadership::elected(Duration::from_millis(50));
        assert!(!l.is_leading());
        l.renewed_at(Some(Instant::now()));
        assert!(l.is_leading());
        l.renewed_at(Instant::now().checked_sub(Duration::from_millis(60)));
        assert!(!l.is_leading());
        l.renewed_at(Some(Instant::now()));
        l.renewed_at(None);
        assert!(!l.is_leading());
        assert!(Leadership::always().is_leading());
    }

    #[tokio::test]
    async fn a_replica_that_does_not_lead_sends_no_write_and_reads_freely() {
        let (client, mut server) = crate::mock_api::pair();
        let leadership = Leadership::elected(Duration::from_secs(10));
        let api: Api<Lease> = Api::namespaced(guarded(client, leadership.clone()), "ns");
        let lease = serde_json::json!({"metadata": {"name": "l", "namespace": "ns"}});
        let read = tokio::spawn({
            let api = api.clone();
            async move { api.get("l").await.map(|_| ()) }
        });
        server
            .expect(
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
                200,
                lease.clone(),
            )
            .await;
        assert!(read.await.expect("task").is_ok());
        // not leading: refused here, nothing reaches the API server
        let refused = api.delete("l", &Default::default()).await;
        assert!(refused.is_err());
        // leading: the write goes out
        leadership.renewed_at(Some(Instant::now()));
        let write =
            tokio::spawn(async move { api.delete("l", &Default::default()).await.map(|_| ()) });
        server
            .expect(
                "DELETE",
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
                200,
                lease,
            )
            .await;
        assert!(write.await.expect("task").is_ok());
        server.expect_no_more().await;
    }

    #[test]
    fn a_leader_address_counts_only_while_its_lease_is_renewed() {
        let mut s = spec("b", 15);
        assert!(!renewed_lately(&s), "never renewed");
        s.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        assert!(renewed_lately(&s));
        let old = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(16);
        s.renew_time = Some(MicroTime(old));
        assert!(!renewed_lately(&s));
    }
}
