//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and `tracestate`
//! a request arrives with, validated and continued, or a new trace when there is none.
//!
//! The gateway is one span in the caller's trace: its records carry the trace id
//! (`OperationId`), the caller's span id (`ParentId`) and its own span id (`SpanId`), and the
//! request sent upstream carries a `traceparent` naming the gateway's span as the parent, so the
//! scoring container's telemetry joins the same trace. An invalid `traceparent` starts a new
//! trace, and its `tracestate` is then dropped (§3.3.1: a vendor that cannot parse
//! `traceparent` must not use `tracestate`). Pure functions over header values; the proxy
//! decides where they go.

use std::fmt;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `sampled` (§3.2.2.5): set on traces the gateway starts, since it records every request.
const FLAG_SAMPLED: u8 = 0x01;

/// Version 00's `traceparent` length: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// At most this many `tracestate` list members (§3.3.1.1); more and the whole value is dropped.
const TRACESTATE_MAX_MEMBERS: usize = 32;

/// The trace a request belongs to and the gateway's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// The caller's span (`None`: the trace started here).
    pub parent_id: Option<SpanId>,
    /// The gateway's own span: the parent of what the scoring container does.
    pub span_id: SpanId,
    /// `trace-flags`, continued unchanged from the caller.
    pub flags: u8,
    /// The caller's `tracestate`, forwarded unchanged when valid.
    pub state: Option<HeaderValue>,
}

/// 16 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// 8 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

/// The caller's part of a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceContext {
    /// Continues the trace of `headers` with a new span, or starts a new trace.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut lines = headers.get_all(&TRACEPARENT).iter();
        // A repeated `traceparent` is ambiguous: neither is believed.
        let parent = match (lines.next(), lines.next()) {
            (Some(v), None) => parse_traceparent(v.as_bytes()),
            _ => None,
        };
        match parent {
            Some(p) => Self {
                trace_id: p.trace_id,
                parent_id: Some(p.parent_id),
                span_id: SpanId::random(),
                flags: p.flags,
                state: tracestate(headers),
            },
            None => Self::new_trace(),
        }
    }

    /// A new trace with the gateway's span as its root.
    pub fn new_trace() -> Self {
        Self {
            trace_id: TraceId::random(),
            parent_id: None,
            span_id: SpanId::random(),
            flags: FLAG_SAMPLED,
            state: None,
        }
    }

    /// The `traceparent` sent upstream: this trace, the gateway's span as the parent, version 00
    /// (the version this implementation speaks, §3.2.4).
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; TRACEPARENT_LEN];
        out[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id.0, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.span_id.0, &mut out[36..52]);
        out[52] = b'-';
        hex_into(&[self.flags], &mut out[53..55]);
        // Lower-case hex and dashes: always a valid header value.
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Replaces whatever trace headers the caller sent with this context's.
    pub fn set_upstream_headers(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.traceparent());
        match &self.state {
            Some(state) => headers.insert(TRACESTATE.clone(), state.clone()),
            None => headers.remove(&TRACESTATE),
        };
    }
}

impl TraceId {
    fn random() -> Self {
        // UUIDv4 bytes: thread-local CSPRNG output (6 fixed version/variant bits), never zero.
        Self(*uuid::Uuid::new_v4().as_bytes())
    }
}

impl SpanId {
    fn random() -> Self {
        let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
        // `high` holds the version nibble 4, so it is never zero.
        Self(high.to_be_bytes())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    let out = &mut buf[..bytes.len() * 2];
    hex_into(bytes, out);
    f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lower-case hex into `out` (twice as long).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Lower-case hex only (§3.2.2: upper case is invalid).
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value (§3.2). `None` for every invalid form: a version that is not two
/// lower-case hex digits or is `ff`; version 00 with any length but 55; a later version shorter
/// than 55 or not followed by `-`; ids or flags that are not lower-case hex of their exact
/// length; an all-zero trace id or parent id; a misplaced dash.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    let version = unhex::<1>(value.get(..2)?)?[0];
    if version == 0xff {
        return None;
    }
    // Version 00 has exactly four fields. A later version may append fields after a dash; its
    // first four are read as version 00's (§3.2.4, "versioning of traceparent").
    match value.len() {
        TRACEPARENT_LEN => {}
        n if version > 0 && n > TRACEPARENT_LEN && value[TRACEPARENT_LEN] == b'-' => {}
        _ => return None,
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&value[3..35])?;
    let parent_id = unhex::<8>(&value[36..52])?;
    let flags = unhex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id: TraceId(trace_id),
        parent_id: SpanId(parent_id),
        // Version 00 defines only `sampled`; later versions' other bits are not passed on.
        flags: if version == 0 {
            flags
        } else {
            flags & FLAG_SAMPLED
        },
    })
}

/// The caller's `tracestate` (several header lines are one list, §3.3.1.1), or `None` when
/// absent, empty or invalid: more than 32 members, or a member that is not `key=value` in the
/// grammar of §3.3.1.3.
pub fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(&TRACESTATE).iter();
    let first = lines.next()?;
    let combined = match lines.next() {
        None => first.clone(),
        Some(second) => {
            let mut all = first.as_bytes().to_vec();
            for line in std::iter::once(second).chain(lines) {
                all.push(b',');
                all.extend_from_slice(line.as_bytes());
            }
            HeaderValue::from_bytes(&all).ok()?
        }
    };
    tracestate_is_valid(combined.as_bytes()).then_some(combined)
}

fn tracestate_is_valid(value: &[u8]) -> bool {
    let mut members = 0;
    for member in value.split(|&c| c == b',') {
        let member = member.trim_ascii();
        // Empty members (`a=1,,b=2`) are allowed and ignored (§3.3.1.1).
        if member.is_empty() {
            continue;
        }
        members += 1;
        if members > TRACESTATE_MAX_MEMBERS || !list_member_is_valid(member) {
            return false;
        }
    }
    members > 0
}

/// `key=value` (§3.3.1.3): key is `simple-key` or `tenant-id@system-id`; value is 1 to 256
/// printable ASCII characters except `,` and `=`, not ending in a space.
fn list_member_is_valid(member: &[u8]) -> bool {
    let Some(eq) = member.iter().position(|&c| c == b'=') else {
        return false;
    };
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    let value_ok = (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && value.last() != Some(&b' ');
    value_ok && key_is_valid(key)
}

fn key_is_valid(key: &[u8]) -> bool {
    let rest = |c: &u8| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    match key.iter().position(|&c| c == b'@') {
        // simple-key = lcalpha 0*255( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
        None => {
            key.len() <= 256
                && key.first().is_some_and(u8::is_ascii_lowercase)
                && key[1..].iter().all(rest)
        }
        // tenant-id = ( lcalpha / DIGIT ) 0*240( ... ); system-id = lcalpha 0*13( ... )
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant
                    .first()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && tenant[1..].iter().all(rest)
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && system[1..].iter().all(rest)
        }
    }
}

#[cfg(test)]
mod tests;
