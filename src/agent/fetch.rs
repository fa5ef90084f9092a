//! Fetching a file from the controller's artifact server by digest, verified on the way in.

use std::fs::File;
use std::io::{self, Write};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::digest::{CopyError, Digest, Hasher};

use super::disk::WantedFile;
use crate::api::reason::NodeReason;
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
    pub fn reason(&self) -> NodeReason {
        match self {
            FetchError::Unreachable { .. } => NodeReason::FetchFailed,
            FetchError::DigestMismatch { .. } | FetchError::TooLarge { .. } => {
                NodeReason::DigestMismatch
            }
            FetchError::Write { .. } => NodeReason::WriteFailed,
        }
    }
}

/// An HTTP client for the artifact server, with its timeouts. An error (TLS or resolver
/// setup) is the agent's to report at startup: a client without timeouts could hang a
/// pass on a stalled connection forever.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(timeout)
        .user_agent(concat!("ocisync-agent/", env!("CARGO_PKG_VERSION")))
        // the artifact server never redirects: a redirect would send the node elsewhere
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(crate::tls::client_config(Vec::new()))
        .build()
}

/// Chunks of a response body on their way from the network to the blocking writer: two
/// (a chunk is at most hyper's read buffer, some 400 KiB), so a fetch holds little of a
/// file however large it is.
const CHUNKS_IN_FLIGHT: usize = 2;

/// The slowest a fetch may go on average once its response has started, and the time it
/// always has on top: an artifact server trickling bytes holds a pass (and every bundle
/// after it on this node) for at most [`fetch_deadline`], not for size × read timeout.
const MIN_BYTES_PER_SECOND: u64 = 256 * 1024;
const FETCH_GRACE: Duration = Duration::from_secs(30);

/// How long the body of a file of `size` bytes may take to arrive.
pub fn fetch_deadline(size: u64) -> Duration {
    FETCH_GRACE.saturating_add(Duration::from_secs(size / MIN_BYTES_PER_SECOND))
}

/// Streams `file` from `<base>/blobs/sha256/<hex>` into `out` (a new file in a staged
/// revision): the body's chunks go to a blocking thread that hashes and writes them and
/// fsyncs the file (nothing of the file is held but the chunks in flight). A response
/// announcing more bytes than the file has is refused before its body is read; any byte
/// beyond the expected size, a wrong digest, or a body slower than [`fetch_deadline`] is
/// an error.
pub async fn fetch(
    http: &reqwest::Client,
    base: &str,
    file: &WantedFile,
    out: File,
) -> Result<(), FetchError> {
    let url = format!(
        "{base}{}",
        crate::server::blob_url_path(file.digest.as_str())
    );
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
    if response.content_length().is_some_and(|n| n > file.size) {
        return Err(FetchError::TooLarge {
            key: file.key.clone(),
            expected: file.size,
        });
    }
    let (tx, mut rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let limit = file.size;
    let writer = tokio::task::spawn_blocking(move || write_synced(&mut rx, out, limit));
    let mut body = response.bytes_stream();
    let deadline = fetch_deadline(file.size);
    let streamed = tokio::time::timeout(deadline, async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| io::Error::other(one_line(&e)));
            let failed = chunk.is_err();
            // A send fails when the writer stopped early (a write error, too many bytes):
            // its result says why.
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    })
    .await;
    drop(tx);
    let write_err = |source| FetchError::Write {
        path: file.key.clone(),
        source,
    };
    let written = writer
        .await
        .map_err(|e| write_err(io::Error::other(format!("disk task: {e}"))))?;
    if streamed.is_err() {
        let secs = deadline.as_secs();
        return Err(unreachable(format!("the body took longer than {secs}s")));
    }
    let (actual, size) = written.map_err(|e| match e {
        CopyError::Read(e) => unreachable(e.to_string()),
        CopyError::Write(e) => write_err(e),
        CopyError::OverLimit(_) => FetchError::TooLarge {
            key: file.key.clone(),
            expected: file.size,
        },
    })?;
    if actual != file.digest {
        return Err(FetchError::DigestMismatch {
            key: file.key.clone(),
            expected: file.digest.to_string(),
            actual: actual.to_string(),
            size,
        });
    }
    Ok(())
}

/// Hashes and writes the body's chunks into `out` as they come, then fsyncs it (on a
/// blocking thread). A chunk that failed to arrive is a read error; the channel's end is the
/// body's.
fn write_synced(
    chunks: &mut mpsc::Receiver<io::Result<Bytes>>,
    mut out: File,
    limit: u64,
) -> Result<(Digest, u64), CopyError> {
    let mut hasher = Hasher::with_limit(limit);
    while let Some(chunk) = chunks.blocking_recv() {
        let chunk = chunk.map_err(CopyError::Read)?;
        hasher.update(&chunk)?;
        out.write_all(&chunk).map_err(CopyError::Write)?;
    }
    out.sync_all().map_err(CopyError::Write)?;
    Ok(hasher.finish())
}
