//! Forwarding fidelity over real TLS: what the scoring container receives (method, rewritten
//! path, query, headers, body) and what the client gets back, over HTTP/1.1 and HTTP/2.
//! Gateway-made error responses are in `proxy_errors.rs`, large bodies in `streaming.rs`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use reqwest::{Method, StatusCode, Version};
use serde_json::Value;
use support::check::{header, is_uuid_v4, send_json};
use support::pattern::Fnv64;
use support::upstream::BodyEnd;
use support::wire::{self, RawResponse};
use support::{GatewayBuilder, IRIS, MockUpstream, iris_gateway, within};

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let body: &[u8] = br#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#;

    let resp = within(
        "POST /score",
        gw.client()
            .post(gw.url("/api/v1/service/iris/score?x=1&y=2"))
            .header("x-custom", "abc")
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .expect("POST through the gateway");
    assert_eq!(resp.status(), StatusCode::OK);
    let request_id = header(resp.headers(), "x-request-id").to_owned();
    let raw = within("response body", resp.bytes()).await.expect("body");
    let echo: Value = serde_json::from_slice(&raw).expect("echo JSON");

    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/score", "route prefix is stripped");
    assert_eq!(echo["query"], "x=1&y=2");
    assert_eq!(echo["headers"]["x-custom"], serde_json::json!(["abc"]));
    assert_eq!(
        echo["headers"]["content-type"],
        serde_json::json!(["application/json"])
    );
    assert_eq!(echo["bodyBytes"], body.len());
    assert_eq!(echo["bodyFnv"], Fnv64::of(body));

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "exactly one forwarded request: {seen:?}");
    assert_eq!(seen[0].path_and_query(), "/score?x=1&y=2");
    assert_eq!(seen[0].body.bytes, body.len() as u64);
    assert_eq!(seen[0].body.end, BodyEnd::Complete);

    let record = gw.record_for(&request_id).await;
    assert_eq!(record["HTTPMethod"], "POST");
    let url = record["RequestUrl"].as_str().expect("RequestUrl");
    assert!(url.starts_with("/api/v1/service/iris/score"), "{url}");
    assert_eq!(record["StatusCode"], 200);
    assert_eq!(record["Success"], true);
    assert_eq!(record["ServiceName"], "iris");
    assert_eq!(record["UpstreamStatusCode"], 200);
    assert_eq!(record["RequestBytes"], body.len());
    assert_eq!(record["ResponseBytes"], raw.len());
    assert_eq!(record["ClientIp"], "127.0.0.1");
    assert_eq!(record["ErrorCode"], Value::Null);
}

#[tokio::test]
async fn forwards_every_method_unchanged() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    for method in [
        Method::GET,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::from_bytes(b"BREW").expect("extension method"),
    ] {
        let (status, _, echo) = send_json(
            gw.client()
                .request(method.clone(), gw.url("/api/v1/service/iris/items/7")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{method}");
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["path"], "/items/7");
    }
}

#[tokio::test]
async fn upstream_base_path_is_prepended() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&format!("{}/base", upstream.url())).await;
    for (path, expected) in [
        ("/api/v1/service/iris/score?x=1", "/base/score?x=1"),
        ("/api/v1/service/iris", "/base/"),
        ("/api/v1/service/iris?q=2", "/base/?q=2"),
        ("/api/v1/service/iris/", "/base/"),
    ] {
        let (status, _, _) = send_json(gw.client().post(gw.url(path)).body("x")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let seen = upstream.requests().pop().expect("a forwarded request");
        assert_eq!(seen.path_and_query(), expected, "{path}");
    }
}

#[tokio::test]
async fn longest_route_wins_on_segment_boundaries() {
    let upstream = MockUpstream::start().await;
    let base = upstream.url();
    let gw = GatewayBuilder::new()
        .service("root", "/", &format!("{base}/root"))
        .service("iris", IRIS, &format!("{base}/iris"))
        .service(
            "iris-v2",
            "/api/v1/service/iris/v2",
            &format!("{base}/iris-v2"),
        )
        .start()
        .await;
    for (path, expected) in [
        ("/api/v1/service/iris/score", "/iris/score"),
        ("/api/v1/service/iris", "/iris/"),
        ("/api/v1/service/iris/v2/score", "/iris-v2/score"),
        ("/api/v1/service/iris/v2x/score", "/iris/v2x/score"),
        (
            "/api/v1/service/irisx/score",
            "/root/api/v1/service/irisx/score",
        ),
        ("/other", "/root/other"),
    ] {
        let (status, _, echo) = send_json(gw.client().get(gw.url(path))).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(echo["path"], expected, "{path}");
    }
}

/// The hop-by-hop headers a client sends, exactly as written on the wire.
fn hop_request(port: u16, path: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", format!("localhost:{port}"))
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("upgrade", "websocket")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("proxy-connection", "keep-alive")
        .header("x-keep", "yes")
        .body(Full::new(Bytes::from_static(b"hop")))
        .expect("request")
}

const CLIENT_HOP: [&str; 7] = [
    "connection",
    "x-drop-me",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
];

#[tokio::test]
async fn hop_by_hop_headers_are_removed_towards_the_upstream() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;

    // Control: sent straight to the mock, every one of these headers arrives, so their absence
    // below is the gateway's doing, not the client's.
    let direct = wire::send_h1_plain(upstream.addr(), hop_request(0, "/echo")).await;
    let direct: Value = serde_json::from_slice(direct.body()).expect("echo JSON");
    for name in CLIENT_HOP {
        assert!(
            direct["headers"][name].is_array(),
            "control lacks {name}: {direct}"
        );
    }

    let port = gw.scoring_addr.port();
    let resp = wire::send_h1(
        gw.pki(),
        gw.scoring_addr,
        hop_request(port, "/api/v1/service/iris/echo"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = serde_json::from_slice(resp.body()).expect("echo JSON");
    for name in CLIENT_HOP {
        assert!(
            echo["headers"][name].is_null(),
            "{name} reached the upstream: {echo}"
        );
    }
    assert_eq!(echo["headers"]["x-keep"], serde_json::json!(["yes"]));
    assert_eq!(echo["bodyBytes"], 3);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_towards_the_client() {
    const UPSTREAM_HOP: [&str; 5] = [
        "x-upstream-hop",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "connection",
    ];
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let get = |port: u16, path: &str| {
        Request::get(path)
            .header("host", format!("localhost:{port}"))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };

    let direct = wire::send_h1_plain(upstream.addr(), get(0, "/hop")).await;
    for name in UPSTREAM_HOP {
        assert!(direct.headers().contains_key(name), "control lacks {name}");
    }

    let port = gw.scoring_addr.port();
    let resp = wire::send_h1(
        gw.pki(),
        gw.scoring_addr,
        get(port, "/api/v1/service/iris/hop"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for name in UPSTREAM_HOP {
        assert!(
            !resp.headers().contains_key(name),
            "{name} reached the client: {:?}",
            resp.headers()
        );
    }
    assert_eq!(resp.headers()["x-normal"], "yes");
    assert_eq!(resp.body().as_ref(), b"hop");
}

#[tokio::test]
async fn forwarding_headers_are_set_by_the_gateway_not_the_client() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let (status, _, echo) = send_json(
        gw.client()
            .get(gw.url("/api/v1/service/iris/score"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", "evil.example"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]));
    let client_host = format!("localhost:{}", gw.scoring_addr.port());
    assert_eq!(h["x-forwarded-host"], serde_json::json!([client_host]));
    assert_eq!(h["host"], serde_json::json!([upstream.addr().to_string()]));
}

#[tokio::test]
async fn request_ids_are_kept_when_valid_and_replaced_otherwise() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let hundred = "r".repeat(100);
    let cases = [
        (Some("rid-0123_abc.XYZ~!"), true),
        (Some(hundred.as_str()), true),
        (Some(&*"r".repeat(101)), false),
        (Some("has space"), false),
        (None, false),
    ];
    for (sent, kept) in cases {
        let mut req = gw
            .client()
            .post(gw.url("/api/v1/service/iris/score"))
            .body("{}");
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let (status, headers, echo) = send_json(req).await;
        assert_eq!(status, StatusCode::OK);
        let id = header(&headers, "x-request-id").to_owned();
        if kept {
            assert_eq!(Some(id.as_str()), sent, "valid id kept");
        } else {
            assert!(is_uuid_v4(&id), "{sent:?} replaced by a UUIDv4, got {id:?}");
        }
        assert_eq!(header(&headers, "x-ms-request-id"), id);
        assert_eq!(echo["headers"]["x-request-id"], serde_json::json!([id]));
        assert_eq!(gw.record_for(&id).await["StatusCode"], 200);
    }
}

#[tokio::test]
async fn client_request_id_is_echoed_and_forwarded() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let (status, headers, echo) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/score"))
            .header("x-ms-client-request-id", "client-abc-1")
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-ms-client-request-id"), "client-abc-1");
    assert_eq!(
        echo["headers"]["x-ms-client-request-id"],
        serde_json::json!(["client-abc-1"])
    );
    let record = gw.record_for(header(&headers, "x-request-id")).await;
    assert_eq!(record["ClientRequestId"], "client-abc-1");

    // Without one, the response carries none.
    let (_, headers, _) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/score"))
            .body("{}"),
    )
    .await;
    assert!(!headers.contains_key("x-ms-client-request-id"));
}

#[tokio::test]
async fn http2_clients_are_served_over_h2() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let body: &[u8] = b"{\"data\": [[6.9, 3.1, 5.8, 2.3]]}";
    let resp = within(
        "h2 POST",
        gw.h2_client()
            .post(gw.url("/api/v1/service/iris/score?x=1"))
            .header("x-custom", "h2")
            .body(body)
            .send(),
    )
    .await
    .expect("h2 request");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let id = header(resp.headers(), "x-request-id").to_owned();
    assert_eq!(header(resp.headers(), "x-ms-request-id"), id);
    let echo: Value = within("h2 body", resp.json()).await.expect("echo JSON");
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "upstream is spoken to in HTTP/1.1"
    );
    assert_eq!(echo["path"], "/score");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["x-custom"], serde_json::json!(["h2"]));
    assert_eq!(
        echo["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );
    let authority = format!("localhost:{}", gw.scoring_addr.port());
    assert_eq!(
        echo["headers"]["x-forwarded-host"],
        serde_json::json!([authority])
    );
    assert_eq!(echo["bodyFnv"], Fnv64::of(body));
}

#[tokio::test]
async fn dot_segments_cannot_escape_the_upstream_base_path() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&format!("{}/base", upstream.url())).await;
    // reqwest normalises `..` away; only raw bytes reach the gateway unchanged.
    let mut tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, support::pki::MODERN, &[b"http/1.1"])
        .await;
    let req = "GET /api/v1/service/iris/../../../secret HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let raw = RawResponse::parse(&wire::exchange(&mut tls, req.as_bytes()).await);
    match upstream.requests().pop() {
        // Refusing the path is fine...
        None => assert!((400..500).contains(&raw.status), "status {}", raw.status),
        // ...and so is forwarding it normalised, inside the base path.
        Some(seen) => {
            assert!(
                !seen.path.split('/').any(|s| s == ".." || s == "."),
                "the upstream received dot segments: {}",
                seen.path
            );
            assert!(seen.path.starts_with("/base/"), "{}", seen.path);
        }
    }
}

#[tokio::test]
async fn request_record_redacts_sensitive_query_values() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let (status, headers, _) = send_json(
        gw.client()
            .post(gw.url("/api/v1/service/iris/score?code=secret-value-123"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let record = gw.record_for(header(&headers, "x-request-id")).await;
    let url = record["RequestUrl"].as_str().expect("RequestUrl");
    // The issue's contract: path and query as received, sensitive values replaced.
    assert_eq!(url, "/api/v1/service/iris/score?code=REDACTED");
}
