//! Fetching a file from the controller's artifact server by digest, verified on the way in.

use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::desired::reason;
use super::disk::WantedFile;
use crate::errors::one_line;

/// A failed fetch, with the reason the node report carries.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{key}: the artifact server sent {actual} ({size} bytes), expected {expected}")]
    DigestMismatch {
        key: String,
        expected: String,
        actual: String,
        size: u64,
    },
    #[error("{key}: the artifact server sent more than the expected {expected} bytes")]
    TooLarge { key: String, expected: u64 },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Unreachable { .. } => reason::FETCH_FAILED,
            FetchError::DigestMismatch { .. } | FetchError::TooLarge { .. } => {
                reason::DIGEST_MISMATCH
            }
            FetchError::Write { .. } => reason::WRITE_FAILED,
        }
    }
}

/// An HTTP client for the artifact server.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(timeout)
        .user_agent(concat!("ocisync-agent/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(crate::tls::client_config(Vec::new()))
        .build()
        .unwrap_or_default()
}

/// Streams `file` from `<base>/blobs/sha256/<hex>` into `out` (a new file in a staged
/// revision), hashing as it goes; the file is fsynced, and any byte beyond the expected size
/// or a wrong digest is an error.
pub async fn fetch(
    http: &reqwest::Client,
    base: &str,
    file: &WantedFile,
    mut out: tokio::fs::File,
) -> Result<(), FetchError> {
    use tokio::io::AsyncWriteExt as _;
    let hex = file.digest.strip_prefix("sha256:").unwrap_or(&file.digest);
    let url = format!("{base}{}", crate::server::blob_url_path(hex));
    let unreachable = |message: String| FetchError::Unreachable {
        url: url.clone(),
        message,
    };
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| unreachable(one_line(&e)))?;
    if !response.status().is_success() {
        return Err(unreachable(format!("HTTP {}", response.status().as_u16())));
    }
    let write_err = |source| FetchError::Write {
        path: file.key.clone(),
        source,
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| unreachable(one_line(&e)))?;
        size = size.saturating_add(chunk.len() as u64);
        if size > file.size {
            return Err(FetchError::TooLarge {
                key: file.key.clone(),
                expected: file.size,
            });
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(write_err)?;
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != file.digest {
        return Err(FetchError::DigestMismatch {
            key: file.key.clone(),
            expected: file.digest.clone(),
            actual,
            size,
        });
    }
    out.flush().await.map_err(write_err)?;
    out.sync_all().await.map_err(write_err)
}
