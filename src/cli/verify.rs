//! `ocisync verify`: checks a revision's cosign signature the way a source's `spec.verify`
//! does, from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};

use super::OutputFormat;
use super::artifact::{RegistryArgs, registry_for};
use crate::oci::pull;
use crate::oci::reference::Reference;
use crate::oci::registry::Registry;
use crate::verify::discover::{self, CheckError, Requests};
use crate::verify::{Identity, Policy, PublicKey, TrustedRoot, Verified};

/// Compiled size limit of an identity regex: a pattern is checked against every
/// certificate, so a huge one is refused rather than built.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The reference: `oci://host/repo:tag`, `host/repo:tag` or `host/repo@sha256:...`.
    reference: String,
    /// Key mode: a trusted PEM public key (repeatable); any of them may have signed.
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Keyless: regex the certificate's subject (a SAN) must match; unanchored, as in
    /// cosign, so write `^...$`.
    #[arg(long, value_name = "REGEX")]
    certificate_identity_regexp: Option<String>,
    /// Keyless: regex the certificate's OIDC issuer must match (unanchored).
    #[arg(long, value_name = "REGEX")]
    certificate_oidc_issuer_regexp: Option<String>,
    /// Keyless: Sigstore `trusted_root.json`; default: the public Sigstore instance's root
    /// shipped with ocisync.
    #[arg(long, value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Exit code of a usage error, as clap's own.
const USAGE: u8 = 2;

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if let Err(problem) = check_mode(&args) {
        eprintln!("error: {problem} (see 'ocisync verify --help')");
        return Ok(ExitCode::from(USAGE));
    }
    let policy = policy(&args)?;
    let reference = Reference::parse_cli(&args.reference)?;
    let registry = registry_for(&reference, &args.registry)?;
    let deadline = pull::Deadline::after(crate::api::duration::parse(&args.registry.timeout)?);
    let mut report = Report {
        repository: reference.repository.to_string(),
        digest: None,
        requests: 0,
    };
    let outcome = check(&registry, &reference, &policy, deadline, &mut report).await;
    match outcome {
        Ok(v) => {
            report.verified(&v, args.registry.output);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            report.refused(&e, args.registry.output);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Resolves the reference and checks its digest's signatures; `report` learns the digest
/// and the requests made, whatever the outcome.
async fn check(
    registry: &Registry,
    reference: &Reference,
    policy: &Policy,
    deadline: pull::Deadline,
    report: &mut Report,
) -> Result<Verified, CheckError> {
    let (resolved, manifest) = deadline
        .run("resolve", pull::resolve_with_manifest(registry, reference))
        .await?;
    let digest = &resolved.head.digest;
    report.digest = Some(digest.to_string());
    let mut requests = Requests::default();
    let outcome = deadline
        .run("verify", async {
            Ok::<_, crate::oci::OciError>(
                discover::check(
                    registry,
                    &reference.repository,
                    digest,
                    &manifest.bytes,
                    policy,
                    &mut requests,
                )
                .await,
            )
        })
        .await;
    report.requests = requests.0;
    outcome?
}

/// Exactly one mode: `--key`, or keyless (both regexes). Checked here rather than by clap,
/// whose messages for argument groups span lines.
fn check_mode(args: &VerifyArgs) -> Result<(), &'static str> {
    let keyless = (
        args.certificate_identity_regexp.is_some(),
        args.certificate_oidc_issuer_regexp.is_some(),
    );
    match (args.keys.is_empty(), keyless) {
        (false, (false, false)) if args.trusted_root.is_none() => Ok(()),
        (true, (true, true)) => Ok(()),
        (true, (false, false)) if args.trusted_root.is_none() => Err(
            "verify needs a mode: --key FILE, or --certificate-identity-regexp with --certificate-oidc-issuer-regexp",
        ),
        (true, (true, false)) => {
            Err("--certificate-identity-regexp needs --certificate-oidc-issuer-regexp")
        }
        (true, _) => Err(
            "keyless verification needs both --certificate-identity-regexp and --certificate-oidc-issuer-regexp",
        ),
        (false, _) => Err(
            "--key cannot be used with --certificate-identity-regexp, --certificate-oidc-issuer-regexp or --trusted-root",
        ),
    }
}

/// The policy the flags describe (the mode is already checked).
fn policy(args: &VerifyArgs) -> anyhow::Result<Policy> {
    if !args.keys.is_empty() {
        let keys = args
            .keys
            .iter()
            .map(|p| read_key(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(Policy::Keys(keys));
    }
    let (Some(subject), Some(issuer)) = (
        &args.certificate_identity_regexp,
        &args.certificate_oidc_issuer_regexp,
    ) else {
        return Err(anyhow!(
            "give --key, or both --certificate-identity-regexp and --certificate-oidc-issuer-regexp"
        ));
    };
    let identity = Identity {
        issuer: compile("--certificate-oidc-issuer-regexp", issuer)?,
        subject: compile("--certificate-identity-regexp", subject)?,
    };
    let root = match &args.trusted_root {
        Some(path) => {
            let json = std::fs::read(path)
                .with_context(|| format!("cannot read trusted root {}", path.display()))?;
            TrustedRoot::parse(&json)
                .map_err(|e| anyhow!("trusted root {}: {e}", path.display()))?
        }
        None => TrustedRoot::public().map_err(|e| anyhow!("public trusted root: {e}"))?,
    };
    Ok(Policy::Keyless {
        identities: vec![identity],
        root: Arc::new(root),
    })
}

fn read_key(path: &Path) -> anyhow::Result<PublicKey> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read key {}", path.display()))?;
    PublicKey::from_pem(&path.display().to_string(), &pem).map_err(anyhow::Error::msg)
}

fn compile(flag: &str, pattern: &str) -> anyhow::Result<regex::Regex> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| anyhow!("{flag}: {}", one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What is printed: what was checked, and how many registry requests the signature check
/// made (the manifest's own fetch not counted).
struct Report {
    repository: String,
    /// None when the reference did not resolve.
    digest: Option<String>,
    requests: u32,
}

impl Report {
    fn verified(&self, v: &Verified, output: OutputFormat) {
        match output {
            OutputFormat::Json => println!(
                "{}",
                serde_json::json!({
                    "verified": true,
                    "repository": self.repository,
                    "digest": self.digest,
                    "method": v.method.as_str(),
                    "format": v.format.as_str(),
                    "keyFingerprint": v.key_fingerprint,
                    "issuer": v.issuer,
                    "subject": v.subject,
                    "integratedTime": v.integrated_time,
                    "requests": self.requests,
                })
            ),
            OutputFormat::Text => {
                let by = match (&v.key_fingerprint, &v.subject, &v.issuer) {
                    (Some(key), _, _) => format!("key {key}"),
                    (None, Some(subject), Some(issuer)) => format!("{subject} (issuer {issuer})"),
                    _ => "an unnamed signer".to_string(),
                };
                println!(
                    "verified {}@{}: {} signature ({}) by {by}",
                    self.repository,
                    self.digest.as_deref().unwrap_or_default(),
                    v.method.as_str(),
                    v.format.as_str()
                );
            }
        }
    }

    /// The reason on stderr (one line); with `-O json` also the result on stdout.
    fn refused(&self, e: &CheckError, output: OutputFormat) {
        let (reason, message) = match e {
            CheckError::Refused(f) => (f.refusal.reason().as_str(), f.message.clone()),
            CheckError::Registry(r) => (r.reason().as_str(), r.to_string()),
        };
        let message = one_line(&message);
        eprintln!("error: {reason}: {message}");
        if output == OutputFormat::Json {
            println!(
                "{}",
                serde_json::json!({
                    "verified": false,
                    "repository": self.repository,
                    "digest": self.digest,
                    "reason": reason,
                    "message": message,
                    "requests": self.requests,
                })
            );
        }
    }
}
