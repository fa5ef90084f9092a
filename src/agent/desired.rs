//! What the agent should do with one bundle on this node: pure decisions from the bundle,
//! the node's labels and the agent's allow-list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::disk::WantedFile;
use crate::api::RuleBundle;
use crate::api::reason::NodeReason;
use crate::api::rule_bundle::BundleFile;
use crate::digest::Digest;
use crate::oci::platform::{self, Platform};

/// One `--allowed-dir`: a host directory and the namespaces whose bundles may write in it
/// (`None`: every namespace, for single-tenant clusters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub path: PathBuf,
    pub namespaces: Option<BTreeSet<String>>,
}

impl Grant {
    fn admits(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|n| n.contains(namespace))
    }
}

/// The cluster admin's grants of host directories: absolute, normalised.
#[derive(Clone, Debug, Default)]
pub struct AllowList(Vec<Grant>);

impl AllowList {
    /// Parses `--allowed-dir` values: `DIR` (every namespace) or `DIR=NS1,NS2`. Grants of
    /// the same directory are merged.
    pub fn new(values: &[String]) -> Result<Self, String> {
        let mut grants: Vec<Grant> = Vec::new();
        for value in values {
            let grant = parse_grant(value)?;
            match grants.iter_mut().find(|g| g.path == grant.path) {
                Some(g) => {
                    g.namespaces = match (g.namespaces.take(), grant.namespaces) {
                        (Some(mut a), Some(b)) => {
                            a.extend(b);
                            Some(a)
                        }
                        _ => None,
                    }
                }
                None => grants.push(grant),
            }
        }
        Ok(AllowList(grants))
    }

    /// The grant that decides for `dir`: the deepest granted directory containing it, so a
    /// subdirectory granted to one namespace is carved out of a wider grant to another.
    pub fn deciding(&self, dir: &Path) -> Option<&Grant> {
        self.0
            .iter()
            .filter(|g| dir.starts_with(&g.path))
            .max_by_key(|g| g.path.components().count())
    }

    /// The allowed directory that namespace `namespace` may write `dir` under, or why not.
    pub fn granted(&self, dir: &Path, namespace: &str) -> Result<&Path, String> {
        match self.deciding(dir) {
            Some(g) if g.admits(namespace) => Ok(&g.path),
            Some(g) => Err(format!(
                "namespace {namespace} has no grant for {} (the agent's --allowed-dir {} names other namespaces)",
                dir.display(),
                g.path.display()
            )),
            None => Err(format!(
                "{} is not inside an allowed directory ({})",
                dir.display(),
                if self.0.is_empty() {
                    "none".to_string()
                } else {
                    self.dirs().join(", ")
                }
            )),
        }
    }

    pub fn dirs(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|g| g.path.display().to_string())
            .collect()
    }
}

fn parse_grant(value: &str) -> Result<Grant, String> {
    let (dir, namespaces) = match value.split_once('=') {
        Some((d, list)) => {
            let names: BTreeSet<String> = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            if names.is_empty() || !names.iter().all(|n| valid_namespace(n)) {
                return Err(format!(
                    "--allowed-dir {value:?}: after = comes a comma-separated list of namespaces"
                ));
            }
            (d, Some(names))
        }
        None => (value, None),
    };
    let path = plain_absolute(dir).ok_or_else(|| {
        format!("--allowed-dir {dir:?} must be an absolute path without . or .. parts")
    })?;
    Ok(Grant { path, namespaces })
}

/// A Kubernetes namespace name (an RFC 1123 label).
fn valid_namespace(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

/// The longest `nodeFiles.directory`: with the host root before it and a file name after,
/// the whole path must stay well under the kernel's 4096-byte PATH_MAX, or nothing that
/// reads it by path (Falco, kubelet, a shell) could open what the agent wrote (found by the
/// agent_paths fuzz target: a 4133-byte directory).
pub const MAX_DIRECTORY_BYTES: usize = 1024;

/// `/a/b/c` as a path when absolute with only plain parts (no empty parts, no NUL, and none
/// that starts with `..`, the prefix of the agent's own names; one trailing `/` is fine),
/// at most [`MAX_DIRECTORY_BYTES`] long.
fn plain_absolute(dir: &str) -> Option<PathBuf> {
    if dir.len() > MAX_DIRECTORY_BYTES {
        return None;
    }
    let rest = dir.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(PathBuf::from("/"));
    }
    rest.split('/')
        .all(|part| {
            !part.is_empty() && part != "." && !part.starts_with("..") && !part.contains('\0')
        })
        .then(|| Path::new("/").join(rest))
}

/// What to do with a bundle on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not for this node (no `nodeFiles`, or not selected): remove anything it left here.
    NotHere,
    /// Selected, but nothing to write yet.
    Wait,
    /// Selected and cannot be applied here: report why, keep what is on disk.
    Refuse { reason: NodeReason, message: String },
    /// Write `files` at `revision` into `directory` (the path on the node).
    Apply {
        directory: PathBuf,
        allowed: PathBuf,
        revision: String,
        files: Vec<WantedFile>,
    },
}

/// Decides for one bundle.
pub fn decide(
    bundle: &RuleBundle,
    node_labels: &BTreeMap<String, String>,
    allow: &AllowList,
) -> Decision {
    let Some(target) = &bundle.spec.node_files else {
        return Decision::NotHere;
    };
    if !target.selects(node_labels) {
        return Decision::NotHere;
    }
    let Some(directory) = plain_absolute(&target.directory) else {
        return Decision::Refuse {
            reason: NodeReason::InvalidPath,
            message: format!(
                "nodeFiles.directory {:?} must be absolute, at most {MAX_DIRECTORY_BYTES} bytes, without . parts or parts starting with ..",
                target.directory.chars().take(128).collect::<String>()
            ),
        };
    };
    let namespace = bundle.metadata.namespace.as_deref().unwrap_or_default();
    let allowed = match allow.granted(&directory, namespace) {
        Ok(a) => a.to_path_buf(),
        Err(message) => {
            return Decision::Refuse {
                reason: NodeReason::DirectoryNotAllowed,
                message,
            };
        }
    };
    // Its file list was dropped from the cache and could not be read again: never written
    // from what is left.
    if super::cache::is_slimmed(bundle) {
        return Decision::Wait;
    }
    let Some(status) = &bundle.status else {
        return Decision::Wait;
    };
    let Some(revision) = &status.revision else {
        return Decision::Wait;
    };
    // The files in status are the plan for one spec: act only on the plan for this one.
    if status.observed_generation != bundle.metadata.generation {
        return Decision::Wait;
    }
    if let Some(refusal) = engine_refusal(bundle, node_labels) {
        return refusal;
    }
    let ours = match for_this_platform(&status.files, node_labels) {
        Ok(files) => files,
        Err(message) => {
            return Decision::Refuse {
                reason: NodeReason::PlatformNotAvailable,
                message,
            };
        }
    };
    match wanted_files(ours) {
        Ok(files) => Decision::Apply {
            directory,
            allowed,
            revision: revision.clone(),
            files,
        },
        Err(message) => Decision::Refuse {
            reason: NodeReason::InvalidPath,
            message,
        },
    }
}

/// The files to write, each name plain and written once, each digest parsed once here (a
/// digest is a file name on the artifact server's URL path).
fn wanted_files(files: Vec<&BundleFile>) -> Result<Vec<WantedFile>, String> {
    let mut names = BTreeSet::new();
    let mut wanted = Vec::with_capacity(files.len());
    for f in files {
        if !valid_key(&f.path) {
            return Err(format!("file name {:?} is not a plain file name", f.path));
        }
        if !names.insert(f.path.as_str()) {
            return Err(format!("file name {} is listed twice", f.path));
        }
        let Ok(digest) = Digest::parse(&f.digest) else {
            return Err(format!(
                "file {} has an invalid digest {:?}",
                f.path, f.digest
            ));
        };
        wanted.push(WantedFile {
            key: f.path.clone(),
            digest,
            size: u64::try_from(f.size).unwrap_or(0),
        });
    }
    Ok(wanted)
}

/// With `spec.falco.engineVersionFromNodeLabel`: a refusal when this node's label is
/// missing or names an engine older than a source revision requires (files kept).
fn engine_refusal(bundle: &RuleBundle, node_labels: &BTreeMap<String, String>) -> Option<Decision> {
    let label = bundle
        .spec
        .falco
        .as_ref()?
        .engine_version_from_node_label
        .as_ref()?;
    let refuse = |message| {
        Some(Decision::Refuse {
            reason: NodeReason::RequirementsNotMet,
            message,
        })
    };
    let status = bundle.status.as_ref()?;
    let required = status
        .sources
        .iter()
        .filter_map(|s| Some((s, s.engine_version.as_ref()?)));
    let Some(have) = node_labels.get(label) else {
        return match required.clone().next() {
            Some(_) => refuse(format!(
                "the node has no label {label} naming its Falco engine version"
            )),
            None => None,
        };
    };
    for (source, version) in required {
        if !crate::bundle::requirements::compatible(version, have) {
            return refuse(format!(
                "ArtifactSource {} revision {} requires engine_version_semver {version}; the node's {label} is {have}",
                source.name, source.revision
            ));
        }
    }
    None
}

/// The files this node takes: those for every node, and of each source with files per
/// platform (`platform: all`) those of the platform its labels name. `Err` names a source
/// with nothing for it (or a platform that is not one).
fn for_this_platform<'a>(
    files: &'a [BundleFile],
    node_labels: &BTreeMap<String, String>,
) -> Result<Vec<&'a BundleFile>, String> {
    let mut by_source: BTreeMap<&str, BTreeSet<Platform>> = BTreeMap::new();
    for f in files {
        if let Some(text) = &f.platform {
            let platform = Platform::parse(text).ok_or_else(|| {
                let shown: String = text.chars().take(64).collect();
                format!(
                    "file {} names platform {shown:?}, not os/arch[/variant]",
                    f.path
                )
            })?;
            by_source.entry(&f.source).or_default().insert(platform);
        }
    }
    let mut chosen: BTreeMap<&str, String> = BTreeMap::new();
    for (source, platforms) in by_source {
        let available: Vec<Platform> = platforms.into_iter().collect();
        let platform = platform::for_node(&available, node_labels)
            .map_err(|why| format!("ArtifactSource {source}: {why}"))?;
        chosen.insert(source, platform.to_string());
    }
    Ok(files
        .iter()
        .filter(|f| match &f.platform {
            None => true,
            Some(p) => chosen.get(f.source.as_str()) == Some(p),
        })
        .collect())
}

/// A file name the controller could have produced: `[-._a-zA-Z0-9]+`, not `.`, not `..*`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && !key.starts_with("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// `dir` under the host root (`/etc/x` with root `/host` is `/host/etc/x`).
pub fn on_host(host_root: &Path, dir: &Path) -> PathBuf {
    host_root.join(dir.strip_prefix("/").unwrap_or(dir))
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
