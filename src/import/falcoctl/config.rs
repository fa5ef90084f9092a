//! falcoctl's configuration file (`falcoctl.yaml`), as falcoctl reads it: keys are
//! case-insensitive (viper), so every key is lowercased before the typed parse. A Falco
//! chart values file is accepted too: its `falcoctl.config` is the configuration.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

/// falcoctl's defaults (internal/config/config.go).
pub const DEFAULT_FOLLOW_EVERY: &str = "168h";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub indexes: Vec<IndexConfig>,
    pub artifact: Artifact,
    pub registry: Registry,
    /// Keys ocisync has no use for (`driver`, anything unknown), reported as not mapped.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// An index falcoctl downloads; ocisync is given the file itself (`--index`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct IndexConfig {
    pub name: String,
    pub url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Artifact {
    /// `rulesfile`, `plugin`, `asset`; none: every type.
    pub allowedtypes: Option<Vec<String>>,
    pub noverify: bool,
    pub install: Directories,
    pub follow: Follow,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `artifact.install`, and the directory keys `artifact.follow` shares.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Directories {
    pub refs: Vec<String>,
    pub rulesfilesdir: Option<String>,
    pub pluginsdir: Option<String>,
    pub assetsdir: Option<String>,
    pub resolvedeps: Option<bool>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Follow {
    pub every: Option<String>,
    pub cron: Option<String>,
    pub falcoversions: Option<String>,
    #[serde(flatten)]
    pub dirs: Directories,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Registry {
    pub auth: Auth,
    pub creds: Creds,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Auth {
    pub basic: Vec<BasicAuth>,
    pub oauth: Vec<RegistryOnly>,
    pub gcp: Vec<RegistryOnly>,
}

/// A user and password for one registry. The password is never printed.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct BasicAuth {
    pub registry: String,
    pub user: String,
    /// Any YAML value: never parsed, so that no parse error can quote it.
    pub password: Value,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("registry", &self.registry)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// An auth entry whose only field ocisync uses is the registry (OAuth, GCP).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RegistryOnly {
    pub registry: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Creds {
    /// A Docker `config.json` path.
    pub config: Option<String>,
}

/// Where the configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    FalcoctlFile,
    ChartValues,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("not YAML: {0}")]
    Yaml(String),
    #[error("not a falcoctl configuration: {0}")]
    Shape(String),
}

/// Parses a falcoctl.yaml, or a Falco chart values file's `falcoctl.config`.
pub fn parse(text: &str) -> Result<(Config, Origin), ConfigError> {
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(redacted(&e)))?;
    let value = lowercase_keys(value);
    let (value, origin) = match value.get("falcoctl").and_then(|f| f.get("config")) {
        Some(config) => (config.clone(), Origin::ChartValues),
        None => (value, Origin::FalcoctlFile),
    };
    if !(value.is_mapping() || value.is_null()) {
        return Err(ConfigError::Shape("the top level is not a mapping".into()));
    }
    let config = serde_yaml_ng::from_value(value).map_err(|e| ConfigError::Shape(redacted(&e)))?;
    Ok((config, origin))
}

/// A parse error without the values it quotes: a misplaced password must not be printed.
/// serde says `invalid type: string "…", expected …` (or an integer in backticks): what
/// stands between `invalid type:`/`invalid value:` and `, expected` is left out, and any
/// quoted text elsewhere.
pub fn redacted(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let text = match ["invalid type:", "invalid value:"]
        .iter()
        .find_map(|m| text.find(m).map(|i| (i, m.len())))
    {
        Some((start, len)) => match text[start..].find(", expected") {
            Some(end) => format!("{} …{}", &text[..start + len], &text[start + end..]),
            None => text[..start + len].to_string(),
        },
        None => text,
    };
    let mut out = String::new();
    let mut quote = None;
    for c in text.chars() {
        match quote {
            None if c == '"' || c == '`' => {
                quote = Some(c);
                out.push(c);
                out.push('…');
            }
            Some(q) if c == q => {
                quote = None;
                out.push(c);
            }
            Some(_) => {}
            None => out.push(c),
        }
    }
    out
}

/// Every mapping key lowercased, at every depth (viper's case-insensitive keys).
fn lowercase_keys(value: Value) -> Value {
    match value {
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Value::String(s) => Value::String(s.to_lowercase()),
                        other => other,
                    };
                    (k, lowercase_keys(v))
                })
                .collect::<Mapping>(),
        ),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(lowercase_keys).collect()),
        other => other,
    }
}
