//! ocisync: ship configuration from OCI registries into Kubernetes clusters and onto nodes.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod backoff;
pub mod bundle;
pub mod cli;
pub mod controller;
pub mod digest;
pub mod errors;
pub mod import;
pub mod metrics;
#[cfg(test)]
pub(crate) mod mock_api;
pub mod oci;
pub mod server;
pub mod store;
pub mod tls;
pub mod verify;
pub mod webhook;
