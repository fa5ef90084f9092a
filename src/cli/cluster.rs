//! Connecting to the Kubernetes API, with one clear line when that fails.

use std::time::Duration;

use anyhow::{Context, anyhow};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::ClusterArgs;

/// Builds a client from `--kubeconfig` (or the usual inference) and checks that the API
/// server answers.
pub async fn connect(args: &ClusterArgs) -> anyhow::Result<kube::Client> {
    crate::tls::install_crypto_provider();
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                anyhow!("cannot read kubeconfig {}: {}", path.display(), flatten(&e))
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow!("invalid kubeconfig {}: {}", path.display(), flatten(&e)))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| anyhow!("no usable Kubernetes configuration: {}", flatten(&e)))?,
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("cannot build a Kubernetes client")?;
    match tokio::time::timeout(Duration::from_secs(15), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(anyhow!(
            "cannot reach the Kubernetes API server at {server}: {}",
            flatten(&e)
        )),
        Err(_) => Err(anyhow!(
            "cannot reach the Kubernetes API server at {server}: timed out after 15s"
        )),
    }
}

/// The innermost cause of an error, on one line.
fn flatten(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !last.contains(&text) {
            last = format!("{last}: {text}");
        }
        source = s.source();
    }
    last.replace('\n', " ")
}
