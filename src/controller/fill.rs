//! Copying a revision an ArtifactSource status names into this replica's store: from the
//! leader's artifact server by digest, or, when no leader answers, from the source's own
//! registry pinned to the manifest digest in status. Either way each file must hash to the
//! digest and size status lists before the revision is committed: status (written by the
//! leader after it proved and verified the revision) is what a copy is checked against, so
//! nothing is stored that the leader did not accept.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;

use super::context::stored_key;
use super::{source, spec};
use crate::agent::disk::WantedFile;
use crate::agent::fetch;
use crate::api::ArtifactSource;
use crate::api::artifact_source::Artifact;
use crate::digest::Digest;
use crate::errors::one_line;
use crate::metrics::Metrics;
use crate::oci::pull::{self, PullOptions};
use crate::store::{IndexFile, RevisionIndex, Store, check_relative_path, revision_key};

/// What copies revisions in; one per follower term.
pub struct Filler {
    pub client: Client,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    pub leases: Api<Lease>,
    pub lease_name: String,
    pub me: String,
    pub registry_timeout: Duration,
}

/// A revision to copy: the source whose status names it, and the store key.
pub struct Wanted<'a> {
    pub source: &'a ArtifactSource,
    pub artifact: &'a Artifact,
    pub key: Digest,
}

/// The revision a source's status names, if it is one this source's spec would store
/// under that key (a status left from another selection is the leader's to replace).
pub fn wanted(source: &ArtifactSource) -> Option<Wanted<'_>> {
    let artifact = source.status.as_ref()?.artifact.as_ref()?;
    let key = stored_key(artifact)?;
    let digest = Digest::parse(&artifact.digest).ok()?;
    (revision_key(&digest, &source::selection_of(source)) == key).then_some(Wanted {
        source,
        artifact,
        key,
    })
}

/// The files status lists, each path checked as the store checks it.
pub fn files_of(artifact: &Artifact) -> Result<Vec<IndexFile>, String> {
    artifact
        .files
        .iter()
        .map(|f| {
            check_relative_path(&f.path).map_err(|e| e.to_string())?;
            let file = IndexFile {
                path: f.path.clone(),
                digest: Digest::parse(&f.digest).map_err(|e| e.to_string())?,
                size: u64::try_from(f.size).map_err(|_| format!("{}: negative size", f.path))?,
                platform: f.platform.clone(),
            };
            file.staged_path().map_err(|e| e.to_string())?;
            Ok(file)
        })
        .collect()
}

impl Filler {
    /// Copies one revision in: from the leader when the Lease names one that answers, else
    /// from the registry.
    pub async fn fill(&self, w: &Wanted<'_>) -> Result<&'static str, String> {
        let files = files_of(w.artifact)?;
        let peer = super::lease::leader_url(&self.leases, &self.lease_name, &self.me).await;
        if let Some(base) = peer {
            match self
                .copy_from_peer(base.trim_end_matches('/'), w, &files)
                .await
            {
                Ok(()) => return Ok("peer"),
                Err(e) => {
                    self.metrics.store_fill("peer", "failed");
                    tracing::info!(key = %w.key, error = %e, "cannot copy a revision from the leader; trying its registry");
                }
            }
        }
        self.copy_from_registry(w, &files)
            .await
            .map(|()| "registry")
    }

    /// The leader's index of the revision, which must list exactly what status lists: a
    /// status that names another revision's key with a file list of its own choosing
    /// (whoever may write status) cannot plant that list under the key.
    async fn peer_index(
        &self,
        base: &str,
        w: &Wanted<'_>,
        files: &[IndexFile],
    ) -> Result<(), String> {
        let url = format!("{base}{}", crate::server::revision_path(w.key.as_str()));
        let response = self.http.get(&url).send().await.map_err(|e| one_line(&e))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status().as_u16()));
        }
        let body = read_bounded(response, MAX_INDEX_BYTES).await?;
        let index: RevisionIndex = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let same = index.digest.as_str() == w.artifact.digest
            && index.selection == source::selection_of(w.source)
            && sorted(&index.files) == sorted(files);
        if !same {
            return Err("the leader's index of this revision differs from status".into());
        }
        Ok(())
    }

    async fn copy_from_peer(
        &self,
        base: &str,
        w: &Wanted<'_>,
        files: &[IndexFile],
    ) -> Result<(), String> {
        self.peer_index(base, w, files).await?;
        let staging = self.store.staging_dir().map_err(|e| one_line(&e))?;
        for f in files {
            let staged = f.staged_path().map_err(|e| e.to_string())?;
            let out = create_staged(staging.path(), &staged).await?;
            let want = WantedFile {
                key: f.path.clone(),
                digest: f.digest.clone(),
                size: f.size,
            };
            fetch::fetch(&self.http, base, &want, out)
                .await
                .map_err(|e| one_line(&e))?;
        }
        self.commit(w, staging, files.to_vec()).await
    }

    async fn copy_from_registry(&self, w: &Wanted<'_>, files: &[IndexFile]) -> Result<(), String> {
        let valid = spec::validate(&w.source.spec)?;
        let registry = source::registry_with(&self.client, self.registry_timeout, w.source, &valid)
            .await
            .map_err(|p| p.message)?;
        let digest = Digest::parse(&w.artifact.digest).map_err(|e| e.to_string())?;
        let repo = &valid.reference.repository;
        let selection = source::selection_of(w.source);
        let staging = self.store.staging_dir().map_err(|e| one_line(&e))?;
        let options = PullOptions {
            platform: selection.platform.clone(),
            layer_media_type: selection.layer_media_type.clone(),
            limits: limits_for(files),
        };
        let pulled = tokio::time::timeout(valid.timeout.min(self.registry_timeout), async {
            let manifest = registry
                .fetch_manifest(repo, digest.as_str(), Some(&digest))
                .await?;
            pull::pull_manifest_into(&registry, repo, manifest, staging.path(), &options, &|_| {})
                .await
        })
        .await
        .map_err(|_| "the registry took too long".to_string())?
        .map_err(|e| one_line(&e))?;
        let got: Vec<IndexFile> = pulled.files.iter().map(IndexFile::from).collect();
        if sorted(&got) != sorted(files) {
            return Err("the registry's files differ from the ones status lists".into());
        }
        self.commit(w, staging, files.to_vec()).await
    }

    async fn commit(
        &self,
        w: &Wanted<'_>,
        staging: tempfile::TempDir,
        files: Vec<IndexFile>,
    ) -> Result<(), String> {
        let store = self.store.clone();
        let digest = Digest::parse(&w.artifact.digest).map_err(|e| e.to_string())?;
        let selection = source::selection_of(w.source);
        tokio::task::spawn_blocking(move || {
            let r = store.commit_selection(&digest, &selection, staging.path(), &files);
            drop(staging);
            r
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| one_line(&e))?;
        Ok(())
    }
}

/// The most bytes of a revision index fetched from the leader (status file lists stay
/// under 512 KiB).
const MAX_INDEX_BYTES: usize = 2 << 20;

/// What a pull from the registry may take: no more files and bytes than status lists.
fn limits_for(files: &[IndexFile]) -> crate::oci::unpack::Limits {
    let defaults = crate::oci::unpack::Limits::default();
    let bytes: u64 = files.iter().map(|f| f.size).fold(0, u64::saturating_add);
    let entries = (files.len() as u64).saturating_mul(2 * crate::oci::unpack::ENTRY_COST);
    let unpacked = bytes.saturating_add(entries);
    crate::oci::unpack::Limits {
        max_files: files.len().max(1),
        max_unpacked_bytes: unpacked.min(defaults.max_unpacked_bytes),
        max_artifact_bytes: unpacked
            .saturating_mul(2)
            .saturating_add(1 << 20)
            .min(defaults.max_artifact_bytes),
        ..defaults
    }
}

/// (platform, path, digest, size) of each file, sorted, for comparing lists.
fn sorted(files: &[IndexFile]) -> Vec<(Option<&str>, &str, &str, u64)> {
    let mut v: Vec<_> = files
        .iter()
        .map(|f| {
            let platform = f.platform.as_deref();
            (platform, f.path.as_str(), f.digest.as_str(), f.size)
        })
        .collect();
    v.sort_unstable();
    v
}

/// A response body of at most `limit` bytes.
async fn read_bounded(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    use futures_util::StreamExt;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| one_line(&e))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("over {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How long copying a revision of these files may take as a whole.
pub fn deadline(files_bytes: u64) -> Duration {
    fetch::fetch_deadline(files_bytes).saturating_add(Duration::from_secs(60))
}

/// A new file at `rel` under `staging` (its directories made), for a fetch to write.
async fn create_staged(staging: &Path, rel: &str) -> Result<std::fs::File, String> {
    let path = staging.join(rel);
    tokio::task::spawn_blocking(move || {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create_new(&path)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| one_line(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::artifact_source::ArtifactFile;

    fn artifact(path: &str, size: i64) -> Artifact {
        Artifact {
            files: vec![ArtifactFile {
                path: path.into(),
                digest: format!("sha256:{}", "a".repeat(64)),
                size,
                platform: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn status_file_lists_are_checked_as_the_store_checks_paths() {
        assert!(files_of(&artifact("rules/a.yaml", 3)).is_ok());
        for bad in ["../etc/passwd", "/abs", "a/../../b", ""] {
            assert!(files_of(&artifact(bad, 3)).is_err(), "{bad}");
        }
        assert!(files_of(&artifact("a.yaml", -1)).is_err());
    }

    #[test]
    fn a_registry_copy_may_take_no_more_than_status_lists() {
        let files = files_of(&artifact("a.yaml", 1000)).expect("files");
        let l = limits_for(&files);
        assert_eq!(l.max_files, 1);
        assert!(l.max_unpacked_bytes >= 1000 && l.max_unpacked_bytes < 1000 + 3 * 4096);
        assert!(l.max_artifact_bytes < 2 << 20);
        let defaults = crate::oci::unpack::Limits::default();
        let huge = files_of(&artifact("a.yaml", i64::MAX)).expect("files");
        assert_eq!(
            limits_for(&huge).max_unpacked_bytes,
            defaults.max_unpacked_bytes
        );
    }

    #[test]
    fn file_lists_compare_whatever_their_order() {
        let a = files_of(&artifact("a.yaml", 1)).expect("a");
        let mut two = a.clone();
        two.extend(files_of(&artifact("b.yaml", 1)).expect("b"));
        let mut reversed = two.clone();
        reversed.reverse();
        assert_eq!(sorted(&two), sorted(&reversed));
        assert_ne!(sorted(&two), sorted(&a));
    }
}
