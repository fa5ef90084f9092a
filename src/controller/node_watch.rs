//! The Nodes as the controller needs them: names and labels only (a Node's metadata is
//! mostly annotations and managed fields, and its status is never read), and, for each
//! change, the RuleBundles whose node selection it changes: a relabel that moves no
//! selection wakes no bundle.

use std::collections::BTreeMap;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::api::RuleBundle;

pub type Labels = BTreeMap<String, String>;

/// The Nodes' names and labels, and the bundles to wake as they change.
pub fn watch(
    client: Client,
    bundles: reflector::Store<RuleBundle>,
) -> (
    reflector::Store<PartialObjectMeta<Node>>,
    impl Stream<Item = ObjectRef<RuleBundle>>,
) {
    let (reader, mut writer) = reflector::store();
    let known = reader.clone();
    let mut listed = false;
    let events = watcher(
        Api::<PartialObjectMeta<Node>>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .backoff(crate::backoff::controller_watch())
    .modify(keep_labels_only);
    let touched = events
        .map(move |event| {
            let woken = match event {
                Ok(event) => {
                    let woken = woken_by(&event, &known, &bundles, listed);
                    listed |= matches!(event, watcher::Event::InitDone);
                    writer.apply_watcher_event(&event);
                    woken
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Node watch");
                    Vec::new()
                }
            };
            futures_util::stream::iter(woken)
        })
        .flatten();
    (reader, touched)
}

/// What the controller keeps of a Node.
pub fn keep_labels_only(node: &mut PartialObjectMeta<Node>) {
    let meta = std::mem::take(&mut node.metadata);
    node.metadata = ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        ..Default::default()
    };
}

/// The bundles one event of the Nodes' watch wakes, `known` holding the Nodes before it.
/// Until the first list is complete (`listed`), and after each relist (a Node may have gone
/// unseen), every bundle with a `nodeFiles` target.
fn woken_by(
    event: &watcher::Event<PartialObjectMeta<Node>>,
    known: &reflector::Store<PartialObjectMeta<Node>>,
    bundles: &reflector::Store<RuleBundle>,
    listed: bool,
) -> Vec<ObjectRef<RuleBundle>> {
    let before = |node: &PartialObjectMeta<Node>| {
        known
            .get(&ObjectRef::from_obj(node))
            .map(|n| n.labels().clone())
    };
    let (old, new) = match event {
        watcher::Event::Apply(node) => (before(node), Some(node.labels().clone())),
        watcher::Event::InitApply(node) if listed => (before(node), Some(node.labels().clone())),
        watcher::Event::Delete(node) => (Some(node.labels().clone()), None),
        watcher::Event::InitDone => {
            return touched(&bundles.state(), |_| true);
        }
        watcher::Event::Init | watcher::Event::InitApply(_) => return Vec::new(),
    };
    if old == new {
        return Vec::new(); // a status or annotation change: no bundle scan
    }
    relabeled(&bundles.state(), old.as_ref(), new.as_ref())
}

/// The bundles whose `nodeFiles` selection of a node changes as its labels go from `old`
/// to `new` (`None`: the node does not exist).
pub fn relabeled(
    bundles: &[std::sync::Arc<RuleBundle>],
    old: Option<&Labels>,
    new: Option<&Labels>,
) -> Vec<ObjectRef<RuleBundle>> {
    if old == new {
        return Vec::new();
    }
    touched(bundles, |b| {
        let Some(target) = &b.spec.node_files else {
            return false;
        };
        let selected = |labels: Option<&Labels>| labels.is_some_and(|l| target.selects(l));
        selected(old) != selected(new)
    })
}

/// The bundles with a `nodeFiles` target for which `wake` holds.
fn touched(
    bundles: &[std::sync::Arc<RuleBundle>],
    wake: impl Fn(&RuleBundle) -> bool,
) -> Vec<ObjectRef<RuleBundle>> {
    bundles
        .iter()
        .filter(|b| b.spec.node_files.is_some() && wake(b))
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rule_bundle::{LabelSelector, NodeFilesTarget, RuleBundleSpec};
    use std::sync::Arc;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn bundle(name: &str, selector: Option<&[(&str, &str)]>, node_files: bool) -> Arc<RuleBundle> {
        let target = NodeFilesTarget {
            node_selector: selector.map(|s| LabelSelector {
                match_labels: labels(s),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = RuleBundleSpec {
            node_files: node_files.then_some(target),
            ..Default::default()
        };
        let mut b = RuleBundle::new(name, spec);
        b.metadata.namespace = Some("team".into());
        Arc::new(b)
    }

    fn names(refs: Vec<ObjectRef<RuleBundle>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_relabel_wakes_only_the_bundles_whose_selection_moves() {
        let bundles = [
            bundle("zone-a", Some(&[("zone", "a")]), true),
            bundle("zone-b", Some(&[("zone", "b")]), true),
            bundle("zone-c", Some(&[("zone", "c")]), true),
            bundle("every-node", None, true),
            bundle("config-map-only", None, false),
        ];
        let a = labels(&[("zone", "a"), ("x", "1")]);
        let b = labels(&[("zone", "b"), ("x", "1")]);
        assert_eq!(
            names(relabeled(&bundles, Some(&a), Some(&b))),
            ["zone-a", "zone-b"]
        );
        // a label no selector looks at
        let a2 = labels(&[("zone", "a"), ("x", "2")]);
        assert!(relabeled(&bundles, Some(&a), Some(&a2)).is_empty());
        assert!(relabeled(&bundles, Some(&a), Some(&a)).is_empty());
        // a new node, a deleted one
        assert_eq!(
            names(relabeled(&bundles, None, Some(&a))),
            ["zone-a", "every-node"]
        );
        assert_eq!(
            names(relabeled(&bundles, Some(&b), None)),
            ["zone-b", "every-node"]
        );
    }

    #[test]
    fn only_names_and_labels_are_kept() {
        let mut node = PartialObjectMeta::<Node> {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                uid: Some("u1".into()),
                labels: Some(labels(&[("zone", "a")])),
                annotations: Some(labels(&[("big", &"x".repeat(10_000))])),
                managed_fields: Some(vec![Default::default(); 4]),
                ..Default::default()
            },
            ..Default::default()
        };
        keep_labels_only(&mut node);
        assert_eq!(node.name_any(), "n1");
        assert_eq!(node.labels(), &labels(&[("zone", "a")]));
        assert!(node.metadata.annotations.is_none() && node.metadata.managed_fields.is_none());
    }
}
