//! Registry credentials and CA bundles from Secrets in the source's namespace.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::api::reason::{Problem, SourceReason};
use crate::oci::auth::{Credentials, DockerAuths};

/// Why a Secret could not be used; the message never holds secret data.
pub type SecretProblem = Problem<SourceReason>;

const DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";
const DOCKER_CFG: &str = ".dockercfg";
const CA_KEY: &str = "ca.crt";

/// Credentials for `registry` from a `kubernetes.io/dockerconfigjson` Secret (the legacy
/// `.dockercfg` form is read too). `None` when the Secret has no entry for that host:
/// the registry is then tried anonymously, as Docker does.
pub fn credentials(
    name: &str,
    secret: Option<&Secret>,
    registry: &str,
) -> Result<Option<Credentials>, SecretProblem> {
    let data = data_of(name, secret)?;
    let raw = if let Some(v) = data.get(DOCKER_CONFIG_JSON) {
        v.0.clone()
    } else if let Some(v) = data.get(DOCKER_CFG) {
        // `.dockercfg` is the bare `auths` object
        let mut wrapped = b"{\"auths\":".to_vec();
        wrapped.extend_from_slice(&v.0);
        wrapped.push(b'}');
        wrapped
    } else {
        return Err(SecretProblem::new(
            SourceReason::InvalidSecret,
            format!(
                "Secret {name} has no {DOCKER_CONFIG_JSON} key (type kubernetes.io/dockerconfigjson)"
            ),
        ));
    };
    let auths = DockerAuths::parse(&raw).map_err(|e| {
        SecretProblem::new(SourceReason::InvalidSecret, format!("Secret {name}: {e}"))
    })?;
    Ok(auths.for_registry(registry).cloned())
}

/// The PEM CA bundle under `ca.crt`, checked to hold at least one certificate.
pub fn ca_bundle(name: &str, secret: Option<&Secret>) -> Result<Vec<u8>, SecretProblem> {
    let data = data_of(name, secret)?;
    match data.get(CA_KEY) {
        Some(v) if !v.0.is_empty() => match crate::tls::parse_pem_bundle(&v.0) {
            Ok(_) => Ok(v.0.clone()),
            Err(e) => Err(SecretProblem::new(
                SourceReason::InvalidSecret,
                format!("Secret {name}: {CA_KEY}: {e}"),
            )),
        },
        _ => Err(SecretProblem::new(
            SourceReason::InvalidSecret,
            format!("Secret {name} has no {CA_KEY} key"),
        )),
    }
}

fn data_of<'a>(
    name: &str,
    secret: Option<&'a Secret>,
) -> Result<&'a BTreeMap<String, ByteString>, SecretProblem> {
    static EMPTY: BTreeMap<String, ByteString> = BTreeMap::new();
    match secret {
        None => Err(SecretProblem::new(
            SourceReason::SecretNotFound,
            format!("Secret {name} not found in the source's namespace"),
        )),
        Some(s) => Ok(s.data.as_ref().unwrap_or(&EMPTY)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(key: &str, value: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn reads_docker_config_json_for_the_host() {
        let s = secret(
            DOCKER_CONFIG_JSON,
            r#"{"auths":{"reg.example:5000":{"username":"u","password":"hunter2"}}}"#,
        );
        let c = credentials("regcred", Some(&s), "reg.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "hunter2"));
        assert_eq!(
            credentials("regcred", Some(&s), "other.example").unwrap(),
            None
        );
    }

    #[test]
    fn reads_legacy_dockercfg() {
        let s = secret(DOCKER_CFG, r#"{"reg.example":{"auth":"dTpw"}}"#);
        let c = credentials("old", Some(&s), "reg.example")
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "u");
    }

    #[test]
    fn problems_name_the_secret_but_never_its_data() {
        let e = credentials("regcred", None, "h").unwrap_err();
        assert_eq!(e.reason, SourceReason::SecretNotFound);
        let e = credentials("regcred", Some(&secret("token", "hunter2")), "h").unwrap_err();
        assert_eq!(e.reason, SourceReason::InvalidSecret);
        let e = credentials(
            "regcred",
            Some(&secret(DOCKER_CONFIG_JSON, "hunter2 not json")),
            "h",
        )
        .unwrap_err();
        assert_eq!(e.reason, SourceReason::InvalidSecret);
        assert!(!e.message.contains("hunter2"));
        assert!(ca_bundle("ca", Some(&secret("other", "x"))).is_err());
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            ca_bundle("ca", Some(&secret(CA_KEY, pem))).unwrap(),
            pem.as_bytes()
        );
    }

    #[test]
    fn a_ca_that_is_not_pem_is_an_invalid_secret() {
        // it was reported as InvalidReference, blaming the source's URL
        for bad in [
            "PEM",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        ] {
            let e = ca_bundle("ca", Some(&secret(CA_KEY, bad))).unwrap_err();
            assert_eq!(e.reason, SourceReason::InvalidSecret, "{bad}");
            assert!(
                e.message.starts_with("Secret ca: ca.crt: "),
                "{}",
                e.message
            );
        }
    }
}
