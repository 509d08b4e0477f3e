//! Per-caller token buckets (`rate_limit = { requests_per_second, burst }`): the burst passes,
//! the next request gets 429 with `Retry-After`, the bucket refills, and each key slot (or, for
//! anonymous callers, each client address) has a bucket of its own.
//!
//! Timing: at 2 requests per second a token takes 500 ms to refill, far longer than three
//! requests on a warm connection take, so "the burst is used up" holds without racing the clock;
//! the refill itself is awaited by polling.

use reqwest::StatusCode;

use crate::support::admin_api::Admin;
use crate::support::check::{assert_error_body, header, send_json};
use crate::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until};

async fn call(gw: &TestGateway, key: Option<&str>, xff: Option<&str>) -> StatusCode {
    let mut req = gw.client().get(gw.url(&format!("{IRIS}/echo")));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    send_json(req).await.0
}

#[tokio::test]
async fn a_key_slot_gets_429_after_its_burst_and_is_served_again_after_refill() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "auth = \"key\"\nrate_limit = { requests_per_second = 2.0, burst = 2 }",
        )
        .start()
        .await;
    let (primary, secondary) = Admin::of(&gw).await.keys("iris").await;

    assert_eq!(call(&gw, Some(&primary), None).await, StatusCode::OK);
    assert_eq!(call(&gw, Some(&primary), None).await, StatusCode::OK);
    let (status, headers, body) = send_json(
        gw.client()
            .get(gw.url(&format!("{IRIS}/echo")))
            .bearer_auth(&primary),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let id = assert_error_body(&headers, &body, "rate_limited");
    // Under a second to the next token, rounded up to whole seconds.
    assert_eq!(header(&headers, "retry-after"), "1");
    let record = gw.record_for(&id).await;
    assert_eq!(record["ErrorCode"], "rate_limited");
    assert_eq!(record["Principal"], "primary");
    assert_eq!(
        upstream.requests().len(),
        2,
        "the refused request was not forwarded"
    );

    // The secondary key has a bucket of its own.
    assert_eq!(call(&gw, Some(&secondary), None).await, StatusCode::OK);
    assert_eq!(call(&gw, Some(&secondary), None).await, StatusCode::OK);
    assert_eq!(
        call(&gw, Some(&secondary), None).await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // A refused attempt takes no token, so polling does not starve the refill.
    wait_until("the primary key's bucket to refill", || async {
        call(&gw, Some(&primary), None).await == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn anonymous_callers_have_a_bucket_per_client_address() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "rate_limit = { requests_per_second = 0.01, burst = 1 }",
        )
        .start()
        .await;
    let (a, b) = (Some("203.0.113.1"), Some("203.0.113.2"));
    assert_eq!(call(&gw, None, a).await, StatusCode::OK);
    assert_eq!(call(&gw, None, a).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        call(&gw, None, b).await,
        StatusCode::OK,
        "another client, another bucket"
    );
    assert_eq!(
        call(&gw, None, None).await,
        StatusCode::OK,
        "the proxy's own address too"
    );
    assert_eq!(call(&gw, None, b).await, StatusCode::TOO_MANY_REQUESTS);
}
