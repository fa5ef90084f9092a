//! End-to-end: node agents as local processes, one per fake Node (a `Node` object with
//! labels and a host-root directory of its own), against the real API server and a
//! controller process. Waits are on status with a deadline; the file system is polled with
//! a deadline where no status says more.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Which;
use common::agent::*;
use common::controller::{Harness, harness, push_files, wait_on};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use ocisync::api::{NodeReport, RuleBundle};

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn files_follow_selectors_revisions_and_deletion_on_exactly_the_selected_nodes() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let run = common::unique();
    let names: Vec<String> = (1..=3).map(|i| format!("e2e-node-{run}-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        let role = if i < 2 { "worker" } else { "infra" };
        node(&h, n, serde_json::json!({"e2e-run": run, "role": role})).await;
    }
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(&h, n, &h.base_url))
        .collect();

    let repo = h.env.repo(Which::Plain, "agent-rules");
    let a1 = format!("- rule: a {run}\r\n  ünï: x\n");
    let b1 = "- macro: b\n".to_string();
    push_files(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco-rules",
        &[("a.yaml", a1.as_bytes()), ("b.yaml", b1.as_bytes())],
        &[],
    );
    source(&h, "rules", &repo).await;
    let selector = serde_json::json!({"matchLabels": {"e2e-run": run, "role": "worker"}});
    h.apply::<RuleBundle>(
        "falco",
        node_bundle(&[], "/etc/falco/rules.d", selector.clone()),
    )
    .await;
    let b = rolled_out(&h, "falco", "Ready on 2 of 2 nodes", (2, 2, 0)).await;
    let r1 = revision_of(&b).expect("revision");
    let want: BTreeMap<String, Vec<u8>> = [
        ("a.yaml".to_string(), a1.clone().into_bytes()),
        ("b.yaml".to_string(), b1.clone().into_bytes()),
    ]
    .into();
    assert_eq!(agents[0].files(), want, "byte for byte on node 1");
    assert_eq!(agents[1].files(), want, "byte for byte on node 2");
    assert!(
        agents[2].files().is_empty(),
        "nothing on the unselected node"
    );

    // relabel: node 2 leaves the selector, node 3 joins; the files follow
    relabel(&h, &names[1], serde_json::json!({"role": "infra"})).await;
    relabel(&h, &names[2], serde_json::json!({"role": "worker"})).await;
    let reports: Api<NodeReport> = Api::all(h.client.clone());
    wait_on(reports.clone(), &names[1], "without the bundle", |r| {
        report_entry(r, "falco").is_none()
    })
    .await;
    assert!(
        agents[1].files().is_empty(),
        "removed from the node that left"
    );
    let rr = r1.clone();
    wait_on(reports.clone(), &names[2], "applied", move |r| {
        report_entry(r, "falco") == Some(("Applied".into(), Some(rr.clone())))
    })
    .await;
    assert_eq!(agents[2].files(), want);
    rolled_out(
        &h,
        "falco",
        "Ready on 2 of 2 nodes after relabelling",
        (2, 2, 0),
    )
    .await;

    // a new revision: a.yaml changes, b.yaml leaves, c.yaml arrives
    let a2 = format!("- rule: a2 {run}\n");
    push_files(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco-rules",
        &[
            ("a.yaml", a2.as_bytes()),
            ("c.yaml", b"- list: c\n  items: []\n"),
        ],
        &[],
    );
    let b = h
        .wait_for::<RuleBundle>("falco", "at the new revision on 2 nodes", move |b| {
            b.is_some_and(|b| {
                revision_of(b).as_ref() != Some(&r1)
                    && bundle_ready(b)
                    && nodes_of(b) == Some((2, 2, 0))
            })
        })
        .await
        .expect("bundle");
    let r2 = revision_of(&b).expect("revision");
    let want2: BTreeMap<String, Vec<u8>> = [
        ("a.yaml".to_string(), a2.clone().into_bytes()),
        ("c.yaml".to_string(), b"- list: c\n  items: []\n".to_vec()),
    ]
    .into();
    assert_eq!(agents[0].files(), want2, "b.yaml gone, c.yaml there");
    assert_eq!(agents[2].files(), want2);

    // drift: a deleted file and an edited file are put back at the next resync
    let dir = agents[0].dir();
    std::fs::remove_file(dir.join("a.yaml")).expect("delete");
    std::fs::write(dir.join("c.yaml"), b"tampered").expect("edit");
    std::fs::write(dir.join("local.yaml"), b"the admin's own").expect("foreign file");
    let mut want_local = want2.clone();
    want_local.insert("local.yaml".into(), b"the admin's own".to_vec());
    eventually("drift repaired", || {
        let now = agents[0].files();
        (now == want_local)
            .then_some(())
            .ok_or(format!("{:?}", now.keys()))
    })
    .await;
    let r = reports.get(&names[0]).await.expect("report");
    assert_eq!(
        report_entry(Some(&r), "falco").and_then(|e| e.1),
        Some(r2),
        "the repaired files are still the bundle's revision"
    );

    // a directory outside the allow-list is refused on every selected node
    h.apply::<RuleBundle>("passwd", node_bundle(&[], "/etc", selector.clone()))
        .await;
    let b = h
        .wait_for::<RuleBundle>("passwd", "NodeFailed", |b| {
            b.is_some_and(|b| nodes_of(b) == Some((2, 0, 2)))
        })
        .await
        .expect("bundle");
    let ready = b
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NodeFailed")
    );
    assert!(
        ready.message.contains("DirectoryNotAllowed"),
        "{}",
        ready.message
    );
    for a in &agents {
        assert!(
            !a.root.path().join("etc/a.yaml").exists(),
            "nothing written outside"
        );
    }

    // deleting the bundle removes the files it wrote, and only those
    let bundles: Api<RuleBundle> = Api::namespaced(h.client.clone(), &h.ns);
    bundles
        .delete("falco", &DeleteParams::default())
        .await
        .expect("delete");
    wait_on(reports.clone(), &names[0], "without the bundle", |r| {
        report_entry(r, "falco").is_none()
    })
    .await;
    assert_eq!(
        agents[0].files().into_keys().collect::<Vec<_>>(),
        ["local.yaml"],
        "only the bundle's files removed"
    );
    let leftovers: Vec<String> = std::fs::read_dir(agents[0].dir())
        .expect("dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("..ocisync"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // a deleted Node's report goes with it
    agents[2].kill();
    delete_nodes(&h, &[names[2].as_str()]).await;
    wait_on(reports.clone(), &names[2], "removed with its Node", |r| {
        r.is_none()
    })
    .await;

    for a in &mut agents {
        a.kill();
    }
    delete_nodes(&h, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    h.cleanup().await;
}

/// Pseudo-random numbers for kill timing, seeded from the clock (no dependency needed).
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        Jitter(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
                | 1,
        )
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The file sets the updates cycle through; consecutive ones differ.
const SETS: [[usize; 4]; 4] = [[0, 1, 2, 3], [4, 5, 6, 7], [0, 2, 4, 6], [1, 3, 5, 7]];

fn content_of(i: usize) -> Vec<u8> {
    let mut v = format!("- list: f{i}\n  items: [").into_bytes();
    v.extend(std::iter::repeat_n(b'x', 256 * 1024));
    v.extend_from_slice(b"]\n# END\n");
    v
}

/// What a reader sees through the data link at one instant: `None` when a swap removed
/// the directory mid-read (the observation is retried), else the file names and whether
/// every file was complete.
fn observe(dir: &Path, link: &str) -> Option<Result<Vec<usize>, String>> {
    let target = std::fs::read_link(dir.join(link)).ok()?;
    let data = dir.join(&target);
    let mut names = Vec::new();
    for e in std::fs::read_dir(&data).ok()?.flatten() {
        let name = e.file_name().to_str()?.to_string();
        if name.starts_with("..") {
            continue;
        }
        let bytes = std::fs::read(e.path()).ok()?;
        let Some(i) = name
            .strip_prefix('f')
            .and_then(|n| n.strip_suffix(".yaml"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return Some(Err(format!("unexpected file {name}")));
        };
        if bytes != content_of(i) {
            return Some(Err(format!(
                "{name} is incomplete or wrong ({} bytes)",
                bytes.len()
            )));
        }
        names.push(i);
    }
    // A directory the link left while it was read is being removed: not an observation.
    if std::fs::read_link(dir.join(link)).ok()? != target {
        return None;
    }
    names.sort();
    Some(Ok(names))
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn sigkill_during_200_rapid_updates_never_shows_a_mixed_or_partial_revision() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let run = common::unique();
    let name = format!("e2e-node-{run}-k");
    node(&h, &name, serde_json::json!({"e2e-run": run})).await;
    let mut agent = Agent::start(&h, &name, &h.base_url);
    let repo = h.env.repo(Which::Plain, "agent-kill");
    let contents: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("f{i}.yaml"), content_of(i)))
        .collect();
    let files: Vec<(&str, &[u8])> = contents
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    push_files(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco-rules",
        &files,
        &[],
    );
    source(&h, "rules", &repo).await;
    let spec = |set: usize| {
        let include: Vec<String> = SETS[set].iter().map(|i| format!("f{i}.yaml")).collect();
        let include: Vec<&str> = include.iter().map(String::as_str).collect();
        let selector = serde_json::json!({"matchLabels": {"e2e-run": run}});
        node_bundle(&include, "/etc/falco/rules.d", selector)
    };
    h.apply::<RuleBundle>("kill", spec(0)).await;
    rolled_out(&h, "kill", "Ready on its node", (1, 1, 0)).await;

    // a reader checks every state it can see until told to stop
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (dir, link, stop_r) = (
        agent.dir(),
        format!("..ocisync.{}.kill", h.ns),
        stop.clone(),
    );
    let reader = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        let mut observations = 0u64;
        while !stop_r.load(std::sync::atomic::Ordering::Relaxed) {
            match observe(&dir, &link) {
                None => continue,
                Some(Err(e)) => return Err(e),
                Some(Ok(names)) => {
                    if !SETS.iter().any(|s| s.as_slice() == names.as_slice()) {
                        return Err(format!("a mixed state: files {names:?}"));
                    }
                    observations += 1;
                    seen.insert(names);
                }
            }
        }
        Ok((observations, seen.len()))
    });

    let mut jitter = Jitter::new();
    let mut kills = 0;
    for i in 1..=200usize {
        h.apply::<RuleBundle>("kill", spec(i % SETS.len())).await;
        // pace the updates so revisions land between kills, and kill at random instants
        tokio::time::sleep(Duration::from_millis(jitter.below(40))).await;
        if jitter.below(6) == 0 {
            agent.kill();
            kills += 1;
            agent.spawn();
        }
    }
    // the final state: converged, exactly the last set, no leftovers
    let last = SETS[200 % SETS.len()];
    let b = rolled_out(&h, "kill", "converged after the updates", (1, 1, 0)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (observations, distinct) = reader
        .join()
        .expect("reader")
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "200 updates, {kills} SIGKILLs, {observations} reader observations of {distinct} distinct revisions, all complete"
    );
    assert!(
        kills > 10 && observations > 100,
        "kills {kills}, observations {observations}"
    );
    let want: Vec<String> = last.iter().map(|i| format!("f{i}.yaml")).collect();
    assert_eq!(agent.files().into_keys().collect::<Vec<_>>(), want);
    let reports: Api<NodeReport> = Api::all(h.client.clone());
    let r = reports.get(&name).await.expect("report");
    assert_eq!(
        report_entry(Some(&r), "kill").and_then(|e| e.1),
        revision_of(&b)
    );
    // A SIGKILL while staging a revision that was then superseded by the last one leaves
    // a staging directory next to a report that truly says the last revision is applied:
    // the restarted agent removes it at its first pass (at most one 2 s resync later).
    let ours = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.starts_with("..ocisync"))
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut left = ours(&agent.dir());
    while left.len() != 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = ours(&agent.dir());
    }
    assert_eq!(
        left.len(),
        2,
        "one data link and one data directory left: {left:?}"
    );
    agent.kill();
    delete_nodes(&h, &[name.as_str()]).await;
    h.cleanup().await;
}

/// An artifact server that answers every request with the wrong bytes.
async fn lying_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // the agent under test may hang up at any point: the test checks its report
                if !matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {
                    return; // no request came
                }
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nlies!\n",
                )
                .await
                .ok();
            });
        }
    });
    url
}

/// A 256 KiB tmpfs mounted over a directory, for a disk that fills up; unmounted on drop.
struct SmallDisk {
    dir: Option<PathBuf>,
}

impl SmallDisk {
    /// Mounts it over `dir`, with `dir`'s owner and mode (so the agent can write to it). Needs
    /// root, or sudo without a password (`sudo -n`), as `e2e/testenv.sh` uses; the error says
    /// why it could not.
    fn mount(dir: &Path) -> Result<SmallDisk, String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let options = format!(
            "size=256k,uid={},gid={},mode={:o}",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        );
        as_root(&[
            "mount".as_ref(),
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "-o".as_ref(),
            options.as_ref(),
            "tmpfs".as_ref(),
            dir.as_os_str(),
        ])?;
        Ok(SmallDisk {
            dir: Some(dir.to_path_buf()),
        })
    }

    /// Unmounts it; the test fails if that does not work.
    fn unmount(mut self) {
        if let Some(dir) = self.dir.take() {
            as_root(&["umount".as_ref(), dir.as_os_str()]).expect("unmount the small disk");
        }
    }
}

impl Drop for SmallDisk {
    /// Only after a failure (`unmount` took the directory otherwise): best effort, the test
    /// has already failed and says why.
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && let Err(e) = as_root(&["umount".as_ref(), dir.as_os_str()])
        {
            eprintln!("the small disk at {} stays mounted: {e}", dir.display());
        }
    }
}

/// Runs a command as root: directly when we are root, else through `sudo -n` (never asks
/// for a password). The error has the command's stderr.
fn as_root(args: &[&OsStr]) -> Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let mut c = if root {
        Command::new(args[0])
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg(args[0]);
        c
    };
    let out = c
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn bad_servers_and_full_disks_are_reported_and_the_last_good_files_stay() {
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let run = common::unique();
    let names: Vec<String> = ["unreachable", "liar", "full"]
        .iter()
        .map(|k| format!("e2e-node-{run}-{k}"))
        .collect();
    for n in &names {
        node(&h, n, serde_json::json!({"e2e-run": run})).await;
    }
    let mut unreachable = Agent::start(&h, &names[0], "http://127.0.0.1:1");
    let mut liar = Agent::start(&h, &names[1], &h.base_url);
    // no free-space reserve: the small tmpfs takes the first revision, not the second
    let mut full = Agent::start_with(
        &h,
        &names[2],
        &h.base_url,
        &["--allowed-dir=/etc/falco", "--min-free-bytes=0"],
    );
    full.kill();
    let allowed = full.root.path().join("etc/falco");
    let disk = match SmallDisk::mount(&allowed) {
        Ok(disk) => Some(disk),
        Err(why) if common::required() => {
            panic!("OCISYNC_E2E_REQUIRED=1 but the full-disk case cannot be set up: {why}")
        }
        Err(why) => {
            eprintln!("skipped the full-disk case: cannot mount a small tmpfs here: {why}");
            None
        }
    };
    let mounted = disk.is_some();
    full.spawn();

    let repo = h.env.repo(Which::Plain, "agent-bad");
    let small = format!("- rule: small {run}\n");
    push_files(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco-rules",
        &[("a.yaml", small.as_bytes())],
        &[],
    );
    source(&h, "rules", &repo).await;
    let selector = serde_json::json!({"matchLabels": {"e2e-run": run}});
    h.apply::<RuleBundle>("bad", node_bundle(&[], "/etc/falco/rules.d", selector))
        .await;
    let b = h
        .wait_for::<RuleBundle>("bad", "on 2 of 3 nodes, 1 failed", |b| {
            b.is_some_and(|b| nodes_of(b) == Some((3, 2, 1)))
        })
        .await
        .expect("bundle");
    let r1 = revision_of(&b);
    let reports: Api<NodeReport> = Api::all(h.client.clone());
    let r = reports.get(&names[0]).await.expect("report");
    let e = &r.spec.bundles[0];
    assert_eq!(e.reason.as_str(), "FetchFailed", "{e:?}");
    assert!(e.message.contains("127.0.0.1:1"), "{}", e.message);
    let want: BTreeMap<String, Vec<u8>> =
        [("a.yaml".to_string(), small.clone().into_bytes())].into();
    assert_eq!(liar.files(), want);
    assert_eq!(full.files(), want);

    // the liar's agent now fetches from a server that sends wrong bytes; the full node's
    // disk cannot take the next revision
    liar.kill();
    let lies = lying_server().await;
    liar.args.retain(|a| !a.starts_with("--controller-url"));
    liar.args.push(format!("--controller-url={lies}"));
    liar.spawn();
    let big = format!("- list: big\n  items: [\"{}\"]\n", "y".repeat(600_000));
    push_files(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco-rules",
        &[("a.yaml", big.as_bytes())],
        &[],
    );
    h.request_check("rules", "bad-1").await;
    let expected_failed = if mounted { 3 } else { 2 };
    h.wait_for::<RuleBundle>("bad", "failing on the bad nodes", move |b| {
        b.is_some_and(|b| revision_of(b) != r1 && nodes_of(b).map(|n| n.2) == Some(expected_failed))
    })
    .await;
    let r1c = revision_of(&b);
    let r = wait_on(reports.clone(), &names[1], "DigestMismatch", |r| {
        report_entry(r, "bad").is_some_and(|e| e.0 == "DigestMismatch")
    })
    .await
    .expect("report");
    assert_eq!(
        report_entry(Some(&r), "bad").and_then(|e| e.1),
        r1c,
        "still reports the revision on disk"
    );
    assert_eq!(
        liar.files(),
        want,
        "last good files kept after a lying server"
    );
    if mounted {
        // refused before any fetch: the revision does not fit the free space
        let r = wait_on(reports.clone(), &names[2], "InsufficientSpace", |r| {
            report_entry(r, "bad").is_some_and(|e| e.0 == "InsufficientSpace")
        })
        .await
        .expect("report");
        let msg = &r.spec.bundles[0].message;
        assert!(msg.contains("bytes are free"), "{msg}");
        assert_eq!(full.files(), want, "last good files kept on a full disk");
    }
    for a in [&mut unreachable, &mut liar, &mut full] {
        let alive = a
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        assert!(alive, "the agent keeps running");
        a.kill();
    }
    if let Some(disk) = disk {
        disk.unmount();
    }
    delete_nodes(&h, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    h.cleanup().await;
}

/// A kubeconfig for the ServiceAccount `sa`, with a token from the TokenRequest API.
async fn kubeconfig_as(h: &Harness, sa: &str, path: &Path) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(h.client.clone(), &h.ns);
    let body: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": sa}})).expect("sa");
    sas.create(&PostParams::default(), &body)
        .await
        .expect("create service account");
    let token = common::service_account_token(&h.client, &h.ns, sa).await;
    let mut config = kube::config::Kubeconfig::read_from(&h.env.kubeconfig).expect("kubeconfig");
    for named in &mut config.auth_infos {
        named.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    let yaml = serde_yaml_ng::to_string(&config).expect("kubeconfig yaml");
    std::fs::write(path, yaml).expect("write kubeconfig");
}

/// What the agent may do: read bundles, Nodes and reports; with `write`, also write reports.
async fn agent_role(h: &Harness, name: &str, write: bool) {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let report_verbs = if write {
        serde_json::json!(["get", "list", "watch", "create", "patch"])
    } else {
        serde_json::json!(["get", "list", "watch"])
    };
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": ["ocisync.dev"], "resources": ["rulebundles"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["ocisync.dev"], "resources": ["nodereports"], "verbs": report_verbs},
        ],
    });
    Api::<ClusterRole>::all(h.client.clone())
        .patch(
            name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(role),
        )
        .await
        .expect("cluster role");
}

#[tokio::test]
#[ignore = "needs the test environment: eval \"$(e2e/testenv.sh up --node)\" (make e2e runs it)"]
async fn files_stay_while_the_report_cannot_be_marked_before_a_write() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let h = harness().await;
    let work = tempfile::tempdir().expect("tempdir");
    let run = common::unique();
    let name = format!("e2e-node-{run}-r");
    node(&h, &name, serde_json::json!({"e2e-run": run})).await;
    let mut agent = Agent::start(&h, &name, &h.base_url);
    let repo = h.env.repo(Which::Plain, "agent-report");
    push_files(
        &h.env,
        Which::Plain,
        work.path(),
        &format!("{repo}:1"),
        "falco-rules",
        &[("a.yaml", b"- list: a\n"), ("b.yaml", b"- list: b\n")],
        &[],
    );
    source(&h, "rules", &repo).await;
    let spec = |include: &[&str]| {
        let selector = serde_json::json!({"matchLabels": {"e2e-run": run}});
        node_bundle(include, "/etc/falco/rules.d", selector)
    };
    h.apply::<RuleBundle>("r", spec(&["a.yaml", "b.yaml"]))
        .await;
    rolled_out(&h, "r", "Ready on its node", (1, 1, 0)).await;
    let both: Vec<String> = vec!["a.yaml".into(), "b.yaml".into()];
    // the report as the first agent process left it
    let reports: Api<NodeReport> = Api::all(h.client.clone());
    let before = reports.get(&name).await.expect("report");
    assert_eq!(agent.files().into_keys().collect::<Vec<_>>(), both);

    // The same agent, now allowed to read its report but not to write it.
    let role = format!("e2e-agent-{run}");
    agent_role(&h, &role, false).await;
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": h.ns}],
    });
    Api::<ClusterRoleBinding>::all(h.client.clone())
        .patch(
            &role,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(binding),
        )
        .await
        .expect("binding");
    let kubeconfig = work.path().join("agent.kubeconfig");
    kubeconfig_as(&h, "agent", &kubeconfig).await;
    agent.restart_as(&kubeconfig);

    // A new revision: its report still claims the old one, and cannot be marked, so the
    // files must not change.
    h.apply::<RuleBundle>("r", spec(&["a.yaml"])).await;
    eventually("the agent refuses to write", || {
        let log = agent.log_text();
        log.contains("ReportFailed")
            .then_some(())
            .ok_or_else(|| "no ReportFailed in the agent's log yet".to_string())
    })
    .await;
    assert_eq!(
        agent.files().into_keys().collect::<Vec<_>>(),
        both,
        "files changed while the report still claimed the old revision"
    );
    let b = h
        .wait_for::<RuleBundle>("r", "pending on its node", |b| {
            b.is_some_and(|b| bundle_ready(b) || nodes_of(b) == Some((1, 0, 0)))
        })
        .await
        .expect("bundle");
    assert_eq!(nodes_of(&b), Some((1, 0, 0)), "not counted as updated");

    // Allowed to write again: the agent marks, writes and reports the new revision.
    agent_role(&h, &role, true).await;
    let b = rolled_out(
        &h,
        "r",
        "Ready on its node with the new revision",
        (1, 1, 0),
    )
    .await;
    assert_eq!(agent.files().into_keys().collect::<Vec<_>>(), ["a.yaml"]);
    let r = reports.get(&name).await.expect("report");
    assert_eq!(
        report_entry(Some(&r), "r"),
        Some(("Applied".into(), revision_of(&b)))
    );
    // The new process has written under its own instance, so a write the first process
    // might still have had in flight (conditional on the version it knew) cannot land.
    let instance = |r: &NodeReport| {
        r.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("ocisync.dev/agent-instance").cloned())
    };
    assert!(instance(&r).is_some() && instance(&r) != instance(&before));
    let stale = serde_json::json!({
        "apiVersion": "ocisync.dev/v1alpha1", "kind": "NodeReport",
        "metadata": {"name": name, "resourceVersion": before.metadata.resource_version},
        "spec": before.spec,
    });
    let e = reports
        .patch(
            &name,
            &PatchParams::apply("ocisync").force(),
            &Patch::Apply(stale),
        )
        .await
        .expect_err("a write at the predecessor's version");
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 409), "{e}");
    agent.kill();
    common::deleted(
        Api::<ClusterRoleBinding>::all(h.client.clone())
            .delete(&role, &DeleteParams::default())
            .await,
        "the ClusterRoleBinding",
    );
    common::deleted(
        Api::<ClusterRole>::all(h.client.clone())
            .delete(&role, &DeleteParams::default())
            .await,
        "the ClusterRole",
    );
    delete_nodes(&h, &[name.as_str()]).await;
    h.cleanup().await;
}
