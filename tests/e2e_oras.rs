//! End-to-end: interoperability with an independent client, oras-py (`make deps`).

mod common;

use common::{BOTH, Env, Which};

fn oras(env: &Env, which: Which, args: &[&str]) -> std::process::Output {
    let mut cmd = common::signing::oras_py(env, which, "oras_interop.py");
    cmd.args(args);
    let out = cmd.output().expect("run oras-py");
    assert!(
        out.status.success(),
        "oras-py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
#[ignore = "needs the test environment and oras-py (make deps): eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
fn oras_py_and_ocisync_read_each_others_artifacts() {
    let env = common::env();
    for which in BOTH {
        let work = tempfile::tempdir().expect("tempdir");
        let input = work.path().join("in");
        std::fs::create_dir(&input).expect("mkdir");
        let salt = common::unique();
        std::fs::write(input.join("rules.yaml"), format!("# {salt}\n- rule: a\n")).expect("write");
        std::fs::write(
            input.join("profile.json"),
            format!("{{\"salt\":\"{salt}\"}}"),
        )
        .expect("write");
        let files = [input.join("rules.yaml"), input.join("profile.json")];
        // oras-py pushes a directory as one titled tar+gzip layer
        std::fs::create_dir_all(input.join("policies/nested")).expect("mkdir");
        std::fs::write(input.join("policies/nested/p.yaml"), format!("# {salt}\n")).expect("write");

        // oras-py pushes, ocisync pulls
        let repo = env.repo(which, "from-oras");
        let target = format!("{repo}:v1");
        let mut args = vec!["push", target.as_str()];
        let mut names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        names.push(input.join("policies").display().to_string());
        args.extend(names.iter().map(String::as_str));
        oras(&env, which, &args);
        let out = work.path().join("ocisync-out");
        let mut pull = common::ocisync();
        pull.args(["pull", &target, "-o"])
            .arg(&out)
            .args(["-O", "json"]);
        pull.args(env.cli_flags(which, work.path()));
        let result = pull.output().expect("ocisync pull");
        assert!(
            result.status.success(),
            "{which:?}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        assert_eq!(
            std::fs::read(out.join("policies/nested/p.yaml")).expect("directory unpacked"),
            format!("# {salt}\n").as_bytes(),
            "{which:?}"
        );
        for f in &files {
            let name = f.file_name().expect("name");
            assert_eq!(
                std::fs::read(out.join(name)).expect("pulled"),
                std::fs::read(f).expect("input"),
                "{which:?}"
            );
        }

        // ocisync pushes, oras-py pulls
        let repo = env.repo(which, "from-ocisync");
        let target = format!("{repo}:v1");
        let mut push = common::ocisync();
        push.arg("push")
            .args(&files)
            .arg(&target)
            .args(["--type", "generic"]);
        push.args(env.cli_flags(which, work.path()));
        let result = push.output().expect("ocisync push");
        assert!(
            result.status.success(),
            "{which:?}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let out = work.path().join("oras-out");
        oras(&env, which, &["pull", &target, out.to_str().expect("utf8")]);
        for f in &files {
            let name = f.file_name().expect("name");
            assert_eq!(
                std::fs::read(out.join(name)).expect("oras-py pulled"),
                std::fs::read(f).expect("input"),
                "{which:?}"
            );
        }
    }
}
