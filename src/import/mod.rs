//! `ocisync import`: another tool's configuration turned into ocisync objects that do the
//! same in-cluster. Pure functions from the files' text to YAML; the CLI reads and prints.

pub mod falcoctl;
