//! Large bodies stream through the gateway in both directions without being held whole: over
//! HTTP/1.1 and HTTP/2 in-process, and through the real binary with its peak memory measured.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use futures_util::StreamExt;
use reqwest::{StatusCode, Version};
use support::pattern::{self, Checker, MIB};
use support::process::GatewayProcess;
use support::upstream::BodyEnd;
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, iris_gateway, within};

/// Uploads `total` pattern bytes to `/echo-body` and verifies the echoed stream piece by piece;
/// checks that the response started flowing before the upstream had the whole upload, i.e.
/// neither side was buffered whole by the gateway. With the reader stalled, socket buffers and
/// flow-control windows let the upload run about 7 MiB (HTTP/1.1) or 11 MiB (HTTP/2) ahead on
/// loopback, so `total` must stay well above that for the check to be meaningful.
async fn echo_body_round_trip(
    gw: &TestGateway,
    upstream: &MockUpstream,
    client: &reqwest::Client,
    total: u64,
) -> Version {
    let url = gw.url("/api/v1/service/iris/echo-body");
    let body = reqwest::Body::wrap_stream(pattern::stream::<std::io::Error>(total));
    let resp = within(
        "echo-body response head",
        client.post(url).body(body).send(),
    )
    .await
    .expect("echo-body request");
    assert_eq!(resp.status(), StatusCode::OK);
    let version = resp.version();
    let mut checker = Checker::default();
    let mut stream = resp.bytes_stream();
    within("echo-body response body", async {
        while let Some(piece) = stream.next().await {
            let piece = piece.expect("response piece");
            if checker.len() == 0 {
                let received = upstream.requests().last().expect("upload in progress").body.bytes;
                assert!(
                    received < total,
                    "the upstream had the whole upload ({received} bytes) before the first echoed byte reached the client"
                );
            }
            checker.feed(&piece);
        }
    })
    .await;
    checker.assert_complete(total);
    assert!(
        checker.pieces() > 16,
        "response arrived in {} pieces",
        checker.pieces()
    );
    let seen = upstream
        .wait_for("upload to complete at the upstream", |s| {
            s.path.ends_with("/echo-body") && s.body.end != BodyEnd::Open
        })
        .await;
    assert_eq!(seen.body.end, BodyEnd::Complete);
    assert_eq!(seen.body.bytes, total);
    assert!(
        seen.body.frames > 16,
        "upload arrived in {} frames",
        seen.body.frames
    );
    version
}

#[tokio::test]
async fn large_body_streams_both_ways_over_http1() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let total = 64 * MIB;
    let version = echo_body_round_trip(&gw, &upstream, gw.client(), total).await;
    assert_eq!(version, Version::HTTP_11);
    let record = gw.wait_for_records(1).await.pop().expect("record");
    assert_eq!(record["RequestBytes"], total);
    assert_eq!(record["ResponseBytes"], total);
    assert_eq!(record["StatusCode"], 200);
}

#[tokio::test]
async fn large_body_streams_both_ways_over_http2() {
    let upstream = MockUpstream::start().await;
    let gw = iris_gateway(&upstream.url()).await;
    let version = echo_body_round_trip(&gw, &upstream, gw.h2_client(), 64 * MIB).await;
    assert_eq!(version, Version::HTTP_2);
}

/// 100 MiB up and back through the real binary: its peak RSS stays far below the body size.
#[tokio::test]
async fn binary_streams_100_mib_in_flat_memory() {
    const LIMIT_KIB: u64 = 60 * 1024;
    let upstream = MockUpstream::start().await;
    let mut gw = GatewayProcess::start(GatewayBuilder::new().service_with(
        "iris",
        IRIS,
        &upstream.url(),
        "max_body_bytes = 209715200",
    ));
    gw.wait_ready().await;

    let total = 100 * MIB;
    let client = gw.client();
    let body = reqwest::Body::wrap_stream(pattern::stream::<std::io::Error>(total));
    let resp = within(
        "100 MiB echo-body response head",
        client
            .post(gw.url("/api/v1/service/iris/echo-body"))
            .body(body)
            .send(),
    )
    .await
    .expect("echo-body through the binary");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut checker = Checker::default();
    let mut stream = resp.bytes_stream();
    within("100 MiB echo-body response body", async {
        while let Some(piece) = stream.next().await {
            checker.feed(&piece.expect("response piece"));
        }
    })
    .await;
    checker.assert_complete(total);

    let peak = gw.peak_rss_kib();
    assert!(
        peak < LIMIT_KIB,
        "peak RSS {peak} KiB after streaming {} MiB each way (limit {LIMIT_KIB} KiB)",
        total / MIB
    );
    eprintln!("scoregate peak RSS after 100 MiB each way: {peak} KiB");
}
