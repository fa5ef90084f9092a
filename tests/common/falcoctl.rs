//! Artifacts in falcoctl's exact format, built here byte by byte (not by `ocisync push`):
//! an OCI image manifest with no artifactType, a config blob of falcoctl's media type
//! holding name, version, requirements and dependencies, and one tar.gz layer whose title
//! annotation is the archive's file name (falcoctl pkg/oci/pusher).

use bytes::Bytes;
use ocisync::oci::reference::Repository;
use ocisync::oci::registry::Registry;

pub const RULESFILE_CONFIG: &str = "application/vnd.cncf.falco.rulesfile.config.v1+json";
pub const RULESFILE_LAYER: &str = "application/vnd.cncf.falco.rulesfile.layer.v1+tar.gz";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One rules file, pushed at `tag` with this config blob; the manifest's digest.
pub async fn push_rulesfile(
    registry: &Registry,
    repo: &Repository,
    tag: &str,
    file: (&str, &[u8]),
    config: serde_json::Value,
) -> String {
    let layer = tar_gz(file.0, file.1);
    let config = serde_json::to_vec(&config).expect("config JSON");
    let mut layer_descriptor = descriptor(RULESFILE_LAYER, &layer);
    layer_descriptor["annotations"] =
        serde_json::json!({"org.opencontainers.image.title": format!("{}.tar.gz", file.0)});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(RULESFILE_CONFIG, &config),
        "layers": [layer_descriptor],
        "annotations": {"org.opencontainers.image.created": "2026-12-03T00:00:00Z"},
    });
    for blob in [config, layer] {
        let digest = ocisync::oci::registry::sha256_digest(&blob);
        registry
            .push_blob(repo, &digest, Bytes::from(blob))
            .await
            .expect("push blob");
    }
    let body = serde_json::to_vec(&manifest).expect("manifest JSON");
    let digest = ocisync::oci::registry::sha256_digest(&body);
    registry
        .push_manifest(repo, tag, MANIFEST, Bytes::from(body))
        .await
        .expect("push manifest");
    digest
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": ocisync::oci::registry::sha256_digest(blob),
        "size": blob.len(),
    })
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
