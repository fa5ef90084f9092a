//! Checks by kind, run on every selected file before anything is written: a Falco rules
//! file must be a YAML list of Falco items, a seccomp profile JSON with a `defaultAction`.
//! Other kinds and other files pass as they are.

use crate::oci::content::ContentKind;

/// The top-level item keys Falco knows; every item must hold at least one.
pub const FALCO_ITEM_KEYS: [&str; 5] = [
    "rule",
    "macro",
    "list",
    "required_engine_version",
    "required_plugin_versions",
];

/// Whether [`check`] looks at this file at all.
pub fn is_checked(kind: ContentKind, path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    match kind {
        ContentKind::FalcoRules => lower.ends_with(".yaml") || lower.ends_with(".yml"),
        ContentKind::Seccomp => lower.ends_with(".json"),
        _ => false,
    }
}

/// Checks one file of a source of `kind`. The error says what is wrong, without the path
/// (the caller names the file).
pub fn check(kind: ContentKind, path: &str, bytes: &[u8]) -> Result<(), String> {
    match kind {
        _ if !is_checked(kind, path) => Ok(()),
        ContentKind::FalcoRules => falco_rules(bytes),
        ContentKind::Seccomp => seccomp_profile(bytes),
        _ => Ok(()),
    }
}

/// A Falco rules file: a YAML list (empty is fine) of mappings, each with a known item key.
pub fn falco_rules(bytes: &[u8]) -> Result<(), String> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(bytes).map_err(|e| format!("not valid YAML: {e}"))?;
    let items = match doc {
        serde_yaml_ng::Value::Null => return Ok(()),
        serde_yaml_ng::Value::Sequence(items) => items,
        other => {
            return Err(format!(
                "a Falco rules file is a YAML list of items, this is {}",
                yaml_kind(&other)
            ));
        }
    };
    for (i, item) in items.iter().enumerate() {
        let serde_yaml_ng::Value::Mapping(map) = item else {
            return Err(format!(
                "item {} is {}, expected a mapping with one of {}",
                i + 1,
                yaml_kind(item),
                FALCO_ITEM_KEYS.join(", ")
            ));
        };
        let known = map
            .keys()
            .filter_map(|k| k.as_str())
            .any(|k| FALCO_ITEM_KEYS.contains(&k));
        if !known {
            let keys: Vec<&str> = map.keys().filter_map(|k| k.as_str()).take(5).collect();
            return Err(format!(
                "item {} has keys [{}] but none of {}",
                i + 1,
                keys.join(", "),
                FALCO_ITEM_KEYS.join(", ")
            ));
        }
    }
    Ok(())
}

/// A seccomp profile: a JSON object with a string `defaultAction`.
pub fn seccomp_profile(bytes: &[u8]) -> Result<(), String> {
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    match doc.get("defaultAction") {
        Some(serde_json::Value::String(_)) => Ok(()),
        Some(_) => Err("defaultAction must be a string such as SCMP_ACT_ERRNO".into()),
        None => Err("a seccomp profile needs a defaultAction".into()),
    }
}

fn yaml_kind(v: &serde_yaml_ng::Value) -> &'static str {
    match v {
        serde_yaml_ng::Value::Null => "empty",
        serde_yaml_ng::Value::Bool(_) => "a boolean",
        serde_yaml_ng::Value::Number(_) => "a number",
        serde_yaml_ng::Value::String(_) => "a string",
        serde_yaml_ng::Value::Sequence(_) => "a list",
        serde_yaml_ng::Value::Mapping(_) => "a mapping",
        serde_yaml_ng::Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falco_items_in_any_key_order_pass() {
        let rules = b"- required_engine_version: 26\n\
- list: shells\n  items: [sh, bash]\n\
- condition: proc.name in (shells)\n  macro: spawned_shell\n\
- rule: Shell\n  desc: a shell\n  condition: spawned_shell\n  output: shell\n  priority: WARNING\n\
- required_plugin_versions:\n  - name: k8saudit\n    version: 0.7.0\n";
        assert_eq!(check(ContentKind::FalcoRules, "r.yaml", rules), Ok(()));
        assert_eq!(check(ContentKind::FalcoRules, "empty.yaml", b""), Ok(()));
        assert_eq!(check(ContentKind::FalcoRules, "e.yml", b"[]"), Ok(()));
    }

    #[test]
    fn falco_rules_that_are_not_rules_fail_with_the_item() {
        let e = check(ContentKind::FalcoRules, "r.yaml", b"rule: x\n").unwrap_err();
        assert!(e.contains("YAML list") && e.contains("a mapping"), "{e}");
        let e = check(ContentKind::FalcoRules, "r.yaml", b"- rule: a\n- nope: 1\n").unwrap_err();
        assert!(e.contains("item 2") && e.contains("nope"), "{e}");
        let e = check(ContentKind::FalcoRules, "r.yaml", b"- just a string\n").unwrap_err();
        assert!(e.contains("item 1 is a string"), "{e}");
        let e = check(ContentKind::FalcoRules, "r.yaml", b"- rule: [unclosed\n").unwrap_err();
        assert!(e.starts_with("not valid YAML"), "{e}");
    }

    #[test]
    fn only_yaml_files_of_falco_rules_sources_are_checked() {
        assert_eq!(check(ContentKind::FalcoRules, "README.md", b"# hi"), Ok(()));
        assert_eq!(check(ContentKind::Generic, "x.yaml", b"rule: x"), Ok(()));
    }

    #[test]
    fn seccomp_profiles_need_a_default_action() {
        let ok = br#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[]}"#;
        assert_eq!(check(ContentKind::Seccomp, "p.json", ok), Ok(()));
        let e = check(ContentKind::Seccomp, "p.json", br#"{"syscalls":[]}"#).unwrap_err();
        assert!(e.contains("defaultAction"), "{e}");
        let e = check(ContentKind::Seccomp, "p.json", b"{nope").unwrap_err();
        assert!(e.starts_with("not valid JSON"), "{e}");
        let e = check(ContentKind::Seccomp, "p.json", br#"{"defaultAction":1}"#).unwrap_err();
        assert!(e.contains("must be a string"), "{e}");
    }

    /// The real upstream rules files (read in place, never copied) must pass.
    /// Set OCISYNC_FALCO_TESTDATA to check another directory.
    #[test]
    fn upstream_falco_rules_pass() {
        let dir = std::env::var("OCISYNC_FALCO_TESTDATA")
            .unwrap_or_else(|_| "../shared/testdata/falco".into());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("skipped: no upstream Falco rules at {dir}");
            return;
        };
        let mut checked = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let bytes = std::fs::read(&path).unwrap();
                let name = path.display().to_string();
                assert_eq!(
                    check(ContentKind::FalcoRules, &name, &bytes),
                    Ok(()),
                    "{name}"
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "no .yaml files in {dir}");
    }
}
