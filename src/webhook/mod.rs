//! The push webhook receiver: registries (CNCF Distribution notifications, Harbor, or a
//! generic `{"repository": ..., "tag": ...}`) tell the controller a tag moved, and the
//! ArtifactSources tracking that repository are asked to check at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::controller::view::SourcesView;
use crate::metrics::Metrics;

/// How the receiver runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    /// File holding the bearer token (read at each request, so a rotated Secret applies).
    pub token_file: Option<PathBuf>,
    /// File holding the HMAC-SHA256 key.
    pub hmac_key_file: Option<PathBuf>,
}

/// Serves the receiver until `shutdown`.
pub async fn serve(
    _options: Options,
    _client: Client,
    _sources: SourcesView,
    _metrics: Arc<Metrics>,
    _shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("the webhook receiver is not written yet")
}
