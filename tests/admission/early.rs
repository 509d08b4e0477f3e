//! Answers that come before the request body was read: the gateway's own refusals (401, 404,
//! 413) and a container that answers without reading the upload. The client must get the answer
//! (the rest of its body is read and discarded within `lingering_*` bounds), over HTTP/2 and
//! HTTP/1.1, with the system curl (whose HTTP/2 stack reports an early stream reset as an error)
//! as well as with hyper.

use std::future::poll_fn;

use bytes::Bytes;
use reqwest::StatusCode;

use crate::support::curl::{Curl, body_file};
use crate::support::pki::MODERN;
use crate::support::upstream::BodyEnd;
use crate::support::{GatewayBuilder, IRIS, MockUpstream, within};

/// How many times each refusal is tried per protocol: curl 7.88 lost 8-9 in 10 over HTTP/2.
const ROUNDS: usize = 20;
const SMALL: &str = "/api/v1/service/small";

/// The protocols curl is run with. HTTP/1.1 leaves out `Expect: 100-continue` (curl adds it to
/// bodies over 1 MiB), so the body follows the head at once and must be discarded.
const PROTOCOLS: [(&str, &[&str]); 2] = [("--http2", &[]), ("--http1.1", &["-H", "Expect:"])];

#[tokio::test]
async fn early_refusals_reach_curl_with_their_json_over_http2_and_http1() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "auth = \"key\"\nmax_body_bytes = 8388608",
        )
        .service_with("small", SMALL, &upstream.url(), "max_body_bytes = 1048576")
        .start()
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let body = body_file(dir.path(), "body.bin", 3 * 1024 * 1024);
    let curl = Curl::new(&gw);

    // (path, extra curl arguments, status, error code): no key; no route; declared length over
    // the limit; a chunked body cut off at the limit mid-stream.
    let cases: [(String, &[&str], u16, &str); 4] = [
        (format!("{IRIS}/score"), &[], 401, "missing_credentials"),
        ("/nope/score".to_owned(), &[], 404, "route_not_found"),
        (format!("{SMALL}/score"), &[], 413, "payload_too_large"),
        (
            format!("{SMALL}/score"),
            &["-H", "Transfer-Encoding: chunked"],
            413,
            "payload_too_large",
        ),
    ];
    let mut runs = Vec::new();
    for (version, protocol_args) in PROTOCOLS {
        for (path, case_args, status, code) in &cases {
            let (curl, body, path) = (curl.clone(), body.clone(), path.clone());
            let args: Vec<&str> = protocol_args
                .iter()
                .chain(case_args.iter())
                .copied()
                .collect();
            let (status, code) = (*status, *code);
            runs.push(tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let got = curl.post_file(version, &path, &body, &args).await;
                    assert_eq!(
                        (got.exit, got.status),
                        (0, status),
                        "{version} {path} {args:?}, round {round}: curl stderr {:?}",
                        got.stderr
                    );
                    assert_eq!(got.error_code(), code, "{version} {path} round {round}");
                }
            }));
        }
    }
    for run in runs {
        run.await.expect("every curl round got its answer");
    }
    // The refusals from the head alone never reached the container.
    assert!(
        upstream
            .requests()
            .iter()
            .all(|s| s.path.ends_with("/score") && s.headers.get("transfer-encoding").is_some()),
        "only the chunked uploads were forwarded (and cut at the limit)"
    );
}

#[tokio::test]
async fn early_refusals_reach_hyper_clients_too() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with("small", SMALL, &upstream.url(), "max_body_bytes = 1048576")
        .start()
        .await;
    let body = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    for client in [gw.client(), gw.h2_client()] {
        for (path, status) in [
            ("/nope/score".to_owned(), StatusCode::NOT_FOUND),
            (format!("{SMALL}/score"), StatusCode::PAYLOAD_TOO_LARGE),
        ] {
            let resp = within(
                "refusal",
                client.post(gw.url(&path)).body(body.clone()).send(),
            )
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(resp.status(), status, "{path}");
            let text = within("refusal body", resp.text()).await.expect("body");
            assert!(text.contains("\"error\""), "{path}: {text}");
        }
    }
}

#[tokio::test]
async fn an_http2_refusal_is_complete_before_its_stream_is_reset_with_no_error() {
    let gw = GatewayBuilder::new()
        .server("lingering_timeout_ms = 200")
        .service("iris", IRIS, "http://127.0.0.1:9")
        .start()
        .await;
    let tls = gw
        .pki()
        .tls_connect(gw.scoring_addr, MODERN, &[b"h2"])
        .await;
    let (mut h2, conn) = within("HTTP/2 handshake", h2::client::handshake(tls))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let req = http::Request::post(gw.url("/nope/score"))
        .body(())
        .expect("request");
    let (response, mut upload) = h2.send_request(req, false).expect("send the head");
    // Part of the body, and the client never finishes it.
    upload
        .send_data(Bytes::from(vec![1u8; 16 * 1024]), false)
        .expect("send data");
    let response = within("response head", response)
        .await
        .expect("a response, not a reset");
    assert_eq!(response.status(), 404);
    let mut body = response.into_body();
    let mut json = Vec::new();
    while let Some(chunk) = within("response body", body.data()).await {
        json.extend_from_slice(&chunk.expect("the response body arrives whole"));
    }
    assert!(body.is_end_stream(), "the response ended with END_STREAM");
    let json: serde_json::Value = serde_json::from_slice(&json).expect("JSON error body");
    assert_eq!(json["error"]["code"], "route_not_found");
    // Only after lingering_timeout_ms does the gateway stop reading, and says so without error.
    let reason = within("the stream reset", poll_fn(|cx| upload.poll_reset(cx)))
        .await
        .expect("a reset reason");
    assert_eq!(reason, h2::Reason::NO_ERROR);
    let timeouts = r#"scoregate_lingering_discards_total{outcome="timeout"}"#;
    crate::support::wait_until("the discard to be counted", || async {
        gw.counter(timeouts) == 1
    })
    .await;
}

#[tokio::test]
async fn a_container_answer_before_the_body_reaches_curl_and_the_rest_is_discarded() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let body = body_file(dir.path(), "upload.bin", 8 * 1024 * 1024);
    let curl = Curl::new(&gw);
    // HTTP/2; HTTP/1.1 with the body sent at once; HTTP/1.1 waiting for `100 Continue` (curl's
    // default for this size), which the gateway sends when it starts forwarding.
    let runs: [(&str, &[&str]); 3] = [
        ("--http2", &[]),
        ("--http1.1", &["-H", "Expect:"]),
        ("--http1.1", &[]),
    ];
    for (i, (version, args)) in runs.into_iter().enumerate() {
        let path = format!("{IRIS}/early?code=200&run={i}");
        let got = curl.post_file(version, &path, &body, args).await;
        assert_eq!(
            (got.exit, got.status),
            (0, 200),
            "{version} {args:?}: curl stderr {:?}",
            got.stderr
        );
        assert_eq!(got.body, br#"{"early":true}"#, "{version} {args:?}");
    }
    assert_early_answers_recorded(&gw, &upstream, 3).await;

    // The connections cut mid-upload were not pooled: the next exchange is whole.
    let resp = within(
        "a normal request after the early answers",
        gw.client()
            .post(gw.url(&format!("{IRIS}/echo")))
            .body(vec![3u8; 100_000])
            .send(),
    )
    .await
    .expect("echo");
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = within("echo body", resp.json()).await.expect("JSON");
    assert_eq!(echo["bodyBytes"], 100_000);
}

/// Every early answer was recorded as the container's 200, and no upload reached its end at the
/// container (it never read them); the gateway read the rest of each and discarded it.
async fn assert_early_answers_recorded(
    gw: &crate::support::TestGateway,
    upstream: &MockUpstream,
    n: usize,
) {
    let records = gw.wait_for_records(n).await;
    for record in &records {
        assert_eq!(record["StatusCode"], 200, "{record}");
        assert_eq!(record["UpstreamStatusCode"], 200, "{record}");
    }
    let early: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|s| s.path.ends_with("/early"))
        .collect();
    assert_eq!(early.len(), n);
    assert!(early.iter().all(|s| s.body.end == BodyEnd::Open));
    crate::support::wait_until("every rest to be discarded", || async {
        gw.counter(r#"scoregate_lingering_discards_total{outcome="complete"}"#)
            + gw.counter(r#"scoregate_lingering_discards_total{outcome="client_stopped"}"#)
            >= n as u64
    })
    .await;
}
