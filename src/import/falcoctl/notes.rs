//! The comments for settings that have no ocisync equivalent, or a different one.

use super::config::{Config, DEFAULT_FOLLOW_EVERY, Origin};
use super::{Options, Wanted};

/// The comments printed at the top: one per setting that does not map one to one.
pub fn file_notes(
    config: &Config,
    origin: Origin,
    skipped: &[Wanted],
    options: &Options,
) -> Vec<String> {
    let mut notes = Vec::new();
    if origin == Origin::ChartValues {
        notes.push("read from a Falco chart values file (falcoctl.config); set falcoctl.artifact.install.enabled and falcoctl.artifact.follow.enabled to false in the chart".into());
    }
    for w in skipped {
        notes.push(format!(
            "{}: left out, its type {} is not in artifact.allowedTypes",
            w.resolved.written,
            w.resolved.kind.as_str()
        ));
    }
    index_notes(config, &mut notes);
    artifact_notes(config, options, &mut notes);
    registry_notes(config, options, &mut notes);
    for key in config.other.keys() {
        let why = if key == "driver" {
            "ocisync delivers artifacts, not drivers"
        } else {
            "unknown to ocisync"
        };
        notes.push(format!("{key}: not mapped ({why})"));
    }
    notes
}

fn index_notes(config: &Config, notes: &mut Vec<String>) {
    for i in &config.indexes {
        notes.push(format!(
            "index {} ({}): ocisync does not download indexes; index names were resolved through the --index files, and the objects below name registries directly",
            i.name, i.url
        ));
    }
}

fn artifact_notes(config: &Config, options: &Options, notes: &mut Vec<String>) {
    let a = &config.artifact;
    if a.noverify {
        notes.push("artifact.noVerify is true: no spec.verify was written, signatures are not checked (drop noVerify and import again to check the index's signatures)".into());
    }
    if a.install.resolvedeps != Some(false) {
        notes.push("artifact.install.resolveDeps: ocisync does not install dependencies; list every plugin your rules need in the refs (spec.falco on a bundle reports any that is missing)".into());
    }
    if let Some(url) = &a.follow.falcoversions {
        notes.push(format!("artifact.follow.falcoversions ({url}): not mapped; set the bundles' spec.falco.engineVersion to your Falco's engine version to hold back revisions that need a newer one"));
    }
    let dirs = [
        (
            "rulesfilesDir",
            [&a.install.rulesfilesdir, &a.follow.dirs.rulesfilesdir],
            &options.rules_dir,
        ),
        (
            "pluginsDir",
            [&a.install.pluginsdir, &a.follow.dirs.pluginsdir],
            &options.plugins_dir,
        ),
        (
            "assetsDir",
            [&a.install.assetsdir, &a.follow.dirs.assetsdir],
            &options.assets_dir,
        ),
    ];
    for (key, values, node_dir) in dirs {
        if let Some(dir) = values.into_iter().flatten().next() {
            notes.push(format!("{key} {dir} (a directory in falcoctl's container): ocisync writes these files on each node under {node_dir}; mount it into Falco (examples/falco)"));
        }
    }
    for (section, other) in [
        ("artifact", &a.other),
        ("artifact.install", &a.install.other),
        ("artifact.follow", &a.follow.dirs.other),
    ] {
        for key in other.keys().filter(|k| *k != "refs") {
            notes.push(format!("{section}.{key}: not mapped (ocisync keeps its state in the cluster and checks on its own schedule)"));
        }
    }
}

fn registry_notes(config: &Config, options: &Options, notes: &mut Vec<String>) {
    let auth = &config.registry.auth;
    for b in &auth.basic {
        let host = super::objects::registry_host(&b.registry);
        notes.push(format!(
            "registry {host}: create the pull Secret the sources name (the password is not printed): kubectl create secret docker-registry {} --docker-server={host} --docker-username={} --docker-password=...",
            super::objects::secret_name(host),
            b.user
        ));
    }
    for (kind, entries) in [
        ("OAuth2 client credentials", &auth.oauth),
        ("GCP credentials", &auth.gcp),
    ] {
        for e in entries {
            notes.push(format!("registry {}: {kind} are not mapped; put a token in a kubernetes.io/dockerconfigjson Secret and set spec.secretRef", e.registry));
        }
    }
    if let Some(path) = &config.registry.creds.config {
        notes.push(format!("registry.creds.config {path}: make it a Secret (kubectl create secret generic NAME --type=kubernetes.io/dockerconfigjson --from-file=.dockerconfigjson={path}) and set spec.secretRef"));
    }
    for key in config.registry.other.keys() {
        notes.push(format!("registry.{key}: not mapped"));
    }
    if options.plain_http {
        notes.push("--plain-http: every source talks plain HTTP (spec.insecure)".into());
    }
}

/// The sources' interval: `artifact.follow.every` (falcoctl's default 168h); a cron
/// schedule becomes a note, since ocisync checks at an interval.
pub fn interval(config: &Config, notes: &mut Vec<String>) -> String {
    let follow = &config.artifact.follow;
    if let Some(cron) = &follow.cron {
        notes.push(format!("artifact.follow.cron {cron:?}: not mapped; ocisync checks at an interval (spec.interval)"));
    }
    match &follow.every {
        Some(every) if valid_interval(every) => every.clone(),
        Some(every) => {
            notes.push(format!("artifact.follow.every {every:?}: not a Go duration of at least 10s; {DEFAULT_FOLLOW_EVERY} used"));
            DEFAULT_FOLLOW_EVERY.into()
        }
        None => DEFAULT_FOLLOW_EVERY.into(),
    }
}

fn valid_interval(s: &str) -> bool {
    crate::api::duration::parse(s).is_ok_and(|d| d >= std::time::Duration::from_secs(10))
}
