//! The certificate transparency proof embedded in a Fulcio certificate (RFC 6962 §3.3): a
//! signed certificate timestamp (SCT) from a CT log of the trusted root over the
//! precertificate, the certificate's TBS without the SCT extension.

use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;
use x509_cert::der::asn1::{Any, ObjectIdentifier, OctetStringRef};
use x509_cert::der::{Decode, Encode, Tag, TagNumber, Tagged};
use x509_cert::ext::Extension;

use super::Failed;
use super::cert::Leaf;
use super::trust_root::TrustedRoot;

const SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2");
const MAX_SCTS: usize = 16;

/// When the trusted root lists CT logs, requires one valid embedded SCT from one of them.
/// `issuer_spki` is the DER SubjectPublicKeyInfo of the certificate's issuer.
pub fn verify(root: &TrustedRoot, leaf: &Leaf, issuer_spki: &[u8]) -> Result<(), Failed> {
    if root.ctlogs().is_empty() {
        return Ok(());
    }
    let list = sct_list(&leaf.cert)?;
    let tbs = precert_tbs(&leaf.der)?;
    let issuer_hash: [u8; 32] = Sha256::digest(issuer_spki).into();
    let mut why = String::from("no SCT from a CT log of the trusted root");
    for sct in list {
        match check_one(root, sct, &tbs, &issuer_hash) {
            Ok(()) => return Ok(()),
            Err(e) => why = e,
        }
    }
    Err(Failed::invalid(format!(
        "the signing certificate's embedded SCT does not verify: {why}"
    )))
}

/// A byte reader over TLS-encoded structures.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn uint(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |v, b| (v << 8) | u64::from(*b)),
        )
    }

    fn vector(&mut self, len_bytes: usize) -> Option<&'a [u8]> {
        let n = self.uint(len_bytes)? as usize;
        self.take(n)
    }
}

fn sct_list(cert: &Certificate) -> Result<Vec<&[u8]>, Failed> {
    let missing = || Failed::invalid("the signing certificate carries no SCT");
    let ext = cert
        .tbs_certificate()
        .extensions()
        .and_then(|e| e.iter().find(|e| e.extn_id == SCT_LIST))
        .ok_or_else(missing)?;
    let inner = <&OctetStringRef>::from_der(ext.extn_value.as_bytes())
        .map_err(|_| Failed::invalid("the SCT extension is not an OCTET STRING"))?;
    let malformed = || Failed::invalid("the SCT list is malformed");
    let mut r = Reader(inner.as_bytes());
    let mut list = Reader(r.vector(2).ok_or_else(malformed)?);
    let mut out = Vec::new();
    while !list.0.is_empty() {
        if out.len() == MAX_SCTS {
            return Err(Failed::invalid(format!("more than {MAX_SCTS} SCTs")));
        }
        out.push(list.vector(2).ok_or_else(malformed)?);
    }
    Ok(out)
}

fn check_one(
    root: &TrustedRoot,
    sct: &[u8],
    tbs: &[u8],
    issuer_hash: &[u8; 32],
) -> Result<(), String> {
    let bad = || "malformed SCT".to_string();
    let mut r = Reader(sct);
    if r.uint(1).ok_or_else(bad)? != 0 {
        return Err("SCT version is not v1".into());
    }
    let log_id = r.take(32).ok_or_else(bad)?;
    let timestamp = r.uint(8).ok_or_else(bad)?;
    let extensions = r.vector(2).ok_or_else(bad)?;
    let _hash_and_sig_algorithms = r.take(2).ok_or_else(bad)?;
    let signature = r.vector(2).ok_or_else(bad)?;
    let log = root
        .ctlog(log_id)
        .ok_or_else(|| "the SCT's log is not a CT log of the trusted root".to_string())?;
    let key = log.key.as_ref().ok_or("the CT log's key is not usable")?;
    if !log.valid.contains((timestamp / 1000) as i64) {
        return Err(format!("the CT log {} was not valid then", log.base_url));
    }
    let mut signed = Vec::with_capacity(tbs.len() + 64);
    signed.extend_from_slice(&[0, 0]); // v1, certificate_timestamp
    signed.extend_from_slice(&timestamp.to_be_bytes());
    signed.extend_from_slice(&[0, 1]); // precert_entry
    signed.extend_from_slice(issuer_hash);
    let n = u32::try_from(tbs.len()).map_err(|_| bad())?;
    signed.extend_from_slice(&n.to_be_bytes()[1..]);
    signed.extend_from_slice(tbs);
    signed.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    signed.extend_from_slice(extensions);
    if key.verifies(&signed, signature) {
        Ok(())
    } else {
        Err(format!("the signature of CT log {} is wrong", log.base_url))
    }
}

/// The precertificate's TBS: the certificate's TBS re-encoded without the SCT extension.
fn precert_tbs(cert_der: &[u8]) -> Result<Vec<u8>, Failed> {
    let bad = |e: x509_cert::der::Error| Failed::invalid(format!("precertificate: {e}"));
    let cert: Vec<Any> = Vec::from_der(cert_der).map_err(bad)?;
    let tbs = cert
        .first()
        .ok_or_else(|| Failed::invalid("empty certificate"))?;
    let mut fields: Vec<Any> = Vec::from_der(&tbs.to_der().map_err(bad)?).map_err(bad)?;
    let extensions_tag = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber(3),
    };
    for field in fields.iter_mut() {
        if field.tag() != extensions_tag {
            continue;
        }
        let exts: Vec<Extension> = Vec::from_der(field.value()).map_err(bad)?;
        let kept: Vec<Extension> = exts.into_iter().filter(|e| e.extn_id != SCT_LIST).collect();
        *field = Any::new(extensions_tag, kept.to_der().map_err(bad)?).map_err(bad)?;
    }
    fields.to_der().map_err(bad)
}
