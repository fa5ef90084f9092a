//! OCI references: `oci://host[:port]/path/repo` plus a tag, semver range or digest, and the
//! CLI forms `host/repo:tag` and `host/repo@sha256:...`.

use super::error::{OciError, Result};
use crate::digest::Digest;

/// A repository on a registry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository {
    /// `host[:port]`, as written (no scheme).
    pub registry: String,
    /// The repository path, for example `falcosecurity/rules/falco-rules`.
    pub name: String,
}

/// Which revision of a repository is wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefSelector {
    Tag(String),
    Semver(semver::VersionReq),
    Digest(Digest),
}

/// A repository plus a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub repository: Repository,
    pub selector: RefSelector,
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            RefSelector::Tag(t) => write!(f, "{}:{t}", self.repository),
            RefSelector::Semver(r) => write!(f, "{} (semver {r})", self.repository),
            RefSelector::Digest(d) => write!(f, "{}@{d}", self.repository),
        }
    }
}

impl Repository {
    /// Parses `oci://host/path` (the scheme is required).
    pub fn parse_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("oci://")
            .ok_or_else(|| OciError::InvalidReference(format!("{url:?} must start with oci://")))?;
        Self::parse_plain(rest)
    }

    fn parse_plain(input: &str) -> Result<Self> {
        let bad = |why: &str| OciError::InvalidReference(format!("{input:?}: {why}"));
        let (registry, name) = input
            .split_once('/')
            .ok_or_else(|| bad("expected host/repository"))?;
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            return Err(bad("invalid registry host"));
        }
        let name_ok = !name.is_empty()
            && name.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                    && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            });
        if !name_ok {
            return Err(bad(
                "repository must be lowercase path components [a-z0-9._-]",
            ));
        }
        Ok(Repository {
            registry: registry.to_string(),
            name: name.to_string(),
        })
    }
}

/// Validates a tag against the distribution spec grammar.
pub fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(OciError::InvalidReference(format!("invalid tag {tag:?}")))
    }
}

/// Parses a `sha256:<64 lowercase hex>` digest written in a reference.
pub fn parse_digest(digest: &str) -> Result<Digest> {
    Digest::parse(digest).map_err(|_| {
        OciError::InvalidReference(format!(
            "invalid digest {digest:?}: expected sha256:<64 lowercase hex>"
        ))
    })
}

/// Parses a semver range as users write it (`>=3.0.0 <4`, `~3.1`, `3.x`).
/// Space-separated comparators are accepted as well as comma-separated ones.
pub fn parse_semver_range(range: &str) -> Result<semver::VersionReq> {
    let normalised = normalise_range(range);
    semver::VersionReq::parse(&normalised)
        .map_err(|e| OciError::InvalidReference(format!("invalid semver range {range:?}: {e}")))
}

fn normalise_range(range: &str) -> String {
    // Join "op version" pairs ("> = 1" is not valid anyway) and turn blanks between
    // comparators into commas.
    let mut parts: Vec<String> = Vec::new();
    for token in range.split_whitespace() {
        let token = token.trim_matches(',');
        if token.is_empty() {
            continue;
        }
        match parts.last_mut() {
            Some(last) if matches!(last.as_str(), ">" | ">=" | "<" | "<=" | "=" | "~" | "^") => {
                last.push_str(token)
            }
            _ => parts.push(token.to_string()),
        }
    }
    parts.retain(|p| !p.is_empty());
    parts.join(", ")
}

/// Picks the highest tag matching `range`. Tags may carry a leading `v`. Pre-releases are
/// considered only when the range itself names a pre-release (semver crate semantics).
pub fn highest_matching<'a>(
    range: &semver::VersionReq,
    tags: impl IntoIterator<Item = &'a str>,
) -> Option<(&'a str, semver::Version)> {
    tags.into_iter()
        .filter_map(|t| {
            let v = semver::Version::parse(t.strip_prefix('v').unwrap_or(t)).ok()?;
            range.matches(&v).then_some((t, v))
        })
        .max_by(|a, b| a.1.cmp(&b.1))
}

impl Reference {
    /// Builds a reference from a spec URL and at most one selector; tag `latest` by default.
    pub fn from_spec(
        url: &str,
        tag: Option<&str>,
        semver: Option<&str>,
        digest: Option<&str>,
    ) -> Result<Self> {
        let repository = Repository::parse_url(url)?;
        let selector = match (tag, semver, digest) {
            (None, None, None) => RefSelector::Tag("latest".into()),
            (Some(t), None, None) => {
                validate_tag(t)?;
                RefSelector::Tag(t.to_string())
            }
            (None, Some(r), None) => RefSelector::Semver(parse_semver_range(r)?),
            (None, None, Some(d)) => RefSelector::Digest(parse_digest(d)?),
            _ => {
                return Err(OciError::InvalidReference(
                    "set at most one of ref.tag, ref.semver, ref.digest".into(),
                ));
            }
        };
        Ok(Reference {
            repository,
            selector,
        })
    }

    /// Parses the CLI forms: `oci://host/repo[:tag|@digest]` or `host/repo[:tag|@digest]`.
    pub fn parse_cli(input: &str) -> Result<Self> {
        let plain = input.strip_prefix("oci://").unwrap_or(input);
        let (rest, selector) = if let Some((rest, digest)) = plain.split_once('@') {
            (rest, RefSelector::Digest(parse_digest(digest)?))
        } else {
            // The tag is after the last ':' that follows the last '/' (a port comes before it).
            let last_slash = plain.rfind('/').unwrap_or(0);
            match plain[last_slash..].rfind(':') {
                Some(pos) => {
                    let idx = last_slash + pos;
                    let tag = &plain[idx + 1..];
                    validate_tag(tag)?;
                    (&plain[..idx], RefSelector::Tag(tag.to_string()))
                }
                None => (plain, RefSelector::Tag("latest".into())),
            }
        };
        Ok(Reference {
            repository: Repository::parse_plain(rest)?,
            selector,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cli_forms() {
        let r =
            Reference::parse_cli("oci://127.0.0.1:5000/falcosecurity/rules/falco-rules:3").unwrap();
        assert_eq!(r.repository.registry, "127.0.0.1:5000");
        assert_eq!(r.repository.name, "falcosecurity/rules/falco-rules");
        assert_eq!(r.selector, RefSelector::Tag("3".into()));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse_cli(&format!("ghcr.io/x/y@{d}")).unwrap();
        assert_eq!(r.selector, RefSelector::Digest(Digest::parse(&d).unwrap()));
        let r = Reference::parse_cli("localhost:5000/x").unwrap();
        assert_eq!(r.selector, RefSelector::Tag("latest".into()));
        assert_eq!(r.repository.registry, "localhost:5000");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "oci://",
            "oci://host",
            "host/UPPER",
            "host/x:bad tag",
            "host/x@sha256:zz",
            "host//x",
        ] {
            assert!(Reference::parse_cli(bad).is_err(), "{bad}");
        }
        assert!(Repository::parse_url("https://ghcr.io/x").is_err());
        let e = Reference::from_spec("oci://h/x", Some("1"), Some(">=1"), None).unwrap_err();
        assert_eq!(e.reason().as_str(), "InvalidReference");
        assert!(Reference::from_spec("oci://h/x", None, Some(">=>1"), None).is_err());
    }

    #[test]
    fn semver_picks_highest_and_skips_prereleases() {
        let r = parse_semver_range(">=3.0.0 <4").unwrap();
        let tags = [
            "2.9.0",
            "3.0.0",
            "3.2.1",
            "v3.10.0",
            "4.0.0",
            "3.11.0-rc1",
            "latest",
        ];
        assert_eq!(highest_matching(&r, tags).map(|t| t.0), Some("v3.10.0"));
        let pre = parse_semver_range(">=3.11.0-rc1").unwrap();
        assert_eq!(
            highest_matching(&pre, ["3.11.0-rc1"]).map(|t| t.0),
            Some("3.11.0-rc1")
        );
        assert_eq!(highest_matching(&r, ["5.0.0"]), None);
    }

    #[test]
    fn normalises_space_separated_ranges() {
        assert_eq!(normalise_range(">=3.0.0 <4"), ">=3.0.0, <4");
        assert_eq!(normalise_range(">= 3.0.0, < 4"), ">=3.0.0, <4");
        assert_eq!(normalise_range("~3.1"), "~3.1");
    }
}
