//! The scoring pipeline's timeouts and admission decisions under tokio's paused clock, over
//! in-memory connections to a stand-in container (`support::pipeline`): the 504 scoring timeout,
//! the 408 body-idle timeout, the 503 queue wait and a full queue, and the drain. Each asserts
//! the status and error code and *when* the gateway decided, to the millisecond, in virtual
//! time: nothing here depends on a wall clock or a real sleep. The real-socket suites
//! (`admission`, `shutdown`, `proxy_errors`) prove the same paths are wired to the network.
#![allow(
    clippy::too_many_lines,
    reason = "the shared harness has long scenario helpers; the 80-line bound is for src/"
)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::body::Frame;
use scoregate::server::Drained;
use tokio::time::Instant;

use support::GatewayBuilder;
use support::pipeline::{Answer, Pipeline, post, post_fed, status_and_code};

const SCORE: &str = "/m/score";

fn service(extra: &str) -> GatewayBuilder {
    // The upstream address is never dialled: the stand-in answers in its place.
    GatewayBuilder::new().service_with("m", "/m", "http://127.0.0.1:9", extra)
}

/// `elapsed` is `want`, give or take a millisecond of virtual time.
fn at(elapsed: Duration, want: Duration) {
    let diff = elapsed.abs_diff(want);
    assert!(
        diff <= Duration::from_millis(1),
        "decided after {elapsed:?}, expected {want:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_container_that_never_answers_gets_504_at_the_scoring_timeout() {
    let mut p = Pipeline::start(service("scoring_timeout_ms = 60000"), Answer::Never);
    let mut client = p.connect().await;
    let start = Instant::now();
    let resp = client
        .send_request(post(SCORE, b"{}"))
        .await
        .expect("response");
    at(start.elapsed(), Duration::from_secs(60));
    assert_eq!(
        status_and_code(resp).await,
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout".to_owned())
    );
    assert_eq!(
        p.metric("scoregate_upstream_errors_total{kind=\"upstream_timeout\",service=\"m\"}"),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_gets_408_at_the_body_idle_timeout() {
    let mut p = Pipeline::start(service("body_idle_timeout_ms = 2000"), Answer::Ok);
    let mut client = p.connect().await;
    let (req, body) = post_fed(SCORE, 100);
    body.send(Ok(Frame::data(Bytes::from_static(&[b' '; 10]))))
        .await
        .expect("first bytes");
    let start = Instant::now();
    let resp = client.send_request(req).await.expect("response");
    at(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        status_and_code(resp).await,
        (
            StatusCode::REQUEST_TIMEOUT,
            "request_body_timeout".to_owned()
        )
    );
    drop(body);
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_a_busy_service_gets_503_at_the_queue_wait_bound() {
    let mut p = Pipeline::start(
        service(
            "max_concurrent_requests = 1\nmax_request_wait_ms = 3000\nmax_queue_length = 4\nscoring_timeout_ms = 600000",
        ),
        Answer::Never,
    );
    // The first request holds the only slot (its container never answers).
    let holding = p.spawn_post(SCORE).await;
    tokio::task::yield_now().await;
    let mut second = p.connect().await;
    let start = Instant::now();
    let resp = second
        .send_request(post(SCORE, b"{}"))
        .await
        .expect("response");
    at(start.elapsed(), Duration::from_secs(3));
    assert_eq!(
        status_and_code(resp).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_wait_exceeded".to_owned()
        )
    );
    assert!(
        !holding.is_finished(),
        "the first request still holds its slot"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_finding_the_queue_full_gets_503_at_once() {
    let mut p = Pipeline::start(
        service(
            "max_concurrent_requests = 1\nmax_request_wait_ms = 30000\nmax_queue_length = 1\nscoring_timeout_ms = 600000",
        ),
        Answer::Never,
    );
    let holding = p.spawn_post(SCORE).await;
    let waiting = p.spawn_post(SCORE).await;
    // Both are inside the gateway: one in the slot, one in the queue.
    let waiters = || {
        p.gw.state()
            .by_name("m")
            .expect("service m")
            .limit
            .waiting()
    };
    for _ in 0..1000 {
        if waiters() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(waiters(), 1, "one request queued");
    let mut third = p.connect().await;
    let start = Instant::now();
    let resp = third
        .send_request(post(SCORE, b"{}"))
        .await
        .expect("response");
    assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
    assert_eq!(
        status_and_code(resp).await,
        (StatusCode::SERVICE_UNAVAILABLE, "queue_full".to_owned())
    );
    // The queued request then waits out its bound.
    let resp = waiting.await.expect("task").expect("response");
    at(start.elapsed(), Duration::from_secs(30));
    assert_eq!(
        status_and_code(resp).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_wait_exceeded".to_owned()
        )
    );
    assert!(!holding.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_drain_lets_a_request_in_flight_finish_then_ends_complete() {
    let mut p = Pipeline::start(
        service("scoring_timeout_ms = 600000")
            .server("pre_drain_delay_ms = 1000")
            .server("drain_timeout_ms = 10000"),
        Answer::After(Duration::from_secs(4)),
    );
    let start = Instant::now();
    let in_flight = p.spawn_post(SCORE).await;
    tokio::task::yield_now().await;
    p.begin_shutdown();
    assert_eq!(p.drained().await, Drained::Complete);
    // The drain ended when the last request did, not at its timeout.
    at(start.elapsed(), Duration::from_secs(4));
    assert!(p.gw.lifecycle.is_draining());
    let resp = in_flight.await.expect("task").expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_drain_closes_what_is_still_open_at_the_drain_timeout() {
    let mut p = Pipeline::start(
        service("scoring_timeout_ms = 600000")
            .server("pre_drain_delay_ms = 1000")
            .server("drain_timeout_ms = 5000"),
        Answer::Never,
    );
    let start = Instant::now();
    let in_flight = p.spawn_post(SCORE).await;
    tokio::task::yield_now().await;
    p.begin_shutdown();
    assert_eq!(p.drained().await, Drained::TimedOut);
    // Pre-drain delay, then the drain timeout.
    at(start.elapsed(), Duration::from_secs(6));
    let ended = in_flight.await.expect("task");
    assert!(ended.is_err(), "the connection was closed: {ended:?}");
}
