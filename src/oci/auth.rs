//! Registry credentials from the `kubernetes.io/dockerconfigjson` / `~/.docker/config.json`
//! format, matched to a registry host the way Docker does.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

/// A username and password. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    #[error("docker config is not valid JSON with an \"auths\" object")]
    NotDockerConfig,
    #[error("docker config entry for {0} has an undecodable \"auth\" field")]
    BadAuthField(String),
}

#[derive(Deserialize)]
struct DockerConfig {
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Parsed docker config: registry key → credentials.
#[derive(Debug, Default, Clone)]
pub struct DockerAuths {
    entries: Vec<(String, Credentials)>,
}

impl DockerAuths {
    /// Parses the JSON of a docker config (the `.dockerconfigjson` key of a Secret).
    pub fn parse(json: &[u8]) -> Result<Self, AuthConfigError> {
        let config: DockerConfig =
            serde_json::from_slice(json).map_err(|_| AuthConfigError::NotDockerConfig)?;
        let mut entries = Vec::new();
        for (key, entry) in config.auths {
            let creds = match (&entry.username, &entry.password, &entry.auth) {
                (Some(u), Some(p), _) => Some(Credentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
                (_, _, Some(auth)) if !auth.is_empty() => Some(decode_auth(&key, auth)?),
                _ => None,
            };
            if let Some(c) = creds {
                entries.push((key, c));
            }
        }
        Ok(DockerAuths { entries })
    }

    /// The credentials for `registry` (`host[:port]`): Docker normalises each key by
    /// dropping the scheme and any path, then compares hosts exactly; `docker.io` and
    /// `index.docker.io` are one registry.
    pub fn for_registry(&self, registry: &str) -> Option<&Credentials> {
        let want = normalise_host(registry);
        self.entries
            .iter()
            .find(|(key, _)| normalise_host(key) == want)
            .map(|(_, c)| c)
    }
}

fn decode_auth(key: &str, auth: &str) -> Result<Credentials, AuthConfigError> {
    let bad = || AuthConfigError::BadAuthField(key.to_string());
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (u, p) = text.split_once(':').ok_or_else(bad)?;
    Ok(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

fn normalise_host(key: &str) -> String {
    let no_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = no_scheme
        .split('/')
        .next()
        .unwrap_or(no_scheme)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hosts_like_docker() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dTpw"},
            "127.0.0.1:5000":{"username":"alice","password":"s3cret"},
            "https://ghcr.io":{"auth":"Ym9iOnB3OmNvbG9u"}
        }}"#;
        let a = DockerAuths::parse(json).unwrap();
        assert_eq!(a.for_registry("docker.io").unwrap().username, "u");
        assert_eq!(a.for_registry("127.0.0.1:5000").unwrap().password, "s3cret");
        // a password may hold a colon: only the first one splits
        assert_eq!(a.for_registry("ghcr.io").unwrap().password, "pw:colon");
        assert!(a.for_registry("127.0.0.1:5001").is_none());
    }

    #[test]
    fn bad_configs_are_errors_without_secrets() {
        assert_eq!(
            DockerAuths::parse(b"[]").unwrap_err(),
            AuthConfigError::NotDockerConfig
        );
        let e = DockerAuths::parse(br#"{"auths":{"h":{"auth":"!!!"}}}"#).unwrap_err();
        assert_eq!(e, AuthConfigError::BadAuthField("h".into()));
        let c = Credentials {
            username: "u".into(),
            password: "topsecret".into(),
        };
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
