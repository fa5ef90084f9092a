//! Bad input to every subcommand: one clear line on stderr, a non-zero exit, no panic and
//! no backtrace. Runs without any environment.

mod common;

use std::process::Output;

fn run(args: &[&str]) -> Output {
    common::ocisync()
        .env("RUST_BACKTRACE", "1") // a backtrace, if one slipped through, would show
        .env("RUST_LOG", "info") // as the chart sets it
        .env_remove("KUBECONFIG")
        .args(args)
        .output()
        .expect("run ocisync")
}

fn assert_one_line_error(args: &[&str], code: i32, needle: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got {stderr:?}"
    );
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
}

#[test]
fn bad_flags_are_usage_errors() {
    for sub in ["controller", "agent", "crd", "push", "pull", "verify"] {
        assert_one_line_error(&[sub, "--no-such-flag"], 2, "--no-such-flag");
    }
    assert_one_line_error(&["no-such-command"], 2, "no-such-command");
    assert_one_line_error(&["pull"], 2, "required");
    assert_one_line_error(
        &["push", "f", "oci://h/r:1", "--type", "nonsense"],
        2,
        "nonsense",
    );
}

/// `--node-name=n1` for the agent, a harmless repeat of a flag for the controller.
const NODE: [&str; 2] = ["--concurrency=8", "--node-name=n1"];

#[test]
fn agent_flags_are_checked_before_connecting() {
    assert_one_line_error(
        &["agent", "--node-name=n1", "--allowed-dir=etc/falco"],
        1,
        "--allowed-dir",
    );
    assert_one_line_error(
        &["agent", "--node-name=n1", "--allowed-dir=/etc/../root"],
        1,
        "--allowed-dir",
    );
    assert_one_line_error(&["agent", "--node-name=n1", "--resync=0s"], 2, "--resync");
}

#[test]
fn an_unreadable_kubeconfig_is_named() {
    for sub in ["controller", "agent"] {
        assert_one_line_error(
            &[
                sub,
                "--kubeconfig",
                "/nonexistent/kubeconfig",
                NODE[usize::from(sub == "agent")],
            ],
            1,
            "/nonexistent/kubeconfig",
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("kubeconfig");
    std::fs::write(&garbage, "{{{ not yaml").expect("write");
    assert_one_line_error(
        &[
            "controller",
            "--kubeconfig",
            garbage.to_str().expect("utf8"),
        ],
        1,
        "kubeconfig",
    );
}

#[test]
fn an_unreachable_server_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: abc\n",
    )
    .expect("write");
    for sub in ["controller", "agent"] {
        assert_one_line_error(
            &[
                sub,
                "--kubeconfig",
                kubeconfig.to_str().expect("utf8"),
                NODE[usize::from(sub == "agent")],
            ],
            1,
            "127.0.0.1:1",
        );
    }
    for sub in ["pull", "push"] {
        let file = dir.path().join("f.yaml");
        std::fs::write(&file, "x").expect("write");
        let args: Vec<&str> = match sub {
            "pull" => vec!["pull", "127.0.0.1:1/r:1", "-o", "/tmp/never", "--insecure"],
            _ => vec![
                "push",
                file.to_str().expect("utf8"),
                "127.0.0.1:1/r:1",
                "--type",
                "generic",
                "--insecure",
            ],
        };
        assert_one_line_error(&args, 1, "registry unavailable");
    }
}

#[test]
fn bad_references_and_credentials_files_are_named() {
    assert_one_line_error(
        &["pull", "not a reference", "-o", "/tmp/never"],
        1,
        "invalid reference",
    );
    assert_one_line_error(
        &["pull", "h/r@sha256:abc", "-o", "/tmp/never"],
        1,
        "invalid reference",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.json");
    std::fs::write(&config, "[]").expect("write");
    assert_one_line_error(
        &[
            "pull",
            "127.0.0.1:1/r:1",
            "-o",
            "/tmp/never",
            "--docker-config",
            config.to_str().expect("utf8"),
        ],
        1,
        "docker config",
    );
}

#[test]
fn verify_needs_exactly_one_mode() {
    let r = "127.0.0.1:1/r:1";
    let identity = ["--certificate-identity-regexp", "^x$"];
    let issuer = ["--certificate-oidc-issuer-regexp", "^y$"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "needs a mode"),
        (
            vec!["--key", "k.pub", identity[0], identity[1]],
            "--key cannot",
        ),
        (vec!["--key", "k.pub", issuer[0], issuer[1]], "--key cannot"),
        (
            vec![
                "--key",
                "k.pub",
                identity[0],
                identity[1],
                issuer[0],
                issuer[1],
            ],
            "--key cannot",
        ),
        (
            vec!["--key", "k.pub", "--trusted-root", "t.json"],
            "--key cannot",
        ),
        (identity.to_vec(), "needs --certificate-oidc-issuer-regexp"),
        (issuer.to_vec(), "needs both"),
        (vec!["--trusted-root", "t.json"], "needs both"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["verify", r, "--insecure"];
        args.extend(flags);
        assert_one_line_error(&args, 2, needle);
    }
}

#[test]
fn verify_names_what_it_cannot_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = "127.0.0.1:1/r:1";
    assert_one_line_error(
        &["verify", r, "--insecure", "--key", "/nonexistent/k.pub"],
        1,
        "/nonexistent/k.pub",
    );
    let not_a_key = dir.path().join("k.pub");
    std::fs::write(&not_a_key, "not a key").expect("write");
    let not_a_key = not_a_key.to_str().expect("utf8");
    assert_one_line_error(
        &["verify", r, "--insecure", "--key", not_a_key],
        1,
        not_a_key,
    );
    assert_one_line_error(
        &[
            "verify",
            r,
            "--insecure",
            "--certificate-identity-regexp",
            "a{100000}",
            "--certificate-oidc-issuer-regexp",
            "^y$",
        ],
        1,
        "--certificate-identity-regexp",
    );
    assert_one_line_error(
        &[
            "verify",
            r,
            "--insecure",
            "--certificate-identity-regexp",
            "^x$",
            "--certificate-oidc-issuer-regexp",
            "(",
        ],
        1,
        "--certificate-oidc-issuer-regexp",
    );
    assert_one_line_error(
        &[
            "verify",
            r,
            "--insecure",
            "--certificate-identity-regexp",
            "^x$",
            "--certificate-oidc-issuer-regexp",
            "^y$",
            "--trusted-root",
            "/nonexistent/root.json",
        ],
        1,
        "/nonexistent/root.json",
    );
    // a reachable key, an unreachable registry: the registry's reason
    let key = dir.path().join("ok.pub");
    std::fs::write(&key, P256_PUB).expect("write");
    assert_one_line_error(
        &[
            "verify",
            r,
            "--insecure",
            "--key",
            key.to_str().expect("utf8"),
        ],
        1,
        "registry unavailable",
    );
    let file = dir.path().join("f.yaml");
    std::fs::write(&file, "x").expect("write");
    assert_one_line_error(
        &[
            "push",
            file.to_str().expect("utf8"),
            r,
            "--type",
            "generic",
            "--insecure",
            "--sign-key",
            key.to_str().expect("utf8"),
        ],
        1,
        "signing key",
    );
}

/// A public key (openssl, P-256): valid, but no use as a signing key.
const P256_PUB: &str = include_str!("../src/verify/testdata/p256.pub");

#[test]
fn crd_prints_the_generated_definitions() {
    let out = run(&["crd"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name: artifactsources.ocisync.dev"));
    assert!(text.contains("name: rulebundles.ocisync.dev"));
}
