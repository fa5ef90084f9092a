//! Creates the scale benchmark's objects in NAMESPACE, CONCURRENCY requests at a time:
//! the ArtifactSource `shared`, then for i in 1..=COUNT the ArtifactSource `s<i>` (over
//! REPOS repositories, `repo1`..`repo<REPOS>` under REGISTRY/NAMESPACE) and the
//! RuleBundle `b<i>`, which takes `s<i>` and `shared` into a ConfigMap.
//!
//! kubectl creates one object per request, one after the other; 16,000 took it 116 s here
//! even four processes at once. This is the same objects by the same API, only concurrent.
//!
//!   cargo run --release --example bench-objects -- NAMESPACE COUNT REPOS REGISTRY CONCURRENCY

use futures_util::{StreamExt, stream};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [namespace, count, repos, registry, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: bench-objects NAMESPACE COUNT REPOS REGISTRY CONCURRENCY");
    };
    let (count, repos): (usize, usize) = (count.parse()?, repos.parse()?);
    let concurrency: usize = concurrency.parse()?;
    let client = kube::Client::try_default().await?;
    let api = |kind: &str| {
        let gvk = GroupVersionKind::gvk("ocisync.dev", "v1alpha1", kind);
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            namespace,
            &ApiResource::from_gvk(&gvk),
        )
    };
    let (sources, bundles) = (api("ArtifactSource"), api("RuleBundle"));
    let url = |repo: &str| format!("oci://{registry}/{namespace}/{repo}");
    create(&sources, source("shared", &url("shared"))).await?;
    let objects = (1..=count).flat_map(|i| {
        let repo = format!("repo{}", (i - 1) % repos.max(1) + 1);
        [
            (&sources, source(&format!("s{i}"), &url(&repo))),
            (&bundles, bundle(i)),
        ]
    });
    let failed = stream::iter(objects)
        .map(|(api, object)| create(api, object))
        .buffer_unordered(concurrency.max(1))
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} objects were not created");
    Ok(())
}

fn source(name: &str, url: &str) -> Value {
    json!({
        "apiVersion": "ocisync.dev/v1alpha1",
        "kind": "ArtifactSource",
        "metadata": {"name": name},
        "spec": {"url": url, "ref": {"tag": "1"}, "interval": "1h", "insecure": true},
    })
}

fn bundle(i: usize) -> Value {
    json!({
        "apiVersion": "ocisync.dev/v1alpha1",
        "kind": "RuleBundle",
        "metadata": {"name": format!("b{i}")},
        "spec": {
            "sources": [{"sourceRef": {"name": format!("s{i}")}}, {"sourceRef": {"name": "shared"}}],
            "configMap": {},
        },
    })
}

async fn create(api: &Api<DynamicObject>, object: Value) -> anyhow::Result<()> {
    let object: DynamicObject = serde_json::from_value(object)?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("bench-objects: {:?}: {e}", object.metadata.name);
            Err(e.into())
        }
    }
}
