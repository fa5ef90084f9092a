//! ocisync: ship configuration from OCI registries into Kubernetes clusters and onto nodes.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod oci;
pub mod tls;
