//! The order of the admission phases, seen from outside: route → network rules (403) →
//! declared size (413) → authentication (401) → rate limit (429) → wait queue (503). Each test
//! sends a request that would fail two phases and checks that the earlier one answers.

use reqwest::StatusCode;

use crate::support::admin_api::Admin;
use crate::support::check::{assert_error_body, send_json};
use crate::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway};
use crate::{answer, spawn_get};

async fn post(
    gw: &TestGateway,
    route: &str,
    key: Option<&str>,
    bytes: usize,
) -> (StatusCode, String) {
    let mut req = gw
        .client()
        .post(gw.url(&format!("{route}/echo")))
        .body(vec![b'x'; bytes]);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let (status, headers, body) = send_json(req).await;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !status.is_success() {
        assert_error_body(&headers, &body, &code);
    }
    (status, code)
}

#[tokio::test]
async fn network_rules_then_size_then_authentication_then_rate_limit() {
    let upstream = MockUpstream::start().await;
    let keyed = "auth = \"key\"\nmax_body_bytes = 16\nrate_limit = { requests_per_second = 0.01, burst = 1 }";
    let gw = GatewayBuilder::new()
        .service_with(
            "blocked",
            "/blocked",
            &upstream.url(),
            &format!("{keyed}\nallow_cidrs = [\"10.0.0.0/8\"]"),
        )
        .service_with("keyed", "/keyed", &upstream.url(), keyed)
        .start()
        .await;
    let (key, _) = Admin::of(&gw).await.keys("keyed").await;

    let refused = |status: StatusCode, code: &str| (status, code.to_owned());
    // Network rule before size and authentication.
    assert_eq!(
        post(&gw, "/blocked", None, 100).await,
        refused(StatusCode::FORBIDDEN, "client_ip_not_allowed")
    );
    // Declared size before authentication.
    assert_eq!(
        post(&gw, "/keyed", None, 100).await,
        refused(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert_eq!(
        post(&gw, "/keyed", None, 4).await,
        refused(StatusCode::UNAUTHORIZED, "missing_credentials")
    );
    // Authentication before the rate limit: refused callers take no token.
    assert_eq!(
        post(&gw, "/keyed", Some("not-the-key"), 4).await,
        refused(StatusCode::UNAUTHORIZED, "invalid_credentials")
    );
    assert_eq!(post(&gw, "/keyed", Some(&key), 4).await.0, StatusCode::OK);
    assert_eq!(
        post(&gw, "/keyed", Some(&key), 4).await,
        refused(StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    // With the bucket empty, size and authentication still answer first.
    assert_eq!(
        post(&gw, "/keyed", Some(&key), 100).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        post(&gw, "/keyed", None, 4).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(upstream.requests().len(), 1, "{:?}", upstream.requests());
}

#[tokio::test]
async fn a_rate_limited_request_is_refused_without_joining_the_queue() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "max_concurrent_requests = 1\nmax_request_wait_ms = 30000\n\
             rate_limit = { requests_per_second = 0.01, burst = 2 }",
        )
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    let held = spawn_get(gw.client(), gw.url(&format!("{IRIS}/gate")));
    upstream.wait_gate_arrivals(1).await;
    let queued = spawn_get(gw.client(), gw.url(&format!("{IRIS}/echo")));
    admin.wait_waiting("iris", 1).await;

    // No token left: 429 at once, although the queue has room and the wait is 30 s.
    let (status, headers, body) = send_json(gw.client().get(gw.url(&format!("{IRIS}/echo")))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_error_body(&headers, &body, "rate_limited");
    assert_eq!(admin.service("iris").await["waiting"], 1);

    upstream.open_gate();
    assert_eq!(answer("held request", held).await.0, StatusCode::OK);
    assert_eq!(answer("queued request", queued).await.0, StatusCode::OK);
}
