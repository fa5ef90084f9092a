use super::*;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes a revision the way the agent does, with `content` standing in for the fetch.
fn apply(t: &Target, revision: &str, files: &[(&str, &[u8])]) -> Result<(), DiskError> {
    let wanted: Vec<WantedFile> = files
        .iter()
        .map(|(k, b)| WantedFile {
            key: k.to_string(),
            digest: digest(b),
            size: b.len() as u64,
        })
        .collect();
    let staging = t.stage()?;
    for (f, (_, bytes)) in wanted.iter().zip(files) {
        if !t.reuse(&staging, f) {
            fs::write(staging.path_of(&f.key), bytes).unwrap();
        }
    }
    t.commit(staging, revision, &wanted)
}

fn visible(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name.starts_with("..") {
                return None;
            }
            Some((name, fs::read_to_string(e.path()).ok()?))
        })
        .collect();
    out.sort();
    out
}

fn target(dir: &Path) -> Target {
    Target {
        dir: dir.join("rules.d"),
        id: "ns.b".into(),
    }
}

#[test]
fn revisions_swap_whole_and_files_that_left_disappear() {
    let tmp = tempfile::tempdir().unwrap();
    let t = target(tmp.path());
    apply(&t, "r1", &[("a.yaml", b"a1"), ("b.yaml", b"b1")]).unwrap();
    assert_eq!(
        visible(&t.dir),
        [
            ("a.yaml".into(), "a1".into()),
            ("b.yaml".into(), "b1".into())
        ]
    );
    assert_eq!(t.current_revision().as_deref(), Some("r1"));
    apply(&t, "r2", &[("a.yaml", b"a2"), ("c.yaml", b"c2")]).unwrap();
    assert_eq!(
        visible(&t.dir),
        [
            ("a.yaml".into(), "a2".into()),
            ("c.yaml".into(), "c2".into())
        ]
    );
    assert!(
        fs::symlink_metadata(t.dir.join("b.yaml")).is_err(),
        "link removed"
    );
    let data_dirs = fs::read_dir(&t.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .count();
    assert_eq!(data_dirs, 1, "old data directories removed");
}

#[test]
fn verify_sees_drift_and_apply_repairs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = target(tmp.path());
    let files = [("a.yaml", b"a1" as &[u8]), ("b.yaml", b"b1")];
    apply(&t, "r1", &files).unwrap();
    let wanted: Vec<WantedFile> = files
        .iter()
        .map(|(k, b)| WantedFile {
            key: k.to_string(),
            digest: digest(b),
            size: 2,
        })
        .collect();
    assert!(t.verify("r1", &wanted));
    assert!(!t.verify("r2", &wanted));
    // a deleted link
    fs::remove_file(t.dir.join("a.yaml")).unwrap();
    assert!(!t.verify("r1", &wanted));
    apply(&t, "r1", &files).unwrap();
    assert!(t.verify("r1", &wanted));
    // content changed through the link, and a link replaced by a plain file
    fs::write(t.dir.join("a.yaml"), b"tampered").unwrap();
    fs::remove_file(t.dir.join("b.yaml")).unwrap();
    fs::write(t.dir.join("b.yaml"), b"mine now").unwrap();
    assert!(!t.verify("r1", &wanted));
    apply(&t, "r1", &files).unwrap();
    assert!(t.verify("r1", &wanted));
    assert_eq!(
        visible(&t.dir),
        [
            ("a.yaml".into(), "a1".into()),
            ("b.yaml".into(), "b1".into())
        ]
    );
}

#[test]
fn foreign_files_are_never_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let t = target(tmp.path());
    fs::create_dir_all(&t.dir).unwrap();
    fs::write(t.dir.join("local.yaml"), b"the admin's").unwrap();
    let err = apply(&t, "r1", &[("local.yaml", b"ours")]).unwrap_err();
    assert_eq!(err.reason(), "FileConflict");
    assert_eq!(fs::read(t.dir.join("local.yaml")).unwrap(), b"the admin's");
    assert_eq!(t.current_revision(), None, "nothing swapped in");
    // another bundle in the same directory keeps its files when this one is removed
    let other = Target {
        dir: t.dir.clone(),
        id: "ns.other".into(),
    };
    apply(&other, "o1", &[("o.yaml", b"o")]).unwrap();
    apply(&t, "r1", &[("x.yaml", b"x")]).unwrap();
    t.remove().unwrap();
    assert_eq!(
        visible(&t.dir),
        [
            ("local.yaml".into(), "the admin's".into()),
            ("o.yaml".into(), "o".into())
        ]
    );
    assert_eq!(other.current_revision().as_deref(), Some("o1"));
}

#[test]
fn a_failed_staging_leaves_the_last_good_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let t = target(tmp.path());
    apply(&t, "r1", &[("a.yaml", b"a1")]).unwrap();
    {
        let staging = t.stage().unwrap();
        fs::write(staging.path_of("a.yaml"), b"half").unwrap();
        // dropped without commit, as when a fetch fails
    }
    assert_eq!(visible(&t.dir), [("a.yaml".into(), "a1".into())]);
    let leftovers = fs::read_dir(&t.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .count();
    assert_eq!(leftovers, 1);
}

#[test]
fn tidy_clears_what_a_killed_write_left() {
    let tmp = tempfile::tempdir().unwrap();
    let t = target(tmp.path());
    apply(&t, "r1", &[("a.yaml", b"a1")]).unwrap();
    // a staging directory that a SIGKILL kept from being dropped
    let stray = t.dir.join("..ocisync.ns.b.deadbeef");
    fs::create_dir(&stray).unwrap();
    fs::write(stray.join("a.yaml"), b"half").unwrap();
    t.tidy().unwrap();
    assert!(!stray.exists());
    assert_eq!(t.current_revision().as_deref(), Some("r1"));
    assert_eq!(visible(&t.dir), [("a.yaml".into(), "a1".into())]);
}
