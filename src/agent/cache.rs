//! What the agent keeps of RuleBundles: every bundle in the cluster is watched, but only the
//! bundles that select this node keep their file lists in memory, so a tenant cannot grow
//! every agent's memory with large bundles aimed at no node (or at other nodes).
//!
//! A bundle whose files were dropped is marked; should a relabel of the node make it select
//! this node before its next watch event, its whole object is read once (and kept while its
//! `resourceVersion` holds). A marked bundle is never applied as it is: without its full
//! object it waits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::{Api, Client, ResourceExt};

use super::desired::AllowList;
use crate::api::RuleBundle;

/// The annotation marking a bundle whose status file list the agent dropped.
pub const SLIMMED: &str = "ocisync.dev/agent-slimmed";

/// Trims a watched bundle to what the agent reads: `spec.nodeFiles` and the status's plan.
/// No managed fields or annotations (a `last-applied-configuration` can be as large as the
/// object), no sources or ConfigMap target (tenant-sized lists), and no file list unless
/// the bundle selects this node (`labels`, `None` while the Node is not known yet: then it
/// is kept) in a directory its namespace is granted.
pub fn slim(bundle: &mut RuleBundle, labels: Option<&BTreeMap<String, String>>, allow: &AllowList) {
    bundle.metadata.managed_fields = None;
    bundle.metadata.annotations = None;
    bundle.spec.sources = Vec::new();
    bundle.spec.config_map = None;
    let namespace = bundle.metadata.namespace.clone().unwrap_or_default();
    let needed = match (&bundle.spec.node_files, labels) {
        (None, _) => false,
        (Some(t), _) if !granted(allow, &t.directory, &namespace) => false,
        (Some(t), Some(l)) => t.selects(l),
        (Some(_), None) => true,
    };
    if !needed && let Some(status) = bundle.status.as_mut() {
        status.files = Vec::new();
        status.conditions = Vec::new();
        bundle.metadata.annotations = Some([(SLIMMED.to_string(), "true".to_string())].into());
    }
}

/// Whether `directory` is granted to `namespace` (a directory that is not a plain path is
/// refused later anyway).
fn granted(allow: &AllowList, directory: &str, namespace: &str) -> bool {
    allow
        .granted(std::path::Path::new(directory), namespace)
        .is_ok()
}

pub fn is_slimmed(bundle: &RuleBundle) -> bool {
    bundle.annotations().contains_key(SLIMMED)
}

/// Whole objects read for slimmed bundles that select this node now, by uid.
#[derive(Default)]
pub struct Whole(HashMap<String, Arc<RuleBundle>>);

impl Whole {
    /// `bundles`, with each slimmed one that selects the node now replaced by its whole
    /// object (read at most once per `resourceVersion`); one that cannot be read stays
    /// slimmed, and waits.
    pub async fn complete(
        &mut self,
        client: &Client,
        bundles: Vec<Arc<RuleBundle>>,
        labels: &BTreeMap<String, String>,
        allow: &AllowList,
    ) -> Vec<Arc<RuleBundle>> {
        let mut out = Vec::with_capacity(bundles.len());
        let mut used = HashMap::new();
        for b in bundles {
            let namespace = b.namespace().unwrap_or_default();
            let selects = b
                .spec
                .node_files
                .as_ref()
                .is_some_and(|t| t.selects(labels) && granted(allow, &t.directory, &namespace));
            if !(is_slimmed(&b) && selects) {
                out.push(b);
                continue;
            }
            let uid = b.uid().unwrap_or_default();
            let whole = match self.0.remove(&uid) {
                Some(w) if w.resource_version() == b.resource_version() => Some(w),
                _ => read(client, &b).await,
            };
            match whole {
                Some(w) => {
                    out.push(w.clone());
                    used.insert(uid, w);
                }
                None => out.push(b),
            }
        }
        self.0 = used;
        out
    }
}

async fn read(client: &Client, slimmed: &RuleBundle) -> Option<Arc<RuleBundle>> {
    let ns = slimmed.namespace()?;
    let api: Api<RuleBundle> = Api::namespaced(client.clone(), &ns);
    match api.get_opt(&slimmed.name_any()).await {
        Ok(Some(mut b)) if b.uid() == slimmed.uid() => {
            b.metadata.managed_fields = None;
            b.metadata.annotations = None;
            b.spec.sources = Vec::new();
            b.spec.config_map = None;
            Some(Arc::new(b))
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(bundle = %slimmed.name_any(), error = %crate::errors::one_line(&e), "cannot read the bundle the node now selects; it waits");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rule_bundle::{
        BundleFile, LabelSelector, NodeFilesTarget, RuleBundleSpec, RuleBundleStatus,
    };

    fn bundle(selector: Option<&str>) -> RuleBundle {
        let mut b = RuleBundle::new(
            "b",
            RuleBundleSpec {
                node_files: selector.map(|role| NodeFilesTarget {
                    directory: "/etc/falco".into(),
                    node_selector: Some(LabelSelector {
                        match_labels: [("role".to_string(), role.to_string())].into(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            },
        );
        b.metadata.annotations = Some([("big".to_string(), "x".repeat(1000))].into());
        b.metadata.namespace = Some("ns".into());
        b.spec.sources = vec![Default::default(); 2];
        b.status = Some(RuleBundleStatus {
            files: vec![BundleFile::default(); 3],
            ..Default::default()
        });
        b
    }

    #[test]
    fn only_bundles_selecting_this_node_keep_their_files() {
        let labels: BTreeMap<String, String> = [("role".into(), "w".into())].into();
        let allow = AllowList::new(&["/etc/falco=ns".into()]).unwrap();
        let files = |b: &RuleBundle| b.status.as_ref().map_or(0, |s| s.files.len());
        let mut mine = bundle(Some("w"));
        slim(&mut mine, Some(&labels), &allow);
        assert_eq!((files(&mine), is_slimmed(&mine)), (3, false));
        assert!(mine.metadata.annotations.is_none());
        assert!(
            mine.spec.sources.is_empty(),
            "tenant-sized lists are not kept"
        );
        for mut other in [bundle(Some("x")), bundle(None)] {
            slim(&mut other, Some(&labels), &allow);
            assert_eq!((files(&other), is_slimmed(&other)), (0, true));
        }
        // the node not known yet: kept
        let mut unknown = bundle(Some("x"));
        slim(&mut unknown, None, &allow);
        assert_eq!(files(&unknown), 3);
        // selected, in a directory its namespace has no grant for: refused anyway
        let mut elsewhere = bundle(Some("w"));
        elsewhere.metadata.namespace = Some("other".into());
        slim(&mut elsewhere, Some(&labels), &allow);
        assert_eq!((files(&elsewhere), is_slimmed(&elsewhere)), (0, true));
    }
}
