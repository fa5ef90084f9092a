//! Kubernetes Events (events.k8s.io/v1) on sources and bundles. The first Event of an
//! object, type, reason, action and note is created; a repeat within [`SERIES_TTL`]
//! patches that Event's series (count and last time, as `kubectl events` shows it), as
//! client-go's recorder does.
//!
//! kube-runtime's `Recorder` keeps every Event whole for six minutes and scans them all at
//! each publish: quadratic in the Events of a large cluster (a tenth of the controller's CPU
//! at 2,000 sources and bundles). Here the memory is a hash and the Event's name per key,
//! swept at most once per [`SWEEP_EVERY`], and at most [`MAX_SERIES`] keys are held.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Client, ResourceExt};

/// How long a repeat is counted into its first Event (kube-runtime's and client-go's time).
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// The longest between two sweeps of expired keys.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most keys remembered (about 100 bytes each); past it, repeats start new Events.
pub const MAX_SERIES: usize = 65_536;

pub struct Recorder {
    client: Client,
    reporter: Reporter,
    keys: RandomState,
    series: Mutex<Series>,
}

/// What one publish does.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Create,
    /// Patch the Event `name` to count `count` occurrences.
    Count {
        name: String,
        count: i32,
    },
}

/// The Events published lately, by key.
#[derive(Default)]
pub struct Series {
    by_key: HashMap<u64, Seen>,
    swept: Option<Instant>,
}

#[derive(Clone, Debug)]
struct Seen {
    name: String,
    count: i32,
    last: Instant,
}

impl Series {
    /// What publishing the Event `key` at `now` does.
    pub fn step(&mut self, key: u64, now: Instant) -> Step {
        self.sweep(now);
        match self.by_key.get(&key) {
            Some(seen) if now.saturating_duration_since(seen.last) < SERIES_TTL => Step::Count {
                name: seen.name.clone(),
                count: seen.count.saturating_add(1),
            },
            _ => Step::Create,
        }
    }

    /// Remembers that the Event `key` named `name` counts `count` at `now`.
    pub fn record(&mut self, key: u64, name: String, count: i32, now: Instant) {
        if self.by_key.len() >= MAX_SERIES && !self.by_key.contains_key(&key) {
            self.sweep(now); // at most once a minute, like any sweep
            if self.by_key.len() >= MAX_SERIES {
                self.by_key.clear(); // bounded: repeats start new Events for a while
            }
        }
        let last = now;
        self.by_key.insert(key, Seen { name, count, last });
    }

    /// Forgets the Events not repeated within [`SERIES_TTL`], at most once a [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.by_key
            .retain(|_, seen| now.saturating_duration_since(seen.last) < SERIES_TTL);
    }

    /// How many keys are remembered.
    pub fn remembered(&self) -> usize {
        self.by_key.len()
    }
}

/// An Event's note is at most 1 KiB (the API server refuses longer ones).
const MAX_NOTE_BYTES: usize = 1000;

/// The longest an Event name's prefix (the object's name) may be: the whole name, with
/// its `.<timestamp>` suffix, stays within the API server's 253 characters.
const MAX_NAME_PREFIX: usize = 200;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The note as the Event carries it.
fn note_of(event: &Event) -> Option<&str> {
    event.note.as_deref().map(|n| truncated(n, MAX_NOTE_BYTES))
}

/// An Event's key: what a repeat shares with its first, hashed with this process's
/// random keys (a tenant cannot aim a collision at another object's series).
pub fn key_of(keys: &RandomState, event: &Event, object: &ObjectReference) -> u64 {
    keys.hash_one((
        &object.kind,
        &object.namespace,
        &object.name,
        &object.uid,
        matches!(event.type_, EventType::Warning),
        &event.reason,
        &event.action,
        note_of(event),
    ))
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            keys: RandomState::new(),
            series: Mutex::default(),
        }
    }

    /// Creates the Event on `object`, or counts a repeat into the first one.
    pub async fn publish(&self, event: &Event, object: &ObjectReference) -> kube::Result<()> {
        let key = key_of(&self.keys, event, object);
        let now = Instant::now();
        let step = match self.series.lock() {
            Ok(mut s) => s.step(key, now),
            Err(_) => Step::Create,
        };
        let namespace = object.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let (name, count) = match step {
            Step::Count { name, count } => match count_repeat(&api, &name, count).await {
                Ok(()) => (name, count),
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    self.create(&api, event, object).await?
                }
                Err(e) => return Err(e),
            },
            Step::Create => self.create(&api, event, object).await?,
        };
        if let Ok(mut s) = self.series.lock() {
            s.record(key, name, count, now);
        }
        Ok(())
    }

    /// Creates the Event; returns its name and count (1).
    async fn create(
        &self,
        api: &Api<K8sEvent>,
        event: &Event,
        object: &ObjectReference,
    ) -> kube::Result<(String, i32)> {
        let event = self.event(event, object);
        let name = event.name_any(); // given, not generated by the API server
        api.create(&PostParams::default(), &event).await?;
        Ok((name, 1))
    }

    fn event(&self, event: &Event, object: &ObjectReference) -> K8sEvent {
        let now = jiff::Timestamp::now();
        let controller = &self.reporter.controller;
        let name = truncated(
            object.name.as_deref().unwrap_or(controller),
            MAX_NAME_PREFIX,
        );
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: object.namespace.clone(),
                ..Default::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: note_of(event).map(str::to_string),
            event_time: Some(MicroTime(now)),
            regarding: Some(object.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone().unwrap_or(controller.clone())),
            type_: Some(type_name(event.type_).into()),
            ..Default::default()
        }
    }
}

/// Patches the Event `name` to `count` occurrences, the last now.
async fn count_repeat(api: &Api<K8sEvent>, name: &str, count: i32) -> kube::Result<()> {
    let series = EventSeries {
        count,
        last_observed_time: MicroTime(jiff::Timestamp::now()),
    };
    let body = serde_json::json!({ "series": series });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_api;
    use serde_json::json;

    fn event(note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: "Applied".into(),
            note: Some(note.into()),
            action: "Apply".into(),
            secondary: None,
        }
    }

    fn object(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("RuleBundle".into()),
            namespace: Some("team".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    #[test]
    fn a_repeat_within_the_ttl_counts_into_the_first_event() {
        let keys = RandomState::new();
        let mut s = Series::default();
        let t0 = Instant::now();
        let k = key_of(&keys, &event("a"), &object("b1"));
        assert_eq!(s.step(k, t0), Step::Create);
        s.record(k, "b1.1".into(), 1, t0);
        let later = t0 + Duration::from_secs(30);
        let count = |n| Step::Count {
            name: "b1.1".into(),
            count: n,
        };
        assert_eq!(s.step(k, later), count(2));
        s.record(k, "b1.1".into(), 2, later);
        // the TTL runs from the last repeat
        assert_eq!(
            s.step(k, later + SERIES_TTL - Duration::from_secs(1)),
            count(3)
        );
        assert_eq!(s.step(k, later + SERIES_TTL), Step::Create);
    }

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("abc", 2), "ab");
        assert_eq!(truncated("abc", 10), "abc");
        let wide = "é".repeat(600); // 1,200 bytes
        let cut = truncated(&wide, MAX_NOTE_BYTES);
        assert_eq!(cut.len(), 1000);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncated("aé", 2), "a");
    }

    #[test]
    fn keys_differ_by_object_note_type_and_reason() {
        let keys = RandomState::new();
        let base = key_of(&keys, &event("a"), &object("b1"));
        assert_ne!(base, key_of(&keys, &event("b"), &object("b1")));
        assert_ne!(base, key_of(&keys, &event("a"), &object("b2")));
        let mut warning = event("a");
        warning.type_ = EventType::Warning;
        assert_ne!(base, key_of(&keys, &warning, &object("b1")));
        let mut reason = event("a");
        reason.reason = "Other".into();
        assert_ne!(base, key_of(&keys, &reason, &object("b1")));
        let mut other_uid = object("b1");
        other_uid.uid = Some("uid-new".into());
        assert_ne!(base, key_of(&keys, &event("a"), &other_uid));
    }

    #[test]
    fn expired_keys_are_swept_at_most_once_a_minute_and_the_memory_is_bounded() {
        let mut s = Series::default();
        let t0 = Instant::now();
        for k in 0..100u64 {
            s.record(k, format!("e{k}"), 1, t0);
        }
        let t1 = t0 + SERIES_TTL;
        let _ = s.step(1000, t1); // first sweep: all expired
        assert_eq!(s.remembered(), 0);
        s.record(7, "e7".into(), 1, t0); // an old one, recorded after the sweep
        let _ = s.step(1000, t1 + Duration::from_secs(1));
        assert_eq!(s.remembered(), 1, "no second sweep within a minute");
        let _ = s.step(1000, t1 + SWEEP_EVERY);
        assert_eq!(s.remembered(), 0);
        // full of live keys: a new key clears them rather than grow
        let t2 = t1 + SWEEP_EVERY;
        for k in 0..MAX_SERIES as u64 {
            s.record(k, String::new(), 1, t2);
        }
        assert_eq!(s.remembered(), MAX_SERIES);
        s.record(u64::MAX, "new".into(), 1, t2);
        assert_eq!(s.remembered(), 1);
    }

    #[tokio::test]
    async fn an_event_holds_what_the_api_server_takes() {
        let (client, _api) = mock_api::pair();
        let reporter = Reporter {
            controller: "ocisync-controller".into(),
            instance: None,
        };
        let recorder = Recorder::new(client, reporter);
        let long = object(&"b".repeat(253));
        let built = recorder.event(&event(&"é".repeat(600)), &long);
        let note = built.note.unwrap_or_default();
        assert!(
            note.len() <= MAX_NOTE_BYTES && note.starts_with('é'),
            "{}",
            note.len()
        );
        assert!(built.metadata.name.unwrap_or_default().len() <= 253);
    }

    #[tokio::test]
    async fn the_first_event_is_created_and_a_repeat_patches_its_series() {
        let (client, mut api) = mock_api::pair();
        let reporter = Reporter {
            controller: "ocisync-controller".into(),
            instance: None,
        };
        let recorder = Recorder::new(client, reporter);
        let path = "/apis/events.k8s.io/v1/namespaces/team/events";
        let run = async {
            let first = api.expect("POST", path, 201, json!({})).await;
            assert_eq!(first.body["reason"], "Applied");
            assert_eq!(first.body["regarding"]["name"], "b1");
            assert_eq!(first.body["reportingController"], "ocisync-controller");
            let name = first.body["metadata"]["name"].as_str().unwrap().to_string();
            assert!(name.starts_with("b1."), "{name}");
            let event = format!("{path}/{name}");
            let repeat = api.expect("PATCH", &event, 200, json!({})).await;
            assert_eq!(repeat.body["series"]["count"], 2);
            assert!(repeat.body["series"]["lastObservedTime"].is_string());
            // the Event is gone (its TTL in the API server): a new one
            let gone = mock_api::status(404, "NotFound", "events not found");
            api.expect("PATCH", &event, 404, gone).await;
            let again = api.expect("POST", path, 201, json!({})).await;
            assert_ne!(again.body["metadata"]["name"], name.as_str());
            // another note: another Event
            api.expect("POST", path, 201, json!({})).await;
            api
        };
        let publish = async {
            for note in ["a", "a", "a", "b"] {
                recorder.publish(&event(note), &object("b1")).await.unwrap();
            }
            drop(recorder);
        };
        let (api, ()) = tokio::join!(run, publish);
        api.expect_no_more().await;
    }
}
