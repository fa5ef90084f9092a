//! Helpers shared by the fuzz targets: splitting one input into fields, scratch
//! directories, and the checks several targets make on names and paths.

use std::path::{Component, Path};

/// The input as text, or `None` when it is not UTF-8 (most targets take text).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A fresh scratch directory, in memory (`/dev/shm`) when the machine has one: the targets
/// that write files run thousands of times a second.
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("ocisync-fuzz-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("ocisync-fuzz-").tempdir()
    };
    made.expect("a scratch directory")
}

/// The rule for a name a mapping yields: never empty, `.`, `..`, and never holding
/// `/` or NUL.
pub fn assert_plain_name(name: &str, what: &str) {
    assert!(
        !name.is_empty() && name != "." && name != "..",
        "{what}: {name:?} is not a plain name"
    );
    assert!(
        !name.contains('/') && !name.contains('\0'),
        "{what}: {name:?} holds / or NUL"
    );
}

/// A relative path of plain parts: no root, no `.` or `..`, no empty part, no NUL.
pub fn assert_plain_relative(path: &str, what: &str) {
    assert!(!path.is_empty(), "{what}: empty path");
    assert!(!path.starts_with('/'), "{what}: {path:?} is absolute");
    for part in path.split('/') {
        assert_plain_name(part, what);
    }
    assert!(
        Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{what}: {path:?} has a part that is not plain"
    );
}

/// An absolute path whose parts are all plain, none `..` (or starting with `..`).
pub fn assert_plain_absolute(path: &Path, what: &str) {
    let mut components = path.components();
    assert_eq!(
        components.next(),
        Some(Component::RootDir),
        "{what}: {path:?} is not absolute"
    );
    for c in components {
        let Component::Normal(part) = c else {
            panic!("{what}: {path:?} has a part {c:?}");
        };
        let part = part.to_string_lossy();
        assert!(
            !part.starts_with("..") && !part.contains('\0'),
            "{what}: {path:?} has a part {part:?}"
        );
    }
}

/// Every entry under `root`, as relative paths with `/`, with whether it is a directory;
/// fails on anything but plain files and directories (a link, a FIFO).
pub fn walk(root: &Path) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    walk_into(root, "", &mut out);
    out.sort();
    out
}

fn walk_into(dir: &Path, prefix: &str, out: &mut Vec<(String, bool)>) {
    let entries = std::fs::read_dir(dir).expect("read a directory written by the target");
    for entry in entries {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name().into_string().expect("a UTF-8 name");
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().expect("a file type");
        assert!(
            kind.is_file() || kind.is_dir(),
            "{rel:?} is neither a file nor a directory"
        );
        if kind.is_dir() {
            walk_into(&entry.path(), &rel, out);
        }
        out.push((rel, kind.is_dir()));
    }
}
