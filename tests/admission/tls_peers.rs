//! TLS with the gateway's peers: mutual TLS on the scoring listener (`[server.tls] client_ca`)
//! and `https://` upstreams verified against `upstream_ca`.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use rustls::ClientConfig;

use crate::support::certs::{self, Leaf, TestCa};
use crate::support::check::{assert_error_body, send_json};
use crate::support::tls_upstream::TlsFront;
use crate::support::{GatewayBuilder, IRIS, MockUpstream, Pki, TestGateway, wait_until, within};

/// One request on a fresh connection made with `config`; any failure (handshake refused, or
/// the connection closed by the server's alert after a TLS 1.3 handshake) is an `Err`.
async fn try_echo(gw: &TestGateway, config: Arc<ClientConfig>) -> Result<StatusCode, String> {
    let tls = certs::try_connect(gw.scoring_addr, config)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::get(gw.url(&format!("{IRIS}/echo")))
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    within("mutual TLS request", sender.send_request(req))
        .await
        .map(|resp| resp.status())
        .map_err(|e| format!("request: {e}"))
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_client_ca() {
    let upstream = MockUpstream::start().await;
    let pki = Pki::new();
    let clients = TestCa::new("scoregate test client CA");
    let strangers = TestCa::new("some other CA");
    let client_ca = pki.dir().join("client-ca.pem");
    std::fs::write(&client_ca, &clients.pem).expect("write client CA");
    let gw = GatewayBuilder::new()
        .pki(pki.clone())
        .plain_http()
        .server(&format!(
            "tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
            pki.cert_path().display(),
            pki.key_path().display(),
            client_ca.display()
        ))
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let server_ca = certs::der_of_pem(pki.ca_pem());
    let config = |leaf: Option<&Leaf>| {
        certs::client_config_from_ders(std::slice::from_ref(&server_ca), leaf, &[b"http/1.1"])
    };

    let member = clients.client_leaf("caller-1");
    assert_eq!(
        try_echo(&gw, config(Some(&member))).await,
        Ok(StatusCode::OK)
    );

    let without = try_echo(&gw, config(None)).await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let stranger = strangers.client_leaf("caller-2");
    let foreign = try_echo(&gw, config(Some(&stranger))).await;
    assert!(foreign.is_err(), "certificate from another CA: {foreign:?}");

    wait_until("both refused handshakes to be counted", || async {
        gw.metric("scoregate_tls_handshake_errors_total") == Some(2.0)
    })
    .await;
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the admitted client was forwarded"
    );
    assert_eq!(
        try_echo(&gw, config(Some(&member))).await,
        Ok(StatusCode::OK)
    );
}

#[tokio::test]
async fn https_upstream_is_verified_with_upstream_ca() {
    let upstream = MockUpstream::start().await;
    let upstream_ca = TestCa::new("scoring container CA");
    let front = TlsFront::start(
        &upstream_ca.server_leaf("scoring container"),
        upstream.addr(),
    )
    .await;
    let ca_file = tempfile::NamedTempFile::new().expect("CA temp file");
    std::fs::write(ca_file.path(), &upstream_ca.pem).expect("write upstream CA");

    let trusting = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &front.url(),
            &format!("upstream_ca = \"{}\"", ca_file.path().display()),
        )
        .start()
        .await;
    trusting.wait_ready().await;
    let (status, _, echo) = send_json(
        trusting
            .client()
            .post(trusting.url(&format!("{IRIS}/echo?over=tls")))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["query"], "over=tls");
    upstream
        .wait_for("the request to arrive through TLS", |s| {
            s.query.as_deref() == Some("over=tls")
        })
        .await;

    // Without the CA the container's certificate is not trusted: nothing is sent to it.
    let doubting = GatewayBuilder::new()
        .service("iris", IRIS, &front.url())
        .start()
        .await;
    let (status, headers, body) = send_json(
        doubting
            .client()
            .post(doubting.url(&format!("{IRIS}/echo?over=untrusted")))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let id = assert_error_body(&headers, &body, "upstream_unreachable");
    assert_eq!(
        doubting.record_for(&id).await["ErrorCode"],
        "upstream_unreachable"
    );
    assert!(
        upstream
            .requests()
            .iter()
            .all(|s| s.query.as_deref() != Some("over=untrusted")),
        "an untrusted upstream was sent the request"
    );
}
