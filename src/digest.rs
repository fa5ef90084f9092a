//! Content digests (`sha256:<64 lowercase hex>`), parsed once and valid from then on, and
//! the one routine that hashes bytes while they are copied ([`Hasher`], [`copy_hashed`]).

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A valid `sha256:<64 lowercase hex>` digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

/// A text that is not a `sha256:<64 lowercase hex>` digest (at most 80 characters of it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a sha256 digest: {0:?}")]
pub struct InvalidDigest(pub String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; anything else (another algorithm, upper case, a
    /// short or long hex part) is refused.
    pub fn parse(text: &str) -> Result<Self, InvalidDigest> {
        match text.strip_prefix("sha256:") {
            Some(hex) if is_sha256_hex(hex) => Ok(Digest(text.to_string())),
            _ => Err(InvalidDigest(text.chars().take(80).collect())),
        }
    }

    /// Parses the 64 lowercase hex characters of a `sha256:` digest (a file name or URL
    /// segment that holds only the hex part).
    pub fn from_hex(hex: &str) -> Result<Self, InvalidDigest> {
        if is_sha256_hex(hex) {
            Ok(Digest(format!("sha256:{hex}")))
        } else {
            Err(InvalidDigest(hex.chars().take(80).collect()))
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest::from_hash(Sha256::digest(bytes).into())
    }

    /// The digest a SHA-256 hasher fed with structured data ends with (for keys hashed
    /// from fields, not from a stream of bytes).
    pub fn from_sha256(sha: Sha256) -> Self {
        Digest::from_hash(sha.finalize().into())
    }

    fn from_hash(hash: [u8; 32]) -> Self {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    /// The 64 hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 64 lowercase hex characters.
pub fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Hashes bytes as they go by and counts them, refusing any byte past a limit.
pub struct Hasher {
    sha: Sha256,
    size: u64,
    limit: u64,
}

/// More bytes came than the limit allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("more than {limit} bytes")]
pub struct OverLimit {
    pub limit: u64,
}

impl Hasher {
    /// A hasher that takes at most `limit` bytes.
    pub fn with_limit(limit: u64) -> Self {
        Hasher {
            sha: Sha256::new(),
            size: 0,
            limit,
        }
    }

    /// Takes the next bytes; past the limit, nothing is hashed and the error says so.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), OverLimit> {
        let size = self.size.saturating_add(bytes.len() as u64);
        if size > self.limit {
            return Err(OverLimit { limit: self.limit });
        }
        self.size = size;
        self.sha.update(bytes);
        Ok(())
    }

    /// The bytes taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest and size of everything taken.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_hash(self.sha.finalize().into()), self.size)
    }
}

/// A writer that hashes and counts what goes through it to the inner writer, refusing
/// (with an [`OverLimit`] error, nothing written) any write that would pass its limit. For
/// a copy whose reading and writing happen on different threads: the writing side hashes.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`, taking at most `limit` bytes.
    pub fn new(inner: W, limit: u64) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::with_limit(limit),
        }
    }

    /// The digest and size of everything written. Flushing first is the caller's part.
    pub fn finish(self) -> (Digest, u64) {
        self.hasher.finish()
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.hasher.limit.saturating_sub(self.hasher.size);
        if buf.len() as u64 > room {
            return Err(io::Error::other(OverLimit {
                limit: self.hasher.limit,
            }));
        }
        let n = self.inner.write(buf)?;
        // within the room checked above: cannot fail
        self.hasher.update(&buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Why [`copy_hashed`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("read: {0}")]
    Read(#[source] io::Error),
    #[error("write: {0}")]
    Write(#[source] io::Error),
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
}

/// The buffer size [`copy_hashed`] reads with.
pub const COPY_CHUNK: usize = 256 * 1024;

/// Copies everything `reader` gives into `writer` (flushed at the end), hashing it, and
/// stops at the first byte past `limit`. Returns the digest and size of what was copied.
pub fn copy_hashed(
    reader: &mut impl Read,
    writer: &mut impl Write,
    limit: u64,
) -> Result<(Digest, u64), CopyError> {
    let mut hasher = Hasher::with_limit(limit);
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n])?;
        writer.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
    writer.flush().map_err(CopyError::Write)?;
    Ok(hasher.finish())
}

/// The digest and size of everything `reader` gives (nothing is written).
pub fn hash_all(reader: &mut impl Read, limit: u64) -> Result<(Digest, u64), CopyError> {
    copy_hashed(reader, &mut io::sink(), limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn only_lowercase_sha256_digests_parse() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(Digest::of(b""), d);
        for bad in [
            "",
            "sha256:",
            &EMPTY.to_uppercase(),
            &EMPTY.replace("sha256", "sha512"),
            &format!("{EMPTY}0"),
            &EMPTY[..70],
            "sha256:../../etc/passwd",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:aa\"").is_err());
    }

    #[test]
    fn copies_hash_and_stop_past_the_limit() {
        let data = vec![7u8; COPY_CHUNK * 2 + 3];
        let mut out = Vec::new();
        let (d, n) = copy_hashed(&mut data.as_slice(), &mut out, data.len() as u64).unwrap();
        assert_eq!((d, n), (Digest::of(&data), data.len() as u64));
        assert_eq!(out, data);
        let e = copy_hashed(&mut data.as_slice(), &mut Vec::new(), 10).unwrap_err();
        assert!(matches!(e, CopyError::OverLimit(OverLimit { limit: 10 })));
        assert_eq!(hash_all(&mut &b""[..], 0).unwrap().0.as_str(), EMPTY);
    }

    #[test]
    fn hex_parts_and_structured_hashes_make_digests() {
        let d = Digest::from_hex(&EMPTY["sha256:".len()..]).unwrap();
        assert_eq!(d.as_str(), EMPTY);
        for bad in ["", "../x", &EMPTY.to_uppercase()["SHA256:".len()..], EMPTY] {
            assert!(Digest::from_hex(bad).is_err(), "{bad}");
        }
        let mut sha = Sha256::new();
        sha.update(b"ab");
        sha.update(b"c");
        assert_eq!(Digest::from_sha256(sha), Digest::of(b"abc"));
    }

    #[test]
    fn a_hashing_writer_hashes_what_it_writes_up_to_its_limit() {
        let mut w = HashingWriter::new(Vec::new(), 5);
        w.write_all(b"abc").unwrap();
        let e = w.write_all(b"def").unwrap_err();
        assert!(e.get_ref().is_some_and(|i| i.is::<OverLimit>()), "{e}");
        w.write_all(b"de").unwrap();
        w.flush().unwrap();
        assert_eq!(w.inner, b"abcde");
        assert_eq!(w.finish(), (Digest::of(b"abcde"), 5));

        /// Takes at most two bytes a call, as a pipe or socket may.
        struct Short(Vec<u8>);
        impl Write for Short {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(2);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashingWriter::new(Short(Vec::new()), 100);
        w.write_all(b"hello world").unwrap();
        assert_eq!(w.finish(), (Digest::of(b"hello world"), 11));
    }

    #[test]
    fn the_hasher_refuses_bytes_past_its_limit() {
        let mut h = Hasher::with_limit(4);
        h.update(b"ab").unwrap();
        assert_eq!(h.update(b"cde"), Err(OverLimit { limit: 4 }));
        h.update(b"cd").unwrap();
        assert_eq!(h.finish(), (Digest::of(b"abcd"), 4));
    }
}
