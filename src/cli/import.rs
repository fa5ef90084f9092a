//! `ocisync import falcoctl`: prints the objects that replace a falcoctl setup.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::import::falcoctl;

/// Largest configuration or index file read (falcosecurity's index is about 30 KiB).
const MAX_FILE_BYTES: u64 = 4 << 20;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub from: ImportFrom,
}

#[derive(Subcommand, Debug)]
pub enum ImportFrom {
    /// Print ArtifactSources and RuleBundles that do what a falcoctl configuration does
    /// (falcoctl.yaml, or a Falco chart values file), with a comment for each setting that
    /// does not map.
    Falcoctl(FalcoctlArgs),
}

#[derive(clap::Args, Debug)]
pub struct FalcoctlArgs {
    /// The falcoctl configuration (falcoctl.yaml) or a Falco chart values file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// A falcoctl index file that index names (`falco-rules:5`) resolve through; repeatable,
    /// a later file's entry wins.
    #[arg(long, value_name = "FILE")]
    pub index: Vec<PathBuf>,
    /// Namespace of the printed objects (default: none, kubectl's current namespace).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Node directory the rules files are written into.
    #[arg(long, value_name = "DIR", default_value = "/etc/falco/rules.d")]
    pub rules_dir: String,
    /// Node directory the plugins are written into.
    #[arg(long, value_name = "DIR", default_value = "/etc/falco/plugins")]
    pub plugins_dir: String,
    /// Node directory the assets are written into.
    #[arg(long, value_name = "DIR", default_value = "/etc/falco/assets")]
    pub assets_dir: String,
    /// Talk plain HTTP to the registries (falcoctl's --plain-http).
    #[arg(long)]
    pub plain_http: bool,
    /// A Secret whose `ca.crt` every source trusts for its registry (falcoctl has no TLS
    /// settings).
    #[arg(long, value_name = "NAME")]
    pub cert_secret: Option<String>,
}

pub async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    match args.from {
        ImportFrom::Falcoctl(args) => from_falcoctl(args).await,
    }
}

async fn from_falcoctl(args: FalcoctlArgs) -> anyhow::Result<ExitCode> {
    let config = read(&args.file).await?;
    let mut indexes = Vec::new();
    for path in &args.index {
        indexes.push((path.display().to_string(), read(path).await?));
    }
    let options = falcoctl::Options {
        namespace: args.namespace,
        rules_dir: args.rules_dir,
        plugins_dir: args.plugins_dir,
        assets_dir: args.assets_dir,
        plain_http: args.plain_http,
        cert_secret: args.cert_secret,
    };
    let import = falcoctl::import(&config, &indexes, &options)?;
    let command = format!("ocisync import falcoctl {}", args.file.display());
    print!("{}", falcoctl::render(&import, &command));
    Ok(ExitCode::SUCCESS)
}

async fn read(path: &std::path::Path) -> anyhow::Result<String> {
    let meta = tokio::fs::metadata(path)
        .await
        .with_context(|| format!("{}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        anyhow::bail!("{}: larger than {} bytes", path.display(), MAX_FILE_BYTES);
    }
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("{}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", path.display()))
}
