//! `unix:` upstreams: a scoring container listening on a Unix socket (gunicorn `--bind unix:`,
//! uvicorn `--uds`), reached over real TLS from the client and a real Unix socket to the
//! container. Pooling, health probes, forwarded headers, base paths, records and errors behave
//! as for a TCP upstream.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use reqwest::StatusCode;
use support::check::{assert_error_body, send_json};
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until, within};

const OPENED: &str = r#"scoregate_upstream_connections_total{service="iris"}"#;

/// A gateway in front of `upstream` that probes its health every `interval_ms`.
async fn gateway(upstream: &str, interval_ms: u64) -> TestGateway {
    GatewayBuilder::new()
        .server(&format!("health_interval_ms = {interval_ms}"))
        .service("iris", IRIS, upstream)
        .start()
        .await
}

/// POSTs `body` to the iris route `path` through `gw`; the response, whatever its status.
async fn post(gw: &TestGateway, what: &str, path: &str, body: &'static str) -> reqwest::Response {
    within(
        what,
        gw.client()
            .post(gw.url(&format!("/api/v1/service/iris{path}")))
            .body(body)
            .send(),
    )
    .await
    .expect("gateway answered")
}

#[tokio::test]
async fn a_unix_socket_upstream_is_probed_pooled_and_forwarded_to() {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = MockUpstream::start_unix(&dir.path().join("model.sock")).expect("bind socket");
    let gw = gateway(&upstream.url(), 600_000).await;
    // Ready only once a health probe over the socket has answered.
    gw.wait_ready().await;
    assert!(
        upstream.probe_count() >= 1,
        "the health probe went over the socket"
    );
    let opened = gw.counter(OPENED);

    let mut ids = Vec::new();
    for _ in 0..3 {
        let resp = post(
            &gw,
            "POST through the gateway",
            "/score?verbose=1",
            r#"{"data":[[1,2,3,4]]}"#,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        ids.push(
            resp.headers()["x-request-id"]
                .to_str()
                .expect("ASCII id")
                .to_owned(),
        );
    }

    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    // One connection over the socket, reused by every request.
    assert!(seen.iter().all(|s| s.conn == seen[0].conn), "{seen:?}");
    assert_eq!(gw.counter(OPENED), opened + 1);
    let first = &seen[0];
    assert_eq!(first.path_and_query(), "/score?verbose=1");
    assert_eq!(first.header("host"), Some("localhost"));
    assert_eq!(first.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(first.header("x-forwarded-proto"), Some("https"));
    assert_eq!(first.header("x-request-id"), Some(ids[0].as_str()));
    assert_eq!(first.body.bytes, 20);

    let record = gw.record_for(&ids[2]).await;
    assert_eq!(record["StatusCode"], 200, "{record}");
    assert_eq!(record["UpstreamStatusCode"], 200, "{record}");
    assert_eq!(record["Success"], true, "{record}");
    assert_eq!(record["ServiceName"], "iris", "{record}");
}

#[tokio::test]
async fn a_base_path_follows_the_socket_path_after_a_colon() {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = MockUpstream::start_unix(&dir.path().join("model.sock")).expect("bind socket");
    let gw = gateway(&format!("{}:/v2/models/iris/", upstream.url()), 600_000).await;
    gw.wait_ready().await;

    let resp = post(&gw, "POST through the gateway", "/score", "{}").await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The health probe went to the base path too (`GET /v2/models/iris/`).
    let posts: Vec<String> = upstream
        .requests()
        .iter()
        .filter(|s| s.method == http::Method::POST)
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(posts, ["/v2/models/iris/score"]);
}

/// In a pod the gateway may start before the container has created its socket: until then
/// scoring answers 502 `upstream_unreachable` and `/readyz` is not
/// ready; once the container listens, both recover without a reload.
#[tokio::test]
async fn a_socket_that_appears_later_is_used_once_it_is_there() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.sock");
    let gw = gateway(&format!("unix:{}", path.display()), 100).await;

    let (status, headers, body) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/score"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let id = assert_error_body(&headers, &body, "upstream_unreachable");
    assert_eq!(
        gw.record_for(&id).await["ErrorCode"],
        "upstream_unreachable"
    );
    assert_eq!(
        gw.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let upstream = MockUpstream::start_unix(&path).expect("bind socket");
    gw.wait_ready().await;
    let resp = post(&gw, "POST once the socket is there", "/score", "{}").await;
    assert_eq!(resp.status(), StatusCode::OK);
    wait_until("the request to reach the container", || async {
        upstream.requests().len() == 1
    })
    .await;
}

/// The scoring timeout applies over a socket as over TCP: a container that does not answer is
/// 504 `upstream_timeout`, its connection is dropped (not pooled with an exchange in flight), and
/// the next request goes out on a new connection.
#[tokio::test]
async fn a_silent_container_on_a_socket_is_504_and_its_connection_is_not_reused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = MockUpstream::start_unix(&dir.path().join("model.sock")).expect("bind socket");
    let gw = GatewayBuilder::new()
        .server("health_interval_ms = 600000")
        .service_with("iris", IRIS, &upstream.url(), "scoring_timeout_ms = 300")
        .start()
        .await;
    gw.wait_ready().await;

    let (status, headers, body) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/hang"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let id = assert_error_body(&headers, &body, "upstream_timeout");
    assert_eq!(gw.record_for(&id).await["ErrorCode"], "upstream_timeout");
    let opened = gw.counter(OPENED);

    let (status, _, _) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/score"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gw.counter(OPENED), opened + 1, "a new connection");
    let seen = upstream.requests();
    let hang = seen
        .iter()
        .find(|s| s.path == "/hang")
        .expect("the hung request");
    let score = seen
        .iter()
        .find(|s| s.path == "/score")
        .expect("the next one");
    assert_ne!(hang.conn, score.conn);
}
