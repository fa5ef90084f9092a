//! RuleBundles as plain data: which files a bundle takes from its sources and under which
//! names ([`plan`], [`keys`]), the checks content passes before anything is written
//! ([`content`]), the ConfigMap that holds them ([`configmap`]) and the bundle's status
//! after each outcome ([`status`]). Everything here is pure; `controller::bundle` applies it.

pub mod configmap;
pub mod content;
pub mod keys;
pub mod nodes;
pub mod plan;
pub mod requirements;
pub mod status;

pub use crate::api::reason::BundleReason;

/// Why a bundle cannot be brought up to date.
pub type Problem = crate::api::reason::Problem<BundleReason>;
