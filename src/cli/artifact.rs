//! `ocisync push` and `ocisync pull`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::ValueEnum;

use super::OutputFormat;
use crate::oci::auth::DockerAuths;
use crate::oci::content::ContentKind;
use crate::oci::pull::{self, Progress, PullOptions};
use crate::oci::push::{self, PackageRequest};
use crate::oci::reference::{self, RefSelector, Reference};
use crate::oci::registry::{Registry, RegistryOptions};
use crate::oci::unpack::Limits;
use crate::verify::keys::SigningKey;

/// Flags for reaching a registry.
#[derive(clap::Args, Debug)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry.
    #[arg(long)]
    insecure: bool,
    /// PEM file of CA certificates to trust for the registry.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Docker config file with credentials; default: $DOCKER_CONFIG/config.json or ~/.docker/config.json.
    #[arg(long, value_name = "PATH")]
    docker_config: Option<PathBuf>,
    /// Deadline of a pull or verify as a whole (resolve, manifest, layers or signatures),
    /// and of each request of a push (Go duration).
    #[arg(long, default_value = "60s")]
    pub(super) timeout: String,
    /// Output format.
    #[arg(long, short = 'O', value_enum, default_value_t)]
    pub(super) output: OutputFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ArtifactType {
    FalcoRules,
    FalcoPlugin,
    FalcoAsset,
    Seccomp,
    Apparmor,
    Kyverno,
    Flux,
    Generic,
}

impl From<ArtifactType> for ContentKind {
    fn from(t: ArtifactType) -> Self {
        match t {
            ArtifactType::FalcoRules => ContentKind::FalcoRules,
            ArtifactType::FalcoPlugin => ContentKind::FalcoPlugin,
            ArtifactType::FalcoAsset => ContentKind::FalcoAsset,
            ArtifactType::Seccomp => ContentKind::Seccomp,
            ArtifactType::Apparmor => ContentKind::AppArmor,
            ArtifactType::Kyverno => ContentKind::Kyverno,
            ArtifactType::Flux => ContentKind::Flux,
            ArtifactType::Generic => ContentKind::Generic,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Files or directories to push, then the reference (`oci://host/repo:tag`).
    #[arg(required = true, num_args = 2.., value_name = "PATH... REF")]
    args: Vec<String>,
    /// What the files are; decides the media types.
    #[arg(long = "type", value_enum)]
    artifact_type: ArtifactType,
    /// Version of the artifact (also pushed as a tag).
    #[arg(long)]
    version: Option<String>,
    /// With a semver --version 1.2.3, also tag 1.2 and 1.
    #[arg(long)]
    floating_tags: bool,
    /// Manifest annotation `key=value` (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// Push as the entry for this platform (`os/arch`) of an image index.
    #[arg(long)]
    platform: Option<String>,
    /// Also sign the pushed digest with this key (unencrypted PKCS#8 PEM, ECDSA P-256 or
    /// Ed25519), as cosign's classic signature at tag `sha256-<hex>.sig`.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// The reference: `oci://host/repo:tag`, `host/repo:tag` or `host/repo@sha256:...`.
    reference: String,
    /// Directory to unpack into (created if missing).
    #[arg(short = 'o', long = "output-dir", value_name = "DIR")]
    output_dir: PathBuf,
    /// Pick the highest tag matching this semver range instead of the reference's tag.
    #[arg(long, value_name = "RANGE")]
    semver: Option<String>,
    /// Platform to pick from an image index (`os/arch[/variant]`); default: this machine's.
    /// `all`: every platform, each into a directory `os-arch[-variant]`.
    #[arg(long)]
    platform: Option<String>,
    /// Only layers of this media type.
    #[arg(long, value_name = "MEDIA_TYPE")]
    layer_media_type: Option<String>,
    /// Largest total artifact size in bytes.
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub(super) fn registry_for(reference: &Reference, args: &RegistryArgs) -> anyhow::Result<Registry> {
    let timeout = crate::api::duration::parse(&args.timeout)?;
    let ca_pem = match &args.ca_file {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("cannot read CA file {}", p.display()))?)
        }
        None => None,
    };
    let credentials = load_docker_config(args.docker_config.as_deref())?
        .and_then(|auths| auths.for_registry(&reference.repository.registry).cloned());
    let options = RegistryOptions {
        insecure: args.insecure,
        ca_pem,
        timeout,
        credentials,
        ..RegistryOptions::default()
    };
    Ok(Registry::new(&reference.repository.registry, options)?)
}

fn load_docker_config(explicit: Option<&Path>) -> anyhow::Result<Option<DockerAuths>> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
            match dir.map(|d| d.join("config.json")) {
                Some(p) if p.exists() => p,
                _ => return Ok(None),
            }
        }
    };
    let raw = std::fs::read(&path)
        .with_context(|| format!("cannot read docker config {}", path.display()))?;
    let auths =
        DockerAuths::parse(&raw).with_context(|| format!("docker config {}", path.display()))?;
    Ok(Some(auths))
}

pub async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let (paths, reference) = match args.args.split_last() {
        Some((r, p)) if !p.is_empty() => (p.iter().map(PathBuf::from).collect::<Vec<_>>(), r),
        _ => bail!("push needs at least one path and a reference"),
    };
    let reference = Reference::parse_cli(reference)?;
    let tag = match &reference.selector {
        RefSelector::Tag(t)
            if args.version.is_some() && t == "latest" && !reference_names_tag(&args.args) =>
        {
            None
        }
        RefSelector::Tag(t) => Some(t.clone()),
        _ => bail!("push needs a tag, not a digest"),
    };
    let tags = push::tags_for(tag.as_deref(), args.version.as_deref(), args.floating_tags)?;
    let mut annotations = BTreeMap::new();
    for a in &args.annotations {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("annotation {a:?} must be key=value"))?;
        annotations.insert(k.to_string(), v.to_string());
    }
    let name = reference
        .repository
        .name
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .to_string();
    let package = push::package(&PackageRequest {
        paths,
        kind: args.artifact_type.into(),
        name,
        version: args.version.clone(),
        annotations,
        created: None,
    })?;
    let sign_key = match &args.sign_key {
        Some(path) => Some(read_signing_key(path)?),
        None => None,
    };
    let registry = registry_for(&reference, &args.registry)?;
    let digest = push::push(
        &registry,
        &reference.repository,
        &package,
        &tags,
        args.platform.as_deref(),
    )
    .await?;
    let signed = match &sign_key {
        Some(key) => Some(push::sign(&registry, &reference.repository, &digest, key).await?),
        None => None,
    };
    match args.registry.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "repository": reference.repository.to_string(),
                "digest": digest,
                "manifestDigest": package.manifest_digest,
                "tags": tags,
                "layers": package.layers.iter().map(|(d, _)| serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size})).collect::<Vec<_>>(),
                "signature": signed.as_ref().zip(sign_key.as_ref()).map(|(s, k)| signed_json(s, k)),
            })
        ),
        OutputFormat::Text => {
            println!("pushed {}@{digest}", reference.repository);
            println!("tags: {}", tags.join(", "));
            if let (Some(s), Some(k)) = (&signed, &sign_key) {
                let what = if s.written {
                    "signed"
                } else {
                    "already signed"
                };
                println!(
                    "{what}: {}:{} by key {} ({} signature(s))",
                    reference.repository,
                    s.tag,
                    k.public().fingerprint(),
                    s.signatures
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a private key for `--sign-key`; errors name the file, never its content.
fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read signing key {}", path.display()))?;
    SigningKey::from_pem(&pem).map_err(|e| anyhow!("signing key {}: {e}", path.display()))
}

fn signed_json(s: &push::Signed, key: &SigningKey) -> serde_json::Value {
    serde_json::json!({
        "tag": s.tag,
        "manifestDigest": s.manifest_digest,
        "keyFingerprint": key.public().fingerprint(),
        "signatures": s.signatures,
        "written": s.written,
    })
}

/// Whether the user wrote a tag on the reference (rather than getting `latest` by default).
fn reference_names_tag(args: &[String]) -> bool {
    args.last().is_some_and(|r| {
        let plain = r.strip_prefix("oci://").unwrap_or(r);
        plain
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
    })
}

pub async fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let mut reference = Reference::parse_cli(&args.reference)?;
    if let Some(range) = &args.semver {
        reference.selector = RefSelector::Semver(reference::parse_semver_range(range)?);
    }
    let registry = registry_for(&reference, &args.registry)?;
    let deadline = pull::Deadline::after(crate::api::duration::parse(&args.registry.timeout)?);
    let (resolved, manifest) = deadline
        .run(
            "resolve",
            pull::resolve_with_manifest(&registry, &reference),
        )
        .await?;
    let mut limits = Limits::default();
    if let Some(max) = args.max_size {
        limits.max_artifact_bytes = max;
    }
    let options = PullOptions {
        platform: args.platform.clone(),
        layer_media_type: args.layer_media_type.clone(),
        limits,
    };
    let staging = staging_dir(&args.output_dir)?;
    let show_progress =
        args.registry.output == OutputFormat::Text && std::io::stderr().is_terminal();
    let last_step = std::sync::atomic::AtomicU64::new(u64::MAX);
    let progress = |p: Progress| {
        if show_progress && p.total > 1024 * 1024 {
            let step = p.done * 20 / p.total.max(1);
            if step != last_step.load(std::sync::atomic::Ordering::Relaxed) {
                last_step.store(step, std::sync::atomic::Ordering::Relaxed);
                eprint!(
                    "\rpulling {:.1}/{:.1} MiB",
                    p.done as f64 / 1048576.0,
                    p.total as f64 / 1048576.0
                );
                if p.done == p.total {
                    eprintln!();
                }
            }
        }
    };
    let pulled = deadline
        .run(
            "pull",
            pull::pull_manifest_into(
                &registry,
                &reference.repository,
                manifest,
                staging.path(),
                &options,
                &progress,
            ),
        )
        .await?;
    place(staging, &args.output_dir)?;
    match args.registry.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "repository": reference.repository.to_string(),
                "revision": resolved.revision(),
                "digest": resolved.head.digest,
                "manifestDigest": pulled.manifest_digest,
                "kind": pulled.kind,
                "config": pulled.config,
                "size": pulled.size(),
                "files": pulled.files.iter().map(|f| serde_json::json!({"path": f.location(), "digest": f.digest, "size": f.size, "platform": f.platform.as_ref().map(ToString::to_string)})).collect::<Vec<_>>(),
            })
        ),
        OutputFormat::Text => {
            println!(
                "pulled {}@{} ({:?})",
                reference.repository, resolved.head.digest, pulled.kind
            );
            for f in &pulled.files {
                println!("{}  {}  {}", f.digest, f.size, f.location());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A staging directory beside the output (same filesystem, so the final move is a rename).
fn staging_dir(output: &Path) -> anyhow::Result<tempfile::TempDir> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    tempfile::Builder::new()
        .prefix(".ocisync-pull-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a staging directory in {}", parent.display()))
}

/// Moves the verified files into `output`: a rename of the whole directory when `output`
/// does not exist yet, else file by file (replacing files of the same path).
fn place(staging: tempfile::TempDir, output: &Path) -> anyhow::Result<()> {
    if !output.exists() {
        let kept = staging.keep();
        std::fs::rename(&kept, output)
            .with_context(|| format!("cannot move files into {}", output.display()))?;
        return Ok(());
    }
    move_tree(staging.path(), staging.path(), output)
}

fn move_tree(root: &Path, dir: &Path, output: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let rel = path.strip_prefix(root)?;
        let target = output.join(rel);
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
            move_tree(root, &path, output)?;
        } else {
            std::fs::rename(&path, &target)
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
    }
    Ok(())
}
