//! falcoctl index files and references: an index is a YAML list of entries (name, type,
//! registry, repository, signature); a reference without `/` names an entry
//! (`falco-rules`, `falco-rules:5`, `falco-rules@sha256:…`), anything else is a full
//! `registry/repository[:tag][@digest]`. With neither tag nor digest, `latest`, as falcoctl.

use std::collections::BTreeMap;

use serde::Deserialize;

/// An artifact type, from the index entry (or guessed from a full reference's path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactType {
    Rulesfile,
    Plugin,
    Asset,
}

impl ArtifactType {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactType::Rulesfile => "rulesfile",
            ArtifactType::Plugin => "plugin",
            ArtifactType::Asset => "asset",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ArtifactType,
    pub registry: String,
    pub repository: String,
    #[serde(default)]
    pub signature: Option<Signature>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Signature {
    #[serde(default)]
    pub cosign: Option<Cosign>,
}

/// falcoctl's cosign settings, with its (kebab-case) field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Cosign {
    pub certificate_oidc_issuer: String,
    pub certificate_oidc_issuer_regexp: String,
    pub certificate_identity: String,
    pub certificate_identity_regexp: String,
    pub certificate_github_workflow: String,
    pub key: String,
    pub ignore_tlog: bool,
}

/// The merged indexes: a later file's entry replaces an earlier one of the same name.
#[derive(Debug, Default)]
pub struct Index {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error(
        "{0}: an index name, but no index was given (download the index file and pass --index FILE)"
    )]
    NoIndex(String),
    #[error("{0}: not found in the index files given")]
    NotInIndex(String),
    #[error("{0}: invalid reference: {1}")]
    Invalid(String, &'static str),
}

impl Index {
    /// Adds one index file's entries (a YAML list); duplicates inside one file are an error.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        let entries: Vec<Entry> =
            serde_yaml_ng::from_str(text).map_err(|e| super::config::redacted(&e))?;
        let mut seen = std::collections::BTreeSet::new();
        for entry in entries {
            if !seen.insert(entry.name.clone()) {
                return Err(format!("duplicate entry {:?}", entry.name));
            }
            self.entries.insert(entry.name.clone(), entry);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a reference selects in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    Tag(String),
    Digest(String),
}

/// A reference resolved to its registry and repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// As written in the configuration.
    pub written: String,
    pub registry: String,
    pub repository: String,
    pub pin: Pin,
    /// The index entry's name (index references only).
    pub entry_name: Option<String>,
    pub kind: ArtifactType,
    /// Whether the type was guessed from the path (full references have no entry).
    pub kind_guessed: bool,
    pub signature: Option<Cosign>,
}

/// Resolves one reference as falcoctl does.
pub fn resolve(written: &str, index: &Index) -> Result<Resolved, RefError> {
    let invalid = |why| RefError::Invalid(written.to_string(), why);
    let (name_part, pin) = split_pin(written).map_err(invalid)?;
    if !name_part.contains('/') {
        return resolve_in_index(written, name_part, pin, index);
    }
    let (registry, repository) = name_part
        .split_once('/')
        .ok_or_else(|| invalid("no repository"))?;
    if !registry_valid(registry) || !repository_valid(repository) {
        return Err(invalid(
            "registry/repository expected, repository in lowercase",
        ));
    }
    let (kind, kind_guessed) = (guess_kind(repository), true);
    Ok(Resolved {
        written: written.to_string(),
        registry: registry.to_string(),
        repository: repository.to_string(),
        pin,
        entry_name: None,
        kind,
        kind_guessed,
        signature: None,
    })
}

fn resolve_in_index(
    written: &str,
    name: &str,
    pin: Pin,
    index: &Index,
) -> Result<Resolved, RefError> {
    if index.is_empty() {
        return Err(RefError::NoIndex(written.to_string()));
    }
    let entry = index
        .entries
        .get(name)
        .ok_or_else(|| RefError::NotInIndex(written.to_string()))?;
    if !registry_valid(&entry.registry) || !repository_valid(&entry.repository) {
        return Err(RefError::Invalid(
            written.to_string(),
            "the index entry's registry or repository is invalid",
        ));
    }
    Ok(Resolved {
        written: written.to_string(),
        registry: entry.registry.clone(),
        repository: entry.repository.clone(),
        pin,
        entry_name: Some(entry.name.clone()),
        kind: entry.kind,
        kind_guessed: false,
        signature: entry.signature.as_ref().and_then(|s| s.cosign.clone()),
    })
}

/// Splits `name[:tag][@digest]`; a digest wins over a tag (as oras-go), none means `latest`.
fn split_pin(written: &str) -> Result<(&str, Pin), &'static str> {
    if let Some((name, digest)) = written.split_once('@') {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or("only sha256 digests")?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("a digest is sha256: and 64 lowercase hex digits");
        }
        let name = strip_tag(name).0;
        return Ok((name, Pin::Digest(digest.to_string())));
    }
    match strip_tag(written) {
        (name, Some(tag)) if tag_valid(tag) => Ok((name, Pin::Tag(tag.to_string()))),
        (_, Some(_)) => Err(
            "a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
        ),
        (name, None) => Ok((name, Pin::Tag("latest".to_string()))),
    }
}

/// `name:tag` → (name, tag); a `:` before the last `/` is a registry port, not a tag.
fn strip_tag(s: &str) -> (&str, Option<&str>) {
    let last_part = s.rfind('/').map_or(0, |i| i + 1);
    match s[last_part..].rfind(':') {
        Some(i) => (&s[..last_part + i], Some(&s[last_part + i + 1..])),
        None => (s, None),
    }
}

fn tag_valid(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    first_ok && tag.len() <= 128 && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `host[:port]`: letters, digits, `.` and `-` (no scheme, path, user or spaces).
fn registry_valid(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && !host.starts_with(['.', '-'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

fn repository_valid(repo: &str) -> bool {
    !repo.is_empty()
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && part.as_bytes()[0].is_ascii_alphanumeric()
        })
}

/// The type of a full reference, from falcosecurity's layout (`…/plugin/<name>`,
/// `…/plugins/…`); anything else is taken for rules.
fn guess_kind(repository: &str) -> ArtifactType {
    let parts: Vec<&str> = repository.split('/').collect();
    if parts.contains(&"plugin") || (parts.contains(&"plugins") && !parts.contains(&"ruleset")) {
        ArtifactType::Plugin
    } else {
        ArtifactType::Rulesfile
    }
}
