//! `ocisync_objects`: how many ArtifactSources and RuleBundles the leader's cache holds, by
//! their Ready condition's status and reason, so alerts can say "a source has not been
//! Ready for 10 minutes" from the objects themselves. Label values come from the code's
//! own reason lists (anything else counts as `Other`), so series stay bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::context::Context;
use crate::api::condition::Condition;
use crate::api::reason::{BundleReason, SourceReason};
use crate::metrics::ObjectCount;

/// How often the counts are refreshed.
const PERIOD: Duration = Duration::from_secs(15);

/// Counts (kind, status, reason) over each object's conditions; pure.
pub fn count<'a>(
    kind: &'static str,
    objects: impl Iterator<Item = &'a [Condition]>,
    reason_of: fn(&str) -> &'static str,
) -> Vec<ObjectCount> {
    let mut counts: BTreeMap<(&'static str, &'static str, &'static str), u64> = BTreeMap::new();
    for conditions in objects {
        let ready = conditions.iter().find(|c| c.type_ == "Ready");
        let (status, reason) = match ready {
            Some(c) => (status_of(&c.status), reason_of(&c.reason)),
            None => ("Unknown", ""),
        };
        *counts.entry((kind, status, reason)).or_default() += 1;
    }
    counts.into_iter().collect()
}

fn status_of(status: &str) -> &'static str {
    match status {
        "True" => "True",
        "False" => "False",
        _ => "Unknown",
    }
}

fn source_reason(r: &str) -> &'static str {
    SourceReason::parse(r).map_or("Other", |r| r.as_str())
}

fn bundle_reason(r: &str) -> &'static str {
    BundleReason::parse(r).map_or("Other", |r| r.as_str())
}

/// Refreshes the counts every [`PERIOD`] until `stop`; clears them when it ends.
pub fn spawn(ctx: Arc<Context>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let sources = ctx.sources.state();
                    let bundles = ctx.bundles.state();
                    let of_sources = sources.iter().map(|s| conditions(s.status.as_ref().map(|s| &s.conditions)));
                    let of_bundles = bundles.iter().map(|b| conditions(b.status.as_ref().map(|s| &s.conditions)));
                    let mut all = count("ArtifactSource", of_sources, source_reason);
                    all.extend(count("RuleBundle", of_bundles, bundle_reason));
                    ctx.metrics.set_objects(&all);
                }
            }
        }
        ctx.metrics.set_objects(&[]);
    })
}

fn conditions(c: Option<&Vec<Condition>>) -> &[Condition] {
    c.map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: &str, reason: &str) -> Vec<Condition> {
        vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            observed_generation: None,
            last_transition_time: String::new(),
            reason: reason.into(),
            message: String::new(),
        }]
    }

    #[test]
    fn objects_are_counted_by_ready_status_and_a_known_reason() {
        let objects = [
            ready("True", "Succeeded"),
            ready("True", "Succeeded"),
            ready("False", "Unauthorized"),
            ready("False", "made up by someone"),
            ready("Maybe", "Succeeded"),
            vec![],
        ];
        let counts = count(
            "ArtifactSource",
            objects.iter().map(Vec::as_slice),
            source_reason,
        );
        let k = "ArtifactSource";
        assert_eq!(
            counts,
            vec![
                ((k, "False", "Other"), 1),
                ((k, "False", "Unauthorized"), 1),
                ((k, "True", "Succeeded"), 2),
                ((k, "Unknown", ""), 1),
                ((k, "Unknown", "Succeeded"), 1),
            ]
        );
    }
}
