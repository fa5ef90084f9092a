//! What the agent has written, remembered on the node (one small JSON file per bundle), so
//! a bundle deleted while the agent was down is still cleaned up, and only its files.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One bundle this agent has written files for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The directory on the node (not under the host root).
    pub directory: PathBuf,
    /// Directories the bundle wrote before it moved to `directory`, until their files are
    /// removed (a move whose first write failed, or an agent killed mid-move, still
    /// cleans them up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_from: Vec<PathBuf>,
}

impl Record {
    /// The bundle's id in directory entries: `<namespace>.<name>` (a namespace has no dot).
    pub fn id(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// Every directory the bundle may have files in.
    pub fn directories(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.directory).chain(&self.moved_from)
    }

    /// This record for the bundle now writing `directory`, remembering where it wrote
    /// before.
    pub fn moved_to(&self, directory: PathBuf) -> Record {
        let mut moved_from: Vec<PathBuf> = self
            .directories()
            .filter(|d| **d != directory)
            .cloned()
            .collect();
        moved_from.sort();
        moved_from.dedup();
        Record {
            directory,
            moved_from,
            ..self.clone()
        }
    }
}

/// The largest record read (a record names one bundle and a few directories).
const MAX_RECORD: u64 = 1 << 20;

fn path_of(dir: &Path, uid: &str) -> Option<PathBuf> {
    let safe = !uid.is_empty() && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    safe.then(|| dir.join(format!("{uid}.json")))
}

/// Every record in `dir`; none when it does not exist yet. A record that does not parse is
/// skipped with a warning; a directory or file that cannot be read is an error (taking it
/// for "nothing recorded" would leave files of deleted bundles behind and miscount budgets).
pub(super) fn load_all(dir: &Path) -> io::Result<Vec<Record>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let mut bytes = Vec::new();
        fs::File::open(&path)?
            .take(MAX_RECORD)
            .read_to_end(&mut bytes)?;
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) => records.push(record),
            Err(_) => tracing::warn!(path = %path.display(), "unreadable agent record skipped"),
        }
    }
    Ok(records)
}

/// Writes a record atomically (temporary file, fsync, rename).
pub(super) fn save(dir: &Path, record: &Record) -> io::Result<()> {
    let path = path_of(dir, &record.uid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid uid"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", record.uid));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(record).map_err(io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()
}

pub(super) fn delete(dir: &Path, uid: &str) -> io::Result<()> {
    match path_of(dir, uid).map(fs::remove_file) {
        Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_odd_uids() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record {
            namespace: "ns".into(),
            name: "b".into(),
            uid: "1234-abcd".into(),
            directory: "/etc/falco/rules.d".into(),
            moved_from: Vec::new(),
        };
        save(dir.path(), &r).unwrap();
        assert_eq!(load_all(dir.path()).unwrap(), vec![r.clone()]);
        assert_eq!(r.id(), "ns.b");
        let evil = Record {
            uid: "../../x".into(),
            ..r.clone()
        };
        assert!(save(dir.path(), &evil).is_err());
        let moved = r
            .moved_to("/etc/falco/b".into())
            .moved_to("/etc/falco/c".into());
        assert_eq!(moved.directory, Path::new("/etc/falco/c"));
        assert_eq!(
            moved.moved_from,
            [
                PathBuf::from("/etc/falco/b"),
                PathBuf::from("/etc/falco/rules.d")
            ]
        );
        let back = moved.moved_to("/etc/falco/b".into());
        assert_eq!(
            back.moved_from,
            [
                PathBuf::from("/etc/falco/c"),
                PathBuf::from("/etc/falco/rules.d")
            ]
        );
        save(dir.path(), &moved).unwrap();
        assert_eq!(load_all(dir.path()).unwrap(), vec![moved]);
        delete(dir.path(), &r.uid).unwrap();
        delete(dir.path(), &r.uid).unwrap();
        assert!(load_all(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn records_that_cannot_be_read_are_an_error_not_nothing_recorded() {
        let dir = tempfile::tempdir().unwrap();
        // not there yet: nothing recorded
        assert!(load_all(&dir.path().join("new")).unwrap().is_empty());
        // a record that does not parse is skipped; the others are read
        fs::write(dir.path().join("junk.json"), b"{not json").unwrap();
        assert!(load_all(dir.path()).unwrap().is_empty());
        // a state path that is not a directory cannot be listed
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(load_all(&file).is_err());
        // a record that cannot be opened (a directory named like one)
        fs::create_dir(dir.path().join("dir.json")).unwrap();
        assert!(load_all(dir.path()).is_err());
    }
}
