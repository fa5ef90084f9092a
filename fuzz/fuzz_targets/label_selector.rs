//! Node label selectors, as a RuleBundle's `nodeFiles.nodeSelector` carries them (JSON in
//! the object), matched against a node's labels.
//!
//! Input: a JSON object `{"selector": <LabelSelector>, "labels": {<node labels>}}`.
//!
//! Invariants: a selector written back as JSON parses to the same selector and matches
//! the same nodes; matching agrees with the Kubernetes rules written out here (every
//! `matchLabels` pair present; `In`, `NotIn`, `Exists`, `DoesNotExist`; any other operator
//! selects nothing); an empty selector selects every node; no selector selects every node.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use ocisync::api::rule_bundle::{LabelSelector, LabelSelectorRequirement, NodeFilesTarget};

#[derive(serde::Deserialize)]
struct Input {
    selector: LabelSelector,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(Input { selector, labels }) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    let matched = selector.matches(&labels);
    let written = serde_json::to_string(&selector).expect("a selector serialises");
    let again: LabelSelector = serde_json::from_str(&written).expect("a written selector parses");
    assert_eq!(again, selector, "through {written}");
    assert_eq!(again.matches(&labels), matched);
    assert_eq!(
        matched,
        expected(&selector, &labels),
        "{written} on {labels:?}"
    );
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        assert!(matched, "an empty selector selects every node");
    }
    let target = |node_selector| NodeFilesTarget {
        directory: "/etc/falco".into(),
        node_selector,
    };
    assert_eq!(target(Some(selector)).selects(&labels), matched);
    assert!(target(None).selects(&labels));
});

fn expected(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k).is_some_and(|l| l == v));
    pairs && selector.match_expressions.iter().all(|r| holds(r, labels))
}

fn holds(r: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let listed = value.is_some_and(|v| r.values.iter().any(|x| x == v));
    match r.operator.as_str() {
        "In" => listed,
        "NotIn" => !listed,
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}
