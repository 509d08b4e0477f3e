//! The `Authorization` credential parser. The input is up to four header values separated by
//! `\n`. Oracle: a credential is returned only for exactly one value, whose scheme is `Bearer`
//! (any case), and it is the value's non-empty, visible-ASCII tail.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').take(4).collect();
    let Ok(credential) = scoregate::fuzzing::bearer(&values) else {
        return;
    };
    let valid: Vec<&&[u8]> = values
        .iter()
        .filter(|v| http::HeaderValue::from_bytes(v).is_ok())
        .collect();
    assert_eq!(valid.len(), 1, "a credential from {} values", valid.len());
    let value = valid[0];
    assert!(value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "));
    assert!(!credential.is_empty());
    assert!(credential.iter().all(|b| (0x21..=0x7e).contains(b)));
    assert!(value.ends_with(&credential));
    assert!(credential.len() <= scoregate::auth::MAX_BEARER_LEN + 16);
});
