//! The ConfigMap a bundle becomes: text files in `data`, other files in `binaryData`, byte
//! for byte; labelled as ocisync's, annotated with the bundle revision, owned by the bundle.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{BundleReason, Problem};
use crate::api::rule_bundle::ConfigMapTarget;

/// The label on every object ocisync writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ocisync");
/// The label naming the bundle a ConfigMap belongs to.
pub const BUNDLE_LABEL: &str = "ocisync.dev/bundle";
/// The annotation holding the bundle revision; consumers roll on its change.
pub const REVISION_ANNOTATION: &str = "ocisync.dev/revision";
/// What a ConfigMap can hold: the API server's limit on the sum of its values.
pub const MAX_BYTES: usize = 1024 * 1024;

/// The ConfigMap's name: `spec.configMap.name`, or the bundle's name.
pub fn name(target: &ConfigMapTarget, bundle_name: &str) -> String {
    target
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| bundle_name.to_string())
}

/// Whether files of these sizes fit one ConfigMap; checked (from the store's file lengths)
/// before any of them is read, and again on the bytes read.
pub fn fits(sizes: impl IntoIterator<Item = u64>) -> Result<(), Problem> {
    let (mut count, mut total) = (0usize, Some(0u64));
    for size in sizes {
        count += 1;
        total = total.and_then(|t| t.checked_add(size));
    }
    match total {
        Some(total) if total <= MAX_BYTES as u64 => Ok(()),
        _ => Err(Problem::new(
            BundleReason::TooLargeForConfigMap,
            format!(
                "the {count} selected files hold {}, over the {MAX_BYTES} bytes a ConfigMap can hold; use spec.nodeFiles, or narrow spec.sources[].include",
                total.map_or_else(
                    || "more bytes than can be counted".into(),
                    |t| format!("{t} bytes")
                )
            ),
        )),
    }
}

/// Builds the ConfigMap from the files' names and bytes, or says why it cannot hold them.
pub fn build(
    target: &ConfigMapTarget,
    bundle_name: &str,
    namespace: &str,
    owner: OwnerReference,
    revision: &str,
    files: Vec<(String, Vec<u8>)>,
) -> Result<ConfigMap, Problem> {
    fits(files.iter().map(|(_, b)| b.len() as u64))?;
    let mut data = BTreeMap::new();
    let mut binary = BTreeMap::new();
    for (key, bytes) in files {
        match String::from_utf8(bytes) {
            Ok(text) if crate::api::yaml_printable(&text) => {
                data.insert(key, text);
            }
            Ok(text) => {
                binary.insert(key, ByteString(text.into_bytes()));
            }
            Err(e) => {
                binary.insert(key, ByteString(e.into_bytes()));
            }
        }
    }
    let mut labels = target.labels.clone();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(BUNDLE_LABEL.into(), bundle_name.into());
    let mut annotations = target.annotations.clone();
    annotations.insert(REVISION_ANNOTATION.into(), revision.into());
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name(target, bundle_name)),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(data),
        binary_data: Some(binary),
        ..Default::default()
    })
}

/// Whether `owner_references` name `uid` as their controller.
pub fn controlled_by(owner_references: Option<&[OwnerReference]>, uid: &str) -> bool {
    owner_references
        .unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "ocisync.dev/v1alpha1".into(),
            kind: "RuleBundle".into(),
            name: "falco".into(),
            uid: "u1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn text_with_control_characters_goes_to_binary_data() {
        for (text, printable) in [
            ("- rule: x\tä\r\n", true),
            ("\u{85}next line", false),
            ("line\u{2028}separator", false),
            ("\u{7f}ELF", false),
            ("ansi \u{1b}[31m", false),
            ("nul \u{0}", false),
            ("c1 \u{9b}", false),
            ("\u{feff}bom", true),
            ("\u{ffff}", false),
        ] {
            assert_eq!(crate::api::yaml_printable(text), printable, "{text:?}");
        }
        let cm = build(
            &ConfigMapTarget::default(),
            "b",
            "ns",
            owner(),
            "sha256:r",
            vec![("lib.so".into(), b"\x7fELF x".to_vec())],
        )
        .unwrap();
        assert!(cm.data.unwrap_or_default().is_empty());
        assert_eq!(cm.binary_data.unwrap()["lib.so"].0, b"\x7fELF x");
    }

    #[test]
    fn text_to_data_binary_to_binary_data() {
        let target = ConfigMapTarget {
            labels: [("team".to_string(), "sec".to_string())].into(),
            ..Default::default()
        };
        let cm = build(
            &target,
            "falco",
            "ns",
            owner(),
            "sha256:r",
            vec![
                ("rules.yaml".into(), b"- rule: x\n".to_vec()),
                ("plugin.so".into(), vec![0x7f, b'E', 0xff, 0]),
            ],
        )
        .unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("falco"));
        assert_eq!(cm.data.as_ref().unwrap()["rules.yaml"], "- rule: x\n");
        assert_eq!(
            cm.binary_data.as_ref().unwrap()["plugin.so"].0,
            vec![0x7f, b'E', 0xff, 0]
        );
        let labels = cm.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ocisync");
        assert_eq!(labels["team"], "sec");
        assert_eq!(
            cm.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION],
            "sha256:r"
        );
        assert!(controlled_by(cm.metadata.owner_references.as_deref(), "u1"));
        assert!(!controlled_by(
            cm.metadata.owner_references.as_deref(),
            "u2"
        ));
    }

    #[test]
    fn over_one_mebibyte_is_refused_whole() {
        let files = vec![
            ("a".into(), vec![b'a'; MAX_BYTES / 2]),
            ("b".into(), vec![b'b'; MAX_BYTES / 2 + 1]),
        ];
        let e = build(&ConfigMapTarget::default(), "x", "ns", owner(), "r", files).unwrap_err();
        assert_eq!(e.reason, BundleReason::TooLargeForConfigMap);
        assert!(e.message.contains("nodeFiles"));
        let exact = vec![("a".into(), vec![b'a'; MAX_BYTES])];
        assert!(build(&ConfigMapTarget::default(), "x", "ns", owner(), "r", exact).is_ok());
    }

    #[test]
    fn sizes_are_summed_without_overflow() {
        assert!(fits([]).is_ok());
        assert!(fits([MAX_BYTES as u64 - 1, 1]).is_ok());
        let e = fits([MAX_BYTES as u64, 1]).unwrap_err();
        assert!(e.message.contains("1048577 bytes"), "{}", e.message);
        let e = fits([u64::MAX, 2]).unwrap_err();
        assert_eq!(e.reason, BundleReason::TooLargeForConfigMap);
        assert!(e.message.contains("the 2 selected files"), "{}", e.message);
    }

    #[test]
    fn name_defaults_to_the_bundle() {
        assert_eq!(name(&ConfigMapTarget::default(), "b"), "b");
        let named = ConfigMapTarget {
            name: Some("rules".into()),
            ..Default::default()
        };
        assert_eq!(name(&named, "b"), "rules");
    }
}
