//! The request record of each outcome (success, 401, 404, 502, 504), every field and exactly one
//! per request, the metrics each outcome moves, and redaction of sensitive query parameters.

use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use serde_json::Value;

use super::support::check::{assert_error_body, header, send_json};
use super::support::{GatewayBuilder, MockUpstream, within};
use super::{
    OPEN, assert_shape, assert_single_record, count, duration_count, histogram_count, ms,
    requests_series, telemetry_gateway,
};

#[tokio::test]
async fn success_record_has_every_field_and_moves_the_request_metrics() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let (primary, _) = gw.list_keys("iris").await;
    let body = br#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

    let before = SystemTime::now();
    let started = Instant::now();
    let resp = within(
        "POST /score",
        gw.client()
            .post(gw.url("/api/v1/service/iris/score?x=1"))
            .bearer_auth(&primary)
            .header("x-ms-client-request-id", "client-side-7")
            .header("user-agent", "telemetry-test/1.0")
            .body(&body[..])
            .send(),
    )
    .await
    .expect("gateway answered");
    assert_eq!(resp.status(), StatusCode::OK);
    let id = header(resp.headers(), "x-request-id").to_owned();
    let received = within("body", resp.bytes()).await.expect("body");
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let after = SystemTime::now();

    let record = gw.record_for(&id).await;
    assert_shape(&record, &id);
    let ts =
        humantime::parse_rfc3339(record["timestamp"].as_str().expect("text")).expect("RFC 3339");
    assert!(
        ts + Duration::from_micros(1) >= before && ts <= after,
        "{record}"
    );
    assert_eq!(record["ClientRequestId"], "client-side-7");
    assert_eq!(record["HTTPMethod"], "POST");
    assert_eq!(record["RequestUrl"], "/api/v1/service/iris/score?x=1");
    assert_eq!(record["UserAgent"], "telemetry-test/1.0");
    assert_eq!(record["StatusCode"], 200);
    assert_eq!(record["Success"], true);
    assert_eq!(record["ServiceName"], "iris");
    assert_eq!(record["AuthMode"], "key");
    assert_eq!(record["Principal"], "primary");
    assert_eq!(record["UpstreamStatusCode"], 200);
    assert_eq!(record["RequestBytes"], body.len());
    assert_eq!(record["ResponseBytes"], received.len());
    assert_eq!(record["ErrorCode"], Value::Null);
    let (duration, upstream_ms, queue) = (
        ms(&record, "Duration"),
        ms(&record, "UpstreamDuration"),
        ms(&record, "QueueWait"),
    );
    assert!(duration > 0.0 && duration <= elapsed_ms, "{record}");
    assert!(upstream_ms > 0.0 && upstream_ms <= duration, "{record}");
    assert!(queue >= 0.0 && queue <= duration, "{record}");

    assert_eq!(count(&gw, &requests_series("iris", "POST", "2xx")), 1);
    assert_eq!(count(&gw, &duration_count("iris", "2xx")), 1);
    for name in ["upstream_duration", "queue_wait"] {
        assert_eq!(count(&gw, &histogram_count(name, "iris")), 1, "{name}");
    }
    assert_eq!(
        count(
            &gw,
            r#"scoregate_key_auth_total{service="iris",slot="primary"}"#
        ),
        1
    );
    assert_single_record(&gw, &id).await;
}

#[tokio::test]
async fn refused_request_record_and_metrics() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let resp = within(
        "POST without a key",
        gw.client()
            .post(gw.url("/api/v1/service/iris/score"))
            .body("{}")
            .send(),
    )
    .await
    .expect("gateway answered");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let id = header(resp.headers(), "x-request-id").to_owned();
    let received = within("body", resp.bytes()).await.expect("body");

    let record = gw.record_for(&id).await;
    assert_shape(&record, &id);
    assert_eq!(record["StatusCode"], 401);
    assert_eq!(record["Success"], false);
    assert_eq!(record["ServiceName"], "iris");
    assert_eq!(record["AuthMode"], "key");
    assert_eq!(record["Principal"], Value::Null);
    assert_eq!(record["ClientRequestId"], Value::Null);
    assert_eq!(record["UpstreamStatusCode"], Value::Null);
    assert_eq!(record["UpstreamDuration"], Value::Null);
    assert_eq!(record["QueueWait"], Value::Null, "refused before queueing");
    assert_eq!(record["RequestBytes"], 0);
    assert_eq!(record["ResponseBytes"], received.len());
    assert_eq!(record["ErrorCode"], "missing_credentials");

    assert_eq!(count(&gw, &requests_series("iris", "POST", "4xx")), 1);
    assert_eq!(
        count(
            &gw,
            r#"scoregate_auth_failures_total{reason="missing_credentials",service="iris"}"#
        ),
        1
    );
    assert_eq!(count(&gw, &duration_count("iris", "4xx")), 1);
    assert_eq!(count(&gw, &histogram_count("upstream_duration", "iris")), 0);
    assert!(upstream.requests().is_empty());
    assert_single_record(&gw, &id).await;
}

#[tokio::test]
async fn unrouted_request_record_and_metrics() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let (status, headers, body) = send_json(gw.client().get(gw.url("/nope?a=1"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let id = assert_error_body(&headers, &body, "route_not_found");

    let record = gw.record_for(&id).await;
    assert_shape(&record, &id);
    assert_eq!(record["StatusCode"], 404);
    assert_eq!(record["Success"], false);
    assert_eq!(record["HTTPMethod"], "GET");
    assert_eq!(record["RequestUrl"], "/nope?a=1");
    assert_eq!(record["ServiceName"], Value::Null);
    assert_eq!(record["AuthMode"], Value::Null);
    assert_eq!(record["Principal"], Value::Null);
    assert_eq!(record["UpstreamStatusCode"], Value::Null);
    assert_eq!(record["QueueWait"], Value::Null);
    assert_eq!(record["ErrorCode"], "route_not_found");

    assert_eq!(count(&gw, &requests_series("-", "GET", "4xx")), 1);
    assert_eq!(count(&gw, &duration_count("-", "4xx")), 1);
    assert_single_record(&gw, &id).await;
}

#[tokio::test]
async fn unreachable_upstream_record_and_metrics() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let (status, headers, body) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/down/score"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let id = assert_error_body(&headers, &body, "upstream_unreachable");

    let record = gw.record_for(&id).await;
    assert_shape(&record, &id);
    assert_eq!(record["StatusCode"], 502);
    assert_eq!(record["Success"], false);
    assert_eq!(record["ServiceName"], "down");
    assert_eq!(record["AuthMode"], "none");
    assert_eq!(record["Principal"], Value::Null);
    assert_eq!(record["UpstreamStatusCode"], Value::Null);
    assert_eq!(record["UpstreamDuration"], Value::Null, "never connected");
    assert!(ms(&record, "QueueWait") >= 0.0, "{record}");
    assert_eq!(record["ErrorCode"], "upstream_unreachable");

    assert_eq!(count(&gw, &requests_series("down", "POST", "5xx")), 1);
    assert_eq!(
        count(
            &gw,
            r#"scoregate_upstream_errors_total{kind="upstream_unreachable",service="down"}"#
        ),
        1
    );
    assert_eq!(count(&gw, &histogram_count("queue_wait", "down")), 1);
    assert_single_record(&gw, &id).await;
}

#[tokio::test]
async fn upstream_timeout_record_and_metrics() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let (status, headers, body) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/slow/hang"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let id = assert_error_body(&headers, &body, "upstream_timeout");

    let record = gw.record_for(&id).await;
    assert_shape(&record, &id);
    assert_eq!(record["StatusCode"], 504);
    assert_eq!(record["Success"], false);
    assert_eq!(record["ServiceName"], "slow");
    assert_eq!(record["UpstreamStatusCode"], Value::Null);
    assert!(ms(&record, "UpstreamDuration") >= 300.0, "{record}");
    assert!(ms(&record, "Duration") >= ms(&record, "UpstreamDuration"));
    assert_eq!(record["RequestBytes"], 2);
    assert_eq!(record["ErrorCode"], "upstream_timeout");

    assert_eq!(count(&gw, &requests_series("slow", "POST", "5xx")), 1);
    assert_eq!(
        count(
            &gw,
            r#"scoregate_upstream_errors_total{kind="upstream_timeout",service="slow"}"#
        ),
        1
    );
    assert_eq!(count(&gw, &histogram_count("upstream_duration", "slow")), 1);
    assert_single_record(&gw, &id).await;
}

#[tokio::test]
async fn sensitive_query_parameters_are_redacted_in_records_only() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let (status, headers, _) = send_json(
        gw.client()
            .get(gw.url("/api/v1/service/open/echo?code=x1&keep=1&Token=t2&sig")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = header(&headers, "x-request-id").to_owned();
    let record = gw.record_for(&id).await;
    assert_eq!(
        record["RequestUrl"], "/api/v1/service/open/echo?code=REDACTED&keep=1&Token=REDACTED&sig",
        "{record}"
    );
    let seen = upstream.requests().pop().expect("forwarded");
    assert_eq!(
        seen.query.as_deref(),
        Some("code=x1&keep=1&Token=t2&sig"),
        "the upstream gets the query unchanged"
    );

    // Spellings the application reads as sensitive names are redacted too (issue 15 item 10):
    // percent-encoded, `;`-separated, NUL-suffixed and bracketed names.
    let sent = "%63ode=c1&a=1;token=t1&token%00=t2&access_token[]=t3";
    let (status, headers, _) = send_json(
        gw.client()
            .get(gw.url(&format!("/api/v1/service/open/echo?{sent}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let record = gw.record_for(header(&headers, "x-request-id")).await;
    assert_eq!(
        record["RequestUrl"],
        "/api/v1/service/open/echo?%63ode=REDACTED&a=1;token=REDACTED&token%00=REDACTED\
         &access_token[]=REDACTED",
        "{record}"
    );
    assert_eq!(
        upstream
            .requests()
            .pop()
            .expect("forwarded")
            .query
            .as_deref(),
        Some(sent)
    );

    // A configured list replaces the defaults.
    let gw = GatewayBuilder::new()
        .service("open", OPEN, &upstream.url())
        .telemetry("redact_query_params = [\"session\"]")
        .start()
        .await;
    let (status, headers, _) = send_json(
        gw.client()
            .get(gw.url("/api/v1/service/open/echo?SESSION=s1&code=c1")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = header(&headers, "x-request-id").to_owned();
    assert_eq!(
        gw.record_for(&id).await["RequestUrl"],
        "/api/v1/service/open/echo?SESSION=REDACTED&code=c1"
    );
}
