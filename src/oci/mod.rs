//! The registry layer: references, credentials, transport, content kinds, safe unpacking,
//! pull and push. Everything that talks to an OCI registry goes through here.

pub mod auth;
pub mod content;
pub mod error;
pub mod platform;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod unpack;

pub use error::OciError;
