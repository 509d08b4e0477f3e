//! Graceful shutdown (STYLE §5): readiness turns 503, accepting stops, in-flight requests finish
//! within the drain timeout, and the outcome says whether they all did. Driven in-process through
//! the shutdown future, and through SIGTERM on the real binary.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use scoregate::server::Drained;
use support::pattern::{Checker, MIB};
use support::process::GatewayProcess;
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until, within};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Starts a GET whose response is read to the end and checked against the pattern.
fn spawn_request(
    client: reqwest::Client,
    url: String,
) -> JoinHandle<Result<(StatusCode, Checker), reqwest::Error>> {
    tokio::spawn(async move {
        let resp = client.get(url).send().await?;
        let status = resp.status();
        let mut checker = Checker::default();
        let mut body = resp.bytes_stream();
        while let Some(piece) = body.next().await {
            checker.feed(&piece?);
        }
        Ok((status, checker))
    })
}

/// Waits until the listener at `addr` refuses connections (accepting has stopped).
async fn wait_refused(addr: SocketAddr) {
    wait_until("new connections to be refused", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
}

async fn readyz(gw: &TestGateway) -> StatusCode {
    gw.admin_get("/readyz").await.0
}

#[tokio::test]
async fn drain_lets_in_flight_requests_finish_then_completes() {
    let upstream = MockUpstream::start().await;
    let mut gw = GatewayBuilder::new()
        .server("drain_timeout_ms = 10000")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    gw.wait_ready().await;
    let total = MIB;
    let in_flight = spawn_request(
        gw.client().clone(),
        gw.url(&format!("/api/v1/service/iris/gate?bytes={total}")),
    );
    upstream.wait_gate_arrivals(1).await;

    gw.begin_shutdown();
    wait_until("/readyz to answer 503", || async {
        readyz(&gw).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (_, ready) = gw.admin_get("/readyz").await;
    assert_eq!(ready["draining"], true, "{ready}");
    assert_eq!(
        gw.admin_get("/healthz").await.0,
        StatusCode::OK,
        "still live while draining"
    );
    wait_refused(gw.scoring_addr).await;
    assert!(
        !in_flight.is_finished(),
        "the held request is still in flight"
    );

    upstream.open_gate();
    let (status, checker) = within("the in-flight request to finish", in_flight)
        .await
        .expect("request task")
        .expect("in-flight request completes during the drain");
    assert_eq!(status, StatusCode::OK);
    checker.assert_complete(total);
    assert_eq!(gw.shutdown().await, Drained::Complete);
    let record = gw.wait_for_records(1).await.pop().expect("record");
    assert_eq!(record["StatusCode"], 200);
    assert_eq!(record["ResponseBytes"], total);
}

#[tokio::test]
async fn drain_gives_up_after_the_drain_timeout() {
    let upstream = MockUpstream::start().await;
    let mut gw = GatewayBuilder::new()
        .server("drain_timeout_ms = 300")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let _stuck = spawn_request(gw.client().clone(), gw.url("/api/v1/service/iris/gate"));
    upstream.wait_gate_arrivals(1).await;

    let started = Instant::now();
    assert_eq!(gw.shutdown().await, Drained::TimedOut);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "gave up after {took:?}");
    assert!(took < Duration::from_secs(5), "gave up only after {took:?}");
}

#[tokio::test]
async fn pre_drain_delay_keeps_accepting_while_readiness_is_503() {
    let upstream = MockUpstream::start().await;
    let mut gw = GatewayBuilder::new()
        .server("pre_drain_delay_ms = 5000")
        .server("drain_timeout_ms = 1000")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    gw.wait_ready().await;
    gw.begin_shutdown();
    wait_until("/readyz to answer 503", || async {
        readyz(&gw).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // Inside the delay the orchestrator may still route here: requests on new connections work.
    let fresh = gw.pki().http1_client(gw.scoring_addr);
    let resp = within(
        "request during the pre-drain delay",
        fresh.get(gw.url("/api/v1/service/iris/echo")).send(),
    )
    .await
    .expect("served during the pre-drain delay");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn sigterm_drains_a_streaming_response_and_exits_zero() {
    let upstream = MockUpstream::start().await;
    let mut gw = GatewayProcess::start(
        GatewayBuilder::new()
            .server("drain_timeout_ms = 10000")
            .service("iris", IRIS, &upstream.url()),
    );
    gw.wait_ready().await;

    // Far more than the socket buffers hold: while the client pauses, the response is stuck
    // mid-body inside the gateway.
    let total = 32 * MIB;
    let resp = within(
        "streaming response head",
        gw.client()
            .get(gw.url(&format!("/api/v1/service/iris/stream?bytes={total}")))
            .send(),
    )
    .await
    .expect("streaming request");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let mut checker = Checker::default();
    let first = within("first piece", body.next())
        .await
        .expect("a first piece")
        .expect("first piece");
    checker.feed(&first);

    gw.signal("TERM");
    wait_refused(gw.scoring_addr).await;
    within("the rest of the streaming response", async {
        while let Some(piece) = body.next().await {
            checker.feed(&piece.expect("response piece after SIGTERM"));
        }
    })
    .await;
    checker.assert_complete(total);

    let status = gw.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        gw.stderr()
    );
    let stderr = gw.stderr();
    assert!(stderr.contains("drain complete"), "stderr:\n{stderr}");
    // The record of the drained request was flushed before exit.
    let records: Vec<serde_json::Value> = gw
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout holds JSON records"))
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["StatusCode"] == 200 && r["ResponseBytes"] == total),
        "records: {records:?}"
    );
}

#[tokio::test]
async fn connections_left_after_a_drain_timeout_are_dropped() {
    let upstream = MockUpstream::start().await;
    let mut gw = GatewayBuilder::new()
        .server("drain_timeout_ms = 300")
        .service("iris", IRIS, &upstream.url())
        .start()
        .await;
    let stuck = spawn_request(gw.client().clone(), gw.url("/api/v1/service/iris/gate"));
    upstream.wait_gate_arrivals(1).await;
    assert_eq!(gw.shutdown().await, Drained::TimedOut);

    // The gateway has returned; nothing it served may still answer.
    upstream.open_gate();
    let outcome = within("the stuck request to end", stuck)
        .await
        .expect("request task");
    assert!(
        outcome.is_err(),
        "a connection outlived Drained::TimedOut and was answered: {outcome:?}"
    );
}

#[tokio::test]
async fn sigterm_exits_within_the_drain_timeout_when_a_request_is_stuck() {
    let upstream = MockUpstream::start().await;
    let mut gw = GatewayProcess::start(
        GatewayBuilder::new()
            .server("drain_timeout_ms = 300")
            .service("iris", IRIS, &upstream.url()),
    );
    gw.wait_ready().await;
    let _stuck = spawn_request(gw.client(), gw.url("/api/v1/service/iris/gate"));
    upstream.wait_gate_arrivals(1).await;

    let started = Instant::now();
    gw.signal("TERM");
    // The drain timeout (300 ms) bounds shutdown; allow generous slack for a loaded machine.
    let exited = tokio::time::timeout(Duration::from_secs(5), gw.wait_exit()).await;
    let status = exited.unwrap_or_else(|_| {
        panic!(
            "still running {:?} after SIGTERM with drain_timeout_ms = 300; stderr:\n{}",
            started.elapsed(),
            gw.stderr()
        )
    });
    assert!(status.success(), "exit status {status}");
}
