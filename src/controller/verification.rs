//! `spec.verify` of an ArtifactSource: the policy it names (keys from a Secret, or keyless
//! identities and a trusted root), and the check of a revision against it, remembered per
//! (manifest digest, policy) so an unchanged tag costs no request.

use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::Api;

use crate::api::ArtifactSource;
use crate::api::artifact_source::{Verification, VerifySpec};
use crate::api::reason::{Problem, SourceReason};
use crate::digest::Digest;
use crate::errors::api_error_summary;
use crate::oci::pull::Deadline;
use crate::oci::reference::Repository;
use crate::oci::registry::Registry;
use crate::verify::discover::{self, CheckError, Requests};
use crate::verify::{Identity, Policy, PublicKey, TrustedRoot, Verified};

use super::context::Context;

type Failure = Problem<SourceReason>;

/// The ConfigMap key of a private Sigstore's trusted root.
pub const TRUSTED_ROOT_KEY: &str = "trusted_root.json";
/// Largest compiled identity regex (a hostile pattern is refused at validation).
const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// Most trusted keys read from one Secret.
const MAX_KEYS: usize = 32;

/// A source's policy, and the fingerprint of everything it trusts (keys, identities, root):
/// a verification is valid for a revision only under the same fingerprint.
#[derive(Clone, Debug)]
pub struct SourcePolicy {
    pub policy: Policy,
    pub fingerprint: Digest,
}

/// The identities of a keyless spec, compiled; the message says what is wrong (for
/// `InvalidSpec`). An empty list is refused: it must never mean "any identity".
pub fn identities(spec: &VerifySpec) -> Result<Vec<Identity>, String> {
    if spec.match_oidc_identity.is_empty() {
        return Err(
            "spec.verify: keyless verification (no secretRef) needs at least one \
                    matchOIDCIdentity entry; an empty list would accept any signer"
                .into(),
        );
    }
    spec.match_oidc_identity
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let compile = |field: &str, pattern: &str| {
                if pattern.is_empty() {
                    return Err(format!(
                        "spec.verify.matchOIDCIdentity[{i}].{field} is empty"
                    ));
                }
                if !pattern.starts_with('^') {
                    return Err(format!(
                        "spec.verify.matchOIDCIdentity[{i}].{field} {pattern:?} must start with ^: \
                         an unanchored pattern matches anywhere, for example inside a branch \
                         name the signer chose"
                    ));
                }
                regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("spec.verify.matchOIDCIdentity[{i}].{field}: {e}"))
            };
            Ok(Identity {
                issuer: compile("issuer", &m.issuer)?,
                subject: compile("subject", &m.subject)?,
            })
        })
        .collect()
}

/// The checks of `spec.verify` the CRD schema cannot express.
pub fn validate(spec: &VerifySpec) -> Result<(), String> {
    for (field, r) in [
        ("secretRef", &spec.secret_ref),
        ("trustedRootRef", &spec.trusted_root_ref),
    ] {
        if let Some(r) = r
            && (r.name.is_empty() || r.name.contains('/'))
        {
            return Err(format!(
                "spec.verify.{field}.name {:?} must name an object in the source's own namespace",
                r.name
            ));
        }
    }
    match &spec.secret_ref {
        Some(_) if !spec.match_oidc_identity.is_empty() => Err(
            "spec.verify: set secretRef (key mode) or matchOIDCIdentity (keyless), not both".into(),
        ),
        Some(_) if spec.trusted_root_ref.is_some() => Err(
            "spec.verify.trustedRootRef applies to keyless mode only; remove it or secretRef"
                .into(),
        ),
        Some(_) => Ok(()),
        None => identities(spec).map(|_| ()),
    }
}

/// The trusted keys of a key-mode Secret: every data key ending in `.pub`.
pub fn keys_from_secret(name: &str, secret: Option<&Secret>) -> Result<Vec<PublicKey>, Failure> {
    let Some(secret) = secret else {
        return Err(Failure::new(
            SourceReason::SecretNotFound,
            format!("Secret {name} (spec.verify.secretRef) does not exist"),
        ));
    };
    let data = secret.data.clone().unwrap_or_default();
    let invalid = |m: String| Failure::new(SourceReason::InvalidSecret, m);
    let pubs: Vec<_> = data.iter().filter(|(k, _)| k.ends_with(".pub")).collect();
    if pubs.is_empty() {
        return Err(invalid(format!(
            "Secret {name} holds no key ending in .pub (a PEM public key, such as cosign.pub)"
        )));
    }
    if pubs.len() > MAX_KEYS {
        return Err(invalid(format!(
            "Secret {name} holds {} public keys; at most {MAX_KEYS} are read",
            pubs.len()
        )));
    }
    pubs.into_iter()
        .map(|(k, v)| {
            PublicKey::from_pem(&format!("{name}/{k}"), &v.0)
                .map_err(|e| invalid(format!("Secret {e}")))
        })
        .collect()
}

/// The fingerprint of a key-mode policy: its keys' fingerprints, sorted.
pub fn keys_fingerprint(keys: &[PublicKey]) -> Digest {
    let mut prints: Vec<String> = keys.iter().map(|k| k.fingerprint()).collect();
    prints.sort();
    Digest::of(format!("keys\n{}", prints.join("\n")).as_bytes())
}

/// The fingerprint of a keyless policy: its identity patterns and its root's bytes.
pub fn keyless_fingerprint(spec: &VerifySpec, root: &[u8]) -> Digest {
    let mut text = format!("keyless\n{}\n", Digest::of(root));
    for m in &spec.match_oidc_identity {
        text.push_str(&format!("{:?} {:?}\n", m.issuer, m.subject));
    }
    Digest::of(text.as_bytes())
}

/// What status records as the policy of a source whose policy could not be read: no kept
/// verification matches it, so none is claimed under a policy nobody could check.
pub const UNREADABLE_POLICY: &str = "unreadable";

/// The policy of a source, read now (Secrets and ConfigMaps are read at every check, as
/// registry credentials are). `None` without `spec.verify`.
pub async fn policy_for(
    source: &ArtifactSource,
    ctx: &Context,
) -> Result<Option<SourcePolicy>, Failure> {
    let Some(spec) = &source.spec.verify else {
        return Ok(None);
    };
    let namespace = source.namespace().unwrap_or_default();
    if let Some(r) = &spec.secret_ref {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let secret = secrets.get_opt(&r.name).await.map_err(|e| {
            Failure::new(
                SourceReason::SecretNotReadable,
                format!("cannot read Secret {}: {}", r.name, api_error_summary(&e)),
            )
        })?;
        let keys = keys_from_secret(&r.name, secret.as_ref())?;
        let fingerprint = keys_fingerprint(&keys);
        return Ok(Some(SourcePolicy {
            policy: Policy::Keys(keys),
            fingerprint,
        }));
    }
    let identities = identities(spec).map_err(|m| Failure::new(SourceReason::InvalidSpec, m))?;
    let (root, bytes) = match &spec.trusted_root_ref {
        Some(r) => private_root(ctx, &namespace, &r.name).await?,
        None => public_root()?,
    };
    Ok(Some(SourcePolicy {
        fingerprint: keyless_fingerprint(spec, &bytes),
        policy: Policy::Keyless { identities, root },
    }))
}

fn root_invalid(message: String) -> Failure {
    Failure::new(SourceReason::TrustedRootInvalid, message)
}

/// The public Sigstore root shipped with ocisync, parsed once.
fn public_root() -> Result<(Arc<TrustedRoot>, Vec<u8>), Failure> {
    static ROOT: OnceLock<Result<Arc<TrustedRoot>, String>> = OnceLock::new();
    let root = ROOT.get_or_init(|| TrustedRoot::public().map(Arc::new));
    match root {
        Ok(r) => Ok((r.clone(), b"public".to_vec())),
        Err(e) => Err(root_invalid(format!(
            "the shipped public trusted root: {e}"
        ))),
    }
}

async fn private_root(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<(Arc<TrustedRoot>, Vec<u8>), Failure> {
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let map = maps.get_opt(name).await.map_err(|e| {
        Failure::new(
            SourceReason::TrustedRootNotReadable,
            format!(
                "cannot read ConfigMap {name} (spec.verify.trustedRootRef): {}",
                api_error_summary(&e)
            ),
        )
    })?;
    let bytes = root_bytes(name, map.as_ref()).map_err(root_invalid)?;
    let root = TrustedRoot::parse(&bytes)
        .map_err(|e| root_invalid(format!("ConfigMap {name}/{TRUSTED_ROOT_KEY}: {e}")))?;
    Ok((Arc::new(root), bytes))
}

/// The `trusted_root.json` of a ConfigMap (under `data` or `binaryData`).
pub fn root_bytes(name: &str, map: Option<&ConfigMap>) -> Result<Vec<u8>, String> {
    let map =
        map.ok_or_else(|| format!("ConfigMap {name} (spec.verify.trustedRootRef) does not exist"))?;
    let text = map.data.as_ref().and_then(|d| d.get(TRUSTED_ROOT_KEY));
    let binary = map
        .binary_data
        .as_ref()
        .and_then(|d| d.get(TRUSTED_ROOT_KEY));
    match (text, binary) {
        (Some(t), _) => Ok(t.as_bytes().to_vec()),
        (None, Some(b)) => Ok(b.0.clone()),
        (None, None) => Err(format!("ConfigMap {name} has no key {TRUSTED_ROOT_KEY}")),
    }
}

/// Verifies `digest` against the source's policy: from memory when this digest passed this
/// policy before (no request), else from the registry, within `deadline`.
pub async fn verify(
    ctx: &Context,
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
    manifest: &[u8],
    policy: &SourcePolicy,
    deadline: &Deadline,
) -> Result<Verification, Failure> {
    if let Some(v) = ctx.verified(digest, &policy.fingerprint) {
        return Ok(v);
    }
    let mut requests = Requests::default();
    let checked = deadline
        .run(
            "verify",
            discover::check(
                registry,
                repo,
                digest,
                manifest,
                &policy.policy,
                &mut requests,
            ),
        )
        .await;
    tracing::debug!(%digest, requests = requests.0, ok = checked.is_ok(), "signature check");
    let verified = checked.map_err(|e| match e {
        CheckError::Registry(e) => Failure::from(e),
        CheckError::Refused(f) => Failure::new(f.refusal.reason(), f.message),
    })?;
    let v = verification_of(&verified, &policy.fingerprint);
    ctx.remember_verified(digest, &policy.fingerprint, &v);
    Ok(v)
}

/// The status form of a verification.
pub fn verification_of(v: &Verified, fingerprint: &Digest) -> Verification {
    Verification {
        method: v.method.as_str().to_string(),
        key_fingerprint: v.key_fingerprint.clone(),
        issuer: v.issuer.clone(),
        subject: v.subject.clone(),
        format: v.format.as_str().to_string(),
        signed_at: v.integrated_time.and_then(rfc3339),
        policy: fingerprint.to_string(),
    }
}

fn rfc3339(seconds: i64) -> Option<String> {
    let t = jiff::Timestamp::from_second(seconds).ok()?;
    Some(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The one-line message of `SourceVerified=True`.
pub fn describe(v: &Verification) -> String {
    match (&v.key_fingerprint, &v.issuer, &v.subject) {
        (Some(k), _, _) => format!("signed by key {k} ({})", v.format),
        (None, Some(i), Some(s)) => format!("signed by {s} (issuer {i}, {})", v.format),
        _ => format!("verified ({})", v.format),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;
    use crate::api::artifact_source::{LocalObjectReference, OidcIdentityMatch};

    fn keyless(entries: &[(&str, &str)]) -> VerifySpec {
        VerifySpec {
            match_oidc_identity: entries
                .iter()
                .map(|(i, s)| OidcIdentityMatch {
                    issuer: i.to_string(),
                    subject: s.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn reference(name: &str) -> Option<LocalObjectReference> {
        Some(LocalObjectReference { name: name.into() })
    }

    #[test]
    fn keyless_without_identities_is_an_invalid_spec_never_any_identity() {
        let e = validate(&keyless(&[])).expect_err("empty list");
        assert!(e.contains("at least one matchOIDCIdentity"), "{e}");
        assert!(validate(&keyless(&[("^https://issuer$", "^x$")])).is_ok());
    }

    #[test]
    fn bad_or_hostile_patterns_and_mixed_modes_are_refused() {
        let cases = [
            (keyless(&[("^(", "^x")]), "issuer"),
            (keyless(&[("^x", "")]), "subject is empty"),
            // a pattern whose compiled program is huge is refused, not compiled
            (keyless(&[("^x", "^(a{1000}){1000}")]), "subject"),
            // unanchored: `github.com/org/repo` would match a ref named after it by anyone
            (
                keyless(&[("^https://issuer$", "github.com/org/repo")]),
                "must start with ^",
            ),
            (
                VerifySpec {
                    secret_ref: reference("keys"),
                    ..keyless(&[("^x", "^y")])
                },
                "not both",
            ),
            (
                VerifySpec {
                    secret_ref: reference("keys"),
                    trusted_root_ref: reference("root"),
                    ..Default::default()
                },
                "keyless mode only",
            ),
            (
                VerifySpec {
                    secret_ref: reference("other/keys"),
                    ..Default::default()
                },
                "own namespace",
            ),
        ];
        for (spec, want) in cases {
            let e = validate(&spec).expect_err(want);
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    fn secret(entries: &[(&str, &[u8])]) -> Secret {
        let data: BTreeMap<String, ByteString> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect();
        Secret {
            data: Some(data),
            ..Default::default()
        }
    }

    const PUB: &[u8] = include_bytes!("../verify/testdata/p256.pub");

    #[test]
    fn every_pub_key_of_the_secret_is_trusted_and_others_are_ignored() {
        let s = secret(&[
            ("cosign.pub", PUB),
            ("cosign.key", b"secret"),
            ("b.pub", PUB),
        ]);
        let keys = keys_from_secret("keys", Some(&s)).expect("keys");
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().any(|k| k.name == "keys/cosign.pub"));
        let fp = keys_fingerprint(&keys);
        let reversed: Vec<_> = keys.iter().rev().cloned().collect();
        assert_eq!(fp, keys_fingerprint(&reversed), "order does not matter");
    }

    #[test]
    fn a_secret_without_usable_keys_says_why_without_its_data() {
        let e = keys_from_secret("keys", None).expect_err("missing");
        assert_eq!(e.reason, SourceReason::SecretNotFound);
        let e = keys_from_secret("keys", Some(&secret(&[("cosign.key", b"x")]))).expect_err("none");
        assert_eq!(e.reason, SourceReason::InvalidSecret);
        let bad = secret(&[("a.pub", b"TOPSECRET-not-a-key")]);
        let e = keys_from_secret("keys", Some(&bad)).expect_err("bad");
        assert_eq!(e.reason, SourceReason::InvalidSecret);
        assert!(e.message.contains("keys/a.pub"), "{}", e.message);
        assert!(!e.message.contains("TOPSECRET"), "{}", e.message);
    }

    #[test]
    fn policies_differ_by_identity_and_by_root() {
        let a = keyless(&[("^i$", "^s$")]);
        let b = keyless(&[("^i$", "^t$")]);
        assert_ne!(keyless_fingerprint(&a, b"r"), keyless_fingerprint(&b, b"r"));
        assert_ne!(
            keyless_fingerprint(&a, b"r"),
            keyless_fingerprint(&a, b"r2")
        );
        assert_eq!(keyless_fingerprint(&a, b"r"), keyless_fingerprint(&a, b"r"));
    }

    #[test]
    fn the_trusted_root_is_read_from_data_or_binary_data() {
        let mut map = ConfigMap::default();
        assert!(
            root_bytes("root", None)
                .expect_err("missing")
                .contains("does not exist")
        );
        assert!(
            root_bytes("root", Some(&map))
                .expect_err("no key")
                .contains(TRUSTED_ROOT_KEY)
        );
        map.binary_data = Some(BTreeMap::from([(
            TRUSTED_ROOT_KEY.to_string(),
            ByteString(b"{}".to_vec()),
        )]));
        assert_eq!(root_bytes("root", Some(&map)).expect("binary"), b"{}");
        map.data = Some(BTreeMap::from([(
            TRUSTED_ROOT_KEY.to_string(),
            "[]".into(),
        )]));
        assert_eq!(root_bytes("root", Some(&map)).expect("text"), b"[]");
    }
}
