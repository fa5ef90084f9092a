//! The fault campaign, registry part (issue 18): a source goes through the fault proxy
//! (`e2e/faults/proxy.rs`) to the real plain-HTTP registry. Each case: Ready at v1, v2
//! pushed, the fault on, a check requested; the source must fail with the right reason,
//! keep serving v1 (v2 never served nor stored unverified), retry on its backoff (the
//! controller's failed checks and the proxy's requests counted: no storm, `Retry-After`
//! honoured), and once the fault stops, reach v2 by itself within one backoff step. Each
//! case records its row for `bench/FAULTS.md` (`common::faults::Row`).
//!
//! The cases of one test share a controller and run at once, each with its own proxy,
//! repository and source.

mod common;
#[path = "../e2e/faults/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use common::Which;
use common::controller::{Harness, harness};
use common::faults::Row;
use futures_util::future::join_all;
use kube::api::{Patch, PatchParams};
use ocisync::api::ArtifactSource;
use ocisync::api::reason::{Class, SourceReason};
use proxy::{Fault, Kind, Match, Proxy};

/// How long a case waits for the failed checks it counts.
const COUNTING: Duration = Duration::from_secs(90);

/// One fault and what it must do.
struct Case {
    /// The row's name, also the source's.
    name: &'static str,
    injected: &'static str,
    fault: Fault,
    on: Match,
    /// The source's `spec.timeout`.
    timeout: &'static str,
    expect: Expect,
}

enum Expect {
    /// The check fails with `reason` (its message holding `detail`) until the fault stops.
    Fails {
        reason: &'static str,
        detail: &'static str,
        /// The `Retry-After` the fault sends, in seconds.
        retry_after: Option<u64>,
        /// Failed checks counted before the fault stops.
        failures: usize,
        /// The least and the most one failing check takes.
        takes: Duration,
        check: Duration,
    },
    /// The check succeeds, slowed: it takes this long at least and at most.
    Slowed {
        at_least: Duration,
        at_most: Duration,
    },
}

/// A version of the artifact: its digest and its file's text.
#[derive(Clone, Debug)]
struct Version {
    digest: String,
    text: String,
}

/// One case's source, behind its own proxy, Ready at v1.
struct Subject<'a> {
    h: &'a Harness,
    name: &'static str,
    proxy: Proxy,
    repo: ocisync::oci::reference::Repository,
    v1: Version,
    work: tempfile::TempDir,
}

impl<'a> Subject<'a> {
    async fn new(h: &'a Harness, name: &'static str, timeout: &str) -> Subject<'a> {
        let proxy = Proxy::start(&h.env.plain).await;
        let work = tempfile::tempdir().expect("tempdir");
        let repo = h.env.repo(Which::Plain, &format!("faults-{name}"));
        let v1 = push(h, &work, &repo, "v1");
        let url = format!("oci://{}/{}", proxy.addr(), repo.name);
        h.create(
            name,
            serde_json::json!({"url": url, "ref": {"tag": "1"}, "interval": "1h", "insecure": true, "timeout": timeout}),
        )
        .await;
        let s = Subject {
            h,
            name,
            proxy,
            repo,
            v1,
            work,
        };
        let o = s.wait_at(&s.v1).await;
        s.serves(&o, &s.v1).await;
        s
    }

    fn push(&self, label: &str) -> Version {
        push(self.h, &self.work, &self.repo, label)
    }

    /// Waits until the source is Ready at `v`.
    async fn wait_at(&self, v: &Version) -> ArtifactSource {
        let d = v.digest.clone();
        self.h
            .wait(self.name, &format!("Ready at {d}"), move |o| {
                is_ready(o) && digest(o).as_deref() == Some(d.as_str())
            })
            .await
    }

    /// The status names `v` and the artifact server serves its verified bytes.
    async fn serves(&self, o: &ArtifactSource, v: &Version) {
        assert_eq!(
            digest(o).as_deref(),
            Some(v.digest.as_str()),
            "{}",
            self.name
        );
        let url = o
            .status
            .as_ref()
            .and_then(|s| s.artifact.as_ref())
            .and_then(|a| a.url.clone())
            .expect("artifact url");
        let index: serde_json::Value =
            serde_json::from_slice(&get(&url, 200).await).expect("index JSON");
        let file = index["files"][0]["digest"].as_str().expect("file digest");
        let hex = file.trim_start_matches("sha256:");
        let bytes = get(&format!("{}/blobs/sha256/{hex}", self.h.base_url), 200).await;
        assert_eq!(ocisync::oci::registry::sha256_digest(&bytes), file);
        assert_eq!(String::from_utf8_lossy(&bytes), v.text, "{}", self.name);
    }

    /// The status still names v1, served; `v2` is neither served nor stored.
    async fn keeps_v1(&self, o: &ArtifactSource, v2: &Version) {
        self.serves(o, &self.v1).await;
        let path = ocisync::server::revision_path(&v2.digest);
        get(&format!("{}{path}", self.h.base_url), 404).await;
    }
}

/// Pushes a rules file (a few KiB, so half a body is something) to `repo:1`.
fn push(
    h: &Harness,
    work: &tempfile::TempDir,
    repo: &ocisync::oci::reference::Repository,
    label: &str,
) -> Version {
    let mut text = format!("# {label} {}\n", common::unique());
    for n in 0..100 {
        text.push_str(&format!("- rule: {label}-{n}\n  desc: fault campaign\n"));
    }
    let digest = common::controller::push_file(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "rules.yaml",
        text.as_bytes(),
        &[],
    );
    Version { digest, text }
}

async fn get(url: &str, want: u16) -> Vec<u8> {
    let r = reqwest::get(url).await.expect("GET the artifact server");
    assert_eq!(r.status().as_u16(), want, "{url}");
    r.bytes().await.expect("body").to_vec()
}

fn is_ready(o: &ArtifactSource) -> bool {
    common::source_ready(o).is_some_and(|r| r.0 == "True")
        && o.status.as_ref().and_then(|s| s.observed_generation) == o.metadata.generation
}

fn digest(o: &ArtifactSource) -> Option<String> {
    Some(o.status.as_ref()?.artifact.as_ref()?.digest.clone())
}

/// A failed check as the controller logged it.
#[derive(Clone, Debug)]
struct Failed {
    at: jiff::Timestamp,
    reason: String,
    detail: String,
}

/// The failed checks of source `name`, from the controller's (JSON) log.
fn failed_checks(h: &Harness, name: &str) -> Vec<Failed> {
    let log = std::env::temp_dir().join(format!("ocisync-controller-{}.log", h.ns));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let source = format!("{}/{name}", h.ns);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "check failed" && v["fields"]["source"] == source)
        .filter_map(|v| {
            Some(Failed {
                at: v["timestamp"].as_str()?.parse().ok()?,
                reason: v["fields"]["reason"].as_str()?.to_string(),
                detail: v["fields"]["detail"].as_str()?.to_string(),
            })
        })
        .collect()
}

/// Waits until `n` failed checks of `name` after the first `before` were logged.
async fn wait_failures(h: &Harness, name: &str, before: usize, n: usize) -> Vec<Failed> {
    let end = Instant::now() + COUNTING;
    loop {
        let all = failed_checks(h, name);
        if all.len() >= before + n {
            return all[before..].to_vec();
        }
        let so_far = &all[before.min(all.len())..];
        assert!(
            Instant::now() < end,
            "{name}: {} of {n} failed checks within {COUNTING:?}: {so_far:#?}",
            so_far.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The backoff a reason's class retries on, and a server's `Retry-After`.
#[derive(Clone, Copy, Debug)]
struct Retry {
    base: Duration,
    retry_after: Duration,
}

impl Retry {
    fn of(reason: &str, retry_after: Option<u64>) -> Retry {
        let class = SourceReason::parse(reason)
            .expect("a source reason")
            .class();
        let base = match class {
            Class::Waiting => ocisync::backoff::WAITING.base,
            _ => ocisync::backoff::TRANSIENT.base,
        };
        Retry {
            base,
            retry_after: Duration::from_secs(retry_after.unwrap_or(0)),
        }
    }

    /// The least and most delay after `failures` failed checks in a row (jitter takes up
    /// to a quarter off).
    fn delay(&self, failures: u32) -> (Duration, Duration) {
        let raw = self.base * 2u32.pow(failures.saturating_sub(1));
        (raw * 3 / 4, raw).max((self.retry_after, self.retry_after))
    }
}

fn between(a: jiff::Timestamp, b: jiff::Timestamp) -> Duration {
    Duration::try_from(b.duration_since(a)).unwrap_or(Duration::ZERO)
}

/// Failed checks are spaced by the backoff: the next one ends at least the least delay
/// plus the least a check takes after the one before, and at most the longest delay plus
/// the longest check.
fn assert_spaced(
    name: &str,
    failed: &[Failed],
    retry: Retry,
    (takes, check): (Duration, Duration),
) -> Vec<Duration> {
    let mut gaps = Vec::new();
    for (i, pair) in failed.windows(2).enumerate() {
        let gap = between(pair[0].at, pair[1].at);
        let (least, most) = retry.delay(i as u32 + 1);
        assert!(
            gap + Duration::from_millis(20) >= least + takes
                && gap <= most + check + Duration::from_secs(3),
            "{name}: failed check {} came {gap:?} after the one before; the backoff is {least:?}..{most:?}, a check takes {takes:?}..{check:?}: {failed:#?}",
            i + 2
        );
        gaps.push(gap);
    }
    gaps
}

/// The manifest HEADs (one starts each check) are at least `Retry-After` apart.
fn assert_retry_after(name: &str, heads: &[Instant], retry_after: Duration) {
    for pair in heads.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= retry_after,
            "{name}: a check came {gap:?} after the one before, inside Retry-After {retry_after:?}"
        );
    }
}

/// Every blob in the controller's store hashes to its name; the number that do not.
fn unverified_blobs(h: &Harness) -> u32 {
    let dir = h.store_dir().join("blobs/sha256");
    let mut bad = 0;
    for entry in std::fs::read_dir(&dir).expect("store blobs").flatten() {
        let bytes = std::fs::read(entry.path()).expect("read a stored blob");
        let name = format!("sha256:{}", entry.file_name().to_string_lossy());
        if ocisync::oci::registry::sha256_digest(&bytes) != name {
            bad += 1;
        }
    }
    bad
}

/// Requests the proxy saw since `since`: "manifest HEAD n, manifest GET n, blob GET n".
fn requests(proxy: &Proxy, since: Instant) -> (usize, usize, usize) {
    (
        proxy.count(Kind::ManifestHead, since),
        proxy.count(Kind::ManifestGet, since),
        proxy.count(Kind::BlobGet, since),
    )
}

fn requests_text((heads, gets, blobs): (usize, usize, usize)) -> String {
    format!("manifest HEAD {heads}, manifest GET {gets}, blob GET {blobs}")
}

fn seconds(gaps: &[Duration]) -> String {
    let parts: Vec<String> = gaps
        .iter()
        .map(|g| format!("{:.1} s", g.as_secs_f64()))
        .collect();
    parts.join(", ")
}

/// Runs one case on `h`; its row.
async fn run(h: &Harness, case: Case) -> Row {
    let s = Subject::new(h, case.name, case.timeout).await;
    let v2 = s.push("v2");
    let before = failed_checks(h, case.name).len();
    let on = Instant::now();
    s.proxy.set(case.fault, case.on).await;
    let o = h.request_check(case.name, "fault-on").await;
    let took = on.elapsed();
    let row = Row::new("registry", case.name).injected(case.injected);
    let mut row = match case.expect {
        Expect::Slowed { at_least, at_most } => {
            slowed(&s, &o, &v2, on, took, (at_least, at_most)).await;
            row.outcome(format!(
                "Ready at v2 {:.1} s after the check was asked for (slowed, within its bounds)",
                took.as_secs_f64()
            ))
            .requests(requests_text(requests(&s.proxy, on)))
        }
        Expect::Fails { .. } => {
            let fault = FaultOn {
                o,
                v2,
                on,
                before,
                took,
            };
            failing(&s, &fault, &case.expect, row).await
        }
    };
    row.partial = unverified_blobs(h);
    assert_eq!(
        row.partial, 0,
        "{}: the store holds unverified bytes",
        case.name
    );
    row.record();
    row
}

/// Where a case stands once its fault is on and the check it asked for ended.
struct FaultOn {
    /// The source after that check.
    o: ArtifactSource,
    v2: Version,
    /// When the fault went on, the failed checks logged before, and how long the check took.
    on: Instant,
    before: usize,
    took: Duration,
}

async fn slowed(
    s: &Subject<'_>,
    o: &ArtifactSource,
    v2: &Version,
    on: Instant,
    took: Duration,
    (at_least, at_most): (Duration, Duration),
) {
    assert!(is_ready(o), "{}: {:?}", s.name, common::source_ready(o));
    s.serves(o, v2).await;
    s.proxy.clear().await;
    assert!(
        took >= at_least && took <= at_most,
        "{}: the slowed check took {took:?}, not within {at_least:?}..{at_most:?}; requests: {:?}",
        s.name,
        s.proxy.seen(on)
    );
}

async fn failing(s: &Subject<'_>, fault: &FaultOn, expect: &Expect, row: Row) -> Row {
    let (o, v2, on) = (&fault.o, &fault.v2, fault.on);
    let (before, took) = (fault.before, fault.took);
    let Expect::Fails {
        reason,
        detail,
        retry_after,
        failures,
        takes,
        check,
    } = *expect
    else {
        unreachable!("a failing case")
    };
    let (status, seen, message) = common::source_ready(o).expect("a Ready condition");
    assert_eq!(
        (status.as_str(), seen.as_str()),
        ("False", reason),
        "{}: {message}",
        s.name
    );
    assert!(message.contains(detail), "{}: {message}", s.name);
    assert!(
        took <= check + Duration::from_secs(3),
        "{}: the check took {took:?}",
        s.name
    );
    s.keeps_v1(o, v2).await;
    let failed = wait_failures(s.h, s.name, before, failures).await;
    let o = s.h.api.get(s.name).await.expect("get the source");
    s.keeps_v1(&o, v2).await;
    let off = Instant::now();
    s.proxy.clear().await;
    let o = s.wait_at(v2).await;
    let recovered = off.elapsed();
    s.serves(&o, v2).await;
    assert_failures_were(s.name, &failed, reason, detail);
    let retry = Retry::of(reason, retry_after);
    let gaps = assert_spaced(s.name, &failed, retry, (takes, check));
    let (_, most) = retry.delay(failed.len() as u32);
    assert!(
        recovered <= most + Duration::from_secs(5),
        "{}: Ready at v2 {recovered:?} after the fault stopped; the next retry was due within {most:?}",
        s.name
    );
    let heads = s.proxy.times(Kind::ManifestHead, on);
    assert_retry_after(s.name, &heads, retry.retry_after);
    let counted = requests(&s.proxy, on);
    assert_no_storm(s.name, counted, failed.len() + 1, &s.proxy, on);
    row.outcome(format!(
        "{reason} ({}); v1 served throughout, v2 neither served nor stored; Ready at v2 by itself after the fault",
        short(&failed[0].detail)
    ))
    .requests(format!(
        "{} over {} failed checks and the recovering one; gaps {}",
        requests_text(counted),
        failed.len(),
        seconds(&gaps)
    ))
    .recovered_after(recovered)
}

/// A failure's detail for a row: without the repository and with digests shortened.
fn short(detail: &str) -> String {
    let repository = regex::Regex::new(r"[\w.:-]+/e2e/faults-[\w-]+").expect("regex");
    let digest = regex::Regex::new(r"sha256:([0-9a-f]{8})[0-9a-f]{56}").expect("regex");
    let detail = detail.trim_start_matches("registry unavailable: ");
    let detail = repository.replace_all(detail, "<repo>");
    digest.replace_all(&detail, "sha256:$1…").into_owned()
}

fn assert_failures_were(name: &str, failed: &[Failed], reason: &str, detail: &str) {
    for f in failed {
        assert!(
            f.reason == reason && f.detail.contains(detail),
            "{name}: a failed check said {} ({}), not {reason} ({detail})",
            f.reason,
            f.detail
        );
    }
}

/// At most one manifest HEAD and GET and two blob GETs (config and layer) per check.
fn assert_no_storm(
    name: &str,
    (heads, gets, blobs): (usize, usize, usize),
    checks: usize,
    proxy: &Proxy,
    on: Instant,
) {
    assert!(
        heads <= checks && gets <= checks && blobs <= 2 * checks,
        "{name}: {heads} manifest HEADs, {gets} GETs, {blobs} blob GETs for {checks} checks: {:#?}",
        proxy.seen(on)
    );
}

/// A case failing with a transient reason, three failed checks long.
fn transient(detail: &'static str) -> Expect {
    transient_after(detail, None)
}

/// [`transient`] where the registry says `Retry-After` (seconds).
fn transient_after(detail: &'static str, retry_after: Option<u64>) -> Expect {
    Expect::Fails {
        reason: "RegistryUnavailable",
        detail,
        retry_after,
        failures: 3,
        takes: Duration::ZERO,
        check: Duration::from_secs(2),
    }
}

/// A case failing with DigestMismatch (a Waiting reason, 10 s backoff), two checks long.
fn mismatch() -> Expect {
    Expect::Fails {
        reason: "DigestMismatch",
        detail: "digest mismatch",
        retry_after: None,
        failures: 2,
        takes: Duration::ZERO,
        check: Duration::from_secs(2),
    }
}

async fn run_all(cases: Vec<Case>) {
    let h = harness().await;
    let rows = join_all(cases.into_iter().map(|c| run(&h, c))).await;
    for r in rows {
        eprintln!(
            "{}: {} | {} | recovered after {:?}",
            r.fault, r.outcome, r.requests, r.recovered_after
        );
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn error_statuses_are_retried_on_the_backoff_and_retry_after_is_honoured() {
    let status = |code, retry_after| Fault::Status(code, retry_after);
    let rate_limited = |retry_after| Expect::Fails {
        reason: "RateLimited",
        detail: "rate limited",
        retry_after,
        failures: 3,
        takes: Duration::ZERO,
        check: Duration::from_secs(2),
    };
    run_all(vec![
        Case {
            name: "status-500",
            injected: "every request answered 500",
            fault: status(500, None),
            on: Match::All,
            timeout: "60s",
            expect: transient("HTTP 500"),
        },
        Case {
            name: "status-502",
            injected: "every request answered 502",
            fault: status(502, None),
            on: Match::All,
            timeout: "60s",
            expect: transient("HTTP 502"),
        },
        Case {
            name: "status-503",
            injected: "every request answered 503",
            fault: status(503, None),
            on: Match::All,
            timeout: "60s",
            expect: transient("HTTP 503"),
        },
        Case {
            name: "status-429",
            injected: "every request answered 429 without Retry-After",
            fault: status(429, None),
            on: Match::All,
            timeout: "60s",
            expect: rate_limited(None),
        },
        Case {
            name: "status-429-retry-after",
            injected: "every request answered 429 with Retry-After: 8",
            fault: status(429, Some(8)),
            on: Match::All,
            timeout: "60s",
            expect: rate_limited(Some(8)),
        },
        Case {
            name: "status-429-retry-after-date",
            injected: "every request answered 429 with Retry-After as an HTTP-date 8 s ahead",
            fault: Fault::StatusUntil(429, 8),
            on: Match::All,
            timeout: "60s",
            // whole seconds: the date is 7 to 8 s ahead when it arrives
            expect: rate_limited(Some(7)),
        },
        Case {
            name: "status-503-retry-after",
            injected: "every request answered 503 with Retry-After: 8",
            fault: status(503, Some(8)),
            on: Match::All,
            timeout: "60s",
            expect: transient_after("HTTP 503", Some(8)),
        },
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn broken_bodies_fail_the_check_and_nothing_unverified_is_stored() {
    let case = |name, injected, fault, on, expect| Case {
        name,
        injected,
        fault,
        on,
        timeout: "60s",
        expect,
    };
    let body_failed = || transient("response body failed");
    run_all(vec![
        case(
            "reset-manifest",
            "manifest GETs: headers and half the body, then a TCP reset",
            Fault::Reset,
            Match::ManifestGets,
            body_failed(),
        ),
        case(
            "reset-blob",
            "blob GETs: headers and half the body, then a TCP reset",
            Fault::Reset,
            Match::BlobGets,
            body_failed(),
        ),
        case(
            "truncated-manifest",
            "manifest GETs: the right Content-Length, half the body, then the connection closed",
            Fault::Truncated,
            Match::ManifestGets,
            body_failed(),
        ),
        case(
            "truncated-blob",
            "blob GETs: the right Content-Length, half the body, then the connection closed",
            Fault::Truncated,
            Match::BlobGets,
            body_failed(),
        ),
        case(
            "longer-manifest",
            "manifest GETs: Content-Length of half the body, then the whole body",
            Fault::Longer,
            Match::ManifestGets,
            mismatch(),
        ),
        case(
            "longer-blob",
            "blob GETs: Content-Length of half the body, then the whole body",
            Fault::Longer,
            Match::BlobGets,
            mismatch(),
        ),
        case(
            "wrong-bytes-manifest",
            "manifest GETs: the body at its length with one bit flipped",
            Fault::WrongBytes,
            Match::ManifestGets,
            mismatch(),
        ),
        case(
            "wrong-bytes-blob",
            "blob GETs: the body at its length with one bit flipped",
            Fault::WrongBytes,
            Match::BlobGets,
            mismatch(),
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn slow_registries_are_waited_for_within_the_timeout_and_no_longer() {
    let s = Duration::from_secs;
    let timed_out = || Expect::Fails {
        reason: "RegistryUnavailable",
        detail: "timed out",
        retry_after: None,
        failures: 3,
        takes: s(5),
        check: s(5),
    };
    let slowed = |at_least, at_most| Expect::Slowed { at_least, at_most };
    run_all(vec![
        Case {
            name: "latency-100ms",
            injected: "every request answered 100 ms late",
            fault: Fault::Latency(Duration::from_millis(100)),
            on: Match::All,
            timeout: "60s",
            expect: slowed(Duration::from_millis(300), s(4)),
        },
        Case {
            name: "latency-2s",
            injected: "every request answered 2 s late",
            fault: Fault::Latency(s(2)),
            on: Match::All,
            timeout: "60s",
            expect: slowed(s(6), s(12)),
        },
        Case {
            name: "latency-10s",
            injected: "manifest HEADs answered 10 s late (spec.timeout 60s)",
            fault: Fault::Latency(s(10)),
            on: Match::ManifestHeads,
            timeout: "60s",
            expect: slowed(s(10), s(14)),
        },
        Case {
            name: "latency-10s-over-timeout",
            injected: "every request answered 10 s late, over spec.timeout 5s",
            fault: Fault::Latency(s(10)),
            on: Match::All,
            timeout: "5s",
            expect: timed_out(),
        },
        Case {
            name: "trickle-manifest",
            injected: "manifest GET bodies at 1 byte/s (spec.timeout 5s)",
            fault: Fault::Trickle(s(1)),
            on: Match::ManifestGets,
            timeout: "5s",
            expect: timed_out(),
        },
        Case {
            name: "trickle-blob",
            injected: "blob GET bodies at 1 byte/s (spec.timeout 5s)",
            fault: Fault::Trickle(s(1)),
            on: Match::BlobGets,
            timeout: "5s",
            expect: timed_out(),
        },
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn an_unreachable_registry_is_retried_on_the_backoff() {
    let h = harness().await;
    let refused = run(
        &h,
        Case {
            name: "connect-refused",
            injected: "the proxy's port closed (connect refused), open connections dropped",
            fault: Fault::Refuse,
            on: Match::All,
            timeout: "60s",
            expect: transient("connection failed"),
        },
    );
    let (refused, unresolved) = tokio::join!(refused, unresolvable(&h));
    for r in [refused, unresolved] {
        eprintln!(
            "{}: {} | {} | recovered after {:?}",
            r.fault, r.outcome, r.requests, r.recovered_after
        );
    }
    h.cleanup().await;
}

/// The source's registry host becomes a name that does not resolve (a spec change, as no
/// test can make a name resolve again), then the proxy's address again.
async fn unresolvable(h: &Harness) -> Row {
    let name = "dns-unresolvable";
    let s = Subject::new(h, name, "60s").await;
    let v2 = s.push("v2");
    let before = failed_checks(h, name).len();
    let on = Instant::now();
    let port = s
        .proxy
        .addr()
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .expect("port");
    set_url(
        h,
        name,
        &format!("oci://nonexistent.invalid:{port}/{}", s.repo.name),
    )
    .await;
    let o = h
        .wait(name, "RegistryUnavailable", |o| {
            common::source_ready(o).is_some_and(|r| r.1 == "RegistryUnavailable")
                && o.status.as_ref().and_then(|s| s.observed_generation) == o.metadata.generation
        })
        .await;
    s.keeps_v1(&o, &v2).await;
    let failed = wait_failures(h, name, before, 3).await;
    let o = h.api.get(name).await.expect("get the source");
    s.keeps_v1(&o, &v2).await;
    let off = Instant::now();
    set_url(
        h,
        name,
        &format!("oci://{}/{}", s.proxy.addr(), s.repo.name),
    )
    .await;
    let o = s.wait_at(&v2).await;
    let recovered = off.elapsed();
    s.serves(&o, &v2).await;
    assert_failures_were(name, &failed, "RegistryUnavailable", "connection failed");
    let gaps = assert_spaced(
        name,
        &failed,
        Retry::of("RegistryUnavailable", None),
        (Duration::ZERO, Duration::from_secs(2)),
    );
    let counted = requests(&s.proxy, on);
    assert_no_storm(name, counted, 1, &s.proxy, on);
    let mut row = Row::new("registry", name);
    row.partial = unverified_blobs(h);
    assert_eq!(row.partial, 0, "{name}: the store holds unverified bytes");
    let row = row
        .injected("the source's registry host changed to nonexistent.invalid (does not resolve), then back")
        .outcome(format!(
            "RegistryUnavailable ({}); v1 served throughout; Ready at v2 at once when the host was changed back",
            short(&failed[0].detail)
        ))
        .requests(format!(
            "{} failed checks, gaps {}; {} once the host was back",
            failed.len(),
            seconds(&gaps),
            requests_text(counted)
        ))
        .recovered_after(recovered);
    row.record();
    row
}

async fn set_url(h: &Harness, name: &str, url: &str) {
    let patch = serde_json::json!({"spec": {"url": url}});
    h.api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("change the source's url");
}
