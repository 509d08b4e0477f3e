//! The admin listener's telemetry: `/metrics` access, and the activity log of management
//! operations and key-file changes (API, refusals, the offline CLI).

use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::support::check::header;
use super::support::mgmt_keys;
use super::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, process, wait_until};
use super::{OPEN, TOK};

async fn get_metrics(
    gw: &TestGateway,
    token: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    mgmt_keys::call(
        gw.admin_client(),
        Method::GET,
        &gw.admin_url("/metrics"),
        token,
        None,
    )
    .await
}

#[tokio::test]
async fn metrics_endpoint_needs_the_admin_credential_unless_public() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service("open", OPEN, &upstream.url())
        .start()
        .await;
    for (what, token, code) in [
        ("no credential", None, "missing_credentials"),
        (
            "a wrong credential",
            Some("not-the-admin-credential"),
            "invalid_credentials",
        ),
    ] {
        let (status, headers, body) = get_metrics(&gw, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(header(&headers, "www-authenticate"), "Bearer", "{what}");
        mgmt_keys::assert_admin_error(&headers, &body, code);
    }
    let token = gw.admin_token().await;
    let (status, headers, body) = get_metrics(&gw, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        header(&headers, "content-type").starts_with("text/plain"),
        "{headers:?}"
    );
    let text = body.as_str().expect("metrics text");
    assert!(text.contains("scoregate_build_info{version="), "{text}");
    let denied: Vec<Value> = gw
        .activity(100)
        .await
        .into_iter()
        .filter(|e| e["operationName"] == "readMetrics")
        .collect();
    assert_eq!(denied.len(), 2, "both refusals are audited: {denied:?}");
    assert!(
        denied
            .iter()
            .all(|e| e["result"] == "Denied" && e["initiator"] == "anonymous")
    );

    let public = GatewayBuilder::new()
        .server("public_metrics = true")
        .service("open", OPEN, &upstream.url())
        .start()
        .await;
    let (status, _, body) = get_metrics(&public, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body.as_str().expect("metrics text");
    assert!(text.contains("scoregate_build_info{version="), "{text}");
}

/// The newest activity entry named `operation` (and, if given, with this result).
fn entry<'a>(entries: &'a [Value], operation: &str, result: &str) -> &'a Value {
    entries
        .iter()
        .rev()
        .find(|e| e["operationName"] == operation && e["result"] == result)
        .unwrap_or_else(|| panic!("no {operation} {result} entry in {entries:#?}"))
}

#[tokio::test]
async fn management_operations_and_file_changes_are_in_the_activity_log() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .service_with("tok", TOK, &upstream.url(), "auth = \"token\"")
        .start()
        .await;
    let started = SystemTime::now();
    let call = |method, path, body| manage_with_id(&gw, method, path, body);
    let (status, list_id, listed) = call(Method::POST, "/services/iris/listkeys", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, regen_id, regenerated) = call(
        Method::POST,
        "/services/iris/regenerateKeys",
        Some(json!({"keyType": "Secondary"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, bad_id, _) = call(
        Method::POST,
        "/services/iris/regenerateKeys",
        Some(json!({"keyType": "Secondary", "keyValue": "short"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, token_id, token) = call(Method::POST, "/services/tok/token", None).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let (status, rotate_id, rotated) =
        call(Method::POST, "/services/tok/rotateSigningKey", None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (status, headers, _) = mgmt_keys::call(
        gw.admin_client(),
        Method::POST,
        &gw.admin_url("/services/iris/listkeys"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let denied_id = header(&headers, "x-request-id").to_owned();

    // The offline CLI changes the key file; the running gateway notices and names the CLI.
    cli_regen_primary(&gw).await;
    wait_until("the CLI's key change to reach the activity log", || async {
        gw.activity(100)
            .await
            .iter()
            .any(|e| e["operationName"] == "reloadKeys")
    })
    .await;

    let entries = gw.activity(100).await;
    for (operation, result, service, id) in [
        ("listKeys", "Succeeded", "iris", &list_id),
        ("regenerateKeys", "Succeeded", "iris", &regen_id),
        ("regenerateKeys", "Failed", "iris", &bad_id),
        ("issueToken", "Succeeded", "tok", &token_id),
        ("rotateSigningKey", "Succeeded", "tok", &rotate_id),
    ] {
        assert_api_entry(entry(&entries, operation, result), service, id, started);
    }
    assert_eq!(
        entry(&entries, "regenerateKeys", "Failed")["reason"],
        "invalid_request"
    );
    let denied = entry(&entries, "listKeys", "Denied");
    assert_eq!(denied["initiator"], "anonymous", "{denied}");
    assert_eq!(denied["reason"], "missing_credentials", "{denied}");
    assert_eq!(denied["RequestId"], denied_id.as_str(), "{denied}");
    let reload = entry(&entries, "reloadKeys", "Succeeded");
    assert_eq!(reload["initiator"], "cli", "{reload}");
    assert_eq!(reload["service"], "iris", "{reload}");
    assert_eq!(reload["sourceIp"], Value::Null, "{reload}");

    // Oldest first; `limit` keeps the newest.
    let operations: Vec<&str> = entries
        .iter()
        .map(|e| e["operationName"].as_str().expect("operationName"))
        .collect();
    assert_eq!(
        operations,
        [
            "listKeys",
            "regenerateKeys",
            "regenerateKeys",
            "issueToken",
            "rotateSigningKey",
            "listKeys",
            "reloadKeys"
        ]
    );
    let newest = gw.activity(2).await;
    assert_eq!(newest.as_slice(), &entries[entries.len() - 2..]);

    // The same entries go to the record stream; none holds a secret.
    let secrets = [
        listed["primaryKey"].as_str().expect("key"),
        listed["secondaryKey"].as_str().expect("key"),
        regenerated["secondaryKey"].as_str().expect("key"),
        token["accessToken"].as_str().expect("token"),
    ];
    assert_streamed_without_secrets(&gw, &entries, &secrets).await;
}

/// An admin call with the admin credential: status, the response's `x-request-id`, body.
async fn manage_with_id(
    gw: &TestGateway,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let (status, headers, resp) = gw.manage(method, path, body.as_ref()).await;
    (status, header(&headers, "x-request-id").to_owned(), resp)
}

/// An activity entry of a call the admin made through the API.
fn assert_api_entry(e: &Value, service: &str, request_id: &str, started: SystemTime) {
    assert_eq!(e["type"], "activity", "{e}");
    assert_eq!(e["initiator"], "bootstrap-admin", "{e}");
    assert_eq!(e["service"], service, "{e}");
    assert_eq!(e["sourceIp"], "127.0.0.1", "{e}");
    assert_eq!(e["RequestId"], request_id, "{e}");
    let ts = humantime::parse_rfc3339(e["timestamp"].as_str().expect("timestamp"))
        .expect("RFC 3339 timestamp");
    assert!(ts + Duration::from_secs(1) >= started, "{e}");
}

/// `scoregate keys regen --key primary` on the running gateway's configuration.
async fn cli_regen_primary(gw: &TestGateway) {
    let config = gw.dir().join("scoregate.toml");
    let out = process::run(
        &[
            "keys",
            "regen",
            "--config",
            config.to_str().expect("UTF-8 path"),
            "--service",
            "iris",
            "--key",
            "primary",
        ],
        Duration::from_secs(15),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
}

/// The activity `entries` are also in the record stream, and none of them holds a secret.
async fn assert_streamed_without_secrets(gw: &TestGateway, entries: &[Value], secrets: &[&str]) {
    let streamed = || -> Vec<Value> {
        gw.records()
            .into_iter()
            .filter(|r| r["type"] == "activity")
            .collect()
    };
    wait_until("the entries to reach the record stream", || async {
        streamed().len() >= entries.len()
    })
    .await;
    assert_eq!(streamed(), entries);
    let text = serde_json::to_string(entries).expect("serialize");
    for secret in secrets {
        assert!(!text.contains(secret), "a secret is in the activity log");
    }
}

/// More than a ring's worth of unauthenticated calls (issue 15 item 8) neither evicts nor hides
/// the authenticated operations: anonymous refusals are kept apart and aggregated per source and
/// reason, while the record stream still has each of them.
#[tokio::test]
async fn anonymous_refusals_cannot_flush_authenticated_operations_from_the_activity_log() {
    const FLOOD: usize = 1_150;
    const WRONG: usize = 30;
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .start()
        .await;
    let (status, regen_id, _) = manage_with_id(
        &gw,
        Method::POST,
        "/services/iris/regenerateKeys",
        Some(json!({"keyType": "Secondary"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let listkeys = gw.admin_url("/services/iris/listkeys");
    let mut last_id = String::new();
    for (n, credential) in [(FLOOD, None), (WRONG, Some("not-the-admin-credential"))] {
        for _ in 0..n {
            let (status, headers, _) =
                mgmt_keys::call(gw.admin_client(), Method::POST, &listkeys, credential, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            last_id = header(&headers, "x-request-id").to_owned();
        }
    }

    for limit in [100, 1000] {
        let entries = gw.activity(limit).await;
        let regen = entry(&entries, "regenerateKeys", "Succeeded");
        assert_eq!(regen["initiator"], "bootstrap-admin", "{regen}");
        assert_eq!(regen["RequestId"], regen_id.as_str(), "{regen}");
        let denied: Vec<&Value> = entries
            .iter()
            .filter(|e| e["initiator"] == "anonymous")
            .collect();
        assert_eq!(
            denied.len(),
            2,
            "one entry per source and reason: {denied:#?}"
        );
        let by_reason = |reason: &str| {
            denied
                .iter()
                .find(|e| e["reason"] == reason)
                .unwrap_or_else(|| panic!("no {reason} entry in {denied:#?}"))
        };
        let missing = by_reason("missing_credentials");
        assert_eq!(missing["count"], FLOOD, "{missing}");
        assert_eq!(missing["sourceIp"], "127.0.0.1", "{missing}");
        assert_eq!(missing["operationName"], "listKeys", "{missing}");
        let wrong = by_reason("invalid_credentials");
        assert_eq!(wrong["count"], WRONG, "{wrong}");
        assert_eq!(wrong["RequestId"], last_id.as_str(), "the latest: {wrong}");
        assert!(
            regen.get("count").is_none(),
            "only aggregated refusals carry a count"
        );
    }

    // The record stream keeps every refusal as its own line.
    wait_until("every refusal to reach the record stream", || async {
        gw.records()
            .iter()
            .filter(|r| r["type"] == "activity" && r["initiator"] == "anonymous")
            .count()
            == FLOOD + WRONG
    })
    .await;
}
