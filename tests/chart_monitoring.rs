//! The chart's PrometheusRule and Grafana dashboard: every expression checked by
//! `promtool check rules`, the alerts run by `promtool test rules` on made-up series, and
//! every metric, label and label value they name found in what the binary exports (the
//! controller and the agent share `src/metrics.rs`). Runs without a cluster.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use common::{helm, root, run_ok};

fn render(args: &[&str]) -> Vec<Value> {
    use serde::Deserialize;
    let mut c = helm();
    c.args(["template", "t", "charts/ocisync"])
        .args(["--namespace", "ocisync-system"])
        .args(args);
    let yaml = run_ok(&mut c);
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn the<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"] == kind);
    let one = found.next().unwrap_or_else(|| panic!("no {kind} rendered"));
    assert!(found.next().is_none(), "one {kind}");
    one
}

fn rule_values() -> Vec<&'static str> {
    vec![
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.alertLabels.team=platform",
        "--set",
        "prometheusRule.labels.release=kube-prometheus-stack",
    ]
}

/// The rendered rule groups.
fn groups() -> Value {
    let docs = render(&rule_values());
    let rule = the(&docs, "PrometheusRule");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    rule["spec"]["groups"].clone()
}

fn alerts(groups: &Value) -> Vec<&Value> {
    groups
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

/// promtool from Debian's `prometheus` (`make deps`), or OCISYNC_PROMTOOL. Missing, the
/// test fails under OCISYNC_E2E_REQUIRED=1 and is skipped, saying so, otherwise.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("OCISYNC_PROMTOOL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("promtool"))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        let why = "promtool is not installed (`make deps` installs Debian's prometheus)";
        assert!(!common::required(), "{why}");
        // written past the test harness's capture, so a passing run shows it
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {why}: the alert expressions were not checked"
        );
    }
    found
}

fn promtool_ok(promtool: &Path, args: &[&str], dir: &Path) -> String {
    let mut c = std::process::Command::new(promtool);
    c.args(args).current_dir(dir);
    run_ok(&mut c)
}

fn write_yaml(path: &Path, v: &Value) {
    std::fs::write(path, serde_yaml_ng::to_string(v).expect("yaml")).expect("write");
}

#[test]
fn the_alerts_are_there_and_complete() {
    let groups = groups();
    let names: BTreeSet<&str> = alerts(&groups)
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for want in [
        "OcisyncSourceNotReady",
        "OcisyncBundleNodeFailed",
        "OcisyncAgentMissing",
        "OcisyncStoreNearLimit",
        "OcisyncNoLeader",
    ] {
        assert!(names.contains(want), "{want} in {names:?}");
    }
    for rule in alerts(&groups) {
        let name = &rule["alert"];
        assert!(rule["for"].is_string(), "{name}: a `for`");
        assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
        assert_eq!(rule["labels"]["team"], "platform", "{name}: alertLabels");
        for key in ["summary", "description", "runbook_url"] {
            assert!(rule["annotations"][key].is_string(), "{name}: {key}");
        }
    }
    // no agents, no agent alert; off by default
    let docs = render(&[&rule_values()[..], &["--set", "agent.enabled=false"]].concat());
    let text = the(&docs, "PrometheusRule").to_string();
    assert!(!text.contains("OcisyncAgentMissing"));
    assert!(!render(&[]).iter().any(|d| d["kind"] == "PrometheusRule"));
    // another scrape job
    let docs = render(
        &[
            &rule_values()[..],
            &[
                "--set-json",
                r#"prometheusRule.selector="namespace=\"ops\",app=\"ocisync\"""#,
            ],
        ]
        .concat(),
    );
    let text = the(&docs, "PrometheusRule")["spec"].to_string();
    assert!(text.contains(r#"ocisync_leader{namespace=\"ops\",app=\"ocisync\"}"#));
    assert!(!text.contains("job="));
}

#[test]
fn promtool_checks_the_rules_and_they_fire_when_they_should() {
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut groups = groups();
    write_yaml(&dir.path().join("rules.yaml"), &json!({"groups": groups}));
    let out = promtool_ok(&promtool, &["check", "rules", "rules.yaml"], dir.path());
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    // promtool test compares annotations too; their templates were checked above
    for g in groups.as_array_mut().expect("groups") {
        for r in g["rules"].as_array_mut().expect("rules") {
            r.as_object_mut().expect("rule").remove("annotations");
        }
    }
    write_yaml(&dir.path().join("bare.yaml"), &json!({"groups": groups}));
    std::fs::write(dir.path().join("tests.yaml"), ALERT_TESTS).expect("write");
    let out = promtool_ok(&promtool, &["test", "rules", "tests.yaml"], dir.path());
    assert!(out.contains("SUCCESS"), "{out}");
}

/// What each alert does on made-up series of the release `t` (job `t-ocisync-controller`).
const ALERT_TESTS: &str = r#"
rule_files: [bare.yaml]
evaluation_interval: 1m
tests:
  # no replica leads, then only another release's replicas are scraped
  - interval: 1m
    input_series:
      - {series: 'ocisync_leader{job="t-ocisync-controller", pod="a"}', values: '0x20'}
      - {series: 'ocisync_leader{job="t-ocisync-controller", pod="b"}', values: '0x20'}
    alert_rule_test:
      - {eval_time: 4m, alertname: OcisyncNoLeader, exp_alerts: []}
      - eval_time: 6m
        alertname: OcisyncNoLeader
        exp_alerts: [{exp_labels: {severity: critical, team: platform}}]
  - interval: 1m
    input_series:
      - {series: 'ocisync_leader{job="u-ocisync-controller", pod="c"}', values: '1x20'}
    alert_rule_test:
      - eval_time: 6m
        alertname: OcisyncNoLeader
        exp_alerts: [{exp_labels: {severity: critical, team: platform, job: t-ocisync-controller}}]
  # one leader; then a second one from minute 3
  - interval: 1m
    input_series:
      - {series: 'ocisync_leader{job="t-ocisync-controller", pod="a"}', values: '1x20'}
      - {series: 'ocisync_leader{job="t-ocisync-controller", pod="b"}', values: '0 0 0 1x17'}
    alert_rule_test:
      - {eval_time: 10m, alertname: OcisyncNoLeader, exp_alerts: []}
      - {eval_time: 4m, alertname: OcisyncSeveralLeaders, exp_alerts: []}
      - eval_time: 6m
        alertname: OcisyncSeveralLeaders
        exp_alerts: [{exp_labels: {severity: warning, team: platform}}]
  # the store of a at 95%, of b at 80%, c without a limit
  - interval: 1m
    input_series:
      - {series: 'ocisync_store_bytes{job="t-ocisync-controller", pod="a"}', values: '950x30'}
      - {series: 'ocisync_store_limit_bytes{job="t-ocisync-controller", pod="a"}', values: '1000x30'}
      - {series: 'ocisync_store_bytes{job="t-ocisync-controller", pod="b"}', values: '800x30'}
      - {series: 'ocisync_store_limit_bytes{job="t-ocisync-controller", pod="b"}', values: '1000x30'}
      - {series: 'ocisync_store_bytes{job="t-ocisync-controller", pod="c"}', values: '950x30'}
      - {series: 'ocisync_store_limit_bytes{job="t-ocisync-controller", pod="c"}', values: '0x30'}
      - {series: 'ocisync_store_missing_revisions{job="t-ocisync-controller", pod="a"}', values: '0x30'}
      - {series: 'ocisync_store_missing_revisions{job="t-ocisync-controller", pod="b"}', values: '0 0 3x28'}
    alert_rule_test:
      - {eval_time: 10m, alertname: OcisyncStoreNearLimit, exp_alerts: []}
      - eval_time: 16m
        alertname: OcisyncStoreNearLimit
        exp_alerts: [{exp_labels: {severity: warning, team: platform, job: t-ocisync-controller, pod: a}}]
      - {eval_time: 15m, alertname: OcisyncReplicaMissingRevisions, exp_alerts: []}
      - eval_time: 18m
        alertname: OcisyncReplicaMissingRevisions
        exp_alerts: [{exp_labels: {severity: warning, team: platform, job: t-ocisync-controller, pod: b}}]
  # sources: two Unauthorized for good, one InvalidSpec for 5 minutes, others Ready; an
  # agent's series (another job) does not count
  - interval: 1m
    input_series:
      - series: 'ocisync_objects{job="t-ocisync-controller", kind="ArtifactSource", ready="False", reason="Unauthorized"}'
        values: '2x30'
      - series: 'ocisync_objects{job="t-ocisync-controller", kind="ArtifactSource", ready="False", reason="InvalidSpec"}'
        values: '1x5 0x25'
      - series: 'ocisync_objects{job="t-ocisync-controller", kind="ArtifactSource", ready="True", reason="Succeeded"}'
        values: '5x30'
      - series: 'ocisync_objects{job="t-ocisync-agent", kind="ArtifactSource", ready="False", reason="NotFound"}'
        values: '1x30'
    alert_rule_test:
      - {eval_time: 9m, alertname: OcisyncSourceNotReady, exp_alerts: []}
      - eval_time: 11m
        alertname: OcisyncSourceNotReady
        exp_alerts:
          - {exp_labels: {severity: warning, team: platform, reason: Unauthorized}}
      - {eval_time: 11m, alertname: OcisyncBundleNodeFailed, exp_alerts: []}
  # a bundle NodeFailed for good, then (separately) for 2 minutes
  - interval: 1m
    input_series:
      - series: 'ocisync_objects{job="t-ocisync-controller", kind="RuleBundle", ready="False", reason="NodeFailed"}'
        values: '1x20'
      - series: 'ocisync_objects{job="t-ocisync-controller", kind="RuleBundle", ready="False", reason="SourceNotReady"}'
        values: '1x20'
    alert_rule_test:
      - {eval_time: 4m, alertname: OcisyncBundleNodeFailed, exp_alerts: []}
      - eval_time: 6m
        alertname: OcisyncBundleNodeFailed
        exp_alerts: [{exp_labels: {severity: warning, team: platform}}]
  - interval: 1m
    input_series:
      - series: 'ocisync_objects{job="t-ocisync-controller", kind="RuleBundle", ready="False", reason="NodeFailed"}'
        values: '1 1 1 0x20'
    alert_rule_test:
      - {eval_time: 10m, alertname: OcisyncBundleNodeFailed, exp_alerts: []}
  # one node of three without a ready agent; another namespace's DaemonSet is not ours
  - interval: 1m
    input_series:
      - {series: 'kube_daemonset_status_desired_number_scheduled{namespace="ocisync-system", daemonset="t-ocisync-agent"}', values: '3x20'}
      - {series: 'kube_daemonset_status_number_ready{namespace="ocisync-system", daemonset="t-ocisync-agent"}', values: '3 3 2x18'}
      - {series: 'kube_daemonset_status_desired_number_scheduled{namespace="other", daemonset="t-ocisync-agent"}', values: '3x20'}
      - {series: 'kube_daemonset_status_number_ready{namespace="other", daemonset="t-ocisync-agent"}', values: '0x20'}
    alert_rule_test:
      - {eval_time: 11m, alertname: OcisyncAgentMissing, exp_alerts: []}
      - eval_time: 13m
        alertname: OcisyncAgentMissing
        exp_alerts:
          - exp_labels: {severity: warning, team: platform, namespace: ocisync-system, daemonset: t-ocisync-agent}
"#;

// --- the dashboard ---

fn dashboard() -> Value {
    let text = std::fs::read_to_string(root().join("charts/ocisync/dashboards/ocisync.json"))
        .expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel id, expression) of every query, Grafana's variables replaced.
fn dashboard_exprs(d: &Value) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$namespace", ".*");
            out.push((p["id"].as_i64().expect("id"), expr));
        }
    }
    out
}

#[test]
fn the_dashboard_parses_has_unique_ids_and_ships_in_its_configmap() {
    let d = dashboard();
    let ids: Vec<i64> = panels(&d)
        .iter()
        .map(|p| p["id"].as_i64().expect("numeric id"))
        .collect();
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "panel ids repeat: {ids:?}");
    for p in panels(&d) {
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_i64().expect("x"), g["w"].as_i64().expect("w"));
        assert!(x >= 0 && w > 0 && x + w <= 24, "panel {}: {g}", p["id"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {}", p["id"]);
        }
    }
    let exprs: Vec<String> = dashboard_exprs(&d).into_iter().map(|(_, e)| e).collect();
    let all = exprs.join("\n");
    // sources, bundles, per-node rollout, registry requests and errors, pulled bytes,
    // store size vs limit, webhook requests, leader
    for want in [
        r#"kind="ArtifactSource""#,
        r#"kind="RuleBundle""#,
        r#"kind="NodeFiles""#,
        "ocisync_registry_requests_total",
        r#"outcome!="ok""#,
        "ocisync_pulled_bytes_total",
        "ocisync_store_bytes",
        "ocisync_store_limit_bytes",
        "ocisync_webhook_requests_total",
        "ocisync_leader",
    ] {
        assert!(all.contains(want), "no panel reads {want}");
    }

    let docs = render(&["--set", "grafanaDashboard.enabled=true"]);
    let cm = the(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(cm["data"]["ocisync.json"].as_str().expect("data")).expect("json");
    assert_eq!(shipped, d);
    assert!(!render(&[]).iter().any(|x| x["kind"] == "ConfigMap"));
}

#[test]
fn promtool_checks_every_dashboard_query() {
    let Some(promtool) = promtool() else { return };
    let rules: Vec<Value> = dashboard_exprs(&dashboard())
        .into_iter()
        .enumerate()
        .map(|(i, (id, expr))| json!({"record": format!("dashboard:panel{id}_{i}"), "expr": expr}))
        .collect();
    let n = rules.len();
    let dir = tempfile::tempdir().expect("tempdir");
    write_yaml(
        &dir.path().join("dashboard.yaml"),
        &json!({"groups": [{"name": "dashboard", "rules": rules}]}),
    );
    let out = promtool_ok(&promtool, &["check", "rules", "dashboard.yaml"], dir.path());
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

// --- every name the rules and the dashboard use is one the binary exports ---

/// Series names the binary exports, read from the registrations in `src/metrics.rs` (a
/// family without samples is not encoded, so `encode()` alone would miss them): each
/// family's name, its unit, and the suffixes of its type.
fn exported_series() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("src/metrics.rs")).expect("metrics.rs");
    let fields = regex::Regex::new(r"(?m)^    (\w+): (.+),$").expect("re");
    let struct_body = text
        .split("pub struct Metrics {")
        .nth(1)
        .and_then(|t| t.split("\n}").next())
        .expect("struct Metrics");
    let types: std::collections::BTreeMap<&str, &str> = fields
        .captures_iter(struct_body)
        .map(|c| {
            (
                c.get(1).expect("name").as_str(),
                c.get(2).expect("type").as_str(),
            )
        })
        .collect();
    let register = regex::Regex::new(
        r#"register(?:_with_unit)?\(\s*"(\w+)",\s*"[^"]*",\s*(?:Unit::(\w+),\s*)?(\w+)\.clone\(\)"#,
    )
    .expect("re");
    let mut out = BTreeSet::new();
    for c in register.captures_iter(&text) {
        let unit = c
            .get(2)
            .map_or(String::new(), |u| format!("_{}", u.as_str().to_lowercase()));
        let name = format!("{}{unit}", &c[1]);
        let ty = types
            .get(&c[3])
            .unwrap_or_else(|| panic!("no field {}", &c[3]));
        let suffixes: &[&str] = if ty.contains("Histogram") {
            &["_bucket", "_sum", "_count"]
        } else if ty.contains("Counter") {
            &["_total"]
        } else if ty.contains("Gauge") {
            &[""]
        } else {
            panic!("{name}: type {ty}")
        };
        out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    assert!(out.len() >= 16, "{out:?}");
    // what the registry encodes (families with samples) agrees with the reading
    let encoded = ocisync::metrics::Metrics::new().encode();
    let sample = regex::Regex::new(r"(?m)^(ocisync_\w+)[{ ]").expect("re");
    let seen: Vec<&str> = sample
        .captures_iter(&encoded)
        .map(|c| c.get(1).expect("name").as_str())
        .collect();
    assert!(seen.len() >= 5, "{encoded}");
    for name in seen {
        assert!(
            out.contains(name),
            "{name} is encoded but not read from src/metrics.rs"
        );
    }
    out
}

/// Non-test source text of the crate.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(dir).expect("src").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs")
                && !p.to_string_lossy().ends_with("_tests.rs")
            {
                let text = std::fs::read_to_string(&p).expect("read");
                let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
                out.push((p, code));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("src"), &mut out);
    out
}

#[test]
fn metrics_are_registered_in_one_place_which_the_agent_shares() {
    for (path, code) in sources() {
        if path.ends_with("src/metrics.rs") {
            continue;
        }
        assert!(
            !code.contains(".register(") && !code.contains(".register_with_unit("),
            "{} registers metrics outside src/metrics.rs: the chart's checks would miss them",
            path.display()
        );
    }
    let agent = std::fs::read_to_string(root().join("src/agent/mod.rs")).expect("agent");
    assert!(agent.contains("use crate::metrics::Metrics;"));
}

/// Label names of the families (`src/metrics.rs`'s label structs) and those the scrape
/// and kube-state-metrics add.
fn known_labels() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("src/metrics.rs")).expect("metrics.rs");
    let structs = regex::Regex::new(r"EncodeLabelSet\)\]\s*struct \w+ \{([^}]*)\}").expect("re");
    let field = regex::Regex::new(r"(\w+):").expect("re");
    let mut out: BTreeSet<String> = ["le", "job", "instance", "pod", "namespace", "node"]
        .into_iter()
        .chain(["daemonset"])
        .map(String::from)
        .collect();
    for s in structs.captures_iter(&text) {
        out.extend(field.captures_iter(&s[1]).map(|f| f[1].to_string()));
    }
    assert!(out.contains("reason") && out.contains("outcome"), "{out:?}");
    out
}

/// Whether `value` can be a value of an ocisync label: a reason of one of the kinds, or
/// a string the (non-test) code writes.
fn known_value(value: &str, code: &str) -> bool {
    use ocisync::api::reason::{BundleReason, NodeReason, SourceReason};
    SourceReason::parse(value).is_some()
        || BundleReason::parse(value).is_some()
        || NodeReason::parse(value).is_some()
        || code.contains(&format!("\"{value}\""))
}

fn check_names(what: &str, expr: &str, series: &BTreeSet<String>, labels: &BTreeSet<String>) {
    const KUBE_STATE_METRICS: [&str; 2] = [
        "kube_daemonset_status_desired_number_scheduled",
        "kube_daemonset_status_number_ready",
    ];
    let code: String = sources().into_iter().map(|(_, c)| c).collect();
    let names = regex::Regex::new(r"\b(ocisync|kube)_[a-z0-9_]+").expect("re");
    for m in names.find_iter(expr) {
        let name = m.as_str();
        assert!(
            series.contains(name) || KUBE_STATE_METRICS.contains(&name),
            "{what}: {name} is not exported (exported: {series:?})"
        );
    }
    let matcher = regex::Regex::new(r#"(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)""#).expect("re");
    for m in matcher.captures_iter(expr) {
        let (label, value) = (&m[1], &m[2]);
        assert!(labels.contains(label), "{what}: label {label}");
        if ["job", "namespace", "daemonset", "pod", "node"].contains(&label) {
            continue;
        }
        for v in value.split('|').filter(|v| !v.is_empty()) {
            assert!(
                known_value(v, &code),
                "{what}: {label}={v:?} is never written"
            );
        }
    }
    let grouping = regex::Regex::new(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)").expect("re");
    for g in grouping.captures_iter(expr) {
        for label in g[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
            assert!(labels.contains(label), "{what}: grouping by {label}");
        }
    }
}

#[test]
fn the_rules_and_the_dashboard_read_only_what_the_binary_exports() {
    let series = exported_series();
    let labels = known_labels();
    for rule in alerts(&groups()) {
        let what = format!("alert {}", rule["alert"]);
        check_names(
            &what,
            rule["expr"].as_str().expect("expr"),
            &series,
            &labels,
        );
        // metric names in the runbook text too
        check_names(
            &what,
            &rule["annotations"]["description"].to_string(),
            &series,
            &labels,
        );
    }
    for (id, expr) in dashboard_exprs(&dashboard()) {
        check_names(&format!("dashboard panel {id}"), &expr, &series, &labels);
    }
    // and the check itself catches a renamed metric or a value never written
    let caught = |expr: &str| {
        std::panic::catch_unwind(|| check_names("probe", expr, &series, &labels)).is_err()
    };
    assert!(caught("ocisync_reconcile_total"));
    assert!(caught(
        r#"ocisync_registry_requests_total{outcome!="Success"}"#
    ));
    assert!(caught(r#"ocisync_reconciles_total{kind="Bundle"}"#));
    assert!(caught("sum by (source) (ocisync_pulled_bytes_total)"));
    assert!(!caught(
        r#"sum by (reason) (ocisync_reconciles_total{kind="RuleBundle", reason="NodeFailed"})"#
    ));
}
