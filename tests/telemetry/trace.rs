//! W3C Trace Context over the wire: a caller's `traceparent` is continued (the scoring container
//! receives the same trace with the gateway's span as its parent, and the caller's `tracestate`);
//! an invalid or absent one starts a new trace; records carry `OperationId`, `ParentId`,
//! `SpanId`, `Name`, `RoleName` and `RoleInstance`, and activity entries the role fields too.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::OPEN;
use super::support::check::{header, send_json};
use super::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

async fn trace_gateway(upstream: &MockUpstream) -> TestGateway {
    GatewayBuilder::new()
        .telemetry("role_name = \"edge\"")
        .service("open", OPEN, &upstream.url())
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "auth = \"key\"\nrole_name = \"iris-model\"",
        )
        .start()
        .await
}

/// Sends `POST {OPEN}/score?x=1` with the given trace headers; returns the request id.
async fn score(gw: &TestGateway, trace: &[(&str, &str)]) -> String {
    let mut req = gw
        .client()
        .post(gw.url(&format!("{OPEN}/score?x=1")))
        .body("{}");
    for (name, value) in trace {
        req = req.header(*name, *value);
    }
    let (status, headers, _) = send_json(req).await;
    assert_eq!(status, StatusCode::OK);
    header(&headers, "x-request-id").to_owned()
}

/// What the scoring container received for request `id`: its `traceparent` split into
/// (version, trace id, parent id, flags), and its `tracestate`.
async fn upstream_trace(
    upstream: &MockUpstream,
    id: &str,
) -> ((String, String, String, String), Option<String>) {
    let seen = upstream
        .wait_for("the request at the upstream", |s| {
            s.header("x-request-id") == Some(id)
        })
        .await;
    assert_eq!(
        seen.header_all("traceparent").len(),
        1,
        "{:?}",
        seen.headers
    );
    let parent = seen.header("traceparent").expect("traceparent upstream");
    let parts: Vec<&str> = parent.split('-').collect();
    assert_eq!(parts.len(), 4, "{parent}");
    (
        (
            parts[0].to_owned(),
            parts[1].to_owned(),
            parts[2].to_owned(),
            parts[3].to_owned(),
        ),
        seen.header("tracestate").map(str::to_owned),
    )
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|c| c != b'0')
}

fn assert_roles(record: &Value, role_name: &str) {
    assert_eq!(record["RoleName"], role_name, "{record}");
    let instance = record["RoleInstance"]
        .as_str()
        .expect("RoleInstance is text");
    assert!(
        !instance.is_empty() && instance.trim() == instance,
        "{record}"
    );
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_with_the_gateways_span_as_parent() {
    let upstream = MockUpstream::start().await;
    let gw = trace_gateway(&upstream).await;
    let id = score(
        &gw,
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ],
    )
    .await;
    let ((version, trace, parent, flags), state) = upstream_trace(&upstream, &id).await;
    assert_eq!((version.as_str(), trace.as_str()), ("00", TRACE));
    assert_eq!(flags, "01");
    assert_ne!(
        parent, PARENT,
        "the gateway's own span is the parent upstream"
    );
    assert!(is_lower_hex(&parent, 16), "{parent}");
    assert_eq!(
        state.as_deref(),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );

    let record = gw.record_for(&id).await;
    assert_eq!(record["OperationId"], TRACE, "{record}");
    assert_eq!(record["ParentId"], PARENT, "{record}");
    assert_eq!(record["SpanId"], parent.as_str(), "{record}");
    assert_eq!(record["Name"], "POST /score", "{record}");
    // Existing fields keep their meaning: the URL is still the full one.
    assert_eq!(record["RequestUrl"], format!("{OPEN}/score?x=1"));
    assert_roles(&record, "open");
}

#[tokio::test]
async fn an_invalid_or_absent_traceparent_starts_a_new_trace() {
    let upstream = MockUpstream::start().await;
    let gw = trace_gateway(&upstream).await;
    let upper = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let zero = format!("00-{}-{PARENT}-01", "0".repeat(32));
    let ff = format!("ff-{TRACE}-{PARENT}-01");
    let cases: [&[(&str, &str)]; 4] = [
        &[("traceparent", &upper), ("tracestate", "congo=t61rcWkgMzE")],
        &[("traceparent", &zero)],
        &[("traceparent", &ff), ("tracestate", "congo=t61rcWkgMzE")],
        &[],
    ];
    let mut traces = Vec::new();
    for trace in cases {
        let id = score(&gw, trace).await;
        let ((version, trace_id, parent, flags), state) = upstream_trace(&upstream, &id).await;
        assert_eq!(version, "00");
        assert!(is_lower_hex(&trace_id, 32), "{trace_id}");
        assert_ne!(trace_id.to_lowercase(), TRACE);
        assert_eq!(flags, "01", "a trace the gateway starts is sampled");
        assert_eq!(
            state, None,
            "tracestate without a valid traceparent is dropped"
        );
        let record = gw.record_for(&id).await;
        assert_eq!(record["OperationId"], trace_id.as_str(), "{record}");
        assert_eq!(record["ParentId"], Value::Null, "{record}");
        assert_eq!(record["SpanId"], parent.as_str(), "{record}");
        traces.push(trace_id);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 4, "every new trace has its own id");
}

#[tokio::test]
async fn role_names_follow_the_service_and_refusals_are_named_too() {
    let upstream = MockUpstream::start().await;
    let gw = trace_gateway(&upstream).await;

    // A refused request (no key) is still a span of the caller's trace.
    let (status, headers, _) = send_json(
        gw.client()
            .post(gw.url(&format!("{IRIS}/score?secret=1")))
            .header("traceparent", format!("00-{TRACE}-{PARENT}-00")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let record = gw.record_for(header(&headers, "x-request-id")).await;
    assert_eq!(record["Name"], "POST /score", "{record}");
    assert_eq!(record["OperationId"], TRACE, "{record}");
    assert_eq!(record["ParentId"], PARENT, "{record}");
    assert_roles(&record, "iris-model");

    // No route: the whole path names the operation, and the gateway-wide role name applies.
    let (status, headers, _) = send_json(gw.client().get(gw.url("/nowhere/x?q=1"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let record = gw.record_for(header(&headers, "x-request-id")).await;
    assert_eq!(record["Name"], "GET /nowhere/x", "{record}");
    assert_roles(&record, "edge");

    // The route itself, without a trailing path: "/".
    let (status, headers, _) = send_json(gw.client().post(gw.url(OPEN)).body("{}")).await;
    assert_eq!(status, StatusCode::OK);
    let record = gw.record_for(header(&headers, "x-request-id")).await;
    assert_eq!(record["Name"], "POST /", "{record}");
    let instance = record["RoleInstance"].clone();

    // Activity entries: the service's role, the same instance.
    let (status, _, _) = gw
        .manage(Method::POST, "/services/iris/listkeys", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let entries = gw.activity(100).await;
    let listed = entries
        .iter()
        .find(|e| e["operationName"] == "listKeys")
        .expect("a listKeys entry");
    assert_eq!(listed["RoleName"], "iris-model", "{listed}");
    assert_eq!(listed["RoleInstance"], instance, "{listed}");
}
