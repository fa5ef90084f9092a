//! The `ocisync` command line: one binary, one subcommand per job.

mod artifact;
mod cluster;
mod import;
mod verify;

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
    Controller(Box<ControllerArgs>),
    /// Run the node agent: write RuleBundles' files on this node.
    Agent(AgentArgs),
    /// Print the CustomResourceDefinitions generated from the API types.
    Crd(CrdArgs),
    /// Package files as an OCI artifact and push it.
    Push(artifact::PushArgs),
    /// Pull an OCI artifact, verify it and unpack it into a directory.
    Pull(artifact::PullArgs),
    /// Verify an artifact's cosign signature (a trusted key, or a keyless identity).
    Verify(verify::VerifyArgs),
    /// Print ocisync objects that replace another tool's configuration (falcoctl).
    Import(import::ImportArgs),
}

/// Flags every in-cluster subcommand shares.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Path of a kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or in-cluster config.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Directory of the content store (an emptyDir in the chart).
    #[arg(
        long,
        value_name = "DIR",
        env = "OCISYNC_STORE_DIR",
        default_value = "/var/lib/ocisync/store"
    )]
    pub store_dir: PathBuf,
    /// Address of the artifact server, which also serves /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9090")]
    pub listen: std::net::SocketAddr,
    /// URL agents reach the artifact server at; default:
    /// http://ocisync-controller.<POD_NAMESPACE>.svc:<listen port>.
    #[arg(long, value_name = "URL", env = "OCISYNC_ARTIFACT_BASE_URL")]
    pub artifact_base_url: Option<String>,
    /// Watch ArtifactSources in this namespace only (default: every namespace).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// How many sources are reconciled at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Watch Secrets so a changed pull secret or CA re-checks its sources at once; needs
    /// list and watch on Secrets. Without it, Secrets are read (get) at each check.
    #[arg(long)]
    pub watch_secrets: bool,
    /// The longest a check's registry work (resolve, manifest, pull) may take as a whole,
    /// as a Go duration; caps every source's spec.timeout, so a registry that trickles its
    /// answers cannot hold a worker.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub registry_operation_timeout: std::time::Duration,
    /// Most bytes the content store holds, as a quantity (900Mi, 2Gi); a pull that would
    /// go over fails with QuotaExceeded. Default: 90% of the store's volume.
    #[arg(long, value_name = "QUANTITY", value_parser = parse_bytes)]
    pub store_max_bytes: Option<u64>,
    /// Size of the store's volume when its filesystem is larger (the chart passes the
    /// emptyDir's sizeLimit); default: the filesystem's size.
    #[arg(long, value_name = "QUANTITY", value_parser = parse_bytes)]
    pub store_volume_size: Option<u64>,
    /// Most bytes the revisions one namespace's sources keep stored may cost (each
    /// source keeps its current and previous revision; every file and directory counts
    /// at least 4 KiB). Default: no quota.
    #[arg(long, value_name = "QUANTITY", value_parser = parse_bytes)]
    pub namespace_quota: Option<u64>,
    /// Connections the artifact server serves at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,
    /// How long the artifact server waits on a client that stopped reading, as a Go
    /// duration.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: std::time::Duration,
    /// How long a client may take to send a request's headers, and how long a keep-alive
    /// connection may stay idle, as a Go duration.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: std::time::Duration,
    /// Run several replicas: only the holder of a coordination.k8s.io Lease checks
    /// registries and writes status, ConfigMaps and Events; the others fill their stores
    /// from the revisions in status and serve them.
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, value_name = "NAME", default_value = "ocisync-controller")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: POD_NAMESPACE, else ocisync-system).
    #[arg(long, value_name = "NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a Lease not renewed stays held, as a Go duration.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: std::time::Duration,
    /// How long the leader keeps leading without a renewal before it stops writing, as a
    /// Go duration (shorter than --lease-duration).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: std::time::Duration,
    /// How often the Lease is renewed or tried, as a Go duration.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub lease_retry_period: std::time::Duration,
    /// URL of this replica's own artifact server, which the other replicas fill their
    /// stores from (the chart passes http://$(POD_IP):<port>).
    #[arg(long, value_name = "URL", env = "OCISYNC_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Address of the push webhook receiver (off when not given).
    #[arg(long, value_name = "ADDR")]
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token webhook senders must present (a mounted Secret key).
    #[arg(long, value_name = "PATH")]
    pub webhook_token_file: Option<PathBuf>,
    /// File holding the key of webhook HMAC-SHA256 signatures (a mounted Secret key).
    #[arg(long, value_name = "PATH")]
    pub webhook_hmac_key_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// This node's name (the chart sets NODE_NAME from the downward API).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: String,
    /// Where the node's directories are mounted in the agent's container.
    #[arg(long, value_name = "DIR", default_value = "/host")]
    pub host_root: PathBuf,
    /// A node directory bundles may write into (repeatable); nothing outside is written.
    /// `DIR=NS1,NS2` grants it to bundles of those namespaces only; a plain `DIR` grants it
    /// to every namespace (single-tenant clusters). The deepest granted directory decides.
    #[arg(long = "allowed-dir", value_name = "DIR[=NS,...]")]
    pub allowed_dirs: Vec<String>,
    /// The most one bundle may write on this node (bytes, or with Ki/Mi/Gi).
    #[arg(long, value_name = "BYTES", default_value = "64Mi", value_parser = parse_bytes)]
    pub max_bundle_bytes: u64,
    /// The most all bundles together may write into one directory.
    #[arg(long, value_name = "BYTES", default_value = "256Mi", value_parser = parse_bytes)]
    pub max_directory_bytes: u64,
    /// Free space a directory's filesystem keeps after a revision is staged.
    #[arg(long, value_name = "BYTES", default_value = "16Mi", value_parser = parse_quantity)]
    pub min_free_bytes: u64,
    /// The controller's artifact server; default:
    /// http://ocisync-controller.<POD_NAMESPACE>.svc:9090.
    #[arg(long, value_name = "URL", env = "OCISYNC_CONTROLLER_URL")]
    pub controller_url: Option<String>,
    /// Where the agent remembers what it wrote; default: <host-root>/var/lib/ocisync/agent.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9091")]
    pub listen: std::net::SocketAddr,
    /// How often every applied bundle is re-checked on disk, as a Go duration.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub resync: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match crate::api::duration::parse(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0s".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A byte count as a Kubernetes quantity: a decimal number with an optional suffix,
/// binary (Ki, Mi, Gi, Ti) or decimal (k, M, G, T); fractions of a byte are dropped.
fn parse_quantity(s: &str) -> Result<u64, String> {
    let invalid = || format!("{s:?} is not a quantity such as 512Mi or 1.5Gi");
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let unit: u128 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000_u128.pow(2),
        "G" => 1000_u128.pow(3),
        "T" => 1000_u128.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit {suffix:?} in {s:?}: use Ki, Mi, Gi, Ti, k, M, G or T"
            ));
        }
    };
    let whole: u128 = whole.parse().map_err(|_| invalid())?;
    let scale = 10_u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| invalid())?
    };
    let bytes = whole
        .checked_mul(unit)
        .and_then(|b| b.checked_add(fraction * unit / scale))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is too large"))?;
    Ok(bytes)
}

/// A byte count as a Kubernetes quantity, more than 0.
fn parse_bytes(s: &str) -> Result<u64, String> {
    match parse_quantity(s)? {
        0 => Err("must be more than 0".into()),
        bytes => Ok(bytes),
    }
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
        Command::Controller(args) => controller(*args).await,
        Command::Agent(args) => agent(args).await,
        Command::Push(args) => artifact::push(args).await,
        Command::Pull(args) => artifact::pull(args).await,
        Command::Verify(args) => verify::verify(args).await,
        Command::Import(args) => import::import(args).await,
    }
}

async fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let client = cluster::connect(&args.cluster).await?;
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "ocisync-system".into());
    let election = election(&args, &namespace)?;
    let webhook = webhook(&args)?;
    let base_url = args.artifact_base_url.clone().unwrap_or_else(|| {
        format!(
            "http://ocisync-controller.{namespace}.svc:{}",
            args.listen.port()
        )
    });
    crate::controller::run(
        client,
        crate::controller::Options {
            store_dir: args.store_dir,
            listen: args.listen,
            base_url,
            namespace: args.namespace,
            concurrency: args.concurrency,
            watch_secrets: args.watch_secrets,
            registry_timeout: args.registry_operation_timeout,
            server: crate::server::ServerLimits {
                max_connections: args.max_connections as usize,
                write_timeout: args.write_timeout,
                header_read_timeout: args.header_read_timeout,
            },
            store_limits: crate::controller::StoreSizing {
                max_bytes: args.store_max_bytes,
                volume_bytes: args.store_volume_size,
                namespace_max_bytes: args.namespace_quota,
            },
            election,
            advertise_url: args.advertise_url,
            webhook,
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The leader election `args` ask for, if any.
fn election(
    args: &ControllerArgs,
    namespace: &str,
) -> anyhow::Result<Option<crate::controller::lease::Election>> {
    if !args.leader_elect {
        return Ok(None);
    }
    if args.lease_duration < std::time::Duration::from_secs(1) {
        anyhow::bail!("--lease-duration must be at least 1s (a Lease holds whole seconds)");
    }
    if args.renew_deadline >= args.lease_duration {
        anyhow::bail!("--renew-deadline must be shorter than --lease-duration");
    }
    let pod = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--leader-elect needs POD_NAME (the chart sets it)"))?;
    // one identity per process, as controller-runtime does (`<pod>_<unique>`): a container
    // restarted in the same pod is a new candidate, not the holder taking its Lease back
    // before the other replica, which watched the old one stop renewing, could
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let identity = format!("{pod}_{:x}", nanos ^ u128::from(std::process::id()));
    Ok(Some(crate::controller::lease::Election {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| namespace.to_string()),
        identity,
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.lease_retry_period,
    }))
}

/// The webhook receiver `args` ask for, if any: it needs a token or an HMAC key.
fn webhook(args: &ControllerArgs) -> anyhow::Result<Option<crate::webhook::Options>> {
    let Some(listen) = args.webhook_listen else {
        return Ok(None);
    };
    if args.webhook_token_file.is_none() && args.webhook_hmac_key_file.is_none() {
        anyhow::bail!(
            "--webhook-listen needs --webhook-token-file or --webhook-hmac-key-file: the receiver never runs unauthenticated"
        );
    }
    Ok(Some(crate::webhook::Options {
        listen,
        token_file: args.webhook_token_file.clone(),
        hmac_key_file: args.webhook_hmac_key_file.clone(),
    }))
}

async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let allow =
        crate::agent::desired::AllowList::new(&args.allowed_dirs).map_err(anyhow::Error::msg)?;
    if args.node_name.trim().is_empty() {
        anyhow::bail!("--node-name (or NODE_NAME) must not be empty");
    }
    let client = cluster::connect(&args.cluster).await?;
    let controller_url = args.controller_url.clone().unwrap_or_else(|| {
        let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "ocisync-system".into());
        format!("http://ocisync-controller.{namespace}.svc:9090")
    });
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| args.host_root.join("var/lib/ocisync/agent"));
    crate::agent::run(
        client,
        crate::agent::Options {
            node_name: args.node_name,
            host_root: args.host_root,
            allow,
            budget: crate::agent::budget::Budget {
                bundle_bytes: args.max_bundle_bytes,
                directory_bytes: args.max_directory_bytes,
                min_free_bytes: args.min_free_bytes,
            },
            controller_url,
            state_dir,
            resync: args.resync,
            timeout: std::time::Duration::from_secs(60),
            listen: args.listen,
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_bytes() {
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("900Mi"), Ok(900 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("0.5k"), Ok(500));
        for bad in [
            "",
            "Gi",
            ".5Gi",
            "1.2.3Gi",
            "1gi",
            "-1",
            "0",
            "0.1",
            "1Pi",
            "99999999999Ti",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
