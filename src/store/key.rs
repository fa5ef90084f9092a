//! The key a revision is stored and served under.
//!
//! A manifest digest alone does not say what was stored: a source with a layer selector,
//! or one picking another platform from an image index, stores other files from the same
//! manifest. A revision is therefore keyed by the manifest digest together with that
//! [`Selection`]. The key of the default selection (every layer, the controller's
//! platform) is the manifest digest itself, so stores, status URLs and indexes written
//! before selections were keyed stay valid.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// What a revision holds of its manifest: the platform picked from an image index and
/// the media type of the layers kept; `None` is the default (the controller's platform,
/// every layer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_media_type: Option<String>,
}

impl Selection {
    /// Whether this is the default selection (whose key is the manifest digest).
    pub fn is_default(&self) -> bool {
        self.platform.is_none() && self.layer_media_type.is_none()
    }
}

/// Marks the version of the encoding hashed by [`revision_key`].
const KEY_DOMAIN: &str = "ocisync.dev/revision-key/v1";

/// The key of the revision holding `selection` of `manifest_digest`: the manifest digest
/// for the default selection, else the SHA-256 of an unambiguous encoding of the three
/// (each field length-prefixed, an absent field told apart from an empty one).
pub fn revision_key(manifest_digest: &Digest, selection: &Selection) -> Digest {
    if selection.is_default() {
        return manifest_digest.clone();
    }
    let mut hasher = Sha256::new();
    hasher.update(KEY_DOMAIN.as_bytes());
    let fields = [
        ("manifest", Some(manifest_digest.as_str())),
        ("platform", selection.platform.as_deref()),
        ("layerMediaType", selection.layer_media_type.as_deref()),
    ];
    for (name, value) in fields {
        hasher.update(b"\n");
        hasher.update(name.as_bytes());
        match value {
            Some(v) => {
                hasher.update(format!("={}:", v.len()).as_bytes());
                hasher.update(v.as_bytes());
            }
            None => hasher.update(b"-"),
        }
    }
    Digest::from_sha256(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(n: u8) -> Digest {
        Digest::from_hex(&hex::encode([n; 32])).unwrap()
    }

    fn selection(platform: Option<&str>, media_type: Option<&str>) -> Selection {
        Selection {
            platform: platform.map(String::from),
            layer_media_type: media_type.map(String::from),
        }
    }

    #[test]
    fn the_default_selection_is_keyed_by_the_manifest_digest() {
        assert_eq!(
            revision_key(&manifest(1), &Selection::default()),
            manifest(1)
        );
    }

    #[test]
    fn each_selection_of_a_manifest_has_its_own_key() {
        let selections = [
            selection(None, Some("application/vnd.a")),
            selection(None, Some("application/vnd.b")),
            selection(Some("linux/amd64"), None),
            selection(Some("linux/arm64"), None),
            selection(Some("linux/amd64"), Some("application/vnd.a")),
            selection(None, Some("")),
            selection(Some(""), None),
            // what a naive concatenation would confuse
            selection(Some("a\nlayerMediaType=b"), None),
            selection(Some("a"), Some("b")),
        ];
        let mut keys: Vec<Digest> = selections
            .iter()
            .flat_map(|s| [revision_key(&manifest(1), s), revision_key(&manifest(2), s)])
            .collect();
        keys.push(manifest(1));
        keys.push(manifest(2));
        let distinct: std::collections::HashSet<&Digest> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "keys collide: {keys:?}");
    }

    #[test]
    fn a_key_is_stable() {
        let s = selection(Some("linux/amd64"), Some("application/vnd.a"));
        assert_eq!(
            revision_key(&manifest(1), &s),
            revision_key(&manifest(1), &s)
        );
        // pinned: stores and status URLs outlive a controller version
        assert_eq!(
            revision_key(&manifest(1), &selection(None, Some("application/vnd.a"))),
            "sha256:df85d5f3874668cdc02b1eb12fe92b5c90c4598845bca6d21cc76da14f9b431a"
        );
    }
}
