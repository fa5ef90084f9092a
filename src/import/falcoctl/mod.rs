//! `ocisync import falcoctl`: a falcoctl configuration (and the index files its names
//! resolve through) as ArtifactSources and RuleBundles that deliver the same artifacts, with
//! a comment for every setting that does not map. Pure: text in, [`Import`] out.

pub mod config;
pub mod index;
mod notes;
mod objects;
mod render;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use config::Config;
use index::{Index, RefError, Resolved};

pub use render::render;

/// Choices the configuration cannot make: where files go on nodes, and how the
/// registry is reached (falcoctl's `--plain-http` is a flag, and it has no TLS settings).
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: Option<String>,
    pub rules_dir: String,
    pub plugins_dir: String,
    pub assets_dir: String,
    pub plain_http: bool,
    pub cert_secret: Option<String>,
}

/// What an import prints: comments for the whole file, then one document per object.
#[derive(Debug)]
pub struct Import {
    pub notes: Vec<String>,
    pub docs: Vec<Doc>,
}

/// One object and the comments printed above it.
#[derive(Debug)]
pub struct Doc {
    pub notes: Vec<String>,
    pub object: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("index file {0}: {1}")]
    Index(String, String),
    #[error("no artifact references: artifact.install.refs and artifact.follow.refs are empty")]
    NoRefs,
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refs(Vec<RefError>),
}

/// One reference and where falcoctl used it.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub resolved: Resolved,
    pub installed: bool,
    pub followed: bool,
}

/// Reads a falcoctl configuration and index files (name, text) into objects.
pub fn import(
    config_text: &str,
    index_files: &[(String, String)],
    options: &Options,
) -> Result<Import, ImportError> {
    let (config, origin) = config::parse(config_text)?;
    let mut index = Index::default();
    for (name, text) in index_files {
        index
            .add(text)
            .map_err(|e| ImportError::Index(name.clone(), e))?;
    }
    let wanted = wanted(&config, &index)?;
    let (kept, skipped) = allowed(&config, wanted);
    let mut notes = notes::file_notes(&config, origin, &skipped, options);
    let interval = notes::interval(&config, &mut notes);
    let docs = objects::objects(&config, &kept, &interval, options);
    Ok(Import { notes, docs })
}

/// The install and then the follow references, each once, resolved.
fn wanted(config: &Config, index: &Index) -> Result<Vec<Wanted>, ImportError> {
    let install: HashSet<&String> = config.artifact.install.refs.iter().collect();
    let follow: HashSet<&String> = config.artifact.follow.dirs.refs.iter().collect();
    let mut seen = HashSet::new();
    let order: Vec<&String> = (config.artifact.install.refs.iter())
        .chain(&config.artifact.follow.dirs.refs)
        .filter(|r| seen.insert(*r))
        .collect();
    if order.is_empty() {
        return Err(ImportError::NoRefs);
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for r in order {
        match index::resolve(r, index) {
            Ok(resolved) => out.push(Wanted {
                resolved,
                installed: install.contains(r),
                followed: follow.contains(r),
            }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ImportError::Refs(errors))
    }
}

/// Splits the references by `artifact.allowedTypes` (none: every type allowed).
fn allowed(config: &Config, wanted: Vec<Wanted>) -> (Vec<Wanted>, Vec<Wanted>) {
    match &config.artifact.allowedtypes {
        None => (wanted, Vec::new()),
        Some(types) => wanted.into_iter().partition(|w| {
            types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(w.resolved.kind.as_str()))
        }),
    }
}
