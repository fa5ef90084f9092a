//! RuleBundles as plain data: which files a bundle takes from its sources and under which
//! names ([`plan`], [`keys`]), the checks content passes before anything is written
//! ([`content`]), the ConfigMap that holds them ([`configmap`]) and the bundle's status
//! after each outcome ([`status`]). Everything here is pure; `controller::bundle` applies it.

pub mod configmap;
pub mod content;
pub mod keys;
pub mod nodes;
pub mod plan;
pub mod status;

/// Why a bundle cannot be brought up to date. `reason` is one of [`reason`]'s constants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// The stable reasons a RuleBundle's `Ready` condition carries.
pub mod reason {
    /// Ready=True: every target holds the current revision.
    pub const SUCCEEDED: &str = "Succeeded";
    /// A glob or name in the spec cannot work as written (also `Stalled=True`).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A source does not exist, is not Ready, or its content is not stored yet.
    pub const SOURCE_NOT_READY: &str = "SourceNotReady";
    /// An `include` glob matched no file of its source.
    pub const NO_FILES_SELECTED: &str = "NoFilesSelected";
    /// Two files map to one name.
    pub const FILE_CONFLICT: &str = "FileConflict";
    /// A file failed the check for its kind (Falco rules, seccomp profile) or has a path
    /// that cannot be a file name.
    pub const INVALID_CONTENT: &str = "InvalidContent";
    /// The selected files' list is over what the bundle's status can hold.
    pub const TOO_MANY_FILES: &str = "TooManyFiles";
    /// The selected files are over the 1 MiB a ConfigMap can hold.
    pub const TOO_LARGE_FOR_CONFIG_MAP: &str = "TooLargeForConfigMap";
    /// A ConfigMap of that name exists and is not this bundle's.
    pub const CONFIG_MAP_NOT_OWNED: &str = "ConfigMapNotOwned";
    /// Some selected nodes do not have the current revision yet.
    pub const NODES_PENDING: &str = "NodesPending";
    /// A selected node's agent could not apply the current revision.
    pub const NODE_FAILED: &str = "NodeFailed";
    /// The API server refused the ConfigMap.
    pub const CONFIG_MAP_FAILED: &str = "ConfigMapFailed";
}
