//! Network rules: `allow_cidrs` per service for IPv4 and IPv6 clients, `admin_allow_cidrs` on the
//! admin listener, and whose `X-Forwarded-For` is believed (`trusted_proxies`). IPv6 clients come
//! from a second gateway bound on `[::1]:0`, with the same configuration as the IPv4 one.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::check::{assert_error_body, header, send_json};
use crate::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway};

/// Two services on one upstream: `v4` admits only IPv4 loopback, `v6` only IPv6 loopback.
fn by_family(builder: GatewayBuilder, upstream: &MockUpstream) -> GatewayBuilder {
    builder
        .service_with(
            "v4",
            "/v4",
            &upstream.url(),
            "allow_cidrs = [\"127.0.0.0/8\"]",
        )
        .service_with("v6", "/v6", &upstream.url(), "allow_cidrs = [\"::1/128\"]")
}

#[tokio::test]
async fn allow_cidrs_admit_ipv4_and_ipv6_clients_by_family() {
    let upstream = MockUpstream::start().await;
    let gw4 = by_family(GatewayBuilder::new(), &upstream).start().await;
    let gw6 = by_family(GatewayBuilder::new().ipv6_loopback(), &upstream)
        .start()
        .await;
    assert!(gw6.scoring_addr.is_ipv6(), "{}", gw6.scoring_addr);

    for (gw, allowed, refused, ip) in [
        (&gw4, "/v4", "/v6", "127.0.0.1"),
        (&gw6, "/v6", "/v4", "::1"),
    ] {
        let (status, headers, echo) =
            send_json(gw.client().get(gw.url(&format!("{allowed}/echo")))).await;
        assert_eq!(status, StatusCode::OK, "{ip} calling {allowed}");
        assert_eq!(echo["headers"]["x-forwarded-for"][0], ip);
        let record = gw.record_for(header(&headers, "x-request-id")).await;
        assert_eq!(record["ClientIp"], ip);

        // Refused before authentication or any upstream contact.
        let (status, headers, body) =
            send_json(gw.client().get(gw.url(&format!("{refused}/echo")))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{ip} calling {refused}");
        let id = assert_error_body(&headers, &body, "client_ip_not_allowed");
        let record = gw.record_for(&id).await;
        assert_eq!(record["ClientIp"], ip);
        assert_eq!(record["ErrorCode"], "client_ip_not_allowed");
    }
    assert_eq!(
        upstream.requests().len(),
        2,
        "only the admitted requests were forwarded"
    );
}

#[tokio::test]
async fn admin_allow_cidrs_refuse_other_addresses_with_403() {
    let upstream = MockUpstream::start().await;
    let only_v6 = |b: GatewayBuilder| {
        b.server("admin_allow_cidrs = [\"::1/128\"]")
            .service("iris", IRIS, &upstream.url())
    };
    let gw4 = only_v6(GatewayBuilder::new()).start().await;
    let gw6 = only_v6(GatewayBuilder::new().ipv6_loopback()).start().await;

    // Network rules come before anything else on the admin listener, probes included.
    for path in ["/healthz", "/readyz", "/services", "/reload"] {
        let (status, body) = gw4.admin_get(path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "client_ip_not_allowed", "{path}");
    }
    assert_eq!(gw6.admin_get("/healthz").await.0, StatusCode::OK);
    gw6.wait_ready().await;
    // The scoring listener is not covered by the admin rule.
    let (status, _, _) = send_json(gw4.client().get(gw4.url(&format!("{IRIS}/echo")))).await;
    assert_eq!(status, StatusCode::OK);
}

async fn echo_with_xff(gw: &TestGateway, xff: Option<&str>) -> (StatusCode, Value, Value) {
    let mut req = gw.client().get(gw.url(&format!("{IRIS}/echo")));
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    let (status, headers, body) = send_json(req).await;
    let record = gw.record_for(header(&headers, "x-request-id")).await;
    (status, body, record)
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let (status, echo, record) = echo_with_xff(&gw, Some("203.0.113.9")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["ClientIp"], "127.0.0.1");
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"]),
        "the spoofed chain is replaced, not extended"
    );

    // Nor does a spoofed address get past a network rule.
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "allow_cidrs = [\"203.0.113.0/24\"]",
        )
        .start()
        .await;
    let (status, body, record) = echo_with_xff(&gw, Some("203.0.113.9")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(record["ClientIp"], "127.0.0.1");
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_names_the_client_and_is_extended() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "allow_cidrs = [\"203.0.113.0/24\"]",
        )
        .start()
        .await;

    let (status, echo, record) = echo_with_xff(&gw, Some("203.0.113.9")).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(record["ClientIp"], "203.0.113.9");
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        serde_json::json!(["203.0.113.9, 127.0.0.1"]),
        "the trusted proxy's chain is extended with the proxy"
    );

    // The right-most untrusted hop is the client: a spoofed left-most entry does not help.
    let (status, _, record) = echo_with_xff(&gw, Some("203.0.113.50, 198.51.100.7")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(record["ClientIp"], "198.51.100.7");
    assert_eq!(record["ErrorCode"], "client_ip_not_allowed");

    // Without the header the proxy itself is the client, and it is not on the allow list.
    let (status, _, record) = echo_with_xff(&gw, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(record["ClientIp"], "127.0.0.1");
    assert_eq!(upstream.requests().len(), 1);
}

/// Some proxies (`HAProxy`'s `option forwardfor`) add their own `X-Forwarded-For` field line
/// instead of appending to the client's. RFC 9110 §5.3: several field lines mean their values
/// joined in order, so the chain below is `203.0.113.50, 198.51.100.7` and the client is the
/// right-most untrusted hop, 198.51.100.7, which the allow list refuses.
#[tokio::test]
async fn forwarded_for_split_over_several_lines_is_read_as_one_chain() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "allow_cidrs = [\"203.0.113.0/24\"]",
        )
        .start()
        .await;
    let req = http::Request::get(gw.url(&format!("{IRIS}/echo")))
        .header("host", "localhost")
        .header("x-request-id", "two-lines")
        // Sent by the client (spoofed, inside the allowed range) ...
        .header("x-forwarded-for", "203.0.113.50")
        // ... and added by the trusted proxy: the real client.
        .header("x-forwarded-for", "198.51.100.7")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = crate::support::wire::send_h1(gw.pki(), gw.scoring_addr, req).await;
    let record = gw.record_for("two-lines").await;
    assert_eq!(record["ClientIp"], "198.51.100.7", "{record}");
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "the real client is not allowed"
    );
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}
