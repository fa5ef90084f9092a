//! Which RuleBundles take files from which ArtifactSource, kept up to date from the
//! bundles' watch events, so a source's new revision wakes its bundles by lookup instead of
//! a scan of every bundle (quadratic over a large cluster's source events).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::api::RuleBundle;

/// (namespace, name)
type Key = (String, String);

#[derive(Default)]
pub struct SourceUsers(Mutex<Users>);

#[derive(Default)]
struct Users {
    /// (namespace, source name) → the bundles that name it.
    by_source: HashMap<Key, BTreeSet<String>>,
    /// (namespace, bundle name) → the source names it lists.
    by_bundle: HashMap<Key, Vec<String>>,
    /// The bundles a relist has listed so far (between `Init` and `InitDone`).
    relisted: Option<HashSet<Key>>,
}

impl SourceUsers {
    /// Follows one event of the bundles' watch.
    pub fn apply(&self, event: &watcher::Event<RuleBundle>) {
        if let Ok(mut users) = self.0.lock() {
            users.apply(event);
        }
    }

    /// The bundles in `namespace` that list the source `name`.
    pub fn of(&self, namespace: &str, name: &str) -> Vec<ObjectRef<RuleBundle>> {
        let Ok(users) = self.0.lock() else {
            return Vec::new();
        };
        let key = (namespace.to_string(), name.to_string());
        users
            .by_source
            .get(&key)
            .into_iter()
            .flatten()
            .map(|bundle| ObjectRef::new(bundle).within(namespace))
            .collect()
    }
}

impl Users {
    fn apply(&mut self, event: &watcher::Event<RuleBundle>) {
        match event {
            watcher::Event::Apply(b) => self.set(b),
            watcher::Event::InitApply(b) => {
                let key = key_of(b);
                self.relisted.get_or_insert_default().insert(key);
                self.set(b);
            }
            watcher::Event::Delete(b) => self.remove(&key_of(b)),
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let listed = self.relisted.take().unwrap_or_default();
                let gone: Vec<Key> = self
                    .by_bundle
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.remove(&key);
                }
            }
        }
    }

    fn set(&mut self, bundle: &RuleBundle) {
        let key = key_of(bundle);
        let mut sources: Vec<String> = bundle
            .spec
            .sources
            .iter()
            .map(|s| s.source_ref.name.clone())
            .collect();
        sources.sort();
        sources.dedup();
        if self.by_bundle.get(&key) == Some(&sources) {
            return;
        }
        self.remove(&key);
        for source in &sources {
            self.by_source
                .entry((key.0.clone(), source.clone()))
                .or_default()
                .insert(key.1.clone());
        }
        self.by_bundle.insert(key, sources);
    }

    fn remove(&mut self, key: &Key) {
        for source in self.by_bundle.remove(key).unwrap_or_default() {
            let source = (key.0.clone(), source);
            if let Some(bundles) = self.by_source.get_mut(&source) {
                bundles.remove(&key.1);
                if bundles.is_empty() {
                    self.by_source.remove(&source);
                }
            }
        }
    }
}

fn key_of(bundle: &RuleBundle) -> Key {
    (bundle.namespace().unwrap_or_default(), bundle.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::artifact_source::LocalObjectReference;
    use crate::api::rule_bundle::{BundleSource, RuleBundleSpec};

    fn bundle(namespace: &str, name: &str, sources: &[&str]) -> RuleBundle {
        let spec = RuleBundleSpec {
            sources: sources
                .iter()
                .map(|s| BundleSource {
                    source_ref: LocalObjectReference {
                        name: s.to_string(),
                    },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut b = RuleBundle::new(name, spec);
        b.metadata.namespace = Some(namespace.into());
        b
    }

    fn names(users: &SourceUsers, namespace: &str, source: &str) -> Vec<String> {
        users
            .of(namespace, source)
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect()
    }

    #[test]
    fn bundles_are_found_by_the_sources_they_list_in_their_namespace() {
        let users = SourceUsers::default();
        users.apply(&watcher::Event::Apply(bundle("a", "b1", &["s", "t"])));
        users.apply(&watcher::Event::Apply(bundle("a", "b2", &["s", "s"])));
        users.apply(&watcher::Event::Apply(bundle("b", "b1", &["s"])));
        assert_eq!(names(&users, "a", "s"), ["a/b1", "a/b2"]);
        assert_eq!(names(&users, "a", "t"), ["a/b1"]);
        assert_eq!(names(&users, "b", "s"), ["b/b1"]);
        assert!(names(&users, "b", "t").is_empty());
        // a bundle that drops a source, and one deleted
        users.apply(&watcher::Event::Apply(bundle("a", "b1", &["u"])));
        users.apply(&watcher::Event::Delete(bundle("a", "b2", &["s"])));
        assert!(names(&users, "a", "s").is_empty());
        assert!(names(&users, "a", "t").is_empty());
        assert_eq!(names(&users, "a", "u"), ["a/b1"]);
    }

    #[test]
    fn a_relist_forgets_the_bundles_it_does_not_list() {
        let users = SourceUsers::default();
        users.apply(&watcher::Event::Apply(bundle("a", "gone", &["s"])));
        users.apply(&watcher::Event::Apply(bundle("a", "kept", &["s"])));
        users.apply(&watcher::Event::Init);
        users.apply(&watcher::Event::InitApply(bundle("a", "kept", &["s"])));
        // until the relist is done, what it has not listed yet is still known
        assert_eq!(names(&users, "a", "s"), ["a/gone", "a/kept"]);
        users.apply(&watcher::Event::InitApply(bundle("a", "new", &["t"])));
        users.apply(&watcher::Event::InitDone);
        assert_eq!(names(&users, "a", "s"), ["a/kept"]);
        assert_eq!(names(&users, "a", "t"), ["a/new"]);
    }
}
