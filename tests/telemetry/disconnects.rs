//! Requests whose client goes away (mid-body, while waiting, mid-response) and responses that
//! have no body: one record each, with an honest `ErrorCode`.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::support::check::header;
use super::support::pki::MODERN;
use super::support::upstream::BodyEnd;
use super::support::{MockUpstream, TestGateway, within};
use super::{assert_shape, assert_single_record, count, requests_series, telemetry_gateway};

/// Opens a TLS connection and writes `head` (and `body`) without finishing the request.
async fn start_raw_request(
    gw: &TestGateway,
    head: &str,
    body: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"http/1.1"])
        .await;
    within("write the request head", tls.write_all(head.as_bytes()))
        .await
        .expect("write head");
    within("write part of the body", tls.write_all(body))
        .await
        .expect("write body");
    within("flush", tls.flush()).await.expect("flush");
    tls
}

#[tokio::test]
async fn client_leaving_mid_body_is_recorded_once_as_client_disconnected() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let head = "POST /api/v1/service/open/echo HTTP/1.1\r\nHost: localhost\r\n\
                x-request-id: gone-mid-body\r\nContent-Length: 100000\r\n\r\n";
    let tls = start_raw_request(&gw, head, &[b'x'; 1000]).await;
    upstream
        .wait_for("part of the body to reach the upstream", |s| {
            s.header("x-request-id") == Some("gone-mid-body") && s.body.bytes >= 1000
        })
        .await;
    drop(tls);

    let record = gw.record_for("gone-mid-body").await;
    assert_shape(&record, "gone-mid-body");
    assert_eq!(record["ErrorCode"], "client_disconnected", "{record}");
    assert_eq!(record["StatusCode"], 499, "{record}");
    assert_eq!(record["Success"], false);
    assert_eq!(record["ServiceName"], "open");
    assert_eq!(record["RequestBytes"], 1000, "{record}");
    assert_eq!(record["UpstreamStatusCode"], Value::Null);
    let seen = upstream
        .wait_for("the upstream request to end", |s| {
            s.header("x-request-id") == Some("gone-mid-body") && s.body.end != BodyEnd::Open
        })
        .await;
    assert_eq!(
        seen.body.end,
        BodyEnd::Aborted,
        "the upstream body was cut off"
    );

    assert_eq!(count(&gw, &requests_series("open", "POST", "4xx")), 1);
    assert_eq!(
        count(
            &gw,
            r#"scoregate_upstream_errors_total{kind="upstream_error",service="open"}"#
        ),
        0,
        "the client's departure is not an upstream error"
    );
    assert_eq!(
        count(&gw, r#"scoregate_inflight_requests{service="open"}"#),
        0
    );
    assert_single_record(&gw, "gone-mid-body").await;
}

#[tokio::test]
async fn client_leaving_while_waiting_is_recorded_once_as_client_disconnected() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let head = "POST /api/v1/service/open/hang HTTP/1.1\r\nHost: localhost\r\n\
                x-request-id: gone-waiting\r\nContent-Length: 2\r\n\r\n";
    let tls = start_raw_request(&gw, head, b"{}").await;
    upstream
        .wait_for("the request to reach the upstream", |s| {
            s.header("x-request-id") == Some("gone-waiting")
        })
        .await;
    drop(tls);

    let record = gw.record_for("gone-waiting").await;
    assert_shape(&record, "gone-waiting");
    assert_eq!(record["ErrorCode"], "client_disconnected", "{record}");
    assert_eq!(record["StatusCode"], 499, "{record}");
    assert_eq!(record["UpstreamStatusCode"], Value::Null);
    assert_eq!(count(&gw, &requests_series("open", "POST", "4xx")), 1);
    assert_eq!(
        count(&gw, r#"scoregate_inflight_requests{service="open"}"#),
        0
    );
    assert_single_record(&gw, "gone-waiting").await;
}

#[tokio::test]
async fn responses_without_a_body_are_recorded_as_complete() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let mut wrong = Vec::new();
    for (what, client, method, path, status) in [
        (
            "204 from the upstream",
            gw.client(),
            Method::GET,
            "/api/v1/service/open/status?code=204",
            StatusCode::NO_CONTENT,
        ),
        (
            "304 from the upstream over HTTP/2",
            gw.h2_client(),
            Method::GET,
            "/api/v1/service/open/status?code=304",
            StatusCode::NOT_MODIFIED,
        ),
        (
            "HEAD",
            gw.client(),
            Method::HEAD,
            "/api/v1/service/open/echo",
            StatusCode::OK,
        ),
    ] {
        let resp = within(what, client.request(method, gw.url(path)).send())
            .await
            .expect("gateway answered");
        assert_eq!(resp.status(), status, "{what}");
        let id = header(resp.headers(), "x-request-id").to_owned();
        within("body", resp.bytes()).await.expect("body");
        let record = gw.record_for(&id).await;
        assert_eq!(record["StatusCode"], status.as_u16(), "{what}: {record}");
        assert_eq!(record["UpstreamStatusCode"], status.as_u16(), "{what}");
        assert_eq!(record["Success"], true, "{what}: {record}");
        // The client received the whole (empty) response.
        if record["ErrorCode"] != Value::Null {
            wrong.push(format!("{what}: ErrorCode {}", record["ErrorCode"]));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        count(&gw, r#"scoregate_inflight_requests{service="open"}"#),
        0
    );
}

#[tokio::test]
async fn client_leaving_mid_response_is_recorded_once_as_client_disconnected() {
    let upstream = MockUpstream::start().await;
    let gw = telemetry_gateway(&upstream).await;
    let total: u64 = 64 * 1024 * 1024;
    // HTTP/1.1: the connection closes; HTTP/2: only the stream is reset.
    for (client, id) in [
        (gw.client(), "gone-mid-response-h1"),
        (gw.h2_client(), "gone-mid-response-h2"),
    ] {
        let mut resp = within(
            "the response head",
            client
                .get(gw.url(&format!("/api/v1/service/open/stream?bytes={total}")))
                .header("x-request-id", id)
                .send(),
        )
        .await
        .expect("gateway answered");
        assert_eq!(resp.status(), StatusCode::OK);
        within("the first chunk", resp.chunk())
            .await
            .expect("a chunk")
            .expect("the body has data");
        drop(resp);

        let record = gw.record_for(id).await;
        assert_shape(&record, id);
        assert_eq!(record["ErrorCode"], "client_disconnected", "{record}");
        assert_eq!(record["StatusCode"], 200, "the status did go out: {record}");
        assert_eq!(record["UpstreamStatusCode"], 200);
        let sent = record["ResponseBytes"].as_u64().expect("ResponseBytes");
        assert!(sent > 0 && sent < total, "{record}");
        assert_single_record(&gw, id).await;
    }
    assert_eq!(
        count(&gw, r#"scoregate_inflight_requests{service="open"}"#),
        0
    );
}
