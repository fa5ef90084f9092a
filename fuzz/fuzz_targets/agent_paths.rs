//! The agent's path decisions: which directory a bundle's files go to (the bundle's
//! `nodeFiles.directory`, the `--allowed-dir` grants and the bundle's namespace), the file
//! names and digests it takes from the bundle's status, and the directories it then opens
//! and creates on the node.
//!
//! Input: `--allowed-dir` values one a line, an empty line, then a RuleBundle as JSON.
//!
//! Invariants: an applied directory is absolute with plain parts (none `..` or starting
//! with `..`), inside the allowed directory that decides for it, which admits the bundle's
//! namespace; a file name is plain (never empty, `.`, `..`, holding `/` or NUL) and one the
//! agent accepts; a digest is sha256 and shown as given; under a host root the directory
//! stays under it; opening and staging it creates nothing outside the directory; each
//! file is named once, and one listed for a platform is for the node's (linux/amd64).
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ocisync::agent::desired::{AllowList, Decision, decide, on_host, valid_key};
use ocisync::agent::disk::{Target, WantedFile};
use ocisync::agent::safedir::SafeDir;
use ocisync::api::RuleBundle;

fuzz_target!(|data: &[u8]| {
    let Some(input) = ocisync_fuzz::text(data) else {
        return;
    };
    let Some((dirs, bundle)) = input.split_once("\n\n") else {
        return;
    };
    let values: Vec<String> = dirs.lines().map(str::to_string).collect();
    let Ok(allow) = AllowList::new(&values) else {
        return;
    };
    for dir in allow.dirs() {
        ocisync_fuzz::assert_plain_absolute(Path::new(&dir), "allowed dir");
    }
    let Ok(bundle) = serde_json::from_str::<RuleBundle>(bundle) else {
        return;
    };
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), "node-1".to_string()),
        ("role".to_string(), "falco".to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
    ]);
    let Decision::Apply {
        directory,
        allowed,
        files,
        ..
    } = decide(&bundle, &labels, &allow)
    else {
        return;
    };
    let namespace = bundle.metadata.namespace.clone().unwrap_or_default();
    ocisync_fuzz::assert_plain_absolute(&directory, "applied directory");
    assert!(
        directory.starts_with(&allowed),
        "{directory:?} outside {allowed:?}"
    );
    assert_eq!(allow.granted(&directory, &namespace), Ok(allowed.as_path()));
    let mut names = std::collections::BTreeSet::new();
    for f in &files {
        assert!(names.insert(f.key.as_str()), "{:?} applied twice", f.key);
        ocisync_fuzz::assert_plain_name(&f.key, "file name");
        assert!(!f.key.starts_with(".."), "{:?} starts with ..", f.key);
        assert!(valid_key(&f.key));
        let status = bundle
            .status
            .as_ref()
            .expect("a status, since files are applied");
        assert!(status.files.iter().any(|s| {
            let for_node = s
                .platform
                .as_deref()
                .is_none_or(|p| p == "linux/amd64" || p.starts_with("linux/amd64/"));
            s.path == f.key && s.digest == f.digest.as_str() && for_node
        }));
    }
    let id = format!(
        "{namespace}.{}",
        bundle.metadata.name.clone().unwrap_or_default()
    );
    on_the_node(&directory, &allowed, &id, &files);
});

/// Opens the directory below a scratch host root as the agent does and stages the files:
/// everything made is the directory's parts and what is inside it.
fn on_the_node(directory: &Path, allowed: &Path, id: &str, files: &[WantedFile]) {
    let host = ocisync_fuzz::scratch();
    let root = on_host(host.path(), allowed);
    let inside = on_host(host.path(), directory);
    assert!(inside.starts_with(host.path()) && inside.starts_with(&root));
    if std::fs::create_dir_all(&root).is_err() {
        return; // a name too long for the file system
    }
    let below = directory.strip_prefix(allowed).expect("checked above");
    let Ok(Some(dir)) = SafeDir::open(&root, below, true) else {
        return;
    };
    let target = Target::new(dir, id.to_string());
    if let Ok(staging) = target.stage() {
        for f in files {
            let _ = staging.create(&f.key);
        }
        everything_inside(host.path(), &inside);
    }
    everything_inside(host.path(), &inside);
}

fn everything_inside(host: &Path, inside: &Path) {
    for (rel, is_dir) in ocisync_fuzz::walk(host) {
        let path = host.join(&rel);
        assert!(
            path.starts_with(inside) || (is_dir && inside.starts_with(&path)),
            "{path:?} made outside {inside:?}"
        );
    }
}
