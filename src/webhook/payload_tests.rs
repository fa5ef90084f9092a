use super::*;

const D1: &str = "sha256:4b2cf4bd0be1a0a5e1e3d1a4f1d8f0a35f1e7c4f2a4a0b9b8c2d1e0f9a8b7c6d";

fn push(repository: &str, tag: &str) -> PushEvent {
    PushEvent {
        repository: repository.into(),
        tag: PushedTag::Named(tag.into()),
        digest: None,
    }
}

/// `e`, pushed as digest `D1`.
fn at_d1(e: PushEvent) -> PushEvent {
    PushEvent {
        digest: Some(D1.into()),
        ..e
    }
}

fn by_digest(repository: &str) -> PushEvent {
    PushEvent {
        repository: repository.into(),
        tag: PushedTag::Untagged,
        digest: None,
    }
}

fn unsaid(repository: &str) -> PushEvent {
    PushEvent {
        repository: repository.into(),
        tag: PushedTag::Unsaid,
        digest: None,
    }
}

/// What CNCF Distribution 2.8 sends for `ocisync push ... reg:5000/falco/rules:3`: the
/// config and layer blobs, then the manifest by tag; and a pull made later.
fn distribution_envelope() -> String {
    serde_json::json!({"events": [
        {
            "id": "6b9c3a4e-1f0e-4b8e-9d1a-2f3c4d5e6f70",
            "timestamp": "2026-12-02T17:01:59.123456789Z",
            "action": "push",
            "target": {
                "mediaType": "application/octet-stream",
                "size": 412, "digest": D1, "length": 412,
                "repository": "falco/rules",
                "url": format!("http://reg:5000/v2/falco/rules/blobs/{D1}"),
            },
            "request": {"id": "a1", "addr": "10.0.0.9:51234", "host": "reg:5000", "method": "PUT", "useragent": "ocisync/0.1.0"},
            "actor": {},
            "source": {"addr": "registry-0:5000", "instanceID": "0f7b2c1e"},
        },
        {
            "id": "7c0d4b5f-2a1f-4c9f-8e2b-3a4d5e6f7081",
            "timestamp": "2026-12-02T17:01:59.223456789Z",
            "action": "push",
            "target": {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "size": 733, "digest": D1, "length": 733,
                "repository": "falco/rules",
                "url": format!("http://reg:5000/v2/falco/rules/manifests/{D1}"),
                "tag": "3",
            },
            "request": {"id": "a2", "addr": "10.0.0.9:51234", "host": "reg:5000", "method": "PUT", "useragent": "ocisync/0.1.0"},
            "actor": {},
            "source": {"addr": "registry-0:5000", "instanceID": "0f7b2c1e"},
        },
        {
            "id": "8d1e5c6a-3b2a-4d0a-9f3c-4b5e6f708192",
            "timestamp": "2026-12-02T17:02:09.000000000Z",
            "action": "pull",
            "target": {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "size": 733, "digest": D1, "length": 733,
                "repository": "falco/other",
                "url": format!("http://reg:5000/v2/falco/other/manifests/{D1}"),
                "tag": "3",
            },
            "request": {"id": "a3", "addr": "10.0.0.7:40000", "host": "reg:5000", "method": "HEAD", "useragent": "ocisync/0.1.0"},
            "actor": {},
            "source": {"addr": "registry-0:5000", "instanceID": "0f7b2c1e"},
        },
    ]})
    .to_string()
}

#[test]
fn distribution_counts_manifest_pushes_only() {
    let body = distribution_envelope();
    let parsed = parse(Some(DISTRIBUTION_EVENTS), body.as_bytes()).expect("parsed");
    assert_eq!(parsed.shape, Shape::Distribution);
    assert_eq!(parsed.pushes, vec![at_d1(push("falco/rules", "3"))]);
    // the shape is recognised without the media type too, and with parameters on it
    let bare = parse(Some("application/json"), body.as_bytes()).expect("parsed");
    assert_eq!(bare, parsed);
    let with_params = parse(
        Some("application/vnd.docker.distribution.events.v1+json; charset=utf-8"),
        body.as_bytes(),
    );
    assert_eq!(with_params, Ok(parsed));
}

#[test]
fn distribution_push_by_digest_has_no_tag_and_url_less_targets_go_by_media_type() {
    let body = serde_json::json!({"events": [
        {"action": "push", "target": {"mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": D1, "repository": "org/multi", "url": format!("https://r.example/v2/org/multi/manifests/{D1}")}},
        {"action": "push", "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": D1, "repository": "org/old", "tag": "latest"}},
        {"action": "push", "target": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": D1, "repository": "org/blob"}},
        {"action": "delete", "target": {"digest": D1, "repository": "org/gone",
            "url": format!("https://r.example/v2/org/gone/manifests/{D1}")}},
        {"action": "mount", "target": {"repository": "org/mounted"}},
    ]})
    .to_string();
    let parsed = parse(Some(DISTRIBUTION_EVENTS), body.as_bytes()).expect("parsed");
    assert_eq!(
        parsed.pushes,
        vec![
            at_d1(by_digest("org/multi")),
            at_d1(push("org/old", "latest"))
        ]
    );
}

#[test]
fn duplicate_events_in_one_request_collapse() {
    let event = serde_json::json!({"action": "push", "target": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "a/b",
        "url": "http://r/v2/a/b/manifests/1", "tag": "1"}});
    let body = serde_json::json!({"events": vec![event; 50]}).to_string();
    let parsed = parse(None, body.as_bytes()).expect("parsed");
    assert_eq!(parsed.pushes, vec![push("a/b", "1")]);
}

#[test]
fn distribution_without_pushes_is_recognised_and_empty() {
    let parsed = parse(Some(DISTRIBUTION_EVENTS), br#"{"events": []}"#).expect("parsed");
    assert_eq!(parsed.shape, Shape::Distribution);
    assert!(parsed.pushes.is_empty());
    // the media type names the shape, so a wrong body is a Distribution bad request
    let bad = parse(Some(DISTRIBUTION_EVENTS), br#"{"events": 3}"#).expect_err("refused");
    assert_eq!(bad.shape, Shape::Distribution);
}

/// Harbor's `Default` payload for `docker push harbor.example.com/library/nginx:v1`.
const HARBOR_DEFAULT: &str = r#"{
  "type": "PUSH_ARTIFACT",
  "occur_at": 1764694919,
  "operator": "admin",
  "event_data": {
    "resources": [
      {
        "digest": "sha256:4b2cf4bd0be1a0a5e1e3d1a4f1d8f0a35f1e7c4f2a4a0b9b8c2d1e0f9a8b7c6d",
        "tag": "v1",
        "resource_url": "harbor.example.com/library/nginx:v1"
      }
    ],
    "repository": {
      "date_created": 1764694900,
      "name": "nginx",
      "namespace": "library",
      "repo_full_name": "library/nginx",
      "repo_type": "public"
    }
  }
}"#;

/// Harbor's `CloudEvents` payload for a push by digest (Harbor names the digest as the tag).
const HARBOR_CLOUDEVENTS: &str = r#"{
  "specversion": "1.0",
  "id": "3e6a0c8e-9a55-4a3b-a0a4-5b1f6f0e2d11",
  "requestid": "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5",
  "source": "/projects/2/webhook/policies/7",
  "type": "harbor.artifact.pushed",
  "datacontenttype": "application/json",
  "time": "2026-12-02T17:01:59Z",
  "data": {
    "resources": [
      {
        "digest": "sha256:4b2cf4bd0be1a0a5e1e3d1a4f1d8f0a35f1e7c4f2a4a0b9b8c2d1e0f9a8b7c6d",
        "tag": "sha256:4b2cf4bd0be1a0a5e1e3d1a4f1d8f0a35f1e7c4f2a4a0b9b8c2d1e0f9a8b7c6d",
        "resource_url": "harbor.example.com/security/falco-rules@sha256:4b2cf4bd0be1a0a5e1e3d1a4f1d8f0a35f1e7c4f2a4a0b9b8c2d1e0f9a8b7c6d"
      }
    ],
    "repository": {
      "date_created": 1764694900,
      "name": "falco-rules",
      "namespace": "security",
      "repo_full_name": "security/falco-rules",
      "repo_type": "private"
    }
  },
  "operator": "robot$ci"
}"#;

#[test]
fn harbor_default_and_cloudevents_pushes() {
    let parsed = parse(Some("application/json"), HARBOR_DEFAULT.as_bytes()).expect("default");
    assert_eq!(parsed.shape, Shape::Harbor);
    assert_eq!(parsed.pushes, vec![at_d1(push("library/nginx", "v1"))]);
    let parsed = parse(
        Some("application/cloudevents+json"),
        HARBOR_CLOUDEVENTS.as_bytes(),
    )
    .expect("cloudevents");
    assert_eq!(parsed.shape, Shape::Harbor);
    assert_eq!(
        parsed.pushes,
        vec![at_d1(by_digest("security/falco-rules"))]
    );
}

#[test]
fn harbor_other_events_are_no_pushes() {
    let pull = HARBOR_DEFAULT.replace("PUSH_ARTIFACT", "PULL_ARTIFACT");
    let parsed = parse(None, pull.as_bytes()).expect("pull");
    assert_eq!((parsed.shape, parsed.pushes.len()), (Shape::Harbor, 0));
    let scan = r#"{"type": "SCANNING_COMPLETED", "occur_at": 1, "operator": "auto",
        "event_data": {"resources": [{"tag": "v1", "scan_overview": {}}]}}"#;
    let parsed = parse(None, scan.as_bytes()).expect("scan");
    assert_eq!((parsed.shape, parsed.pushes.len()), (Shape::Harbor, 0));
    let deleted = HARBOR_CLOUDEVENTS.replace("harbor.artifact.pushed", "harbor.artifact.deleted");
    assert!(
        parse(None, deleted.as_bytes())
            .expect("deleted")
            .pushes
            .is_empty()
    );
}

#[test]
fn harbor_push_with_several_tags_or_none() {
    let body = serde_json::json!({"type": "PUSH_ARTIFACT", "event_data": {
        "resources": [{"tag": "v2"}, {"tag": "latest"}],
        "repository": {"repo_full_name": "proj/app"}}})
    .to_string();
    let parsed = parse(None, body.as_bytes()).expect("parsed");
    assert_eq!(
        parsed.pushes,
        vec![push("proj/app", "latest"), push("proj/app", "v2")]
    );
    let body = r#"{"type": "PUSH_ARTIFACT", "event_data": {"repository": {"repo_full_name": "proj/app"}}}"#;
    let parsed = parse(None, body.as_bytes()).expect("parsed");
    assert_eq!(parsed.pushes, vec![unsaid("proj/app")]);
    // a push without its data is malformed
    let bad = parse(None, br#"{"type": "PUSH_ARTIFACT", "event_data": {}}"#).expect_err("bad");
    assert_eq!(bad.shape, Shape::Harbor);
}

#[test]
fn generic_shape_with_and_without_tag() {
    let parsed = parse(None, br#"{"repository": "org/repo", "tag": "1"}"#).expect("tag");
    assert_eq!(parsed.shape, Shape::Generic);
    assert_eq!(parsed.pushes, vec![push("org/repo", "1")]);
    let parsed = parse(None, br#"{"repository": "/org/repo/"}"#).expect("no tag");
    assert_eq!(parsed.pushes, vec![unsaid("org/repo")]);
    let parsed = parse(None, br#"{"repository": "org/repo", "tag": ""}"#).expect("empty tag");
    assert_eq!(parsed.pushes, vec![unsaid("org/repo")]);
}

#[test]
fn generic_shape_mistakes_are_bad_requests() {
    for body in [
        r#"{"repository": "Org/Repo"}"#,
        r#"{"repository": ""}"#,
        r#"{"repository": "org/repo", "tag": "no spaces"}"#,
        r#"{"repository": "org/repo", "tag": 3}"#,
    ] {
        let bad = parse(None, body.as_bytes()).expect_err(body);
        assert_eq!(bad.shape, Shape::Generic, "{body}");
    }
}

#[test]
fn unknown_shapes_and_non_json_are_refused() {
    for body in [
        &b"not json"[..],
        b"[]",
        b"{}",
        br#"{"ref": "refs/heads/main", "commits": []}"#,
        br#"{"repository": {"name": "x"}}"#,
    ] {
        let bad = parse(Some("application/json"), body).expect_err("refused");
        assert_eq!(
            bad.shape,
            Shape::Unknown,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn shape_hint_comes_from_the_content_type_only() {
    assert_eq!(Shape::hint(Some(DISTRIBUTION_EVENTS)), Shape::Distribution);
    assert_eq!(Shape::hint(Some("application/json")), Shape::Unknown);
    assert_eq!(Shape::hint(None), Shape::Unknown);
}
