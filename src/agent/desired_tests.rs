use super::*;
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
                    reason: "DirectoryNotAllowed",
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
                    reason: "InvalidPath",
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
            reason: "DirectoryNotAllowed",
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
                    reason: "InvalidPath",
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
            reason: "InvalidPath",
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
fn symlinks_on_the_host_cannot_lead_outside() {
    let host = tempfile::tempdir().unwrap();
    let root = host.path();
    std::fs::create_dir_all(root.join("etc/falco")).unwrap();
    std::fs::create_dir_all(root.join("etc/other")).unwrap();
    std::os::unix::fs::symlink(root.join("etc/other"), root.join("etc/falco/escape")).unwrap();
    let allowed = Path::new("/etc/falco");
    assert!(stays_inside(root, Path::new("/etc/falco/rules.d"), allowed));
    assert!(stays_inside(root, Path::new("/etc/falco"), allowed));
    assert!(!stays_inside(root, Path::new("/etc/falco/escape"), allowed));
    assert!(!stays_inside(
        root,
        Path::new("/etc/falco/escape/deeper"),
        allowed
    ));
    assert!(
        !stays_inside(root, Path::new("/nope/x"), Path::new("/nope")),
        "allowed dir not mounted"
    );
}
