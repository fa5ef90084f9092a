use super::*;
use crate::api::reason::NodeReason;
use crate::api::rule_bundle::{
    BundleFile, LabelSelector, NodeFilesTarget, RuleBundleSpec, RuleBundleStatus,
};

fn bundle(dir: &str, selector: &[(&str, &str)], files: &[(&str, &str)]) -> RuleBundle {
    let mut b = RuleBundle::new(
        "b",
        RuleBundleSpec {
            node_files: Some(NodeFilesTarget {
                directory: dir.into(),
                node_selector: Some(LabelSelector {
                    match_labels: selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        },
    );
    b.status = Some(RuleBundleStatus {
        revision: Some("sha256:rev".into()),
        files: files
            .iter()
            .map(|(p, d)| BundleFile {
                path: p.to_string(),
                source: "s".into(),
                digest: d.to_string(),
                size: 1,
                platform: None,
            })
            .collect(),
        ..Default::default()
    });
    b
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn allow() -> AllowList {
    AllowList::new(&["/etc/falco".into(), "/var/lib/kubelet/seccomp".into()]).unwrap()
}

const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn a_selected_bundle_in_an_allowed_directory_is_applied() {
    let b = bundle("/etc/falco/rules.d", &[("role", "w")], &[("r.yaml", D)]);
    match decide(&b, &labels(&[("role", "w")]), &allow()) {
        Decision::Apply {
            directory,
            allowed,
            revision,
            files,
        } => {
            assert_eq!(directory, Path::new("/etc/falco/rules.d"));
            assert_eq!(allowed, Path::new("/etc/falco"));
            assert_eq!(revision, "sha256:rev");
            assert_eq!(files[0].key, "r.yaml");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decide(&b, &labels(&[("role", "x")]), &allow()),
        Decision::NotHere
    );
}

#[test]
fn directories_outside_the_allow_list_are_refused() {
    for dir in ["/etc", "/etc/passwd", "/etc/falcon", "/var/lib/kubelet"] {
        let b = bundle(dir, &[], &[("r.yaml", D)]);
        assert!(
            matches!(
                decide(&b, &labels(&[]), &allow()),
                Decision::Refuse {
                    reason: NodeReason::DirectoryNotAllowed,
                    ..
                }
            ),
            "{dir}"
        );
    }
    for dir in [
        "/etc/falco/../passwd",
        "/etc/falco/./x",
        "etc/falco",
        "/etc//falco",
    ] {
        let b = bundle(dir, &[], &[("r.yaml", D)]);
        assert!(
            matches!(
                decide(&b, &labels(&[]), &allow()),
                Decision::Refuse {
                    reason: NodeReason::InvalidPath,
                    ..
                }
            ),
            "{dir}"
        );
    }
    let none = AllowList::default();
    let b = bundle("/etc/falco", &[], &[("r.yaml", D)]);
    assert!(matches!(
        decide(&b, &labels(&[]), &none),
        Decision::Refuse {
            reason: NodeReason::DirectoryNotAllowed,
            ..
        }
    ));
    assert!(AllowList::new(&["relative".into()]).is_err());
    assert!(AllowList::new(&["/a/../b".into()]).is_err());
}

#[test]
fn file_names_and_digests_from_status_are_not_trusted() {
    for bad in ["../x", "a/b", "..data", ".", ""] {
        let b = bundle("/etc/falco", &[], &[(bad, D)]);
        assert!(
            matches!(
                decide(&b, &labels(&[]), &allow()),
                Decision::Refuse {
                    reason: NodeReason::InvalidPath,
                    ..
                }
            ),
            "{bad}"
        );
    }
    let b = bundle("/etc/falco", &[], &[("r.yaml", "sha256:../../etc")]);
    assert!(matches!(
        decide(&b, &labels(&[]), &allow()),
        Decision::Refuse {
            reason: NodeReason::InvalidPath,
            ..
        }
    ));
}

#[test]
fn a_bundle_without_a_revision_waits() {
    let mut b = bundle("/etc/falco", &[], &[]);
    b.status = None;
    assert_eq!(decide(&b, &labels(&[]), &allow()), Decision::Wait);
}

#[test]
fn directory_parts_starting_with_two_dots_are_refused() {
    // `..ocisync.<id>` is another bundle's data link: writing there would put this
    // bundle's links inside that bundle's data directory
    for dir in [
        "/etc/falco/..ocisync.ns.other",
        "/etc/falco/..data/x",
        "/etc/falco/...",
    ] {
        let b = bundle(dir, &[], &[("r.yaml", D)]);
        assert!(
            matches!(
                decide(&b, &labels(&[]), &allow()),
                Decision::Refuse {
                    reason: NodeReason::InvalidPath,
                    ..
                }
            ),
            "{dir}"
        );
    }
    assert!(AllowList::new(&["/etc/..x".into()]).is_err());
}

/// Found by the `agent_paths` fuzz target: a NUL byte in an `--allowed-dir` or in
/// `nodeFiles.directory` was taken as a path part (no file system can hold it).
#[test]
fn directory_parts_with_nul_are_refused() {
    assert!(AllowList::new(&["/var/lib/kub\0ta".into()]).is_err());
    assert!(AllowList::new(&["/etc/falco=a\0b".into()]).is_err());
    let b = bundle("/etc/falco/site\0x", &[], &[("r.yaml", D)]);
    assert!(matches!(
        decide(&b, &labels(&[]), &allow()),
        Decision::Refuse {
            reason: NodeReason::InvalidPath,
            ..
        }
    ));
}

fn in_namespace(dir: &str, ns: &str) -> RuleBundle {
    let mut b = bundle(dir, &[], &[("r.yaml", D)]);
    b.metadata.namespace = Some(ns.into());
    b
}

#[test]
fn a_directory_is_written_only_by_the_namespaces_granted_it() {
    let allow = AllowList::new(&[
        "/etc/falco=falco,security".into(),
        "/etc/falco/rules.d/team=team-a".into(),
        "/var/lib/kubelet/seccomp".into(),
        "/etc/falco=ops".into(),
    ])
    .unwrap();
    let applied = |dir: &str, ns: &str| {
        matches!(
            decide(&in_namespace(dir, ns), &labels(&[]), &allow),
            Decision::Apply { .. }
        )
    };
    assert!(applied("/etc/falco/rules.d", "falco"));
    assert!(
        applied("/etc/falco", "ops"),
        "grants of one directory merge"
    );
    assert!(
        applied("/var/lib/kubelet/seccomp/x", "anyone"),
        "a plain DIR is every namespace"
    );
    assert!(applied("/etc/falco/rules.d/team/x", "team-a"));
    assert!(!applied("/etc/falco/rules.d", "team-a"));
    // the deepest grant decides: a subdirectory granted to team-a is carved out
    assert!(!applied("/etc/falco/rules.d/team", "falco"));
    match decide(
        &in_namespace("/etc/falco/x", "tenant"),
        &labels(&[]),
        &allow,
    ) {
        Decision::Refuse { reason, message } => {
            assert_eq!(reason, NodeReason::DirectoryNotAllowed);
            assert!(
                message.contains("tenant") && message.contains("/etc/falco/x"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    for bad in ["/etc/falco=", "/etc/falco=Bad_NS", "/etc/falco=a,-b"] {
        assert!(AllowList::new(&[bad.into()]).is_err(), "{bad}");
    }
}

#[test]
fn a_status_planned_for_another_generation_is_not_acted_on() {
    let mut b = bundle("/etc/falco", &[], &[("r.yaml", D)]);
    b.metadata.generation = Some(3);
    if let Some(s) = b.status.as_mut() {
        s.observed_generation = Some(2);
    }
    assert_eq!(decide(&b, &labels(&[]), &allow()), Decision::Wait);
    if let Some(s) = b.status.as_mut() {
        s.observed_generation = Some(3);
    }
    assert!(matches!(
        decide(&b, &labels(&[]), &allow()),
        Decision::Apply { .. }
    ));
}

#[test]
fn a_node_whose_falco_label_is_older_than_a_revision_requires_keeps_its_files() {
    use crate::api::rule_bundle::{FalcoConsumer, SourceRevision};
    const LABEL: &str = "falco.org/engine-version";
    let mut b = bundle("/etc/falco/rules.d", &[], &[("r.yaml", D)]);
    b.spec.falco = Some(FalcoConsumer {
        engine_version_from_node_label: Some(LABEL.into()),
        ..Default::default()
    });
    let requires = |b: &mut RuleBundle, v: Option<&str>| {
        let s = b.status.as_mut().expect("status");
        s.sources = vec![SourceRevision {
            name: "rules".into(),
            revision: "5.0.0@sha256:x".into(),
            engine_version: v.map(String::from),
        }];
    };
    requires(&mut b, Some("0.50.0"));
    let refused = |d: Decision| match d {
        Decision::Refuse { reason, message } => Some((reason, message)),
        _ => None,
    };
    let (reason, message) =
        refused(decide(&b, &labels(&[(LABEL, "0.41.0")]), &allow())).expect("held back");
    assert_eq!(reason, NodeReason::RequirementsNotMet);
    assert!(
        message.contains("0.50.0") && message.contains("0.41.0") && message.contains("rules"),
        "{message}"
    );
    let (_, message) = refused(decide(&b, &labels(&[]), &allow())).expect("no label: held back");
    assert!(message.contains(LABEL), "{message}");
    assert!(matches!(
        decide(&b, &labels(&[(LABEL, "0.50.2")]), &allow()),
        Decision::Apply { .. }
    ));
    requires(&mut b, None);
    assert!(
        matches!(decide(&b, &labels(&[]), &allow()), Decision::Apply { .. }),
        "nothing required: no label needed"
    );
    b.spec.falco = None;
    requires(&mut b, Some("9.0.0"));
    assert!(
        matches!(decide(&b, &labels(&[]), &allow()), Decision::Apply { .. }),
        "not asked to check"
    );
}

#[test]
fn a_directory_too_long_to_open_by_path_is_refused() {
    let long = format!("/etc/falco/{}", "d/".repeat(600));
    let b = bundle(&long, &[], &[("r.yaml", D)]);
    match decide(&b, &labels(&[]), &allow()) {
        Decision::Refuse { reason, message } => {
            assert_eq!(reason, NodeReason::InvalidPath);
            assert!(
                message.contains("1024 bytes") && message.len() < 400,
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let fits = format!("/etc/falco/{}", "d/".repeat(400));
    assert!(matches!(
        decide(
            &bundle(&fits, &[], &[("r.yaml", D)]),
            &labels(&[]),
            &allow()
        ),
        Decision::Apply { .. }
    ));
}

const E: &str = "sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const F: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// A bundle whose source `plugin` has `libx.so` for amd64 (digest E) and arm64/v8 (F),
/// and whose source `s` has a rules file for every node.
fn mixed_bundle() -> RuleBundle {
    let mut b = bundle("/etc/falco/plugins", &[], &[("x_rules.yaml", D)]);
    let status = b.status.as_mut().expect("status");
    for (platform, digest) in [("linux/amd64", E), ("linux/arm64/v8", F)] {
        status.files.push(BundleFile {
            path: "libx.so".into(),
            source: "plugin".into(),
            digest: digest.into(),
            size: 1,
            platform: Some(platform.into()),
        });
    }
    b
}

fn platform_labels(os: &str, arch: &str) -> BTreeMap<String, String> {
    labels(&[("kubernetes.io/os", os), ("kubernetes.io/arch", arch)])
}

fn applied(d: Decision) -> Vec<(String, String)> {
    match d {
        Decision::Apply { files, .. } => files
            .into_iter()
            .map(|f| (f.key, f.digest.to_string()))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_node_takes_the_files_of_its_own_platform() {
    let b = mixed_bundle();
    let amd = applied(decide(&b, &platform_labels("linux", "amd64"), &allow()));
    assert_eq!(
        amd,
        [
            ("x_rules.yaml".into(), D.into()),
            ("libx.so".into(), E.into())
        ]
    );
    let arm = applied(decide(&b, &platform_labels("linux", "arm64"), &allow()));
    assert_eq!(
        arm,
        [
            ("x_rules.yaml".into(), D.into()),
            ("libx.so".into(), F.into())
        ]
    );
}

#[test]
fn a_node_whose_platform_a_source_lacks_is_refused_and_keeps_its_files() {
    let b = mixed_bundle();
    for node in [platform_labels("linux", "s390x"), labels(&[])] {
        match decide(&b, &node, &allow()) {
            Decision::Refuse { reason, message } => {
                assert_eq!(reason, NodeReason::PlatformNotAvailable);
                assert!(message.contains("ArtifactSource plugin"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_status_with_a_forged_platform_or_a_name_twice_is_refused() {
    let mut forged = mixed_bundle();
    forged.status.as_mut().unwrap().files[1].platform = Some("linux/../../etc".into());
    assert!(matches!(
        decide(&forged, &platform_labels("linux", "amd64"), &allow()),
        Decision::Refuse {
            reason: NodeReason::PlatformNotAvailable,
            ..
        }
    ));
    // a name for every node and the same name for this node's platform
    let mut twice = mixed_bundle();
    twice.status.as_mut().unwrap().files[0].path = "libx.so".into();
    match decide(&twice, &platform_labels("linux", "amd64"), &allow()) {
        Decision::Refuse { reason, message } => {
            assert_eq!(reason, NodeReason::InvalidPath);
            assert!(message.contains("twice"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
