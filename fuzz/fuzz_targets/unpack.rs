//! Layer unpacking with its budget: a tar (gzip-compressed or not) or a single titled
//! file, written into a store staging directory as a pull does, then committed to the store.
//!
//! Input: a flags byte (bit 0: gzip, bit 1: a single file whose name is the first line,
//! bit 2: two layers), then the layer's bytes.
//!
//! Invariants: an unpack either writes a tree that passes the same checks again (only
//! files and directories, each path plain and relative, exactly the files it reports with
//! their digests and sizes, within the file, directory and size limits, and the store
//! accepts the commit), or fails with a content or size error and its staging directory is
//! removed whole, nothing written elsewhere.
#![no_main]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ocisync::digest::Digest;
use ocisync::oci::OciError;
use ocisync::oci::unpack::{self, Budget, ENTRY_COST, Limits};
use ocisync::store::{IndexFile, Store, check_relative_path};

/// Small limits, so that inputs reach them.
const LIMITS: Limits = Limits {
    max_manifest_bytes: 1 << 16,
    max_artifact_bytes: 1 << 20,
    max_unpacked_bytes: 1 << 20,
    max_files: 32,
    max_dirs: 32,
    max_ratio: 200,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, layer)) = data.split_first() else {
        return;
    };
    let root = ocisync_fuzz::scratch();
    let store = Store::open(&root.path().join("store")).expect("open the store");
    let staging = store.staging_dir().expect("a staging directory");
    let mut budget = Budget::new(LIMITS);
    let result = unpack(flags, layer, staging.path(), &mut budget);
    match result {
        Ok(()) => written_tree_passes(&store, staging.path(), &budget),
        Err(e) => {
            assert!(
                matches!(e, OciError::UnsafeContent(_) | OciError::TooLarge(_)),
                "unexpected error kind: {e}"
            );
            let path = staging.path().to_path_buf();
            staging
                .close()
                .expect("the staging directory can be removed");
            assert!(!path.exists());
        }
    }
    nothing_elsewhere(root.path());
});

/// Bit 2: two layers into one tree with one budget, as a pull of a manifest with two
/// layers; the first is as long as the next two bytes say (little-endian).
fn unpack(flags: u8, data: &[u8], dest: &Path, budget: &mut Budget) -> Result<(), OciError> {
    if flags & 4 == 0 || data.len() < 2 {
        return unpack_layer(flags, data, dest, budget);
    }
    let (len, rest) = data.split_at(2);
    let len = usize::from(u16::from_le_bytes([len[0], len[1]])).min(rest.len());
    let (first, second) = rest.split_at(len);
    unpack_layer(flags, first, dest, budget)?;
    unpack_layer(flags, second, dest, budget)
}

fn unpack_layer(flags: u8, layer: &[u8], dest: &Path, budget: &mut Budget) -> Result<(), OciError> {
    let size = layer.len() as u64;
    if flags & 2 != 0 {
        let (name, mut body) = match layer.iter().position(|b| *b == b'\n') {
            Some(i) => (&layer[..i], &layer[i + 1..]),
            None => (layer, &[][..]),
        };
        let Some(name) = ocisync_fuzz::text(name) else {
            return Ok(());
        };
        return unpack::write_single(&mut body, dest, name, budget);
    }
    if flags & 1 != 0 {
        let gz = flate2::bufread::GzDecoder::new(layer);
        unpack::unpack_tar(gz, dest, size, budget)
    } else {
        unpack::unpack_tar(layer, dest, size, budget)
    }
}

fn written_tree_passes(store: &Store, dest: &Path, budget: &Budget) {
    let tree = ocisync_fuzz::walk(dest);
    let on_disk: BTreeMap<&str, bool> = tree.iter().map(|(p, d)| (p.as_str(), *d)).collect();
    let dirs = tree.iter().filter(|(_, d)| *d).count();
    assert!(dirs <= LIMITS.max_dirs, "{dirs} directories");
    assert!(budget.files.len() <= LIMITS.max_files);
    let files_on_disk = tree.iter().filter(|(_, d)| !*d).count();
    assert_eq!(
        files_on_disk,
        budget.files.len(),
        "files on disk vs reported"
    );
    let mut total = 0u64;
    for f in &budget.files {
        ocisync_fuzz::assert_plain_relative(&f.path, "unpacked path");
        check_relative_path(&f.path).expect("the store's path check");
        let again = unpack::safe_relative_path(Path::new(&f.path)).expect("a written path");
        assert_eq!(again.as_deref(), Some(f.path.as_str()));
        assert_eq!(on_disk.get(f.path.as_str()), Some(&false), "{:?}", f.path);
        let mut bytes = Vec::new();
        std::fs::File::open(dest.join(&f.path))
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .expect("read a written file");
        assert_eq!(bytes.len() as u64, f.size);
        assert_eq!(Digest::of(&bytes), f.digest);
        total += f.size + ENTRY_COST;
    }
    assert!(total <= LIMITS.max_unpacked_bytes, "{total} bytes unpacked");
    let files: Vec<IndexFile> = budget.files.iter().map(IndexFile::from).collect();
    store
        .commit(&Digest::of(b"manifest"), dest, &files)
        .expect("the store accepts what the unpack wrote");
}

/// The scratch root holds the store alone; the store's tmp/ nothing but staging directories.
fn nothing_elsewhere(root: &Path) {
    let top: Vec<String> = std::fs::read_dir(root)
        .expect("read the scratch root")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(top, ["store"], "written beside the store");
    let tmp = root.join("store").join("tmp");
    for entry in std::fs::read_dir(tmp).expect("read tmp") {
        let name = entry.expect("an entry").file_name();
        assert!(
            name.to_string_lossy().starts_with("staging-"),
            "{name:?} written in the store's tmp"
        );
    }
}
