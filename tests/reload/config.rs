//! Configuration reloads: the three triggers, a rejected file, restart-only settings, and
//! readiness across a reload.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::support::admin_api::Admin;
use crate::support::check::{assert_error_body, send_json};
use crate::support::process::GatewayProcess;
use crate::support::{GatewayBuilder, IRIS, MockUpstream, Pki, wait_until};
use crate::{RELOADS_FAILED, RELOADS_OK, count, get, rewrite, status, wait_until_within};

fn is_reload(entry: &Value, initiator: &str, result: &str) -> bool {
    entry["operationName"] == "reloadConfig"
        && entry["initiator"] == initiator
        && entry["result"] == result
}

#[tokio::test]
async fn post_reload_adds_a_service_moves_a_route_and_switches_key_to_token_mode() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &url)
        .service_with("scorer", "/api/v1/service/scorer", &url, "auth = \"key\"")
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    let (key, _) = admin.keys("scorer").await;
    let keyed = |k: &str| {
        gw.client()
            .get(gw.url("/api/v1/service/scorer/echo"))
            .bearer_auth(k.to_owned())
    };
    assert_eq!(send_json(keyed(&key)).await.0, StatusCode::OK);

    rewrite(
        &gw,
        &GatewayBuilder::new()
            .service("iris", "/api/v1/service/iris-v2", &url)
            .service_with("scorer", "/api/v1/service/scorer", &url, "auth = \"token\"")
            .service("second", "/api/v1/service/second", &url),
    );
    let (code, summary) = admin.reload().await;
    assert_eq!(code, StatusCode::OK, "{summary}");
    assert_eq!(summary["services"], 3);
    assert_eq!(summary["restartRequired"], json!([]));

    assert_eq!(
        get(&gw, &format!("{IRIS}/echo")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&gw, "/api/v1/service/iris-v2/echo").await,
        StatusCode::OK
    );
    assert_eq!(
        get(&gw, "/api/v1/service/second/echo").await,
        StatusCode::OK
    );
    // The key no longer opens the service; a token does.
    let (code, headers, body) = send_json(keyed(&key)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert_error_body(&headers, &body, "token_malformed");
    let token = admin.token("scorer").await;
    let (code, headers, _) = send_json(keyed(&token)).await;
    assert_eq!(code, StatusCode::OK);
    let id = crate::support::check::header(&headers, "x-request-id");
    let record = gw.record_for(id).await;
    assert_eq!(record["AuthMode"], "token");
    assert_eq!(admin.service("scorer").await["authMode"], "token");

    let entry = admin
        .wait_activity("the API reload in the activity log", |e| {
            is_reload(e, "bootstrap-admin", "Succeeded")
        })
        .await;
    assert_eq!(entry["sourceIp"], "127.0.0.1");
    assert!(count(&gw, RELOADS_OK) >= 1);
    assert_eq!(count(&gw, RELOADS_FAILED), 0);
}

#[tokio::test]
async fn sighup_reloads_the_real_binary_and_warns_about_restart_only_settings() {
    let upstream = MockUpstream::start().await;
    let pki = Pki::new();
    let base = GatewayBuilder::new()
        .pki(pki.clone())
        .service("iris", IRIS, &upstream.url());
    let mut gw = GatewayProcess::start(base.clone());
    gw.wait_ready().await;
    let admin = Admin::of_process(&gw).await;

    let changed = base
        .listen(gw.scoring_addr, gw.admin_addr)
        .server("worker_threads = 3")
        .service("second", "/api/v1/service/second", &upstream.url());
    crate::support::certs::write_atomic(
        &gw.dir().join("scoregate.toml"),
        &changed.toml(&pki, gw.dir()),
    );
    gw.signal("HUP");
    admin
        .wait_activity("a reload by SIGHUP", |e| {
            is_reload(e, "signal", "Succeeded")
        })
        .await;
    assert_eq!(
        status(&gw.client(), gw.url("/api/v1/service/second/echo")).await,
        StatusCode::OK
    );
    // Whichever reload saw the change first (the signal or the file watcher) warned once.
    wait_until("the restart-only warning on stderr", || async {
        let stderr = gw.stderr();
        stderr.contains("applies only after a restart") && stderr.contains("server.worker_threads")
    })
    .await;
    // The activity entry also goes to the record stream (written by the sink's own thread).
    wait_until("the signal's activity entry on stdout", || async {
        gw.stdout().contains("\"initiator\":\"signal\"")
    })
    .await;
}

#[tokio::test]
async fn an_edited_config_file_is_applied_within_about_a_second() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &url)
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    assert_eq!(
        get(&gw, "/api/v1/service/second/echo").await,
        StatusCode::NOT_FOUND
    );

    let edited = Instant::now();
    rewrite(
        &gw,
        &GatewayBuilder::new().service("iris", IRIS, &url).service(
            "second",
            "/api/v1/service/second",
            &url,
        ),
    );
    // The watcher polls every 500 ms; allow for a loaded machine, not for a missed change.
    wait_until_within(
        Duration::from_secs(3),
        "the edit to take effect",
        || async { get(&gw, "/api/v1/service/second/echo").await == StatusCode::OK },
    )
    .await;
    let took = edited.elapsed();
    admin
        .wait_activity("the file-watch reload", |e| {
            is_reload(e, "file-watch", "Succeeded")
        })
        .await;
    // Counted just after the activity entry is written.
    wait_until("the reload to be counted", || async {
        count(&gw, RELOADS_OK) >= 1
    })
    .await;
    assert_eq!(
        count(&gw, RELOADS_OK),
        1,
        "one edit, one reload (took {took:?})"
    );
}

#[tokio::test]
async fn an_invalid_config_is_rejected_with_every_problem_and_the_running_one_stays() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &url)
        .start()
        .await;
    let admin = Admin::of(&gw).await;

    rewrite(
        &gw,
        &GatewayBuilder::new()
            .server("max_headers = 0")
            .service("iris", IRIS, "ftp://nowhere")
            .service("second", "/api/v1/service/second", &url),
    );
    // The watcher rejects it first (exactly once), so the counts below are exact.
    wait_until("the watcher to reject the edit", || async {
        count(&gw, RELOADS_FAILED) == 1
    })
    .await;
    let (code, body) = admin.reload().await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "reload_rejected");
    let message = body["error"]["message"].as_str().expect("message");
    for problem in ["2 problem(s)", "server.max_headers", "service[0].upstream"] {
        assert!(
            message.contains(problem),
            "{problem:?} missing from {message:?}"
        );
    }
    assert_eq!(count(&gw, RELOADS_FAILED), 2);
    assert_eq!(count(&gw, RELOADS_OK), 0);

    // Nothing of the rejected file applies.
    assert_eq!(get(&gw, &format!("{IRIS}/echo")).await, StatusCode::OK);
    assert_eq!(
        get(&gw, "/api/v1/service/second/echo").await,
        StatusCode::NOT_FOUND
    );
    let entry = admin
        .wait_activity("the rejected API reload", |e| {
            is_reload(e, "bootstrap-admin", "Failed")
        })
        .await;
    let reason = entry["reason"].as_str().expect("reason");
    assert!(reason.contains("server.max_headers"), "{entry}");
    admin
        .wait_activity("the rejected file-watch reload", |e| {
            is_reload(e, "file-watch", "Failed")
        })
        .await;

    // Fixing the file is enough.
    rewrite(
        &gw,
        &GatewayBuilder::new().service("iris", IRIS, &url).service(
            "second",
            "/api/v1/service/second",
            &url,
        ),
    );
    assert_eq!(admin.reload().await.0, StatusCode::OK);
    assert_eq!(
        get(&gw, "/api/v1/service/second/echo").await,
        StatusCode::OK
    );
}

/// Issue 13 made `[server.tls]` reloadable: a reload that changes the client CA applies it to new
/// connections (it was restart-only before).
#[tokio::test]
async fn a_changed_client_ca_is_applied_to_new_connections_by_a_reload() {
    let upstream = MockUpstream::start().await;
    let pki = Pki::new();
    let (old, new) = (
        crate::support::certs::TestCa::new("old client CA"),
        crate::support::certs::TestCa::new("new client CA"),
    );
    let client_ca = pki.dir().join("client-ca.pem");
    std::fs::write(&client_ca, &old.pem).expect("write client CA");
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
    let admin = Admin::of(&gw).await;

    // The CA file is not watched, so only this reload sees the change.
    crate::support::certs::write_atomic(&client_ca, &new.pem);
    let (code, summary) = admin.reload().await;
    assert_eq!(code, StatusCode::OK, "{summary}");
    assert_eq!(summary["restartRequired"], json!([]));

    // New connections are verified against the new CA only.
    let server_ca = crate::support::certs::der_of_pem(pki.ca_pem());
    let handshake_with = |ca: &crate::support::certs::TestCa| {
        let config = crate::support::certs::client_config_from_ders(
            std::slice::from_ref(&server_ca),
            Some(&ca.client_leaf("caller")),
            &[b"http/1.1"],
        );
        let addr = gw.scoring_addr;
        async move {
            // A refused client certificate may surface at the handshake, the write or the read.
            let mut tls = crate::support::certs::try_connect(addr, config).await?;
            let head =
                format!("GET {IRIS}/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            tls.write_all(head.as_bytes()).await?;
            let answer = crate::support::wire::read_to_close(&mut tls).await;
            Ok::<_, std::io::Error>(answer.starts_with(b"HTTP/1.1 200"))
        }
    };
    assert!(
        matches!(handshake_with(&new).await, Ok(true)),
        "new CA admitted"
    );
    assert!(
        !matches!(handshake_with(&old).await, Ok(true)),
        "old CA no longer admitted"
    );
}

/// `reload::build` stores every new value in `gw.config`, including restart-only ones that
/// were not applied, and the next reload compares against that. The file watcher (500 ms)
/// usually reloads an edited file before the operator's `POST /reload` arrives, so the
/// response the operator reads says nothing needs a restart.
#[tokio::test]
async fn restart_required_is_still_reported_after_the_watcher_applied_the_edit() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw = GatewayBuilder::new()
        .service("iris", IRIS, &url)
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    rewrite(
        &gw,
        &GatewayBuilder::new()
            .server("worker_threads = 3")
            .service("iris", IRIS, &url),
    );
    wait_until("the watcher to apply the edit", || async {
        count(&gw, RELOADS_OK) == 1
    })
    .await;
    let (code, summary) = admin.reload().await;
    assert_eq!(code, StatusCode::OK, "{summary}");
    assert_eq!(
        summary["restartRequired"],
        json!(["server.worker_threads"]),
        "worker_threads still needs a restart"
    );
}

#[tokio::test]
async fn readiness_stays_200_across_a_reload_that_keeps_every_upstream() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw = GatewayBuilder::new()
        .server("health_interval_ms = 60000")
        .service("iris", IRIS, &url)
        .start()
        .await;
    gw.wait_ready().await;
    let admin = Admin::of(&gw).await;
    rewrite(
        &gw,
        &GatewayBuilder::new()
            .server("health_interval_ms = 60000")
            .service_with("iris", IRIS, &url, "scoring_timeout_ms = 1234"),
    );
    assert_eq!(admin.reload().await.0, StatusCode::OK);
    let (code, ready) = gw.admin_get("/readyz").await;
    assert_eq!(code, StatusCode::OK, "{ready}");
}

/// `runtime::Service::new` starts a service whose upstream client was rebuilt as unhealthy, and
/// the health loop sleeps the full `health_interval_ms` while everything was healthy, so the
/// whole gateway reports not-ready until the next probe.
#[tokio::test]
async fn readiness_stays_200_when_a_reload_changes_only_a_connect_timeout() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw = GatewayBuilder::new()
        .server("health_interval_ms = 60000")
        .service("iris", IRIS, &url)
        .start()
        .await;
    gw.wait_ready().await;
    let admin = Admin::of(&gw).await;
    rewrite(
        &gw,
        &GatewayBuilder::new()
            .server("health_interval_ms = 60000")
            .service_with("iris", IRIS, &url, "connect_timeout_ms = 1234"),
    );
    assert_eq!(admin.reload().await.0, StatusCode::OK);
    wait_until_within(
        Duration::from_secs(3),
        "/readyz to answer 200 after the reload",
        || async { gw.admin_get("/readyz").await.0 == StatusCode::OK },
    )
    .await;
}
