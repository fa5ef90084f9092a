//! OCI references: the CLI form (`host/repo[:tag|@digest]`), the spec form (`oci://` URL
//! plus one selector), semver ranges and the choice of a tag by range.
//!
//! Invariants: a reference parsed from either form round-trips through Display (a semver
//! range through its own Display); a repository round-trips through `oci://` + Display; the
//! tag chosen for a range matches it and no listed tag that matches is higher.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocisync::oci::reference::{
    RefSelector, Reference, Repository, highest_matching, parse_semver_range,
};

fuzz_target!(|data: &[u8]| {
    let Some(input) = ocisync_fuzz::text(data) else {
        return;
    };
    let (first, rest) = input.split_once('\n').unwrap_or((input, ""));
    cli_form(first);
    spec_form(first, rest);
    range_choice(first, rest);
});

fn cli_form(input: &str) {
    let Ok(parsed) = Reference::parse_cli(input) else {
        return;
    };
    assert!(
        !matches!(parsed.selector, RefSelector::Semver(_)),
        "the CLI form has no semver selector"
    );
    round_trips(&parsed);
}

/// `rest` starts with `t`, `s` or `d` for a tag, semver range or digest, or names none.
fn spec_form(url: &str, rest: &str) {
    let mut chars = rest.chars();
    let (kind, value) = (chars.next(), chars.as_str());
    let (tag, range, digest) = match kind {
        Some('t') => (Some(value), None, None),
        Some('s') => (None, Some(value), None),
        Some('d') => (None, None, Some(value)),
        _ => (None, None, None),
    };
    let Ok(parsed) = Reference::from_spec(url, tag, range, digest) else {
        return;
    };
    round_trips(&parsed);
}

fn round_trips(parsed: &Reference) {
    let url = format!("oci://{}", parsed.repository);
    let repository = Repository::parse_url(&url).expect("oci:// + a parsed repository parses");
    assert_eq!(repository, parsed.repository);
    match &parsed.selector {
        RefSelector::Tag(_) | RefSelector::Digest(_) => {
            let shown = parsed.to_string();
            let again = Reference::parse_cli(&shown)
                .unwrap_or_else(|e| panic!("{shown:?} (Display of {parsed:?}) fails: {e}"));
            assert_eq!(&again, parsed, "through {shown:?}");
        }
        RefSelector::Semver(range) => {
            let shown = range.to_string();
            let again = parse_semver_range(&shown)
                .unwrap_or_else(|e| panic!("range {shown:?} (Display of {range:?}) fails: {e}"));
            assert_eq!(&again, range, "through {shown:?}");
        }
    }
}

fn range_choice(range: &str, tags: &str) {
    let Ok(req) = parse_semver_range(range) else {
        return;
    };
    let tags: Vec<&str> = tags.lines().collect();
    let Some((tag, version)) = highest_matching(&req, tags.iter().copied()) else {
        return;
    };
    assert!(tags.contains(&tag));
    assert!(req.matches(&version), "{version} chosen for {req}");
    for t in &tags {
        if let Ok(v) = semver::Version::parse(t.strip_prefix('v').unwrap_or(t))
            && req.matches(&v)
        {
            assert!(v <= version, "{t} matches {req} and is above {version}");
        }
    }
}
