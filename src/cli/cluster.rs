//! Connecting to the Kubernetes API, with one clear line when that fails.

use std::time::Duration;

use anyhow::{Context, anyhow};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::ClusterArgs;
use crate::errors::one_line;

/// Builds a client from `--kubeconfig` (or the usual inference) and checks that the API
/// server answers.
pub async fn connect(args: &ClusterArgs) -> anyhow::Result<kube::Client> {
    crate::tls::install_crypto_provider();
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                anyhow!(
                    "cannot read kubeconfig {}: {}",
                    path.display(),
                    one_line(&e)
                )
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow!("invalid kubeconfig {}: {}", path.display(), one_line(&e)))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| anyhow!("no usable Kubernetes configuration: {}", one_line(&e)))?,
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("cannot build a Kubernetes client")?;
    match tokio::time::timeout(Duration::from_secs(15), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(anyhow!(
            "cannot reach the Kubernetes API server at {server}: {}",
            one_line(&e)
        )),
        Err(_) => Err(anyhow!(
            "cannot reach the Kubernetes API server at {server}: timed out after 15s"
        )),
    }
}
