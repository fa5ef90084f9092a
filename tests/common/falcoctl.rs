//! Artifacts in falcoctl's exact format, built here byte by byte (not by `ocisync push`):
//! an OCI image manifest with no artifactType, a config blob of falcoctl's media type
//! holding name, version, requirements and dependencies, and one tar.gz layer whose title
//! annotation is the archive's file name; a plugin is an image index of one such manifest
//! per platform, each descriptor carrying its platform (falcoctl pkg/oci/pusher).

use bytes::Bytes;
use ocisync::oci::reference::Repository;
use ocisync::oci::registry::{Registry, sha256_digest};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// falcoctl's artifact types, by their media types.
#[derive(Clone, Copy)]
pub enum Kind {
    Rulesfile,
    Plugin,
}

impl Kind {
    fn config(self) -> &'static str {
        match self {
            Kind::Rulesfile => "application/vnd.cncf.falco.rulesfile.config.v1+json",
            Kind::Plugin => "application/vnd.cncf.falco.plugin.config.v1+json",
        }
    }
    fn layer(self) -> &'static str {
        match self {
            Kind::Rulesfile => "application/vnd.cncf.falco.rulesfile.layer.v1+tar.gz",
            Kind::Plugin => "application/vnd.cncf.falco.plugin.layer.v1+tar.gz",
        }
    }
}

/// One rules file, pushed at `tag` with this config blob; the manifest's digest.
pub async fn push_rulesfile(
    registry: &Registry,
    repo: &Repository,
    tag: &str,
    file: (&str, &[u8]),
    config: serde_json::Value,
) -> String {
    push_manifest(registry, repo, tag, Kind::Rulesfile, file, &config)
        .await
        .0
}

/// A plugin: one manifest per `(os/arch, library bytes)`, all with the file `name` and the
/// same config blob, under an image index at `tag`; the index's digest.
pub async fn push_plugin(
    registry: &Registry,
    repo: &Repository,
    tag: &str,
    name: &str,
    platforms: &[(&str, &[u8])],
    config: serde_json::Value,
) -> String {
    let each: Vec<(&str, &[u8], serde_json::Value)> = platforms
        .iter()
        .map(|(p, b)| (*p, *b, config.clone()))
        .collect();
    push_plugin_configs(registry, repo, tag, name, &each).await
}

/// A plugin index whose platforms may carry different config blobs.
pub async fn push_plugin_configs(
    registry: &Registry,
    repo: &Repository,
    tag: &str,
    name: &str,
    platforms: &[(&str, &[u8], serde_json::Value)],
) -> String {
    let mut manifests = Vec::new();
    for (platform, library, config) in platforms {
        let (digest, size) =
            push_manifest(registry, repo, "", Kind::Plugin, (name, library), config).await;
        let (os, arch) = platform.split_once('/').expect("os/arch");
        manifests.push(serde_json::json!({
            "mediaType": MANIFEST, "digest": digest, "size": size,
            "artifactType": Kind::Plugin.config(),
            "platform": {"os": os, "architecture": arch},
        }));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
    let body = serde_json::to_vec(&index).expect("index JSON");
    let digest = sha256_digest(&body);
    registry
        .push_manifest(repo, tag, INDEX, Bytes::from(body))
        .await
        .expect("push index");
    digest
}

/// A plugin as one image manifest at `tag` (no index, no platform); its digest.
pub async fn push_plugin_manifest(
    registry: &Registry,
    repo: &Repository,
    tag: &str,
    file: (&str, &[u8]),
    config: serde_json::Value,
) -> String {
    push_manifest(registry, repo, tag, Kind::Plugin, file, &config)
        .await
        .0
}

/// One manifest of `kind` at `reference` (its digest when empty); its digest and size.
async fn push_manifest(
    registry: &Registry,
    repo: &Repository,
    reference: &str,
    kind: Kind,
    file: (&str, &[u8]),
    config: &serde_json::Value,
) -> (String, usize) {
    let layer = tar_gz(file.0, file.1);
    let config = serde_json::to_vec(config).expect("config JSON");
    let mut layer_descriptor = descriptor(kind.layer(), &layer);
    layer_descriptor["annotations"] =
        serde_json::json!({"org.opencontainers.image.title": format!("{}.tar.gz", file.0)});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(kind.config(), &config),
        "layers": [layer_descriptor],
        "annotations": {"org.opencontainers.image.created": "2026-12-03T00:00:00Z"},
    });
    for blob in [config, layer] {
        let digest = sha256_digest(&blob);
        registry
            .push_blob(repo, &digest, Bytes::from(blob))
            .await
            .expect("push blob");
    }
    let body = serde_json::to_vec(&manifest).expect("manifest JSON");
    let digest = sha256_digest(&body);
    let reference = if reference.is_empty() {
        digest.as_str()
    } else {
        reference
    };
    registry
        .push_manifest(repo, reference, MANIFEST, Bytes::from(body.clone()))
        .await
        .expect("push manifest");
    (digest, body.len())
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256_digest(blob), "size": blob.len()})
}

fn tar_gz(name: &str, content: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, content)
        .expect("tar entry");
    tar.into_inner().expect("tar").finish().expect("gzip")
}
