//! The split admin plane: `probe_listen` serves only the probes and `metrics_listen` only
//! `/metrics`, both without a credential, while the management API stays on `admin_listen`
//! behind its credential and `admin_allow_cidrs`; and `scoregate probe`, the health check the
//! distroless image runs, against those listeners.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use support::admin_api::Admin;
use support::process::{free_port, run};
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, within};

/// `method http://addr{path}` without a credential: status and body text.
async fn plain(
    gw: &TestGateway,
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> (StatusCode, String) {
    let url = format!("http://{addr}{path}");
    let resp = within(
        &format!("{method} {url}"),
        gw.admin_client().request(method.clone(), &url).send(),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status();
    let body = within("body", resp.text()).await.expect("body");
    (status, body)
}

async fn split_gateway(upstream: &MockUpstream, extra_server: &str) -> TestGateway {
    let mut builder = GatewayBuilder::new().split_admin_plane().service_with(
        "iris",
        IRIS,
        &upstream.url(),
        "auth = \"key\"",
    );
    if !extra_server.is_empty() {
        builder = builder.server(extra_server);
    }
    builder.start().await
}

#[tokio::test]
async fn probe_listener_serves_the_probes_and_nothing_else() {
    let upstream = MockUpstream::start().await;
    let gw = split_gateway(&upstream, "").await;
    gw.wait_ready().await;
    let probe = gw.probe_addr.expect("probe listener");
    for path in ["/healthz", "/livez", "/readyz"] {
        let (status, body) = plain(&gw, probe, Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let (_, body) = plain(&gw, probe, Method::GET, "/readyz").await;
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readiness is JSON");
    assert_eq!(ready["status"], "ready");
    for (method, path) in [
        (Method::GET, "/metrics"),
        (Method::GET, "/services"),
        (Method::POST, "/services/iris/listkeys"),
        (Method::POST, "/services/iris/regenerateKeys"),
        (Method::GET, "/activity"),
        (Method::POST, "/reload"),
        (Method::GET, "/roles"),
        (Method::GET, "/role-assignments"),
        (Method::GET, "/api/v1/service/iris/score"),
    ] {
        let (status, body) = plain(&gw, probe, method.clone(), path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert!(body.contains(r#""code":"not_found""#), "{body}");
    }
    let (status, _) = plain(&gw, probe, Method::POST, "/readyz").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_listener_serves_metrics_without_a_credential_and_nothing_else() {
    let upstream = MockUpstream::start().await;
    let gw = split_gateway(&upstream, "").await;
    let metrics = gw.metrics_addr.expect("metrics listener");
    let (status, text) = plain(&gw, metrics, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("scoregate_build_info{version="), "{text}");
    for (method, path) in [
        (Method::GET, "/healthz"),
        (Method::GET, "/readyz"),
        (Method::GET, "/services"),
        (Method::POST, "/services/iris/listkeys"),
        (Method::GET, "/activity"),
    ] {
        let (status, body) = plain(&gw, metrics, method.clone(), path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    // The admin listener still asks for a credential (public_metrics is off).
    let (status, _) = plain(&gw, gw.admin_addr, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn admin_allow_cidrs_guards_the_management_api_not_the_probe_and_metrics_ports() {
    let upstream = MockUpstream::start().await;
    let gw = split_gateway(&upstream, "admin_allow_cidrs = [\"192.0.2.0/24\"]").await;
    // Requests come from 127.0.0.1, outside the admin allow list.
    let (status, _) = plain(&gw, gw.admin_addr, Method::GET, "/healthz").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = plain(&gw, gw.probe_addr.expect("probe"), Method::GET, "/livez").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = plain(
        &gw,
        gw.metrics_addr.expect("metrics"),
        Method::GET,
        "/metrics",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unauthenticated_metrics_carry_no_secret() {
    let upstream = MockUpstream::start().await;
    let gw = split_gateway(&upstream, "").await;
    gw.wait_ready().await;
    let admin = Admin::of(&gw).await;
    let (primary, secondary) = admin.keys("iris").await;
    let score = gw.url("/api/v1/service/iris/score");
    for credential in [
        primary.as_str(),
        secondary.as_str(),
        "a-wrong-key-of-some-length-xyz",
    ] {
        within(
            "score",
            gw.client()
                .post(&score)
                .bearer_auth(credential)
                .body("{}")
                .send(),
        )
        .await
        .expect("scoring answered");
    }
    let token = support::admin_http::read_admin_token(&gw.dir().join("state"));
    let (status, text) = plain(
        &gw,
        gw.metrics_addr.expect("metrics"),
        Method::GET,
        "/metrics",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(r#"scoregate_key_auth_total{service="iris",slot="secondary"} 1"#),
        "{text}"
    );
    for (what, secret) in [
        ("primary key", primary.as_str()),
        ("secondary key", secondary.as_str()),
        ("admin credential", token.as_str()),
        ("refused key", "a-wrong-key-of-some-length-xyz"),
    ] {
        assert!(!text.contains(&secret[..16]), "{what} in /metrics");
    }
}

#[tokio::test]
async fn probe_command_exits_0_when_ready_and_1_otherwise() {
    let upstream = MockUpstream::start().await;
    // `iris` is ready; nothing listens behind `down`, so the gateway is alive but not ready.
    let gw = split_gateway(&upstream, "").await;
    gw.wait_ready().await;
    let probe = gw.probe_addr.expect("probe listener").to_string();
    let limit = Duration::from_secs(15);
    let ok = run(&["probe", "--address", &probe], limit).await;
    assert!(ok.status.success(), "{ok:?}");
    assert!(ok.stdout.contains("/readyz: 200 OK"), "{ok:?}");

    let down = GatewayBuilder::new()
        .split_admin_plane()
        .service("down", IRIS, &format!("http://{}", free_port()))
        .start()
        .await;
    let probe = down.probe_addr.expect("probe listener").to_string();
    let alive = run(&["probe", "--address", &probe, "--path", "/livez"], limit).await;
    assert!(alive.status.success(), "{alive:?}");
    let not_ready = run(&["probe", "--address", &probe], limit).await;
    assert_eq!(not_ready.status.code(), Some(1), "{not_ready:?}");
    assert!(not_ready.stderr.contains("unhealthy: 503"), "{not_ready:?}");
    assert!(not_ready.stderr.contains("not_ready"), "{not_ready:?}");

    let closed = free_port().to_string();
    let refused = run(&["probe", "--address", &closed], limit).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(refused.stderr.contains("cannot connect"), "{refused:?}");
    let bad = run(&["probe", "--address", &probe, "--path", "readyz"], limit).await;
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(bad.stderr.contains("is not a path"), "{bad:?}");
}

#[tokio::test]
async fn an_operator_provided_admin_credential_is_used_and_never_written() {
    let upstream = MockUpstream::start().await;
    let secrets = tempfile::tempdir().expect("secrets dir");
    let file = secrets.path().join("admin.token");
    let credential = "operator-chosen-admin-credential-0123456789";
    std::fs::write(&file, format!("{credential}\n")).expect("write credential");
    let gw = GatewayBuilder::new()
        .server(&format!("admin_token_file = \"{}\"", file.display()))
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .start()
        .await;
    let url = gw.admin_url("/services/iris/listkeys");
    let (status, _, body) = support::admin_http::send(
        gw.admin_client(),
        Method::POST,
        &url,
        Some(credential),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let keys: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert!(keys["primaryKey"].is_string(), "{keys}");
    assert!(
        !gw.dir().join("state").join("admin.token").exists(),
        "no generated credential next to the operator's"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        format!("{credential}\n"),
        "the operator's file is left alone"
    );
}

/// `GET /healthz` on a fresh TLS connection to the admin listener made with `config`; any
/// failure (handshake refused, or the connection closed by the server's alert after a TLS 1.3
/// handshake) is an `Err`.
async fn admin_over_tls(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<StatusCode, String> {
    use http_body_util::Full;
    let tls = support::certs::try_connect(addr, config)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("/healthz")
        .header("host", "localhost")
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    within("admin request over TLS", sender.send_request(req))
        .await
        .map(|resp| resp.status())
        .map_err(|e| format!("request: {e}"))
}

/// `[server.admin_tls]` (issue 15 item 12): the admin listener speaks TLS with its own
/// certificate, so the management API (keys, the admin credential) is encrypted; plain HTTP gets
/// no answer; with `client_ca`, a client without a certificate from that CA is refused.
#[tokio::test]
async fn admin_listener_serves_tls_and_with_client_ca_refuses_clients_without_a_certificate() {
    let upstream = MockUpstream::start().await;
    let pki = support::Pki::new();
    let admin_tls = format!(
        "admin_tls = {{ cert = \"{}\", key = \"{}\" }}",
        pki.cert_path().display(),
        pki.key_path().display()
    );
    let gw = GatewayBuilder::new()
        .pki(pki.clone())
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .server(&admin_tls)
        .start()
        .await;
    let https = pki
        .client_builder(gw.admin_addr)
        .http1_only()
        .build()
        .expect("HTTPS client");
    let url = |path: &str| format!("https://localhost:{}{path}", gw.admin_addr.port());
    let health = within("GET /healthz over TLS", https.get(url("/healthz")).send())
        .await
        .expect("the admin listener answers over TLS");
    assert_eq!(health.status(), StatusCode::OK);
    let token = gw.admin_token().await;
    let listed = within(
        "listkeys over TLS",
        https
            .post(url("/services/iris/listkeys"))
            .bearer_auth(&token)
            .send(),
    )
    .await
    .expect("listkeys answered");
    assert_eq!(listed.status(), StatusCode::OK);
    let keys: serde_json::Value = within("body", listed.json()).await.expect("JSON");
    assert!(keys["primaryKey"].is_string(), "{keys}");
    let plain = within(
        "plain HTTP to the TLS admin listener",
        gw.admin_client()
            .get(format!("http://{}/healthz", gw.admin_addr))
            .send(),
    )
    .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");

    // Mutual TLS: only clients with a certificate from client_ca.
    let clients = support::certs::TestCa::new("admin client CA");
    let client_ca = pki.dir().join("admin-client-ca.pem");
    std::fs::write(&client_ca, &clients.pem).expect("write client CA");
    let mutual = GatewayBuilder::new()
        .pki(pki.clone())
        .service("iris", IRIS, &upstream.url())
        .server(&format!(
            "admin_tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
            pki.cert_path().display(),
            pki.key_path().display(),
            client_ca.display()
        ))
        .start()
        .await;
    let server_ca = support::certs::der_of_pem(pki.ca_pem());
    let config = |leaf: Option<&support::certs::Leaf>| {
        support::certs::client_config_from_ders(
            std::slice::from_ref(&server_ca),
            leaf,
            &[b"http/1.1"],
        )
    };
    let without = admin_over_tls(mutual.admin_addr, config(None)).await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let member = clients.client_leaf("operator");
    assert_eq!(
        admin_over_tls(mutual.admin_addr, config(Some(&member))).await,
        Ok(StatusCode::OK)
    );
}

/// The admin listener's certificate is re-read with a configuration reload: after the files are
/// replaced and `POST /reload` (sent over TLS) answers, a new
/// connection is served with the new certificate.
#[tokio::test]
async fn a_reload_gives_new_admin_connections_the_replaced_certificate() {
    use support::certs::{TestCa, client_config, peer_leaf, try_connect, write_atomic};
    let upstream = MockUpstream::start().await;
    let (first_ca, second_ca) = (TestCa::new("admin CA 1"), TestCa::new("admin CA 2"));
    let (first, second) = (
        first_ca.server_leaf("admin 1"),
        second_ca.server_leaf("admin 2"),
    );
    let files = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (
        files.path().join("admin.crt"),
        files.path().join("admin.key"),
    );
    write_atomic(&cert, &first.cert_pem);
    write_atomic(&key, &first.key_pem);
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &upstream.url())
        .server(&format!(
            "admin_tls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        ))
        .start()
        .await;
    let both = client_config(&[&first_ca, &second_ca], None, &[b"http/1.1"]);
    let presented = || async {
        peer_leaf(
            &try_connect(gw.admin_addr, both.clone())
                .await
                .expect("TLS handshake with the admin listener"),
        )
    };
    assert_eq!(presented().await, first.cert_der);

    write_atomic(&cert, &second.cert_pem);
    write_atomic(&key, &second.key_pem);
    let https = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(first_ca.pem.as_bytes()).expect("CA 1"),
            reqwest::Certificate::from_pem(second_ca.pem.as_bytes()).expect("CA 2"),
        ])
        .resolve("localhost", gw.admin_addr)
        .no_proxy()
        .http1_only()
        .build()
        .expect("HTTPS client");
    let token = gw.admin_token().await;
    let reloaded = within(
        "POST /reload over TLS",
        https
            .post(format!("https://localhost:{}/reload", gw.admin_addr.port()))
            .bearer_auth(&token)
            .send(),
    )
    .await
    .expect("reload answered");
    assert_eq!(reloaded.status(), StatusCode::OK);
    assert_eq!(presented().await, second.cert_der);
}
