//! Prometheus metrics of the controller, served as OpenMetrics text on `/metrics`.
//!
//! Every label value is a `&'static str` (or a status code), so the number of series is
//! bounded by the code, never by user input.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::store::StoreUsage;

/// Histogram buckets for reconcile durations, in seconds.
const RECONCILE_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: &'static str,
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    shape: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    kind: &'static str,
    ready: &'static str,
    reason: &'static str,
}

/// One series of `ocisync_objects`: (kind, Ready status, Ready reason) and the count.
pub type ObjectCount = ((&'static str, &'static str, &'static str), u64);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FillLabels {
    from: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServedLabels {
    route: &'static str,
    code: u16,
}

type UGauge = Gauge<u64, AtomicU64>;

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS)
}

/// The metrics registry and its families. Shared behind an `Arc`; every method takes
/// `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    registry_requests: Family<RegistryLabels, Counter>,
    pulled_bytes: Counter,
    store_bytes: UGauge,
    store_revisions: UGauge,
    store_blobs: UGauge,
    served: Family<ServedLabels, Counter>,
    store_limit: UGauge,
    store_missing: UGauge,
    leader: UGauge,
    webhook_requests: Family<WebhookLabels, Counter>,
    webhook_wakes: Counter,
    fills: Family<FillLabels, Counter>,
    objects: Family<ObjectLabels, UGauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every ocisync metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "ocisync_reconciles",
            "Reconciles by kind, result (the class of their reason) and reason",
            reconciles.clone(),
        );
        let reconcile_duration =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                reconcile_histogram,
            );
        registry.register_with_unit(
            "ocisync_reconcile_duration",
            "Duration of reconciles by kind",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let registry_requests = Family::<RegistryLabels, Counter>::default();
        registry.register(
            "ocisync_registry_requests",
            "Requests to OCI registries by operation and outcome",
            registry_requests.clone(),
        );
        let pulled_bytes = Counter::default();
        registry.register_with_unit(
            "ocisync_pulled",
            "Bytes of layers pulled from registries",
            Unit::Bytes,
            pulled_bytes.clone(),
        );
        let store_bytes = UGauge::default();
        registry.register_with_unit(
            "ocisync_store",
            "Bytes of file contents in the content store",
            Unit::Bytes,
            store_bytes.clone(),
        );
        let store_revisions = UGauge::default();
        registry.register(
            "ocisync_store_revisions",
            "Revisions in the content store",
            store_revisions.clone(),
        );
        let store_blobs = UGauge::default();
        registry.register(
            "ocisync_store_blobs",
            "Distinct file contents (blobs) in the content store",
            store_blobs.clone(),
        );
        let served = Family::<ServedLabels, Counter>::default();
        registry.register(
            "ocisync_artifact_server_requests",
            "Responses of the artifact server by route and status code",
            served.clone(),
        );
        let store_limit = UGauge::default();
        registry.register_with_unit(
            "ocisync_store_limit",
            "Most bytes of file contents the content store may hold (0: no limit)",
            Unit::Bytes,
            store_limit.clone(),
        );
        let store_missing = UGauge::default();
        registry.register(
            "ocisync_store_missing_revisions",
            "Revisions an ArtifactSource status names that this replica's store lacks",
            store_missing.clone(),
        );
        let leader = UGauge::default();
        registry.register(
            "ocisync_leader",
            "1 while this controller replica holds the leader Lease",
            leader.clone(),
        );
        let webhook_requests = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "ocisync_webhook_requests",
            "Requests to the push webhook receiver by payload shape and result",
            webhook_requests.clone(),
        );
        let webhook_wakes = Counter::default();
        registry.register(
            "ocisync_webhook_wakes",
            "ArtifactSources a push webhook asked to check",
            webhook_wakes.clone(),
        );
        let fills = Family::<FillLabels, Counter>::default();
        registry.register(
            "ocisync_store_fills",
            "Revisions copied into this replica's store from a peer or the registry, by outcome",
            fills.clone(),
        );
        let objects = Family::<ObjectLabels, UGauge>::default();
        registry.register(
            "ocisync_objects",
            "ArtifactSources and RuleBundles by kind and their Ready condition's status and reason (set by the leader)",
            objects.clone(),
        );
        Metrics {
            registry,
            objects,
            store_limit,
            store_missing,
            leader,
            webhook_requests,
            webhook_wakes,
            fills,
            reconciles,
            reconcile_duration,
            registry_requests,
            pulled_bytes,
            store_bytes,
            store_revisions,
            store_blobs,
            served,
        }
    }

    /// Records one reconcile of `kind` (`ArtifactSource`, `RuleBundle`, the agent's
    /// `NodeFiles`) after `seconds`. `result` is the class of the reason it ended with
    /// (`success`, `progressing`, `stalled`, `waiting`, `transient`; see
    /// [`Class::metric_label`](crate::api::reason::Class::metric_label)), `skipped` (no
    /// check due, suspended) or `error` (an API request failed); `reason` is the condition
    /// reason (or the API error's), empty when skipped.
    pub fn reconcile(
        &self,
        kind: &'static str,
        result: &'static str,
        reason: &'static str,
        seconds: f64,
    ) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind,
                result,
                reason,
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(seconds);
    }

    /// Records one registry request: `operation` (`resolve`, `manifest`, `blob`, `tags`)
    /// and `outcome` (`Success` or an error reason).
    pub fn registry_request(&self, operation: &'static str, outcome: &'static str) {
        self.registry_requests
            .get_or_create(&RegistryLabels { operation, outcome })
            .inc();
    }

    /// Adds `n` bytes pulled from registries.
    pub fn pulled_bytes(&self, n: u64) {
        self.pulled_bytes.inc_by(n);
    }

    /// Sets the content store gauges.
    pub fn set_store(&self, usage: &StoreUsage) {
        self.store_bytes.set(usage.bytes);
        self.store_revisions.set(usage.revisions);
        self.store_blobs.set(usage.blobs);
    }

    /// Records one artifact server response.
    pub fn served(&self, route: &'static str, code: u16) {
        self.served
            .get_or_create(&ServedLabels { route, code })
            .inc();
    }

    /// Sets the store's size limit (0: none).
    pub fn set_store_limit(&self, bytes: Option<u64>) {
        self.store_limit.set(bytes.unwrap_or(0));
    }

    /// Sets how many revisions named in status this replica's store lacks.
    pub fn set_missing_revisions(&self, n: u64) {
        self.store_missing.set(n);
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(u64::from(leading));
    }

    /// Records one webhook request: `shape` (`distribution`, `harbor`, `generic`,
    /// `unknown`) and `result` (`accepted`, `ignored`, `unauthorized`, `bad_request`,
    /// `too_large`, `method_not_allowed`, `unavailable` before the sources are listed,
    /// `error` when the receiver's secret files cannot be read).
    pub fn webhook_request(&self, shape: &'static str, result: &'static str) {
        self.webhook_requests
            .get_or_create(&WebhookLabels { shape, result })
            .inc();
    }

    /// Adds `n` sources a webhook asked to check.
    pub fn webhook_wakes(&self, n: u64) {
        self.webhook_wakes.inc_by(n);
    }

    /// Records one revision copied into the store: `from` (`peer`, `registry`) and
    /// `outcome` (`ok` or `failed`).
    pub fn store_fill(&self, from: &'static str, outcome: &'static str) {
        self.fills
            .get_or_create(&FillLabels { from, outcome })
            .inc();
    }

    /// Replaces the `ocisync_objects` series with `counts` (none: this replica does not
    /// lead, and only the leader's cache counts).
    pub fn set_objects(&self, counts: &[ObjectCount]) {
        self.objects.clear();
        for ((kind, ready, reason), n) in counts {
            let labels = ObjectLabels {
                kind,
                ready,
                reason,
            };
            self.objects.get_or_create(&labels).set(*n);
        }
    }

    /// Every metric as OpenMetrics text (content type
    /// `application/openmetrics-text; version=1.0.0; charset=utf-8`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; on an encoder error, serve what was written.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn records_and_encodes() {
        let metrics = Metrics::new();
        metrics.reconcile("ArtifactSource", "success", "Succeeded", 0.2);
        metrics.reconcile("ArtifactSource", "success", "Succeeded", 3.0);
        metrics.reconcile("RuleBundle", "waiting", "SourceNotReady", 0.001);
        metrics.registry_request("manifest", "Success");
        metrics.registry_request("blob", "Unauthorized");
        metrics.pulled_bytes(1000);
        metrics.pulled_bytes(24);
        metrics.set_store(&StoreUsage {
            revisions: 2,
            blobs: 5,
            bytes: 4096,
        });
        metrics.served("blob", 200);
        metrics.served("blob", 200);
        metrics.served("other", 404);
        let text = metrics.encode();

        for line in [
            "# TYPE ocisync_reconciles counter",
            r#"ocisync_reconciles_total{kind="ArtifactSource",result="success",reason="Succeeded"} 2"#,
            r#"ocisync_reconciles_total{kind="RuleBundle",result="waiting",reason="SourceNotReady"} 1"#,
            "# TYPE ocisync_reconcile_duration_seconds histogram",
            "# UNIT ocisync_reconcile_duration_seconds seconds",
            r#"ocisync_reconcile_duration_seconds_count{kind="ArtifactSource"} 2"#,
            r#"ocisync_reconcile_duration_seconds_sum{kind="ArtifactSource"} 3.2"#,
            r#"ocisync_reconcile_duration_seconds_bucket{le="0.25",kind="ArtifactSource"} 1"#,
            r#"ocisync_reconcile_duration_seconds_bucket{le="5.0",kind="ArtifactSource"} 2"#,
            r#"ocisync_reconcile_duration_seconds_bucket{le="+Inf",kind="RuleBundle"} 1"#,
            r#"ocisync_registry_requests_total{operation="manifest",outcome="Success"} 1"#,
            r#"ocisync_registry_requests_total{operation="blob",outcome="Unauthorized"} 1"#,
            "ocisync_pulled_bytes_total 1024",
            "ocisync_store_bytes 4096",
            "ocisync_store_revisions 2",
            "ocisync_store_blobs 5",
            r#"ocisync_artifact_server_requests_total{route="blob",code="200"} 2"#,
            r#"ocisync_artifact_server_requests_total{route="other",code="404"} 1"#,
            "# EOF",
        ] {
            assert_line(&text, line);
        }
    }

    #[test]
    fn shared_between_threads() {
        let metrics = std::sync::Arc::new(Metrics::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let m = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        m.served("healthz", 200);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_line(
            &metrics.encode(),
            r#"ocisync_artifact_server_requests_total{route="healthz",code="200"} 400"#,
        );
    }
}
