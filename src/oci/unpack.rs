//! Turning layer bytes into files under a staging directory, safely: no absolute paths,
//! no `..`, no links, devices or FIFOs, no duplicate paths, bounded size and file count.
//! Every file is hashed while it is written.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{OciError, Result};

/// Limits on what one artifact may contain. Defaults are safe for rules and profiles.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest manifest, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest sum of layer sizes (as stored, compressed), in bytes.
    pub max_artifact_bytes: u64,
    /// Largest sum of unpacked file sizes, in bytes.
    pub max_unpacked_bytes: u64,
    /// Most files in one artifact.
    pub max_files: usize,
    /// Largest unpacked:compressed ratio of a layer before it counts as a bomb
    /// (applied above 16 MiB unpacked).
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_artifact_bytes: 1024 * 1024 * 1024,
            max_unpacked_bytes: 2 * 1024 * 1024 * 1024,
            max_files: 10_000,
            max_ratio: 200,
        }
    }
}

/// A file written from an artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenFile {
    /// Relative path with `/` separators.
    pub path: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    pub size: u64,
}

/// What has been written so far for one artifact (shared by its layers).
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    unpacked: u64,
    seen: HashSet<String>,
    pub files: Vec<WrittenFile>,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            unpacked: 0,
            seen: HashSet::new(),
            files: Vec::new(),
        }
    }

    fn claim_path(&mut self, path: &str) -> Result<()> {
        if !self.seen.insert(path.to_string()) {
            return Err(OciError::UnsafeContent(format!("duplicate path {path:?}")));
        }
        if self.seen.len() > self.limits.max_files {
            return Err(OciError::TooLarge(format!(
                "more than {} files",
                self.limits.max_files
            )));
        }
        Ok(())
    }
}

/// Validates an archive path and returns it normalised (no `.` parts, `/` separators).
pub fn safe_relative_path(raw: &Path) -> Result<Option<String>> {
    let shown = raw.to_string_lossy();
    let mut parts = Vec::new();
    for component in raw.components() {
        match component {
            Component::Normal(p) => {
                let s = p.to_str().ok_or_else(|| {
                    OciError::UnsafeContent(format!("path {shown:?} is not UTF-8"))
                })?;
                parts.push(s.to_string());
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(OciError::UnsafeContent(format!(
                    "path {shown:?} contains .."
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(OciError::UnsafeContent(format!("absolute path {shown:?}")));
            }
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Unpacks a tar stream (already decompressed) into `dest`.
/// `layer_size` is the layer's stored size, used for the bomb ratio.
pub fn unpack_tar(
    reader: impl Read,
    dest: &Path,
    layer_size: u64,
    budget: &mut Budget,
) -> Result<()> {
    let ratio_cap = layer_size
        .saturating_mul(budget.limits.max_ratio)
        .max(16 * 1024 * 1024);
    let mut layer_unpacked = 0u64;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| OciError::UnsafeContent(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| OciError::UnsafeContent(format!("corrupt tar: {e}")))?;
        let kind = entry.header().entry_type();
        let raw_path = entry
            .path()
            .map_err(|e| OciError::UnsafeContent(format!("bad tar path: {e}")))?
            .into_owned();
        let shown = raw_path.to_string_lossy().to_string();
        use tar::EntryType as T;
        match kind {
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            T::Directory => {
                if let Some(rel) = safe_relative_path(&raw_path)? {
                    create_dirs(dest, &rel)?;
                }
                continue;
            }
            T::Regular | T::Continuous => {}
            T::Symlink | T::Link => {
                return Err(OciError::UnsafeContent(format!(
                    "link {shown:?} is not allowed"
                )));
            }
            T::Char | T::Block | T::Fifo => {
                return Err(OciError::UnsafeContent(format!(
                    "device or FIFO {shown:?} is not allowed"
                )));
            }
            other => {
                return Err(OciError::UnsafeContent(format!(
                    "entry {shown:?} has unsupported type {:?}",
                    other.as_byte() as char
                )));
            }
        }
        let rel = safe_relative_path(&raw_path)?
            .ok_or_else(|| OciError::UnsafeContent("file with an empty path".into()))?;
        budget.claim_path(&rel)?;
        let declared = entry.header().size().unwrap_or(u64::MAX);
        let remaining = budget
            .limits
            .max_unpacked_bytes
            .saturating_sub(budget.unpacked);
        if declared > remaining || layer_unpacked.saturating_add(declared) > ratio_cap {
            return Err(OciError::TooLarge(format!(
                "{rel:?} would take the unpacked size over the limit"
            )));
        }
        let written = write_file(&mut entry, dest, &rel, declared)?;
        layer_unpacked += written.size;
        budget.unpacked += written.size;
        budget.files.push(written);
    }
    Ok(())
}

/// Writes one non-archive layer as a file named `name`.
pub fn write_single(
    reader: &mut impl Read,
    dest: &Path,
    name: &str,
    budget: &mut Budget,
) -> Result<()> {
    let rel = safe_relative_path(Path::new(name))?
        .ok_or_else(|| OciError::UnsafeContent("file with an empty name".into()))?;
    budget.claim_path(&rel)?;
    let remaining = budget
        .limits
        .max_unpacked_bytes
        .saturating_sub(budget.unpacked);
    let written = write_file(reader, dest, &rel, remaining)?;
    budget.unpacked += written.size;
    budget.files.push(written);
    Ok(())
}

fn create_dirs(dest: &Path, rel: &str) -> Result<PathBuf> {
    let path = dest.join(rel);
    fs::create_dir_all(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists || e.kind() == io::ErrorKind::NotADirectory {
            OciError::UnsafeContent(format!("path {rel:?} conflicts with a file"))
        } else {
            OciError::io(format!("create directory {rel}"), e)
        }
    })?;
    Ok(path)
}

/// Copies at most `limit` bytes into a new file, hashing them.
fn write_file(reader: &mut impl Read, dest: &Path, rel: &str, limit: u64) -> Result<WrittenFile> {
    if let Some((parent, _)) = rel.rsplit_once('/') {
        create_dirs(dest, parent)?;
    }
    let path = dest.join(rel);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists | io::ErrorKind::IsADirectory => {
                OciError::UnsafeContent(format!("path {rel:?} conflicts with another entry"))
            }
            _ => OciError::io(format!("create {rel}"), e),
        })?;
    let (digest, size) = if limit > PIPELINE_MIN_BYTES {
        copy_pipelined(reader, file, rel, limit)?
    } else {
        copy_inline(reader, file, rel, limit)?
    };
    Ok(WrittenFile {
        path: rel.to_string(),
        digest,
        size,
    })
}

/// Files that may be larger than this are hashed and written on a second thread while the
/// reader (usually the inflater) produces the next buffer.
const PIPELINE_MIN_BYTES: u64 = 1024 * 1024;
const CHUNK: usize = 256 * 1024;

fn too_large(rel: &str) -> OciError {
    OciError::TooLarge(format!("{rel:?} is over the size limit"))
}

/// Reads, hashes and writes on this thread (small files).
fn copy_inline(reader: &mut impl Read, file: File, rel: &str, limit: u64) -> Result<(String, u64)> {
    let mut out = BufWriter::with_capacity(CHUNK, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| read_error(rel, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > limit {
            return Err(too_large(rel));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| OciError::io(format!("write {rel}"), e))?;
    }
    out.flush()
        .map_err(|e| OciError::io(format!("write {rel}"), e))?;
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// Reads on this thread; hashes and writes on a scoped second thread. Buffers go round
/// between the two (four in flight), so memory stays at about 1 MiB per file.
fn copy_pipelined(
    reader: &mut impl Read,
    mut file: File,
    rel: &str,
    limit: u64,
) -> Result<(String, u64)> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(4);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(4);
    for _ in 0..4 {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> io::Result<String> {
            let mut hasher = Sha256::new();
            for (buf, n) in full_rx {
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])?;
                // the reader may have stopped; a closed return channel is fine
                let _ = empty_tx.send(buf);
            }
            Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
        });
        let mut size = 0u64;
        let read_result = (|| -> Result<()> {
            loop {
                let Ok(mut buf) = empty_rx.recv() else {
                    return Ok(()); // the writer failed; its error is reported below
                };
                let n = reader.read(&mut buf).map_err(|e| read_error(rel, e))?;
                if n == 0 {
                    return Ok(());
                }
                size += n as u64;
                if size > limit {
                    return Err(too_large(rel));
                }
                if full_tx.send((buf, n)).is_err() {
                    return Ok(());
                }
            }
        })();
        drop(full_tx);
        let written = writer
            .join()
            .map_err(|_| OciError::UnsafeContent(format!("writing {rel} failed")))?
            .map_err(|e| OciError::io(format!("write {rel}"), e));
        read_result?;
        Ok((written?, size))
    })
}

/// A read error inside a layer: our own `OciError` carried through `io::Error` (from the
/// verifying stream) comes back out as itself; gzip corruption is unsafe content.
pub fn read_error(what: &str, e: io::Error) -> OciError {
    if e.get_ref().is_some_and(|inner| inner.is::<OciError>()) {
        if let Some(inner) = e.into_inner()
            && let Ok(oci) = inner.downcast::<OciError>()
        {
            return *oci;
        }
        return OciError::UnsafeContent(format!("{what}: unreadable"));
    }
    match e.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            OciError::UnsafeContent(format!("{what}: corrupt data: {e}"))
        }
        _ => OciError::io(format!("read {what}"), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // write the raw name so hostile paths are kept as they are
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<Budget>) {
        let dir = tempfile::tempdir().unwrap();
        let mut budget = Budget::new(Limits::default());
        let r = unpack_tar(bytes, dir.path(), bytes.len() as u64, &mut budget).map(|_| budget);
        (dir, r)
    }

    #[test]
    fn unpacks_plain_files_with_digests() {
        let t = tar_with(&[
            ("./rules/", tar::EntryType::Directory, b"", None),
            (
                "./rules/a.yaml",
                tar::EntryType::Regular,
                b"- rule: x\n",
                None,
            ),
        ]);
        let (dir, r) = unpack(&t);
        let b = r.unwrap();
        assert_eq!(b.files.len(), 1);
        assert_eq!(b.files[0].path, "rules/a.yaml");
        assert_eq!(
            fs::read(dir.path().join("rules/a.yaml")).unwrap(),
            b"- rule: x\n"
        );
        assert_eq!(
            b.files[0].digest,
            crate::oci::registry::sha256_digest(b"- rule: x\n")
        );
    }

    #[test]
    fn rejects_hostile_entries() {
        use tar::EntryType as T;
        let cases: Vec<Vec<u8>> = vec![
            tar_with(&[("/etc/passwd", T::Regular, b"x", None)]),
            tar_with(&[("../escape", T::Regular, b"x", None)]),
            tar_with(&[("a/../../escape", T::Regular, b"x", None)]),
            tar_with(&[("link", T::Symlink, b"", Some("/etc/passwd"))]),
            tar_with(&[("hard", T::Link, b"", Some("other"))]),
            tar_with(&[("dev", T::Char, b"", None)]),
            tar_with(&[("blk", T::Block, b"", None)]),
            tar_with(&[("fifo", T::Fifo, b"", None)]),
            tar_with(&[
                ("dup", T::Regular, b"1", None),
                ("./dup", T::Regular, b"2", None),
            ]),
            tar_with(&[
                ("f", T::Regular, b"1", None),
                ("f/g", T::Regular, b"2", None),
            ]),
        ];
        for (i, t) in cases.iter().enumerate() {
            let (dir, r) = unpack(t);
            let e = r.expect_err(&format!("case {i} must fail"));
            assert_eq!(e.reason().as_str(), "UnsafeContent", "case {i}: {e}");
            assert!(!dir.path().parent().unwrap().join("escape").exists());
        }
    }

    #[test]
    fn enforces_file_count_and_size() {
        let files: Vec<(String, Vec<u8>)> =
            (0..5).map(|i| (format!("f{i}"), vec![b'x'; 10])).collect();
        let entries: Vec<_> = files
            .iter()
            .map(|(p, d)| (p.as_str(), tar::EntryType::Regular, d.as_slice(), None))
            .collect();
        let t = tar_with(&entries);
        let dir = tempfile::tempdir().unwrap();
        let mut b = Budget::new(Limits {
            max_files: 4,
            ..Limits::default()
        });
        assert_eq!(
            unpack_tar(&t[..], dir.path(), 1, &mut b)
                .unwrap_err()
                .reason()
                .as_str(),
            "TooLarge"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut b = Budget::new(Limits {
            max_unpacked_bytes: 25,
            ..Limits::default()
        });
        assert_eq!(
            unpack_tar(&t[..], dir.path(), 1, &mut b)
                .unwrap_err()
                .reason()
                .as_str(),
            "TooLarge"
        );
    }

    #[test]
    fn stops_decompression_bombs() {
        // 40 MiB of zeros compress to ~40 KiB: far past the ratio.
        let mut b = tar::Builder::new(Vec::new());
        let data = vec![0u8; 40 * 1024 * 1024];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "zeros", &data[..]).unwrap();
        let t = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&t).unwrap();
        let compressed = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut budget = Budget::new(Limits::default());
        let r = unpack_tar(
            flate2::read::GzDecoder::new(&compressed[..]),
            dir.path(),
            compressed.len() as u64,
            &mut budget,
        );
        assert_eq!(r.unwrap_err().reason().as_str(), "TooLarge");
    }
}
