//! The config parser and validator on arbitrary TOML text: never panics, and a refusal always
//! names at least one problem.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(issues) = scoregate::fuzzing::config(text) {
        assert!(!issues.is_empty(), "a refused config names no problem");
        assert!(
            issues.iter().all(|i| !i.trim().is_empty()),
            "an empty issue"
        );
    }
});
