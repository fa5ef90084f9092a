//! How a file's path inside an artifact becomes its name in a bundle: the ConfigMap key,
//! and the file name on nodes. A bundle is a flat set of files.
//!
//! The rule: every `/` and every character outside `[-._a-zA-Z0-9]` becomes `_`, and a
//! leading `..` becomes `_.` (Kubernetes reserves `..` names for the projected-volume
//! machinery). So `falco_rules.yaml` stays `falco_rules.yaml` and `rules/k8s audit.yaml`
//! becomes `rules_k8s_audit.yaml`. Two paths that end up with one name are a conflict, never
//! a silent overwrite.

/// The longest key Kubernetes accepts.
pub const MAX_KEY_LEN: usize = 253;

/// The key for a path, or why there is none.
pub fn key_for(path: &str) -> Result<String, String> {
    let mut key: String = path
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() || key == "." {
        return Err(format!("path {path:?} has no usable file name"));
    }
    if key.starts_with("..") {
        key.replace_range(0..1, "_");
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "path {path:?} is {} characters as a file name, over the limit of {MAX_KEY_LEN}",
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_flat_and_valid() {
        assert_eq!(key_for("falco_rules.yaml").unwrap(), "falco_rules.yaml");
        assert_eq!(
            key_for("rules/k8s audit.yaml").unwrap(),
            "rules_k8s_audit.yaml"
        );
        assert_eq!(key_for("..data").unwrap(), "_.data");
        assert_eq!(key_for("..").unwrap(), "_.");
        assert_eq!(key_for("ünï.json").unwrap(), "_n_.json");
        assert!(key_for("").is_err());
        assert!(key_for(".").is_err());
        assert!(key_for(&"a".repeat(254)).is_err());
        assert_eq!(key_for(&"a".repeat(253)).unwrap().len(), 253);
    }

    #[test]
    fn every_key_matches_the_kubernetes_rule() {
        for path in ["a/b/c", "x y", "...z", "-", "a:b@c", "日本.yaml", ".hidden"] {
            let k = key_for(path).unwrap();
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
                "{k}"
            );
            assert!(
                !k.starts_with("..") && k != "." && k.len() <= MAX_KEY_LEN,
                "{k}"
            );
        }
    }
}
