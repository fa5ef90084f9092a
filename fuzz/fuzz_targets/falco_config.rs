//! The Falco config blob (`name`, `version`, `dependencies`, `requirements`).
//!
//! Invariants: a parsed config is never empty; written back as JSON it parses to the same
//! config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ocisync::oci::content::FalcoConfig;

fuzz_target!(|data: &[u8]| {
    let Some(config) = FalcoConfig::parse(data) else {
        return;
    };
    assert!(
        config.name.is_some()
            || config.version.is_some()
            || !config.dependencies.is_empty()
            || !config.requirements.is_empty(),
        "an empty config was parsed"
    );
    let written = serde_json::to_vec(&config).expect("a config serialises");
    let again = FalcoConfig::parse(&written).expect("a written config parses");
    assert_eq!(again, config);
});
