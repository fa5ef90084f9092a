//! The `ocisync` command line: one binary, one subcommand per job.

mod artifact;
mod cluster;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Ship configuration from OCI registries into Kubernetes clusters and onto nodes.
#[derive(Parser, Debug)]
#[command(name = "ocisync", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller: reconcile ArtifactSources and RuleBundles.
    Controller(ClusterArgs),
    /// Run the node agent: write RuleBundles' files on this node.
    Agent(ClusterArgs),
    /// Print the CustomResourceDefinitions generated from the API types.
    Crd(CrdArgs),
    /// Package files as an OCI artifact and push it.
    Push(artifact::PushArgs),
    /// Pull an OCI artifact, verify it and unpack it into a directory.
    Pull(artifact::PullArgs),
}

/// Flags every in-cluster subcommand shares.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Path of a kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or in-cluster config.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Runs the parsed command. Errors come back as one-line messages for `main` to print.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd(args) => crd(args),
        Command::Controller(args) => cluster::not_yet("controller", &args).await,
        Command::Agent(args) => cluster::not_yet("agent", &args).await,
        Command::Push(args) => artifact::push(args).await,
        Command::Pull(args) => artifact::pull(args).await,
    }
}

fn crd(args: CrdArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let crds = crate::api::crds();
    match args.output_dir {
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for crd in &crds {
                match out.write_all(crate::api::crd_yaml(crd)?.as_bytes()) {
                    Ok(()) => {}
                    // `ocisync crd | head` is fine: the reader has what it wanted.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) => return Err(e).context("cannot write to stdout"),
                }
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for crd in &crds {
                let path = dir.join(crate::api::crd_file_name(crd));
                std::fs::write(&path, crate::api::crd_yaml(crd)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
