use super::*;

const DIGEST: &str = "sha256:4b2cf4bd0be1a0a5e1e3d1a4f1d8f0a35f1e7c4f2a4a0b9b8c2d1e0f9a8b7c6d";

fn source(ns: &str, name: &str, spec: serde_json::Value) -> Arc<ArtifactSource> {
    let mut spec = spec;
    if spec.get("interval").is_none() {
        spec["interval"] = "1h".into();
    }
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ocisync.dev/v1alpha1", "kind": "ArtifactSource",
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
        }))
        .expect("source"),
    )
}

/// A push of `tag`; `None`: by digest; `Some("*")`: the sender did not say.
fn push(repository: &str, tag: Option<&str>) -> PushEvent {
    let tag = match tag {
        None => PushedTag::Untagged,
        Some("*") => PushedTag::Unsaid,
        Some(t) => PushedTag::Named(t.into()),
    };
    PushEvent {
        repository: repository.into(),
        tag,
        digest: None,
    }
}

fn key(ns: &str, name: &str) -> SourceKey {
    SourceKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

#[test]
fn tag_sources_wake_on_their_tag_or_when_the_tag_is_unsaid() {
    let s = source(
        "a",
        "s",
        serde_json::json!({"url": "oci://reg.example:5000/falco/rules", "ref": {"tag": "3"}}),
    );
    assert!(concerns(&s, &push("falco/rules", Some("3"))));
    assert!(concerns(&s, &push("falco/rules", Some("*"))));
    // a manifest pushed by digest moves no tag (the push of the tag follows it)
    assert!(!concerns(&s, &push("falco/rules", None)));
    assert!(!concerns(&s, &push("falco/rules", Some("4"))));
    assert!(!concerns(&s, &push("falco/rules", Some("latest"))));
    // another repository, a prefix of it, or one nested below it
    assert!(!concerns(&s, &push("falco/rules-extra", Some("3"))));
    assert!(!concerns(&s, &push("falco", Some("3"))));
    assert!(!concerns(&s, &push("falco/rules/sub", Some("3"))));
    // no ref: tag latest
    let latest = source(
        "a",
        "l",
        serde_json::json!({"url": "oci://reg.example/falco/rules"}),
    );
    assert!(concerns(&latest, &push("falco/rules", Some("latest"))));
    assert!(!concerns(&latest, &push("falco/rules", Some("3"))));
}

#[test]
fn the_registry_host_is_not_compared() {
    let s = source(
        "a",
        "s",
        serde_json::json!({"url": "oci://registry.registry.svc:5000/falco/rules", "ref": {"tag": "3"}}),
    );
    // Distribution names the host the pusher used; the event carries only the path
    assert!(concerns(&s, &push("falco/rules", Some("3"))));
}

#[test]
fn semver_sources_wake_on_versions_in_their_range() {
    let s = source(
        "a",
        "s",
        serde_json::json!({"url": "oci://r/org/rules", "ref": {"semver": ">=3.0.0 <4"}}),
    );
    for tag in ["3.0.0", "3.1.7", "v3.2.0"] {
        assert!(concerns(&s, &push("org/rules", Some(tag))), "{tag}");
    }
    for tag in ["4.0.0", "2.9.9", "latest", "3.1.0-rc.1"] {
        assert!(!concerns(&s, &push("org/rules", Some(tag))), "{tag}");
    }
    assert!(concerns(&s, &push("org/rules", Some("*"))));
    assert!(!concerns(&s, &push("org/rules", None)));
}

#[test]
fn digest_pins_invalid_specs_and_suspended_sources_never_wake() {
    let pinned = source(
        "a",
        "p",
        serde_json::json!({"url": "oci://r/org/rules", "ref": {"digest": DIGEST}}),
    );
    let suspended = source(
        "a",
        "s",
        serde_json::json!({"url": "oci://r/org/rules", "ref": {"tag": "1"}, "suspend": true}),
    );
    let invalid = source(
        "a",
        "i",
        serde_json::json!({"url": "https://r/org/rules", "ref": {"tag": "1"}}),
    );
    for s in [&pinned, &suspended, &invalid] {
        for tag in [Some("1"), None, Some("*")] {
            assert!(!concerns(s, &push("org/rules", tag)), "{tag:?}");
        }
    }
}

#[test]
fn verifying_sources_wake_on_signature_tags_and_pushes_by_digest() {
    let verifying = source(
        "a",
        "v",
        serde_json::json!({"url": "oci://r/org/rules", "ref": {"tag": "1"},
            "verify": {"provider": "cosign", "secretRef": {"name": "keys"}}}),
    );
    let plain = source(
        "a",
        "p",
        serde_json::json!({"url": "oci://r/org/rules", "ref": {"tag": "1"}}),
    );
    let hex = DIGEST.trim_start_matches("sha256:");
    for tag in [
        format!("sha256-{hex}.sig"),
        format!("sha256-{hex}.att"),
        format!("sha256-{hex}"),
    ] {
        assert!(
            concerns(&verifying, &push("org/rules", Some(&tag))),
            "{tag}"
        );
        assert!(!concerns(&plain, &push("org/rules", Some(&tag))), "{tag}");
    }
    assert!(!concerns(
        &verifying,
        &push("org/rules", Some("sha256-abc.sig"))
    ));
    assert!(!concerns(&verifying, &push("org/rules", Some("2"))));
    // a Sigstore bundle or attestation attached through the referrers API has no tag
    assert!(concerns(&verifying, &push("org/rules", None)));
    assert!(!concerns(&plain, &push("org/rules", None)));
}

#[test]
fn concerned_sources_span_namespaces_once_each() {
    let sources = vec![
        source(
            "team-a",
            "rules",
            serde_json::json!({"url": "oci://r/org/rules", "ref": {"tag": "1"}}),
        ),
        source(
            "team-b",
            "rules",
            serde_json::json!({"url": "oci://mirror.example/org/rules", "ref": {"tag": "1"}}),
        ),
        source(
            "team-b",
            "v2",
            serde_json::json!({"url": "oci://r/org/rules", "ref": {"tag": "2"}}),
        ),
        source(
            "team-a",
            "other",
            serde_json::json!({"url": "oci://r/org/other", "ref": {"tag": "1"}}),
        ),
    ];
    let pushes = vec![push("org/rules", Some("1")), push("org/rules", Some("*"))];
    let keys = |w: Vec<Wakeup>| w.into_iter().map(|w| w.key).collect::<Vec<_>>();
    assert_eq!(
        keys(concerned(&sources, &pushes)),
        vec![
            key("team-a", "rules"),
            key("team-b", "rules"),
            key("team-b", "v2")
        ]
    );
    assert_eq!(
        keys(concerned(&sources, &[push("org/rules", Some("1"))])),
        vec![key("team-a", "rules"), key("team-b", "rules")]
    );
    assert!(concerned(&sources, &[push("org/rules", None)]).is_empty());
    assert!(concerned(&sources, &[push("org/unknown", Some("1"))]).is_empty());
    assert!(concerned(&[], &pushes).is_empty());
}

#[test]
fn a_tag_push_expects_status_to_move_from_its_digest_then() {
    let mut at_d = source(
        "a",
        "s",
        serde_json::json!({"url": "oci://r/org/rules", "ref": {"tag": "1"}}),
    );
    Arc::make_mut(&mut at_d).status = serde_json::from_value(serde_json::json!({
        "artifact": {"revision": format!("1@{DIGEST}"), "digest": DIGEST, "kind": "FalcoRules", "size": 1},
        "lastHandledRequestedAt": "earlier",
    }))
    .expect("status");
    let pushed = PushEvent {
        digest: Some("sha256:new".into()),
        ..push("org/rules", Some("1"))
    };
    let woken = concerned(&[at_d.clone()], &[pushed]);
    assert_eq!(
        woken,
        vec![Wakeup {
            key: key("a", "s"),
            expect: Some(Expect {
                before: Some(DIGEST.into()),
                pushed: Some("sha256:new".into())
            }),
        }]
    );
    // "something changed" expects nothing in particular
    let woken = concerned(&[at_d], &[push("org/rules", Some("*"))]);
    assert_eq!(woken[0].expect, None);
}
