//! Glob selection and file-name mapping: a bundle's `include` patterns over an artifact's
//! file paths, and the flat name (ConfigMap key, file name on nodes) each selected path gets.
//!
//! Input: lines; `+pattern` is an include pattern, `---` starts a second source, any other
//! line is a file path of the current source's artifact.
//!
//! Invariants: a name mapping never yields an empty name, `.`, `..` (or any `..` prefix), a
//! `/` or NUL, nor a name the agent would refuse; a plan holds each name once, sorted, each
//! from a listed path and a source that named it; a source without patterns takes every
//! file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocisync::agent::desired::valid_key;
use ocisync::api::artifact_source::{Artifact, ArtifactFile, LocalObjectReference};
use ocisync::api::rule_bundle::{BundleSource, RuleBundleSpec};
use ocisync::bundle::keys::{MAX_KEY_LEN, key_for};
use ocisync::bundle::plan::{SourceState, plan};
use ocisync::digest::Digest;
use ocisync::oci::content::ContentKind;

fuzz_target!(|data: &[u8]| {
    let Some(input) = ocisync_fuzz::text(data) else {
        return;
    };
    let mut sources: Vec<(Vec<String>, Vec<String>)> = vec![(Vec::new(), Vec::new())];
    for line in input.split('\n') {
        if line == "---" {
            sources.push((Vec::new(), Vec::new()));
            continue;
        }
        let Some(current) = sources.last_mut() else {
            return;
        };
        match line.strip_prefix('+') {
            Some(pattern) => current.0.push(pattern.to_string()),
            None => current.1.push(line.to_string()),
        }
    }
    for (_, paths) in &sources {
        for path in paths {
            mapped_name(path);
        }
    }
    planned(&sources);
});

fn mapped_name(path: &str) {
    let Ok(key) = key_for(path) else {
        return;
    };
    ocisync_fuzz::assert_plain_name(&key, "key_for");
    assert!(!key.starts_with(".."), "{key:?} starts with ..");
    assert!(key.len() <= MAX_KEY_LEN);
    assert!(
        valid_key(&key),
        "the agent refuses {key:?} made from {path:?}"
    );
    assert_eq!(key_for(&key).as_deref(), Ok(key.as_str()), "not idempotent");
}

fn artifact(i: usize, paths: &[String]) -> Artifact {
    Artifact {
        revision: format!("{i}@x"),
        digest: Digest::of(&[i as u8]).to_string(),
        kind: ContentKind::FalcoRules,
        files: paths
            .iter()
            .map(|p| ArtifactFile {
                path: p.clone(),
                digest: Digest::of(p.as_bytes()).to_string(),
                size: 1,
                platform: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn planned(sources: &[(Vec<String>, Vec<String>)]) {
    let artifacts: Vec<Artifact> = sources
        .iter()
        .enumerate()
        .map(|(i, (_, paths))| artifact(i, paths))
        .collect();
    let spec = RuleBundleSpec {
        sources: sources
            .iter()
            .enumerate()
            .map(|(i, (include, _))| BundleSource {
                source_ref: LocalObjectReference {
                    name: format!("s{i}"),
                },
                include: include.clone(),
            })
            .collect(),
        ..Default::default()
    };
    let lookup = |name: &str| {
        let i: usize = name[1..].parse().expect("a source name made here");
        SourceState::Ready(&artifacts[i])
    };
    let Ok(plan) = plan(&spec, lookup) else {
        return;
    };
    let keys: Vec<&str> = plan.files.iter().map(|f| f.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(keys, sorted, "keys unsorted or twice");
    for f in &plan.files {
        ocisync_fuzz::assert_plain_name(&f.key, "planned key");
        assert!(valid_key(&f.key), "the agent refuses {:?}", f.key);
        assert_eq!(key_for(&f.path).as_deref(), Ok(f.key.as_str()));
        let i: usize = f.source[1..].parse().expect("a source name made here");
        assert!(sources[i].1.contains(&f.path), "{:?} not listed", f.path);
    }
    for (i, (include, paths)) in sources.iter().enumerate() {
        if include.is_empty() {
            let from_here = plan.files.iter().filter(|f| f.source == format!("s{i}"));
            assert_eq!(
                from_here.count(),
                paths.len(),
                "source {i} without patterns"
            );
        }
    }
    for s in plan.status_files() {
        assert!(Digest::parse(&s.digest).is_ok());
    }
}
