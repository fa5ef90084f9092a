use super::*;
use crate::api::reason::NodeReason;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

fn digest(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
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
            staging.create(&f.key).unwrap().write_all(bytes).unwrap();
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

/// A bundle's target in `root/rules.d`, and that directory's path.
fn target_in(root: &Path, id: &str) -> (Target, PathBuf) {
    let dir = SafeDir::open(root, Path::new("rules.d"), true)
        .unwrap()
        .unwrap();
    (Target::new(dir, id.into()), root.join("rules.d"))
}

fn target(root: &Path) -> Target {
    target_in(root, "ns.b").0
}

fn dir_of(root: &Path) -> PathBuf {
    root.join("rules.d")
}

#[test]
fn revisions_swap_whole_and_files_that_left_disappear() {
    let tmp = tempfile::tempdir().unwrap();
    let t = target(tmp.path());
    apply(&t, "r1", &[("a.yaml", b"a1"), ("b.yaml", b"b1")]).unwrap();
    assert_eq!(
        visible(&dir_of(tmp.path())),
        [
            ("a.yaml".into(), "a1".into()),
            ("b.yaml".into(), "b1".into())
        ]
    );
    assert_eq!(t.current_revision().as_deref(), Some("r1"));
    apply(&t, "r2", &[("a.yaml", b"a2"), ("c.yaml", b"c2")]).unwrap();
    assert_eq!(
        visible(&dir_of(tmp.path())),
        [
            ("a.yaml".into(), "a2".into()),
            ("c.yaml".into(), "c2".into())
        ]
    );
    assert!(
        fs::symlink_metadata(dir_of(tmp.path()).join("b.yaml")).is_err(),
        "link removed"
    );
    let data_dirs = fs::read_dir(dir_of(tmp.path()))
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
    fs::remove_file(dir_of(tmp.path()).join("a.yaml")).unwrap();
    assert!(!t.verify("r1", &wanted));
    apply(&t, "r1", &files).unwrap();
    assert!(t.verify("r1", &wanted));
    // content changed through the link, and a link replaced by a plain file
    fs::write(dir_of(tmp.path()).join("a.yaml"), b"tampered").unwrap();
    fs::remove_file(dir_of(tmp.path()).join("b.yaml")).unwrap();
    fs::write(dir_of(tmp.path()).join("b.yaml"), b"mine now").unwrap();
    assert!(!t.verify("r1", &wanted));
    apply(&t, "r1", &files).unwrap();
    assert!(t.verify("r1", &wanted));
    // a file that grew on the host is read no further than its size, and is drift
    let grown = dir_of(tmp.path()).join("a.yaml");
    let mut f = fs::OpenOptions::new().append(true).open(&grown).unwrap();
    std::io::Write::write_all(&mut f, b" and more").unwrap();
    assert!(!t.verify("r1", &wanted));
    apply(&t, "r1", &files).unwrap();
    assert!(t.verify("r1", &wanted));
    assert_eq!(
        visible(&dir_of(tmp.path())),
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
    fs::write(dir_of(tmp.path()).join("local.yaml"), b"the admin's").unwrap();
    let err = apply(&t, "r1", &[("local.yaml", b"ours")]).unwrap_err();
    assert_eq!(err.reason(), NodeReason::FileConflict);
    assert_eq!(
        fs::read(dir_of(tmp.path()).join("local.yaml")).unwrap(),
        b"the admin's"
    );
    assert_eq!(t.current_revision(), None, "nothing swapped in");
    // another bundle in the same directory keeps its files when this one is removed
    let other = target_in(tmp.path(), "ns.other").0;
    apply(&other, "o1", &[("o.yaml", b"o")]).unwrap();
    apply(&t, "r1", &[("x.yaml", b"x")]).unwrap();
    t.remove().unwrap();
    assert_eq!(
        visible(&dir_of(tmp.path())),
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
        staging
            .create("a.yaml")
            .unwrap()
            .write_all(b"half")
            .unwrap();
        // dropped without commit, as when a fetch fails
    }
    assert_eq!(
        visible(&dir_of(tmp.path())),
        [("a.yaml".into(), "a1".into())]
    );
    let leftovers = fs::read_dir(dir_of(tmp.path()))
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
    let stray = dir_of(tmp.path()).join("..ocisync.ns.b..b");
    fs::create_dir(&stray).unwrap();
    fs::write(stray.join("a.yaml"), b"half").unwrap();
    t.tidy().unwrap();
    assert!(!stray.exists());
    assert_eq!(t.current_revision().as_deref(), Some("r1"));
    assert_eq!(
        visible(&dir_of(tmp.path())),
        [("a.yaml".into(), "a1".into())]
    );
}

#[test]
fn ids_that_are_prefixes_of_each_other_never_touch_each_others_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, dir) = target_in(tmp.path(), "ns.a");
    let (ab, _) = target_in(tmp.path(), "ns.a.b");
    let (a_link, _) = target_in(tmp.path(), "ns.a.link");
    apply(&ab, "rab", &[("ab.yaml", b"ab")]).unwrap();
    apply(&a_link, "rl", &[("l.yaml", b"l")]).unwrap();
    apply(&a, "ra1", &[("a.yaml", b"a1")]).unwrap();
    apply(&a, "ra2", &[("a.yaml", b"a2")]).unwrap();
    a.tidy().unwrap();
    assert_eq!(ab.current_revision().as_deref(), Some("rab"));
    assert_eq!(a_link.current_revision().as_deref(), Some("rl"));
    a.remove().unwrap();
    assert_eq!(
        visible(&dir),
        [
            ("ab.yaml".into(), "ab".into()),
            ("l.yaml".into(), "l".into())
        ]
    );
    assert_eq!(ab.current_revision().as_deref(), Some("rab"));
    assert_eq!(a_link.current_revision().as_deref(), Some("rl"));
}

#[test]
fn a_link_planted_in_the_data_directory_never_makes_a_host_file_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, dir) = target_in(tmp.path(), "ns.b");
    fs::write(dir.join("falco.yaml"), b"the host's own").unwrap();
    apply(&t, "r1", &[("a.yaml", b"a1")]).unwrap();
    // someone puts a link named falco.yaml inside the bundle's current data directory
    symlink(
        "../..ocisync.ns.c/falco.yaml",
        dir.join("..ocisync.ns.b/falco.yaml"),
    )
    .unwrap();
    let err = apply(&t, "r2", &[("a.yaml", b"a2"), ("falco.yaml", b"evil")]).unwrap_err();
    assert_eq!(err.reason(), NodeReason::FileConflict);
    assert_eq!(fs::read(dir.join("falco.yaml")).unwrap(), b"the host's own");
    assert_eq!(t.current_revision().as_deref(), Some("r1"));
    // a link elsewhere that someone put under a key's name is not followed or removed
    let outside = tmp.path().join("outside");
    fs::write(&outside, b"outside").unwrap();
    symlink(&outside, dir.join("o.yaml")).unwrap();
    assert_eq!(
        apply(&t, "r3", &[("o.yaml", b"x")]).unwrap_err().reason(),
        NodeReason::FileConflict
    );
    t.remove().unwrap();
    assert_eq!(fs::read(&outside).unwrap(), b"outside");
    assert!(
        fs::symlink_metadata(dir.join("o.yaml")).is_ok(),
        "not ours, kept"
    );
    assert_eq!(fs::read(dir.join("falco.yaml")).unwrap(), b"the host's own");
}

#[test]
fn the_layout_before_slots_is_read_and_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, dir) = target_in(tmp.path(), "ns.b");
    let old = dir.join("..ocisync.ns.b.17f00ba4");
    fs::create_dir(&old).unwrap();
    fs::write(old.join("a.yaml"), b"a0").unwrap();
    fs::write(old.join("..revision"), b"r0").unwrap();
    symlink("..ocisync.ns.b.17f00ba4", dir.join("..ocisync.ns.b")).unwrap();
    symlink("..ocisync.ns.b/a.yaml", dir.join("a.yaml")).unwrap();
    assert_eq!(t.current_revision().as_deref(), Some("r0"));
    apply(&t, "r1", &[("b.yaml", b"b1")]).unwrap();
    assert!(
        !old.exists(),
        "the old data directory is removed after the swap"
    );
    assert_eq!(visible(&dir), [("b.yaml".into(), "b1".into())]);
}

#[test]
fn a_data_link_pointed_at_another_bundles_slot_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, dir) = target_in(tmp.path(), "ns.a");
    let (ab, _) = target_in(tmp.path(), "ns.a.b");
    apply(&a, "r1", &[("a.yaml", b"a1")]).unwrap();
    apply(&ab, "r1", &[("ab.yaml", b"ab1")]).unwrap();
    // a host process swaps a's data link for one into a.b's slot
    fs::remove_file(dir.join("..ocisync.ns.a")).unwrap();
    symlink("..ocisync.ns.a.b..a", dir.join("..ocisync.ns.a")).unwrap();
    assert_eq!(a.current_revision(), None, "not a's data");
    a.remove().unwrap();
    assert_eq!(ab.current_revision().as_deref(), Some("r1"));
    assert_eq!(fs::read(dir.join("ab.yaml")).unwrap(), b"ab1");
}

#[test]
fn links_of_a_write_killed_around_its_swap_are_tidied() {
    let tmp = tempfile::tempdir().unwrap();
    let (x, dir) = target_in(tmp.path(), "ns.x");
    apply(&x, "r1", &[("a.yaml", b"a1")]).unwrap();
    // r2 adds k.yaml; killed (no Drop) after its links were made, before the swap
    let wanted = |k: &str, b: &[u8]| WantedFile {
        key: k.into(),
        digest: digest(b),
        size: b.len() as u64,
    };
    let staging = x.stage().unwrap();
    staging.create("k.yaml").unwrap().write_all(b"k").unwrap();
    staging.create("a.yaml").unwrap().write_all(b"a1").unwrap();
    let files = [wanted("a.yaml", b"a1"), wanted("k.yaml", b"k")];
    // what commit writes before its links: the staged revision's record
    let record =
        serde_json::to_vec(&serde_json::json!({"revision": "r2", "keys": ["a.yaml", "k.yaml"]}))
            .unwrap();
    staging
        .create("..revision")
        .unwrap()
        .write_all(&record)
        .unwrap();
    x.link_key("k.yaml", false).unwrap();
    std::mem::forget(staging);
    assert!(fs::symlink_metadata(dir.join("k.yaml")).is_ok());
    // the next pass tidies: the dangling link goes with the slot
    x.tidy().unwrap();
    assert!(fs::symlink_metadata(dir.join("k.yaml")).is_err());
    assert_eq!(visible(&dir), [("a.yaml".into(), "a1".into())]);
    // a commit that fails half-way (a conflict on its second new key) takes back its links
    fs::write(dir.join("z.yaml"), b"someone's").unwrap();
    let staging = x.stage().unwrap();
    for (k, b) in [
        ("a.yaml", b"a1" as &[u8]),
        ("k.yaml", b"k"),
        ("z.yaml", b"z"),
    ] {
        staging.create(k).unwrap().write_all(b).unwrap();
    }
    let three = [files[0].clone(), files[1].clone(), wanted("z.yaml", b"z")];
    assert_eq!(
        x.commit(staging, "r3", &three).unwrap_err().reason(),
        NodeReason::FileConflict
    );
    assert!(
        fs::symlink_metadata(dir.join("k.yaml")).is_err(),
        "k.yaml link taken back"
    );
    // and a removal after a kill between swap and clean-up takes every link of ours
    apply(&x, "r4", &[("a.yaml", b"a1"), ("k.yaml", b"k")]).unwrap();
    x.remove().unwrap();
    let (y, _) = target_in(tmp.path(), "other.y");
    apply(&y, "r1", &[("k.yaml", b"y")]).unwrap();
}
