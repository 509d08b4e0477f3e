//! The admin listener: liveness, readiness that follows the upstream's health probe, and the
//! JSON error for anything else. It never serves scoring traffic.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::process::free_port;
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until, within};

const HEALTHY_GAUGE: &str = r#"scoregate_upstream_healthy{service="iris"}"#;

async fn admin_status(gw: &TestGateway, path: &str) -> StatusCode {
    gw.admin_get(path).await.0
}

#[tokio::test]
async fn healthz_answers_200() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let (status, body) = gw.admin_get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_follows_the_upstream_health_probe() {
    // The upstream's port is chosen but nothing listens there yet (a cold-starting container).
    let upstream_addr = free_port();
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &format!("http://{upstream_addr}"),
            "", // default health_path "/"
        )
        .server("health_interval_ms = 50")
        .start()
        .await;
    wait_until("a first failed health probe", || async {
        gw.metric(HEALTHY_GAUGE) == Some(0.0)
    })
    .await;
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body,
        json!({"status": "not_ready", "listening": true, "draining": false,
               "services": [{"name": "iris", "healthy": false}]})
    );

    // The container comes up on that port: readiness follows.
    let upstream = MockUpstream::start_on(upstream_addr)
        .await
        .expect("bind the upstream port the gateway probes");
    gw.wait_ready().await;
    let (_, body) = gw.admin_get("/readyz").await;
    assert_eq!(
        body,
        json!({"status": "ready", "listening": true, "draining": false,
               "services": [{"name": "iris", "healthy": true}]})
    );
    assert!(upstream.probe_count() >= 1, "the gateway probed GET /");
    assert_eq!(gw.metric(HEALTHY_GAUGE), Some(1.0));

    // And it goes away again.
    drop(upstream);
    wait_until("/readyz to answer 503 after the upstream died", || async {
        admin_status(&gw, "/readyz").await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
}

#[tokio::test]
async fn readyz_probes_the_configured_health_path() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "health_path = \"/status?code=503\"",
        )
        .start()
        .await;
    wait_until("a first health probe", || async {
        gw.metric(HEALTHY_GAUGE).is_some()
    })
    .await;
    assert_eq!(
        gw.metric(HEALTHY_GAUGE),
        Some(0.0),
        "a 503 probe answer is unhealthy"
    );
    assert_eq!(
        admin_status(&gw, "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let probe = upstream
        .wait_for("the health probe", |s| s.path == "/status")
        .await;
    assert_eq!(probe.query.as_deref(), Some("code=503"));
}

#[tokio::test]
async fn unknown_admin_routes_are_404_json() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    // Scoring paths included: the admin listener never proxies.
    for path in ["/nope", "/api/v1/service/iris/score", "/healthz/extra"] {
        let resp = within(
            "admin request",
            gw.admin_client().get(gw.admin_url(path)).send(),
        )
        .await
        .expect("admin answered");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let id = resp.headers()["x-request-id"]
            .to_str()
            .expect("text")
            .to_owned();
        let body: serde_json::Value = within("admin body", resp.json()).await.expect("JSON");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
        assert_eq!(body["requestId"], id);
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());

    let resp = within(
        "POST /readyz",
        gw.admin_client().post(gw.admin_url("/readyz")).send(),
    )
    .await
    .expect("admin answered");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: serde_json::Value = within("admin body", resp.json()).await.expect("JSON");
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
