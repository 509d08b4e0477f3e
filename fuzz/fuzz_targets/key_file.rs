//! Key-file parsing (`state_dir/keys/<service>.json` or an operator's `key_file`).
//! Oracle: a file accepted with plain `primaryKey`/`secondaryKey` verifies exactly those keys,
//! each in its own slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scoregate::fuzzing::KeySlot;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = scoregate::fuzzing::key_file(data) else {
        return;
    };
    let file: Value = serde_json::from_slice(data).expect("an accepted key file is JSON");
    let hashed = file.get("storage").and_then(Value::as_str) == Some("hashed")
        || (file.get("storage").is_none() && file.get("salt").is_some_and(|s| !s.is_null()));
    if hashed {
        return;
    }
    let primary = file["primaryKey"]
        .as_str()
        .expect("an accepted plain file has primaryKey");
    let secondary = file["secondaryKey"].as_str().expect("and secondaryKey");
    assert_eq!(keys.verify(primary.as_bytes()), Some(KeySlot::Primary));
    assert_eq!(keys.verify(secondary.as_bytes()), Some(KeySlot::Secondary));
    assert_eq!(keys.verify(b""), None);
});
