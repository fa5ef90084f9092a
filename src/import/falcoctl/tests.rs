//! The import on plain data: falcoctl's own configuration shapes (its defaults, the Falco
//! chart's values) and index entries as falcosecurity publishes them.

use super::index::{self, ArtifactType, Index, Pin, RefError};
use super::*;
use serde::Deserialize;

const INDEX: &str = r#"
- name: falco-rules
  type: rulesfile
  registry: ghcr.io
  repository: falcosecurity/rules/falco-rules
  signature:
    cosign:
      certificate-oidc-issuer: https://token.actions.githubusercontent.com
      certificate-oidc-issuer-regexp: ""
      certificate-identity: ""
      certificate-identity-regexp: https://github.com/falcosecurity/rules/
      certificate-github-workflow: ""
      key: ""
      ignore-tlog: false
  description: Falco rules that are loaded by default
- name: k8saudit
  type: plugin
  registry: ghcr.io
  repository: falcosecurity/plugins/plugin/k8saudit
"#;

fn options() -> Options {
    Options {
        namespace: Some("falco".into()),
        rules_dir: "/etc/falco/rules.d".into(),
        plugins_dir: "/etc/falco/plugins".into(),
        assets_dir: "/etc/falco/assets".into(),
        plain_http: false,
        cert_secret: None,
    }
}

fn index() -> Vec<(String, String)> {
    vec![("index.yaml".into(), INDEX.into())]
}

fn run(config: &str) -> Import {
    import(config, &index(), &options()).expect("import")
}

fn kinds(i: &Import) -> Vec<(String, String)> {
    i.docs
        .iter()
        .map(|d| {
            (
                d.object["kind"].as_str().unwrap_or("").to_string(),
                d.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

fn spec<'a>(i: &'a Import, name: &str) -> &'a serde_json::Value {
    &i.docs
        .iter()
        .find(|d| d.object["metadata"]["name"] == name)
        .expect(name)
        .object["spec"]
}

fn resolve(r: &str) -> Result<index::Resolved, RefError> {
    let mut idx = Index::default();
    idx.add(INDEX).expect("index");
    index::resolve(r, &idx)
}

#[test]
fn references_resolve_as_falcoctl_resolves_them() {
    let r = resolve("falco-rules:5").expect("name:tag");
    assert_eq!(
        (r.registry.as_str(), r.repository.as_str()),
        ("ghcr.io", "falcosecurity/rules/falco-rules")
    );
    assert_eq!(r.pin, Pin::Tag("5".into()));
    assert_eq!(
        resolve("falco-rules").expect("name").pin,
        Pin::Tag("latest".into())
    );
    let digest = format!("sha256:{}", "a".repeat(64));
    assert_eq!(
        resolve(&format!("falco-rules@{digest}"))
            .expect("digest")
            .pin,
        Pin::Digest(digest.clone())
    );
    let full = resolve("registry.local:5000/team/rules/custom:1.2.0").expect("full");
    assert_eq!(
        (full.registry.as_str(), full.repository.as_str()),
        ("registry.local:5000", "team/rules/custom")
    );
    assert_eq!(
        (full.pin, full.kind, full.kind_guessed),
        (Pin::Tag("1.2.0".into()), ArtifactType::Rulesfile, true)
    );
    assert_eq!(
        resolve("registry.local:5000/team/rules")
            .expect("no tag")
            .pin,
        Pin::Tag("latest".into())
    );
    let plugin = resolve("ghcr.io/falcosecurity/plugins/plugin/container:0.7.1").expect("plugin");
    assert_eq!(plugin.kind, ArtifactType::Plugin);
    assert_eq!(
        resolve(&format!("ghcr.io/a/b:1@{digest}"))
            .expect("tag and digest")
            .pin,
        Pin::Digest(digest)
    );
}

#[test]
fn bad_references_are_refused_with_the_reference_named() {
    assert!(matches!(resolve("nonesuch:1"), Err(RefError::NotInIndex(r)) if r == "nonesuch:1"));
    assert!(matches!(
        index::resolve("falco-rules:5", &Index::default()),
        Err(RefError::NoIndex(_))
    ));
    for bad in [
        "ghcr.io/Upper/case:1",
        "falco-rules:-x",
        "falco-rules@sha512:ab",
        "ghcr.io//x:1",
        "/x:1",
    ] {
        assert!(matches!(resolve(bad), Err(RefError::Invalid(..))), "{bad}");
    }
    let hostile = INDEX.replace(
        "registry: ghcr.io\n  repository: falcosecurity/rules/falco-rules",
        "registry: \"ghcr.io\\nkind: Secret\"\n  repository: falcosecurity/rules/falco-rules",
    );
    let mut idx = Index::default();
    idx.add(&hostile).expect("index");
    assert!(
        matches!(
            index::resolve("falco-rules:5", &idx),
            Err(RefError::Invalid(..))
        ),
        "a registry with a line break"
    );
    for bad in ["user@ghcr.io/x:1", "ghcr.io:port/x:1", "-x.io/y:1"] {
        assert!(matches!(resolve(bad), Err(RefError::Invalid(..))), "{bad}");
    }
    let dup = format!(
        "{INDEX}{}",
        &INDEX[INDEX.find("- name: k8saudit").unwrap_or(0)..]
    );
    assert!(
        Index::default().add(&dup).is_err(),
        "a name twice in one file"
    );
}

#[test]
fn the_falco_chart_defaults_become_sources_and_bundles() {
    // the Falco chart's falcoctl.config (chart 9.1.0) plus the container plugin it adds
    let values = r#"
falcoctl:
  config:
    indexes: [{name: falcosecurity, url: https://falcosecurity.github.io/falcoctl/index.yaml}]
    artifact:
      allowedTypes: [rulesfile, plugin]
      install:
        resolveDeps: true
        refs: [falco-rules:5, ghcr.io/falcosecurity/plugins/plugin/container:0.7.1]
        rulesfilesDir: /rulesfiles
        pluginsDir: /plugins
        stateDir: /artifactstate
      follow:
        refs: [falco-rules:5]
        every: 168h
        falcoversions: http://localhost:8765/versions
        rulesfilesDir: /rulesfiles
"#;
    let i = run(values);
    assert_eq!(
        kinds(&i),
        [
            ("ArtifactSource", "falco-rules"),
            ("ArtifactSource", "container"),
            ("RuleBundle", "falco-rules"),
            ("RuleBundle", "falco-plugins")
        ]
        .map(|(k, n)| (k.to_string(), n.to_string()))
    );
    let rules = spec(&i, "falco-rules");
    assert_eq!(
        rules["url"],
        "oci://ghcr.io/falcosecurity/rules/falco-rules"
    );
    assert_eq!(rules["ref"], serde_json::json!({"tag": "5"}));
    assert_eq!(rules["interval"], "168h");
    assert!(
        rules.get("insecure").is_none(),
        "false is left out: {rules}"
    );
    let id = &rules["verify"]["matchOIDCIdentity"][0];
    assert_eq!(
        id["issuer"],
        r"^https://token\.actions\.githubusercontent\.com$"
    );
    assert_eq!(
        id["subject"],
        "^(?:https://github.com/falcosecurity/rules/)"
    );
    assert!(
        spec(&i, "container").get("verify").is_none(),
        "a full reference has no index signature"
    );
    assert_eq!(
        spec(&i, "container")["platform"],
        "all",
        "each node takes its own build of a plugin"
    );
    assert!(rules.get("platform").is_none(), "{rules}");
    let notes = i.notes.join("\n");
    for expected in [
        "chart values",
        "resolveDeps",
        "falcoversions",
        "/rulesfiles",
        "/plugins",
        "stateDir",
        "index falcosecurity",
    ] {
        assert!(
            notes.to_lowercase().contains(&expected.to_lowercase()),
            "{expected} in {notes}"
        );
    }
    let container = &i.docs[1].notes.join("\n");
    assert!(
        container.contains("install.refs only") && container.contains("repository path"),
        "{container}"
    );
}

#[test]
fn keys_are_case_insensitive_as_in_viper() {
    let a = run("artifact: {follow: {refs: [falco-rules:5], every: 6h0m0s}}");
    let b = run("ARTIFACT: {Follow: {REFS: [falco-rules:5], Every: 6h0m0s}}");
    assert_eq!(spec(&a, "falco-rules"), spec(&b, "falco-rules"));
    assert_eq!(spec(&a, "falco-rules")["interval"], "6h0m0s");
}

#[test]
fn allowed_types_leave_other_types_out_with_a_note() {
    let i = run(
        "artifact: {allowedTypes: [rulesfile], install: {refs: [falco-rules:5, k8saudit:0.7]}}",
    );
    assert_eq!(kinds(&i).len(), 2, "{:?}", kinds(&i));
    assert!(
        i.notes
            .iter()
            .any(|n| n.starts_with("k8saudit:0.7: left out")),
        "{:?}",
        i.notes
    );
}

#[test]
fn basic_auth_names_a_secret_and_the_password_is_never_printed() {
    let config = r#"
artifact: {follow: {refs: ["registry.example:5000/team/rules:1", falco-rules:5]}}
registry:
  auth:
    basic: [{registry: registry.example:5000, user: robot, password: s3cr3t-Pa55}]
    oauth: [{registry: oauth.example, clientSecret: also-s3cr3t, clientID: id, tokenURL: https://t}]
    gcp: [{registry: gcr.io}]
  creds: {config: /root/.docker/config.json}
"#;
    let i = run(config);
    let text = render(&i, "ocisync import falcoctl f");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert_eq!(
        spec(&i, "rules")["secretRef"]["name"],
        "falcoctl-registry-example-5000"
    );
    assert!(
        spec(&i, "falco-rules").get("secretRef").is_none(),
        "only the registry it belongs to"
    );
    assert!(text.contains("kubectl create secret docker-registry falcoctl-registry-example-5000 --docker-server=registry.example:5000 --docker-username=robot"), "{text}");
    for expected in [
        "oauth.example: OAuth2",
        "gcr.io: GCP",
        "--from-file=.dockerconfigjson=/root/.docker/config.json",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
}

#[test]
fn signatures_map_to_verify_or_say_why_not() {
    let no_verify = run("artifact: {noVerify: true, follow: {refs: [falco-rules:5]}}");
    assert!(spec(&no_verify, "falco-rules").get("verify").is_none());
    assert!(no_verify.notes.iter().any(|n| n.contains("noVerify")));
    let keyed = INDEX.replace("key: \"\"", "key: /etc/keys/cosign.pub");
    let i = import(
        "artifact: {follow: {refs: [falco-rules:5]}}",
        &[("i".into(), keyed)],
        &options(),
    )
    .expect("import");
    assert_eq!(
        spec(&i, "falco-rules")["verify"]["secretRef"]["name"],
        "falco-rules-cosign-key"
    );
    let alternation = INDEX.replace(
        "certificate-identity-regexp: https://github.com/falcosecurity/rules/",
        "certificate-identity-regexp: ^a|b",
    );
    let i = import(
        "artifact: {follow: {refs: [falco-rules:5]}}",
        &[("i".into(), alternation)],
        &options(),
    )
    .expect("import");
    let subject = spec(&i, "falco-rules")["verify"]["matchOIDCIdentity"][0]["subject"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(subject, "^(?:a|b)", "every branch anchored");
    let re = regex::Regex::new(&subject).expect("regex");
    assert!(!re.is_match("evil-b") && re.is_match("b-ok"));
    let no_issuer = INDEX.replace(
        "certificate-oidc-issuer: https://token.actions.githubusercontent.com",
        "certificate-oidc-issuer: \"\"",
    );
    let i = import(
        "artifact: {follow: {refs: [falco-rules:5]}}",
        &[("i".into(), no_issuer)],
        &options(),
    )
    .expect("import");
    assert!(spec(&i, "falco-rules").get("verify").is_none());
    assert!(
        i.docs[0].notes.iter().any(|n| n.contains("not verified")),
        "{:?}",
        i.docs[0].notes
    );
}

#[test]
fn intervals_cron_and_unknown_settings_are_noted() {
    let i = run(
        "artifact: {follow: {refs: [falco-rules:5], every: 5s, cron: '0 * * * *'}}\ndriver: {type: [kmod]}\nextra: 1",
    );
    assert_eq!(spec(&i, "falco-rules")["interval"], "168h");
    let notes = i.notes.join("\n");
    for expected in [
        "every \"5s\"",
        "cron",
        "driver: not mapped",
        "extra: not mapped",
    ] {
        assert!(notes.contains(expected), "{expected} in {notes}");
    }
}

#[test]
fn names_are_dns_labels_and_unique() {
    let i = run(
        "artifact: {install: {refs: [falco-rules:4, falco-rules:5, 'ghcr.io/x/my_rules.v2:1']}}",
    );
    let names: Vec<String> = kinds(&i)
        .into_iter()
        .filter(|(k, _)| k == "ArtifactSource")
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["falco-rules", "falco-rules-2", "my-rules-v2"]);
}

#[test]
fn a_bundle_holds_at_most_32_sources() {
    let refs: Vec<String> = (0..40).map(|n| format!("ghcr.io/r/rules-{n}:1")).collect();
    let i = run(&format!(
        "artifact: {{install: {{refs: [{}]}}}}",
        refs.join(", ")
    ));
    let bundles: Vec<usize> = i
        .docs
        .iter()
        .filter(|d| d.object["kind"] == "RuleBundle")
        .map(|d| d.object["spec"]["sources"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(bundles, [32, 8]);
}

#[test]
fn options_reach_every_source_and_the_output_parses_back() {
    let mut o = options();
    o.plain_http = true;
    o.cert_secret = Some("registry-ca".into());
    let i = import(
        "artifact: {install: {refs: [falco-rules:5, k8saudit:0.7]}}",
        &index(),
        &o,
    )
    .expect("import");
    for name in ["falco-rules", "k8saudit"] {
        assert_eq!(spec(&i, name)["insecure"], true);
        assert_eq!(spec(&i, name)["certSecretRef"]["name"], "registry-ca");
    }
    assert_eq!(
        spec(&i, "falco-plugins")["nodeFiles"]["directory"],
        "/etc/falco/plugins"
    );
    let text = render(&i, "cmd");
    let mut sources = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_yaml_ng::Value::deserialize(doc).expect("YAML document");
        if value.get("kind").and_then(|k| k.as_str()) == Some("ArtifactSource") {
            let s: crate::api::ArtifactSource =
                serde_yaml_ng::from_value(value).expect("an ArtifactSource");
            assert_eq!(s.metadata.namespace.as_deref(), Some("falco"));
            sources += 1;
        }
    }
    assert_eq!(sources, 2);
}

#[test]
fn a_password_in_the_wrong_place_is_not_in_the_error() {
    for config in [
        "registry: {auth: {basic: \"robot:s3cr3t\"}}",
        "registry: {auth: {basic: [{registry: r, password: [s3cr3t]}]}}",
        "registry: {auth: {basic: [{password: \"s3cr3t\", password: x}]}}",
    ] {
        let e = import(config, &index(), &options())
            .expect_err(config)
            .to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}

#[test]
fn nothing_to_import_is_an_error() {
    assert!(matches!(
        import("indexes: []", &index(), &options()),
        Err(ImportError::NoRefs)
    ));
    assert!(matches!(
        import("- a list", &index(), &options()),
        Err(ImportError::Config(_))
    ));
    assert!(matches!(
        import("artifact: {follow: {refs: [nope:1]}}", &index(), &options()),
        Err(ImportError::Refs(_))
    ));
}
