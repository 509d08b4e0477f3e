//! A minimal JSON object writer for the request record, the one line written per request, and
//! for the Azure Monitor request envelope (one per exported request).
//!
//! The record's shape is fixed and its values are mostly short ASCII, so a direct writer (with
//! `itoa`/`ryu` for numbers and a fast path for strings that need no escaping) costs a fraction
//! of going through serde's data model. Strings that do need escaping are handed to
//! `serde_json`, so the output is always valid JSON.

use std::fmt::Display;

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
            Some(v) => self.capped_str(key, &String::from_utf8_lossy(v), max),
            None => self.null(key),
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

    pub fn opt_f64(&mut self, key: &'static str, value: Option<f64>) {
        match value {
            Some(v) => self.f64(key, v),
            None => self.null(key),
        }
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
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.key(key);
        self.buf.push(b'"');
        for b in bytes {
            self.buf.push(DIGITS[usize::from(b >> 4)]);
            self.buf.push(DIGITS[usize::from(b & 0x0f)]);
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

/// What a capped string field ends with, followed by its full length and ` bytes]`.
pub const TRUNCATED: &str = "...[truncated, ";

/// No control character, quote or backslash: the bytes can go between quotes as they are.
fn needs_no_escape(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
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
        o.opt_f64("nof", None);
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
}
