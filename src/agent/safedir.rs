//! A directory on the node opened without following symbolic links, and the operations the
//! agent needs inside it, each on one plain name relative to the open directory (the
//! `openat` family). Whoever can place a symbolic link in a node directory (another bundle's
//! files, a process on the host) cannot redirect a write or a removal elsewhere: every path
//! part below the allowed directory is opened with `O_NOFOLLOW`, files are created with
//! `O_EXCL | O_NOFOLLOW`, and removals and renames never resolve their last part.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// An open directory, and how it is named in messages.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    shown: PathBuf,
}

/// What is at a name, without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

fn plain(name: &str) -> io::Result<&str> {
    let ok = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    ok.then_some(name)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a plain name"))
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl SafeDir {
    /// Opens `allowed` (the cluster admin's directory, mounted into the agent: its own path
    /// is trusted), then each part of `below` without following links, creating missing
    /// parts when `create`. `Ok(None)`: a part is missing and `create` is false.
    pub fn open(allowed: &Path, below: &Path, create: bool) -> io::Result<Option<SafeDir>> {
        let fd = rustix::fs::open(
            allowed,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut dir = SafeDir {
            fd,
            shown: allowed.to_path_buf(),
        };
        for part in below.components() {
            let Component::Normal(name) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a plain path",
                ));
            };
            let name = name
                .to_str()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not UTF-8"))?;
            dir = match dir.subdir(name) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    match dir.mkdir(name) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                    dir.subdir(name)?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
        }
        Ok(Some(dir))
    }

    /// How `name` in this directory is shown in messages.
    pub fn shown(&self, name: &str) -> PathBuf {
        self.shown.join(name)
    }

    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> io::Result<SafeDir> {
        Ok(SafeDir {
            fd: self.fd.try_clone()?,
            shown: self.shown.clone(),
        })
    }

    /// The directory `name` inside this one; a symbolic link there is an error.
    pub fn subdir(&self, name: &str) -> io::Result<SafeDir> {
        let fd =
            rustix::fs::openat(&self.fd, plain(name)?, DIR_FLAGS, Mode::empty()).map_err(|e| {
                match e {
                    rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{} is a symbolic link or not a directory",
                            self.shown(name).display()
                        ),
                    ),
                    e => e.into(),
                }
            })?;
        Ok(SafeDir {
            fd,
            shown: self.shown(name),
        })
    }

    pub fn mkdir(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(
            &self.fd,
            plain(name)?,
            Mode::from_raw_mode(0o755),
        )?)
    }

    /// A new file `name` (it must not exist, not even as a link), for writing.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, plain(name)?, flags, Mode::from_raw_mode(0o644))?;
        Ok(File::from(fd))
    }

    /// The regular file `name`, for reading; a link there is an error.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, plain(name)?, flags, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// A symbolic link `name` -> `target`.
    pub fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
        Ok(rustix::fs::symlinkat(target, &self.fd, plain(name)?)?)
    }

    /// Renames `from` to `to` in this directory (replacing `to`, never following it).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(
            &self.fd,
            plain(from)?,
            &self.fd,
            plain(to)?,
        )?)
    }

    /// Removes the file or link `name`; a missing name is fine.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, plain(name)?, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the link `name` points; `None` when `name` is missing or not a link.
    pub fn read_link(&self, name: &str) -> Option<String> {
        let target = rustix::fs::readlinkat(&self.fd, plain(name).ok()?, Vec::new()).ok()?;
        target.into_string().ok()
    }

    /// What `name` is, without following it; `None` when missing.
    pub fn kind(&self, name: &str) -> io::Result<Option<Kind>> {
        match rustix::fs::statat(&self.fd, plain(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Kind::File,
                FileType::Directory => Kind::Dir,
                FileType::Symlink => Kind::Symlink,
                _ => Kind::Other,
            })),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The names in this directory.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().to_str()
                && name != "."
                && name != ".."
            {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    /// Removes the directory `name` and what is directly in it (the agent's data
    /// directories hold files only); links inside are removed, never followed. A missing
    /// directory is fine.
    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        let sub = match self.subdir(name) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in sub.names()? {
            if sub.kind(&entry)? == Some(Kind::Dir) {
                sub.remove_dir(&entry)?;
            } else {
                sub.unlink(&entry)?;
            }
        }
        match rustix::fs::unlinkat(&self.fd, plain(name)?, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes renames and new names in this directory durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }

    /// Bytes free for an unprivileged writer on this directory's filesystem.
    pub fn available_bytes(&self) -> io::Result<u64> {
        let st = rustix::fs::fstatvfs(&self.fd)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn parts_below_the_allowed_directory_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let allowed = tmp.path().join("allowed");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(allowed.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, allowed.join("evil")).unwrap();
        // a link as a part: refused, nothing created outside
        let err = SafeDir::open(&allowed, Path::new("evil/sub"), true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(!outside.join("sub").exists());
        // plain parts are created
        let d = SafeDir::open(&allowed, Path::new("real/new"), true)
            .unwrap()
            .unwrap();
        assert!(allowed.join("real/new").is_dir());
        assert!(
            SafeDir::open(&allowed, Path::new("missing"), false)
                .unwrap()
                .is_none()
        );
        // a file name that is a link is neither written through nor read through
        symlink(outside.join("target"), allowed.join("real/new/f")).unwrap();
        assert!(d.create_file("f").is_err());
        assert!(d.open_file("f").is_err());
        assert!(!outside.join("target").exists());
        assert_eq!(d.kind("f").unwrap(), Some(Kind::Symlink));
        // removing a directory holding a link removes the link, not its target
        std::fs::write(outside.join("keep"), b"x").unwrap();
        d.mkdir("data").unwrap();
        symlink(outside.join("keep"), allowed.join("real/new/data/l")).unwrap();
        d.remove_dir("data").unwrap();
        assert!(outside.join("keep").exists());
        assert_eq!(d.kind("data").unwrap(), None);
        assert!(d.create_file("../x").is_err(), "only plain names");
    }
}
