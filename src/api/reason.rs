//! The reasons ocisync's objects carry in their `Ready` condition (and the agents in their
//! NodeReports): one type per kind, written as the same CamelCase strings as always, and
//! each in one [`Class`] that decides, in one place, the conditions, the Event, the metric
//! label and when to look again.

use std::fmt;
use std::time::Duration;

/// How a reason is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Done: `Ready=True`, a Normal Event on change, looked at again after the interval.
    Ready,
    /// Work under way (`Reconciling=True`, `Ready=False`): looked at again when the work
    /// reports (a node's report, a watch event).
    Progressing,
    /// Cannot work as written (`Stalled=True`): waits for the spec to change.
    Stalled,
    /// Waits for something else to change (a source, a Secret, a new revision, room in a
    /// quota): `Ready=False`; what it waits for wakes the object, and a slow backoff looks
    /// again in case nothing does.
    Waiting,
    /// May pass by itself (a registry or the API server unavailable, a write that failed):
    /// `Ready=False`, retried with jittered exponential backoff, never before a server's
    /// `Retry-After`.
    Transient,
}

impl Class {
    /// The `result` label of `ocisync_reconciles_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Class::Ready => "success",
            Class::Progressing => "progressing",
            Class::Stalled => "stalled",
            Class::Waiting => "waiting",
            Class::Transient => "transient",
        }
    }

    /// A failure: neither done nor under way.
    pub fn is_failure(self) -> bool {
        !matches!(self, Class::Ready | Class::Progressing)
    }
}

/// A reason of one object kind.
pub trait Reason: Copy + Eq + fmt::Debug + fmt::Display + Send + Sync + 'static {
    fn as_str(self) -> &'static str;
    fn class(self) -> Class;
}

/// Why an object is not up to date: its reason, a one-line message (never secret data),
/// and how long a server asked to wait before trying again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem<R> {
    pub reason: R,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl<R: Reason> Problem<R> {
    pub fn new(reason: R, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Declares a reason enum: its variants (their names are the strings), each with its class.
macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $class:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every reason of this kind.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The CamelCase string conditions, Events and metric labels carry.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                }
            }

            /// How this reason is handled.
            pub fn class(self) -> Class {
                match self {
                    $($name::$variant => Class::$class,)+
                }
            }

            /// The reason a string names, if it is one of this kind.
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|r| r.as_str() == text)
            }
        }

        impl Reason for $name {
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }

            fn class(self) -> Class {
                $name::class(self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

reasons! {
    /// Why an ArtifactSource is or is not Ready.
    SourceReason {
        /// The current revision is stored and served.
        Succeeded => Ready,
        /// The first check has not finished yet.
        Progressing => Progressing,
        /// The spec cannot work as written.
        InvalidSpec => Stalled,
        /// The reference cannot name a registry repository.
        InvalidReference => Stalled,
        /// A referenced Secret does not exist.
        SecretNotFound => Waiting,
        /// A referenced Secret could not be read (refused, for example 403, or the API
        /// server failed).
        SecretNotReadable => Waiting,
        /// A referenced Secret lacks the expected keys or format (a bad CA PEM included).
        InvalidSecret => Waiting,
        /// The tag or digest does not exist in the registry.
        NotFound => Waiting,
        /// The registry refused the credentials, or asked for some and none were given.
        Unauthorized => Waiting,
        /// The registry sent bytes that do not hash to the digest it named.
        DigestMismatch => Waiting,
        /// The artifact is over a size limit.
        TooLarge => Waiting,
        /// The artifact holds paths or entries that cannot be written safely.
        UnsafeContent => Waiting,
        /// No layer has a media type ocisync can read.
        UnsupportedMediaType => Waiting,
        /// The manifest is not a valid OCI or Docker manifest.
        InvalidManifest => Waiting,
        /// Storing it would exceed the store's size limit or the namespace's quota.
        QuotaExceeded => Waiting,
        /// `spec.verify` is set and the revision has no signature (a signer may push
        /// first and sign after: the check is tried again with backoff).
        SignatureNotFound => Waiting,
        /// A signature is malformed, names another digest, or its certificate or
        /// transparency log entry does not verify.
        SignatureInvalid => Waiting,
        /// A keyless signature's certificate is for an identity no `matchOIDCIdentity`
        /// entry accepts.
        IdentityMismatch => Waiting,
        /// A signature for the revision exists, but none of the trusted keys made it.
        UntrustedKey => Waiting,
        /// The trusted root (`trustedRootRef`) is missing, lacks `trusted_root.json`, or is
        /// not a Sigstore trusted root.
        TrustedRootInvalid => Waiting,
        /// The trusted-root ConfigMap could not be read (refused, for example 403, or the
        /// API server failed): says nothing about signatures.
        TrustedRootNotReadable => Transient,
        /// The registry could not be reached, timed out or answered 5xx.
        RegistryUnavailable => Transient,
        /// The registry answered 429; the next check waits for its `Retry-After`.
        RateLimited => Transient,
        /// A local read or write failed.
        IoError => Transient,
        /// The content store could not take the artifact.
        StoreFailed => Transient,
        /// A task of the controller failed (a bug: its logs say more).
        InternalError => Transient,
    }
}

impl SourceReason {
    /// Whether the reason is a signature verification's (it sets `SourceVerified=False`).
    pub fn is_signature(self) -> bool {
        matches!(
            self,
            SourceReason::SignatureNotFound
                | SourceReason::SignatureInvalid
                | SourceReason::IdentityMismatch
                | SourceReason::UntrustedKey
                | SourceReason::TrustedRootInvalid
        )
    }
}

reasons! {
    /// Why a RuleBundle is or is not Ready.
    BundleReason {
        /// Every target holds the current revision.
        Succeeded => Ready,
        /// Some selected nodes do not have the current revision yet.
        NodesPending => Progressing,
        /// A glob or name in the spec cannot work as written.
        InvalidSpec => Stalled,
        /// A source does not exist, is not Ready, or its content is not stored yet.
        SourceNotReady => Waiting,
        /// An `include` glob matched no file of its source.
        NoFilesSelected => Waiting,
        /// Two files map to one name.
        FileConflict => Waiting,
        /// A file failed the check for its kind, or its path cannot be a file name.
        InvalidContent => Waiting,
        /// The selected files' list is over what the bundle's status can hold.
        TooManyFiles => Waiting,
        /// The selected files are over the 1 MiB a ConfigMap can hold.
        TooLargeForConfigMap => Waiting,
        /// A source's revision requires a newer Falco than `spec.falco` names.
        RequirementsNotMet => Waiting,
        /// A rules artifact needs a plugin no source provides (`dependencies: Block`).
        DependencyMissing => Waiting,
        /// A ConfigMap target over a source that stores every platform (`platform: all`):
        /// files per platform belong on nodes.
        MultiPlatformSource => Waiting,
        /// A ConfigMap of that name exists and is not this bundle's.
        ConfigMapNotOwned => Waiting,
        /// A selected node's agent could not apply the current revision.
        NodeFailed => Waiting,
        /// The API server refused or failed the ConfigMap.
        ConfigMapFailed => Transient,
        /// A task of the controller failed (a bug: its logs say more).
        InternalError => Transient,
    }
}

reasons! {
    /// What the agent on one node reports for one bundle.
    NodeReason {
        /// The current revision is on disk.
        Applied => Ready,
        /// No revision is planned yet (the bundle is not Ready).
        Waiting => Progressing,
        /// Files are changing to the current revision (written before they do).
        Applying => Progressing,
        /// Files are being removed (written before they are).
        Removing => Progressing,
        /// The directory is not one the agent may write for this namespace.
        DirectoryNotAllowed => Stalled,
        /// The revision requires a newer Falco engine than this node's label says.
        RequirementsNotMet => Waiting,
        /// A source stores files per platform and none for this node's os and arch.
        PlatformNotAvailable => Waiting,
        /// The directory or a file name cannot be written safely.
        InvalidPath => Stalled,
        /// A file of this node's own is in the way.
        FileConflict => Waiting,
        /// The bundle or its directory is over the agent's byte budget.
        QuotaExceeded => Waiting,
        /// Writing would leave the node's filesystem with less free space than kept.
        InsufficientSpace => Waiting,
        /// The artifact server could not be reached or failed.
        FetchFailed => Transient,
        /// The artifact server sent bytes that do not match the digest.
        DigestMismatch => Transient,
        /// Writing the files failed.
        WriteFailed => Transient,
        /// The NodeReport could not be written before the files changed.
        ReportFailed => Transient,
    }
}

/// A NodeReport's reason as an agent wrote it: one this build knows, or a newer agent's
/// (kept as its text and counted as a failure), so agents and controllers of different
/// versions read each other's reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReportedReason {
    Known(NodeReason),
    Unknown(String),
}

impl ReportedReason {
    pub fn as_str(&self) -> &str {
        match self {
            ReportedReason::Known(r) => r.as_str(),
            ReportedReason::Unknown(text) => text,
        }
    }

    /// An unknown reason is a failure that waits (it may be a newer agent's).
    pub fn class(&self) -> Class {
        match self {
            ReportedReason::Known(r) => r.class(),
            ReportedReason::Unknown(_) => Class::Waiting,
        }
    }
}

impl Default for ReportedReason {
    fn default() -> Self {
        ReportedReason::Known(NodeReason::Waiting)
    }
}

impl From<NodeReason> for ReportedReason {
    fn from(r: NodeReason) -> Self {
        ReportedReason::Known(r)
    }
}

impl From<&str> for ReportedReason {
    fn from(text: &str) -> Self {
        match NodeReason::parse(text) {
            Some(r) => ReportedReason::Known(r),
            None => ReportedReason::Unknown(text.to_string()),
        }
    }
}

impl PartialEq<NodeReason> for ReportedReason {
    fn eq(&self, other: &NodeReason) -> bool {
        *self == ReportedReason::Known(*other)
    }
}

impl fmt::Display for ReportedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ReportedReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ReportedReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        Ok(ReportedReason::from(text.as_ref()))
    }
}

impl schemars::JsonSchema for ReportedReason {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        String::schema_name()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_their_camel_case_names_and_parse_back() {
        assert_eq!(
            SourceReason::SecretNotReadable.as_str(),
            "SecretNotReadable"
        );
        assert_eq!(
            BundleReason::TooLargeForConfigMap.to_string(),
            "TooLargeForConfigMap"
        );
        for r in SourceReason::ALL {
            assert_eq!(SourceReason::parse(r.as_str()), Some(*r));
        }
        for r in BundleReason::ALL {
            assert_eq!(BundleReason::parse(r.as_str()), Some(*r));
        }
        for r in NodeReason::ALL {
            assert_eq!(NodeReason::parse(r.as_str()), Some(*r));
        }
        assert_eq!(NodeReason::parse("applied"), None);
    }

    #[test]
    fn each_kind_has_one_ready_reason_and_classes_decide_failure() {
        let ready = |classes: Vec<Class>| classes.iter().filter(|c| **c == Class::Ready).count();
        assert_eq!(
            ready(SourceReason::ALL.iter().map(|r| r.class()).collect()),
            1
        );
        assert_eq!(
            ready(BundleReason::ALL.iter().map(|r| r.class()).collect()),
            1
        );
        assert_eq!(
            ready(NodeReason::ALL.iter().map(|r| r.class()).collect()),
            1
        );
        // what the controller counted as a node failure before reasons had types
        let old_non_failures = ["Applied", "Waiting", "Applying", "Removing"];
        for r in NodeReason::ALL {
            assert_eq!(
                r.class().is_failure(),
                !old_non_failures.contains(&r.as_str()),
                "{r}"
            );
        }
    }

    #[test]
    fn a_newer_agents_reason_survives_a_round_trip_and_counts_as_failure() {
        let known: ReportedReason = serde_json::from_str("\"Applied\"").unwrap();
        assert_eq!(known, NodeReason::Applied);
        let newer: ReportedReason = serde_json::from_str("\"SignatureInvalid\"").unwrap();
        assert_eq!(newer, ReportedReason::Unknown("SignatureInvalid".into()));
        assert!(newer.class().is_failure());
        assert_eq!(
            serde_json::to_string(&newer).unwrap(),
            "\"SignatureInvalid\""
        );
    }
}
