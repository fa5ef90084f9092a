//! Checks by kind, run on every selected file before anything is written: a Falco rules
//! file must be a YAML list of Falco items, a seccomp profile JSON with a `defaultAction`.
//! Other kinds and other files pass as they are.
//!
//! Checks hold memory in proportion to what they parse, so both are bounded: a checked file
//! is at most [`MAX_CHECKED_BYTES`] (the caller tests the size before reading it), and a
//! YAML document is measured with its aliases followed before it is built, so that a few
//! kilobytes of anchors and aliases ("billion laughs") cannot expand into gigabytes.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, Visitor};

use crate::oci::content::ContentKind;

/// The largest file a content check reads (a Falco rules file for nodes can be larger than
/// a ConfigMap's 1 MiB).
pub const MAX_CHECKED_BYTES: u64 = 8 * 1024 * 1024;

/// The most YAML parser events a checked document may need, as [`yaml_events_estimate`]
/// counts them: the parser holds every event of a document (about 130 bytes each) before
/// anything is measured. Upstream Falco rules files need under 5% of it.
pub const MAX_YAML_EVENTS: u64 = 200_000;

/// The most a YAML document may hold once its aliases are followed, as an estimate of the
/// memory its parsed form takes: [`YAML_NODE_COST`] per node plus the length of each
/// scalar. Upstream Falco rules files use about 2% of it.
pub const MAX_YAML_EXPANDED: u64 = 16 * 1024 * 1024;

/// What one parsed YAML node (a value in a list or map, with its share of the container)
/// is counted as.
pub const YAML_NODE_COST: u64 = 96;

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

/// Whether a file of `size` bytes may be read for [`check`]; checked before reading it.
pub fn size_ok(kind: ContentKind, path: &str, size: u64) -> Result<(), String> {
    if is_checked(kind, path) && size > MAX_CHECKED_BYTES {
        return Err(format!(
            "it is {size} bytes, over the {MAX_CHECKED_BYTES} bytes a content check reads"
        ));
    }
    Ok(())
}

/// Checks one file of a source of `kind`. The error says what is wrong, without the path
/// (the caller names the file).
pub fn check(kind: ContentKind, path: &str, bytes: &[u8]) -> Result<(), String> {
    size_ok(kind, path, bytes.len() as u64)?;
    match kind {
        _ if !is_checked(kind, path) => Ok(()),
        ContentKind::FalcoRules => falco_rules(bytes),
        ContentKind::Seccomp => seccomp_profile(bytes),
        _ => Ok(()),
    }
}

/// A Falco rules file: a YAML list (empty is fine) of mappings, each with a known item key.
pub fn falco_rules(bytes: &[u8]) -> Result<(), String> {
    let doc = bounded_yaml(bytes)?;
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

/// Parses one YAML document, after measuring it with its aliases followed: a document
/// over [`MAX_YAML_EXPANDED`] is refused before anything is built. The measuring pass
/// allocates nothing beyond the parser's own event list, which is in proportion to the
/// text, and stops as soon as the budget is spent.
pub fn bounded_yaml(bytes: &[u8]) -> Result<serde_yaml_ng::Value, String> {
    let events = yaml_events_estimate(bytes);
    if events > MAX_YAML_EVENTS {
        return Err(format!(
            "its {} bytes of YAML hold about {events} values, over the {MAX_YAML_EVENTS} a content check parses: split the file",
            bytes.len()
        ));
    }
    let (spent, measured) = measure(bytes);
    // serde_yaml_ng's own limit on alias uses (100 per event) can stop it first; it has no
    // error kind to match, only its message
    let repeated = measured
        .as_ref()
        .is_err_and(|e| e.to_string().contains("repetition limit exceeded"));
    if spent > MAX_YAML_EXPANDED || repeated {
        return Err(format!(
            "its {} bytes of YAML make more than {MAX_YAML_EXPANDED} bytes of nodes once aliases are followed (each node counts {YAML_NODE_COST} bytes; an alias bomb, or a file of very many small items: split it)",
            bytes.len()
        ));
    }
    measured.map_err(|e| format!("not valid YAML: {e}"))?;
    serde_yaml_ng::from_slice(bytes).map_err(|e| format!("not valid YAML: {e}"))
}

/// What a document costs with its aliases followed (stopping past the budget).
fn measure(bytes: &[u8]) -> (u64, Result<(), serde_yaml_ng::Error>) {
    let spent = Cell::new(0u64);
    let measured = Measure { spent: &spent }
        .deserialize(serde_yaml_ng::Deserializer::from_slice(bytes))
        .map(|_| ());
    (spent.get(), measured)
}

/// An upper estimate of the parser events a YAML text makes, from one pass over its bytes:
/// lines that are blank or comments make none; every other line counts a few, and each
/// separator or bracket on it (`,` `:` `[` `{` `-`) a few more, quoted or not.
pub fn yaml_events_estimate(bytes: &[u8]) -> u64 {
    bytes
        .split(|b| *b == b'\n')
        .map(|line| {
            let text = line.trim_ascii_start();
            if text.is_empty() || text.starts_with(b"#") {
                return 0;
            }
            let marks = text
                .iter()
                .filter(|b| matches!(b, b',' | b':' | b'[' | b'{' | b'-'))
                .count() as u64;
            4 + 2 * marks
        })
        .fold(0u64, u64::saturating_add)
}

/// Visits every node of a document, following aliases as often as they are used, and adds
/// its cost to `spent`; fails once `spent` passes [`MAX_YAML_EXPANDED`].
#[derive(Clone, Copy)]
struct Measure<'a> {
    spent: &'a Cell<u64>,
}

impl Measure<'_> {
    fn spend<E: de::Error>(self, scalar_len: usize) -> Result<(), E> {
        let spent = self
            .spent
            .get()
            .saturating_add(YAML_NODE_COST)
            .saturating_add(scalar_len as u64);
        self.spent.set(spent);
        if spent > MAX_YAML_EXPANDED {
            return Err(E::custom("document too large once aliases are followed"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Measure<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Measure<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.spend(v.len())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.spend(v.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.spend(0)?;
        self.deserialize(d)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.spend(0)?;
        self.deserialize(d)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // a tagged value (`!tag value`)
        self.spend(0)?;
        let (IgnoredAny, variant) = data.variant()?;
        de::VariantAccess::newtype_variant_seed(variant, self)
    }
}

/// A seccomp profile: a JSON object with a string `defaultAction`. Read into a struct that
/// keeps nothing but whether `defaultAction` is a string, so memory stays flat.
pub fn seccomp_profile(bytes: &[u8]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Profile {
        #[serde(rename = "defaultAction")]
        default_action: Option<IsString>,
    }
    // serde would also read a struct from a JSON array
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err("a seccomp profile is a JSON object with a defaultAction".into());
    }
    // JSON is UTF-8; serde_json checks only the strings it keeps, not those it skips
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(format!("not valid JSON: not UTF-8 ({e})"));
    }
    let doc: Profile = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    match doc.default_action {
        Some(IsString(true)) => Ok(()),
        Some(IsString(false)) => {
            Err("defaultAction must be a string such as SCMP_ACT_ERRNO".into())
        }
        None => Err("a seccomp profile needs a defaultAction".into()),
    }
}

/// Whether a JSON value is a string; anything else is skipped without being kept.
struct IsString(bool);

impl<'de> serde::Deserialize<'de> for IsString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IsString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<IsString, E> {
                Ok(IsString(true))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_unit<E: de::Error>(self) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<IsString, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IsString(false))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<IsString, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IsString(false))
            }
        }
        d.deserialize_any(V)
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

    /// The shape seen in the field: one 10,000-item list, aliased 10,000 times (~110 KB).
    fn wide_alias_bomb() -> Vec<u8> {
        let items: Vec<String> = (0..10_000).map(|i| format!("x{i}")).collect();
        let aliases = vec!["*a"; 10_000].join(", ");
        format!(
            "- list: base\n  items: &a [{}]\n- list: bomb\n  items: [{aliases}]\n",
            items.join(", ")
        )
        .into_bytes()
    }

    /// The classic nested form: nine levels of nine aliases.
    fn nested_alias_bomb() -> Vec<u8> {
        let mut doc = String::from(
            "- list: l0\n  items: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
        );
        for level in 1..10 {
            let prev = vec![format!("*l{}", level - 1); 9].join(", ");
            doc.push_str(&format!("- list: l{level}\n  items: &l{level} [{prev}]\n"));
        }
        doc.into_bytes()
    }

    #[test]
    fn alias_bombs_are_refused_quickly() {
        for (name, doc) in [("wide", wide_alias_bomb()), ("nested", nested_alias_bomb())] {
            assert!(doc.len() < 128 * 1024, "{name}: {} bytes", doc.len());
            let started = std::time::Instant::now();
            let e = check(ContentKind::FalcoRules, "r.yaml", &doc).unwrap_err();
            assert!(e.contains("aliases are followed"), "{name}: {e}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{name}: {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn modest_aliases_are_followed_and_pass() {
        let doc = b"- list: shells\n  items: &sh [sh, bash, zsh]\n- list: more_shells\n  items: [*sh, *sh]\n- macro: m\n  condition: &c proc.name in (shells)\n- rule: r\n  condition: *c\n  output: x\n  priority: WARNING\n  desc: d\n";
        assert_eq!(check(ContentKind::FalcoRules, "r.yaml", doc), Ok(()));
        // a tagged value is measured too
        assert_eq!(
            check(ContentKind::FalcoRules, "r.yaml", b"- rule: !t x\n"),
            Ok(())
        );
    }

    #[test]
    fn the_expansion_budget_is_exact() {
        // `[a, a, ...]`: one node for the list, one per item of 1 byte
        let per_item = YAML_NODE_COST + 1;
        let fits = ((MAX_YAML_EXPANDED - YAML_NODE_COST) / per_item) as usize;
        let doc = |n: usize| format!("[{}]", vec!["a"; n].join(","));
        let (spent, measured) = measure(doc(fits).as_bytes());
        assert!(spent <= MAX_YAML_EXPANDED && measured.is_ok(), "{spent}");
        assert!(measure(doc(fits + 1).as_bytes()).0 > MAX_YAML_EXPANDED);
    }

    #[test]
    fn checked_files_over_the_read_limit_are_refused_by_size() {
        let big = MAX_CHECKED_BYTES + 1;
        let e = size_ok(ContentKind::FalcoRules, "r.yaml", big).unwrap_err();
        assert!(e.contains("over the"), "{e}");
        assert!(size_ok(ContentKind::FalcoRules, "r.yaml", MAX_CHECKED_BYTES).is_ok());
        // files that are not checked are not read by the check, whatever their size
        assert!(size_ok(ContentKind::FalcoRules, "plugin.so", u64::MAX).is_ok());
        assert!(size_ok(ContentKind::Generic, "x.yaml", u64::MAX).is_ok());
        let e = check(ContentKind::Seccomp, "p.json", &vec![b' '; big as usize]).unwrap_err();
        assert!(e.contains("over the"), "{e}");
    }

    #[test]
    fn large_files_are_parsed_only_when_their_values_are_few() {
        // 5 MiB of comments and long strings: a few values, parsed
        let mut quiet = String::new();
        while quiet.len() < 5 << 20 {
            quiet.push_str("# a comment line that takes some room, as generated rules do\n");
        }
        quiet.push_str(&format!(
            "- list: long\n  items: [\"{}\"]\n",
            "y".repeat(1 << 20)
        ));
        assert!(yaml_events_estimate(quiet.as_bytes()) < 100);
        falco_rules(quiet.as_bytes()).unwrap();
        // 600 KB of one-character items: refused before the parser holds them
        let dense = format!("- list: big\n  items: [{}]\n", "y,".repeat(300_000));
        let e = falco_rules(dense.as_bytes()).unwrap_err();
        assert!(e.contains("split the file"), "{e}");
        // block style counts too
        let block: String = (0..60_000).map(|i| format!("- list: l{i}\n")).collect();
        assert!(yaml_events_estimate(block.as_bytes()) > MAX_YAML_EVENTS);
    }

    /// Found by the `content_check` fuzz target: a byte that is not UTF-8 inside a string
    /// the check skips (a syscall name) passed, though the profile is not JSON.
    #[test]
    fn seccomp_profiles_must_be_utf8() {
        let profile =
            b"{\"defaultAction\":\"SCMP_ACT_ERRNO\",\"syscalls\":[{\"names\":[\"wri\x8ee\"]}]}";
        let e = seccomp_profile(profile).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
        assert!(
            seccomp_profile(b"{\"defaultAction\":\"SCMP_ACT_LOG\",\"x\":\"\xc3\xa9\"}").is_ok()
        );
    }

    #[test]
    fn seccomp_profiles_are_objects() {
        let e = check(ContentKind::Seccomp, "p.json", br#"["SCMP_ACT_ERRNO"]"#).unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
        let ok = br#" {"syscalls":[{"names":["x"]}],"defaultAction":"SCMP_ACT_LOG"}"#;
        assert_eq!(check(ContentKind::Seccomp, "p.json", ok), Ok(()));
        let e = check(
            ContentKind::Seccomp,
            "p.json",
            br#"{"defaultAction":[1,{"a":2}]}"#,
        )
        .unwrap_err();
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
