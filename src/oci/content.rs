//! What an artifact holds, detected from its media types and annotations, and how each
//! layer turns into files (unpacked tar, or one file named by its title).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST_V2: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub const FALCO_RULES_CONFIG: &str = "application/vnd.cncf.falco.rulesfile.config.v1+json";
pub const FALCO_RULES_LAYER: &str = "application/vnd.cncf.falco.rulesfile.layer.v1+tar.gz";
pub const FALCO_PLUGIN_CONFIG: &str = "application/vnd.cncf.falco.plugin.config.v1+json";
pub const FALCO_PLUGIN_LAYER: &str = "application/vnd.cncf.falco.plugin.layer.v1+tar.gz";
pub const FALCO_ASSET_CONFIG: &str = "application/vnd.cncf.falco.asset.config.v1+json";
pub const FALCO_ASSET_LAYER: &str = "application/vnd.cncf.falco.asset.layer.v1+tar.gz";
pub const FLUX_CONFIG: &str = "application/vnd.cncf.flux.config.v1+json";
pub const FLUX_LAYER: &str = "application/vnd.cncf.flux.content.v1.tar+gzip";
pub const KYVERNO_CONFIG: &str = "application/vnd.cncf.kyverno.config.v1+json";
pub const KYVERNO_LAYER: &str = "application/vnd.cncf.kyverno.policy.layer.v1+yaml";
/// CRI-O's media type for seccomp profiles shipped as OCI artifacts.
pub const SECCOMP_CONFIG: &str = "application/vnd.cncf.seccomp-profile.config.v1+json";
/// The AppArmor analogue of [`SECCOMP_CONFIG`] (no upstream convention exists yet).
pub const APPARMOR_CONFIG: &str = "application/vnd.cncf.apparmor-profile.config.v1+json";

pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// ORAS marks a tar+gzip layer made from a directory with this annotation.
pub const ANNOTATION_ORAS_UNPACK: &str = "io.deis.oras.content.unpack";

/// The kind of content an artifact carries.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum ContentKind {
    FalcoRules,
    FalcoPlugin,
    FalcoAsset,
    Flux,
    Kyverno,
    Seccomp,
    AppArmor,
    #[default]
    Generic,
}

impl ContentKind {
    /// Detects the kind from the manifest's config media type, falling back on
    /// `artifactType` and then on the layers' media types.
    pub fn detect(config_media_type: &str, artifact_type: Option<&str>, layers: &[&str]) -> Self {
        let by_config = Self::from_config_media_type(config_media_type);
        if by_config != ContentKind::Generic {
            return by_config;
        }
        if let Some(at) = artifact_type {
            let by_type = Self::from_config_media_type(at);
            if by_type != ContentKind::Generic {
                return by_type;
            }
        }
        layers
            .iter()
            .map(|l| Self::from_layer_media_type(l))
            .find(|k| *k != ContentKind::Generic)
            .unwrap_or(ContentKind::Generic)
    }

    fn from_config_media_type(media_type: &str) -> Self {
        match media_type {
            FALCO_RULES_CONFIG => ContentKind::FalcoRules,
            FALCO_PLUGIN_CONFIG => ContentKind::FalcoPlugin,
            FALCO_ASSET_CONFIG => ContentKind::FalcoAsset,
            FLUX_CONFIG => ContentKind::Flux,
            KYVERNO_CONFIG => ContentKind::Kyverno,
            SECCOMP_CONFIG => ContentKind::Seccomp,
            APPARMOR_CONFIG => ContentKind::AppArmor,
            _ => ContentKind::Generic,
        }
    }

    fn from_layer_media_type(media_type: &str) -> Self {
        match media_type {
            FALCO_RULES_LAYER => ContentKind::FalcoRules,
            FALCO_PLUGIN_LAYER => ContentKind::FalcoPlugin,
            FALCO_ASSET_LAYER => ContentKind::FalcoAsset,
            FLUX_LAYER => ContentKind::Flux,
            KYVERNO_LAYER => ContentKind::Kyverno,
            _ => ContentKind::Generic,
        }
    }

    /// The config media type `ocisync push` writes for this kind.
    pub fn config_media_type(self) -> &'static str {
        match self {
            ContentKind::FalcoRules => FALCO_RULES_CONFIG,
            ContentKind::FalcoPlugin => FALCO_PLUGIN_CONFIG,
            ContentKind::FalcoAsset => FALCO_ASSET_CONFIG,
            ContentKind::Flux => FLUX_CONFIG,
            ContentKind::Kyverno => KYVERNO_CONFIG,
            ContentKind::Seccomp => SECCOMP_CONFIG,
            ContentKind::AppArmor => APPARMOR_CONFIG,
            ContentKind::Generic => EMPTY_CONFIG,
        }
    }
}

/// How one layer becomes files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerForm {
    /// A tar archive, gzip-compressed or not, unpacked into the artifact's tree.
    Tar { gzip: bool },
    /// One file, named by the title annotation (or the digest when untitled).
    File,
}

/// Decides how a layer is materialised, from its media type and annotations.
/// ORAS pushes single files with the tar media type and a title: those are plain files
/// unless ORAS marked the layer for unpacking. Gzipped tars are always unpacked: ORAS marks
/// directories with `io.deis.oras.content.unpack`, oras-py pushes them as titled
/// `tar+gzip` layers without it and extracts every such layer on pull.
pub fn layer_form(media_type: &str, titled: bool, oras_unpack: bool) -> LayerForm {
    let gzip_tar = matches!(
        media_type,
        FALCO_RULES_LAYER | FALCO_PLUGIN_LAYER | FALCO_ASSET_LAYER | FLUX_LAYER | LAYER_TAR_GZIP
    ) || media_type.ends_with(".tar+gzip")
        || media_type.ends_with("+tar.gz");
    if gzip_tar {
        return LayerForm::Tar { gzip: true };
    }
    if media_type == LAYER_TAR && (!titled || oras_unpack) {
        return LayerForm::Tar { gzip: false };
    }
    LayerForm::File
}

/// The Falco config blob (`name`, `version`, `dependencies`, `requirements`), as falcoctl
/// writes it for rules files and plugins.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct FalcoConfig {
    /// Artifact name, for example `falco-rules`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Artifact version, for example `3.2.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Other artifacts this one needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<FalcoDependency>,
    /// Requirements on the consumer, such as `engine_version_semver`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<FalcoRequirement>,
}

/// A dependency of a Falco artifact.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct FalcoDependency {
    /// Name of the artifact depended on.
    pub name: String,
    /// Version required.
    #[serde(default)]
    pub version: String,
    /// Artifacts that satisfy the dependency as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<FalcoAlternative>,
}

/// An alternative to a Falco dependency.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct FalcoAlternative {
    /// Name of the alternative artifact.
    pub name: String,
    /// Version required.
    #[serde(default)]
    pub version: String,
}

/// A requirement of a Falco artifact.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct FalcoRequirement {
    /// Name of the requirement, for example `engine_version_semver`.
    pub name: String,
    /// Version required.
    #[serde(default)]
    pub version: String,
}

impl FalcoConfig {
    /// Parses a Falco config blob; `None` when it is not one (empty or foreign JSON).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let config: FalcoConfig = serde_json::from_slice(bytes).ok()?;
        let empty = config.name.is_none()
            && config.version.is_none()
            && config.dependencies.is_empty()
            && config.requirements.is_empty();
        (!empty).then(|| config.bounded())
    }

    /// At most [`MAX_CONFIG_ENTRIES`] requirements and dependencies, [`MAX_ALTERNATIVES`]
    /// alternatives each, and strings of at most [`MAX_CONFIG_FIELD`] printable characters:
    /// the blob (up to 1 MiB, from any registry) goes into status and into every bundle's
    /// dependency check.
    fn bounded(mut self) -> Self {
        self.name = self.name.as_deref().map(field);
        self.version = self.version.as_deref().map(field);
        self.requirements.truncate(MAX_CONFIG_ENTRIES);
        for r in &mut self.requirements {
            (r.name, r.version) = (field(&r.name), field(&r.version));
        }
        self.dependencies.truncate(MAX_CONFIG_ENTRIES);
        for d in &mut self.dependencies {
            (d.name, d.version) = (field(&d.name), field(&d.version));
            d.alternatives.truncate(MAX_ALTERNATIVES);
            for a in &mut d.alternatives {
                (a.name, a.version) = (field(&a.name), field(&a.version));
            }
        }
        self
    }
}

/// Most requirements, and most dependencies, kept from a Falco config blob.
pub const MAX_CONFIG_ENTRIES: usize = 64;
/// Most alternatives kept for one dependency.
pub const MAX_ALTERNATIVES: usize = 16;
/// Most characters kept of a name or version.
pub const MAX_CONFIG_FIELD: usize = 128;

/// A config string as status may hold it: no control characters or line separators
/// (the API server reads status applies as YAML), at most [`MAX_CONFIG_FIELD`] characters.
fn field(s: &str) -> String {
    s.chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}')
        })
        .take(MAX_CONFIG_FIELD)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_config_blob_is_bounded() {
        let long = "9".repeat(10_000);
        let alternatives: Vec<_> = (0..100)
            .map(|i| serde_json::json!({"name": format!("a{i}"), "version": "1.0.0"}))
            .collect();
        let deps: Vec<_> = (0..1000).map(|i| serde_json::json!({"name": format!("d{i}\u{85}\u{7f}"), "version": long, "alternatives": alternatives})).collect();
        let blob = serde_json::json!({"name": "x\u{2028}y", "version": long, "dependencies": deps,
            "requirements": (0..1000).map(|_| serde_json::json!({"name": "engine_version_semver", "version": "0.1.0"})).collect::<Vec<_>>()});
        let c = FalcoConfig::parse(&serde_json::to_vec(&blob).unwrap()).unwrap();
        assert_eq!(
            (c.dependencies.len(), c.requirements.len()),
            (MAX_CONFIG_ENTRIES, MAX_CONFIG_ENTRIES)
        );
        assert_eq!(c.dependencies[0].alternatives.len(), MAX_ALTERNATIVES);
        assert_eq!(c.dependencies[0].name, "d0");
        assert_eq!(c.name.as_deref(), Some("xy"));
        assert_eq!(c.version.map(|v| v.len()), Some(MAX_CONFIG_FIELD));
    }

    #[test]
    fn detects_kinds_from_config_then_artifact_type_then_layers() {
        assert_eq!(
            ContentKind::detect(FALCO_RULES_CONFIG, None, &[]),
            ContentKind::FalcoRules
        );
        assert_eq!(
            ContentKind::detect(EMPTY_CONFIG, Some(FLUX_CONFIG), &[]),
            ContentKind::Flux
        );
        assert_eq!(
            ContentKind::detect("application/x-unknown", None, &[KYVERNO_LAYER]),
            ContentKind::Kyverno
        );
        assert_eq!(
            ContentKind::detect(EMPTY_CONFIG, None, &[LAYER_TAR]),
            ContentKind::Generic
        );
    }

    #[test]
    fn layer_forms() {
        assert_eq!(
            layer_form(FALCO_RULES_LAYER, false, false),
            LayerForm::Tar { gzip: true }
        );
        assert_eq!(
            layer_form(FLUX_LAYER, true, false),
            LayerForm::Tar { gzip: true }
        );
        // ORAS: a titled file with the tar media type is the file itself.
        assert_eq!(layer_form(LAYER_TAR, true, false), LayerForm::File);
        assert_eq!(
            layer_form(LAYER_TAR_GZIP, true, true),
            LayerForm::Tar { gzip: true }
        );
        assert_eq!(
            layer_form(LAYER_TAR_GZIP, true, false),
            LayerForm::Tar { gzip: true }
        );
        assert_eq!(
            layer_form(LAYER_TAR, false, false),
            LayerForm::Tar { gzip: false }
        );
        assert_eq!(layer_form(KYVERNO_LAYER, true, false), LayerForm::File);
        assert_eq!(layer_form("text/plain", false, false), LayerForm::File);
    }

    #[test]
    fn parses_falco_config() {
        let raw = br#"{"name":"falco-rules","version":"3.2.0","dependencies":[],
            "requirements":[{"name":"engine_version_semver","version":"0.39.0"}]}"#;
        let c = FalcoConfig::parse(raw).expect("falco config");
        assert_eq!(c.name.as_deref(), Some("falco-rules"));
        assert_eq!(c.requirements[0].name, "engine_version_semver");
        assert_eq!(FalcoConfig::parse(b"{}"), None);
        assert_eq!(FalcoConfig::parse(b"not json"), None);
    }
}
