//! `traceparent` and `tracestate` parsing against the forms W3C Trace Context calls invalid, and
//! the header the gateway sends on.

use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn valid() -> String {
    format!("00-{TRACE}-{PARENT}-01")
}

fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            (*name).clone(),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    h
}

#[test]
fn a_valid_traceparent_is_read() {
    let p = parse_traceparent(valid().as_bytes()).expect("valid");
    assert_eq!(p.trace_id.to_string(), TRACE);
    assert_eq!(p.parent_id.to_string(), PARENT);
    assert_eq!(p.flags, 1);
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    assert_eq!(
        parse_traceparent(unsampled.as_bytes())
            .expect("valid")
            .flags,
        0
    );
}

#[test]
fn every_invalid_traceparent_form_is_refused() {
    let zero_trace = "0".repeat(32);
    let zero_parent = "0".repeat(16);
    let cases = [
        // Version ff is forbidden; versions are two lower-case hex digits.
        format!("ff-{TRACE}-{PARENT}-01"),
        format!("0-{TRACE}-{PARENT}-01"),
        format!("0A-{TRACE}-{PARENT}-01"),
        format!("zz-{TRACE}-{PARENT}-01"),
        // All-zero ids.
        format!("00-{zero_trace}-{PARENT}-01"),
        format!("00-{TRACE}-{zero_parent}-01"),
        // Wrong lengths of each field.
        format!("00-{}-{PARENT}-01", &TRACE[..31]),
        format!("00-{TRACE}0-{PARENT}-01"),
        format!("00-{TRACE}-{}-01", &PARENT[..15]),
        format!("00-{TRACE}-{PARENT}0-01"),
        format!("00-{TRACE}-{PARENT}-1"),
        format!("00-{TRACE}-{PARENT}-011"),
        // Version 00 with anything after the flags.
        format!("00-{TRACE}-{PARENT}-01-extra"),
        format!("00-{TRACE}-{PARENT}-01 "),
        // Upper-case hex anywhere.
        format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-{}-01", PARENT.to_uppercase()),
        format!("00-{TRACE}-{PARENT}-0A"),
        // Not hex, wrong separators, empty.
        format!("00-{}g-{PARENT}-01", &TRACE[..31]),
        format!("00_{TRACE}-{PARENT}-01"),
        format!("00-{TRACE}_{PARENT}-01"),
        format!("00-{TRACE}-{PARENT}_01"),
        String::new(),
        "00".to_owned(),
        // A later version shorter than 55 or not followed by a dash.
        format!("01-{TRACE}-{PARENT}-0"),
        format!("01-{TRACE}-{PARENT}-01x"),
    ];
    for case in &cases {
        assert_eq!(parse_traceparent(case.as_bytes()), None, "{case:?}");
    }
}

#[test]
fn a_later_version_is_read_as_version_00() {
    let later = format!("cc-{TRACE}-{PARENT}-03-what-the-future-holds");
    let p = parse_traceparent(later.as_bytes()).expect("later version");
    assert_eq!(p.trace_id.to_string(), TRACE);
    // Only `sampled` is understood of a later version's flags.
    assert_eq!(p.flags, 1);
    let exact = format!("01-{TRACE}-{PARENT}-00");
    assert!(parse_traceparent(exact.as_bytes()).is_some());
}

#[test]
fn a_continued_trace_gets_a_new_span_and_keeps_the_state() {
    let h = headers(&[
        (&TRACEPARENT, &valid()),
        (&TRACESTATE, "congo=t61rcWkgMzE"),
        (&TRACESTATE, "rojo=00f067aa0ba902b7"),
    ]);
    let ctx = TraceContext::from_headers(&h);
    assert_eq!(ctx.trace_id.to_string(), TRACE);
    assert_eq!(
        ctx.parent_id.map(|p| p.to_string()).as_deref(),
        Some(PARENT)
    );
    assert_ne!(ctx.span_id.to_string(), PARENT);
    assert_ne!(ctx.span_id.0, [0; 8]);
    assert_eq!(
        ctx.state.as_ref().map(|s| s.to_str().expect("ascii")),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );
    let sent = ctx.traceparent();
    assert_eq!(
        sent.to_str().expect("ascii"),
        format!("00-{TRACE}-{}-01", ctx.span_id)
    );
    assert!(parse_traceparent(sent.as_bytes()).is_some());
}

#[test]
fn an_invalid_or_repeated_traceparent_starts_a_new_trace_without_the_state() {
    let upper = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    for h in [
        headers(&[(&TRACEPARENT, &upper), (&TRACESTATE, "congo=t61rcWkgMzE")]),
        headers(&[
            (&TRACEPARENT, &valid()),
            (&TRACEPARENT, &valid()),
            (&TRACESTATE, "congo=t61rcWkgMzE"),
        ]),
        headers(&[(&TRACESTATE, "congo=t61rcWkgMzE")]),
    ] {
        let ctx = TraceContext::from_headers(&h);
        assert_ne!(ctx.trace_id.to_string(), TRACE);
        assert_ne!(ctx.trace_id.0, [0; 16]);
        assert_eq!(ctx.parent_id, None);
        assert_eq!(ctx.flags, 1);
        assert_eq!(ctx.state, None);
        assert!(parse_traceparent(ctx.traceparent().as_bytes()).is_some());
    }
    // Two new traces are different traces.
    assert_ne!(
        TraceContext::new_trace().trace_id,
        TraceContext::new_trace().trace_id
    );
}

#[test]
fn tracestate_grammar() {
    for ok in [
        "congo=t61rcWkgMzE",
        "a=1, b=2",
        "a=1,,b=2",
        "tenant@system=x",
        "1tenant@sys=x y",
        "k_-*/=v",
    ] {
        let h = headers(&[(&TRACESTATE, ok)]);
        assert!(tracestate(&h).is_some(), "{ok:?}");
    }
    let too_many = (0..33)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let thirty_two = (0..32)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    assert!(tracestate(&headers(&[(&TRACESTATE, &thirty_two)])).is_some());
    let long_value = format!("k={}", "v".repeat(257));
    for bad in [
        "",
        "novalue",
        "Upper=1",
        "k=",
        "k=a=b",
        "=v",
        "1key=v",
        "t@Sys=v",
        "t@system-name-too-long=v",
        "k=tab\tinside",
        too_many.as_str(),
        long_value.as_str(),
    ] {
        let h = headers(&[(&TRACESTATE, bad)]);
        assert_eq!(tracestate(&h), None, "{bad:?}");
    }
}

#[test]
fn upstream_headers_replace_the_callers() {
    let mut h = headers(&[
        (&TRACEPARENT, "garbage"),
        (&TRACESTATE, "congo=t61rcWkgMzE"),
    ]);
    let ctx = TraceContext::from_headers(&h);
    ctx.set_upstream_headers(&mut h);
    assert_eq!(h.get_all(&TRACEPARENT).iter().count(), 1);
    assert_eq!(h[&TRACEPARENT], ctx.traceparent());
    assert!(h.get(&TRACESTATE).is_none());
}
