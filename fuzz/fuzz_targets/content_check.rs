//! The content checks a bundle runs before it writes anything: Falco rules (bounded YAML,
//! a list of known items) and seccomp profiles (a JSON object with a string
//! `defaultAction`), by kind and file name.
//!
//! Input: a selector byte (kind and file name), then the file's bytes.
//!
//! Invariants: a check never panics and stays within the memory limit (the runner's RSS
//! limit); accepted Falco rules parse as an empty document or a list of mappings each with
//! a known item key; an accepted seccomp profile is UTF-8 and a JSON object whose
//! `defaultAction` is a string; kinds and names that are not checked always pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocisync::bundle::content::{self, FALCO_ITEM_KEYS};
use ocisync::oci::content::ContentKind;

const CASES: [(ContentKind, &str); 6] = [
    (ContentKind::FalcoRules, "falco_rules.yaml"),
    (ContentKind::FalcoRules, "rules/extra.YML"),
    (ContentKind::Seccomp, "profiles/default.json"),
    (ContentKind::FalcoRules, "README.md"),
    (ContentKind::Seccomp, "profile.yaml"),
    (ContentKind::Generic, "anything.yaml"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let (kind, path) = CASES[usize::from(selector) % CASES.len()];
    let result = content::check(kind, path, bytes);
    if !content::is_checked(kind, path) {
        assert_eq!(result, Ok(()));
        return;
    }
    if result.is_err() {
        return;
    }
    match kind {
        ContentKind::FalcoRules => accepted_rules(bytes),
        ContentKind::Seccomp => accepted_profile(bytes),
        _ => {}
    }
});

fn accepted_rules(bytes: &[u8]) {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(bytes).expect("accepted rules parse as YAML");
    let items = match doc {
        serde_yaml_ng::Value::Null => return,
        serde_yaml_ng::Value::Sequence(items) => items,
        other => panic!("accepted rules are not a list: {other:?}"),
    };
    for item in items {
        let serde_yaml_ng::Value::Mapping(map) = item else {
            panic!("an accepted item is not a mapping");
        };
        assert!(
            map.keys()
                .filter_map(|k| k.as_str())
                .any(|k| FALCO_ITEM_KEYS.contains(&k)),
            "an accepted item has no known key"
        );
    }
}

/// JSON's grammar allows any `\\uXXXX` escape and Go (the kubelet, runc) reads a lone
/// surrogate as U+FFFD; serde_json refuses it when it keeps a string, not when it skips
/// one, as the check does. Such a profile is accepted and not held against the check.
fn escape_only(e: &serde_json::Error) -> bool {
    let m = e.to_string();
    m.contains("surrogate") || m.contains("hex escape") || m.contains("unicode code point")
}

fn accepted_profile(bytes: &[u8]) {
    assert!(
        std::str::from_utf8(bytes).is_ok(),
        "an accepted profile is not UTF-8"
    );
    let doc: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(doc) => doc,
        Err(e) if escape_only(&e) => return,
        Err(e) => panic!("an accepted profile does not parse as JSON: {e}"),
    };
    assert!(
        doc.get("defaultAction").is_some_and(|a| a.is_string()),
        "an accepted profile has no string defaultAction: {doc}"
    );
}
