//! The management API for keys: regenerating (generated or chosen values), validation,
//! operator-owned read-only key files, hashed storage, file modes and last-used times.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::support::check::header;
use super::support::mgmt_keys::{self, assert_admin_error};
use super::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, within};
use super::{
    SCORE, key_file_text, key_gateway, operator_file_gateway, operator_key, reloads, score,
    state_key_file,
};

#[tokio::test]
async fn regenerate_via_api_applies_to_the_very_next_request() {
    let upstream = MockUpstream::start().await;
    let gw = key_gateway(&upstream).await;
    let (p0, s0) = gw.list_keys("iris").await;
    let other_before = gw.list_keys("other").await;
    assert_eq!(score(&gw, &s0).await, StatusCode::OK, "warm the connection");

    // keyType is matched case-insensitively (the Azure ML SDK capitalises, others may not).
    let body = gw.regenerate("iris", "secondary", None).await;
    assert_eq!(body["primaryKey"], p0.as_str(), "{body}");
    let s1 = body["secondaryKey"]
        .as_str()
        .expect("the new secondary key")
        .to_owned();
    assert_ne!(s1, s0);
    assert!(s1.len() >= 32, "{s1}");
    assert_eq!(score(&gw, &s0).await, StatusCode::UNAUTHORIZED, "old key");
    assert_eq!(score(&gw, &s1).await, StatusCode::OK, "new key");
    assert_eq!(score(&gw, &p0).await, StatusCode::OK, "untouched slot");

    let chosen = operator_key("chosen");
    let body = gw.regenerate("iris", "PRIMARY", Some(&chosen)).await;
    assert_eq!(
        body,
        json!({"primaryKey": chosen, "secondaryKey": s1}),
        "both keys after regenerating the primary"
    );
    assert_eq!(score(&gw, &p0).await, StatusCode::UNAUTHORIZED, "old key");
    assert_eq!(score(&gw, &chosen).await, StatusCode::OK, "new key");
    assert_eq!(score(&gw, &s1).await, StatusCode::OK, "untouched slot");

    assert_eq!(gw.list_keys("iris").await, (chosen.clone(), s1.clone()));
    assert_eq!(gw.list_keys("other").await, other_before, "other service");
    let stored = std::fs::read_to_string(state_key_file(&gw, "iris")).expect("read key file");
    assert!(stored.contains(&chosen) && stored.contains(&s1), "{stored}");
    assert!(!stored.contains(&p0) && !stored.contains(&s0), "{stored}");
    // Changes made through the API are not mistaken for file changes by the watch.
    assert_eq!(reloads(&gw, "success"), 0);
}

#[tokio::test]
async fn management_calls_are_validated_and_leave_keys_alone_when_refused() {
    let upstream = MockUpstream::start().await;
    let gw = key_gateway(&upstream).await;
    let before = gw.list_keys("iris").await;
    let regen = |service: &str| format!("/services/{service}/regenerateKeys");

    let cases = [
        (
            "keyValue of 31 characters",
            json!({"keyType": "Primary", "keyValue": "k".repeat(31)}),
            "keyValue",
        ),
        (
            "keyValue of 257 characters",
            json!({"keyType": "Primary", "keyValue": "k".repeat(257)}),
            "keyValue",
        ),
        (
            "keyValue with a space",
            json!({"keyType": "Primary", "keyValue": format!("{} x", "k".repeat(40))}),
            "keyValue",
        ),
        (
            "keyValue equal to the other key",
            json!({"keyType": "Primary", "keyValue": before.1}),
            "keyValue",
        ),
        (
            "unknown keyType",
            json!({"keyType": "Tertiary", "keyValue": null}),
            "keyType",
        ),
        ("missing keyType", json!({"keyValue": null}), "keyType"),
    ];
    for (what, body, names) in cases {
        let (status, headers, resp) = gw.manage(Method::POST, &regen("iris"), Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {resp}");
        assert_admin_error(&headers, &resp, "invalid_request");
        let message = resp["error"]["message"].as_str().expect("message");
        assert!(message.contains(names), "{what}: {message}");
    }

    for op in ["listkeys", "regenerateKeys"] {
        let body = json!({"keyType": "Primary"});
        let path = format!("/services/nope/{op}");
        let (status, headers, resp) = gw.manage(Method::POST, &path, Some(&body)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {resp}");
        assert_admin_error(&headers, &resp, "service_not_found");

        let path = format!("/services/open/{op}");
        let (status, headers, resp) = gw.manage(Method::POST, &path, Some(&body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {resp}");
        assert_admin_error(&headers, &resp, "not_key_mode");
    }

    // Without the admin credential, or with a scoring key instead of it.
    let body = json!({"keyType": "Primary"});
    for (what, token, code) in [
        ("no credential", None, "missing_credentials"),
        (
            "a scoring key",
            Some(before.0.as_str()),
            "invalid_credentials",
        ),
    ] {
        let (status, headers, resp) = mgmt_keys::call(
            gw.admin_client(),
            Method::POST,
            &gw.admin_url(&regen("iris")),
            token,
            Some(&body),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {resp}");
        assert_eq!(header(&headers, "www-authenticate"), "Bearer", "{what}");
        assert_admin_error(&headers, &resp, code);
    }
    assert_eq!(
        gw.list_keys("iris").await,
        before,
        "no refused call changed a key"
    );

    // The limit itself is fine.
    let exactly_32 = "k".repeat(32);
    let body = gw.regenerate("iris", "Primary", Some(&exactly_32)).await;
    assert_eq!(body["primaryKey"], exactly_32.as_str());
    assert_eq!(score(&gw, &exactly_32).await, StatusCode::OK);
}

#[tokio::test]
async fn operator_keys_file_is_used_and_is_read_only() {
    let upstream = MockUpstream::start().await;
    let secret = tempfile::tempdir().expect("operator dir");
    let path = secret.path().join("keys.json");
    let (a, b) = (operator_key("a"), operator_key("b"));
    let text = key_file_text(&a, &b);
    std::fs::write(&path, &text).expect("write operator key file");
    let gw = operator_file_gateway(&upstream, &path).await;

    assert_eq!(score(&gw, &a).await, StatusCode::OK);
    assert_eq!(score(&gw, &b).await, StatusCode::OK);
    assert_eq!(gw.list_keys("iris").await, (a.clone(), b.clone()));

    for body in [
        json!({"keyType": "Secondary", "keyValue": null}),
        json!({"keyType": "Primary", "keyValue": operator_key("c")}),
    ] {
        let (status, headers, resp) = gw
            .manage(Method::POST, "/services/iris/regenerateKeys", Some(&body))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{resp}");
        assert_admin_error(&headers, &resp, "keys_read_only");
        let message = resp["error"]["message"].as_str().expect("message");
        assert!(message.contains("read-only"), "{message}");
    }
    assert_eq!(
        std::fs::read_to_string(&path).expect("read operator key file"),
        text,
        "the operator's file is never written"
    );
    assert_eq!(score(&gw, &a).await, StatusCode::OK);
    assert_eq!(score(&gw, &b).await, StatusCode::OK);
}

#[tokio::test]
async fn hashed_storage_shows_a_new_key_once_and_stores_no_plain_key() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "auth = \"key\"\nkey_storage = \"hashed\"",
        )
        .start()
        .await;
    gw.wait_ready().await;
    let file = state_key_file(&gw, "iris");
    let stored = || -> Value {
        serde_json::from_slice(&std::fs::read(&file).expect("read key file")).expect("JSON")
    };
    let on_disk = stored();
    assert_eq!(on_disk["storage"], "hashed", "{on_disk}");
    assert_eq!(on_disk["primaryKey"], Value::Null, "{on_disk}");
    assert_eq!(on_disk["secondaryKey"], Value::Null, "{on_disk}");

    let (status, headers, resp) = gw
        .manage(Method::POST, "/services/iris/listkeys", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert_admin_error(&headers, &resp, "keys_hashed");

    let body = gw.regenerate("iris", "Primary", None).await;
    assert_eq!(body["secondaryKey"], Value::Null, "{body}");
    let primary = body["primaryKey"]
        .as_str()
        .expect("the new key, shown once")
        .to_owned();
    let chosen = operator_key("hashed");
    let body = gw.regenerate("iris", "Secondary", Some(&chosen)).await;
    assert_eq!(body, json!({"primaryKey": null, "secondaryKey": chosen}));

    let resp = within(
        "score with the new primary",
        gw.client().post(gw.url(SCORE)).bearer_auth(&primary).send(),
    )
    .await
    .expect("gateway answered");
    assert_eq!(resp.status(), StatusCode::OK);
    let id = header(resp.headers(), "x-request-id").to_owned();
    assert_eq!(gw.record_for(&id).await["Principal"], "primary");
    assert_eq!(score(&gw, &chosen).await, StatusCode::OK);

    let text = std::fs::read_to_string(&file).expect("read key file");
    for key in [&primary, &chosen] {
        assert!(!text.contains(key.as_str()), "plain key stored: {text}");
    }
    let on_disk = stored();
    assert_eq!(on_disk["storage"], "hashed", "{on_disk}");
    for field in ["salt", "primaryKeyHash", "secondaryKeyHash"] {
        assert!(on_disk[field].is_string(), "{field}: {on_disk}");
    }
    assert_eq!(mode(&file), 0o600);
    let (status, _, resp) = gw
        .manage(Method::POST, "/services/iris/listkeys", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "still not listable: {resp}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn key_files_and_the_admin_credential_are_private() {
    let upstream = MockUpstream::start().await;
    let gw = key_gateway(&upstream).await;
    let state = gw.dir().join("state");
    assert_eq!(mode(&state), 0o700, "state directory");
    assert_eq!(mode(&state.join("keys")), 0o700, "keys directory");
    assert_eq!(mode(&state.join("admin.token")), 0o600, "admin.token");
    for service in ["iris", "other"] {
        assert_eq!(mode(&state_key_file(&gw, service)), 0o600, "{service}");
    }
    gw.regenerate("iris", "Primary", None).await;
    assert_eq!(mode(&state_key_file(&gw, "iris")), 0o600, "after a rewrite");
    let leftovers: Vec<_> = std::fs::read_dir(state.join("keys"))
        .expect("list keys directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "no temporary files: {leftovers:?}");
}

/// `listkeys` with the credential, as raw JSON.
async fn listing(gw: &TestGateway) -> Value {
    let (status, _, body) = gw
        .manage(Method::POST, "/services/iris/listkeys", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn unix_of(rfc3339: &Value) -> u64 {
    let text = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("a time: {rfc3339}"));
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"))
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}

#[tokio::test]
async fn listkeys_reports_when_each_key_was_last_used() {
    let upstream = MockUpstream::start().await;
    let gw = key_gateway(&upstream).await;
    let first = listing(&gw).await;
    assert_eq!(first["primaryKeyLastUsed"], Value::Null, "{first}");
    assert_eq!(first["secondaryKeyLastUsed"], Value::Null, "{first}");
    let (primary, secondary) = gw.list_keys("iris").await;

    let before = now_secs();
    assert_eq!(score(&gw, &primary).await, StatusCode::OK);
    let after = now_secs();
    let body = listing(&gw).await;
    let used = unix_of(&body["primaryKeyLastUsed"]);
    assert!(
        (before..=after).contains(&used),
        "{used} not in {before}..={after}"
    );
    assert_eq!(body["secondaryKeyLastUsed"], Value::Null, "{body}");
    // A refused key does not count as a use of anything.
    assert_eq!(score(&gw, "nope").await, StatusCode::UNAUTHORIZED);
    assert_eq!(listing(&gw).await["secondaryKeyLastUsed"], Value::Null);

    assert_eq!(score(&gw, &secondary).await, StatusCode::OK);
    let body = listing(&gw).await;
    assert!(body["secondaryKeyLastUsed"].is_string(), "{body}");

    // A new primary has never been used; the secondary keeps its history.
    gw.regenerate("iris", "Primary", None).await;
    let body = listing(&gw).await;
    assert_eq!(body["primaryKeyLastUsed"], Value::Null, "{body}");
    assert!(body["secondaryKeyLastUsed"].is_string(), "{body}");
}
