//! Which credentials a key-mode service accepts, how the rest are refused, and that the
//! credential never reaches the scoring container.

use reqwest::StatusCode;
use serde_json::Value;

use super::support::check::{assert_error_body, header, send_json};
use super::support::{MockUpstream, TestGateway, within};
use super::{SCORE, key_gateway, score_with};

#[tokio::test]
async fn primary_and_secondary_keys_are_accepted_recorded_by_slot_and_never_forwarded() {
    let upstream = MockUpstream::start().await;
    let gw = key_gateway(&upstream).await;
    let (primary, secondary) = gw.list_keys("iris").await;
    assert_ne!(primary, secondary);
    for key in [&primary, &secondary] {
        assert!(key.len() >= 32, "generated keys are long: {key}");
    }

    for (client, key, slot) in [
        (gw.client(), &primary, "primary"),
        (gw.h2_client(), &secondary, "secondary"),
        (gw.h2_client(), &primary, "primary"),
        (gw.client(), &secondary, "secondary"),
    ] {
        let resp = within(
            "scoring with a key",
            client
                .post(gw.url(SCORE))
                .bearer_auth(key)
                .header("proxy-authorization", format!("Bearer {key}"))
                .body("{}")
                .send(),
        )
        .await
        .expect("gateway answered");
        assert_eq!(resp.status(), StatusCode::OK, "{slot}");
        let id = header(resp.headers(), "x-request-id").to_owned();
        let record = gw.record_for(&id).await;
        assert_eq!(record["Principal"], slot, "{record}");
        assert_eq!(record["AuthMode"], "key", "{record}");
        assert_eq!(record["StatusCode"], 200, "{record}");

        let seen = upstream
            .wait_for("the forwarded request", |s| {
                s.header("x-request-id") == Some(id.as_str())
            })
            .await;
        assert!(
            !seen.headers.contains_key("authorization"),
            "the upstream saw Authorization: {:?}",
            seen.headers
        );
        for (name, value) in &seen.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains(key.as_str()),
                "the key reached the upstream in {name}: {value}"
            );
        }
    }
    assert_eq!(
        gw.counter(r#"scoregate_key_auth_total{service="iris",slot="primary"}"#),
        2
    );
    assert_eq!(
        gw.counter(r#"scoregate_key_auth_total{service="iris",slot="secondary"}"#),
        2
    );
    assert_eq!(
        gw.counter(r#"scoregate_requests_total{method="POST",service="iris",status_class="2xx"}"#),
        4
    );
}

/// Sends `req`, expects a 401 with a bare Bearer challenge and `code`, and checks its record.
async fn assert_refused(gw: &TestGateway, what: &str, req: reqwest::RequestBuilder, code: &str) {
    let (status, headers, body) = send_json(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(header(&headers, "www-authenticate"), "Bearer", "{what}");
    let id = assert_error_body(&headers, &body, code);
    let record = gw.record_for(&id).await;
    assert_eq!(record["StatusCode"], 401, "{what}: {record}");
    assert_eq!(record["ErrorCode"], code, "{what}: {record}");
    assert_eq!(record["Principal"], Value::Null, "{what}: {record}");
    assert_eq!(
        record["UpstreamStatusCode"],
        Value::Null,
        "{what}: {record}"
    );
}

#[tokio::test]
async fn refused_credentials_get_401_with_a_bearer_challenge() {
    let upstream = MockUpstream::start().await;
    let gw = key_gateway(&upstream).await;
    let (primary, _) = gw.list_keys("iris").await;
    let (other_primary, _) = gw.list_keys("other").await;
    let url = gw.url(SCORE);
    let (h1, h2) = (gw.client(), gw.h2_client());
    let wrong = "x".repeat(primary.len());
    let huge = format!("Bearer {}", "k".repeat(10 * 1024));

    let missing = [
        ("no Authorization header", h1.post(&url)),
        (
            "Basic scheme",
            h1.post(&url).header("authorization", "Basic dXNlcjpwYXNz"),
        ),
        // HTTP/1.1 strips the trailing space (optional whitespace), leaving a bare "Bearer".
        (
            "empty bearer over HTTP/1.1",
            h1.post(&url).header("authorization", "Bearer "),
        ),
    ];
    for (what, req) in missing {
        assert_refused(&gw, what, req.body("{}"), "missing_credentials").await;
    }
    let invalid = [
        // HTTP/2 carries header values unmodified, so the gateway sees the empty credential.
        (
            "empty bearer over HTTP/2",
            h2.post(&url).header("authorization", "Bearer "),
        ),
        ("wrong key", h1.post(&url).bearer_auth(&wrong)),
        (
            "another service's key",
            h1.post(&url).bearer_auth(&other_primary),
        ),
        (
            "two Authorization headers, one of them right",
            h1.post(&url)
                .bearer_auth(&primary)
                .header("authorization", format!("Bearer {wrong}")),
        ),
        (
            "key with trailing whitespace over HTTP/2",
            h2.post(&url)
                .header("authorization", format!("Bearer {primary} ")),
        ),
        (
            "key with a trailing tab over HTTP/2",
            h2.post(&url)
                .header("authorization", format!("Bearer {primary}\t")),
        ),
        (
            "10 KiB Authorization header",
            h1.post(&url).header("authorization", huge.as_str()),
        ),
    ];
    for (what, req) in invalid {
        assert_refused(&gw, what, req.body("{}"), "invalid_credentials").await;
    }
    assert!(
        upstream.requests().is_empty(),
        "refused requests never reach the upstream: {:?}",
        upstream.requests()
    );
    assert_eq!(
        gw.counter(r#"scoregate_auth_failures_total{reason="missing_credentials",service="iris"}"#),
        3
    );
    assert_eq!(
        gw.counter(r#"scoregate_auth_failures_total{reason="invalid_credentials",service="iris"}"#),
        7
    );
    assert_eq!(
        gw.counter(r#"scoregate_key_auth_total{service="iris",slot="primary"}"#),
        0
    );

    // Over HTTP/1.1 the HTTP layer itself removes trailing whitespace (RFC 9112 §5), before the
    // gateway sees the value: the key is accepted there.
    let status = score_with(h1, &gw, &format!("{primary} ")).await;
    assert_eq!(status, StatusCode::OK, "HTTP/1.1 trims the trailing space");
}
