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
    for sub in ["controller", "agent", "crd", "push", "pull"] {
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
fn crd_prints_the_generated_definitions() {
    let out = run(&["crd"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name: artifactsources.ocisync.dev"));
    assert!(text.contains("name: rulebundles.ocisync.dev"));
}
