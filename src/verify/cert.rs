//! Fulcio signing certificates: the fields webpki does not expose (subject alternative
//! names, the OIDC issuer extensions) read with x509-cert, and the path to a CA of the
//! trusted root checked with webpki at the transparency log's integrated time.

use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use x509_cert::Certificate;
use x509_cert::der::asn1::{ObjectIdentifier, Utf8StringRef};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::keys::PublicKey;
use super::trust_root::TrustedRoot;
use super::{Failed, Identity, Refusal};

/// Fulcio's OIDC issuer: v1 (raw bytes, legacy) and v2 (a DER UTF8String).
const ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1");
const ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8");
/// Fulcio's OtherName SAN for usernames.
const OTHER_NAME_USERNAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.7");
/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER value bytes.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// Bounds on untrusted input.
pub const MAX_CHAIN: usize = 8;
const MAX_SANS: usize = 16;
const MAX_CERT: usize = 16 * 1024;

const ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
];

/// A signing certificate, with what identity matching and SCT checks read from it.
pub struct Leaf {
    pub der: Vec<u8>,
    pub cert: Certificate,
    pub key: PublicKey,
    /// The OIDC issuer (.1.8, else .1.1).
    pub issuer: String,
    /// URI, email and username SANs.
    pub sans: Vec<String>,
}

impl Leaf {
    pub fn from_der(der: &[u8]) -> Result<Leaf, Failed> {
        if der.len() > MAX_CERT {
            return Err(Failed::invalid("the signing certificate is too large"));
        }
        let cert = Certificate::from_der(der)
            .map_err(|e| Failed::invalid(format!("the signing certificate is not DER: {e}")))?;
        let tbs = cert.tbs_certificate();
        let spki = tbs
            .subject_public_key_info()
            .to_der()
            .map_err(|e| Failed::invalid(format!("the certificate's key: {e}")))?;
        let key = PublicKey::from_spki("signing certificate", &spki).map_err(Failed::invalid)?;
        let issuer = oidc_issuer(&cert)?;
        let sans = sans(&cert)?;
        Ok(Leaf {
            der: der.to_vec(),
            cert,
            key,
            issuer,
            sans,
        })
    }

    pub fn from_pem(pem: &str) -> Result<Leaf, Failed> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| Failed::invalid("the certificate annotation is not a PEM certificate"))?;
        Self::from_der(der.as_ref())
    }

    /// Checks the path from this certificate to a CA of `root` valid at `time` (Unix
    /// seconds), through that CA's own intermediates only, for code signing, every
    /// certificate valid at `time`. A chain the signature carries is not used: it could
    /// offer a retired CA's intermediate under a valid CA's root (as sigstore-go, the path
    /// comes from the trusted root alone). Returns the issuer's SPKI (DER).
    pub fn verify_path(&self, root: &TrustedRoot, time: i64) -> Result<Vec<u8>, Failed> {
        let leaf = CertificateDer::from(self.der.as_slice());
        let ee = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| Failed::invalid(format!("the signing certificate: {e}")))?;
        let at = UnixTime::since_unix_epoch(Duration::from_secs(time.max(0) as u64));
        let mut last = String::from("no certificate authority of the trusted root is valid then");
        for ca in root.certificate_authorities() {
            if !ca.valid.contains(time) {
                continue;
            }
            let anchor_der = CertificateDer::from(ca.anchor());
            let Ok(anchor) = webpki::anchor_from_trusted_cert(&anchor_der) else {
                continue;
            };
            let anchors = [anchor];
            let inter: Vec<CertificateDer<'_>> = ca
                .intermediates()
                .iter()
                .map(|c| CertificateDer::from(c.as_slice()))
                .collect();
            let usage = webpki::KeyUsage::required(CODE_SIGNING);
            match ee.verify_for_usage(ALGORITHMS, &anchors, &inter, at, usage, None, None) {
                Ok(path) => return Ok(path.issuer_spki().as_ref().to_vec()),
                Err(e) => last = format!("{e:?}"),
            }
        }
        Err(Failed::invalid(format!(
            "the signing certificate does not chain to a certificate authority of the trusted \
             root valid at {time}: {last}"
        )))
    }

    /// The identity that matches: some entry's issuer regex matches the issuer and its
    /// subject regex some SAN. Returns (issuer, SAN).
    pub fn matching(&self, identities: &[Identity]) -> Result<(String, String), Failed> {
        for id in identities {
            if !id.issuer.is_match(&self.issuer) {
                continue;
            }
            if let Some(san) = self.sans.iter().find(|s| id.subject.is_match(s)) {
                return Ok((self.issuer.clone(), san.clone()));
            }
        }
        Err(Failed::new(
            Refusal::IdentityMismatch,
            format!(
                "the signature is by issuer {:?} and subject {}, which no accepted identity \
                 matches",
                self.issuer,
                self.sans
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// PEM certificates (the untrusted `chain` annotation), at most [`MAX_CHAIN`].
pub fn pem_chain(pem: &str) -> Result<Vec<Vec<u8>>, Failed> {
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let c = c.map_err(|_| Failed::invalid("the chain annotation is not PEM certificates"))?;
        if out.len() == MAX_CHAIN {
            return Err(Failed::invalid(format!(
                "the chain holds more than {MAX_CHAIN} certificates"
            )));
        }
        out.push(c.as_ref().to_vec());
    }
    Ok(out)
}

fn extension<'a>(cert: &'a Certificate, oid: &ObjectIdentifier) -> Option<&'a [u8]> {
    let exts = cert.tbs_certificate().extensions()?;
    exts.iter()
        .find(|e| &e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// The OIDC issuer: .1.8 (DER UTF8String) preferred, else .1.1 (raw). Both present and
/// different is a forged certificate.
fn oidc_issuer(cert: &Certificate) -> Result<String, Failed> {
    let v2 = extension(cert, &ISSUER_V2)
        .map(|v| {
            Utf8StringRef::from_der(v)
                .map(|s| s.as_str().to_string())
                .map_err(|_| Failed::invalid("the certificate's issuer (.1.8) is not UTF-8"))
        })
        .transpose()?;
    let v1 = extension(cert, &ISSUER_V1)
        .map(|v| {
            String::from_utf8(v.to_vec())
                .map_err(|_| Failed::invalid("the certificate's issuer (.1.1) is not UTF-8"))
        })
        .transpose()?;
    match (v2, v1) {
        (Some(a), Some(b)) if a != b => Err(Failed::invalid(format!(
            "the certificate names two OIDC issuers: {a:?} (.1.8) and {b:?} (.1.1)"
        ))),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Err(Failed::invalid(
            "the signing certificate names no OIDC issuer (not a Fulcio certificate)",
        )),
    }
}

/// URI, email and Fulcio username (OtherName .1.7) SANs.
fn sans(cert: &Certificate) -> Result<Vec<String>, Failed> {
    let Some((_, names)) = cert
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .map_err(|e| Failed::invalid(format!("the certificate's SAN: {e}")))?
    else {
        return Ok(Vec::new());
    };
    if names.0.len() > MAX_SANS {
        return Err(Failed::invalid(format!(
            "the certificate holds {} subject alternative names; at most {MAX_SANS}",
            names.0.len()
        )));
    }
    let mut out = Vec::new();
    for name in names.0 {
        match name {
            GeneralName::UniformResourceIdentifier(s) | GeneralName::Rfc822Name(s) => {
                out.push(s.to_string())
            }
            GeneralName::OtherName(o) if o.type_id == OTHER_NAME_USERNAME => {
                if let Ok(s) = o.value.decode_as::<Utf8StringRef<'_>>() {
                    out.push(s.as_str().to_string());
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
