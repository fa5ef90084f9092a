//! The controller's effectful steps against a mocked API server: the exact requests a
//! reconcile or the GC makes (see [`crate::mock_api`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store as Cache};
use kube::runtime::watcher;
use serde_json::json;

use super::context::Context;
use super::events::Recorder;
use crate::api::artifact_source::{Artifact, ArtifactSourceSpec, ArtifactSourceStatus};
use crate::api::node_report::NodeReportSpec;
use crate::api::{ArtifactSource, NodeReport};
use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::mock_api;
use crate::store::{IndexFile, Store};

/// A reflector cache holding `objects`, ready.
fn cache<K>(objects: Vec<K>) -> Cache<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

fn meta(name: &str, namespace: Option<&str>, uid: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        uid: Some(uid.into()),
        generation: Some(1),
        ..Default::default()
    }
}

/// A context on `client` over `store`, with these sources, nodes and reports cached.
fn context(
    client: Client,
    store: Store,
    sources: Vec<ArtifactSource>,
    nodes: &[&str],
    reports: &[&str],
) -> Arc<Context> {
    let node = |n: &&str| PartialObjectMeta {
        metadata: meta(n, None, n),
        ..Default::default()
    };
    let report = |n: &&str| NodeReport {
        metadata: meta(n, None, n),
        spec: NodeReportSpec::default(),
    };
    let reporter = Reporter {
        controller: "ocisync-controller".into(),
        instance: None,
    };
    Arc::new(Context {
        client: client.clone(),
        store: Arc::new(store),
        metrics: Arc::new(Metrics::new()),
        recorder: Recorder::new(client, reporter),
        base_url: "http://ocisync.test:9090".into(),
        registry_timeout: Duration::from_secs(5),
        sources: cache(sources),
        bundles: cache(Vec::new()),
        source_users: Default::default(),
        config_maps: cache(Vec::new()),
        nodes: cache(nodes.iter().map(node).collect()),
        reports: cache(reports.iter().map(report).collect()),
        state: Default::default(),
    })
}

/// A context over an empty store, with nothing cached (the store's directory is kept
/// with the returned guard).
pub(super) fn bare_context(client: Client) -> (tempfile::TempDir, Arc<Context>) {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    (root, context(client, store, Vec::new(), &[], &[]))
}

/// A store holding one revision per name (one file each); their store keys.
fn store_with(names: &[&str]) -> (tempfile::TempDir, Store, Vec<Digest>) {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let mut keys = Vec::new();
    for name in names {
        let staging = store.staging_dir().unwrap();
        std::fs::write(staging.path().join("f.yaml"), name.as_bytes()).unwrap();
        let file = IndexFile {
            path: "f.yaml".into(),
            digest: Digest::of(name.as_bytes()),
            size: name.len() as u64,
            platform: None,
        };
        let manifest = Digest::of(format!("manifest {name}").as_bytes());
        store.commit(&manifest, staging.path(), &[file]).unwrap();
        keys.push(manifest);
    }
    (root, store, keys)
}

fn source_serving(name: &str, uid: &str, key: &Digest) -> ArtifactSource {
    let mut s = ArtifactSource::new(name, ArtifactSourceSpec::default());
    s.metadata = meta(name, Some("team"), uid);
    s.status = Some(ArtifactSourceStatus {
        artifact: Some(Artifact {
            digest: key.to_string(),
            url: Some(format!(
                "http://ocisync.test:9090{}",
                crate::server::revision_path(key.as_str())
            )),
            ..Default::default()
        }),
        ..Default::default()
    });
    s
}

#[tokio::test]
async fn gc_keeps_what_sources_use_and_deletes_only_reports_of_gone_nodes() {
    let (client, mut server) = mock_api::pair();
    let (_root, store, keys) = store_with(&["served", "previous", "of-a-gone-source", "unused"]);
    let [served, previous, gone, unused] = [&keys[0], &keys[1], &keys[2], &keys[3]];
    let sources = vec![source_serving("rules", "uid-1", served)];
    let ctx = context(client, store, sources, &["node-a"], &["node-a", "node-b"]);
    ctx.remember("uid-1", |m| m.previous = Some(previous.clone()));
    ctx.remember("uid-gone", |m| m.current = Some(gone.clone()));

    // in use: the status's revision and the one before it of a source that still exists
    let in_use = ctx.revisions_in_use();
    let expected: HashSet<Digest> = [served.clone(), previous.clone()].into();
    assert_eq!(in_use, expected);
    // asking changes nothing: the deleted source's memory is pruned only by prune
    assert!(ctx.memory_of("uid-gone").current.is_some());

    let gc = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            super::prune_reports(&ctx).await;
            super::collect_garbage(&ctx).await;
        })
    };
    // exactly one request: the report of the node that is gone
    server
        .expect(
            "DELETE",
            "/apis/ocisync.dev/v1alpha1/nodereports/node-b",
            200,
            mock_api::status(200, "", ""),
        )
        .await;
    gc.await.unwrap();
    for (key, kept) in [
        (served, true),
        (previous, true),
        (gone, false),
        (unused, false),
    ] {
        assert_eq!(ctx.store.has(key), kept, "{key}");
    }
    assert!(ctx.memory_of("uid-gone").current.is_none());
    drop(ctx);
    server.expect_no_more().await;
}

#[tokio::test]
async fn a_secret_the_controller_may_not_read_is_not_reported_missing() {
    let (client, mut server) = mock_api::pair();
    let (_root, store, _) = store_with(&[]);
    let mut source = ArtifactSource::new("rules", ArtifactSourceSpec::default());
    source.metadata = meta("rules", Some("team"), "uid-1");
    source.spec.url = "oci://127.0.0.1:9/team/rules".into();
    source.spec.interval = "1m".into();
    source.spec.reference = Some(crate::api::artifact_source::OciRefSpec {
        tag: Some("1".into()),
        ..Default::default()
    });
    source.spec.secret_ref = Some(crate::api::artifact_source::LocalObjectReference {
        name: "regcred".into(),
    });
    let ctx = context(client, store, vec![source.clone()], &[], &[]);
    let reconcile = tokio::spawn(super::source::reconcile(Arc::new(source), ctx.clone()));
    server
        .expect(
            "GET",
            "/api/v1/namespaces/team/secrets/regcred",
            403,
            mock_api::status(403, "Forbidden", "secrets \"regcred\" is forbidden"),
        )
        .await;
    let event = server
        .expect(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/team/events",
            201,
            json!({}),
        )
        .await;
    assert_eq!(event.body["reason"], "SecretNotReadable", "{}", event.body);
    assert_eq!(event.body["type"], "Warning");
    let patch = server
        .expect(
            "PATCH",
            "/apis/ocisync.dev/v1alpha1/namespaces/team/artifactsources/rules/status",
            200,
            serde_json::to_value(&*ctx.sources.state()[0]).unwrap(),
        )
        .await;
    let conditions = &patch.body["status"]["conditions"];
    let ready = conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["reason"], "SecretNotReadable", "{conditions}");
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("forbidden") && m.contains("(403)")),
        "{ready}"
    );
    reconcile.await.unwrap().unwrap();
    drop(ctx);
    server.expect_no_more().await;
}

/// A registry that takes connections and never answers.
async fn silent_registry() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn the_backoff_after_a_failed_check_counts_from_its_end() {
    let (client, mut server) = mock_api::pair();
    let (_root, store, _) = store_with(&[]);
    let (registry, _silent) = silent_registry().await;
    let mut source = ArtifactSource::new("rules", ArtifactSourceSpec::default());
    source.metadata = meta("rules", Some("team"), "uid-1");
    source.spec.url = format!("oci://{registry}/team/rules");
    source.spec.insecure = true;
    source.spec.timeout = Some("1s".into());
    source.spec.interval = "1h".into();
    source.spec.reference = Some(crate::api::artifact_source::OciRefSpec {
        tag: Some("1".into()),
        ..Default::default()
    });
    let ctx = context(client, store, vec![source.clone()], &[], &[]);
    let started = std::time::Instant::now();
    let reconcile = tokio::spawn(super::source::reconcile(Arc::new(source), ctx.clone()));
    let event = server
        .expect(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/team/events",
            201,
            json!({}),
        )
        .await;
    assert_eq!(
        event.body["reason"], "RegistryUnavailable",
        "{}",
        event.body
    );
    let status = serde_json::to_value(&*ctx.sources.state()[0]).unwrap();
    server
        .expect(
            "PATCH",
            "/apis/ocisync.dev/v1alpha1/namespaces/team/artifactsources/rules/status",
            200,
            status,
        )
        .await;
    reconcile.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "the check waited out its timeout: {took:?}"
    );
    let since = ctx
        .memory_of("uid-1")
        .last_check
        .expect("a check")
        .elapsed();
    assert!(
        since < Duration::from_millis(500),
        "the backoff counts from {since:?} ago, the start of a check that took {took:?}"
    );
    drop(ctx);
    server.expect_no_more().await;
}

#[tokio::test]
async fn a_reconcile_without_api_errors_ends_the_run_of_them() {
    let (client, server) = mock_api::pair();
    let (_root, store, _) = store_with(&[]);
    let mut source = ArtifactSource::new("rules", ArtifactSourceSpec::default());
    source.metadata = meta("rules", Some("team"), "uid-1");
    source.spec.suspend = true; // a reconcile that asks the API server nothing
    let ctx = context(client, store, vec![source.clone()], &[], &[]);
    for n in 1..=3 {
        assert_eq!(ctx.api_failed("uid-1"), n);
    }
    super::source::reconcile(Arc::new(source), ctx.clone())
        .await
        .unwrap();
    assert_eq!(ctx.api_failed("uid-1"), 1, "the backoff starts over");
    drop(ctx);
    server.expect_no_more().await;
}

#[tokio::test]
async fn pruning_keeps_a_held_pull_lock_and_forgets_idle_ones() {
    let (client, _server) = mock_api::pair();
    let (_root, store, keys) = store_with(&["a", "b"]);
    let ctx = context(client, store, Vec::new(), &[], &[]);
    let held = ctx.pull_lock(&keys[0]);
    let guard = held.clone().lock_owned().await;
    let idle = ctx.pull_lock(&keys[1]);
    drop(idle);
    ctx.prune(&HashSet::new(), true);
    // the same lock object while it is held; a new one for the idle key
    assert!(Arc::ptr_eq(&held, &ctx.pull_lock(&keys[0])));
    assert!(ctx.revisions_in_use().contains(&keys[0]));
    assert!(!ctx.revisions_in_use().contains(&keys[1]));
    drop(guard);
}

#[test]
fn a_content_check_that_can_only_fail_again_is_not_run_again() {
    use crate::api::reason::{BundleReason, Problem};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let (client, _server) = mock_api::pair();
    let (_root, store, _) = store_with(&[]);
    let ctx = context(client, store, Vec::new(), &[], &[]);
    let plan = (Some(1), "sha256:plan".to_string());
    let bad = Problem::new(BundleReason::InvalidContent, "r.yaml: not a list");
    ctx.remember_check("b", plan.clone(), Some(&bad));
    assert_eq!(ctx.failed_check("b", &plan), Some(bad.clone()));
    // another generation (targets) or plan (files) is checked anew
    assert_eq!(ctx.failed_check("b", &(Some(2), plan.1.clone())), None);
    assert_eq!(
        ctx.failed_check("b", &(Some(1), "sha256:other".into())),
        None
    );
    // a file not stored yet may be there next time; a pass forgets the failure
    let missing = Problem::new(BundleReason::SourceNotReady, "not stored yet");
    ctx.remember_check("b", plan.clone(), Some(&missing));
    assert_eq!(ctx.failed_check("b", &plan), None);
    ctx.remember_check("b", plan.clone(), Some(&bad));
    ctx.remember_check("b", plan.clone(), None);
    assert_eq!(ctx.failed_check("b", &plan), None);
}

/// A source Ready with one Falco rules file `r.yaml` of `bytes` (stored by the caller).
fn source_with_file(bytes: &[u8]) -> ArtifactSource {
    use crate::api::artifact_source::ArtifactFile;
    use crate::api::condition::Condition;
    let mut s = source_serving("rules", "uid-s", &Digest::of(b"manifest"));
    if let Some(status) = s.status.as_mut() {
        status.conditions = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            observed_generation: Some(1),
            reason: "Succeeded".into(),
            ..Default::default()
        }];
        if let Some(a) = status.artifact.as_mut() {
            a.kind = crate::oci::content::ContentKind::FalcoRules;
            a.files = vec![ArtifactFile {
                path: "r.yaml".into(),
                digest: Digest::of(bytes).to_string(),
                size: bytes.len() as i64,
                platform: None,
            }];
        }
    }
    s
}

#[tokio::test]
async fn a_bundle_whose_content_failed_its_check_is_not_read_again() {
    use crate::api::rule_bundle::{BundleSource, RuleBundleSpec};
    use crate::api::{RuleBundle, artifact_source::LocalObjectReference};
    let bad = b"not: a list of rules\n";
    let (client, mut server) = mock_api::pair();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let staging = store.staging_dir().unwrap();
    std::fs::write(staging.path().join("r.yaml"), bad).unwrap();
    let file = IndexFile {
        path: "r.yaml".into(),
        digest: Digest::of(bad),
        size: bad.len() as u64,
        platform: None,
    };
    store
        .commit(&Digest::of(b"manifest"), staging.path(), &[file])
        .unwrap();
    let ctx = context(client, store, vec![source_with_file(bad)], &[], &[]);
    let mut bundle = RuleBundle::new("b", RuleBundleSpec::default());
    bundle.metadata = meta("b", Some("team"), "uid-b");
    bundle.spec.sources = vec![BundleSource {
        source_ref: LocalObjectReference {
            name: "rules".into(),
        },
        include: Vec::new(),
    }];
    let bundle = Arc::new(bundle);
    for round in ["checked", "remembered"] {
        let reconcile = tokio::spawn(super::bundle::reconcile(bundle.clone(), ctx.clone()));
        // the Event (a repeat is recorded as a series: a PATCH of the first)
        let event = server.next(201, json!({})).await;
        assert!(
            event
                .path
                .starts_with("/apis/events.k8s.io/v1/namespaces/team/events"),
            "{} {}",
            event.method,
            event.path
        );
        if round == "checked" {
            assert_eq!(event.method, "POST");
            assert_eq!(event.body["reason"], "InvalidContent");
        } else {
            assert_eq!(event.method, "PATCH");
            assert_eq!(event.body["series"]["count"], 2);
        }
        let path = "/apis/ocisync.dev/v1alpha1/namespaces/team/rulebundles/b/status";
        let answer = serde_json::to_value(&*bundle).unwrap();
        server.expect("PATCH", path, 200, answer).await;
        reconcile.await.unwrap().unwrap();
        if round == "checked" {
            // the blob goes: a check run again would say SourceNotReady, not InvalidContent
            std::fs::remove_file(ctx.store.blob_location(&Digest::of(bad))).unwrap();
        }
    }
    drop(ctx);
    server.expect_no_more().await;
}
