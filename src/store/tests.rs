use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;

fn digest_of(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

fn manifest(n: u8) -> Digest {
    Digest::from_hex(&hex::encode([n; 32])).unwrap()
}

/// Writes `files` into a fresh staging directory and returns it with their index entries.
fn stage(store: &Store, files: &[(&str, &[u8])]) -> (tempfile::TempDir, Vec<IndexFile>) {
    let dir = store.staging_dir().unwrap();
    let mut listed = Vec::new();
    for (path, bytes) in files {
        let full = dir.path().join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, bytes).unwrap();
        listed.push(IndexFile {
            path: path.to_string(),
            digest: digest_of(bytes),
            size: bytes.len() as u64,
            platform: None,
        });
    }
    (dir, listed)
}

fn open() -> (tempfile::TempDir, Store) {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    (root, store)
}

#[test]
fn commit_then_read_back() {
    let (_root, store) = open();
    let (staging, files) = stage(&store, &[("rules/b.yaml", b"bee"), ("a.yaml", b"ay")]);
    assert!(!store.has(&manifest(1)));
    let index = store.commit(&manifest(1), staging.path(), &files).unwrap();
    assert_eq!(index.digest, manifest(1));
    let paths: Vec<&str> = index.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["a.yaml", "rules/b.yaml"], "sorted by path");
    assert!(store.has(&manifest(1)));
    assert_eq!(store.index(&manifest(1)), Some(index.clone()));
    for file in &index.files {
        let blob = store.blob_path(&file.digest).unwrap();
        let meta = fs::metadata(&blob).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
        assert_eq!(meta.len(), file.size);
    }
    assert_eq!(
        fs::read(store.blob_path(&digest_of(b"bee")).unwrap()).unwrap(),
        b"bee"
    );
    assert!(store.blob_path(&digest_of(b"absent")).is_none());
    assert!(store.index(&manifest(2)).is_none());
    // Idempotent: the same revision again, now with every blob already present.
    let (staging, files) = stage(&store, &[("a.yaml", b"ay"), ("rules/b.yaml", b"bee")]);
    assert_eq!(
        store.commit(&manifest(1), staging.path(), &files).unwrap(),
        index
    );
    assert!(store.has(&manifest(1)));
}

#[test]
fn open_clears_stale_tmp_and_keeps_content() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (staging, files) = stage(&store, &[("x", b"x")]);
    store.commit(&manifest(1), staging.path(), &files).unwrap();
    let leftover = store.staging_dir().unwrap().keep();
    fs::write(leftover.join("half"), b"h").unwrap();
    fs::write(root.path().join("tmp").join("index-stale"), b"{").unwrap();
    drop(staging);
    let store = Store::open(root.path()).unwrap();
    assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
    assert!(store.has(&manifest(1)));
}

#[test]
fn identical_content_is_stored_once() {
    let (_root, store) = open();
    let (s1, f1) = stage(&store, &[("rules.yaml", b"same"), ("one", b"1")]);
    store.commit(&manifest(1), s1.path(), &f1).unwrap();
    let (s2, f2) = stage(&store, &[("renamed.yaml", b"same"), ("two", b"2")]);
    store.commit(&manifest(2), s2.path(), &f2).unwrap();
    let usage = store.usage();
    assert_eq!(
        usage,
        StoreUsage {
            revisions: 2,
            blobs: 3,
            // three blobs of a block each, two indexes of two entries and a block of JSON
            bytes: 3 * BLOCK + 2 * 3 * BLOCK
        }
    );
    // The duplicate was verified but left in the second staging directory.
    assert!(s2.path().join("renamed.yaml").exists());
    assert!(!s2.path().join("two").exists());

    // The same bytes twice within one revision.
    let (s3, f3) = stage(&store, &[("x/a", b"twice"), ("y/b", b"twice")]);
    let index = store.commit(&manifest(3), s3.path(), &f3).unwrap();
    assert_eq!(index.files[0].digest, index.files[1].digest);
    assert!(store.has(&manifest(3)));
    assert_eq!(store.usage().blobs, 4);
}

#[test]
fn gc_keeps_listed_revisions_and_their_blobs() {
    let (_root, store) = open();
    let (s1, f1) = stage(&store, &[("shared", b"shared"), ("only1", b"only one")]);
    store.commit(&manifest(1), s1.path(), &f1).unwrap();
    let (s2, f2) = stage(&store, &[("shared", b"shared"), ("only2", b"only two")]);
    store.commit(&manifest(2), s2.path(), &f2).unwrap();
    let (s3, f3) = stage(&store, &[("only3", b"three")]);
    store.commit(&manifest(3), s3.path(), &f3).unwrap();

    let keep: HashSet<Digest> = [manifest(1), manifest(9)].into_iter().collect();
    let report = store.gc(&keep).unwrap();
    assert_eq!(report.removed_revisions, 2);
    assert_eq!(report.removed_blobs, 2);
    assert_eq!(report.freed_bytes, 8 + 5);
    assert!(store.has(&manifest(1)));
    assert!(!store.has(&manifest(2)));
    assert!(store.index(&manifest(3)).is_none());
    assert!(store.blob_path(&digest_of(b"shared")).is_some());
    assert!(store.blob_path(&digest_of(b"only two")).is_none());

    // Nothing kept: the shared blob goes as well.
    let report = store.gc(&HashSet::new()).unwrap();
    assert_eq!((report.removed_revisions, report.removed_blobs), (1, 2));
    assert_eq!(store.usage(), StoreUsage::default());
}

#[test]
fn has_is_false_when_a_blob_is_missing() {
    let (_root, store) = open();
    let (staging, files) = stage(&store, &[("a", b"a")]);
    store.commit(&manifest(1), staging.path(), &files).unwrap();
    fs::remove_file(store.blob_path(&digest_of(b"a")).unwrap()).unwrap();
    assert!(store.index(&manifest(1)).is_some());
    assert!(!store.has(&manifest(1)));
}

#[test]
fn bad_digests_are_refused() {
    // the store takes only parsed digests: what is not one never becomes a path
    for bad in [
        "sha256:../../etc/passwd",
        "sha256:ABCDEF",
        &format!("sha256:{}", "A".repeat(64)),
        &format!("sha512:{}", "a".repeat(64)),
        &format!("sha256:{}/", "a".repeat(64)),
        "",
    ] {
        assert!(Digest::parse(bad).is_err(), "{bad}");
    }
    // an index on disk whose digests were tampered with is not read, nor kept by gc
    let (_root, store) = open();
    let (staging, files) = stage(&store, &[("a", b"a")]);
    store.commit(&manifest(1), staging.path(), &files).unwrap();
    let path = store.index_path(&manifest(1));
    let json = fs::read_to_string(&path).unwrap();
    let hex = digest_of(b"a").hex().to_string();
    for bad in ["../x", &hex.to_uppercase()] {
        fs::write(&path, json.replace(&hex, bad)).unwrap();
        assert!(store.index(&manifest(1)).is_none(), "{bad}");
        assert!(!store.has(&manifest(1)));
    }
    let report = store.gc(&HashSet::from([manifest(1)])).unwrap();
    assert_eq!((report.removed_revisions, report.removed_blobs), (1, 1));
    assert_eq!(store.usage(), StoreUsage::default());
}

#[test]
fn unsafe_paths_are_refused() {
    let (root, store) = open();
    fs::write(root.path().join("outside"), b"a").unwrap();
    let (staging, files) = stage(&store, &[("a", b"a")]);
    for bad in [
        "../outside",
        "x/../../outside",
        "/etc/passwd",
        "",
        "./a",
        "a//b",
        "a/",
    ] {
        let mut listed = files.clone();
        listed[0].path = bad.to_string();
        let err = store
            .commit(&manifest(1), staging.path(), &listed)
            .unwrap_err();
        assert_eq!(err.reason().as_str(), "UnsafeContent", "{bad:?}");
    }
    let mut twice = files.clone();
    twice.push(files[0].clone());
    let err = store
        .commit(&manifest(1), staging.path(), &twice)
        .unwrap_err();
    assert_eq!(err.reason().as_str(), "UnsafeContent");
    assert!(root.path().join("outside").exists());
    assert_eq!(store.usage(), StoreUsage::default());
}

#[test]
fn symlinks_in_staging_are_refused() {
    let (root, store) = open();
    let secret = root.path().join("secret");
    fs::write(&secret, b"a").unwrap();
    let staging = store.staging_dir().unwrap();
    std::os::unix::fs::symlink(&secret, staging.path().join("link")).unwrap();
    std::os::unix::fs::symlink(root.path(), staging.path().join("dir")).unwrap();
    for path in ["link", "dir/secret"] {
        let listed = [IndexFile {
            path: path.into(),
            digest: digest_of(b"a"),
            size: 1,
            platform: None,
        }];
        let err = store
            .commit(&manifest(1), staging.path(), &listed)
            .unwrap_err();
        assert_eq!(err.reason().as_str(), "UnsafeContent", "{path}");
    }
    assert!(secret.exists());
    assert_eq!(store.usage(), StoreUsage::default());
}

#[test]
fn tampered_staged_files_are_refused() {
    let (_root, store) = open();
    let (staging, files) = stage(&store, &[("a", b"original")]);
    fs::write(staging.path().join("a"), b"tampered").unwrap();
    let err = store
        .commit(&manifest(1), staging.path(), &files)
        .unwrap_err();
    assert_eq!(err.reason().as_str(), "StoreFailed");
    assert!(!store.has(&manifest(1)));
    assert_eq!(store.usage(), StoreUsage::default());
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 1);

    // A wrong size with the right digest is refused too.
    let (staging, mut files) = stage(&store, &[("a", b"original")]);
    files[0].size = 3;
    let err = store
        .commit(&manifest(1), staging.path(), &files)
        .unwrap_err();
    assert_eq!(err.reason().as_str(), "StoreFailed");

    // A duplicate of an existing blob is verified as well.
    let (staging, files) = stage(&store, &[("a", b"original")]);
    store.commit(&manifest(1), staging.path(), &files).unwrap();
    let (staging, files) = stage(&store, &[("b", b"original")]);
    fs::write(staging.path().join("b"), b"different").unwrap();
    let err = store
        .commit(&manifest(2), staging.path(), &files)
        .unwrap_err();
    assert_eq!(err.reason().as_str(), "StoreFailed");
    assert!(store.index(&manifest(2)).is_none());
}

#[test]
fn missing_staged_file_is_an_io_error() {
    let (_root, store) = open();
    let staging = store.staging_dir().unwrap();
    let listed = [IndexFile {
        path: "nope".into(),
        digest: digest_of(b""),
        size: 0,
        platform: None,
    }];
    let err = store
        .commit(&manifest(1), staging.path(), &listed)
        .unwrap_err();
    assert_eq!(err.reason().as_str(), "StoreFailed");
    assert!(err.to_string().contains("nope"));
}

#[test]
fn empty_revisions_and_usage() {
    let (_root, store) = open();
    let staging = store.staging_dir().unwrap();
    let index = store.commit(&manifest(1), staging.path(), &[]).unwrap();
    assert!(index.files.is_empty());
    assert!(store.has(&manifest(1)));
    assert_eq!(
        store.usage(),
        StoreUsage {
            revisions: 1,
            blobs: 0,
            bytes: BLOCK // the index file
        }
    );
    assert!(Path::new(&store.root().join("revisions")).is_dir());
}

#[test]
fn an_oversized_index_is_not_read() {
    let (_root, store) = open();
    let (staging, files) = stage(&store, &[("a", b"x")]);
    store.commit(&manifest(1), staging.path(), &files).unwrap();
    let path = store.index_path(&manifest(1));
    // still valid JSON (trailing white space), but over the limit
    let mut json = fs::read(&path).unwrap();
    json.resize(MAX_INDEX_BYTES as usize, b' ');
    fs::write(&path, &json).unwrap();
    assert!(store.index(&manifest(1)).is_some(), "at the limit");
    json.push(b' ');
    fs::write(&path, &json).unwrap();
    assert!(store.index(&manifest(1)).is_none());
    assert!(!store.has(&manifest(1)));
}

fn layers(media_type: &str) -> Selection {
    Selection {
        platform: None,
        layer_media_type: Some(media_type.into()),
    }
}

#[test]
fn two_selections_of_one_manifest_are_stored_apart() {
    let (_root, store) = open();
    let (rules, rules_files) = stage(&store, &[("rules.yaml", b"- rule: a\n")]);
    let (plugin, plugin_files) = stage(&store, &[("plugin.so", b"\x7fELF")]);
    let (a, b) = (layers("application/vnd.a"), layers("application/vnd.b"));
    let (key_a, key_b) = (
        revision_key(&manifest(1), &a),
        revision_key(&manifest(1), &b),
    );
    let index_a = store
        .commit_selection(&manifest(1), &a, rules.path(), &rules_files)
        .unwrap();
    let index_b = store
        .commit_selection(&manifest(1), &b, plugin.path(), &plugin_files)
        .unwrap();
    // each under its own key, neither under the manifest digest, the digest kept inside
    assert_eq!(
        (index_a.key(), index_b.key()),
        (key_a.clone(), key_b.clone())
    );
    assert_eq!(index_a.digest, manifest(1));
    assert_eq!(store.index(&key_a), Some(index_a.clone()));
    assert_eq!(store.index(&key_b), Some(index_b.clone()));
    assert!(store.index(&manifest(1)).is_none());
    assert_eq!(store.usage().revisions, 2);

    // garbage collection keeps what its keys name, blobs included
    let report = store.gc(&HashSet::from([key_a.clone()])).unwrap();
    assert_eq!((report.removed_revisions, report.removed_blobs), (1, 1));
    assert!(store.has(&key_a));
    assert!(!store.has(&key_b));
    assert!(store.blob_path(&digest_of(b"- rule: a\n")).is_some());
}

#[test]
fn an_index_is_only_read_under_its_own_key() {
    let (_root, store) = open();
    let (staging, files) = stage(&store, &[("a", b"x")]);
    let a = layers("application/vnd.a");
    let key = revision_key(&manifest(1), &a);
    store
        .commit_selection(&manifest(1), &a, staging.path(), &files)
        .unwrap();
    // an index copied under another key (the manifest digest, another selection) is not
    // served as that one
    let copied = |to: &Digest| {
        fs::copy(store.index_path(&key), store.index_path(to)).unwrap();
    };
    for other in [manifest(1), revision_key(&manifest(1), &layers("b"))] {
        copied(&other);
        assert!(store.index(&other).is_none(), "{other}");
        assert!(!store.has(&other));
    }
    // an index written before selections were keyed reads back as the default selection
    let (staging, files) = stage(&store, &[("b", b"y")]);
    store.commit(&manifest(2), staging.path(), &files).unwrap();
    let raw = fs::read_to_string(store.index_path(&manifest(2))).unwrap();
    assert!(!raw.contains("selection"), "{raw}");
    assert_eq!(
        store.index(&manifest(2)).map(|i| i.selection),
        Some(Selection::default())
    );
}

#[test]
fn files_per_platform_are_staged_in_their_platforms_directory_and_may_share_a_path() {
    let (_root, store) = open();
    let (staging, mut files) = stage(
        &store,
        &[
            ("linux-amd64/libx.so", b"amd"),
            ("linux-arm64-v8/libx.so", b"arm"),
        ],
    );
    for (f, platform) in files.iter_mut().zip(["linux/amd64", "linux/arm64/v8"]) {
        f.path = "libx.so".into();
        f.platform = Some(platform.into());
    }
    let selection = Selection {
        platform: Some("all".into()),
        layer_media_type: None,
    };
    let index = store
        .commit_selection(&manifest(7), &selection, staging.path(), &files)
        .unwrap();
    let listed: Vec<(Option<&str>, &str)> = index
        .files
        .iter()
        .map(|f| (f.platform.as_deref(), f.path.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            (Some("linux/amd64"), "libx.so"),
            (Some("linux/arm64/v8"), "libx.so")
        ]
    );
    assert!(store.has(&index.key()));

    // a platform that is not one cannot steer the staged path, and one listed twice is refused
    let (staging, mut forged) = stage(&store, &[("x/libx.so", b"x")]);
    forged[0].path = "libx.so".into();
    forged[0].platform = Some("../x".into());
    assert!(matches!(
        store.commit_selection(&manifest(8), &selection, staging.path(), &forged),
        Err(StoreError::UnsafePath(_))
    ));
    let (staging, mut twice) = stage(&store, &[("linux-amd64/libx.so", b"amd")]);
    twice[0].path = "libx.so".into();
    twice[0].platform = Some("linux/amd64".into());
    twice.push(twice[0].clone());
    assert!(matches!(
        store.commit_selection(&manifest(9), &selection, staging.path(), &twice),
        Err(StoreError::UnsafePath(m)) if m.contains("twice")
    ));
}
