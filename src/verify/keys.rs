//! Public keys as cosign uses them, and signature checks with ring.
//!
//! cosign loads a key with `LoadVerifier(pk, SHA256)`: ECDSA signatures are ASN.1 DER over
//! SHA-256 of the message (P-384 keys are also tried with SHA-384, which Sigstore's own
//! certificates use), RSA is PKCS#1 v1.5 with SHA-256, Ed25519 signs the message itself.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use x509_cert::der::Decode;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::spki::SubjectPublicKeyInfoRef;

use crate::digest::Digest;

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The key algorithms ocisync verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa,
    Ed25519,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256 => "ECDSA P-256",
            Algorithm::EcdsaP384 => "ECDSA P-384",
            Algorithm::Rsa => "RSA",
            Algorithm::Ed25519 => "Ed25519",
        }
    }

    fn ring(self) -> &'static [&'static dyn VerificationAlgorithm] {
        static P256: [&dyn VerificationAlgorithm; 1] = [&signature::ECDSA_P256_SHA256_ASN1];
        static P384: [&dyn VerificationAlgorithm; 2] = [
            &signature::ECDSA_P384_SHA384_ASN1,
            &signature::ECDSA_P384_SHA256_ASN1,
        ];
        static RSA: [&dyn VerificationAlgorithm; 1] = [&signature::RSA_PKCS1_2048_8192_SHA256];
        static ED25519: [&dyn VerificationAlgorithm; 1] = [&signature::ED25519];
        match self {
            Algorithm::EcdsaP256 => &P256,
            Algorithm::EcdsaP384 => &P384,
            Algorithm::Rsa => &RSA,
            Algorithm::Ed25519 => &ED25519,
        }
    }
}

/// A public key: its SubjectPublicKeyInfo, algorithm and the key bits ring verifies with.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    spki: Vec<u8>,
    bits: Vec<u8>,
    algorithm: Algorithm,
    /// Where the key came from (a Secret's data key, a file), for messages.
    pub name: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublicKey({} {} {})",
            self.name,
            self.algorithm.as_str(),
            self.fingerprint()
        )
    }
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` block.
    pub fn from_pem(name: &str, pem: &[u8]) -> Result<Self, String> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|_| format!("{name}: not a PEM PUBLIC KEY"))?;
        Self::from_spki(name, der.as_ref())
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki(name: &str, der: &[u8]) -> Result<Self, String> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|_| format!("{name}: not a DER SubjectPublicKeyInfo"))?;
        let algorithm = algorithm_of(&spki).map_err(|e| format!("{name}: {e}"))?;
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| format!("{name}: the key bits are not whole bytes"))?
            .to_vec();
        if algorithm == Algorithm::Rsa {
            match rsa_modulus_bits(&bits) {
                Some(n) if (2048..=8192).contains(&n) => {}
                Some(n) => {
                    return Err(format!(
                        "{name}: an RSA key of {n} bits (2048 to 8192 are verified)"
                    ));
                }
                None => return Err(format!("{name}: not an RSA public key")),
            }
        }
        Ok(PublicKey {
            spki: der.to_vec(),
            bits,
            algorithm,
            name: name.to_string(),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// `sha256:<hex>` of the SubjectPublicKeyInfo DER (what status shows).
    pub fn fingerprint(&self) -> String {
        Digest::of(&self.spki).to_string()
    }

    /// Whether `signature` is this key's signature over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.algorithm.ring().iter().any(|alg| {
            UnparsedPublicKey::new(*alg, &self.bits)
                .verify(message, signature)
                .is_ok()
        })
    }
}

/// The size in bits of an RSAPublicKey's modulus (`SEQUENCE { n INTEGER, e INTEGER }`).
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    use x509_cert::der::asn1::UintRef;
    use x509_cert::der::{Reader, SliceReader};
    let mut reader = SliceReader::new(der).ok()?;
    let n = reader
        .sequence(|r| {
            let n = UintRef::decode(r)?;
            UintRef::decode(r)?;
            Ok::<_, x509_cert::der::Error>(n)
        })
        .ok()?;
    let bytes = n.as_bytes();
    let lead = bytes.first().map_or(0, |b| 8 - b.leading_zeros() as usize);
    Some(bytes.len().saturating_sub(1) * 8 + lead)
}

fn algorithm_of(spki: &SubjectPublicKeyInfoRef<'_>) -> Result<Algorithm, String> {
    let oid = spki.algorithm.oid;
    if oid == RSA {
        return Ok(Algorithm::Rsa);
    }
    if oid == ED25519 {
        return Ok(Algorithm::Ed25519);
    }
    if oid != EC_PUBLIC_KEY {
        return Err(format!("unsupported key algorithm {oid}"));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    match curve {
        Some(c) if c == P256 => Ok(Algorithm::EcdsaP256),
        Some(c) if c == P384 => Ok(Algorithm::EcdsaP384),
        Some(c) => Err(format!("unsupported elliptic curve {c}")),
        None => Err("an EC key without a named curve".into()),
    }
}

/// A private key for `ocisync push --sign-key`: unencrypted PKCS#8 (`openssl genpkey` or
/// `openssl pkcs8 -topk8 -nocrypt`), ECDSA P-256 or Ed25519.
pub struct SigningKey {
    key: SigningKind,
    public: PublicKey,
}

enum SigningKind {
    P256(signature::EcdsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
}

impl SigningKey {
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| {
            "not an unencrypted PKCS#8 PRIVATE KEY (convert an EC key with \
             `openssl pkcs8 -topk8 -nocrypt`; encrypted cosign.key files are not read)"
                .to_string()
        })?;
        let der = der.secret_pkcs8_der();
        let rng = ring::rand::SystemRandom::new();
        let p256 = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let key = if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(p256, der, &rng) {
            SigningKind::P256(k)
        } else if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            SigningKind::Ed25519(k)
        } else {
            return Err("the private key is neither ECDSA P-256 nor Ed25519".into());
        };
        let public = PublicKey::from_spki("signing key", &spki_of(&key))?;
        Ok(SigningKey { key, public })
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message` (ECDSA: DER over SHA-256, as cosign does).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match &self.key {
            SigningKind::P256(k) => k
                .sign(&ring::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "signing failed".to_string()),
            SigningKind::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }
}

/// The DER SubjectPublicKeyInfo of a key pair (ring gives the raw public key only).
fn spki_of(key: &SigningKind) -> Vec<u8> {
    use ring::signature::KeyPair;
    // Fixed DER prefixes: SEQUENCE { AlgorithmIdentifier, BIT STRING (0 unused bits) }.
    const P256_PREFIX: [u8; 27] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    const ED25519_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    match key {
        SigningKind::P256(k) => {
            // ring's public key is the uncompressed point 0x04 || X || Y; the prefix ends in 0x04
            let point = k.public_key().as_ref();
            let mut der = P256_PREFIX[..26].to_vec();
            der.extend_from_slice(point);
            der
        }
        SigningKind::Ed25519(k) => {
            let mut der = ED25519_PREFIX.to_vec();
            der.extend_from_slice(k.public_key().as_ref());
            der
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt
    const P256_KEY: &str = include_str!("testdata/p256.key");
    const P256_PUB: &str = include_str!("testdata/p256.pub");
    const ED_KEY: &str = include_str!("testdata/ed25519.key");
    const ED_PUB: &str = include_str!("testdata/ed25519.pub");
    const RSA_PUB: &str = include_str!("testdata/rsa.pub");
    // openssl dgst -sha256 -sign rsa.key message.txt | base64 -w0
    const RSA_SIG: &str = include_str!("testdata/rsa-message.sig.b64");
    const MESSAGE: &[u8] = include_bytes!("testdata/message.txt");

    fn b64(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .expect("test data is base64")
    }

    #[test]
    fn a_p256_signature_made_here_verifies_under_the_openssl_public_key() {
        let key = SigningKey::from_pem(P256_KEY.as_bytes()).expect("key");
        let public = PublicKey::from_pem("cosign.pub", P256_PUB.as_bytes()).expect("pub");
        assert_eq!(key.public().spki(), public.spki(), "same SPKI as openssl's");
        let sig = key.sign(MESSAGE).expect("sign");
        assert!(public.verifies(MESSAGE, &sig));
        assert!(!public.verifies(b"another message", &sig));
        assert_eq!(public.algorithm(), Algorithm::EcdsaP256);
    }

    #[test]
    fn ed25519_keys_sign_and_verify() {
        let key = SigningKey::from_pem(ED_KEY.as_bytes()).expect("key");
        let public = PublicKey::from_pem("ed.pub", ED_PUB.as_bytes()).expect("pub");
        assert_eq!(key.public().spki(), public.spki());
        let sig = key.sign(MESSAGE).expect("sign");
        assert!(public.verifies(MESSAGE, &sig));
        let mut bad = sig.clone();
        bad[0] ^= 1;
        assert!(!public.verifies(MESSAGE, &bad));
    }

    #[test]
    fn an_rsa_signature_from_openssl_verifies() {
        let public = PublicKey::from_pem("rsa.pub", RSA_PUB.as_bytes()).expect("pub");
        assert_eq!(public.algorithm(), Algorithm::Rsa);
        assert!(public.verifies(MESSAGE, &b64(RSA_SIG)));
        assert!(!public.verifies(b"tampered", &b64(RSA_SIG)));
    }

    #[test]
    fn keys_that_are_not_public_keys_are_refused_with_their_name() {
        let e = PublicKey::from_pem("x.pub", b"hello").expect_err("not PEM");
        assert!(e.contains("x.pub"), "{e}");
        let e = PublicKey::from_pem("k.pub", P256_KEY.as_bytes()).expect_err("private");
        assert!(e.contains("k.pub"), "{e}");
        assert!(SigningKey::from_pem(P256_PUB.as_bytes()).is_err());
    }

    #[test]
    fn rsa_keys_outside_2048_to_8192_bits_are_refused_when_loaded_not_at_every_check() {
        let small = include_str!("testdata/rsa1024.pub");
        let e = PublicKey::from_pem("old.pub", small.as_bytes()).expect_err("1024 bits");
        assert!(e.contains("old.pub") && e.contains("1024 bits"), "{e}");
        assert_eq!(rsa_modulus_bits(b"junk"), None);
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_spki() {
        let public = PublicKey::from_pem("cosign.pub", P256_PUB.as_bytes()).expect("pub");
        assert_eq!(public.fingerprint(), Digest::of(public.spki()).to_string());
    }
}
