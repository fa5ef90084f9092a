//! The desired state of a bundle, computed from its spec and its sources' status alone.

use std::collections::BTreeMap;

use globset::GlobMatcher;
use sha2::{Digest as _, Sha256};

use super::{BundleReason, Problem, keys};
use crate::api::ArtifactSource;
use crate::api::artifact_source::{Artifact, ArtifactFile};
use crate::api::condition::{ConditionType, find};
use crate::api::reason::SourceReason;
use crate::api::rule_bundle::{BundleFile, BundleSource, RuleBundleSpec, SourceRevision};
use crate::digest::Digest;
use crate::oci::content::ContentKind;
use crate::oci::platform::{Platform, same_node_platform};

/// What the bundle sees of one of its sources.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceState<'a> {
    Missing,
    /// Exists but is not Ready for its current generation: the reason why.
    NotReady(String),
    Ready(&'a Artifact),
}

/// A source is usable when it has an artifact and `Ready=True` for its current generation,
/// and, with `spec.verify`, that artifact's signature was verified.
pub fn source_state(source: Option<&ArtifactSource>) -> SourceState<'_> {
    let Some(source) = source else {
        return SourceState::Missing;
    };
    let Some(status) = &source.status else {
        return SourceState::NotReady("no status yet".into());
    };
    let ready = find(&status.conditions, ConditionType::Ready);
    match (ready, &status.artifact) {
        (Some(_), Some(a)) if source.spec.verify.is_some() && a.verification.is_none() => {
            SourceState::NotReady("spec.verify is set and its revision is not verified".into())
        }
        (Some(c), Some(a))
            if c.status == "True" && c.observed_generation == source.metadata.generation =>
        {
            SourceState::Ready(a)
        }
        (Some(c), _) if c.status != "True" => {
            SourceState::NotReady(format!("{}: {}", c.reason, c.message))
        }
        _ => SourceState::NotReady("its current spec is not reconciled yet".into()),
    }
}

/// Whether a bundle's sources all exist and those not Ready only wait for their first check
/// (see [`first_check_pending`]; at least one). A bundle with no status of its own then
/// waits without writing one or an Event: the sources' first status wakes it, and a
/// thousand bundles created with their sources do not each report a wait that ends in
/// seconds. A missing, suspended, failing or refused source is reported at once.
pub fn awaits_first_check<S: std::ops::Deref<Target = ArtifactSource>>(
    spec: &RuleBundleSpec,
    lookup: impl Fn(&str) -> Option<S>,
) -> bool {
    let mut unchecked = false;
    for s in &spec.sources {
        let Some(source) = lookup(&s.source_ref.name) else {
            return false;
        };
        if first_check_pending(&source) {
            unchecked = true;
        } else if !matches!(source_state(Some(&source)), SourceState::Ready(_)) {
            return false;
        }
    }
    unchecked
}

/// A source not suspended whose first check has not ended: no status yet, or only the
/// progress of its first pull (no artifact, `Ready=Unknown` because `Progressing`).
fn first_check_pending(source: &ArtifactSource) -> bool {
    if source.spec.suspend {
        return false;
    }
    let Some(status) = &source.status else {
        return true;
    };
    let pulling = |c: &crate::api::condition::Condition| {
        c.status == "Unknown" && c.reason == SourceReason::Progressing.as_str()
    };
    status.artifact.is_none() && find(&status.conditions, ConditionType::Ready).is_none_or(pulling)
}

/// One file of the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFile {
    /// Its name in the bundle (ConfigMap key, file name on nodes).
    pub key: String,
    /// Its path inside the artifact.
    pub path: String,
    /// The source's name.
    pub source: String,
    pub kind: ContentKind,
    pub digest: Digest,
    pub size: u64,
    /// The platform it is for (a source with `platform: all`); `None`: every node's.
    pub platform: Option<String>,
}

/// The desired content of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `sha256:<hex>` over the ordered source revisions and the selection.
    pub revision: String,
    pub sources: Vec<SourceRevision>,
    /// Sorted by key, then platform (none first).
    pub files: Vec<PlannedFile>,
    /// With `spec.falco` and sources that declare plugin dependencies: those no source
    /// provides (`dependencies: Warn`); `None` when nothing was checked.
    pub missing_dependencies: Option<Vec<String>>,
}

impl Plan {
    /// The files as the status lists them.
    pub fn status_files(&self) -> Vec<BundleFile> {
        self.files
            .iter()
            .map(|f| BundleFile {
                path: f.key.clone(),
                source: f.source.clone(),
                digest: f.digest.to_string(),
                size: i64::try_from(f.size).unwrap_or(i64::MAX),
                platform: f.platform.clone(),
            })
            .collect()
    }
}

/// The most sources a bundle names, patterns one source includes, and characters in a
/// pattern (the CRD says the same).
const MAX_SOURCES: usize = 32;
const MAX_INCLUDES: usize = 64;
const MAX_PATTERN: usize = 256;

/// Checks what the CRD schema cannot (every glob compiles), and its limits again. A failure
/// stalls the bundle.
pub fn validate(spec: &RuleBundleSpec) -> Result<(), Problem> {
    // the CRD's limits, checked here too: matching is sources × patterns × files
    let invalid = |m: String| Err(Problem::new(BundleReason::InvalidSpec, m));
    if spec.sources.len() > MAX_SOURCES {
        return invalid(format!("more than {MAX_SOURCES} spec.sources"));
    }
    for (i, s) in spec.sources.iter().enumerate() {
        if s.include.len() > MAX_INCLUDES {
            return invalid(format!(
                "spec.sources[{i}].include has more than {MAX_INCLUDES} patterns"
            ));
        }
        if let Some(long) = s.include.iter().find(|p| p.chars().count() > MAX_PATTERN) {
            let start: String = long.chars().take(32).collect();
            return invalid(format!(
                "spec.sources[{i}].include pattern {start:?}… is longer than {MAX_PATTERN} characters"
            ));
        }
        if s.source_ref.name.is_empty() {
            return Err(Problem::new(
                BundleReason::InvalidSpec,
                format!("spec.sources[{i}].sourceRef.name is empty"),
            ));
        }
        for pattern in &s.include {
            matcher(pattern).map_err(|e| {
                Problem::new(
                    BundleReason::InvalidSpec,
                    format!("spec.sources[{i}].include {pattern:?}: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

/// A glob: `*` and `?` stay inside one path segment, `**` crosses them. A pattern without
/// `/` is matched against the file name only (as in `.gitignore`), one with `/` against the
/// whole path.
struct Include {
    matcher: GlobMatcher,
    whole_path: bool,
}

fn matcher(pattern: &str) -> Result<Include, globset::Error> {
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()?;
    Ok(Include {
        matcher: glob.compile_matcher(),
        whole_path: pattern.contains('/'),
    })
}

impl Include {
    fn matches(&self, path: &str) -> bool {
        let subject = if self.whole_path {
            path
        } else {
            path.rsplit('/').next().unwrap_or(path)
        };
        self.matcher.is_match(subject)
    }
}

/// The most bytes `status.files` may take: the whole object must stay under the API
/// server's limit (etcd's 1.5 MiB request limit by default), and every agent reads it.
pub const MAX_STATUS_FILES_BYTES: usize = 512 << 10;

/// Refuses a selection whose file list would not fit in the bundle's status.
fn status_fits<'a>(files: impl Iterator<Item = &'a PlannedFile>) -> Result<(), Problem> {
    let (mut count, mut bytes) = (0usize, 0usize);
    for f in files {
        count += 1;
        // {"path":"","source":"","digest":"","size":,"platform":""}, and the separator
        let platform = f.platform.as_ref().map_or(0, |p| p.len() + 14);
        let entry = f.key.len() + f.source.len() + f.digest.as_str().len() + 20 + 40 + platform;
        bytes = bytes.saturating_add(entry);
    }
    if bytes > MAX_STATUS_FILES_BYTES {
        return Err(Problem::new(
            BundleReason::TooManyFiles,
            format!(
                "the {count} selected files make a file list of about {bytes} bytes, over the {MAX_STATUS_FILES_BYTES} a RuleBundle status holds; narrow spec.sources[].include or split the bundle"
            ),
        ));
    }
    Ok(())
}

/// Computes the bundle from its spec and the state of each source it names.
pub fn plan<'a>(
    spec: &RuleBundleSpec,
    lookup: impl Fn(&str) -> SourceState<'a>,
) -> Result<Plan, Problem> {
    validate(spec)?;
    let ready = ready_sources(spec, lookup)?;
    let named: Vec<(&str, &Artifact)> = ready
        .iter()
        .map(|(s, a)| (s.source_ref.name.as_str(), *a))
        .collect();
    let missing_dependencies = super::requirements::check(spec.falco.as_ref(), &named)?;
    if spec.config_map.is_some() {
        refuse_platforms_in_config_map(&named)?;
    }
    let mut by_key: BTreeMap<(String, Option<String>), PlannedFile> = BTreeMap::new();
    let mut hasher = Sha256::new();
    let mut sources = Vec::new();
    for (s, artifact) in ready {
        let name = &s.source_ref.name;
        let includes: Vec<Include> = s
            .include
            .iter()
            .filter_map(|p| matcher(p).ok()) // validated above
            .collect();
        let selected = artifact
            .files
            .iter()
            .filter(|f| includes.is_empty() || includes.iter().any(|i| i.matches(&f.path)));
        let mut count = 0usize;
        for f in selected {
            count += 1;
            let file = planned_file(name, artifact, f)?;
            if let Some(other) = clashing(&by_key, &file) {
                return Err(conflict(other, &file));
            }
            by_key.insert((file.key.clone(), file.platform.clone()), file);
        }
        if count == 0 {
            return Err(no_files_selected(s, artifact));
        }
        for part in [name.as_str(), artifact.digest.as_str()]
            .into_iter()
            .chain(s.include.iter().map(String::as_str))
        {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.update([1]);
        sources.push(SourceRevision {
            name: name.clone(),
            revision: artifact.revision.clone(),
            engine_version: super::requirements::engine_requirement(artifact),
        });
    }
    status_fits(by_key.values())?;
    for f in by_key.values() {
        hasher.update(f.key.as_bytes());
        hasher.update([0]);
        hasher.update(f.digest.as_str().as_bytes());
        if let Some(platform) = &f.platform {
            hasher.update([2]);
            hasher.update(platform.as_bytes());
        }
        hasher.update([1]);
    }
    Ok(Plan {
        revision: Digest::from_sha256(hasher).to_string(),
        sources,
        files: by_key.into_values().collect(),
        missing_dependencies,
    })
}

/// Each source of the spec with its artifact, when every one is ready; else why not.
fn ready_sources<'a, 's>(
    spec: &'s RuleBundleSpec,
    lookup: impl Fn(&str) -> SourceState<'a>,
) -> Result<Vec<(&'s BundleSource, &'a Artifact)>, Problem> {
    let mut waiting = Vec::new();
    let mut ready = Vec::new();
    for s in &spec.sources {
        let name = s.source_ref.name.as_str();
        match lookup(name) {
            SourceState::Missing => waiting.push(format!("ArtifactSource {name} not found")),
            SourceState::NotReady(why) => {
                waiting.push(format!("ArtifactSource {name} is not ready ({why})"))
            }
            SourceState::Ready(artifact) => ready.push((s, artifact)),
        }
    }
    if !waiting.is_empty() {
        let message = waiting.join("; ");
        return Err(Problem::new(BundleReason::SourceNotReady, message));
    }
    Ok(ready)
}

/// File `f` of source `name`'s artifact under its flat name; its digest parsed (a status
/// digest that is not one cannot name stored content).
fn planned_file(name: &str, artifact: &Artifact, f: &ArtifactFile) -> Result<PlannedFile, Problem> {
    let key = keys::key_for(&f.path)
        .map_err(|e| Problem::new(BundleReason::InvalidContent, format!("{name}: {e}")))?;
    if let Some(p) = f
        .platform
        .as_deref()
        .filter(|p| Platform::parse(p).is_none())
    {
        let shown: String = p.chars().take(64).collect();
        let message = format!(
            "ArtifactSource {name} lists {} for platform {shown:?}, not os/arch[/variant]",
            f.path
        );
        return Err(Problem::new(BundleReason::SourceNotReady, message));
    }
    let digest = Digest::parse(&f.digest).map_err(|_| {
        let message = format!(
            "ArtifactSource {name} lists {} with an invalid digest",
            f.path
        );
        Problem::new(BundleReason::SourceNotReady, message)
    })?;
    Ok(PlannedFile {
        key,
        path: f.path.clone(),
        source: name.to_string(),
        kind: artifact.kind,
        digest,
        size: u64::try_from(f.size).unwrap_or(0),
        platform: f.platform.clone(),
    })
}

/// A planned file a node would get together with `file` under the same name: one for
/// every node against any other, and two for the same os and architecture (a node of it
/// may take either variant).
fn clashing<'m>(
    by_key: &'m BTreeMap<(String, Option<String>), PlannedFile>,
    file: &PlannedFile,
) -> Option<&'m PlannedFile> {
    let platform = |f: &PlannedFile| f.platform.as_deref().and_then(Platform::parse);
    let mine = platform(file);
    by_key
        .range((file.key.clone(), None)..)
        .take_while(|((k, _), _)| *k == file.key)
        .map(|(_, f)| f)
        .find(|other| match (&mine, platform(other)) {
            (Some(a), Some(b)) => same_node_platform(a, &b),
            _ => true,
        })
}

/// A ConfigMap cannot hold files per platform: every reader of it would get them all.
fn refuse_platforms_in_config_map(sources: &[(&str, &Artifact)]) -> Result<(), Problem> {
    for (name, artifact) in sources {
        if let Some(f) = artifact.files.iter().find(|f| f.platform.is_some()) {
            let message = format!(
                "ArtifactSource {name} stores files per platform (platform: all; {} is for {}): a ConfigMap would give every reader all of them; deliver them with nodeFiles, or give the ConfigMap a source with one platform",
                f.path,
                f.platform.as_deref().unwrap_or_default()
            );
            return Err(Problem::new(BundleReason::MultiPlatformSource, message));
        }
    }
    Ok(())
}

fn conflict(other: &PlannedFile, file: &PlannedFile) -> Problem {
    Problem::new(
        BundleReason::FileConflict,
        format!(
            "{} from ArtifactSource {} and {} from ArtifactSource {} are both named {}; narrow spec.sources[].include",
            other.path, other.source, file.path, file.source, file.key
        ),
    )
}

fn no_files_selected(s: &BundleSource, artifact: &Artifact) -> Problem {
    let name = &s.source_ref.name;
    let message = if s.include.is_empty() {
        format!(
            "ArtifactSource {name} revision {} has no files",
            artifact.revision
        )
    } else {
        format!(
            "include {:?} matches none of the {} files of ArtifactSource {name} revision {}",
            s.include,
            artifact.files.len(),
            artifact.revision
        )
    };
    Problem::new(BundleReason::NoFilesSelected, message)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
