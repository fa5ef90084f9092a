//! Turning an ArtifactSource spec into what a check needs, or a clear reason it cannot be.

use std::time::Duration;

use crate::api::ArtifactSourceSpec;
use crate::api::duration;
use crate::oci::reference::Reference;

use super::schedule::MIN_INTERVAL;

/// A spec that passed every check the CRD schema cannot express.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    pub reference: Reference,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Default timeout for registry operations.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Validates a spec. The message says what is wrong and how to fix it.
pub fn validate(spec: &ArtifactSourceSpec) -> Result<ValidSpec, String> {
    let (tag, semver, digest) = match &spec.reference {
        Some(r) => (r.tag.as_deref(), r.semver.as_deref(), r.digest.as_deref()),
        None => (None, None, None),
    };
    let reference = Reference::from_spec(&spec.url, tag, semver, digest).map_err(|e| match e {
        crate::oci::OciError::InvalidReference(m) => m,
        other => other.to_string(),
    })?;
    let interval = duration::parse(&spec.interval).map_err(|e| format!("spec.interval: {e}"))?;
    if interval < MIN_INTERVAL {
        return Err(format!(
            "spec.interval {} is under the minimum of {}s",
            spec.interval,
            MIN_INTERVAL.as_secs()
        ));
    }
    let timeout = match &spec.timeout {
        Some(t) => duration::parse(t).map_err(|e| format!("spec.timeout: {e}"))?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err("spec.timeout must be more than 0s".into());
    }
    for (field, secret) in [
        ("spec.secretRef", &spec.secret_ref),
        ("spec.certSecretRef", &spec.cert_secret_ref),
    ] {
        if let Some(s) = secret
            && (s.name.is_empty() || s.name.contains('/'))
        {
            return Err(format!(
                "{field}.name {:?} must name a Secret in the source's own namespace",
                s.name
            ));
        }
    }
    if let Some(v) = &spec.verify {
        super::verification::validate(v)?;
    }
    Ok(ValidSpec {
        reference,
        interval,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::artifact_source::{LocalObjectReference, OciRefSpec};

    fn spec(url: &str) -> ArtifactSourceSpec {
        ArtifactSourceSpec {
            url: url.into(),
            interval: "5m".into(),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_plain_spec_with_defaults() {
        let v = validate(&spec("oci://ghcr.io/falcosecurity/rules/falco-rules")).unwrap();
        assert_eq!(v.interval, Duration::from_secs(300));
        assert_eq!(v.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            v.reference.to_string(),
            "ghcr.io/falcosecurity/rules/falco-rules:latest"
        );
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let cases: Vec<(ArtifactSourceSpec, &str)> = vec![
            (spec("https://ghcr.io/x/y"), "oci://"),
            (
                ArtifactSourceSpec {
                    reference: Some(OciRefSpec {
                        tag: Some("1".into()),
                        semver: Some(">=1".into()),
                        digest: None,
                    }),
                    ..spec("oci://h/r")
                },
                "at most one",
            ),
            (
                ArtifactSourceSpec {
                    reference: Some(OciRefSpec {
                        semver: Some(">=banana".into()),
                        ..Default::default()
                    }),
                    ..spec("oci://h/r")
                },
                "semver",
            ),
            (
                ArtifactSourceSpec {
                    interval: "5s".into(),
                    ..spec("oci://h/r")
                },
                "minimum",
            ),
            (
                ArtifactSourceSpec {
                    interval: "soon".into(),
                    ..spec("oci://h/r")
                },
                "spec.interval",
            ),
            (
                ArtifactSourceSpec {
                    timeout: Some("0s".into()),
                    ..spec("oci://h/r")
                },
                "timeout",
            ),
            (
                ArtifactSourceSpec {
                    secret_ref: Some(LocalObjectReference {
                        name: "other/regcred".into(),
                    }),
                    ..spec("oci://h/r")
                },
                "own namespace",
            ),
        ];
        for (s, needle) in cases {
            let e = validate(&s).expect_err(needle);
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }
}
