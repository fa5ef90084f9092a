//! Manifests and image indexes as a registry sends them: the effective media type (header,
//! else the body's `mediaType`), the image index's platform choice, the image manifest's
//! descriptor and size checks, the content kind, how each layer becomes files and the name
//! a single-file layer gets.
//!
//! Input: the Content-Type header, a newline, the wanted platform, a newline, the body.
//!
//! Invariants: a known header media type is kept; a manifest is accepted exactly when it
//! parses, every layer digest is sha256, no size is negative and the layer sizes add up to
//! at most the limit; a chosen index entry is one for the wanted platform with a sha256
//! digest; a layer's file name is a plain relative path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_client::manifest::{OciImageIndex, OciImageManifest};
use ocisync::digest::Digest;
use ocisync::oci::content::{self, ContentKind, LayerForm};
use ocisync::oci::pull::{checked_manifest, pick_platform};
use ocisync::oci::registry::effective_media_type;
use ocisync::oci::unpack::{Limits, safe_relative_path};

/// Small enough for inputs to reach it.
const ARTIFACT_LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (Some(header), Some(platform), Some(body)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Some(header), Some(platform)) = (ocisync_fuzz::text(header), ocisync_fuzz::text(platform))
    else {
        return;
    };
    let media_type = effective_media_type(header, body);
    let known = [
        content::MANIFEST_V1,
        content::INDEX_V1,
        content::DOCKER_MANIFEST_V2,
        content::DOCKER_MANIFEST_LIST_V2,
    ];
    let header_type = header.split(';').next().unwrap_or("").trim();
    if known.contains(&header_type) {
        assert_eq!(media_type, header_type);
    }
    match media_type.as_str() {
        content::INDEX_V1 | content::DOCKER_MANIFEST_LIST_V2 => index(body, platform),
        content::MANIFEST_V1 | content::DOCKER_MANIFEST_V2 => manifest(body),
        _ => {}
    }
});

fn index(body: &[u8], wanted: &str) {
    let Ok(index) = serde_json::from_slice::<OciImageIndex>(body) else {
        return;
    };
    let Ok(digest) = pick_platform(&index, wanted) else {
        return;
    };
    let mut parts = wanted.split('/');
    let (os, arch) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let chosen = index.manifests.iter().any(|m| {
        m.digest == digest.as_str()
            && m.platform.as_ref().is_some_and(|p| {
                json_str(&p.os) == Some(os.to_string())
                    && json_str(&p.architecture) == Some(arch.to_string())
            })
    });
    assert!(chosen, "{digest} is not an entry for {wanted}");
}

fn json_str(v: &impl serde::Serialize) -> Option<String> {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

fn manifest(body: &[u8]) {
    let limits = Limits {
        max_artifact_bytes: ARTIFACT_LIMIT,
        ..Limits::default()
    };
    let result = checked_manifest(body, &limits);
    let expected = serde_json::from_slice::<OciImageManifest>(body)
        .ok()
        .filter(acceptable);
    match (result, expected) {
        (Ok((manifest, digests)), Some(_)) => layers(&manifest, &digests),
        (Ok(_), None) => panic!("a manifest over the limits or with a bad layer was accepted"),
        (Err(e), Some(_)) => panic!("a manifest within the limits was refused: {e}"),
        (Err(_), None) => {}
    }
}

/// Every layer digest sha256, no size negative, the sum within the limit.
fn acceptable(m: &OciImageManifest) -> bool {
    let total: i128 = m.layers.iter().map(|l| i128::from(l.size)).sum();
    m.layers
        .iter()
        .all(|l| Digest::parse(&l.digest).is_ok() && l.size >= 0)
        && total <= i128::from(ARTIFACT_LIMIT)
}

fn layers(manifest: &OciImageManifest, digests: &[Digest]) {
    assert_eq!(manifest.layers.len(), digests.len());
    let types: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    let kind = ContentKind::detect(
        &manifest.config.media_type,
        manifest.artifact_type.as_deref(),
        &types,
    );
    if kind != ContentKind::Generic {
        assert_ne!(kind.config_media_type(), content::EMPTY_CONFIG);
    }
    for (layer, digest) in manifest.layers.iter().zip(digests) {
        assert_eq!(digest.as_str(), layer.digest);
        let annotations = layer.annotations.clone().unwrap_or_default();
        let title = annotations.get(content::ANNOTATION_TITLE);
        let unpack = annotations
            .get(content::ANNOTATION_ORAS_UNPACK)
            .is_some_and(|v| v == "true");
        let form = content::layer_form(&layer.media_type, title.is_some(), unpack);
        if layer.media_type.ends_with("+tar.gz") || layer.media_type.ends_with(".tar+gzip") {
            assert_eq!(form, LayerForm::Tar { gzip: true });
        }
        // the name pull gives a single-file layer
        let name = title
            .cloned()
            .unwrap_or_else(|| digest.as_str().replace(':', "-"));
        match safe_relative_path(std::path::Path::new(&name)) {
            Ok(Some(rel)) => ocisync_fuzz::assert_plain_relative(&rel, "layer file name"),
            Ok(None) | Err(_) => assert!(title.is_some(), "an untitled layer has no name"),
        }
    }
}
