//! Platforms (`os/arch[/variant]`) of image index entries: parsed and checked where they
//! come in (a registry's index, a status a node reads), named on disk, and matched to a
//! Node's `kubernetes.io/os` and `kubernetes.io/arch` labels.

use std::collections::BTreeMap;
use std::fmt;

use oci_client::manifest::{ImageIndexEntry, OciImageIndex};

use super::error::{OciError, Result};
use crate::digest::Digest;

/// `ArtifactSource.spec.platform` value that stores every platform of an image index.
pub const ALL: &str = "all";

/// The most platforms one index may bring in with `platform: all`.
pub const MAX_PLATFORMS: usize = 16;

/// The Node labels a platform is matched against (set by the kubelet).
pub const OS_LABEL: &str = "kubernetes.io/os";
pub const ARCH_LABEL: &str = "kubernetes.io/arch";

/// A platform with plain parts: each 1-32 characters of `[a-z0-9_]`, starting with a
/// letter or digit, so it can name a directory and go into status as it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

fn plain_part(part: &str) -> bool {
    (1..=32).contains(&part.len())
        && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && part
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Platform {
    /// `os/arch` or `os/arch/variant`, every part plain.
    pub fn parse(text: &str) -> Option<Platform> {
        let mut parts = text.split('/');
        let os = parts.next()?;
        let arch = parts.next()?;
        let variant = parts.next();
        if parts.next().is_some()
            || !plain_part(os)
            || !plain_part(arch)
            || !variant.is_none_or(plain_part)
        {
            return None;
        }
        Some(Platform {
            os: os.into(),
            arch: arch.into(),
            variant: variant.map(String::from),
        })
    }

    /// The staging directory of this platform's files: `os-arch[-variant]` (no part holds
    /// `-`, so no two platforms share one).
    pub fn dir_name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}-{}-{v}", self.os, self.arch),
            None => format!("{}-{}", self.os, self.arch),
        }
    }

    /// Whether a Node with these labels runs this platform's os and architecture.
    pub fn runs_on(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(OS_LABEL) == Some(&self.os) && labels.get(ARCH_LABEL) == Some(&self.arch)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The platform an index entry names, if any: `None` for an entry without one or for
/// `unknown/unknown` (the attestation manifests BuildKit adds); an error for one whose
/// parts are not plain.
fn entry_platform(entry: &ImageIndexEntry) -> Result<Option<Platform>> {
    let Some(p) = &entry.platform else {
        return Ok(None);
    };
    let text = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let (os, arch) = (
        text(serde_json::to_value(&p.os)),
        text(serde_json::to_value(&p.architecture)),
    );
    if os == "unknown" && arch == "unknown" {
        return Ok(None);
    }
    let joined = match &p.variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    };
    Platform::parse(&joined).map(Some).ok_or_else(|| {
        OciError::InvalidManifest(format!(
            "the image index names platform {:?}: not os/arch[/variant] of [a-z0-9_]",
            joined.chars().take(100).collect::<String>()
        ))
    })
}

/// Every platform of an index with the digest of its manifest, sorted by platform: at
/// most [`MAX_PLATFORMS`], none twice, each digest a digest.
pub fn every_platform(index: &OciImageIndex) -> Result<Vec<(Platform, Digest)>> {
    let mut found: BTreeMap<Platform, Digest> = BTreeMap::new();
    for entry in &index.manifests {
        let Some(platform) = entry_platform(entry)? else {
            continue;
        };
        let digest = Digest::parse(&entry.digest).map_err(|_| {
            OciError::InvalidManifest(format!(
                "the image index entry for {platform} has digest {:?}, not a sha256 digest",
                entry.digest.chars().take(80).collect::<String>()
            ))
        })?;
        if found.contains_key(&platform) {
            return Err(OciError::InvalidManifest(format!(
                "the image index names platform {platform} twice"
            )));
        }
        if found.len() == MAX_PLATFORMS {
            return Err(OciError::TooLarge(format!(
                "the image index names more than {MAX_PLATFORMS} platforms"
            )));
        }
        found.insert(platform, digest);
    }
    if found.is_empty() {
        return Err(OciError::NotFound(
            "the image index names no platform".into(),
        ));
    }
    Ok(found.into_iter().collect())
}

/// The variant an architecture's baseline is, as containerd normalises it: a file built
/// for any other variant may use instructions a node of that architecture lacks.
fn baseline_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        "amd64" => Some("v1"),
        _ => None,
    }
}

/// Of the platforms a source has files for, the one a Node with `labels` takes: its os and
/// architecture without a variant, else with its architecture's baseline variant (`v8`
/// for arm64, `v7` for arm, `v1` for amd64); never another variant, which could crash on
/// the node's CPU. `Err` says why none fits.
pub fn for_node<'a>(
    available: &'a [Platform],
    labels: &BTreeMap<String, String>,
) -> std::result::Result<&'a Platform, String> {
    let (Some(os), Some(arch)) = (labels.get(OS_LABEL), labels.get(ARCH_LABEL)) else {
        return Err(format!(
            "the node has no {OS_LABEL} and {ARCH_LABEL} labels to pick a platform by"
        ));
    };
    let matching = || available.iter().filter(|p| p.runs_on(labels));
    let baseline = baseline_variant(arch);
    let chosen = matching()
        .find(|p| p.variant.is_none())
        .or_else(|| matching().find(|p| p.variant.is_some() && p.variant.as_deref() == baseline));
    chosen.ok_or_else(|| {
        let names: Vec<String> = available.iter().map(Platform::to_string).collect();
        format!(
            "no files for this node's platform {os}/{arch}{}; there are files for {}",
            if matching().next().is_some() {
                " (only variants other than the baseline)"
            } else {
                ""
            },
            names.join(", ")
        )
    })
}

/// Whether a node could take files of both: the same os and architecture (variants
/// aside, since which one a node takes depends on what else is offered).
pub fn same_node_platform(a: &Platform, b: &Platform) -> bool {
    a.os == b.os && a.arch == b.arch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(os: &str, arch: &str) -> BTreeMap<String, String> {
        [(OS_LABEL, os), (ARCH_LABEL, arch)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn p(text: &str) -> Platform {
        Platform::parse(text).expect(text)
    }

    #[test]
    fn platforms_parse_only_with_plain_parts_and_name_distinct_directories() {
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/arm64/v8").dir_name(), "linux-arm64-v8");
        assert_eq!(p("linux/amd64").dir_name(), "linux-amd64");
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/../x",
            "Linux/amd64",
            "linux/amd-64",
            "linux/_x",
            "linux/a.b",
            "all",
            &format!("linux/{}", "a".repeat(33)),
        ] {
            assert_eq!(Platform::parse(bad), None, "{bad}");
        }
    }

    fn index(entries: &[(&str, &str, Option<&str>, &str)]) -> OciImageIndex {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(os, arch, variant, digest)| {
                let mut platform = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    platform["variant"] = serde_json::json!(v);
                }
                serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest, "size": 1, "platform": platform})
            })
            .collect();
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .expect("index")
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn every_platform_is_listed_once_and_hostile_indexes_are_refused() {
        let (a, b, c) = (d('a'), d('b'), d('c'));
        let all = every_platform(&index(&[
            ("linux", "arm64", Some("v8"), &a),
            ("linux", "amd64", None, &b),
            ("unknown", "unknown", None, &c),
        ]))
        .expect("platforms");
        let names: Vec<String> = all.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(names, ["linux/amd64", "linux/arm64/v8"]);
        assert_eq!(all[0].1.as_str(), b);

        let twice = every_platform(&index(&[
            ("linux", "amd64", None, &a),
            ("linux", "amd64", None, &b),
        ]));
        assert!(matches!(twice, Err(OciError::InvalidManifest(m)) if m.contains("twice")));
        let traversal = every_platform(&index(&[("..", "amd64", None, &a)]));
        assert!(matches!(traversal, Err(OciError::InvalidManifest(_))));
        let not_digest = every_platform(&index(&[("linux", "amd64", None, "../../x")]));
        assert!(matches!(not_digest, Err(OciError::InvalidManifest(_))));
        let arches: Vec<String> = (0..=MAX_PLATFORMS).map(|i| format!("a{i}")).collect();
        let many: Vec<(&str, &str, Option<&str>, &str)> = arches
            .iter()
            .map(|arch| ("linux", arch.as_str(), None, a.as_str()))
            .collect();
        assert!(matches!(
            every_platform(&index(&many)),
            Err(OciError::TooLarge(_))
        ));
        assert!(matches!(
            every_platform(&index(&[("unknown", "unknown", None, &a)])),
            Err(OciError::NotFound(_))
        ));
    }

    #[test]
    fn a_node_takes_its_os_and_arch_and_the_default_variant() {
        let available = [
            p("linux/amd64"),
            p("linux/arm64/v8"),
            p("linux/arm/v6"),
            p("linux/arm/v7"),
        ];
        assert_eq!(
            for_node(&available, &labels("linux", "amd64")).map(Platform::to_string),
            Ok("linux/amd64".into())
        );
        assert_eq!(
            for_node(&available, &labels("linux", "arm64")).map(Platform::to_string),
            Ok("linux/arm64/v8".into())
        );
        assert_eq!(
            for_node(&available, &labels("linux", "arm")).map(Platform::to_string),
            Ok("linux/arm/v7".into())
        );
        let missing = for_node(&available, &labels("linux", "s390x")).expect_err("s390x");
        assert!(
            missing.contains("linux/s390x") && missing.contains("linux/amd64, linux/arm64/v8"),
            "{missing}"
        );
        let unlabelled = for_node(&available, &BTreeMap::new()).expect_err("no labels");
        assert!(unlabelled.contains(ARCH_LABEL), "{unlabelled}");
        let ambiguous = [p("linux/arm/v5"), p("linux/arm/v6")];
        assert!(for_node(&ambiguous, &labels("linux", "arm")).is_err());
        // a lone variant other than the baseline may not run on the node's CPU
        let v3 = [p("linux/amd64/v3")];
        let e = for_node(&v3, &labels("linux", "amd64")).expect_err("amd64/v3");
        assert!(e.contains("other than the baseline"), "{e}");
        let v1 = [p("linux/amd64/v3"), p("linux/amd64/v1")];
        assert_eq!(
            for_node(&v1, &labels("linux", "amd64")).map(Platform::to_string),
            Ok("linux/amd64/v1".into())
        );
        assert!(for_node(&available, &labels("windows", "amd64")).is_err());
    }
}
