//! Who may wake sources: a sender presenting the bearer token, or one signing the body with
//! the HMAC-SHA256 key. Both come from files (mounted Secret keys) read at each request, so
//! a rotated Secret applies without a restart; a configured file that cannot be read, or is
//! empty, refuses every request (a configuration error, never an open door).
//!
//! Comparisons take the same time whatever the presented value: the token is compared as
//! SHA-256 digests with [`subtle`] (so neither its bytes nor its length leak), the
//! signature through `ring::hmac::verify`.

use std::path::{Path, PathBuf};

use hyper::header::{AUTHORIZATION, HeaderMap};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Headers that may carry `sha256=<hex>` of the body (GitHub's name, and ours).
pub const SIGNATURE_HEADERS: [&str; 2] = ["x-hub-signature-256", "x-ocisync-signature"];

/// The secrets as read for one request.
pub struct Secrets {
    token: Option<Vec<u8>>,
    hmac_key: Option<Vec<u8>>,
}

/// A configured secret file that cannot be used; its path, never its content.
#[derive(Debug)]
pub struct SecretError {
    pub path: PathBuf,
    pub why: String,
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.why)
    }
}

impl Secrets {
    /// Reads the configured files (tokio::fs: no blocking on the runtime).
    pub async fn load(
        token_file: Option<&Path>,
        hmac_key_file: Option<&Path>,
    ) -> Result<Secrets, SecretError> {
        Ok(Secrets {
            token: read_secret(token_file).await?,
            hmac_key: read_secret(hmac_key_file).await?,
        })
    }

    /// From values in memory (tests).
    #[cfg(test)]
    pub fn new(token: Option<&[u8]>, hmac_key: Option<&[u8]>) -> Secrets {
        Secrets {
            token: token.map(<[u8]>::to_vec),
            hmac_key: hmac_key.map(<[u8]>::to_vec),
        }
    }

    /// Whether a request could still prove itself with a signature of its body.
    pub fn takes_signatures(&self) -> bool {
        self.hmac_key.is_some()
    }

    /// Whether an `Authorization` header carries the token, as `Bearer <token>` or bare
    /// (Harbor sends its configured "auth header" value as it is).
    pub fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let expected = Sha256::digest(token);
        let mut ok = subtle::Choice::from(0);
        for value in headers.get_all(AUTHORIZATION) {
            let presented = strip_bearer(value.as_bytes());
            ok |= Sha256::digest(presented).ct_eq(&expected);
        }
        ok.into()
    }

    /// Whether a signature header holds `sha256=<hex>` of `body` under the key.
    pub fn signature_ok(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        let Some(key) = &self.hmac_key else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        SIGNATURE_HEADERS
            .iter()
            .flat_map(|name| headers.get_all(*name))
            .filter_map(|value| signature_bytes(value.as_bytes()))
            .any(|tag| ring::hmac::verify(&key, body, &tag).is_ok())
    }
}

/// A configured secret file's content, trimmed; an unreadable or empty one is an error.
async fn read_secret(path: Option<&Path>) -> Result<Option<Vec<u8>>, SecretError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let error = |why: String| SecretError {
        path: path.to_path_buf(),
        why,
    };
    let content = tokio::fs::read(path)
        .await
        .map_err(|e| error(format!("cannot read: {}", e.kind())))?;
    let trimmed = content.trim_ascii();
    if trimmed.is_empty() {
        return Err(error("empty".into()));
    }
    Ok(Some(trimmed.to_vec()))
}

/// `Bearer <x>` (any case of the scheme) gives `x`; any other value is taken whole.
fn strip_bearer(value: &[u8]) -> &[u8] {
    let value = value.trim_ascii();
    match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
        _ => value,
    }
}

/// The bytes of `sha256=<hex>`.
fn signature_bytes(value: &[u8]) -> Option<Vec<u8>> {
    let value = value.trim_ascii();
    let hex_part = value.strip_prefix(b"sha256=")?;
    hex::decode(hex_part).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const TOKEN: &[u8] = b"s3cr3t-token-0123456789";
    const KEY: &[u8] = b"hmac-key";
    const BODY: &[u8] = br#"{"repository": "org/repo", "tag": "1"}"#;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        h
    }

    fn sign(key: &[u8], body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        format!("sha256={}", hex::encode(ring::hmac::sign(&key, body)))
    }

    #[test]
    fn bearer_token_right_wrong_missing() {
        let s = Secrets::new(Some(TOKEN), None);
        let right = format!("Bearer {}", String::from_utf8_lossy(TOKEN));
        assert!(s.bearer_ok(&headers(&[("authorization", &right)])));
        assert!(s.bearer_ok(&headers(&[("authorization", &right.to_lowercase())])));
        // Harbor's auth header is sent verbatim: a bare token is accepted too
        assert!(s.bearer_ok(&headers(&[("authorization", "s3cr3t-token-0123456789")])));
        // one of several Authorization headers may carry it
        assert!(s.bearer_ok(&headers(&[
            ("authorization", "Basic dXNlcjpwdw=="),
            ("authorization", &right)
        ])));
        for wrong in [
            "Bearer s3cr3t-token-012345678",
            "Bearer s3cr3t-token-01234567890",
            "Bearer ",
            "Bearer",
            "",
            "Basic czNjcjN0LXRva2VuLTAxMjM0NTY3ODk=",
        ] {
            assert!(
                !s.bearer_ok(&headers(&[("authorization", wrong)])),
                "{wrong:?}"
            );
        }
        assert!(!s.bearer_ok(&HeaderMap::new()));
        // a signature does not stand in for the token when no key is configured
        let signed = sign(KEY, BODY);
        let h = headers(&[("x-hub-signature-256", &signed)]);
        assert!(!s.signature_ok(&h, BODY));
        assert!(!s.takes_signatures());
    }

    #[test]
    fn hmac_signature_right_wrong_missing() {
        let s = Secrets::new(None, Some(KEY));
        assert!(s.takes_signatures());
        let signed = sign(KEY, BODY);
        for name in SIGNATURE_HEADERS {
            assert!(s.signature_ok(&headers(&[(name, &signed)]), BODY), "{name}");
        }
        // another body, another key, a truncated or malformed signature, none at all
        assert!(!s.signature_ok(&headers(&[("x-ocisync-signature", &signed)]), b"{}"));
        let other = sign(b"other-key", BODY);
        assert!(!s.signature_ok(&headers(&[("x-ocisync-signature", &other)]), BODY));
        let truncated = &signed[..signed.len() - 2];
        assert!(!s.signature_ok(&headers(&[("x-ocisync-signature", truncated)]), BODY));
        let bare_hex = signed.trim_start_matches("sha256=");
        assert!(!s.signature_ok(&headers(&[("x-ocisync-signature", bare_hex)]), BODY));
        assert!(!s.signature_ok(&headers(&[("x-ocisync-signature", "sha256=zz")]), BODY));
        assert!(!s.signature_ok(&HeaderMap::new(), BODY));
        // no token is configured: no Authorization value passes, not even an empty one
        assert!(!s.bearer_ok(&headers(&[("authorization", "Bearer ")])));
    }

    #[tokio::test]
    async fn files_are_trimmed_and_missing_or_empty_ones_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, b"  s3cr3t-token-0123456789\n").expect("write");
        let s = Secrets::load(Some(&token), None).await.expect("loaded");
        let right = headers(&[("authorization", "Bearer s3cr3t-token-0123456789")]);
        assert!(s.bearer_ok(&right));
        // rotation: the next load reads the new content
        std::fs::write(&token, b"rotated").expect("write");
        let s = Secrets::load(Some(&token), None).await.expect("loaded");
        assert!(!s.bearer_ok(&right));
        assert!(s.bearer_ok(&headers(&[("authorization", "Bearer rotated")])));

        let empty = dir.path().join("empty");
        std::fs::write(&empty, b" \n").expect("write");
        let e = Secrets::load(Some(&token), Some(&empty)).await.err();
        assert!(e.is_some_and(|e| e.why == "empty"));
        let missing = dir.path().join("missing");
        let e = Secrets::load(Some(&missing), None)
            .await
            .err()
            .expect("error");
        assert_eq!(e.path, missing);
        assert!(!e.to_string().contains("rotated"));
    }

    #[test]
    fn token_comparison_does_not_depend_on_where_a_guess_differs() {
        // The compare hashes both sides and compares all 32 bytes with subtle: a guess that
        // differs at the first byte and one that differs at the last go through the same
        // steps. What can be checked here is that both are refused and that the compare
        // of a long prefix is no closer to success than a short one.
        let s = Secrets::new(Some(TOKEN), None);
        let first = "Bearer X3cr3t-token-0123456789";
        let last = "Bearer s3cr3t-token-012345678X";
        assert!(!s.bearer_ok(&headers(&[("authorization", first)])));
        assert!(!s.bearer_ok(&headers(&[("authorization", last)])));
        assert_eq!(strip_bearer(b"Bearer  x "), b"x");
        assert_eq!(strip_bearer(b"bEaReR x"), b"x");
        assert_eq!(strip_bearer(b"Token x"), b"Token x");
    }
}
