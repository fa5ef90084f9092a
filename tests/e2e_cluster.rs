//! End-to-end: the CRDs on a real API server (the local v1.20 one, or your KUBECONFIG's).

mod common;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};

const DEADLINE: Duration = Duration::from_secs(60);

async fn install_crds(client: &kube::Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply(ocisync::api::FIELD_MANAGER).force();
    for crd in ocisync::api::crds() {
        let name = crd.metadata.name.clone().expect("CRD name");
        // apply the committed file, as a user would with kubectl apply -f crds/
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crds")
            .join(ocisync::api::crd_file_name(&crd));
        let yaml = std::fs::read_to_string(path).expect("read crds/ file");
        let value: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("CRD YAML");
        api.patch(&name, &pp, &Patch::Apply(value))
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
        tokio::time::timeout(
            DEADLINE,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} not Established within {DEADLINE:?}"))
        .expect("watch CRD");
    }
}

async fn namespace(client: &kube::Client) -> String {
    use k8s_openapi::api::core::v1::Namespace;
    let name = format!("e2e-{}", common::unique());
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .expect("namespace");
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn crds_become_established_and_validate_objects() {
    let env = common::env();
    let client = env.client().await;
    install_crds(&client).await;
    let ns = namespace(&client).await;

    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource {
            group: "ocisync.dev".into(),
            version: "v1alpha1".into(),
            api_version: "ocisync.dev/v1alpha1".into(),
            kind: "ArtifactSource".into(),
            plural: "artifactsources".into(),
        },
    );
    let object = |url: &str| -> kube::api::DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ocisync.dev/v1alpha1",
            "kind": "ArtifactSource",
            "metadata": {"name": "rules"},
            "spec": {"url": url, "ref": {"tag": "3"}, "interval": "10m"}
        }))
        .expect("object")
    };
    // the schema's pattern rejects a URL without oci://
    let err = api
        .create(
            &PostParams::default(),
            &object("https://ghcr.io/falcosecurity/rules"),
        )
        .await
        .expect_err("a non-oci URL must be rejected");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains("spec.url"), "{}", s.message);
        }
        other => panic!("unexpected error {other}"),
    }
    // a valid one is accepted and reads back
    api.create(
        &PostParams::default(),
        &object("oci://ghcr.io/falcosecurity/rules/falco-rules"),
    )
    .await
    .expect("a valid ArtifactSource is accepted");
    let back = api.get("rules").await.expect("get");
    assert_eq!(back.data["spec"]["ref"]["tag"], "3");

    use k8s_openapi::api::core::v1::Namespace;
    let nsapi: Api<Namespace> = Api::all(client.clone());
    common::deleted(
        nsapi.delete(&ns, &DeleteParams::default()).await,
        "the namespace",
    );
}
