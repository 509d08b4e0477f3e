use super::*;

/// A real connect error, produced against a closed loopback port.
async fn connect_error() -> crate::upstream::BoxError {
    // Bind and drop a listener so the port is very likely closed right now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind");
    tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("port is closed")
        .into()
}

/// A real HTTP/1.1 client error: the peer goes away before answering.
async fn protocol_error() -> hyper::Error {
    let (client, server) = tokio::io::duplex(64);
    drop(server);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(
            hyper_util::rt::TokioIo::new(client),
        )
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header(http::header::HOST, "x")
        .body(http_body_util::Empty::new())
        .expect("request");
    sender
        .send_request(req)
        .await
        .expect_err("the peer is gone")
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one row per variant
async fn every_variant_has_a_pinned_status_side_and_code() {
    let ms = Duration::from_millis;
    let cases: Vec<(GatewayError, u16, Side, &str)> = vec![
        (
            GatewayError::BadRequest("x"),
            400,
            Side::Client,
            "bad_request",
        ),
        (
            GatewayError::RouteNotFound,
            404,
            Side::Client,
            "route_not_found",
        ),
        (
            GatewayError::BodyTooLarge { limit: 1 },
            413,
            Side::Client,
            "payload_too_large",
        ),
        (
            GatewayError::ClientBodyTimeout { after: ms(5) },
            408,
            Side::Client,
            "request_body_timeout",
        ),
        (
            GatewayError::HeadersTooLarge {
                size: 70_000,
                limit: 65_536,
            },
            431,
            Side::Client,
            "request_header_fields_too_large",
        ),
        (
            GatewayError::ClientBodyTooSlow { min_rate: 500 },
            408,
            Side::Client,
            "request_body_too_slow",
        ),
        (
            GatewayError::ClientSendTimeout { after: ms(5) },
            408,
            Side::Client,
            "client_send_timeout",
        ),
        (
            GatewayError::RequestDeadline { after: ms(5) },
            408,
            Side::Client,
            "request_deadline_exceeded",
        ),
        (
            GatewayError::ClientDisconnected,
            499,
            Side::Client,
            "client_disconnected",
        ),
        (
            GatewayError::Unauthenticated(AuthFailure::Missing),
            401,
            Side::Auth,
            "missing_credentials",
        ),
        (
            GatewayError::Unauthenticated(AuthFailure::Invalid),
            401,
            Side::Auth,
            "invalid_credentials",
        ),
        (
            GatewayError::Unauthenticated(AuthFailure::TokenExpired),
            401,
            Side::Auth,
            "token_expired",
        ),
        (
            GatewayError::ClientNotAllowed,
            403,
            Side::Auth,
            "client_ip_not_allowed",
        ),
        (
            GatewayError::RateLimited {
                retry_after: ms(1500),
            },
            429,
            Side::Capacity,
            "rate_limited",
        ),
        (
            GatewayError::QueueFull { limit: 3 },
            503,
            Side::Capacity,
            "queue_full",
        ),
        (
            GatewayError::QueueTimeout { waited: ms(500) },
            503,
            Side::Capacity,
            "queue_wait_exceeded",
        ),
        (
            GatewayError::UpstreamConnect(connect_error().await),
            502,
            Side::Upstream,
            "upstream_unreachable",
        ),
        (
            GatewayError::UpstreamProtocol(protocol_error().await),
            502,
            Side::Upstream,
            "upstream_error",
        ),
        (
            GatewayError::UpstreamTimeout { after: ms(5) },
            504,
            Side::Upstream,
            "upstream_timeout",
        ),
        (
            GatewayError::UpstreamInterrupted,
            502,
            Side::Upstream,
            "upstream_interrupted",
        ),
        (
            GatewayError::UpstreamBodyTimeout { after: ms(5) },
            504,
            Side::Upstream,
            "upstream_body_timeout",
        ),
        (
            GatewayError::Internal("x"),
            500,
            Side::Internal,
            "internal_error",
        ),
    ];
    for (err, status, side, code) in cases {
        assert_eq!(err.status().as_u16(), status, "{err:?}");
        assert_eq!(err.side(), side, "{err:?}");
        assert_eq!(err.code(), code, "{err:?}");
    }
}

#[test]
fn body_is_the_documented_envelope() {
    let body = GatewayError::RouteNotFound.body("rid-1");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "route_not_found");
    assert_eq!(v["error"]["message"], "no service is routed at this path");
    assert_eq!(v["requestId"], "rid-1");
}

#[test]
fn unauthenticated_carries_www_authenticate() {
    let (name, value) = GatewayError::Unauthenticated(AuthFailure::Invalid)
        .extra_headers()
        .expect("header");
    assert_eq!(name, header::WWW_AUTHENTICATE);
    assert_eq!(value, "Bearer");
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    let (name, value) = GatewayError::RateLimited {
        retry_after: Duration::from_millis(1500),
    }
    .extra_headers()
    .expect("header");
    assert_eq!(
        (name, value),
        (header::RETRY_AFTER, HeaderValue::from_static("2"))
    );
    let (_, value) = GatewayError::QueueTimeout {
        waited: Duration::from_millis(500),
    }
    .extra_headers()
    .expect("header");
    assert_eq!(value, "1");
}
