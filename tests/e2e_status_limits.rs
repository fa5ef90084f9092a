//! End-to-end: an artifact whose file list could never be written to a status (etcd refuses
//! objects over 1.5 MiB) is refused with a clear reason before it is stored, against a real
//! controller, registry and API server; the source keeps its last good revision, a bundle
//! whose sources together list too many files says so, and the controller stays up.

mod common;

use common::Which;
use common::controller::{harness, push_files};
use ocisync::api::{ArtifactSource, RuleBundle};

fn condition(o: &ArtifactSource) -> Option<(String, String, String)> {
    common::source_ready(o)
}

fn revision(o: &ArtifactSource) -> Option<String> {
    Some(o.status.as_ref()?.artifact.as_ref()?.revision.clone())
}

/// `n` small valid Falco rules files named `<prefix>NNNNN.yaml`.
fn rules(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i:05}.yaml");
            (name, format!("- list: l{i}\n  items: []\n").into_bytes())
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn file_lists_too_large_for_a_status_are_refused_and_the_last_good_revision_stays() {
    let mut h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let repos: std::collections::BTreeMap<&str, String> =
        ["status-big", "status-left", "status-right"]
            .into_iter()
            .map(|r| (r, h.env.repo(Which::Plain, r).to_string()))
            .collect();
    let push = |repo: &str, tag: &str, files: &[(String, Vec<u8>)]| {
        let files: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let target = format!("{}:{tag}", repos[repo]);
        push_files(
            &h.env,
            Which::Plain,
            work.path(),
            &target,
            "falco-rules",
            &files,
            &[],
        );
    };
    let spec = |repo: &str| {
        serde_json::json!({"url": format!("oci://{}", repos[repo]),
            "ref": {"tag": "1"}, "interval": "10s", "insecure": true})
    };
    // a good first revision, then one of 8,000 files (about 1 MB of file list)
    push("status-big", "1", &rules("r", 3));
    h.create("big", spec("status-big")).await;
    let good = h
        .wait("big", "Ready", |o| {
            condition(o).is_some_and(|c| c.0 == "True")
        })
        .await;
    push("status-big", "1", &rules("r", 8_000));
    h.request_check("big", "1").await;
    let refused = h
        .wait("big", "TooLarge", |o| {
            condition(o).is_some_and(|c| c.1 == "TooLarge")
        })
        .await;
    let (_, _, message) = condition(&refused).expect("condition");
    assert!(message.contains("8000 files"), "{message}");
    assert_eq!(
        revision(&refused),
        revision(&good),
        "the last good revision stays"
    );

    // two sources of 2,000 files each fit alone; a bundle over both lists too many
    for (name, prefix) in [("left", "l"), ("right", "r")] {
        push(&format!("status-{name}"), "1", &rules(prefix, 2_000));
        h.create(name, spec(&format!("status-{name}"))).await;
        h.wait(name, "Ready", |o| {
            condition(o).is_some_and(|c| c.0 == "True")
        })
        .await;
    }
    let bundle = serde_json::json!({"spec": {"sources": [
        {"sourceRef": {"name": "left"}}, {"sourceRef": {"name": "right"}}]}});
    h.apply::<RuleBundle>("both", bundle).await;
    let b = h
        .wait_for::<RuleBundle>("both", "TooManyFiles", |b| {
            b.and_then(|b| b.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "TooManyFiles")
            })
        })
        .await
        .expect("bundle");
    let files = b.status.map(|s| s.files.len()).unwrap_or_default();
    assert_eq!(files, 0, "no file list written for a plan that cannot fit");
    assert!(
        h.controller.try_wait().ok().flatten().is_none(),
        "the controller is alive"
    );
    h.cleanup().await;
}
