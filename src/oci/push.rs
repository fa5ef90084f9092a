//! Packaging files as OCI artifacts in the layouts falcoctl, Flux, Kyverno and ORAS use,
//! and pushing them (blobs, manifest, tags, and an index entry per platform).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};

use super::content::{self, ContentKind};
use super::error::{OciError, Result};
use super::reference::{Repository, validate_tag};
use super::registry::Registry;
use crate::digest::Digest;
use crate::verify::discover::{SIGNATURE_ANNOTATION, SIMPLESIGNING, signature_tag};
use crate::verify::keys::SigningKey;
use crate::verify::simplesigning;

/// An artifact ready to push: blobs and the manifest that ties them.
#[derive(Debug)]
pub struct Package {
    pub config: (OciDescriptor, Bytes),
    pub layers: Vec<(OciDescriptor, Bytes)>,
    pub manifest: Bytes,
    pub manifest_digest: Digest,
}

/// What to package.
#[derive(Clone, Debug, Default)]
pub struct PackageRequest {
    pub paths: Vec<PathBuf>,
    pub kind: ContentKind,
    /// The artifact's name (for the Falco config): the repository's last component.
    pub name: String,
    pub version: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// A fixed creation time (RFC 3339) for reproducible output.
    pub created: Option<String>,
}

/// The tags to push: the reference's tag, the version, and with `floating` the version's
/// `major.minor` and `major`, as falcoctl does.
pub fn tags_for(tag: Option<&str>, version: Option<&str>, floating: bool) -> Result<Vec<String>> {
    let mut tags: Vec<String> = Vec::new();
    let mut add = |t: String| {
        if !tags.contains(&t) {
            tags.push(t);
        }
    };
    if let Some(t) = tag {
        add(t.to_string());
    }
    if let Some(v) = version {
        let parsed = semver::Version::parse(v.strip_prefix('v').unwrap_or(v));
        if floating {
            let parsed = parsed.map_err(|_| {
                OciError::InvalidReference(format!(
                    "--floating-tags needs a semver --version, got {v:?}"
                ))
            })?;
            add(v.to_string());
            if parsed.pre.is_empty() {
                add(format!("{}.{}", parsed.major, parsed.minor));
                add(parsed.major.to_string());
            }
        } else {
            add(v.to_string());
        }
    }
    if tags.is_empty() {
        tags.push("latest".into());
    }
    for t in &tags {
        validate_tag(t)?;
    }
    Ok(tags)
}

/// Builds the blobs and manifest for `request`.
pub fn package(request: &PackageRequest) -> Result<Package> {
    let files = collect_files(&request.paths)?;
    let layers = match request.kind {
        ContentKind::FalcoRules
        | ContentKind::FalcoPlugin
        | ContentKind::FalcoAsset
        | ContentKind::Flux => {
            let media_type = match request.kind {
                ContentKind::FalcoRules => content::FALCO_RULES_LAYER,
                ContentKind::FalcoPlugin => content::FALCO_PLUGIN_LAYER,
                ContentKind::FalcoAsset => content::FALCO_ASSET_LAYER,
                _ => content::FLUX_LAYER,
            };
            let tgz = tar_gzip(&files)?;
            let mut annotations = BTreeMap::new();
            if request.kind != ContentKind::Flux {
                annotations.insert(
                    content::ANNOTATION_TITLE.to_string(),
                    format!("{}.tar.gz", request.name),
                );
            }
            vec![blob(media_type, tgz, annotations)]
        }
        ContentKind::Kyverno
        | ContentKind::Seccomp
        | ContentKind::AppArmor
        | ContentKind::Generic => {
            let media_type = if request.kind == ContentKind::Kyverno {
                content::KYVERNO_LAYER
            } else {
                content::LAYER_TAR
            };
            files
                .into_iter()
                .map(|(rel, path)| {
                    let data = std::fs::read(&path)
                        .map_err(|e| OciError::io(format!("read {}", path.display()), e))?;
                    let annotations =
                        BTreeMap::from([(content::ANNOTATION_TITLE.to_string(), rel)]);
                    Ok(blob(media_type, data, annotations))
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    let config_json = match request.kind {
        ContentKind::FalcoRules | ContentKind::FalcoPlugin | ContentKind::FalcoAsset => {
            serde_json::json!({
                "name": request.name,
                "version": request.version.clone().unwrap_or_default(),
                "dependencies": [],
                "requirements": [],
            })
        }
        _ => serde_json::json!({}),
    };
    let config_bytes = serde_json::to_vec(&config_json).unwrap_or_else(|_| b"{}".to_vec());
    let config = blob(
        request.kind.config_media_type(),
        config_bytes,
        BTreeMap::new(),
    );
    let mut annotations = request.annotations.clone();
    if let Some(v) = &request.version {
        annotations
            .entry(content::ANNOTATION_VERSION.to_string())
            .or_insert_with(|| v.clone());
    }
    if let Some(c) = &request.created {
        annotations
            .entry(content::ANNOTATION_CREATED.to_string())
            .or_insert_with(|| c.clone());
    }
    let artifact_type = match request.kind {
        ContentKind::Generic => Some("application/vnd.ocisync.files.v1".to_string()),
        _ => None,
    };
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(content::MANIFEST_V1.to_string()),
        config: config.0.clone(),
        layers: layers.iter().map(|(d, _)| d.clone()).collect(),
        subject: None,
        artifact_type,
        annotations: (!annotations.is_empty()).then_some(annotations),
    };
    let manifest_bytes = Bytes::from(
        serde_json::to_vec(&manifest).map_err(|e| OciError::InvalidManifest(e.to_string()))?,
    );
    Ok(Package {
        manifest_digest: Digest::of(&manifest_bytes),
        manifest: manifest_bytes,
        config,
        layers,
    })
}

fn blob(
    media_type: &str,
    data: Vec<u8>,
    annotations: BTreeMap<String, String>,
) -> (OciDescriptor, Bytes) {
    let descriptor = OciDescriptor {
        media_type: media_type.to_string(),
        digest: Digest::of(&data).to_string(),
        size: data.len() as i64,
        urls: None,
        annotations: (!annotations.is_empty()).then_some(annotations),
        artifact_type: None,
    };
    (descriptor, Bytes::from(data))
}

/// Expands the given paths into (relative name, path) pairs: a file by its file name,
/// a directory by every regular file below it, relative to the directory. Links are refused.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| OciError::io(format!("read {}", path.display()), e))?;
        if meta.is_file() {
            let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                OciError::UnsafeContent(format!("{} has no UTF-8 file name", path.display()))
            })?;
            out.push((name.to_string(), path.clone()));
        } else if meta.is_dir() {
            walk(path, path, &mut out)?;
        } else {
            return Err(OciError::UnsafeContent(format!(
                "{} is not a regular file or directory",
                path.display()
            )));
        }
    }
    out.sort();
    for pair in out.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(OciError::UnsafeContent(format!(
                "two inputs are both named {:?}",
                pair[0].0
            )));
        }
    }
    if out.is_empty() {
        return Err(OciError::UnsafeContent("no files to push".into()));
    }
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| OciError::io(format!("read {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| OciError::io(format!("read {}", dir.display()), e))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| OciError::io(format!("read {}", path.display()), e))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path
                .strip_prefix(root)
                .ok()
                .and_then(|p| p.to_str())
                .ok_or_else(|| {
                    OciError::UnsafeContent(format!("{} has no UTF-8 name", path.display()))
                })?;
            out.push((rel.replace(std::path::MAIN_SEPARATOR, "/"), path.clone()));
        } else {
            return Err(OciError::UnsafeContent(format!(
                "{} is a link or special file",
                path.display()
            )));
        }
    }
    Ok(())
}

/// A reproducible tar.gz of the files: fixed owner, mode and time.
fn tar_gzip(files: &[(String, PathBuf)]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (rel, path) in files {
        let data =
            std::fs::read(path).map_err(|e| OciError::io(format!("read {}", path.display()), e))?;
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, rel, &data[..])
            .map_err(|e| OciError::io(format!("archive {rel}"), e))?;
    }
    let gz = builder
        .into_inner()
        .map_err(|e| OciError::io("finish archive", e))?;
    let mut bytes = gz.finish().map_err(|e| OciError::io("finish gzip", e))?;
    bytes.flush().map_err(|e| OciError::io("finish gzip", e))?;
    Ok(bytes)
}

/// Pushes blobs and the manifest, then tags it. With a platform the tags point at an
/// image index holding this manifest for that platform, merged with the index already
/// at the first tag (other platforms kept, the same platform replaced).
pub async fn push(
    registry: &Registry,
    repo: &Repository,
    package: &Package,
    tags: &[String],
    platform: Option<&str>,
) -> Result<Digest> {
    registry
        .push_blob(repo, &package.config.0.digest, package.config.1.clone())
        .await?;
    for (descriptor, data) in &package.layers {
        registry
            .push_blob(repo, &descriptor.digest, data.clone())
            .await?;
    }
    registry
        .push_manifest(
            repo,
            package.manifest_digest.as_str(),
            content::MANIFEST_V1,
            package.manifest.clone(),
        )
        .await?;
    let (media_type, body, digest) = match platform {
        None => (
            content::MANIFEST_V1,
            package.manifest.clone(),
            package.manifest_digest.clone(),
        ),
        Some(p) => {
            let existing = existing_index(registry, repo, tags.first().map(String::as_str)).await?;
            let index = merge_index(existing, package, p)?;
            let bytes = Bytes::from(
                serde_json::to_vec(&index).map_err(|e| OciError::InvalidManifest(e.to_string()))?,
            );
            let digest = Digest::of(&bytes);
            (content::INDEX_V1, bytes, digest)
        }
    };
    for tag in tags {
        registry
            .push_manifest(repo, tag, media_type, body.clone())
            .await?;
    }
    Ok(digest)
}

/// What `push --sign-key` wrote: the classic signature manifest and how many signatures
/// it now holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// `sha256-<hex>.sig`.
    pub tag: String,
    pub manifest_digest: Digest,
    /// Signature layers in the manifest, this one included.
    pub signatures: usize,
    /// False when this key had already signed the digest (nothing was written).
    pub written: bool,
}

/// Signs `digest` as cosign's classic layout does: the simple-signing payload as a blob,
/// its signature in the layer annotation, in the manifest at tag `sha256-<hex>.sig`. A
/// signature already there is kept (the new one is appended), at most
/// [`MAX_SIGNATURES`] in all, as many as the verifier reads.
pub async fn sign(
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
    key: &SigningKey,
) -> Result<Signed> {
    let tag = signature_tag(digest);
    let payload = Bytes::from(simplesigning::payload_for(&repo.to_string(), digest));
    let mut layers = existing_signatures(registry, repo, &tag).await?;
    if layers.iter().any(|l| signed_by(l, &payload, key)) {
        return Ok(Signed {
            manifest_digest: current_digest(registry, repo, &tag).await?,
            tag,
            signatures: layers.len(),
            written: false,
        });
    }
    if layers.len() >= MAX_SIGNATURES {
        return Err(OciError::TooLarge(format!(
            "{repo}:{tag} already holds {} signatures, the most ocisync reads",
            layers.len()
        )));
    }
    let signature = key.sign(&payload).map_err(OciError::Internal)?;
    let annotation = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(signature)
    };
    let annotations = BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), annotation)]);
    let (layer, payload) = blob(SIMPLESIGNING, payload.to_vec(), annotations);
    registry.push_blob(repo, &layer.digest, payload).await?;
    layers.push(layer);
    let (config, manifest) = signature_manifest(&layers)?;
    registry.push_blob(repo, &config.0.digest, config.1).await?;
    registry
        .push_manifest(repo, &tag, content::MANIFEST_V1, manifest.clone())
        .await?;
    Ok(Signed {
        tag,
        manifest_digest: Digest::of(&manifest),
        signatures: layers.len(),
        written: true,
    })
}

/// Most signatures one `.sig` manifest holds (what the verifier reads).
pub const MAX_SIGNATURES: usize = crate::verify::discover::MAX_SIGNATURE_LAYERS;

/// The simple-signing layers of the manifest at `tag` (none when the tag is absent).
async fn existing_signatures(
    registry: &Registry,
    repo: &Repository,
    tag: &str,
) -> Result<Vec<OciDescriptor>> {
    let raw = match registry.fetch_manifest(repo, tag, None).await {
        Ok(raw) => raw,
        Err(OciError::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let manifest: OciImageManifest = serde_json::from_slice(&raw.bytes)
        .map_err(|e| OciError::InvalidManifest(format!("{repo}:{tag}: {e}")))?;
    Ok(manifest
        .layers
        .into_iter()
        .filter(|l| l.media_type == SIMPLESIGNING)
        .collect())
}

async fn current_digest(registry: &Registry, repo: &Repository, tag: &str) -> Result<Digest> {
    Ok(registry.resolve(repo, tag).await?.digest)
}

/// Whether a layer is this payload signed by this key (signing again would only add a
/// second, equivalent signature).
fn signed_by(layer: &OciDescriptor, payload: &[u8], key: &SigningKey) -> bool {
    use base64::Engine as _;
    if layer.digest != Digest::of(payload).as_str() {
        return false;
    }
    layer
        .annotations
        .as_ref()
        .and_then(|a| a.get(SIGNATURE_ANNOTATION))
        .and_then(|text| {
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()
        })
        .is_some_and(|sig| key.public().verifies(payload, &sig))
}

/// The config and manifest of a classic signature image, as cosign writes them: an OCI
/// image config listing the layers as its root filesystem (a signature layer is not
/// compressed, so its diff ID is its digest), and an OCI image manifest.
fn signature_manifest(layers: &[OciDescriptor]) -> Result<((OciDescriptor, Bytes), Bytes)> {
    let created = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string();
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let history: Vec<serde_json::Value> = layers
        .iter()
        .map(|_| serde_json::json!({"created": created}))
        .collect();
    let config_json = serde_json::json!({
        "architecture": "",
        "os": "",
        "created": created,
        "config": {},
        "history": history,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes =
        serde_json::to_vec(&config_json).map_err(|e| OciError::Internal(e.to_string()))?;
    let config = blob(content::IMAGE_CONFIG, config_bytes, BTreeMap::new());
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(content::MANIFEST_V1.to_string()),
        config: config.0.clone(),
        layers: layers.to_vec(),
        subject: None,
        artifact_type: None,
        annotations: None,
    };
    let bytes =
        serde_json::to_vec(&manifest).map_err(|e| OciError::InvalidManifest(e.to_string()))?;
    Ok((config, Bytes::from(bytes)))
}

async fn existing_index(
    registry: &Registry,
    repo: &Repository,
    tag: Option<&str>,
) -> Result<Option<OciImageIndex>> {
    let Some(tag) = tag else { return Ok(None) };
    match registry.fetch_manifest(repo, tag, None).await {
        Ok(raw) if raw.media_type == content::INDEX_V1 => {
            Ok(serde_json::from_slice(&raw.bytes).ok())
        }
        Ok(_) => Ok(None),
        Err(OciError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Adds (or replaces) the entry for `platform` in an index.
pub fn merge_index(
    existing: Option<OciImageIndex>,
    package: &Package,
    platform: &str,
) -> Result<OciImageIndex> {
    let mut parts = platform.split('/');
    let (os, arch, variant) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next(),
    );
    if os.is_empty() || arch.is_empty() {
        return Err(OciError::InvalidReference(format!(
            "platform {platform:?} must be os/arch[/variant]"
        )));
    }
    let mut platform_json = serde_json::json!({"os": os, "architecture": arch});
    if let Some(v) = variant {
        platform_json["variant"] = serde_json::Value::String(v.to_string());
    }
    let entry: ImageIndexEntry = serde_json::from_value(serde_json::json!({
        "mediaType": content::MANIFEST_V1,
        "digest": package.manifest_digest,
        "size": package.manifest.len(),
        "platform": platform_json,
    }))
    .map_err(|e| OciError::InvalidReference(format!("platform {platform:?}: {e}")))?;
    let mut index = existing.unwrap_or(OciImageIndex {
        schema_version: 2,
        media_type: Some(content::INDEX_V1.to_string()),
        manifests: Vec::new(),
        artifact_type: None,
        annotations: None,
    });
    index.manifests.retain(|m| m.platform != entry.platform);
    index.manifests.push(entry);
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floating_tags_like_falcoctl() {
        assert_eq!(
            tags_for(Some("latest"), Some("1.2.3"), true).unwrap(),
            ["latest", "1.2.3", "1.2", "1"]
        );
        assert_eq!(tags_for(None, Some("1.2.3"), false).unwrap(), ["1.2.3"]);
        assert_eq!(tags_for(None, None, false).unwrap(), ["latest"]);
        assert_eq!(
            tags_for(None, Some("2.0.0-rc1"), true).unwrap(),
            ["2.0.0-rc1"]
        );
        assert!(tags_for(None, Some("not-semver"), true).is_err());
    }

    #[test]
    fn packages_falco_rules_as_falcoctl_does() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("my_rules.yaml");
        std::fs::write(&f, "- rule: r\n").unwrap();
        let p = package(&PackageRequest {
            paths: vec![f],
            kind: ContentKind::FalcoRules,
            name: "my-rules".into(),
            version: Some("1.0.0".into()),
            ..Default::default()
        })
        .unwrap();
        let m: OciImageManifest = serde_json::from_slice(&p.manifest).unwrap();
        assert_eq!(m.config.media_type, content::FALCO_RULES_CONFIG);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].media_type, content::FALCO_RULES_LAYER);
        let cfg: serde_json::Value = serde_json::from_slice(&p.config.1).unwrap();
        assert_eq!(cfg["name"], "my-rules");
        assert_eq!(cfg["version"], "1.0.0");
        // packaging is reproducible
        let again = package(&PackageRequest {
            paths: vec![dir.path().join("my_rules.yaml")],
            kind: ContentKind::FalcoRules,
            name: "my-rules".into(),
            version: Some("1.0.0".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.manifest_digest, again.manifest_digest);
    }

    #[test]
    fn a_signature_manifest_is_cosigns_classic_shape() {
        let key = SigningKey::from_pem(include_bytes!("../verify/testdata/p256.key")).unwrap();
        let digest = Digest::of(b"manifest");
        let payload = simplesigning::payload_for("registry.local/rules", &digest);
        let sig = key.sign(&payload).unwrap();
        let annotation = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&sig)
        };
        let annotations = BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), annotation)]);
        let (layer, _) = blob(SIMPLESIGNING, payload.clone(), annotations);
        assert!(signed_by(&layer, &payload, &key));
        let other = SigningKey::from_pem(include_bytes!("../verify/testdata/ed25519.key")).unwrap();
        assert!(!signed_by(&layer, &payload, &other), "another key");
        assert!(
            !signed_by(&layer, b"another payload", &key),
            "another payload"
        );

        let (config, manifest) = signature_manifest(&[layer.clone(), layer.clone()]).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m["mediaType"], content::MANIFEST_V1);
        assert_eq!(m["config"]["mediaType"], content::IMAGE_CONFIG);
        assert_eq!(m["config"]["digest"], config.0.digest);
        assert_eq!(m["layers"].as_array().unwrap().len(), 2);
        assert_eq!(m["layers"][0]["mediaType"], SIMPLESIGNING);
        assert!(m["layers"][0]["annotations"][SIGNATURE_ANNOTATION].is_string());
        let c: serde_json::Value = serde_json::from_slice(&config.1).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][1], layer.digest);
    }

    #[test]
    fn index_merge_replaces_same_platform() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.so");
        std::fs::write(&f, "x").unwrap();
        let req = PackageRequest {
            paths: vec![f],
            kind: ContentKind::FalcoPlugin,
            name: "p".into(),
            ..Default::default()
        };
        let p = package(&req).unwrap();
        let i = merge_index(None, &p, "linux/amd64").unwrap();
        let i = merge_index(Some(i), &p, "linux/arm64").unwrap();
        let i = merge_index(Some(i), &p, "linux/amd64").unwrap();
        assert_eq!(i.manifests.len(), 2);
        assert!(merge_index(None, &p, "linux").is_err());
    }
}
