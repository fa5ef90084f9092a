//! `ArtifactSource`: an OCI artifact the controller tracks, pulls once per revision and
//! serves inside the cluster.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;
use crate::oci::content::{ContentKind, FalcoConfig};

/// Tracks an OCI artifact (by tag, semver range or digest), pulls each new revision once,
/// verifies every digest, stores it content-addressed and serves it in-cluster.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "ocisync.dev",
    version = "v1alpha1",
    kind = "ArtifactSource",
    namespaced,
    status = "ArtifactSourceStatus",
    shortname = "artsrc",
    category = "ocisync",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.artifact.revision"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactSourceSpec {
    /// The OCI repository, for example `oci://ghcr.io/falcosecurity/rules/falco-rules`.
    #[schemars(extend("pattern" = "^oci://[^/]+/.+$"))]
    pub url: String,
    /// Which revision to track: at most one of `tag`, `semver` or `digest`. Default: tag `latest`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<OciRefSpec>,
    /// How often to check the reference, as a Go duration (`30s`, `5m`, `1h`). Minimum `10s`.
    #[schemars(extend("pattern" = "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: String,
    /// Timeout for each registry operation, as a Go duration. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// Talk plain HTTP to the registry instead of HTTPS.
    #[serde(default)]
    pub insecure: bool,
    /// A `kubernetes.io/dockerconfigjson` Secret in the same namespace with registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// A Secret in the same namespace whose key `ca.crt` holds the CA bundle of the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,
    /// Select layers by media type; default: every layer of the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_selector: Option<LayerSelector>,
    /// Platform (`os/arch[/variant]`) to pick from an image index. Default: the controller's.
    /// `all` stores every platform's files (for plugins on mixed-architecture clusters):
    /// each node gets the files of its `kubernetes.io/os` and `kubernetes.io/arch`, and a
    /// ConfigMap target refuses the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = "^(all|[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?)$"))]
    pub platform: Option<String>,
    /// Stop checking the reference; the last artifact stays served.
    #[serde(default)]
    pub suspend: bool,
    /// Store and serve only revisions signed as this says (cosign keys, or keyless Sigstore
    /// identities). A revision that fails is never stored; the last verified one stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

/// How revisions must be signed. Key mode (`secretRef`) or keyless (`matchOIDCIdentity`),
/// never both.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// The signature format; only `cosign` (classic `.sig` signatures and Sigstore bundles).
    #[serde(default)]
    pub provider: VerifyProvider,
    /// Key mode: a Secret in the same namespace; every data key ending in `.pub` is a trusted
    /// PEM public key (ECDSA P-256/P-384, RSA or Ed25519).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Keyless mode: the certificate's OIDC issuer and subject must match one entry. Regexes
    /// match anywhere, as in cosign, so each must start with `^` (end it with `$` to match
    /// whole values). At least one entry is required.
    #[serde(
        default,
        rename = "matchOIDCIdentity",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(extend("maxItems" = 16))]
    pub match_oidc_identity: Vec<OidcIdentityMatch>,
    /// Keyless mode: a ConfigMap in the same namespace whose key `trusted_root.json` holds a
    /// Sigstore trusted root (a private Sigstore). Default: the public Sigstore instance's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root_ref: Option<LocalObjectReference>,
}

/// The signature provider.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VerifyProvider {
    #[default]
    Cosign,
}

/// An accepted keyless signer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OidcIdentityMatch {
    /// Regex the certificate's OIDC issuer must match.
    #[schemars(extend("minLength" = 1, "maxLength" = 1024))]
    pub issuer: String,
    /// Regex one of the certificate's subject alternative names must match.
    #[schemars(extend("minLength" = 1, "maxLength" = 1024))]
    pub subject: String,
}

/// The revision selector. Set at most one field.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("maxProperties" = 1))]
pub struct OciRefSpec {
    /// A tag, for example `3` or `latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A semver range such as `>=3.0.0 <4`; the highest matching tag wins. Pre-releases are
    /// excluded unless the range names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// A manifest digest, `sha256:<64 hex>`; always wins over tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = "^sha256:[a-f0-9]{64}$"))]
    pub digest: Option<String>,
}

/// A reference to an object in the same namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct LocalObjectReference {
    /// Name of the object.
    pub name: String,
}

/// Picks layers by media type.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LayerSelector {
    /// The media type a layer must have to be used.
    pub media_type: String,
}

/// Observed state of an ArtifactSource.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactSourceStatus {
    /// The metadata.generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, plus `Reconciling` or `Stalled` while they apply.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The last artifact pulled, verified and stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// When the reference was last checked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<String>,
    /// The last value of the `ocisync.dev/requested-at` annotation that was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_requested_at: Option<String>,
}

/// A stored revision of an artifact.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// `<tag or version>@<manifest digest>`.
    pub revision: String,
    /// The manifest digest.
    pub digest: String,
    /// The content kind detected from media types.
    pub kind: ContentKind,
    /// The parsed Falco config blob, where the artifact has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<FalcoConfig>,
    /// Total size of the artifact's files in bytes.
    pub size: i64,
    /// The artifact's files with their digests.
    #[serde(default)]
    pub files: Vec<ArtifactFile>,
    /// Where agents fetch the revision's index from, inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When this revision was stored (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
    /// Annotations of the manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// How the revision's signature was verified (only with `spec.verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// How a revision's signature was verified.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// `key` or `keyless`.
    pub method: String,
    /// Key mode: `sha256:<hex>` of the public key's SubjectPublicKeyInfo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Keyless: the certificate's OIDC issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Keyless: the certificate subject that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `classic`, `bundle-v0.2` or `bundle-v0.3`.
    pub format: String,
    /// Keyless: when the transparency log recorded the signature (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<String>,
    /// `sha256:<hex>` identifying the policy (keys, or identities and trusted root) that
    /// accepted the signature: a changed policy verifies the revision again.
    pub policy: String,
}

/// One file of an artifact.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct ArtifactFile {
    /// Relative path inside the artifact.
    pub path: String,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// With `platform: all`: the image index platform (`os/arch[/variant]`) the file is
    /// for; nodes take the files of their own platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}
