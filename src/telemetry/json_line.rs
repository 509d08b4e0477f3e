//! A minimal JSON object writer for the request record, the one line written per request, and
//! for the Azure Monitor request envelope (one per exported request).
//!
//! The record's shape is fixed and its values are mostly short ASCII, so a direct writer (with
//! `itoa`/`ryu` for numbers and a fast path for strings that need no escaping) costs a fraction
//! of going through serde's data model. Strings that do need escaping are handed to
//! `serde_json`, so the output is always valid JSON.
//!
//! The record is written once per request, so its writers avoid `fmt` where they can: the
//! escape check goes eight bytes at a time, durations are integers with a decimal point put in,
//! ids are hex through a stack buffer and IPv4 addresses are four `itoa` numbers (with a
//! cheaper hop-by-hop check, 5.2 % fewer instructions per proxied HTTP/1.1 request and 4.3 %
//! per HTTP/2 one; loadtest/RESULTS.md).

use std::cell::Cell;
use std::fmt::{Display, Write as _};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Writes one JSON object into a byte buffer, field by field.
pub struct JsonObject<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonObject<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        buf.push(b'{');
        Self { buf, first: true }
    }

    fn key(&mut self, key: &'static str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        // Keys are the writer's own names (`'static`, never input): no scan for characters to
        // escape.
        debug_assert!(
            needs_no_escape(key.as_bytes()),
            "key {key:?} needs escaping"
        );
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    pub fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        string(self.buf, value);
    }

    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(v) => string(self.buf, v),
            None => self.buf.extend_from_slice(b"null"),
        }
    }

    /// A string of at most `max` bytes (before escaping): a longer one is cut at a character
    /// boundary and ends with a visible marker, `...[truncated, N bytes]` (N: its full length),
    /// so one oversized request cannot make an oversized record.
    pub fn capped_str(&mut self, key: &'static str, value: &str, max: usize) {
        if value.len() <= max {
            return self.str(key, value);
        }
        let mut cut = max;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        let shown = format!("{}{TRUNCATED}{} bytes]", &value[..cut], value.len());
        self.str(key, &shown);
    }

    /// Header bytes as text (invalid UTF-8 replaced, as the rest of the gateway shows it),
    /// capped like [`Self::capped_str`].
    pub fn capped_opt_bytes(&mut self, key: &'static str, value: Option<&[u8]>, max: usize) {
        match value {
            // Header values are ASCII nearly always: `from_utf8`'s word-at-a-time check, and
            // the replacing decoder only for the rare value that is not UTF-8.
            Some(v) => match std::str::from_utf8(v) {
                Ok(text) => self.capped_str(key, text, max),
                Err(_) => self.capped_str(key, &String::from_utf8_lossy(v), max),
            },
            None => self.null(key),
        }
    }

    /// A string made of `parts` written one after the other (`POST /score` from the method
    /// and the path), without building it first.
    pub fn concat(&mut self, key: &'static str, parts: &[&str]) {
        self.key(key);
        if parts.iter().all(|p| needs_no_escape(p.as_bytes())) {
            self.buf.push(b'"');
            for part in parts {
                self.buf.extend_from_slice(part.as_bytes());
            }
            self.buf.push(b'"');
        } else {
            string(self.buf, &parts.concat());
        }
    }

    pub fn u64(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    pub fn opt_u64(&mut self, key: &'static str, value: Option<u64>) {
        match value {
            Some(v) => self.u64(key, v),
            None => self.null(key),
        }
    }

    pub fn f64(&mut self, key: &'static str, value: f64) {
        self.key(key);
        if value.is_finite() {
            self.buf
                .extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
        } else {
            self.buf.extend_from_slice(b"null");
        }
    }

    /// A duration in milliseconds as a JSON number with up to six decimals (nanosecond
    /// precision, trailing zeros dropped, at least one decimal): `4.909432`, `0.0`. Exact where
    /// going through `f64` would round, and integer formatting where `f64` needs `ryu`.
    pub fn millis(&mut self, key: &'static str, value: Duration) {
        self.key(key);
        // u64 arithmetic (`as_nanos` is a u128, and its division a library call).
        let whole = value
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(value.subsec_millis()));
        let mut digits = itoa::Buffer::new();
        self.buf.extend_from_slice(digits.format(whole).as_bytes());
        self.buf.push(b'.');
        let fraction = value.subsec_nanos() % 1_000_000;
        if fraction == 0 {
            self.buf.push(b'0');
            return;
        }
        let fraction = digits.format(fraction).as_bytes();
        self.buf
            .extend(std::iter::repeat_n(b'0', 6 - fraction.len()));
        let kept = fraction.len() - fraction.iter().rev().take_while(|&&d| d == b'0').count();
        self.buf.extend_from_slice(&fraction[..kept]);
    }

    /// A time as RFC 3339 UTC with microseconds, `2026-12-04T13:07:49.674065Z` (what
    /// `humantime::format_rfc3339_micros` writes), or `null` for a time it cannot show (before
    /// 1970 or after 9999: a clock that far off is not worth a panic). The date and time of day
    /// are formatted once per second and thread, then copied: the record writes one per request.
    pub fn timestamp_micros(&mut self, key: &'static str, value: SystemTime) {
        thread_local! {
            static SECOND: Cell<Option<(u64, [u8; 19])>> = const { Cell::new(None) };
        }
        let Ok(since) = value.duration_since(UNIX_EPOCH) else {
            return self.null(key);
        };
        let secs = since.as_secs();
        let prefix = match SECOND.get() {
            // Only a second humantime could show is ever cached.
            Some((cached, prefix)) if cached == secs => prefix,
            _ => {
                let Some(stamp) = rfc3339_micros(value) else {
                    return self.null(key);
                };
                // `YYYY-MM-DDTHH:MM:SS`, the part before the fraction.
                let mut text = String::with_capacity(27);
                let _ = write!(text, "{stamp}");
                let Some(prefix) = text
                    .get(..19)
                    .and_then(|t| <[u8; 19]>::try_from(t.as_bytes()).ok())
                else {
                    return self.null(key);
                };
                SECOND.set(Some((secs, prefix)));
                prefix
            }
        };
        self.key(key);
        self.buf.push(b'"');
        self.buf.extend_from_slice(&prefix);
        self.buf.push(b'.');
        let mut digits = itoa::Buffer::new();
        let micros = digits.format(since.subsec_micros()).as_bytes();
        self.buf.extend(std::iter::repeat_n(b'0', 6 - micros.len()));
        self.buf.extend_from_slice(micros);
        self.buf.extend_from_slice(b"Z\"");
    }

    pub fn opt_millis(&mut self, key: &'static str, value: Option<Duration>) {
        match value {
            Some(v) => self.millis(key, v),
            None => self.null(key),
        }
    }

    /// An IP address as a string; IPv4 without going through `Display`'s padding support.
    pub fn ip(&mut self, key: &'static str, value: IpAddr) {
        let IpAddr::V4(v4) = value else {
            return self.display(key, value);
        };
        self.key(key);
        self.buf.push(b'"');
        let mut digits = itoa::Buffer::new();
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b'.');
            }
            self.buf.extend_from_slice(digits.format(octet).as_bytes());
        }
        self.buf.push(b'"');
    }

    pub fn bool(&mut self, key: &'static str, value: bool) {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    pub fn null(&mut self, key: &'static str) {
        self.key(key);
        self.buf.extend_from_slice(b"null");
    }

    /// A value whose `Display` output never needs escaping (timestamps, IP addresses).
    pub fn display(&mut self, key: &'static str, value: impl Display) {
        self.key(key);
        // Formatted straight into the line (no temporary string), then checked.
        let start = self.buf.len();
        self.buf.push(b'"');
        let _ = std::io::Write::write_fmt(&mut *self.buf, format_args!("{value}"));
        if needs_no_escape(&self.buf[start + 1..]) {
            self.buf.push(b'"');
        } else {
            // Not expected for the values used here; keep the line valid JSON regardless.
            let text = String::from_utf8_lossy(&self.buf[start + 1..]).into_owned();
            self.buf.truncate(start);
            string(self.buf, &text);
        }
    }

    /// Bytes as lower-case hex (trace and span ids).
    pub fn hex(&mut self, key: &'static str, bytes: &[u8]) {
        self.key(key);
        self.buf.push(b'"');
        // Through a stack buffer: one copy per 32 bytes, not two pushes per byte.
        let mut text = [0u8; 64];
        for chunk in bytes.chunks(32) {
            let out = &mut text[..chunk.len() * 2];
            super::trace::hex_into(chunk, out);
            self.buf.extend_from_slice(out);
        }
        self.buf.push(b'"');
    }

    /// A nested object under `key`; end it before writing on to this one.
    pub fn object(&mut self, key: &'static str) -> JsonObject<'_> {
        self.key(key);
        JsonObject::new(self.buf)
    }

    pub fn end(self) {
        self.buf.push(b'}');
    }
}

/// `t` for humantime's RFC 3339 formatters, or `None` when it cannot show it: before 1970 its
/// `Display` panics, from the year 10000 on it fails. A clock that far off is not worth a panic.
pub fn rfc3339_micros(t: SystemTime) -> Option<humantime::Rfc3339Timestamp> {
    showable(t).then(|| humantime::format_rfc3339_micros(t))
}

/// [`rfc3339_micros`] for serde (`serialize_with`): the text, or null.
pub fn serialize_rfc3339_micros<S: serde::Serializer>(
    t: &SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    match rfc3339_micros(*t) {
        Some(text) => s.collect_str(&text),
        None => s.serialize_none(),
    }
}

/// [`rfc3339_micros`] to the second (`2026-12-04T13:07:49Z`), for the management API's times.
pub fn rfc3339_seconds(t: SystemTime) -> Option<humantime::Rfc3339Timestamp> {
    showable(t).then(|| humantime::format_rfc3339_seconds(t))
}

/// Within humantime's range: from 1970 to the end of the year 9999.
fn showable(t: SystemTime) -> bool {
    const YEAR_10000: Duration = Duration::from_secs(253_402_300_800);
    t.duration_since(UNIX_EPOCH)
        .is_ok_and(|since| since < YEAR_10000)
}

/// What a capped string field ends with, followed by its full length and ` bytes]`.
pub const TRUNCATED: &str = "...[truncated, ";

/// No control character, quote or backslash: the bytes can go between quotes as they are.
/// Eight bytes at a time (every record string goes through here): a word has a byte below
/// 0x20, a `"` or a `\` exactly when the classic "has a byte less than n" test (n = 0x20; exact
/// for n <= 0x80) or, after an xor with the character, the "has a zero byte" test says so.
fn needs_no_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const SPACE: u64 = u64::from_ne_bytes([0x20; 8]);
    const QUOTE: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASH: u64 = u64::from_ne_bytes([b'\\'; 8]);
    let below = |word: u64, n: u64| word.wrapping_sub(n) & !word & HIGH != 0;
    let (words, rest) = bytes.as_chunks::<8>();
    words.iter().all(|word| {
        let word = u64::from_ne_bytes(*word);
        !(below(word, SPACE) || below(word ^ QUOTE, ONES) || below(word ^ BACKSLASH, ONES))
    }) && rest.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// A JSON string: copied as is when nothing needs escaping, else escaped by `serde_json`.
fn string(buf: &mut Vec<u8>, s: &str) {
    if needs_no_escape(s.as_bytes()) {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else if serde_json::to_writer(&mut *buf, s).is_err() {
        // Writing a &str into a Vec cannot fail; keep the output valid regardless.
        buf.extend_from_slice(b"\"\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json_for_awkward_values() {
        let mut buf = Vec::new();
        let mut o = JsonObject::new(&mut buf);
        o.str("plain", "curl/8.0");
        o.str("quote", "a \"quoted\" \\ back\nslash\u{1}");
        o.str("unicode", "résumé ☃");
        o.opt_str("none", None);
        o.capped_opt_bytes("bytes", Some(b"ok\xff"), 64);
        o.u64("n", 18_446_744_073_709_551_615);
        o.f64("f", 0.125);
        o.f64("nan", f64::NAN);
        o.opt_millis("nof", None);
        o.bool("yes", true);
        o.display("ip", std::net::IpAddr::from([127, 0, 0, 1]));
        o.display("awkward", "say \"hi\"\n");
        o.u64("after", 1);
        o.end();
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        assert_eq!(v["plain"], "curl/8.0");
        assert_eq!(v["quote"], "a \"quoted\" \\ back\nslash\u{1}");
        assert_eq!(v["unicode"], "résumé ☃");
        assert!(v["none"].is_null());
        assert_eq!(v["bytes"], "ok\u{fffd}");
        assert_eq!(v["n"], 18_446_744_073_709_551_615_u64);
        assert_eq!(v["f"], 0.125);
        assert!(v["nan"].is_null() && v["nof"].is_null());
        assert_eq!(v["yes"], true);
        assert_eq!(v["ip"], "127.0.0.1");
        assert_eq!(v["awkward"], "say \"hi\"\n");
        assert_eq!(v["after"], 1);
    }

    #[test]
    fn capped_fields_end_with_a_visible_marker() {
        let mut buf = Vec::new();
        let mut o = JsonObject::new(&mut buf);
        o.capped_str("short", "abc", 3);
        o.capped_str("long", "abcdef", 3);
        // A cut inside a multi-byte character moves back to its start.
        o.capped_str("utf8", "aé☃", 4);
        o.capped_opt_bytes("bytes", Some(b"0123456789"), 4);
        o.capped_opt_bytes("none", None, 4);
        o.end();
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        assert_eq!(v["short"], "abc");
        assert_eq!(v["long"], "abc...[truncated, 6 bytes]");
        assert_eq!(v["utf8"], "aé...[truncated, 6 bytes]");
        assert_eq!(v["bytes"], "0123...[truncated, 10 bytes]");
        assert!(v["none"].is_null());
    }

    #[test]
    fn the_word_at_a_time_check_agrees_with_the_byte_by_byte_one() {
        let naive = |b: &[u8]| b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\');
        // Every byte value at every position of strings that end in a whole word, a partial
        // one and none, among bytes that need no escaping (ASCII and UTF-8 continuation
        // bytes, which sit next to the thresholds the word test works with).
        for len in [1, 7, 8, 9, 16, 17, 23] {
            for fill in [b'a', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xa2, 0xff] {
                for at in 0..len {
                    for byte in 0..=255u8 {
                        let mut text = vec![fill; len];
                        text[at] = byte;
                        assert_eq!(
                            needs_no_escape(&text),
                            naive(&text),
                            "{byte:#04x} at {at} of {len} x {fill:#04x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn durations_are_milliseconds_with_up_to_six_decimals() {
        let cases = [
            (Duration::ZERO, "0.0"),
            (Duration::from_nanos(1), "0.000001"),
            (Duration::from_nanos(4_909_432), "4.909432"),
            (Duration::from_micros(12_500), "12.5"),
            (Duration::from_millis(3), "3.0"),
            (Duration::from_nanos(1_000_010), "1.00001"),
            (Duration::from_secs(90_000), "90000000.0"),
        ];
        for (value, text) in cases {
            let mut buf = Vec::new();
            let mut o = JsonObject::new(&mut buf);
            o.millis("ms", value);
            o.end();
            assert_eq!(buf, format!("{{\"ms\":{text}}}").as_bytes(), "{value:?}");
            let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
            let want = value.as_secs_f64() * 1000.0;
            assert!((v["ms"].as_f64().expect("a number") - want).abs() < 1e-9);
        }
    }

    #[test]
    fn addresses_ids_and_joined_strings() {
        let mut buf = Vec::new();
        let mut o = JsonObject::new(&mut buf);
        o.ip("v4", std::net::Ipv4Addr::new(10, 0, 255, 7).into());
        o.ip("v6", std::net::Ipv6Addr::LOCALHOST.into());
        o.hex("id", &[0x00, 0x9f, 0xa0, 0xff]);
        o.hex("long", &[0xab; 40]);
        o.concat("name", &["POST", " ", "/score"]);
        o.concat("odd", &["GET", " ", "/a\"b"]);
        o.end();
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        assert_eq!(v["v4"], "10.0.255.7");
        assert_eq!(v["v6"], "::1");
        assert_eq!(v["id"], "009fa0ff");
        assert_eq!(v["long"], "ab".repeat(40));
        assert_eq!(v["name"], "POST /score");
        assert_eq!(v["odd"], "GET /a\"b");
    }

    #[test]
    fn timestamps_match_humantime_within_and_across_seconds() {
        let base = UNIX_EPOCH + Duration::from_secs(1_796_389_669);
        let times = [
            base,
            base + Duration::from_micros(674_065),
            base + Duration::from_nanos(999_999_999),
            base + Duration::from_secs(1) + Duration::from_micros(5),
            base + Duration::from_secs(86_400 * 400) + Duration::from_micros(120),
            base,
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_secs(253_402_300_799),
        ];
        for t in times {
            let mut buf = Vec::new();
            let mut o = JsonObject::new(&mut buf);
            o.timestamp_micros("t", t);
            o.end();
            let want = format!("{{\"t\":\"{}\"}}", humantime::format_rfc3339_micros(t));
            assert_eq!(String::from_utf8_lossy(&buf), want);
        }
        assert!(rfc3339_micros(UNIX_EPOCH + Duration::from_secs(253_402_300_799)).is_some());
        // Times humantime cannot show are null, not a panic on the request path.
        for t in [
            UNIX_EPOCH - Duration::from_secs(1),
            UNIX_EPOCH + Duration::from_secs(253_402_300_800),
        ] {
            let mut buf = Vec::new();
            let mut o = JsonObject::new(&mut buf);
            o.timestamp_micros("t", t);
            o.end();
            assert_eq!(buf, b"{\"t\":null}");
            assert!(rfc3339_micros(t).is_none());
            assert!(rfc3339_seconds(t).is_none());
        }
        let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        assert_eq!(
            rfc3339_seconds(last).map(|s| s.to_string()).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(
            rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(1_796_389_669))
                .map(|s| s.to_string())
                .as_deref(),
            Some("2026-12-04T13:07:49Z")
        );
    }

    /// The activity log's and Azure Monitor's serde path: the text, or null.
    #[test]
    fn serde_times_are_text_or_null() {
        #[derive(serde::Serialize)]
        struct Entry(#[serde(serialize_with = "serialize_rfc3339_micros")] SystemTime);
        let json = |t| serde_json::to_string(&Entry(t)).expect("serializes");
        assert_eq!(json(UNIX_EPOCH), "\"1970-01-01T00:00:00.000000Z\"");
        assert_eq!(json(UNIX_EPOCH - Duration::from_secs(1)), "null");
        assert_eq!(
            json(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
            "null"
        );
    }
}
