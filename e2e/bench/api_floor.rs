//! The API server's own write rate, as the floor the scale benchmark is compared with.
//! Against the RuleBundles b1..bCOUNT of NAMESPACE, CONCURRENCY at a time:
//! - `configmap`: one ConfigMap per bundle written with server-side apply, as the
//!   controller writes a bundle's ConfigMap (twice: the first creates them);
//! - `revision`: per bundle, the three writes a new revision costs the controller: the
//!   ConfigMap, the bundle's status (server-side apply of the status it has, with a new
//!   revision), and an Event.
//!
//! Prints one line per pass: `<pass> <bundles> <seconds> <bundles per second> <writes>`.
//!
//!   cargo run --release --example api-floor -- NAMESPACE COUNT CONCURRENCY

use std::collections::HashMap;
use std::time::Instant;

use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

struct Apis {
    config_maps: Api<ConfigMap>,
    bundles: Api<DynamicObject>,
    events: Api<Event>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [namespace, count, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: api-floor NAMESPACE COUNT CONCURRENCY");
    };
    let (count, concurrency): (usize, usize) = (count.parse()?, concurrency.parse()?);
    let client = kube::Client::try_default().await?;
    let gvk = GroupVersionKind::gvk("ocisync.dev", "v1alpha1", "RuleBundle");
    let apis = Apis {
        config_maps: Api::namespaced(client.clone(), namespace),
        bundles: Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk)),
        events: Api::namespaced(client, namespace),
    };
    // the bundles as the controller's cache holds them: listed once, not read per write
    let listed: HashMap<String, DynamicObject> = apis
        .bundles
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|b| Some((b.metadata.name.clone()?, b)))
        .collect();
    for (pass, writes) in [("configmap", 1), ("configmap", 1), ("revision", 3)] {
        let started = Instant::now();
        let failed = stream::iter(1..=count)
            .map(|i| write(&apis, &listed, i, pass))
            .buffer_unordered(concurrency.max(1))
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        anyhow::ensure!(failed == 0, "{pass}: {failed} bundles failed");
        let seconds = started.elapsed().as_secs_f64();
        let rate = count as f64 / seconds;
        println!("{pass} {count} {seconds:.2} {rate:.0} {}", count * writes);
    }
    Ok(())
}

async fn write(
    apis: &Apis,
    listed: &HashMap<String, DynamicObject>,
    i: usize,
    pass: &str,
) -> anyhow::Result<()> {
    let params = PatchParams::apply("ocisync-bench").force();
    let name = format!("floor-b{i}");
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "api-floor"}},
        "data": {"shared.yaml": format!("- macro: floor_{i}_{}\n  condition: proc.name = sh\n", std::process::id())},
    });
    apis.config_maps
        .patch(&name, &params, &Patch::Apply(cm))
        .await?;
    if pass != "revision" {
        return Ok(());
    }
    let bundle = format!("b{i}");
    let current = listed
        .get(&bundle)
        .ok_or_else(|| anyhow::anyhow!("no RuleBundle {bundle}"))?;
    let mut status = current.data.get("status").cloned().unwrap_or_default();
    status["revision"] = serde_json::json!(format!("sha256:floor{i}"));
    let body = serde_json::json!({
        "apiVersion": "ocisync.dev/v1alpha1",
        "kind": "RuleBundle",
        "status": status,
    });
    apis.bundles
        .patch_status(&bundle, &params, &Patch::Apply(body))
        .await?;
    let now = jiff::Timestamp::now();
    let event = Event {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{bundle}.floor{:x}", now.as_nanosecond())),
            ..Default::default()
        },
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            now,
        )),
        reason: Some("Applied".into()),
        action: Some("Apply".into()),
        note: Some(format!("applied revision sha256:floor{i}")),
        type_: Some("Normal".into()),
        reporting_controller: Some("ocisync-bench".into()),
        reporting_instance: Some("ocisync-bench".into()),
        regarding: Some(k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("RuleBundle".into()),
            name: Some(bundle),
            namespace: current.metadata.namespace.clone(),
            uid: current.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    apis.events.create(&PostParams::default(), &event).await?;
    Ok(())
}
