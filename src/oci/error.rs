//! The typed errors of the registry layer. Each maps to a stable reason used in
//! conditions, events and metric labels. Messages never carry credentials.

use std::time::Duration;

/// A registry or content error.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("unsafe content: {0}")]
    UnsafeContent(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("rate limited by the registry{}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("local I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The stable, low-cardinality reason for an error (CamelCase, used as condition reason
/// and metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    NotFound,
    Unauthorized,
    DigestMismatch,
    TooLarge,
    UnsafeContent,
    UnsupportedMediaType,
    RegistryUnavailable,
    RateLimited,
    InvalidReference,
    InvalidManifest,
    IoError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "NotFound",
            Reason::Unauthorized => "Unauthorized",
            Reason::DigestMismatch => "DigestMismatch",
            Reason::TooLarge => "TooLarge",
            Reason::UnsafeContent => "UnsafeContent",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::RegistryUnavailable => "RegistryUnavailable",
            Reason::RateLimited => "RateLimited",
            Reason::InvalidReference => "InvalidReference",
            Reason::InvalidManifest => "InvalidManifest",
            Reason::IoError => "IoError",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OciError {
    pub fn reason(&self) -> Reason {
        match self {
            OciError::NotFound(_) => Reason::NotFound,
            OciError::Unauthorized(_) => Reason::Unauthorized,
            OciError::DigestMismatch { .. } => Reason::DigestMismatch,
            OciError::TooLarge(_) => Reason::TooLarge,
            OciError::UnsafeContent(_) => Reason::UnsafeContent,
            OciError::UnsupportedMediaType(_) => Reason::UnsupportedMediaType,
            OciError::RegistryUnavailable(_) => Reason::RegistryUnavailable,
            OciError::RateLimited { .. } => Reason::RateLimited,
            OciError::InvalidReference(_) => Reason::InvalidReference,
            OciError::InvalidManifest(_) => Reason::InvalidManifest,
            OciError::Io { .. } => Reason::IoError,
        }
    }

    /// Whether retrying later may succeed without a change to the spec or the registry
    /// content.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OciError::RegistryUnavailable(_) | OciError::RateLimited { .. } | OciError::Io { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        OciError::Io {
            context: context.into(),
            source,
        }
    }

    /// Maps a transport error without its URL's query (which may carry a token).
    pub(crate) fn transport(what: &str, err: &reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else if err.is_body() || err.is_decode() {
            "response body failed"
        } else {
            "request failed"
        };
        let mut detail = String::new();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        if detail.is_empty() {
            OciError::RegistryUnavailable(format!("{what}: {kind}"))
        } else {
            OciError::RegistryUnavailable(format!("{what}: {kind}: {detail}"))
        }
    }
}

pub type Result<T, E = OciError> = std::result::Result<T, E>;
