//! The Sigstore trusted root (`trusted_root.json`). Placeholder: replaced by the keyless
//! implementation.

#[derive(Debug)]
pub struct TrustedRoot;

impl TrustedRoot {
    /// Parses a `trusted_root.json`; the error says what is wrong (public data only).
    pub fn parse(_json: &[u8]) -> Result<TrustedRoot, String> {
        Err("trusted roots are not read yet".into())
    }

    /// The public Sigstore instance's root, shipped with ocisync.
    pub fn public() -> Result<TrustedRoot, String> {
        Err("the public trusted root is not shipped yet".into())
    }
}
