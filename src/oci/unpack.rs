//! Turning layer bytes into files under a staging directory, safely: no absolute paths,
//! no `..`, no links, devices or FIFOs, no duplicate paths, bounded path depth and length,
//! bounded size, file count and directory count. Every file is hashed while it is written.
//!
//! The staging directory itself is never created here: everything is created one level at
//! a time below it, so an unpack that outlives its staging directory cannot bring it back.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{OciError, Result};
use super::platform::Platform;
use crate::digest::{self, CopyError, Digest, HashingWriter};

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
    /// Most directories one artifact may create (explicit entries and implied parents).
    pub max_dirs: usize,
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
            max_dirs: 4_096,
            max_ratio: 200,
        }
    }
}

/// A file written from an artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenFile {
    /// Relative path with `/` separators.
    pub path: String,
    /// The digest of its bytes.
    pub digest: Digest,
    pub size: u64,
    /// The index platform it belongs to, when a pull took every platform (its path is then
    /// relative to that platform's directory); set by the pull, never by the unpacker.
    pub platform: Option<Platform>,
}

impl WrittenFile {
    /// Where it was written, relative to the pull's directory: below its platform's
    /// directory when it has a platform.
    pub fn location(&self) -> String {
        match &self.platform {
            Some(p) => format!("{}/{}", p.dir_name(), self.path),
            None => self.path.clone(),
        }
    }
}

/// What every file or directory an unpack creates costs against the unpacked-size budget,
/// on top of its bytes: about what a directory or a small file takes on disk.
pub const ENTRY_COST: u64 = 4096;

/// The most parts a path in an artifact may have.
pub const MAX_PATH_DEPTH: usize = 32;

/// The longest path (as written in the archive) an artifact may hold, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// The longest part of a path, in bytes (Linux's `NAME_MAX`): a longer one cannot be
/// created, and is refused as content rather than failing as a local I/O error.
pub const MAX_NAME_BYTES: usize = 255;

/// What has been written so far for one artifact (shared by its layers).
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    unpacked: u64,
    seen: HashSet<String>,
    dirs: HashSet<String>,
    cancelled: Arc<AtomicBool>,
    pub files: Vec<WrittenFile>,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            unpacked: 0,
            seen: HashSet::new(),
            dirs: HashSet::new(),
            cancelled: Arc::new(AtomicBool::new(false)),
            files: Vec::new(),
        }
    }

    /// The flag that stops this unpack: once set, the next read or create fails.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }

    fn check_cancelled(&self) -> Result<()> {
        check_cancelled(&self.cancelled)
    }

    /// Starts another tree (the next platform of an index, in a directory of its own): its
    /// paths may repeat the last tree's, while files, directories and bytes keep counting
    /// against the limits of the whole artifact.
    pub fn next_tree(&mut self) {
        self.limits.max_files = self.limits.max_files.saturating_sub(self.seen.len());
        self.limits.max_dirs = self.limits.max_dirs.saturating_sub(self.dirs.len());
        self.seen.clear();
        self.dirs.clear();
    }

    /// Creates the directory `rel` below `dest` and its missing parents, one level at a
    /// time; each new directory counts once against the directory limit and costs
    /// [`ENTRY_COST`].
    fn make_dirs(&mut self, dest: &Path, rel: &str, gauge: &Gauge<'_>) -> Result<()> {
        let ends = rel.match_indices('/').map(|(i, _)| i);
        for end in ends.chain(std::iter::once(rel.len())) {
            let dir = &rel[..end];
            if self.dirs.contains(dir) {
                continue;
            }
            self.check_cancelled()?;
            self.dirs.insert(dir.to_string());
            if self.dirs.len() > self.limits.max_dirs {
                return Err(OciError::TooLarge(format!(
                    "more than {} directories",
                    self.limits.max_dirs
                )));
            }
            gauge.charge_entry()?;
            create_dir(dest, dir)?;
        }
        Ok(())
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

/// Validates an archive path and returns it normalised (no `.` parts, `/` separators):
/// relative, without `..` or NUL, UTF-8, at most [`MAX_PATH_BYTES`] long, [`MAX_PATH_DEPTH`]
/// parts deep and [`MAX_NAME_BYTES`] a part.
pub fn safe_relative_path(raw: &Path) -> Result<Option<String>> {
    let length = raw.as_os_str().len();
    if length > MAX_PATH_BYTES {
        let start: String = raw.to_string_lossy().chars().take(64).collect();
        return Err(OciError::UnsafeContent(format!(
            "path {start:?}... is {length} bytes long, over the limit of {MAX_PATH_BYTES}"
        )));
    }
    let shown = raw.to_string_lossy();
    let mut parts = Vec::new();
    for component in raw.components() {
        match component {
            Component::Normal(p) => {
                let s = p.to_str().ok_or_else(|| {
                    OciError::UnsafeContent(format!("path {shown:?} is not UTF-8"))
                })?;
                plain_part(s, &shown)?;
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
    if parts.len() > MAX_PATH_DEPTH {
        return Err(OciError::UnsafeContent(format!(
            "path {shown:?} is {} levels deep, over the limit of {MAX_PATH_DEPTH}",
            parts.len()
        )));
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// A part the file system can create and a status can hold: no NUL, no control character
/// or line separator (the API server would refuse the status listing it, for good), at
/// most [`MAX_NAME_BYTES`].
fn plain_part(part: &str, shown: &str) -> Result<()> {
    if part.contains('\0') {
        return Err(OciError::UnsafeContent(format!(
            "path {shown:?} contains a NUL byte"
        )));
    }
    if !crate::api::plain_name(part) {
        return Err(OciError::UnsafeContent(format!(
            "path {shown:?} contains a control character or a line separator"
        )));
    }
    if part.len() > MAX_NAME_BYTES {
        let start: String = part.chars().take(64).collect();
        return Err(OciError::UnsafeContent(format!(
            "path part {start:?}... is {} bytes long, over the limit of {MAX_NAME_BYTES}",
            part.len()
        )));
    }
    Ok(())
}

/// The largest PAX record set, GNU long name or GNU long link name one tar member may carry,
/// as in Go's `archive/tar`. The tar crate would read any size into memory.
pub const MAX_EXTENSION_BYTES: u64 = 1024 * 1024;

/// Extension headers read so far for the member that follows them.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

/// Unpacks a tar stream (already decompressed) into `dest`.
/// `layer_size` is the layer's stored size, used for the bomb ratio.
///
/// Every byte of the stream (headers, padding, skipped entries, extension records) is
/// counted against the layer's ratio cap and the artifact's unpacked budget as it is read.
/// Entries are read raw, so that extension headers (`x`, `g`, `L`, `K`) are checked for
/// size before their bodies are read: the tar crate would buffer them whole.
pub fn unpack_tar(
    reader: impl Read,
    dest: &Path,
    layer_size: u64,
    budget: &mut Budget,
) -> Result<()> {
    let (used, charged) = (Cell::new(0u64), Cell::new(0u64));
    let gauge = Gauge {
        used: &used,
        charged: &charged,
        ratio_cap: layer_size
            .saturating_mul(budget.limits.max_ratio)
            .max(16 * 1024 * 1024),
        budget_cap: budget
            .limits
            .max_unpacked_bytes
            .saturating_sub(budget.unpacked),
        limit: budget.limits.max_unpacked_bytes,
    };
    let meter = Meter {
        inner: reader,
        gauge,
        cancelled: budget.cancel_flag(),
    };
    let result = unpack_entries(meter, dest, budget);
    budget.unpacked = budget
        .unpacked
        .saturating_add(used.get())
        .saturating_add(charged.get());
    result
}

fn unpack_entries<R: Read>(meter: Meter<'_, R>, dest: &Path, budget: &mut Budget) -> Result<()> {
    let gauge = meter.gauge;
    let mut archive = tar::Archive::new(meter);
    let entries = archive.entries().map_err(tar_error)?.raw(true);
    let mut pending = Pending::default();
    for entry in entries {
        let mut entry = entry.map_err(tar_error)?;
        if read_extension(&mut entry, &mut pending)? {
            continue;
        }
        let taken = std::mem::take(&mut pending);
        let rel = match member(&entry, &taken)? {
            Member::File(rel) => rel,
            Member::Dir(rel) => {
                budget.make_dirs(dest, &rel, &gauge)?;
                continue;
            }
            Member::Nothing => continue,
        };
        budget.claim_path(&rel)?;
        gauge.charge_entry()?;
        let declared = entry.size();
        if declared > gauge.room() {
            return Err(OciError::TooLarge(format!(
                "{rel:?} would take the unpacked size over the limit"
            )));
        }
        let written = write_file(&mut entry, dest, &rel, declared, budget, &gauge)?;
        budget.files.push(written);
    }
    if !pending.is_empty() {
        return Err(OciError::UnsafeContent(
            "tar extension header describes no member".into(),
        ));
    }
    Ok(())
}

/// Reads an extension header's body into `pending` if it is one (`true`), after checking its
/// size. Global PAX headers are checked and skipped.
fn read_extension<R: Read>(entry: &mut tar::Entry<'_, R>, pending: &mut Pending) -> Result<bool> {
    use tar::EntryType as T;
    let kind = entry.header().entry_type();
    let slot = match kind {
        T::GNULongName => &mut pending.long_name,
        T::GNULongLink => &mut pending.long_link,
        T::XHeader => &mut pending.pax,
        T::XGlobalHeader => {
            extension_size_ok(kind, entry.size())?;
            return Ok(true); // the tar crate skips the body, through the meter
        }
        _ => return Ok(false),
    };
    extension_size_ok(kind, entry.size())?;
    if slot.is_some() {
        return Err(OciError::UnsafeContent(format!(
            "two tar extension headers of type {:?} for one member",
            kind.as_byte() as char
        )));
    }
    let mut body = Vec::new();
    Read::take(&mut *entry, MAX_EXTENSION_BYTES)
        .read_to_end(&mut body)
        .map_err(|e| read_error("tar extension header", e))?;
    *slot = Some(body);
    Ok(true)
}

/// Refuses an extension header over [`MAX_EXTENSION_BYTES`], before its body is read.
fn extension_size_ok(kind: tar::EntryType, size: u64) -> Result<()> {
    if size > MAX_EXTENSION_BYTES {
        return Err(OciError::UnsafeContent(format!(
            "tar extension header of type {:?} holds {size} bytes, over the limit of {MAX_EXTENSION_BYTES}",
            kind.as_byte() as char
        )));
    }
    Ok(())
}

/// What a tar member asks for.
enum Member {
    /// A regular file to write at this path.
    File(String),
    /// A directory to create.
    Dir(String),
    /// Nothing (a directory entry for the archive's root, `./`).
    Nothing,
}

/// Decides what to do with a member: a file or directory at a safe path; an error for
/// anything else.
fn member<R: Read>(entry: &tar::Entry<'_, R>, pending: &Pending) -> Result<Member> {
    let raw_path = member_path(entry.header(), pending)?;
    check_pax_size(pending, entry.size())?;
    let shown = raw_path.to_string_lossy().to_string();
    use tar::EntryType as T;
    match entry.header().entry_type() {
        T::Directory => Ok(safe_relative_path(&raw_path)?.map_or(Member::Nothing, Member::Dir)),
        T::Regular | T::Continuous => safe_relative_path(&raw_path)?
            .map(Member::File)
            .ok_or_else(|| OciError::UnsafeContent("file with an empty path".into())),
        T::Symlink | T::Link => Err(OciError::UnsafeContent(format!(
            "link {shown:?} is not allowed"
        ))),
        T::Char | T::Block | T::Fifo => Err(OciError::UnsafeContent(format!(
            "device or FIFO {shown:?} is not allowed"
        ))),
        other => Err(OciError::UnsafeContent(format!(
            "entry {shown:?} has unsupported type {:?}",
            other.as_byte() as char
        ))),
    }
}

/// The member's path: a PAX `path` record, else a GNU long name, else the header's name.
fn member_path(header: &tar::Header, pending: &Pending) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(path) = pax_record(pending, "path")? {
        return Ok(PathBuf::from(std::ffi::OsStr::from_bytes(path)));
    }
    if let Some(name) = &pending.long_name {
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        return Ok(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
    }
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(
        &header.path_bytes(),
    )))
}

/// A PAX `size` record must agree with the header: entries are read by the header's size,
/// and an archive that two readers would split differently is refused. Sparse files
/// (`GNU.sparse.*`) are refused too.
fn check_pax_size(pending: &Pending, header_size: u64) -> Result<()> {
    if let Some(size) = pax_record(pending, "size")?
        && std::str::from_utf8(size)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            != Some(header_size)
    {
        return Err(OciError::UnsafeContent(
            "a PAX size record disagrees with the tar header".into(),
        ));
    }
    if pax_record_with_prefix(pending, "GNU.sparse.")?.is_some() {
        return Err(OciError::UnsafeContent(
            "sparse files are not supported".into(),
        ));
    }
    Ok(())
}

/// The value of the last PAX record `key` of the member, if any.
fn pax_record<'p>(pending: &'p Pending, key: &str) -> Result<Option<&'p [u8]>> {
    let mut found = None;
    for (k, v) in pax_records(pending)? {
        if k == key.as_bytes() {
            found = Some(v);
        }
    }
    Ok(found)
}

fn pax_record_with_prefix<'p>(pending: &'p Pending, prefix: &str) -> Result<Option<&'p [u8]>> {
    Ok(pax_records(pending)?
        .into_iter()
        .find(|(k, _)| k.starts_with(prefix.as_bytes()))
        .map(|(_, v)| v))
}

fn pax_records(pending: &Pending) -> Result<Vec<(&[u8], &[u8])>> {
    let Some(pax) = &pending.pax else {
        return Ok(Vec::new());
    };
    tar::PaxExtensions::new(pax)
        .map(|r| {
            r.map(|e| (e.key_bytes(), e.value_bytes()))
                .map_err(|_| OciError::UnsafeContent("malformed PAX record".into()))
        })
        .collect()
}

/// The unpacked size of one layer so far: the bytes read from its (decompressed) stream
/// and what the files and directories it created cost ([`ENTRY_COST`] each). Stream bytes
/// count against the layer's ratio cap and the artifact's remaining budget; entry costs
/// against the budget only (small files are not a decompression bomb).
#[derive(Clone, Copy)]
struct Gauge<'a> {
    used: &'a Cell<u64>,
    charged: &'a Cell<u64>,
    ratio_cap: u64,
    /// What is left of the artifact's budget for this layer.
    budget_cap: u64,
    /// The artifact's whole budget, for messages.
    limit: u64,
}

impl Gauge<'_> {
    fn total(&self) -> u64 {
        self.used.get().saturating_add(self.charged.get())
    }

    /// Charges one created file or directory.
    fn charge_entry(&self) -> Result<()> {
        self.charged
            .set(self.charged.get().saturating_add(ENTRY_COST));
        self.within_budget()
    }

    fn within_budget(&self) -> Result<()> {
        if self.total() > self.budget_cap {
            return Err(OciError::TooLarge(format!(
                "the artifact unpacks to more than its size limit of {} bytes \
                 (each file and directory counts {ENTRY_COST} bytes besides its content)",
                self.limit
            )));
        }
        Ok(())
    }

    /// Counts `n` bytes read from the stream.
    fn count(&self, n: usize) -> Result<()> {
        self.used.set(self.used.get().saturating_add(n as u64));
        self.within_budget()?;
        if self.used.get() > self.ratio_cap {
            return Err(OciError::TooLarge(format!(
                "a layer unpacks to more than {} bytes, past the ratio of a decompression bomb",
                self.ratio_cap
            )));
        }
        Ok(())
    }

    /// How many more stream bytes fit.
    fn room(&self) -> u64 {
        let by_ratio = self.ratio_cap.saturating_sub(self.used.get());
        by_ratio.min(self.budget_cap.saturating_sub(self.total()))
    }
}

/// Counts every byte read from a layer's (decompressed) stream and fails the read once the
/// gauge says so, or once the pull is cancelled.
struct Meter<'a, R> {
    inner: R,
    gauge: Gauge<'a>,
    cancelled: Arc<AtomicBool>,
}

impl<R: Read> Read for Meter<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        check_cancelled(&self.cancelled).map_err(io::Error::other)?;
        let n = self.inner.read(buf)?;
        self.gauge.count(n).map_err(io::Error::other)?;
        Ok(n)
    }
}

/// Fails once `flag` is set: the pull this unpack belongs to was dropped or cancelled.
pub fn check_cancelled(flag: &AtomicBool) -> Result<()> {
    if flag.load(Ordering::Relaxed) {
        return Err(OciError::RegistryUnavailable(
            "the pull was cancelled".into(),
        ));
    }
    Ok(())
}

/// An error from the tar reader: ours (carried through `io::Error` by the meter or the
/// verifying stream) comes back out as itself; anything else is a corrupt archive.
fn tar_error(e: io::Error) -> OciError {
    match read_error("tar", e) {
        OciError::Io { source, .. } => OciError::UnsafeContent(format!("corrupt tar: {source}")),
        other => other,
    }
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
    let (used, charged) = (Cell::new(0u64), Cell::new(0u64));
    let gauge = Gauge {
        used: &used,
        charged: &charged,
        ratio_cap: u64::MAX,
        budget_cap: budget
            .limits
            .max_unpacked_bytes
            .saturating_sub(budget.unpacked),
        limit: budget.limits.max_unpacked_bytes,
    };
    let result = gauge.charge_entry().and_then(|()| {
        let room = gauge.room();
        write_file(reader, dest, &rel, room, budget, &gauge)
    });
    budget.unpacked = budget.unpacked.saturating_add(charged.get());
    let written = result?;
    budget.unpacked = budget.unpacked.saturating_add(written.size);
    budget.files.push(written);
    Ok(())
}

/// Creates one directory below `dest`, whose parent exists (never `dest` itself).
fn create_dir(dest: &Path, rel: &str) -> Result<()> {
    let path = dest.join(rel);
    match fs::create_dir(&path) {
        Ok(()) => Ok(()),
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists
                && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) =>
        {
            Ok(())
        }
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists
                || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Err(OciError::UnsafeContent(format!(
                "path {rel:?} conflicts with a file"
            )))
        }
        Err(e) => Err(OciError::io(format!("create directory {rel}"), e)),
    }
}

/// Copies at most `limit` bytes into a new file, hashing them; creates its missing parent
/// directories first.
fn write_file(
    reader: &mut impl Read,
    dest: &Path,
    rel: &str,
    limit: u64,
    budget: &mut Budget,
    gauge: &Gauge<'_>,
) -> Result<WrittenFile> {
    if let Some((parent, _)) = rel.rsplit_once('/') {
        budget.make_dirs(dest, parent, gauge)?;
    }
    budget.check_cancelled()?;
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
        platform: None,
    })
}

/// Files that may be larger than this are hashed and written on a second thread while the
/// reader (usually the inflater) produces the next buffer.
const PIPELINE_MIN_BYTES: u64 = 1024 * 1024;
const CHUNK: usize = digest::COPY_CHUNK;

fn too_large(rel: &str) -> OciError {
    OciError::TooLarge(format!("{rel:?} is over the size limit"))
}

/// Reads, hashes and writes on this thread (small files).
fn copy_inline(reader: &mut impl Read, file: File, rel: &str, limit: u64) -> Result<(Digest, u64)> {
    let mut out = BufWriter::with_capacity(CHUNK, file);
    digest::copy_hashed(reader, &mut out, limit).map_err(|e| match e {
        CopyError::Read(e) => read_error(rel, e),
        CopyError::Write(e) => OciError::io(format!("write {rel}"), e),
        CopyError::OverLimit(_) => too_large(rel),
    })
}

/// Reads on this thread; hashes and writes on a scoped second thread. Buffers go round
/// between the two (four in flight), so memory stays at about 1 MiB per file.
fn copy_pipelined(
    reader: &mut impl Read,
    file: File,
    rel: &str,
    limit: u64,
) -> Result<(Digest, u64)> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(4);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(4);
    for _ in 0..4 {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> io::Result<(Digest, u64)> {
            // the reader refuses bytes past the limit first, with its own error
            let mut out = HashingWriter::new(file, limit);
            for (buf, n) in full_rx {
                out.write_all(&buf[..n])?;
                // the reader may have stopped; a closed return channel is fine
                let _ = empty_tx.send(buf);
            }
            Ok(out.finish())
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
                size = size.saturating_add(n as u64);
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
            .map_err(|_| OciError::Internal(format!("the thread writing {rel} failed")))?
            .map_err(|e| OciError::io(format!("write {rel}"), e));
        read_result?;
        // what the reader counted is what went to the writer
        let (digest, _) = written?;
        Ok((digest, size))
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
    fn both_copies_hash_what_they_write_and_stop_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let len = data.len() as u64;
        let create = |name: &str| File::create(dir.path().join(name)).unwrap();
        for pipelined in [false, true] {
            let copy = |file: File, limit: u64| {
                let mut reader = data.as_slice();
                if pipelined {
                    copy_pipelined(&mut reader, file, "f", limit)
                } else {
                    copy_inline(&mut reader, file, "f", limit)
                }
            };
            let name = format!("{pipelined}");
            let (digest, size) = copy(create(&name), len).unwrap();
            assert_eq!((digest, size), (Digest::of(&data), len), "{name}");
            assert_eq!(fs::read(dir.path().join(&name)).unwrap(), data, "{name}");
            let e = copy(create("over"), len - 1).unwrap_err();
            assert_eq!(e.reason().as_str(), "TooLarge", "{name}: {e}");
        }
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
        assert_eq!(b.files[0].digest, Digest::of(b"- rule: x\n"));
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
            // names a status could not hold (the API server reads it as YAML)
            tar_with(&[("del\u{7f}.yaml", T::Regular, b"x", None)]),
            tar_with(&[("c1\u{85}.yaml", T::Regular, b"x", None)]),
            tar_with(&[("dir\n/x.yaml", T::Regular, b"x", None)]),
            tar_with(&[("ls\u{2028}.yaml", T::Regular, b"x", None)]),
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
    fn the_trees_of_one_artifact_share_its_file_and_directory_limits() {
        let t = tar_with(&[
            ("d/a", tar::EntryType::Regular, b"1", None),
            ("d/b", tar::EntryType::Regular, b"2", None),
        ]);
        let mut b = Budget::new(Limits {
            max_files: 3,
            max_dirs: 3,
            ..Limits::default()
        });
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        unpack_tar(&t[..], one.path(), t.len() as u64, &mut b).unwrap();
        // the same paths again in the next tree, but only one file is left of the three
        b.next_tree();
        let e = unpack_tar(&t[..], two.path(), t.len() as u64, &mut b).unwrap_err();
        assert!(e.to_string().contains("more than 1 files"), "{e}");
        assert_eq!(b.files.len(), 3, "both trees' files are kept");
    }

    /// One PAX record, `"<len> <key>=<value>\n"`, its length counting itself.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = key.len() + value.len() + 3;
        let mut len = body + body.to_string().len();
        if len.to_string().len() != body.to_string().len() {
            len += 1;
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        assert_eq!(r.len(), len);
        r
    }

    /// Appends a raw header of `kind` with `data` as its body.
    fn append_raw(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    /// A tar whose first member carries `pax` records.
    fn tar_with_pax(pax: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        append_raw(&mut b, tar::EntryType::XHeader, "PaxHeaders/x", pax);
        append_raw(&mut b, tar::EntryType::Regular, name, data);
        b.into_inner().unwrap()
    }

    /// Counts what the unpacker reads.
    struct Counting<R> {
        inner: R,
        read: std::rc::Rc<Cell<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }

    /// An extension header declaring `size` bytes, then (lazily) those bytes.
    fn huge_extension(kind: tar::EntryType, size: u64) -> impl Read {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.as_old_mut().name[..5].copy_from_slice(b"bombs");
        h.set_cksum();
        let head = h.as_bytes().to_vec();
        io::Cursor::new(head).chain(io::repeat(b'a').take(size))
    }

    #[test]
    fn huge_extension_headers_are_refused_before_their_body_is_read() {
        use tar::EntryType as T;
        for kind in [T::XHeader, T::XGlobalHeader, T::GNULongName, T::GNULongLink] {
            let read = std::rc::Rc::new(Cell::new(0));
            let reader = Counting {
                inner: huge_extension(kind, 300 * 1024 * 1024),
                read: read.clone(),
            };
            let dir = tempfile::tempdir().unwrap();
            let mut budget = Budget::new(Limits::default());
            let e = unpack_tar(reader, dir.path(), 300 * 1024, &mut budget).unwrap_err();
            assert_eq!(e.reason().as_str(), "UnsafeContent", "{kind:?}: {e}");
            assert!(e.to_string().contains("extension header"), "{e}");
            assert!(
                read.get() < 64 * 1024,
                "{kind:?}: read {} bytes",
                read.get()
            );
        }
        // exactly at the limit is fine (and its bytes count against the budget)
        let at_limit = vec![b'a'; MAX_EXTENSION_BYTES as usize];
        let mut b = tar::Builder::new(Vec::new());
        append_raw(&mut b, T::XGlobalHeader, "g", &at_limit);
        append_raw(&mut b, T::Regular, "f", b"x");
        let t = b.into_inner().unwrap();
        let (_dir, r) = unpack(&t);
        let unpacked = r.unwrap().unpacked;
        assert!(unpacked > MAX_EXTENSION_BYTES && unpacked <= t.len() as u64 + ENTRY_COST);
    }

    #[test]
    fn long_names_from_pax_and_gnu_headers_are_used_and_checked() {
        let long = format!("rules/{}.yaml", "n".repeat(200));
        let t = tar_with_pax(
            &pax_record("path", long.as_bytes()),
            "short",
            b"- rule: x\n",
        );
        let (dir, r) = unpack(&t);
        assert_eq!(r.unwrap().files[0].path, long);
        assert!(dir.path().join(&long).is_file());

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"ok"[..]).unwrap(); // writes a GNU 'L' entry
        let (_dir, r) = unpack(&b.into_inner().unwrap());
        assert_eq!(r.unwrap().files[0].path, long);

        let escape = tar_with_pax(&pax_record("path", b"../../etc/cron.d/x"), "fine", b"x");
        let (dir, r) = unpack(&escape);
        assert_eq!(r.unwrap_err().reason().as_str(), "UnsafeContent");
        assert!(!dir.path().join("fine").exists());
    }

    #[test]
    fn pax_records_that_change_how_the_archive_splits_are_refused() {
        let cases = [
            tar_with_pax(&pax_record("size", b"999"), "f", b"abc"),
            tar_with_pax(&pax_record("GNU.sparse.size", b"3"), "f", b"abc"),
            tar_with_pax(b"not a record", "f", b"abc"),
        ];
        for (i, t) in cases.iter().enumerate() {
            let (_dir, r) = unpack(t);
            let e = r.expect_err(&format!("case {i}"));
            assert_eq!(e.reason().as_str(), "UnsafeContent", "case {i}: {e}");
        }
        let agreeing = tar_with_pax(&pax_record("size", b"3"), "f", b"abc");
        assert!(unpack(&agreeing).1.is_ok());
    }

    #[test]
    fn extension_headers_must_describe_exactly_one_member() {
        let mut b = tar::Builder::new(Vec::new());
        append_raw(
            &mut b,
            tar::EntryType::XHeader,
            "x",
            &pax_record("path", b"a"),
        );
        append_raw(
            &mut b,
            tar::EntryType::XHeader,
            "x",
            &pax_record("path", b"b"),
        );
        append_raw(&mut b, tar::EntryType::Regular, "f", b"x");
        let (_dir, r) = unpack(&b.into_inner().unwrap());
        assert_eq!(r.unwrap_err().reason().as_str(), "UnsafeContent");

        let mut b = tar::Builder::new(Vec::new());
        append_raw(&mut b, tar::EntryType::Regular, "f", b"x");
        append_raw(&mut b, tar::EntryType::GNULongName, "L", b"dangling\0");
        let (_dir, r) = unpack(&b.into_inner().unwrap());
        assert_eq!(r.unwrap_err().reason().as_str(), "UnsafeContent");
    }

    #[test]
    fn skipped_bytes_count_against_the_budget() {
        // A directory "holding" 1 MiB: the tar reader skips it, the meter still counts it.
        let mut b = tar::Builder::new(Vec::new());
        append_raw(
            &mut b,
            tar::EntryType::Directory,
            "d/",
            &vec![0u8; 1024 * 1024],
        );
        append_raw(&mut b, tar::EntryType::Regular, "f", b"x");
        let t = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut budget = Budget::new(Limits {
            max_unpacked_bytes: 64 * 1024,
            ..Limits::default()
        });
        let e = unpack_tar(&t[..], dir.path(), t.len() as u64, &mut budget).unwrap_err();
        assert_eq!(e.reason().as_str(), "TooLarge", "{e}");
        // the same archive fits a budget that holds it, and is counted whole
        let (_dir, r) = unpack(&t);
        let unpacked = r.unwrap().unpacked;
        assert!(unpacked > 1024 * 1024 && unpacked <= t.len() as u64 + 2 * ENTRY_COST);
    }

    #[test]
    fn layers_share_one_budget_without_overflow() {
        let t = tar_with(&[("a", tar::EntryType::Regular, b"abc", None)]);
        let dir = tempfile::tempdir().unwrap();
        let mut budget = Budget::new(Limits {
            max_unpacked_bytes: u64::MAX,
            max_ratio: u64::MAX,
            ..Limits::default()
        });
        budget.unpacked = u64::MAX - 10;
        let e = unpack_tar(&t[..], dir.path(), u64::MAX, &mut budget).unwrap_err();
        assert_eq!(e.reason().as_str(), "TooLarge", "{e}");
        assert_eq!(budget.unpacked, u64::MAX);
    }

    /// A tar of `files` files `depth` levels deep, named by GNU long-name entries.
    fn deep_tar(files: usize, depth: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..files {
            let path = format!("{}/f{i}", vec!["d"; depth].join("/"));
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            b.append_data(&mut h, &path, &b"x"[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Every entry below `dir`, recursively.
    fn count_entries(dir: &Path) -> usize {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| 1 + count_entries(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    }

    #[test]
    fn deep_and_long_paths_are_refused_before_anything_is_created() {
        // ~1800 levels, by GNU long name and by PAX path: refused, nothing created
        let (dir, r) = unpack(&deep_tar(50, 1800));
        let e = r.expect_err("1800 levels");
        assert_eq!(e.reason().as_str(), "UnsafeContent", "{e}");
        assert!(e.to_string().contains("long"), "{e}");
        assert_eq!(count_entries(dir.path()), 0);
        let deep = format!("{}/f", vec!["d"; 200].join("/"));
        let (dir, r) = unpack(&tar_with_pax(
            &pax_record("path", deep.as_bytes()),
            "f",
            b"x",
        ));
        let e = r.expect_err("200 levels");
        assert_eq!(e.reason().as_str(), "UnsafeContent", "{e}");
        assert!(e.to_string().contains("201 levels deep"), "{e}");
        assert_eq!(count_entries(dir.path()), 0);
        // the depth and length limits themselves
        let at = |parts: usize, len: usize| {
            let name = "n".repeat(len);
            safe_relative_path(Path::new(&vec![name.as_str(); parts].join("/")))
        };
        assert!(at(MAX_PATH_DEPTH, 1).is_ok());
        assert_eq!(
            at(MAX_PATH_DEPTH + 1, 1).unwrap_err().reason().as_str(),
            "UnsafeContent"
        );
        assert!(at(4, 255).is_ok()); // 1023 bytes
        assert!(at(1, MAX_NAME_BYTES).is_ok());
        assert!(at(1, MAX_NAME_BYTES + 1).is_err()); // one part the file system cannot hold
        assert_eq!(
            at(1, MAX_PATH_BYTES + 1).unwrap_err().reason().as_str(),
            "UnsafeContent"
        );
        // `.` parts count against the length
        let dots = format!("{}f", "./".repeat(600));
        assert!(safe_relative_path(Path::new(&dots)).is_err());
    }

    #[test]
    fn every_created_directory_counts_once_against_the_directory_limit() {
        use tar::EntryType as T;
        // 5,000 explicit directory entries, with room for 10 files: refused at the limit
        let names: Vec<String> = (0..5000).map(|i| format!("d{i}/")).collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), T::Directory, &b""[..], None))
            .collect();
        let t = tar_with(&entries);
        let dir = tempfile::tempdir().unwrap();
        let mut b = Budget::new(Limits {
            max_files: 10,
            ..Limits::default()
        });
        let e = unpack_tar(&t[..], dir.path(), t.len() as u64, &mut b).unwrap_err();
        assert_eq!(e.reason().as_str(), "TooLarge", "{e}");
        assert!(e.to_string().contains("more than 4096 directories"), "{e}");
        assert_eq!(count_entries(dir.path()), 4096);
        // implied parents count too, each distinct one once
        let t = tar_with(&[
            ("a/", T::Directory, b"", None),
            ("a/b/", T::Directory, b"", None),
            ("a/b/c", T::Regular, b"1", None),
            ("a/b/d", T::Regular, b"2", None),
            ("x/y/z", T::Regular, b"3", None),
        ]);
        let (_dir, r) = unpack(&t);
        assert_eq!(r.unwrap().dirs.len(), 4, "a, a/b, x, x/y");
        let dir = tempfile::tempdir().unwrap();
        let mut b = Budget::new(Limits {
            max_dirs: 3,
            ..Limits::default()
        });
        let e = unpack_tar(&t[..], dir.path(), t.len() as u64, &mut b).unwrap_err();
        assert!(e.to_string().contains("more than 3 directories"), "{e}");
    }

    #[test]
    fn each_created_entry_costs_against_the_unpacked_size() {
        // 50 one-byte files 20 levels deep: ~40 KB of tar, but 70 entries on disk
        let t = deep_tar(50, 20);
        let (_dir, r) = unpack(&t);
        let unpacked = r.unwrap().unpacked;
        assert!(unpacked >= 70 * ENTRY_COST, "{unpacked}");
        let dir = tempfile::tempdir().unwrap();
        // room for the stream (~100 KB) and for about 35 of the 70 entries
        assert!(t.len() < 25 * ENTRY_COST as usize, "{}", t.len());
        let mut b = Budget::new(Limits {
            max_unpacked_bytes: 60 * ENTRY_COST,
            ..Limits::default()
        });
        let e = unpack_tar(&t[..], dir.path(), t.len() as u64, &mut b).unwrap_err();
        assert_eq!(e.reason().as_str(), "TooLarge", "{e}");
        assert!(
            e.to_string().contains("each file and directory counts"),
            "{e}"
        );
        let created = count_entries(dir.path());
        assert!(created < 60, "{created} entries");
        // a single-file layer pays for its entry too
        let dir = tempfile::tempdir().unwrap();
        let mut b = Budget::new(Limits {
            max_unpacked_bytes: ENTRY_COST + 3,
            ..Limits::default()
        });
        write_single(&mut &b"abc"[..], dir.path(), "f", &mut b).unwrap();
        assert_eq!(b.unpacked, ENTRY_COST + 3);
        let e = write_single(&mut &b"x"[..], dir.path(), "g", &mut b).unwrap_err();
        assert_eq!(e.reason().as_str(), "TooLarge", "{e}");
    }

    #[test]
    fn the_staging_directory_itself_is_never_created() {
        use tar::EntryType as T;
        let parent = tempfile::tempdir().unwrap();
        let gone = parent.path().join("staging");
        for t in [
            tar_with(&[("a/b/c", T::Regular, b"1", None)]),
            tar_with(&[("f", T::Regular, b"1", None)]),
            tar_with(&[("d/", T::Directory, b"", None)]),
        ] {
            let mut b = Budget::new(Limits::default());
            assert!(unpack_tar(&t[..], &gone, t.len() as u64, &mut b).is_err());
            assert!(!gone.exists());
        }
        let mut b = Budget::new(Limits::default());
        assert!(write_single(&mut &b"abc"[..], &gone, "f", &mut b).is_err());
        assert!(!gone.exists());
    }

    #[test]
    fn a_cancelled_unpack_creates_nothing_more() {
        let t = deep_tar(3, 2);
        let dir = tempfile::tempdir().unwrap();
        let mut b = Budget::new(Limits::default());
        b.cancel_flag().store(true, Ordering::Relaxed);
        let e = unpack_tar(&t[..], dir.path(), t.len() as u64, &mut b).unwrap_err();
        assert!(e.to_string().contains("cancelled"), "{e}");
        assert_eq!(count_entries(dir.path()), 0);
        let e = write_single(&mut &b"abc"[..], dir.path(), "d/f", &mut b).unwrap_err();
        assert!(e.to_string().contains("cancelled"), "{e}");
        assert_eq!(count_entries(dir.path()), 0);
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

    /// Found by the `unpack` fuzz target: a NUL byte or an over-long part in a file name
    /// (a single file's title, a PAX path) failed as a local I/O error, which is retried as
    /// transient, instead of being refused as unsafe content.
    #[test]
    fn names_the_file_system_cannot_hold_are_unsafe_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut budget = Budget::new(Limits::default());
        let title = "a\0\0udit)json";
        let e = write_single(&mut &b"{}"[..], dir.path(), title, &mut budget).unwrap_err();
        assert_eq!(e.reason().as_str(), "UnsafeContent", "{e}");
        let long = format!("rules/{}.yaml", "r".repeat(MAX_NAME_BYTES));
        for path in [b"rules/a\0b.yaml".as_slice(), long.as_bytes()] {
            let (dir, r) = unpack(&tar_with_pax(&pax_record("path", path), "f", b"x"));
            let e = r.expect_err("refused");
            assert_eq!(e.reason().as_str(), "UnsafeContent", "{e}");
            assert_eq!(count_entries(dir.path()), 0);
        }
        let longest = "n".repeat(MAX_NAME_BYTES);
        assert!(safe_relative_path(Path::new(&longest)).is_ok());
    }
}
