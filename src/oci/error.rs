//! The typed errors of the registry layer. Each maps to an ArtifactSource reason
//! ([`SourceReason`]) used in conditions, events and metric labels. Messages never carry credentials.

use std::time::Duration;

use crate::api::reason::{Class, SourceReason};

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
    /// A 5xx that said when to come back (`Retry-After`).
    #[error("registry unavailable: {detail}, retry after {}s", retry_after.as_secs())]
    UnavailableFor {
        detail: String,
        retry_after: Duration,
    },
    #[error("rate limited by the registry{}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("local I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl OciError {
    /// The ArtifactSource reason (condition, Event and metric label) of this error.
    pub fn reason(&self) -> SourceReason {
        match self {
            OciError::NotFound(_) => SourceReason::NotFound,
            OciError::Unauthorized(_) => SourceReason::Unauthorized,
            OciError::DigestMismatch { .. } => SourceReason::DigestMismatch,
            OciError::TooLarge(_) => SourceReason::TooLarge,
            OciError::UnsafeContent(_) => SourceReason::UnsafeContent,
            OciError::UnsupportedMediaType(_) => SourceReason::UnsupportedMediaType,
            OciError::RegistryUnavailable(_) | OciError::UnavailableFor { .. } => {
                SourceReason::RegistryUnavailable
            }
            OciError::RateLimited { .. } => SourceReason::RateLimited,
            OciError::InvalidReference(_) => SourceReason::InvalidReference,
            OciError::InvalidManifest(_) => SourceReason::InvalidManifest,
            OciError::Internal(_) => SourceReason::InternalError,
            OciError::Io { source, .. } if store_volume_refused(source) => {
                SourceReason::StoreFailed
            }
            OciError::Io { .. } => SourceReason::IoError,
        }
    }

    /// Whether retrying later may succeed without a change to the spec or the registry
    /// content.
    pub fn is_transient(&self) -> bool {
        self.reason().class() == Class::Transient
    }

    /// How long the registry asked to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OciError::RateLimited { retry_after } => *retry_after,
            OciError::UnavailableFor { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
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

/// A write refused because the volume is full or read-only: the controller writes only into
/// its content store's staging area, so that is the store failing (`StoreFailed`, which
/// users alert on), not the artifact.
fn store_volume_refused(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_or_read_only_volume_is_the_store_failing_other_local_errors_are_io() {
        let io = |kind| OciError::io("write rules.yaml", std::io::Error::from(kind));
        use std::io::ErrorKind as K;
        assert_eq!(io(K::StorageFull).reason(), SourceReason::StoreFailed);
        assert_eq!(io(K::QuotaExceeded).reason(), SourceReason::StoreFailed);
        assert_eq!(
            io(K::ReadOnlyFilesystem).reason(),
            SourceReason::StoreFailed
        );
        assert_eq!(io(K::PermissionDenied).reason(), SourceReason::IoError);
        assert!(
            io(K::StorageFull).is_transient(),
            "retried: space may come back"
        );
    }
}
