//! What a webhook says: the pushes in a CNCF Distribution notification envelope, a Harbor
//! webhook (its `Default` or `CloudEvents` payload format) or the generic
//! `{"repository": "org/repo", "tag": "1"}`.
//!
//! The shape is told by the content type (Distribution's events media type) or else by the
//! JSON's fields. Only pushes of manifests count: Distribution also reports blob pushes,
//! pulls, mounts and deletions, Harbor pulls, deletions and scans; those are ignored.
//!
//! A push names a tag, or is a manifest pushed by digest only (which moves no tag: a
//! client pushing `repo:1` sends the manifest by digest, then by tag, and Distribution
//! reports both), or leaves the tag unsaid (the generic shape without `tag`: "something in
//! this repository changed").

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use crate::oci::reference::{Repository, validate_tag};

/// Distribution's notification media type.
pub const DISTRIBUTION_EVENTS: &str = "application/vnd.docker.distribution.events.v1+json";

/// Manifest media types, for a Distribution event without a target URL.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Which payload shape a request had; also the `shape` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Distribution,
    Harbor,
    Generic,
    Unknown,
}

impl Shape {
    pub fn label(self) -> &'static str {
        match self {
            Shape::Distribution => "distribution",
            Shape::Harbor => "harbor",
            Shape::Generic => "generic",
            Shape::Unknown => "unknown",
        }
    }

    /// The shape a request's content type announces, before its body is read.
    pub fn hint(content_type: Option<&str>) -> Shape {
        match content_type.map(media_type) {
            Some(t) if t.eq_ignore_ascii_case(DISTRIBUTION_EVENTS) => Shape::Distribution,
            _ => Shape::Unknown,
        }
    }
}

/// A manifest pushed to `repository` (a path such as `org/rules`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PushEvent {
    pub repository: String,
    pub tag: PushedTag,
    /// The manifest's digest, when the sender gave it.
    pub digest: Option<String>,
}

/// What a push says of tags.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PushedTag {
    /// This tag now names the manifest.
    Named(String),
    /// The manifest was pushed by digest: no tag moved.
    Untagged,
    /// The sender did not say: any tag may have moved.
    Unsaid,
}

impl std::fmt::Display for PushEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tag {
            PushedTag::Named(t) => write!(f, "{}:{t}", self.repository),
            PushedTag::Untagged => write!(f, "{}@digest", self.repository),
            PushedTag::Unsaid => write!(f, "{}", self.repository),
        }
    }
}

/// The pushes of one request, deduplicated.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub shape: Shape,
    pub pushes: Vec<PushEvent>,
}

/// Why a body was refused (answered 400).
#[derive(Debug, PartialEq, Eq)]
pub struct BadPayload {
    pub shape: Shape,
    pub why: String,
}

/// Reads the pushes a request's body reports.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, BadPayload> {
    let hinted = Shape::hint(content_type);
    let value: Value = serde_json::from_slice(body).map_err(|e| BadPayload {
        shape: hinted,
        why: format!("not JSON: {e}"),
    })?;
    let shape = match hinted {
        Shape::Distribution => Shape::Distribution,
        _ => detect(&value),
    };
    let bad = |why: String| BadPayload { shape, why };
    let events = match shape {
        Shape::Distribution => distribution(value).map_err(|e| bad(e.to_string()))?,
        Shape::Harbor => harbor(value).map_err(|e| bad(e.to_string()))?,
        Shape::Generic => generic(value).map_err(bad)?,
        Shape::Unknown => {
            return Err(bad(
                "not a Distribution, Harbor or {\"repository\", \"tag\"} payload".into(),
            ));
        }
    };
    let pushes: BTreeSet<PushEvent> = events.into_iter().collect();
    Ok(Parsed {
        shape,
        pushes: pushes.into_iter().collect(),
    })
}

/// The media type of a `Content-Type` value, without parameters.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn detect(value: &Value) -> Shape {
    let Some(object) = value.as_object() else {
        return Shape::Unknown;
    };
    let type_ = object.get("type").and_then(Value::as_str);
    if object.get("events").is_some_and(Value::is_array) {
        Shape::Distribution
    } else if object.contains_key("event_data")
        || object.contains_key("specversion") && type_.is_some_and(|t| t.starts_with("harbor."))
    {
        Shape::Harbor
    } else if object.get("repository").is_some_and(Value::is_string) {
        Shape::Generic
    } else {
        Shape::Unknown
    }
}

/// A repository path as events carry it, if it is one a source URL could name.
fn repository_path(raw: &str) -> Option<String> {
    let path = raw.trim().trim_matches('/');
    Repository::parse_url(&format!("oci://registry/{path}")).ok()?;
    Some(path.to_string())
}

/// A digest as events carry it, if it is one.
fn digest_of(raw: Option<&str>) -> Option<String> {
    let digest = raw?.trim();
    crate::digest::Digest::parse(digest).ok()?;
    Some(digest.to_string())
}

/// A registry event's tag; absent, empty or not a tag (Harbor reports a push by digest
/// with the digest as its "tag"): a push by digest.
fn tag_of(raw: Option<&str>) -> PushedTag {
    match raw.map(str::trim) {
        Some(tag) if validate_tag(tag).is_ok() => PushedTag::Named(tag.to_string()),
        _ => PushedTag::Untagged,
    }
}

#[derive(Deserialize)]
struct Envelope {
    events: Vec<DistributionEvent>,
}

#[derive(Deserialize)]
struct DistributionEvent {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: Target,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    tag: Option<String>,
}

impl Target {
    /// A manifest, not a blob: by its URL (`/v2/<repo>/manifests/<ref>`), else its type.
    fn is_manifest(&self) -> bool {
        if !self.url.is_empty() {
            return self.url.contains("/manifests/");
        }
        MANIFEST_TYPES.contains(&self.media_type.as_str())
    }
}

fn distribution(value: Value) -> Result<Vec<PushEvent>, serde_json::Error> {
    let envelope: Envelope = serde_json::from_value(value)?;
    Ok(envelope
        .events
        .into_iter()
        .filter(|e| e.action == "push" && e.target.is_manifest())
        .filter_map(|e| {
            Some(PushEvent {
                repository: repository_path(&e.target.repository)?,
                tag: tag_of(e.target.tag.as_deref()),
                digest: digest_of(Some(&e.target.digest)),
            })
        })
        .collect())
}

#[derive(Deserialize)]
struct HarborData {
    #[serde(default)]
    resources: Vec<HarborResource>,
    repository: HarborRepository,
}

#[derive(Deserialize)]
struct HarborResource {
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

#[derive(Deserialize)]
struct HarborRepository {
    repo_full_name: String,
}

/// Harbor's `Default` payload format (`type` `PUSH_ARTIFACT`, the data in `event_data`)
/// or its `CloudEvents` one (`type` `harbor.artifact.pushed`, the data in `data`). Other
/// event types (pulls, deletions, scans, replications) are no pushes.
fn harbor(mut value: Value) -> Result<Vec<PushEvent>, serde_json::Error> {
    let (push_type, data_key) = if value.get("specversion").is_some() {
        ("harbor.artifact.pushed", "data")
    } else {
        ("PUSH_ARTIFACT", "event_data")
    };
    if value.get("type").and_then(Value::as_str) != Some(push_type) {
        return Ok(Vec::new());
    }
    let data = value.get_mut(data_key).map(Value::take).unwrap_or_default();
    let data: HarborData = serde_json::from_value(data)?;
    let Some(repository) = repository_path(&data.repository.repo_full_name) else {
        return Ok(Vec::new());
    };
    let push = |tag, digest| PushEvent {
        repository: repository.clone(),
        tag,
        digest,
    };
    if data.resources.is_empty() {
        return Ok(vec![push(PushedTag::Unsaid, None)]);
    }
    Ok(data
        .resources
        .iter()
        .map(|r| push(tag_of(r.tag.as_deref()), digest_of(r.digest.as_deref())))
        .collect())
}

#[derive(Deserialize)]
struct Generic {
    repository: String,
    #[serde(default)]
    tag: Option<String>,
}

/// The generic shape is written by hand: a wrong repository or tag is the sender's mistake
/// and gets a 400 that says so.
fn generic(value: Value) -> Result<Vec<PushEvent>, String> {
    let g: Generic = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let repository = repository_path(&g.repository).ok_or_else(|| {
        format!(
            "repository {:?} is not a repository path such as org/rules",
            g.repository
        )
    })?;
    let tag = match g.tag.as_deref().map(str::trim) {
        None | Some("") => PushedTag::Unsaid,
        Some(t) => {
            validate_tag(t).map_err(|e| e.to_string())?;
            PushedTag::Named(t.to_string())
        }
    };
    Ok(vec![PushEvent {
        repository,
        tag,
        digest: None,
    }])
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
