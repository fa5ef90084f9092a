//! `crds/` and the chart's `crds/` must hold exactly what `ocisync crd` generates from the
//! Rust types.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    check_dir("crds");
}

#[test]
fn the_charts_and_kustomize_crds_are_the_same() {
    check_dir("charts/ocisync/crds");
    check_dir("config/crd/bases");
}

fn check_dir(rel: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let mut expected_files = Vec::new();
    for crd in ocisync::api::crds() {
        let name = ocisync::api::crd_file_name(&crd);
        let want = ocisync::api::crd_yaml(&crd).expect("serialise CRD");
        let have = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            have == want,
            "{rel}/{name} is stale or missing: run `make crds` and commit the result"
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("the CRD directory exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "{rel} holds files no type generates"
    );
}

#[test]
fn crds_are_v1_with_scope_status_and_descriptions() {
    for crd in ocisync::api::crds() {
        assert_eq!(crd.spec.group, "ocisync.dev");
        // a NodeReport belongs to a Node, the rest to a namespace; only the agent writes
        // a NodeReport, so it has no status of its own
        let per_node = crd.spec.names.kind == "NodeReport";
        assert_eq!(
            crd.spec.scope,
            if per_node { "Cluster" } else { "Namespaced" }
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert_eq!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            !per_node
        );
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| !c.is_empty())
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        );
        let yaml = ocisync::api::crd_yaml(&crd).expect("serialise CRD");
        assert!(
            !yaml.contains("x-kubernetes-validations"),
            "no CEL on v1.20"
        );
        // every property has a description, so `kubectl explain` is useful
        let schema = serde_json::to_value(&v.schema).expect("schema to JSON");
        let mut missing = Vec::new();
        walk(
            &schema["openAPIV3Schema"]["properties"]["spec"],
            "spec",
            &mut missing,
        );
        walk(
            &schema["openAPIV3Schema"]["properties"]["status"],
            "status",
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "{}: fields without description: {missing:?}",
            crd.spec.names.kind
        );
    }
}

fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            let p = format!("{path}.{name}");
            if child.get("description").is_none() {
                missing.push(p.clone());
            }
            walk(child, &p, missing);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, &format!("{path}[]"), missing);
    }
}
