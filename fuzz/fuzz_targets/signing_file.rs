//! Signing-key parsing. The first byte chooses the service algorithm and the form: a state file
//! (`state_dir/signing/<service>.json`, JSON with PEM or base64 keys) or an operator's key
//! material (`signing_key_file`: PEM, or the base64 secret for HS*). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scoregate::fuzzing::Algorithm;

const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::HS256,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let algorithm = ALGORITHMS[usize::from(choice >> 1) % ALGORITHMS.len()];
    if choice & 1 == 0 {
        let _ = scoregate::fuzzing::signing_state(rest, algorithm);
    } else if let Ok(material) = std::str::from_utf8(rest) {
        let _ = scoregate::fuzzing::signing_material(material, algorithm);
    }
});
