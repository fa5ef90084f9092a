use super::*;
use crate::api::artifact_source::LocalObjectReference;
use crate::api::artifact_source::{ArtifactFile, ArtifactSourceSpec, ArtifactSourceStatus};
use crate::api::condition::{Status, set_condition};
use crate::api::rule_bundle::BundleSource;

fn artifact(revision: &str, files: &[&str]) -> Artifact {
    Artifact {
        revision: revision.into(),
        digest: Digest::of(revision.as_bytes()).to_string(),
        kind: ContentKind::FalcoRules,
        files: files
            .iter()
            .map(|p| ArtifactFile {
                path: (*p).into(),
                digest: Digest::of(p.as_bytes()).to_string(),
                size: 10,
                platform: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn source(name: &str, include: &[&str]) -> BundleSource {
    BundleSource {
        source_ref: LocalObjectReference { name: name.into() },
        include: include.iter().map(|s| (*s).into()).collect(),
    }
}

fn spec(sources: Vec<BundleSource>) -> RuleBundleSpec {
    RuleBundleSpec {
        sources,
        ..Default::default()
    }
}

#[test]
fn selects_files_by_glob_and_names_them_flat() {
    let a = artifact("1@x", &["falco_rules.yaml", "README.md", "extra/more.yaml"]);
    let p = plan(&spec(vec![source("falco", &["*.yaml"])]), |_| {
        SourceState::Ready(&a)
    })
    .unwrap();
    let keys: Vec<&str> = p.files.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, ["extra_more.yaml", "falco_rules.yaml"]);
    assert_eq!(p.sources[0].revision, "1@x");
    assert!(p.revision.starts_with("sha256:") && p.revision.len() == 71);

    let whole = plan(&spec(vec![source("falco", &["extra/*"])]), |_| {
        SourceState::Ready(&a)
    })
    .unwrap();
    assert_eq!(whole.files.len(), 1);
    assert_eq!(whole.files[0].path, "extra/more.yaml");
}

#[test]
fn no_include_means_every_file() {
    let a = artifact("1@x", &["a.yaml", "b.txt"]);
    let p = plan(&spec(vec![source("s", &[])]), |_| SourceState::Ready(&a)).unwrap();
    assert_eq!(p.files.len(), 2);
}

#[test]
fn revision_follows_sources_and_selection() {
    let a1 = artifact("1@x", &["a.yaml", "b.yaml"]);
    let a2 = artifact("2@y", &["a.yaml", "b.yaml"]);
    let base = plan(&spec(vec![source("s", &[])]), |_| SourceState::Ready(&a1)).unwrap();
    let again = plan(&spec(vec![source("s", &[])]), |_| SourceState::Ready(&a1)).unwrap();
    assert_eq!(base.revision, again.revision, "deterministic");
    let newer = plan(&spec(vec![source("s", &[])]), |_| SourceState::Ready(&a2)).unwrap();
    assert_ne!(base.revision, newer.revision);
    let narrower = plan(&spec(vec![source("s", &["a.*"])]), |_| {
        SourceState::Ready(&a1)
    })
    .unwrap();
    assert_ne!(base.revision, narrower.revision);
}

#[test]
fn two_sources_with_one_file_name_conflict() {
    let a = artifact("1@x", &["falco_rules.yaml"]);
    let b = artifact("2@y", &["falco_rules.yaml", "k8s.yaml"]);
    let err = plan(&spec(vec![source("a", &[]), source("b", &[])]), |n| {
        SourceState::Ready(if n == "a" { &a } else { &b })
    })
    .unwrap_err();
    assert_eq!(err.reason, BundleReason::FileConflict);
    assert!(err.message.contains("ArtifactSource a") && err.message.contains("ArtifactSource b"));
    // narrowing one side resolves it
    let ok = plan(
        &spec(vec![source("a", &[]), source("b", &["k8s.yaml"])]),
        |n| SourceState::Ready(if n == "a" { &a } else { &b }),
    )
    .unwrap();
    assert_eq!(ok.files.len(), 2);
}

#[test]
fn two_paths_with_one_key_conflict() {
    let a = artifact("1@x", &["a/b.yaml", "a_b.yaml"]);
    let err = plan(&spec(vec![source("s", &[])]), |_| SourceState::Ready(&a)).unwrap_err();
    assert_eq!(err.reason, BundleReason::FileConflict);
    assert!(err.message.contains("a/b.yaml") && err.message.contains("a_b.yaml"));
}

#[test]
fn a_source_not_ready_or_missing_holds_the_bundle() {
    let a = artifact("1@x", &["a.yaml"]);
    let err = plan(
        &spec(vec![
            source("ok", &[]),
            source("gone", &[]),
            source("bad", &[]),
        ]),
        |n| match n {
            "ok" => SourceState::Ready(&a),
            "gone" => SourceState::Missing,
            _ => SourceState::NotReady("Unauthorized: 401".into()),
        },
    )
    .unwrap_err();
    assert_eq!(err.reason, BundleReason::SourceNotReady);
    assert!(err.message.contains("gone not found"), "{}", err.message);
    assert!(
        err.message.contains("bad is not ready (Unauthorized: 401)"),
        "{}",
        err.message
    );
}

#[test]
fn a_status_file_digest_that_is_not_one_holds_the_bundle() {
    let good = artifact("1@x", &["a.yaml", "b.yaml"]);
    let p = plan(&spec(vec![source("s", &[])]), |_| SourceState::Ready(&good)).unwrap();
    assert_eq!(p.files[0].digest, Digest::of(b"a.yaml"));
    assert_eq!(p.status_files()[0].digest, good.files[0].digest);
    for bad in ["sha256:../../x", "", &good.files[1].digest.to_uppercase()] {
        let mut a = good.clone();
        a.files[1].digest = bad.to_string();
        let err = plan(&spec(vec![source("s", &[])]), |_| SourceState::Ready(&a)).unwrap_err();
        assert_eq!(err.reason, BundleReason::SourceNotReady, "{bad}");
        assert!(err.message.contains("b.yaml"), "{}", err.message);
    }
}

#[test]
fn a_glob_matching_nothing_is_reported() {
    let a = artifact("1@x", &["a.yaml"]);
    let err = plan(&spec(vec![source("s", &["*.json"])]), |_| {
        SourceState::Ready(&a)
    })
    .unwrap_err();
    assert_eq!(err.reason, BundleReason::NoFilesSelected);
    assert!(err.message.contains("*.json"));
}

#[test]
fn a_file_list_too_large_for_the_status_is_refused() {
    let names: Vec<String> = (0..10_000).map(|i| format!("rules-{i:05}.yaml")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let a = artifact("1@x", &names);
    let e = plan(&spec(vec![source("falco", &[])]), |_| {
        SourceState::Ready(&a)
    })
    .unwrap_err();
    assert_eq!(e.reason, BundleReason::TooManyFiles);
    assert!(e.message.contains("10000 selected files"), "{}", e.message);
    // narrowed, it fits: the real size of status.files stays under the bound
    let p = plan(&spec(vec![source("falco", &["rules-00*"])]), |_| {
        SourceState::Ready(&a)
    })
    .unwrap();
    let bytes = serde_json::to_vec(&p.status_files()).unwrap().len();
    assert!(bytes < MAX_STATUS_FILES_BYTES, "{bytes}");
    assert_eq!(p.files.len(), 1000);
}

#[test]
fn include_lists_are_bounded() {
    let many: Vec<String> = (0..65).map(|i| format!("f{i}*")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let e = validate(&spec(vec![source("falco", &many)])).unwrap_err();
    assert_eq!(e.reason, BundleReason::InvalidSpec);
    assert!(e.message.contains("more than 64"), "{}", e.message);
    let long = "a".repeat(257);
    let e = validate(&spec(vec![source("falco", &[&long])])).unwrap_err();
    assert!(
        e.message.len() < 200,
        "the pattern is not repeated whole: {}",
        e.message
    );
    let sources: Vec<BundleSource> = (0..33).map(|i| source(&format!("s{i}"), &[])).collect();
    assert!(validate(&spec(sources)).is_err());
    assert!(validate(&spec(vec![source("falco", &many[..64])])).is_ok());
}

#[test]
fn a_bad_glob_is_an_invalid_spec() {
    let err = plan(&spec(vec![source("s", &["[a-"])]), |_| SourceState::Missing).unwrap_err();
    assert_eq!(err.reason, BundleReason::InvalidSpec);
    assert!(err.message.contains("spec.sources[0].include"));
}

fn object(
    generation: i64,
    ready: Option<(Status, i64)>,
    artifact: Option<Artifact>,
) -> ArtifactSource {
    let mut s = ArtifactSource::new("s", ArtifactSourceSpec::default());
    s.metadata.generation = Some(generation);
    let mut status = ArtifactSourceStatus {
        artifact,
        ..Default::default()
    };
    if let Some((st, g)) = ready {
        set_condition(
            &mut status.conditions,
            ConditionType::Ready,
            st,
            "R",
            "why",
            Some(g),
            "t",
        );
    }
    s.status = Some(status);
    s
}

#[test]
fn source_state_needs_ready_for_the_current_generation() {
    let a = artifact("1@x", &["a"]);
    assert_eq!(source_state(None), SourceState::Missing);
    let ready = object(2, Some((Status::True, 2)), Some(a.clone()));
    assert_eq!(source_state(Some(&ready)), SourceState::Ready(&a));
    let stale = object(3, Some((Status::True, 2)), Some(a.clone()));
    assert!(matches!(
        source_state(Some(&stale)),
        SourceState::NotReady(_)
    ));
    let failed = object(2, Some((Status::False, 2)), Some(a.clone()));
    assert_eq!(
        source_state(Some(&failed)),
        SourceState::NotReady("R: why".into())
    );
    let first = object(1, Some((Status::Unknown, 1)), None);
    assert!(matches!(
        source_state(Some(&first)),
        SourceState::NotReady(_)
    ));
}

#[test]
fn only_sources_not_checked_yet_let_a_new_bundle_wait_quietly() {
    let unchecked = || {
        let mut s = object(1, None, None);
        s.status = None;
        s
    };
    let ready = || object(1, Some((Status::True, 1)), Some(artifact("1@x", &["a"])));
    let failed = || object(1, Some((Status::False, 1)), None);
    let suspended = || {
        let mut s = unchecked();
        s.spec.suspend = true;
        s
    };
    let quiet = |a: Option<ArtifactSource>, b: Option<ArtifactSource>| {
        let both = spec(vec![source("a", &[]), source("b", &[])]);
        awaits_first_check(&both, |name| {
            match name {
                "a" => a.clone(),
                _ => b.clone(),
            }
            .map(Box::new)
        })
    };
    assert!(quiet(Some(unchecked()), Some(ready())));
    assert!(quiet(Some(unchecked()), Some(unchecked())));
    assert!(!quiet(Some(ready()), Some(ready())), "nothing to wait for");
    assert!(!quiet(Some(unchecked()), None), "a missing source is news");
    assert!(
        !quiet(Some(unchecked()), Some(failed())),
        "so is a failing one"
    );
    assert!(
        !quiet(Some(suspended()), Some(ready())),
        "a suspended one is never checked"
    );
    assert!(!quiet(
        Some(ready()),
        Some(object(2, Some((Status::True, 1)), None))
    ));
    // a first pull under way (the source's progress status) is still a first check
    let mut pulling = object(1, None, None);
    let conditions = &mut pulling.status.as_mut().unwrap().conditions;
    let progressing = SourceReason::Progressing.as_str();
    set_condition(
        conditions,
        ConditionType::Ready,
        Status::Unknown,
        progressing,
        "pulling",
        Some(1),
        "t",
    );
    assert!(quiet(Some(pulling.clone()), Some(ready())));
    pulling.status.as_mut().unwrap().artifact = Some(artifact("1@x", &["a"]));
    assert!(
        !quiet(Some(pulling), Some(ready())),
        "a later pull is not a first check"
    );
}

#[test]
fn a_source_with_verify_is_usable_only_with_a_verified_artifact() {
    let a = artifact("1@x", &["a"]);
    let mut unverified = object(2, Some((Status::True, 2)), Some(a.clone()));
    unverified.spec.verify = Some(crate::api::artifact_source::VerifySpec {
        secret_ref: Some(crate::api::artifact_source::LocalObjectReference {
            name: "keys".into(),
        }),
        ..Default::default()
    });
    // Ready=True in status does not make an unverified artifact usable
    match source_state(Some(&unverified)) {
        SourceState::NotReady(why) => assert!(why.contains("not verified"), "{why}"),
        other => panic!("expected NotReady, got {other:?}"),
    }
    let mut verified = a.clone();
    verified.verification = Some(crate::api::artifact_source::Verification {
        method: "key".into(),
        format: "classic".into(),
        ..Default::default()
    });
    let mut ok = unverified.clone();
    if let Some(s) = ok.status.as_mut() {
        s.artifact = Some(verified.clone());
    }
    assert_eq!(source_state(Some(&ok)), SourceState::Ready(&verified));
}

/// An artifact of `platform: all`: each (platform, path) a file whose bytes differ by
/// platform.
fn per_platform(revision: &str, files: &[(&str, &str)]) -> Artifact {
    let mut a = artifact(revision, &[]);
    a.kind = ContentKind::FalcoPlugin;
    a.files = files
        .iter()
        .map(|(platform, path)| ArtifactFile {
            path: (*path).into(),
            digest: Digest::of(format!("{platform}{path}").as_bytes()).to_string(),
            size: 10,
            platform: Some((*platform).into()),
        })
        .collect();
    a
}

#[test]
fn files_per_platform_share_a_name_and_reach_status_with_their_platform() {
    let plugin = per_platform(
        "1@p",
        &[("linux/amd64", "libx.so"), ("linux/arm64", "libx.so")],
    );
    let rules = artifact("1@r", &["x_rules.yaml"]);
    let mut s = spec(vec![source("plugin", &[]), source("rules", &[])]);
    let lookup = |name: &str| match name {
        "plugin" => SourceState::Ready(&plugin),
        _ => SourceState::Ready(&rules),
    };
    let p = plan(&s, lookup).unwrap();
    let listed: Vec<(String, Option<String>)> = p
        .status_files()
        .into_iter()
        .map(|f| (f.path, f.platform))
        .collect();
    let want = |k: &str, p: Option<&str>| (k.to_string(), p.map(String::from));
    assert_eq!(
        listed,
        [
            want("libx.so", Some("linux/amd64")),
            want("libx.so", Some("linux/arm64")),
            want("x_rules.yaml", None)
        ]
    );

    // a ConfigMap would hand every platform's file to every reader
    s.config_map = Some(Default::default());
    let e = plan(&s, lookup).unwrap_err();
    assert_eq!(e.reason, BundleReason::MultiPlatformSource);
    assert!(
        e.message.contains("ArtifactSource plugin") && e.message.contains("nodeFiles"),
        "{}",
        e.message
    );
}

#[test]
fn a_name_for_every_node_clashes_with_the_same_name_for_one_platform() {
    let plugin = per_platform("1@p", &[("linux/amd64", "libx.so")]);
    let plain = artifact("1@q", &["libx.so"]);
    for order in [["plugin", "plain"], ["plain", "plugin"]] {
        let s = spec(order.iter().map(|n| source(n, &[])).collect());
        let e = plan(&s, |name| match name {
            "plugin" => SourceState::Ready(&plugin),
            _ => SourceState::Ready(&plain),
        })
        .unwrap_err();
        assert_eq!(e.reason, BundleReason::FileConflict, "{order:?}");
    }
    let twice = per_platform(
        "1@p",
        &[("linux/amd64", "a/libx.so"), ("linux/amd64", "a_libx.so")],
    );
    let e = plan(&spec(vec![source("plugin", &[])]), |_| {
        SourceState::Ready(&twice)
    })
    .unwrap_err();
    assert_eq!(e.reason, BundleReason::FileConflict);
}

#[test]
fn the_revision_changes_with_a_files_platform() {
    let amd = per_platform("1@p", &[("linux/amd64", "libx.so")]);
    let mut arm = amd.clone();
    arm.files[0].platform = Some("linux/arm64".into());
    let s = spec(vec![source("plugin", &[])]);
    let a = plan(&s, |_| SourceState::Ready(&amd)).unwrap();
    let b = plan(&s, |_| SourceState::Ready(&arm)).unwrap();
    assert_ne!(a.revision, b.revision);
}

#[test]
fn two_sources_with_one_name_for_the_same_arch_clash_whatever_their_variants() {
    let a = per_platform("1@a", &[("linux/arm64", "libx.so")]);
    let b = per_platform("1@b", &[("linux/arm64/v8", "libx.so")]);
    let s = spec(vec![source("a", &[]), source("b", &[])]);
    let e = plan(&s, |name| match name {
        "a" => SourceState::Ready(&a),
        _ => SourceState::Ready(&b),
    })
    .unwrap_err();
    assert_eq!(e.reason, BundleReason::FileConflict);
    let mut forged = a.clone();
    forged.files[0].platform = Some("linux/../x".into());
    let e = plan(&spec(vec![source("a", &[])]), |_| {
        SourceState::Ready(&forged)
    })
    .unwrap_err();
    assert_eq!(e.reason, BundleReason::SourceNotReady, "{}", e.message);
}
