//! Pulling an artifact: resolve the selector, fetch and verify the manifest (choosing a
//! platform from an index), then stream each layer through a SHA-256 check into the
//! unpacker. Download, hashing and inflate/write overlap: the async task hashes chunks as
//! they arrive and hands them to a blocking thread that inflates and writes.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use tokio::sync::mpsc;

use super::content::{self, ContentKind, FalcoConfig, LayerForm};
use super::error::{OciError, Result};
use super::platform;
use super::reference::{self, RefSelector, Reference, Repository};
use super::registry::{ManifestHead, RawManifest, Registry};
use super::unpack::{self, Budget, Limits, WrittenFile};
use crate::digest::{Digest, Hasher};

/// What to take from an artifact.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// `os/arch[/variant]` to pick from an image index; default: this machine's.
    pub platform: Option<String>,
    /// Only layers of this media type.
    pub layer_media_type: Option<String>,
    pub limits: Limits,
}

/// The resolved revision: what the selector pointed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The tag or version the selector chose (`latest`, `3.2.0`), or the digest for pins.
    pub label: String,
    pub head: ManifestHead,
}

impl Resolved {
    /// `<tag or version>@<digest>`, the revision string of ArtifactSource status.
    pub fn revision(&self) -> String {
        if self.head.digest == self.label {
            self.head.digest.to_string()
        } else {
            format!("{}@{}", self.label, self.head.digest)
        }
    }
}

/// A pulled, verified, unpacked artifact.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The digest of the image manifest used (after platform selection).
    pub manifest_digest: Digest,
    pub kind: ContentKind,
    pub config: Option<FalcoConfig>,
    pub annotations: BTreeMap<String, String>,
    pub files: Vec<WrittenFile>,
}

impl Pulled {
    pub fn size(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.size))
    }
}

/// A whole-operation deadline for registry work: unlike a read timeout it does not start
/// again with each byte, so a registry that trickles its answers cannot hold a worker.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
}

impl Deadline {
    /// A deadline `limit` from now.
    pub fn after(limit: Duration) -> Self {
        Deadline {
            at: tokio::time::Instant::now() + limit,
            limit,
        }
    }

    /// Runs `operation` until the deadline; past it the operation is dropped and the error
    /// is the transient `RegistryUnavailable` ("timed out").
    pub async fn run<T, E: From<OciError>>(
        &self,
        what: &str,
        operation: impl Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<T, E> {
        match tokio::time::timeout_at(self.at, operation).await {
            Ok(result) => result,
            Err(_) => Err(OciError::RegistryUnavailable(format!(
                "{what}: timed out: the registry did not finish within the deadline of {}s",
                self.limit.as_secs_f64()
            ))
            .into()),
        }
    }
}

/// Resolves a reference: one HEAD for a tag or digest; a tag listing plus one HEAD for a
/// semver range.
pub async fn resolve(registry: &Registry, reference: &Reference) -> Result<Resolved> {
    let (label, by) = choose(registry, reference).await?;
    let head = registry.resolve(&reference.repository, &by).await?;
    check_pin(reference, &head.digest)?;
    Ok(Resolved { label, head })
}

/// A digest pin is a promise: whatever the registry answered, the revision is the pinned
/// digest or the check fails.
pub fn check_pin(reference: &Reference, digest: &Digest) -> Result<()> {
    match &reference.selector {
        RefSelector::Digest(pin) if pin != digest => Err(OciError::DigestMismatch {
            what: format!("pinned {reference}"),
            expected: pin.to_string(),
            actual: digest.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Resolves a reference and fetches its manifest in one GET (no HEAD first), for one-shot
/// pulls; a semver range lists the tags first. The manifest is checked against the
/// reference's digest, or the registry's `Docker-Content-Digest`.
pub async fn resolve_with_manifest(
    registry: &Registry,
    reference: &Reference,
) -> Result<(Resolved, RawManifest)> {
    let (label, by) = choose(registry, reference).await?;
    let pin = match &reference.selector {
        RefSelector::Digest(pin) => Some(pin),
        _ => None,
    };
    let raw = registry
        .fetch_manifest(&reference.repository, &by, pin)
        .await?;
    check_pin(reference, &raw.digest)?;
    let head = ManifestHead {
        digest: raw.digest.clone(),
        media_type: raw.media_type.clone(),
        size: Some(raw.bytes.len() as u64),
    };
    Ok((Resolved { label, head }, raw))
}

/// The label of what the selector chooses and the tag or digest to ask the registry for;
/// only a semver range needs a request (the tag listing).
async fn choose(registry: &Registry, reference: &Reference) -> Result<(String, String)> {
    let repo = &reference.repository;
    match &reference.selector {
        RefSelector::Tag(tag) => Ok((tag.clone(), tag.clone())),
        RefSelector::Digest(digest) => Ok((digest.to_string(), digest.to_string())),
        RefSelector::Semver(range) => {
            let tags = registry.list_tags(repo, 100_000).await?;
            let (tag, version) =
                reference::highest_matching(range, tags.iter().map(String::as_str)).ok_or_else(
                    || OciError::NotFound(format!("no tag of {repo} matches {range}")),
                )?;
            Ok((version.to_string(), tag.to_string()))
        }
    }
}

/// Pulls the manifest `digest` of `repo` into the empty directory `dest`. On error the
/// caller discards `dest`: files may have been written there before a late check failed.
pub async fn pull_into(
    registry: &Registry,
    repo: &Repository,
    digest: &Digest,
    dest: &Path,
    options: &PullOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Pulled> {
    let raw = registry
        .fetch_manifest(repo, digest.as_str(), Some(digest))
        .await?;
    pull_manifest_into(registry, repo, raw, dest, options, progress).await
}

/// Pulls what the fetched manifest (or image index) `raw` names into `dest`, as
/// [`pull_into`].
pub async fn pull_manifest_into(
    registry: &Registry,
    repo: &Repository,
    raw: RawManifest,
    dest: &Path,
    options: &PullOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Pulled> {
    if options.platform.as_deref() == Some(platform::ALL) && is_index(&raw.media_type) {
        return pull_every_platform(registry, repo, raw, dest, options, progress).await;
    }
    let image = image_manifest(registry, repo, raw, options).await?;
    if options.platform.as_deref() == Some(platform::ALL)
        && kind_of(&image.manifest) == ContentKind::FalcoPlugin
    {
        // its files would go to every node, whatever architecture they were built for
        return Err(OciError::UnsupportedMediaType(
            "platform all: this plugin is one image manifest, for no platform in particular; push it as an image index (ocisync push --platform os/arch), or set the platform the source takes".into(),
        ));
    }
    let manifest_digest = image.digest.clone();
    let limit = options.limits.max_artifact_bytes;
    let budget = Budget::new(options.limits);
    let (facts, _, budget) = pull_image(
        registry, repo, image, dest, options, limit, budget, progress,
    )
    .await?;
    Ok(facts.with_files(manifest_digest, budget.files))
}

/// What an image manifest says of its artifact, besides its files.
struct ImageFacts {
    kind: ContentKind,
    config: Option<FalcoConfig>,
    annotations: BTreeMap<String, String>,
}

impl ImageFacts {
    fn with_files(self, manifest_digest: Digest, mut files: Vec<WrittenFile>) -> Pulled {
        files.sort_by(|a, b| (&a.platform, &a.path).cmp(&(&b.platform, &b.path)));
        Pulled {
            manifest_digest,
            kind: self.kind,
            config: self.config,
            annotations: self.annotations,
            files,
        }
    }
}

fn is_index(media_type: &str) -> bool {
    matches!(
        media_type,
        content::INDEX_V1 | content::DOCKER_MANIFEST_LIST_V2
    )
}

/// `platform: all`: each platform of the index into a directory of its own under `dest`
/// (see [`platform::Platform::dir_name`]), its files marked with it; one budget, and at
/// most `max_artifact_bytes` of layers, for them all. The kind, config and annotations are
/// the first platform's (falcoctl writes the same config for each).
async fn pull_every_platform(
    registry: &Registry,
    repo: &Repository,
    raw: RawManifest,
    dest: &Path,
    options: &PullOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Pulled> {
    let index: OciImageIndex = serde_json::from_slice(&raw.bytes)
        .map_err(|e| OciError::InvalidManifest(format!("image index: {e}")))?;
    let mut budget = Budget::new(options.limits);
    let mut left = options.limits.max_artifact_bytes;
    let mut first = None;
    for (platform, digest) in platform::every_platform(&index)? {
        let inner = registry
            .fetch_manifest(repo, digest.as_str(), Some(&digest))
            .await?;
        if is_index(&inner.media_type) {
            return Err(OciError::UnsupportedMediaType("nested image index".into()));
        }
        let image = parse_manifest(inner.digest, &inner.bytes)?;
        let dir = dest.join(platform.dir_name());
        tokio::fs::create_dir(&dir)
            .await
            .map_err(|e| OciError::io(format!("create {}", platform.dir_name()), e))?;
        budget.next_tree();
        let start = budget.files.len();
        let (facts, used, b) =
            pull_image(registry, repo, image, &dir, options, left, budget, progress).await?;
        budget = b;
        left = left.saturating_sub(used);
        for f in &mut budget.files[start..] {
            f.platform = Some(platform.clone());
        }
        match &first {
            None => first = Some((platform, facts)),
            Some((p, f)) if f.kind != facts.kind || f.config != facts.config => {
                return Err(OciError::InvalidManifest(format!(
                    "the image index's platforms {p} and {platform} differ in kind or Falco config: requirements and dependencies would be checked for one of them only"
                )));
            }
            Some(_) => {}
        }
    }
    let (_, facts) =
        first.ok_or_else(|| OciError::NotFound("the image index names no platform".into()))?;
    Ok(facts.with_files(raw.digest, budget.files))
}

/// Pulls the layers of one image manifest into `dest` (at most `limit` bytes of them,
/// as stored), with its config blob where its kind has one; what it is, the bytes its
/// layers take, and the budget after it.
#[allow(clippy::too_many_arguments)]
async fn pull_image(
    registry: &Registry,
    repo: &Repository,
    image: ImageManifest,
    dest: &Path,
    options: &PullOptions,
    limit: u64,
    mut budget: Budget,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(ImageFacts, u64, Budget)> {
    let ImageManifest {
        manifest,
        layer_digests,
        ..
    } = image;
    let layers: Vec<(&OciDescriptor, &Digest)> = manifest
        .layers
        .iter()
        .zip(&layer_digests)
        .filter(|(l, _)| {
            options
                .layer_media_type
                .as_deref()
                .is_none_or(|m| l.media_type == m)
        })
        .collect();
    if layers.is_empty() {
        return Err(OciError::UnsupportedMediaType(
            match &options.layer_media_type {
                Some(m) => format!("no layer of media type {m}"),
                None => "the manifest has no layers".to_string(),
            },
        ));
    }
    let descriptors: Vec<&OciDescriptor> = layers.iter().map(|(l, _)| *l).collect();
    let used = check_total_size(&descriptors, limit)?;
    let kind = kind_of(&manifest);
    let config = falco_config(registry, repo, kind, &manifest).await?;
    for (layer, digest) in layers {
        budget = pull_layer(registry, repo, layer, digest, dest, budget, progress).await?;
    }
    let facts = ImageFacts {
        kind,
        config,
        annotations: manifest.annotations.unwrap_or_default(),
    };
    Ok((facts, used, budget))
}

fn kind_of(manifest: &OciImageManifest) -> ContentKind {
    let layer_types: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    ContentKind::detect(
        &manifest.config.media_type,
        manifest.artifact_type.as_deref(),
        &layer_types,
    )
}

/// The parsed Falco config blob of a Falco artifact that has one.
async fn falco_config(
    registry: &Registry,
    repo: &Repository,
    kind: ContentKind,
    manifest: &OciImageManifest,
) -> Result<Option<FalcoConfig>> {
    match kind {
        ContentKind::FalcoRules | ContentKind::FalcoPlugin | ContentKind::FalcoAsset
            if manifest.config.size > 0 =>
        {
            let config_digest = check_descriptor(&manifest.config)?;
            let raw = registry
                .fetch_small_blob(repo, &config_digest, 1024 * 1024)
                .await?;
            Ok(FalcoConfig::parse(&raw))
        }
        _ => Ok(None),
    }
}

/// Progress of one layer download, for terminals.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// An image manifest, with the digests of its layers parsed (in the order of its layers).
struct ImageManifest {
    digest: Digest,
    manifest: OciImageManifest,
    layer_digests: Vec<Digest>,
}

/// The image manifest `raw` is, or the one its image index has for the wanted platform.
async fn image_manifest(
    registry: &Registry,
    repo: &Repository,
    raw: RawManifest,
    options: &PullOptions,
) -> Result<ImageManifest> {
    match raw.media_type.as_str() {
        content::INDEX_V1 | content::DOCKER_MANIFEST_LIST_V2 => {
            let index: OciImageIndex = serde_json::from_slice(&raw.bytes)
                .map_err(|e| OciError::InvalidManifest(format!("image index: {e}")))?;
            let wanted = options.platform.clone().unwrap_or_else(default_platform);
            let entry = pick_platform(&index, &wanted)?;
            let inner = registry
                .fetch_manifest(repo, entry.as_str(), Some(&entry))
                .await?;
            if matches!(
                inner.media_type.as_str(),
                content::INDEX_V1 | content::DOCKER_MANIFEST_LIST_V2
            ) {
                return Err(OciError::UnsupportedMediaType("nested image index".into()));
            }
            parse_manifest(inner.digest, &inner.bytes)
        }
        content::MANIFEST_V1 | content::DOCKER_MANIFEST_V2 => {
            parse_manifest(raw.digest, &raw.bytes)
        }
        other => Err(OciError::UnsupportedMediaType(format!(
            "manifest media type {other}"
        ))),
    }
}

/// Refuses layers whose sizes add up past `limit` (or past what a u64 holds); their total.
fn check_total_size(layers: &[&OciDescriptor], limit: u64) -> Result<u64> {
    let total = layers
        .iter()
        .try_fold(0u64, |sum, l| sum.checked_add(u64::try_from(l.size).ok()?));
    match total {
        Some(total) if total <= limit => Ok(total),
        Some(total) => Err(OciError::TooLarge(format!(
            "artifact layers total {total} bytes, limit {limit}"
        ))),
        None => Err(OciError::TooLarge(format!(
            "artifact layer sizes add up past any limit (limit {limit})"
        ))),
    }
}

/// The checks an image manifest goes through before any of its layers is fetched (parse,
/// descriptor digests and sizes, the sum of all layer sizes against `limits`), without a
/// registry: for the fuzz targets in `fuzz/`.
#[doc(hidden)]
pub fn checked_manifest(bytes: &[u8], limits: &Limits) -> Result<(OciImageManifest, Vec<Digest>)> {
    let parsed = parse_manifest(Digest::of(bytes), bytes)?;
    let layers: Vec<&OciDescriptor> = parsed.manifest.layers.iter().collect();
    check_total_size(&layers, limits.max_artifact_bytes)?;
    Ok((parsed.manifest, parsed.layer_digests))
}

/// Parses the image manifest `digest`, and the digest of each of its layers.
fn parse_manifest(digest: Digest, bytes: &[u8]) -> Result<ImageManifest> {
    let manifest: OciImageManifest = serde_json::from_slice(bytes)
        .map_err(|e| OciError::InvalidManifest(format!("image manifest: {e}")))?;
    let layer_digests = manifest
        .layers
        .iter()
        .map(check_descriptor)
        .collect::<Result<Vec<Digest>>>()?;
    Ok(ImageManifest {
        digest,
        manifest,
        layer_digests,
    })
}

/// The descriptor's digest, parsed; its size must not be negative.
fn check_descriptor(d: &OciDescriptor) -> Result<Digest> {
    let digest = Digest::parse(&d.digest).map_err(|_| {
        OciError::InvalidManifest(format!("descriptor digest {:?} is not sha256", d.digest))
    })?;
    if d.size < 0 {
        return Err(OciError::InvalidManifest(format!(
            "descriptor {} has a negative size",
            d.digest
        )));
    }
    Ok(digest)
}

/// This machine's platform in Go's naming (`linux/amd64`).
pub fn default_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// The digest of the index entry for `wanted` (`os/arch[/variant]`), checked to be one.
pub fn pick_platform(index: &OciImageIndex, wanted: &str) -> Result<Digest> {
    let mut parts = wanted.split('/');
    let (os, arch, variant) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next(),
    );
    let as_str = |v: serde_json::Result<serde_json::Value>| {
        v.ok().and_then(|v| v.as_str().map(str::to_string))
    };
    index
        .manifests
        .iter()
        .find(|m| {
            m.platform.as_ref().is_some_and(|p| {
                as_str(serde_json::to_value(&p.os)).as_deref() == Some(os)
                    && as_str(serde_json::to_value(&p.architecture)).as_deref() == Some(arch)
                    && variant.is_none_or(|v| p.variant.as_deref() == Some(v))
            })
        })
        .ok_or_else(|| {
            OciError::NotFound(format!(
                "the image index has no manifest for platform {wanted}"
            ))
        })
        .and_then(|m| {
            // the digest goes into a URL: it must be a digest, nothing else
            Digest::parse(&m.digest).map_err(|_| {
                OciError::InvalidManifest(format!(
                    "the image index entry for {wanted} has digest {:?}, not a sha256 digest",
                    m.digest.chars().take(80).collect::<String>()
                ))
            })
        })
}

/// Streams one layer: the async side hashes and counts bytes, the blocking side writes.
///
/// The writer is always awaited before this returns. If this future is dropped instead (a
/// deadline passed), the writer's cancel flag is set and its channel closed: it stops at
/// its next read or create, and since it never creates `dest` itself, it cannot bring back
/// a staging directory the caller has removed.
async fn pull_layer(
    registry: &Registry,
    repo: &Repository,
    layer: &OciDescriptor,
    digest: &Digest,
    dest: &Path,
    budget: Budget,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Budget> {
    let annotations = layer.annotations.clone().unwrap_or_default();
    let title = annotations.get(content::ANNOTATION_TITLE).cloned();
    let oras_unpack = annotations
        .get(content::ANNOTATION_ORAS_UNPACK)
        .is_some_and(|v| v == "true");
    let form = content::layer_form(&layer.media_type, title.is_some(), oras_unpack);
    let expected_size = u64::try_from(layer.size)
        .map_err(|_| OciError::InvalidManifest(format!("layer {digest} has a negative size")))?;
    let name = title.unwrap_or_else(|| digest.as_str().replace(':', "-"));

    let mut stream = registry.blob_stream(repo, digest).await?;
    let (writer, tx) = Writer::start(form, dest, expected_size, name, budget);
    let mut hasher = Hasher::with_limit(expected_size);
    let mut sender = Some(tx);
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        if hasher.update(&chunk).is_err() {
            failure = Some(OciError::DigestMismatch {
                what: format!("layer {digest}"),
                expected: format!("{expected_size} bytes"),
                actual: "more bytes".into(),
            });
            break;
        }
        progress(Progress {
            done: hasher.size(),
            total: expected_size,
        });
        if let Some(tx) = &sender
            && tx.send(chunk).await.is_err()
        {
            // The writer stopped (error or end of archive): keep verifying the bytes.
            sender = None;
        }
    }
    drop(sender);
    let written = writer.finish(failure.is_some()).await;
    if let Some(e) = failure {
        return Err(e);
    }
    let (actual, received) = hasher.finish();
    if received != expected_size || actual != *digest {
        return Err(OciError::DigestMismatch {
            what: format!("layer {digest}"),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    written
}

/// The blocking side of a layer pull: inflates and unpacks what the async side sends.
/// Dropping it without [`Writer::finish`] cancels the unpack.
struct Writer {
    task: Option<tokio::task::JoinHandle<Result<Budget>>>,
    cancelled: Arc<AtomicBool>,
}

impl Writer {
    /// Starts the writer; what is sent on the returned channel is unpacked into `dest`.
    fn start(
        form: LayerForm,
        dest: &Path,
        expected_size: u64,
        name: String,
        budget: Budget,
    ) -> (Self, mpsc::Sender<Bytes>) {
        let dest = dest.to_path_buf();
        let cancelled = budget.cancel_flag();
        // A few chunks in flight keep both sides busy; a bound keeps memory flat whatever the size.
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let mut reader = ChannelReader {
            rx,
            current: Bytes::new(),
            cancelled: cancelled.clone(),
        };
        let task = tokio::task::spawn_blocking(move || {
            let mut budget = budget;
            let result = match form {
                LayerForm::Tar { gzip: true } => {
                    // bufread: inflate straight from the received chunks, no copy in between
                    let gz = flate2::bufread::GzDecoder::new(&mut reader);
                    unpack::unpack_tar(gz, &dest, expected_size, &mut budget)
                }
                LayerForm::Tar { gzip: false } => {
                    unpack::unpack_tar(&mut reader, &dest, expected_size, &mut budget)
                }
                LayerForm::File => unpack::write_single(&mut reader, &dest, &name, &mut budget),
            };
            result.map(|_| budget)
        });
        let writer = Writer {
            task: Some(task),
            cancelled,
        };
        (writer, tx)
    }

    /// Waits for the writer to stop, after cancelling the unpack if `cancel`. The caller
    /// has dropped its sender, so the writer sees the end of the stream.
    async fn finish(mut self, cancel: bool) -> Result<Budget> {
        if cancel {
            self.cancelled.store(true, Ordering::Relaxed);
        }
        let Some(task) = self.task.take() else {
            return Err(OciError::Internal(
                "the unpacking task already finished".into(),
            ));
        };
        task.await
            .map_err(|e| OciError::Internal(format!("the unpacking task failed: {e}")))?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.cancelled.store(true, Ordering::Relaxed);
        }
    }
}

/// A blocking `Read` over chunks sent from the async side.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
    cancelled: Arc<AtomicBool>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = std::io::BufRead::fill_buf(self)?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        std::io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl std::io::BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        unpack::check_cancelled(&self.cancelled).map_err(std::io::Error::other)?;
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.current = next,
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amt: usize) {
        let _ = self.current.split_to(amt.min(self.current.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_unpacking_task_is_an_internal_error_not_unsafe_content() {
        let task = tokio::task::spawn_blocking(|| -> Result<Budget> {
            panic!("a bug in the unpacker");
        });
        let writer = Writer {
            task: Some(task),
            cancelled: Arc::default(),
        };
        let e = writer.finish(false).await.unwrap_err();
        assert_eq!(e.reason(), crate::api::reason::SourceReason::InternalError);
        assert!(e.is_transient(), "{e}");
    }

    #[test]
    fn picks_platforms_from_an_index() {
        let index: OciImageIndex = serde_json::from_str(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
              {{"mediaType":"{m}","digest":"sha256:{a}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{m}","digest":"sha256:{b}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}
            ]}}"#,
            content::INDEX_V1,
            m = content::MANIFEST_V1,
            a = "a".repeat(64),
            b = "b".repeat(64)
        ))
        .unwrap();
        assert_eq!(
            pick_platform(&index, "linux/amd64").unwrap(),
            format!("sha256:{}", "a".repeat(64))
        );
        assert_eq!(
            pick_platform(&index, "linux/arm64/v8").unwrap(),
            format!("sha256:{}", "b".repeat(64))
        );
        assert_eq!(
            pick_platform(&index, "darwin/arm64")
                .unwrap_err()
                .reason()
                .as_str(),
            "NotFound"
        );
    }

    #[test]
    fn an_index_entry_digest_must_be_a_digest_before_it_goes_into_a_url() {
        for bad in [
            "../../../v2/other/manifests/latest",
            "sha256:../x",
            "sha256:ABC",
        ] {
            let index: OciImageIndex = serde_json::from_value(serde_json::json!({
                "schemaVersion": 2,
                "mediaType": content::INDEX_V1,
                "manifests": [{"mediaType": content::MANIFEST_V1, "digest": bad, "size": 1,
                    "platform": {"os": "linux", "architecture": "amd64"}}],
            }))
            .unwrap();
            let e = pick_platform(&index, "linux/amd64").expect_err(bad);
            assert_eq!(e.reason().as_str(), "InvalidManifest", "{bad}: {e}");
        }
    }

    #[test]
    fn revision_strings() {
        let digest = Digest::of(b"x");
        let head = ManifestHead {
            digest: digest.clone(),
            media_type: String::new(),
            size: None,
        };
        let r = Resolved {
            label: "3".into(),
            head: head.clone(),
        };
        assert_eq!(r.revision(), format!("3@{digest}"));
        let r = Resolved {
            label: digest.to_string(),
            head,
        };
        assert_eq!(r.revision(), digest.as_str());
    }

    fn descriptor(size: i64) -> OciDescriptor {
        OciDescriptor {
            media_type: "text/plain".into(),
            digest: format!("sha256:{}", "c".repeat(64)),
            size,
            ..Default::default()
        }
    }

    #[test]
    fn layer_sizes_add_up_without_overflow() {
        let (small, huge) = (descriptor(10), descriptor(i64::MAX));
        assert!(check_total_size(&[&small, &small], 20).is_ok());
        assert!(check_total_size(&[&small, &small], 19).is_err());
        // three i64::MAX layers overflow a u64: refused, not wrapped around under the limit
        let e = check_total_size(&[&huge, &huge, &huge], u64::MAX).expect_err("overflow");
        assert_eq!(e.reason().as_str(), "TooLarge");
        assert!(check_total_size(&[&descriptor(-1)], 100).is_err());
    }

    #[test]
    fn a_pin_is_the_revision_or_the_check_fails() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let pinned = Reference::parse_cli(&format!("h/r@{a}")).expect("reference");
        assert!(check_pin(&pinned, &a).is_ok());
        let e = check_pin(&pinned, &b).expect_err("other digest");
        assert_eq!(e.reason().as_str(), "DigestMismatch");
        let tagged = Reference::parse_cli("h/r:1").expect("reference");
        assert!(check_pin(&tagged, &b).is_ok());
    }

    /// A gzip'd tar of `files` files of 1 MiB of zeros, each in its own directory: a few
    /// hundred kilobytes that take a while to write.
    fn slow_layer(files: usize) -> Vec<u8> {
        use std::io::Write;
        let mut b = tar::Builder::new(Vec::new());
        let data = vec![0u8; 1024 * 1024];
        for i in 0..files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("d{i}/f"), &data[..]).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    /// Waits (up to 30 s) until `done` holds.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_dropped_pull_stops_its_writer_and_recreates_nothing() {
        let parent = tempfile::tempdir().unwrap();
        let staging = parent.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let budget = Budget::new(Limits::default());
        let flag = budget.cancel_flag();
        let layer = slow_layer(256);
        let (writer, tx) = Writer::start(
            LayerForm::Tar { gzip: true },
            &staging,
            1 << 30, // no ratio cap
            "layer".into(),
            budget,
        );
        tx.send(Bytes::from(layer)).await.unwrap();
        eventually("the writer started", || {
            std::fs::read_dir(&staging).is_ok_and(|mut d| d.next().is_some())
        })
        .await;
        // what a deadline does: the pull future (with its writer and sender) is dropped,
        // then the caller removes the staging directory
        drop(tx);
        drop(writer);
        let _ = std::fs::remove_dir_all(&staging);
        // the writer thread holds two references to the flag until it ends
        eventually("the writer stopped", || Arc::strong_count(&flag) == 1).await;
        assert!(!staging.exists(), "the staging directory was re-created");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_writer_stops_before_the_end_of_its_layer() {
        let staging = tempfile::tempdir().unwrap();
        let budget = Budget::new(Limits::default());
        let flag = budget.cancel_flag();
        let (writer, tx) = Writer::start(
            LayerForm::Tar { gzip: true },
            staging.path(),
            1 << 30,
            "layer".into(),
            budget,
        );
        tx.send(Bytes::from(slow_layer(256))).await.unwrap();
        eventually("the writer started", || {
            std::fs::read_dir(staging.path()).is_ok_and(|mut d| d.next().is_some())
        })
        .await;
        drop(tx);
        let Err(e) = writer.finish(true).await else {
            panic!("the writer was not cancelled");
        };
        assert!(e.to_string().contains("cancelled"), "{e}");
        assert_eq!(Arc::strong_count(&flag), 1, "the writer has ended");
        let written = std::fs::read_dir(staging.path()).unwrap().count();
        assert!(written < 256, "{written} of 256 files written");
    }

    #[tokio::test]
    async fn a_deadline_bounds_the_whole_operation() {
        use std::time::Duration;
        let deadline = Deadline::after(Duration::from_millis(500));
        // an operation that makes progress forever (a trickle) still ends at the deadline
        let trickle = async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), OciError>(())
        };
        let e = deadline.run("pull", trickle).await.expect_err("deadline");
        assert_eq!(e.reason().as_str(), "RegistryUnavailable");
        assert!(e.is_transient());
        assert!(e.to_string().contains("timed out"), "{e}");
        // one deadline for several steps: the time the first took is gone for the next
        let deadline = Deadline::after(Duration::from_secs(2));
        let step = || async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok::<(), OciError>(())
        };
        assert!(deadline.run("resolve", step()).await.is_ok());
        assert!(deadline.run("pull", step()).await.is_err());
    }
}
