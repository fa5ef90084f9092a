//! The ArtifactSources (one per reference) and RuleBundles (one per artifact type, files
//! onto nodes) an import prints.

use std::collections::BTreeSet;

use super::config::Config;
use super::index::{ArtifactType, Cosign, Pin};
use super::{Doc, Options, Wanted};
use crate::api::artifact_source::{
    LocalObjectReference, OciRefSpec, OidcIdentityMatch, VerifyProvider, VerifySpec,
};
use crate::api::rule_bundle::{BundleSource, NodeFilesTarget};
use crate::api::{ArtifactSource, ArtifactSourceSpec, RuleBundle, RuleBundleSpec};

/// Most sources in one RuleBundle (the CRD's limit).
const MAX_BUNDLE_SOURCES: usize = 32;

pub fn objects(config: &Config, wanted: &[Wanted], interval: &str, options: &Options) -> Vec<Doc> {
    let mut names = BTreeSet::new();
    let mut docs = Vec::new();
    let mut by_type: Vec<(ArtifactType, String)> = Vec::new();
    for w in wanted {
        let name = unique_name(&mut names, &base_name(w));
        let (source, notes) = source(config, w, &name, interval, options);
        docs.push(doc(notes, ArtifactSource::new(&name, source), options));
        by_type.push((w.resolved.kind, name));
    }
    by_type.sort();
    for kind in [
        ArtifactType::Rulesfile,
        ArtifactType::Plugin,
        ArtifactType::Asset,
    ] {
        let sources: Vec<&String> = by_type
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n)
            .collect();
        for (i, chunk) in sources.chunks(MAX_BUNDLE_SOURCES).enumerate() {
            docs.push(bundle(kind, i, chunk, options));
        }
    }
    docs
}

fn source(
    config: &Config,
    w: &Wanted,
    name: &str,
    interval: &str,
    options: &Options,
) -> (ArtifactSourceSpec, Vec<String>) {
    let r = &w.resolved;
    let mut notes = vec![format!("falcoctl: {}", r.written)];
    if !w.followed {
        notes.push(format!("in artifact.install.refs only: falcoctl fetched it when Falco started; ocisync checks it every {interval}"));
    }
    if r.kind_guessed {
        notes.push(format!(
            "type {} taken from the repository path",
            r.kind.as_str()
        ));
    }
    let reference = match &r.pin {
        Pin::Tag(tag) => OciRefSpec {
            tag: Some(tag.clone()),
            ..OciRefSpec::default()
        },
        Pin::Digest(d) => OciRefSpec {
            digest: Some(d.clone()),
            ..OciRefSpec::default()
        },
    };
    let host = registry_host(&r.registry);
    let has_basic = config
        .registry
        .auth
        .basic
        .iter()
        .any(|b| registry_host(&b.registry) == host);
    let verify = match (&r.signature, config.artifact.noverify) {
        (Some(cosign), false) => verify(cosign, name, &mut notes),
        _ => None,
    };
    let spec = ArtifactSourceSpec {
        url: format!("oci://{}/{}", r.registry, r.repository),
        reference: Some(reference),
        interval: interval.to_string(),
        insecure: options.plain_http,
        secret_ref: has_basic.then(|| LocalObjectReference {
            name: secret_name(host),
        }),
        cert_secret_ref: options
            .cert_secret
            .clone()
            .map(|name| LocalObjectReference { name }),
        verify,
        // falcoctl installs each node's own build of a plugin: every platform is stored
        // and each node's agent takes its own
        platform: (r.kind == ArtifactType::Plugin).then(|| crate::oci::platform::ALL.to_string()),
        ..ArtifactSourceSpec::default()
    };
    (spec, notes)
}

/// spec.verify from an index entry's cosign settings. Exact values are matched whole;
/// falcoctl's regexps match anywhere (as cosign's), ocisync's are anchored at the start: a
/// regexp is wrapped in `^(?:…)`, which only narrows what is accepted.
fn verify(cosign: &Cosign, name: &str, notes: &mut Vec<String>) -> Option<VerifySpec> {
    if !cosign.certificate_github_workflow.is_empty() {
        notes.push("signature certificate-github-workflow: not checked (ocisync matches issuer and subject)".into());
    }
    if cosign.ignore_tlog {
        notes.push("signature ignore-tlog: not mapped".into());
    }
    if !cosign.key.is_empty() {
        let secret = format!("{name}-cosign-key");
        notes.push(format!("signed with a key: put the public key in the Secret {secret} (kubectl create secret generic {secret} --from-file=cosign.pub=KEYFILE)"));
        return Some(VerifySpec {
            provider: VerifyProvider::Cosign,
            secret_ref: Some(LocalObjectReference { name: secret }),
            ..VerifySpec::default()
        });
    }
    let issuer = identity(
        &cosign.certificate_oidc_issuer,
        &cosign.certificate_oidc_issuer_regexp,
        notes,
        "issuer",
    );
    let subject = identity(
        &cosign.certificate_identity,
        &cosign.certificate_identity_regexp,
        notes,
        "identity",
    );
    match (issuer, subject) {
        (Some(issuer), Some(subject)) => Some(VerifySpec {
            provider: VerifyProvider::Cosign,
            match_oidc_identity: vec![OidcIdentityMatch { issuer, subject }],
            ..VerifySpec::default()
        }),
        _ => {
            notes.push("signature: an issuer and an identity are both needed; not verified".into());
            None
        }
    }
}

fn identity(exact: &str, regexp: &str, notes: &mut Vec<String>, what: &str) -> Option<String> {
    if !exact.is_empty() {
        return Some(format!("^{}$", regex::escape(exact)));
    }
    if regexp.is_empty() {
        return None;
    }
    // a group, so that every branch of an alternation (`a|b`) is anchored
    if let Some(rest) = regexp.strip_prefix('^') {
        return Some(format!("^(?:{rest})"));
    }
    notes.push(format!(
        "signature {what} regexp {regexp:?} anchored at the start (falcoctl matches it anywhere)"
    ));
    Some(format!("^(?:{regexp})"))
}

fn bundle(kind: ArtifactType, chunk: usize, sources: &[&String], options: &Options) -> Doc {
    let (base, directory, note) = match kind {
        ArtifactType::Rulesfile => (
            "falco-rules",
            &options.rules_dir,
            "rules files onto every node",
        ),
        ArtifactType::Plugin => (
            "falco-plugins",
            &options.plugins_dir,
            "plugins onto every node, each node its own platform's build (platform: all); spec.falco checks a rules file's plugin dependencies within one bundle, so the rules in falco-rules do not see the plugins here",
        ),
        ArtifactType::Asset => (
            "falco-assets",
            &options.assets_dir,
            "assets onto every node",
        ),
    };
    let name = if chunk == 0 {
        base.to_string()
    } else {
        format!("{base}-{}", chunk + 1)
    };
    let spec = RuleBundleSpec {
        sources: sources
            .iter()
            .map(|s| BundleSource {
                source_ref: LocalObjectReference {
                    name: s.to_string(),
                },
                include: Vec::new(),
            })
            .collect(),
        node_files: Some(NodeFilesTarget {
            directory: directory.clone(),
            node_selector: None,
        }),
        ..RuleBundleSpec::default()
    };
    doc(
        vec![format!("falcoctl's {}s: {note}", kind.as_str())],
        RuleBundle::new(&name, spec),
        options,
    )
}

fn doc<K: serde::Serialize + kube::Resource>(
    notes: Vec<String>,
    mut object: K,
    options: &Options,
) -> Doc {
    object.meta_mut().namespace = options.namespace.clone();
    let mut object = serde_json::to_value(&object).unwrap_or_default();
    if let Some(spec) = object.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.retain(|_, v| v != &serde_json::Value::Bool(false));
    }
    Doc { notes, object }
}

/// The registry's host from an auth entry, which falcoctl also accepts as a reference.
pub fn registry_host(registry: &str) -> &str {
    registry.split('/').next().unwrap_or(registry)
}

/// The pull Secret an import names for a registry host.
pub fn secret_name(host: &str) -> String {
    format!("falcoctl-{}", dns_label(host, 50))
}

fn base_name(w: &Wanted) -> String {
    let r = &w.resolved;
    let last = r.repository.rsplit('/').next().unwrap_or(&r.repository);
    dns_label(r.entry_name.as_deref().unwrap_or(last), 58)
}

fn unique_name(taken: &mut BTreeSet<String>, base: &str) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// A DNS-1123 label of at most `max` characters: lowercase, `-` for anything else.
fn dns_label(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.truncate(max);
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "artifact".into()
    } else {
        out
    }
}
