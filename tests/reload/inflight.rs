//! Requests in flight and in the wait queue while a reload changes the route table: they finish
//! under the settings they started with, the queue of an unchanged service survives a reload,
//! and a changed limit must still count what is already in the upstream.

use reqwest::StatusCode;

use crate::support::admin_api::Admin;
use crate::support::upstream::Seen;
use crate::support::{GatewayBuilder, IRIS, MockUpstream, wait_until, within};
use crate::{get, rewrite, status};

#[tokio::test]
async fn a_request_in_flight_finishes_after_its_service_is_removed() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &url)
        .service("other", "/api/v1/service/other", &url)
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    let client = gw.client().clone();
    let gate = gw.url(&format!("{IRIS}/gate?bytes=4096"));
    let held = tokio::spawn(async move {
        let resp = client.get(gate).send().await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.bytes().await?.len()))
    });
    upstream.wait_gate_arrivals(1).await;

    rewrite(
        &gw,
        &GatewayBuilder::new().service("other", "/api/v1/service/other", &url),
    );
    let (code, summary) = admin.reload().await;
    assert_eq!(code, StatusCode::OK, "{summary}");
    assert_eq!(summary["services"], 1);
    assert_eq!(
        get(&gw, &format!("{IRIS}/echo")).await,
        StatusCode::NOT_FOUND
    );

    upstream.open_gate();
    let (code, bytes) = within("the held request", held)
        .await
        .expect("request task")
        .expect("the held request completes");
    assert_eq!(code, StatusCode::OK);
    assert_eq!(bytes, 4096);
    let url = format!("{IRIS}/gate?bytes=4096");
    wait_until("the record of the held request", || async {
        gw.records().iter().any(|r| r["RequestUrl"] == url)
    })
    .await;
    let record = gw
        .records()
        .into_iter()
        .find(|r| r["RequestUrl"] == url)
        .expect("found above");
    assert_eq!(record["StatusCode"], 200);
    assert_eq!(record["ServiceName"], "iris");
}

/// Spawns `GET url` and returns its status when awaited.
fn spawn_status(client: &reqwest::Client, url: String) -> tokio::task::JoinHandle<StatusCode> {
    let client = client.clone();
    tokio::spawn(async move { status(&client, url).await })
}

fn one_at_a_time(url: &str, queue: usize) -> GatewayBuilder {
    GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            url,
            &format!("max_concurrent_requests = 1\nmax_request_wait_ms = 30000\nmax_queue_length = {queue}"),
        )
        .service("other", "/api/v1/service/other", url)
}

#[tokio::test]
async fn a_reload_of_another_service_keeps_the_queue_and_its_order() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw = one_at_a_time(&url, 10).start().await;
    let admin = Admin::of(&gw).await;
    let held = spawn_status(gw.client(), gw.url(&format!("{IRIS}/gate")));
    upstream.wait_gate_arrivals(1).await;
    let before = spawn_status(gw.client(), gw.url(&format!("{IRIS}/echo?seq=1")));
    admin.wait_waiting("iris", 1).await;

    rewrite(
        &gw,
        &one_at_a_time(&url, 10).service("third", "/api/v1/service/third", &url),
    );
    assert_eq!(admin.reload().await.0, StatusCode::OK);
    assert_eq!(
        admin.service("iris").await["waiting"],
        1,
        "the waiter is still counted"
    );
    // The one slot is still taken by the held request: a newcomer queues behind the waiter.
    let after = spawn_status(gw.client(), gw.url(&format!("{IRIS}/echo?seq=2")));
    admin.wait_waiting("iris", 2).await;

    upstream.open_gate();
    for (what, task) in [
        ("held", held),
        ("queued before", before),
        ("queued after", after),
    ] {
        let code = within(what, task).await.expect("request task");
        assert_eq!(code, StatusCode::OK, "{what}");
    }
    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(Seen::path_and_query)
        .collect();
    assert_eq!(paths, ["/gate", "/echo?seq=1", "/echo?seq=2"]);
}

/// A reload that changes any of the three admission settings builds a new, empty limit; the
/// request still in the upstream counts only against the old one, so the new limit lets one
/// more in although the container's only slot is busy.
#[tokio::test]
async fn changing_the_queue_length_does_not_let_an_extra_request_into_a_busy_upstream() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw = one_at_a_time(&url, 10).start().await;
    let admin = Admin::of(&gw).await;
    let held = spawn_status(gw.client(), gw.url(&format!("{IRIS}/gate")));
    upstream.wait_gate_arrivals(1).await;

    rewrite(&gw, &one_at_a_time(&url, 20));
    assert_eq!(admin.reload().await.0, StatusCode::OK);
    let next = spawn_status(gw.client(), gw.url(&format!("{IRIS}/echo?seq=after")));
    // Either it queues (correct) or it reaches the upstream while the slot is taken.
    wait_until("the new request to queue or reach the upstream", || async {
        admin.service("iris").await["waiting"] == 1
            || upstream.requests().iter().any(|s| s.path == "/echo")
    })
    .await;
    assert!(
        upstream.requests().iter().all(|s| s.path != "/echo"),
        "a second request reached the upstream while the first held its only slot"
    );
    upstream.open_gate();
    assert_eq!(within("held", held).await.expect("task"), StatusCode::OK);
    assert_eq!(within("next", next).await.expect("task"), StatusCode::OK);
}
