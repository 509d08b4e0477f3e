//! Token mode end to end, over real TLS: tokens issued by the management API and tokens minted
//! by an independent implementation (`support::jwt`) are accepted, refused ones get an RFC 6750
//! challenge, the subject (never the token) reaches the scoring container, the verified-token
//! cache and expiry interact correctly, signing keys rotate through the API and the CLI, and
//! trusted issuers' JWKS URLs gate readiness, follow key rotation and survive outages.
//! The table of hand-made malformed tokens lives in the unit tests (`src/auth/jwt/tests.rs`).
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Version};
use serde_json::{Value, json};
use support::check::{assert_error_body, header};
use support::jwks::JwksServer;
use support::jwt::{Minter, claims, jwks, kid_of, segment, unix_now};
use support::mgmt::{access_token, activity, bootstrap_credential, call, issue_token};
use support::process;
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until, within};

/// A trusted issuer's name and the audience it issues `iris` tokens for.
const ISSUER: &str = "https://login.test/tenant";
const AUDIENCE: &str = "api://iris";

/// A gateway whose `iris` service uses token mode with these `[service.token]` lines.
async fn token_gateway(upstream: &MockUpstream, token_lines: &str) -> TestGateway {
    GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            &format!("auth = \"token\"\n[service.token]\n{token_lines}"),
        )
        .start()
        .await
}

/// A token-mode `iris` that also trusts [`ISSUER`] through a JWKS URL.
async fn jwks_gateway(upstream: &MockUpstream, jwks_url: &str, refresh_s: u64) -> TestGateway {
    token_gateway(
        upstream,
        &format!(
            "[[service.token.trusted_issuer]]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
             algorithm = \"ES256\"\njwks_url = \"{jwks_url}\"\njwks_refresh_s = {refresh_s}\n"
        ),
    )
    .await
}

fn signing_state(gw: &TestGateway, service: &str) -> PathBuf {
    gw.dir()
        .join("state")
        .join("signing")
        .join(format!("{service}.json"))
}

/// Claims of a token from [`ISSUER`] for `iris`.
fn issuer_claims(sub: &str) -> Value {
    claims(ISSUER, AUDIENCE, sub, 600)
}

/// Claims of a token as `iris` itself would issue it.
fn own_claims(service: &str, sub: &str, lifetime_s: u64) -> Value {
    claims("scoregate", service, sub, lifetime_s)
}

/// `POST {route}/score` with `token` over `client`: status, headers and the JSON body.
async fn score_with(
    client: &reqwest::Client,
    gw: &TestGateway,
    route: &str,
    token: &str,
) -> (StatusCode, Version, HeaderMap, Value) {
    let resp = within(
        "scoring request",
        client
            .post(gw.url(&format!("{route}/score")))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body("{}")
            .send(),
    )
    .await
    .expect("the gateway answered");
    let (status, version, headers) = (resp.status(), resp.version(), resp.headers().clone());
    let body = within("response body", resp.json::<Value>())
        .await
        .expect("JSON body");
    (status, version, headers, body)
}

/// `POST /api/v1/service/iris/score` over HTTP/1.1: status and JSON body.
async fn score(gw: &TestGateway, token: &str) -> (StatusCode, Value) {
    let (status, _, _, body) = score_with(gw.client(), gw, IRIS, token).await;
    (status, body)
}

/// Asserts the request is accepted and the scoring container saw `subject`.
async fn assert_accepted(gw: &TestGateway, token: &str, subject: &str, what: &str) {
    let (status, body) = score(gw, token).await;
    assert_eq!(status, StatusCode::OK, "{what}: {body}");
    assert_eq!(
        body["headers"]["x-scoregate-subject"],
        json!([subject]),
        "{what}"
    );
}

/// Asserts a 401 with `WWW-Authenticate: Bearer error="invalid_token", error_description=...`
/// and the error body's `code`.
async fn assert_refused(gw: &TestGateway, token: &str, description: &str, code: &str) {
    let (status, _, headers, body) = score_with(gw.client(), gw, IRIS, token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{description}: {body}");
    assert_eq!(
        header(&headers, "www-authenticate"),
        format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
    );
    assert_error_body(&headers, &body, code);
}

fn series(name: &str, result: &str) -> String {
    format!("{name}{{result=\"{result}\",service=\"iris\"}}")
}

fn jwks_series(name: &str, result: Option<&str>) -> String {
    match result {
        Some(r) => format!("{name}{{issuer=\"{ISSUER}\",result=\"{r}\",service=\"iris\"}}"),
        None => format!("{name}{{issuer=\"{ISSUER}\",service=\"iris\"}}"),
    }
}

/// `scoregate_token_cache_total` as (misses, hits).
fn cache(gw: &TestGateway) -> (f64, f64) {
    let count = |result: &str| {
        gw.metric(&series("scoregate_token_cache_total", result))
            .expect("token cache counters exist from startup")
    };
    (count("miss"), count("hit"))
}

fn jwks_fetches(gw: &TestGateway, result: &str) -> f64 {
    gw.metric(&jwks_series("scoregate_jwks_fetch_total", Some(result)))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn issued_token_is_accepted_over_http1_and_http2_and_only_the_subject_goes_upstream() {
    let upstream = MockUpstream::start().await;
    let gw = token_gateway(&upstream, "lifetime_s = 600\nrefresh_after_s = 300").await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;

    let before = unix_now();
    let issued = issue_token(&gw, "iris", &admin).await;
    let after = unix_now();
    assert_eq!(issued["tokenType"], "Bearer");
    let expiry = issued["expiryOn"]
        .as_u64()
        .expect("expiryOn is unix seconds");
    let refresh = issued["refreshAfter"]
        .as_u64()
        .expect("refreshAfter is unix seconds");
    assert!((before + 600..=after + 600).contains(&expiry), "{issued}");
    assert!((before + 300..=after + 300).contains(&refresh), "{issued}");
    let token = issued["accessToken"].as_str().expect("accessToken");
    let head = segment(token, 0);
    assert_eq!(head["alg"], "ES256", "the default algorithm");
    let signer = Minter::from_signing_state(&signing_state(&gw, "iris"), None);
    assert_eq!(head["kid"], signer.kid, "signed by the persisted key");
    let body = segment(token, 1);
    assert_eq!(
        (&body["iss"], &body["aud"], &body["sub"], &body["exp"]),
        (
            &json!("scoregate"),
            &json!("iris"),
            &json!("bootstrap-admin"),
            &json!(expiry)
        ),
        "{body}"
    );

    for (client, version) in [
        (gw.client(), Version::HTTP_11),
        (gw.h2_client(), Version::HTTP_2),
    ] {
        let resp = within(
            "scoring request with a token",
            client
                .post(gw.url(&format!("{IRIS}/score")))
                .bearer_auth(token)
                // Only the gateway speaks for the caller: a client-sent subject is dropped.
                .header("x-scoregate-subject", "mallory")
                .body("{}")
                .send(),
        )
        .await
        .expect("the gateway answered");
        assert_eq!(resp.status(), StatusCode::OK, "{version:?}");
        assert_eq!(resp.version(), version);
        assert_eq!(
            header(resp.headers(), "x-token-refresh-after"),
            refresh.to_string(),
            "{version:?}"
        );
        let request_id = header(resp.headers(), "x-request-id").to_owned();
        let echo: Value = within("echo body", resp.json()).await.expect("echo JSON");
        assert_eq!(
            echo["headers"]["x-scoregate-subject"],
            json!(["bootstrap-admin"]),
            "{version:?}: {echo}"
        );
        assert!(
            echo["headers"].get("authorization").is_none(),
            "{version:?}: the token never reaches the container: {echo}"
        );
        let record = gw.record_for(&request_id).await;
        assert_eq!(record["Principal"], "bootstrap-admin", "{record}");
        assert_eq!(record["StatusCode"], 200, "{record}");
    }
}

#[tokio::test]
async fn refused_tokens_get_401_with_an_invalid_token_challenge() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "auth = \"token\"\n[service.token]\n",
        )
        .service_with(
            "iris2",
            "/api/v1/service/iris2",
            &upstream.url(),
            "auth = \"token\"\n[service.token]\n",
        )
        .start()
        .await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;
    let own = Minter::from_signing_state(&signing_state(&gw, "iris"), None);
    let good = access_token(&gw, "iris", &admin).await;
    let now = unix_now();

    // No credential at all: a bare challenge (RFC 6750 §3.1), no error code.
    let resp = within(
        "request without a token",
        gw.client().post(gw.url(&format!("{IRIS}/score"))).send(),
    )
    .await
    .expect("answered");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(resp.headers(), "www-authenticate"), "Bearer");

    let mut expired = own_claims("iris", "alice", 0);
    expired["exp"] = json!(now - 3600); // far beyond the default 60 s leeway
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let mut body = segment(&good, 1);
        body["sub"] = json!("mallory");
        format!(
            "{}.{}.{}",
            parts[0],
            support::jwt::b64(body.to_string().as_bytes()),
            parts[2]
        )
    };
    let cases = [
        (
            "expired",
            own.token(&expired),
            "token expired",
            "token_expired",
        ),
        (
            "signed with iris's key for another audience",
            own.token(&own_claims("someone-else", "alice", 600)),
            "audience not accepted",
            "token_audience",
        ),
        (
            "issued by another token-mode service",
            access_token(&gw, "iris2", &admin).await,
            "unknown signing key",
            "token_unknown_key",
        ),
        (
            "payload changed after signing",
            tampered,
            "signature invalid",
            "token_signature",
        ),
    ];
    for (what, token, description, code) in &cases {
        assert_refused(&gw, token, description, code).await;
        let failures = gw.metric(&format!(
            "scoregate_auth_failures_total{{reason=\"{code}\",service=\"iris\"}}"
        ));
        assert_eq!(failures, Some(1.0), "{what} counted once under {code}");
    }
    assert!(
        upstream.requests().is_empty(),
        "no refused request reached the container"
    );
    // The genuine token still works, and the other service accepts its own token.
    assert_accepted(&gw, &good, "bootstrap-admin", "the genuine token").await;
    let other = access_token(&gw, "iris2", &admin).await;
    let (status, _, _, _) = score_with(gw.client(), &gw, "/api/v1/service/iris2", &other).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_9_kib_token_is_refused_as_too_large() {
    let upstream = MockUpstream::start().await;
    let gw = token_gateway(&upstream, "").await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;
    let good = access_token(&gw, "iris", &admin).await;
    let big = format!("{good}{}", "a".repeat(9 * 1024));
    assert_refused(&gw, &big, "token too large", "token_too_large").await;
    assert_eq!(cache(&gw), (0.0, 0.0), "refused before any verification");
}

#[tokio::test]
async fn a_token_just_over_8_kib_is_refused_as_too_large() {
    // Within the bearer parser's slack (8 KiB + 16 bytes), the token-size check itself answers.
    let upstream = MockUpstream::start().await;
    let gw = token_gateway(&upstream, "").await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;
    let good = access_token(&gw, "iris", &admin).await;
    let big = format!("{good}{}", "a".repeat(8 * 1024 + 1 - good.len()));
    assert_eq!(big.len(), 8 * 1024 + 1);
    assert_refused(&gw, &big, "token too large", "token_too_large").await;
    assert_eq!(cache(&gw), (0.0, 0.0), "refused before any verification");
}

#[tokio::test]
async fn tokens_are_issued_only_for_token_mode_services() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with("keyed", IRIS, &upstream.url(), "auth = \"key\"")
        .start()
        .await;
    let admin = bootstrap_credential(&gw).await;
    for op in ["token", "rotateSigningKey"] {
        let answer = call(
            &gw,
            Method::POST,
            &format!("/services/keyed/{op}"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::CONFLICT, "{op}: {}", answer.text);
        let body = answer.json();
        assert_eq!(body["error"]["code"], "not_token_mode", "{op}: {body}");
    }
}

#[tokio::test]
async fn a_service_with_two_auth_modes_is_a_config_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_pki, path) = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            "http://127.0.0.1:5001",
            "auth = \"key\"\n[service.token]\nalgorithm = \"ES256\"",
        )
        .write(dir.path());
    let out = process::run(
        &[
            "check-config",
            "--config",
            path.to_str().expect("UTF-8 path"),
        ],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr.contains("service[0].token:") && out.stderr.contains("exactly one mode"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn every_algorithm_works_end_to_end_with_issued_and_independently_minted_tokens() {
    const ALGORITHMS: [&str; 4] = ["ES256", "RS256", "EdDSA", "HS256"];
    let upstream = MockUpstream::start().await;
    let mut builder = GatewayBuilder::new();
    for alg in ALGORITHMS {
        let name = alg.to_lowercase();
        builder = builder.service_with(
            &name,
            &format!("/api/v1/service/{name}"),
            &upstream.url(),
            &format!("auth = \"token\"\n[service.token]\nalgorithm = \"{alg}\""),
        );
    }
    let gw = builder.start().await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;
    for alg in ALGORITHMS {
        let name = alg.to_lowercase();
        let route = format!("/api/v1/service/{name}");
        let issued = access_token(&gw, &name, &admin).await;
        assert_eq!(segment(&issued, 0)["alg"], alg);
        // A second implementation signs with the persisted key; the gateway cannot tell them
        // apart.
        let minter = Minter::from_signing_state(&signing_state(&gw, &name), None);
        assert_eq!(minter.alg(), alg);
        let minted = minter.token(&own_claims(&name, &format!("independent-{name}"), 600));
        for (token, subject) in [
            (&issued, "bootstrap-admin".to_owned()),
            (&minted, format!("independent-{name}")),
        ] {
            let (status, _, _, body) = score_with(gw.client(), &gw, &route, token).await;
            assert_eq!(status, StatusCode::OK, "{alg}: {body}");
            assert_eq!(
                body["headers"]["x-scoregate-subject"],
                json!([subject]),
                "{alg}"
            );
        }
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_even_though_it_is_cached() {
    let upstream = MockUpstream::start().await;
    let gw = token_gateway(
        &upstream,
        "lifetime_s = 2\nrefresh_after_s = 1\nleeway_s = 0",
    )
    .await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;
    let issued = issue_token(&gw, "iris", &admin).await;
    let token = issued["accessToken"].as_str().expect("accessToken");
    let exp = issued["expiryOn"].as_u64().expect("expiryOn");
    assert_eq!(
        issued["refreshAfter"].as_u64(),
        Some(exp - 1),
        "refresh_after_s = 1"
    );

    assert_accepted(&gw, token, "bootstrap-admin", "fresh token").await;
    assert_accepted(&gw, token, "bootstrap-admin", "fresh token, again").await;
    assert_eq!(cache(&gw), (1.0, 1.0));

    // Wait for wall-clock time to pass `exp` (leeway 0).
    wait_until("the clock to pass the token's exp", || async {
        unix_now() > exp
    })
    .await;
    assert_refused(&gw, token, "token expired", "token_expired").await;
    assert_eq!(
        cache(&gw),
        (1.0, 2.0),
        "refused on the cache hit, without a new verification"
    );
    // The expired entry is gone: a retry verifies from scratch and is refused again.
    assert_refused(&gw, token, "token expired", "token_expired").await;
    assert_eq!(cache(&gw), (2.0, 2.0));
}

#[tokio::test]
async fn cache_counters_count_one_verification_per_distinct_accepted_token() {
    let upstream = MockUpstream::start().await;
    let gw = token_gateway(&upstream, "").await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;
    assert_eq!(cache(&gw), (0.0, 0.0));
    let a = access_token(&gw, "iris", &admin).await;
    let b = access_token(&gw, "iris", &admin).await;
    for _ in 0..3 {
        assert_accepted(&gw, &a, "bootstrap-admin", "token a").await;
    }
    assert_accepted(&gw, &b, "bootstrap-admin", "token b").await;
    assert_eq!(cache(&gw), (2.0, 2.0));

    // Refused tokens are never cached: each attempt is a miss.
    let forged = format!("{}x", &a[..a.len() - 1]);
    for _ in 0..2 {
        let (status, _) = score(&gw, &forged).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(cache(&gw), (4.0, 2.0));
}

#[tokio::test]
async fn rotating_the_signing_key_through_the_api_keeps_old_tokens_until_they_expire() {
    let upstream = MockUpstream::start().await;
    let gw = token_gateway(
        &upstream,
        "lifetime_s = 3\nrefresh_after_s = 1\nleeway_s = 0",
    )
    .await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;
    let state = signing_state(&gw, "iris");

    let old = issue_token(&gw, "iris", &admin).await;
    let old_token = old["accessToken"].as_str().expect("accessToken").to_owned();
    let old_exp = old["expiryOn"].as_u64().expect("expiryOn");
    let old_kid = kid_of(&old_token);
    assert_accepted(&gw, &old_token, "bootstrap-admin", "before rotation").await;
    // A long-lived token signed by the old key, never seen before the rotation.
    let old_key = Minter::from_signing_state(&state, Some(&old_kid));
    let long_lived = old_key.token(&own_claims("iris", "long-lived", 600));

    let rotated = call(
        &gw,
        Method::POST,
        "/services/iris/rotateSigningKey",
        Some(&admin),
        None,
    )
    .await;
    let rotated_at = unix_now();
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let new_kid = rotated.json()["kid"]
        .as_str()
        .expect("the new kid")
        .to_owned();
    assert_ne!(new_kid, old_kid);

    // Persisted: the old key retires after lifetime + leeway, the new one signs.
    let file: Value =
        serde_json::from_slice(&std::fs::read(&state).expect("read signing state")).expect("JSON");
    let keys = file["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "{file}");
    assert_eq!(keys[0]["kid"], old_kid);
    let retire = keys[0]["retireAfter"].as_u64().expect("old key retires");
    assert!(
        (rotated_at.saturating_sub(1) + 3..=rotated_at + 3).contains(&retire),
        "retireAfter {retire} is the rotation time + lifetime_s (3 s)"
    );
    assert_eq!(keys[1]["kid"], new_kid);
    assert!(keys[1]["retireAfter"].is_null());
    assert_eq!(file["updatedBy"], "bootstrap-admin");

    let new_token = access_token(&gw, "iris", &admin).await;
    assert_eq!(kid_of(&new_token), new_kid, "new tokens carry the new kid");
    assert_accepted(&gw, &new_token, "bootstrap-admin", "new token").await;
    assert_accepted(&gw, &old_token, "bootstrap-admin", "old token, still valid").await;
    assert_accepted(&gw, &long_lived, "long-lived", "old key during the overlap").await;

    wait_until("the clock to pass the old token's exp", || async {
        unix_now() > old_exp
    })
    .await;
    // The overlap is lifetime + leeway, so the old key retires about when its last token
    // expires; whichever check comes first names the refusal.
    let (status, _, headers, body) = score_with(gw.client(), &gw, IRIS, &old_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let challenge = header(&headers, "www-authenticate");
    assert!(
        [
            "Bearer error=\"invalid_token\", error_description=\"token expired\"",
            "Bearer error=\"invalid_token\", error_description=\"unknown signing key\"",
        ]
        .contains(&challenge),
        "{challenge}"
    );
    // Once the overlap ends the old key (and what its cache entries vouched for) is gone.
    wait_until("the clock to reach the old key's retireAfter", || async {
        unix_now() >= retire
    })
    .await;
    wait_until(
        "the retired key's long-lived token to be refused",
        || async { score(&gw, &long_lived).await.0 == StatusCode::UNAUTHORIZED },
    )
    .await;
    assert_refused(&gw, &long_lived, "unknown signing key", "token_unknown_key").await;
    let fresh = access_token(&gw, "iris", &admin).await;
    assert_accepted(&gw, &fresh, "bootstrap-admin", "a token from the new key").await;

    let entries = activity(&gw, &admin).await;
    assert!(
        entries
            .iter()
            .any(|e| e["operationName"] == "rotateSigningKey"
                && e["initiator"] == "bootstrap-admin"
                && e["service"] == "iris"
                && e["result"] == "Succeeded"),
        "{entries:?}"
    );
}

#[tokio::test]
async fn rotating_the_signing_key_with_the_cli_is_picked_up_by_the_running_gateway() {
    let upstream = MockUpstream::start().await;
    let gw = token_gateway(&upstream, "").await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;
    let state = signing_state(&gw, "iris");
    let old_token = access_token(&gw, "iris", &admin).await;
    let old_kid = kid_of(&old_token);
    let old_key = Minter::from_signing_state(&state, Some(&old_kid));

    let config = gw.dir().join("scoregate.toml");
    let out = process::run(
        &[
            "token",
            "rotate-signing-key",
            "--config",
            config.to_str().expect("UTF-8 path"),
            "--service",
            "iris",
        ],
        Duration::from_secs(15),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_str(out.stdout.trim()).expect("the CLI prints JSON");
    let new_kid = printed["iris"]["kid"]
        .as_str()
        .expect("the new kid")
        .to_owned();
    assert_ne!(new_kid, old_kid);

    // The file watch applies the change; from then on new tokens carry the new kid.
    wait_until("the gateway to sign with the CLI's new key", || async {
        kid_of(&access_token(&gw, "iris", &admin).await) == new_kid
    })
    .await;
    let new_token = access_token(&gw, "iris", &admin).await;
    assert_eq!(kid_of(&new_token), new_kid);
    assert_accepted(&gw, &new_token, "bootstrap-admin", "new key").await;
    assert_accepted(&gw, &old_token, "bootstrap-admin", "old token").await;
    let uncached = old_key.token(&own_claims("iris", "old-key", 600));
    assert_accepted(&gw, &uncached, "old-key", "old key during the overlap").await;

    let file: Value =
        serde_json::from_slice(&std::fs::read(&state).expect("read signing state")).expect("JSON");
    assert_eq!(file["updatedBy"], "cli");
    assert_eq!(
        gw.metric(&series("scoregate_signing_key_reloads_total", "success")),
        Some(1.0)
    );
    let entries = activity(&gw, &admin).await;
    assert!(
        entries
            .iter()
            .any(|e| e["operationName"] == "reloadSigningKeys"
                && e["initiator"] == "cli"
                && e["service"] == "iris"),
        "{entries:?}"
    );
}

#[tokio::test]
async fn a_jwks_url_gates_readiness_until_its_first_successful_fetch() {
    let upstream = MockUpstream::start().await;
    let issuer_key = Minter::generate_es256("issuer-1");
    let server = JwksServer::start(&jwks(&[&issuer_key])).await;
    server.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    let gw = jwks_gateway(&upstream, &server.url(), 3600).await;

    wait_until("a healthy upstream and a failed JWKS fetch", || async {
        gw.metric(r#"scoregate_upstream_healthy{service="iris"}"#) == Some(1.0)
            && jwks_fetches(&gw, "error") >= 1.0
    })
    .await;
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["services"],
        json!([{"name": "iris", "healthy": true}]),
        "only the missing key set holds readiness back"
    );

    server.serve(&jwks(&[&issuer_key]));
    gw.wait_ready().await;
    assert!(jwks_fetches(&gw, "success") >= 1.0);
    let token = issuer_key.token(&issuer_claims("client-app"));
    let (status, _, headers, body) = score_with(gw.client(), &gw, IRIS, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["headers"]["x-scoregate-subject"],
        json!(["client-app"])
    );
    // An external token without `rfa`: refresh at the midpoint of iat..exp.
    let c = segment(&token, 1);
    let midpoint = c["iat"].as_u64().expect("iat") + 300;
    assert_eq!(
        header(&headers, "x-token-refresh-after"),
        midpoint.to_string()
    );
}

#[tokio::test]
async fn issuer_key_rotation_is_picked_up_by_the_first_request_with_the_new_kid() {
    let upstream = MockUpstream::start().await;
    let (k1, k2) = (
        Minter::generate_es256("issuer-1"),
        Minter::generate_es256("issuer-2"),
    );
    let server = JwksServer::start(&jwks(&[&k1])).await;
    let gw = jwks_gateway(&upstream, &server.url(), 3600).await;
    gw.wait_ready().await;
    assert_eq!(server.requests(), 1, "one prefetch before ready");
    assert_accepted(&gw, &k1.token(&issuer_claims("app-1")), "app-1", "k1").await;
    assert_eq!(server.requests(), 1, "a known kid needs no fetch");

    // The issuer starts signing with a new key.
    server.serve(&jwks(&[&k1, &k2]));
    assert_accepted(&gw, &k2.token(&issuer_claims("app-2")), "app-2", "k2").await;
    assert_eq!(server.requests(), 2, "one re-fetch for the unknown kid");
    assert_accepted(&gw, &k2.token(&issuer_claims("app-3")), "app-3", "k2 again").await;
    assert_eq!(server.requests(), 2, "k2 is known now");
}

#[tokio::test]
async fn unknown_kids_cause_at_most_one_jwks_fetch_per_30_seconds() {
    let upstream = MockUpstream::start().await;
    let k1 = Minter::generate_es256("issuer-1");
    let server = JwksServer::start(&jwks(&[&k1])).await;
    let gw = jwks_gateway(&upstream, &server.url(), 3600).await;
    gw.wait_ready().await;
    assert_eq!(server.requests(), 1);

    // Unknown kids claiming another issuer never make this issuer's URL be fetched.
    for i in 0..3 {
        let mut c = issuer_claims("stranger");
        c["iss"] = json!("https://elsewhere.test");
        let token = k1.sign(&json!({"alg": "ES256", "kid": format!("stranger-{i}")}), &c);
        assert_refused(&gw, &token, "unknown signing key", "token_unknown_key").await;
    }
    assert_eq!(server.requests(), 1);

    // A burst of distinct unknown kids from the issuer: one fetch between them.
    let forged: Vec<String> = (0..10)
        .map(|i| {
            k1.sign(
                &json!({"alg": "ES256", "kid": format!("forged-{i}")}),
                &issuer_claims("forger"),
            )
        })
        .collect();
    let answers = futures_util::future::join_all(forged.iter().map(|t| score(&gw, t))).await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "token_unknown_key");
    }
    assert_eq!(server.requests(), 2, "ten unknown kids, one extra fetch");
    for token in &forged[..3] {
        assert_refused(&gw, token, "unknown signing key", "token_unknown_key").await;
    }
    assert_eq!(server.requests(), 2, "still throttled");

    // Even a genuinely new key waits for the throttle (or the scheduled refresh).
    let k2 = Minter::generate_es256("issuer-2");
    server.serve(&jwks(&[&k1, &k2]));
    let token = k2.token(&issuer_claims("app-2"));
    assert_refused(&gw, &token, "unknown signing key", "token_unknown_key").await;
    assert_eq!(
        server.requests(),
        2,
        "within 30 s of the last unknown-kid fetch"
    );
    assert_accepted(&gw, &k1.token(&issuer_claims("app-1")), "app-1", "k1").await;
}

#[tokio::test]
async fn when_the_issuer_is_down_the_last_good_keys_keep_verifying() {
    let upstream = MockUpstream::start().await;
    let k1 = Minter::generate_es256("issuer-1");
    let server = JwksServer::start(&jwks(&[&k1])).await;
    let gw = jwks_gateway(&upstream, &server.url(), 1).await;
    gw.wait_ready().await;
    assert_accepted(
        &gw,
        &k1.token(&issuer_claims("before")),
        "before",
        "issuer up",
    )
    .await;

    server.stop();
    wait_until("a failed scheduled JWKS refresh", || async {
        jwks_fetches(&gw, "error") >= 1.0
    })
    .await;
    let age = jwks_series("scoregate_jwks_age_seconds", None);
    wait_until(
        "the key set's age to grow while the issuer is down",
        || async { gw.metric(&age).is_some_and(|a| a >= 1.0) },
    )
    .await;
    // A token never seen before (no cache entry) still verifies with the last good key set.
    assert_accepted(
        &gw,
        &k1.token(&issuer_claims("during")),
        "during",
        "issuer down",
    )
    .await;
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "an outage does not unready: {body}");

    // The same series on the admin listener, which needs a credential.
    let anonymous = call(&gw, Method::GET, "/metrics", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let admin = bootstrap_credential(&gw).await;
    let text = call(&gw, Method::GET, "/metrics", Some(&admin), None).await;
    assert_eq!(text.status, StatusCode::OK);
    for name in [
        jwks_series("scoregate_jwks_fetch_total", Some("success")),
        jwks_series("scoregate_jwks_fetch_total", Some("error")),
        age,
    ] {
        assert!(
            support::gateway::metric_value(&text.text, &name).is_some_and(|v| v >= 1.0),
            "{name} in /metrics:\n{}",
            text.text
        );
    }
}

#[tokio::test]
async fn unknown_kid_fetches_are_counted_in_the_fetch_metric() {
    let upstream = MockUpstream::start().await;
    let (k1, k2) = (
        Minter::generate_es256("issuer-1"),
        Minter::generate_es256("issuer-2"),
    );
    let server = JwksServer::start(&jwks(&[&k1])).await;
    let gw = jwks_gateway(&upstream, &server.url(), 3600).await;
    gw.wait_ready().await;
    wait_until("the prefetch to be counted", || async {
        gw.metric(&jwks_series("scoregate_jwks_fetch_total", Some("success"))) == Some(1.0)
    })
    .await;
    server.serve(&jwks(&[&k1, &k2]));
    assert_accepted(&gw, &k2.token(&issuer_claims("app-2")), "app-2", "k2").await;
    assert_eq!(server.requests(), 2);
    assert_eq!(
        gw.metric(&jwks_series("scoregate_jwks_fetch_total", Some("success"))),
        Some(2.0),
        "every fetch the issuer served is counted"
    );
}

#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_stops_verifying_cached_tokens_too() {
    let upstream = MockUpstream::start().await;
    let (k1, k2) = (
        Minter::generate_es256("issuer-1"),
        Minter::generate_es256("issuer-2"),
    );
    let server = JwksServer::start(&jwks(&[&k1, &k2])).await;
    let gw = jwks_gateway(&upstream, &server.url(), 1).await;
    gw.wait_ready().await;
    let cached = k1.token(&issuer_claims("cached"));
    assert_accepted(&gw, &cached, "cached", "k1 while published").await;

    // The issuer withdraws k1 (e.g. it leaked); the scheduled refresh picks that up.
    server.serve(&jwks(&[&k2]));
    // Each probe is a token never seen before, so it is verified against the current key set.
    let probes = std::sync::atomic::AtomicUsize::new(0);
    wait_until("a refresh without k1 to take effect", || async {
        let n = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        score(&gw, &k1.token(&issuer_claims(&format!("probe-{n}"))))
            .await
            .0
            == StatusCode::UNAUTHORIZED
    })
    .await;
    let fresh = k1.token(&issuer_claims("fresh"));
    assert_refused(&gw, &fresh, "unknown signing key", "token_unknown_key").await;
    // Let the background loop (which prunes the cache) run with the new key set: two more
    // scheduled refreshes mean at least two more passes.
    server.wait_requests(server.requests() + 2).await;
    assert_refused(&gw, &cached, "unknown signing key", "token_unknown_key").await;
}

#[tokio::test]
async fn replacing_the_signing_key_file_stops_cached_tokens_of_the_old_key() {
    let upstream = MockUpstream::start().await;
    let keys = tempfile::tempdir().expect("signing key temp dir");
    let key_file = keys.path().join("signing.pem");
    let write_key = |path: &std::path::Path| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate a P-256 key");
        std::fs::write(path, pair.serialize_pem()).expect("write the signing key");
    };
    write_key(&key_file);
    let gw = token_gateway(
        &upstream,
        &format!("signing_key_file = \"{}\"", key_file.display()),
    )
    .await;
    gw.wait_ready().await;
    let admin = bootstrap_credential(&gw).await;
    let old_token = access_token(&gw, "iris", &admin).await;
    let old_kid = kid_of(&old_token);
    assert_accepted(&gw, &old_token, "bootstrap-admin", "before the key change").await;

    // The operator replaces the key the way a Secret volume update does: a new file renamed
    // over the old one.
    let next = keys.path().join("signing.pem.new");
    write_key(&next);
    std::fs::rename(&next, &key_file).expect("replace the signing key file");
    wait_until("the gateway to sign with the replaced key", || async {
        kid_of(&access_token(&gw, "iris", &admin).await) != old_kid
    })
    .await;
    assert_accepted(
        &gw,
        &access_token(&gw, "iris", &admin).await,
        "bootstrap-admin",
        "a token from the new key",
    )
    .await;
    // The claim is that no background pass ever evicts the entry, which only elapsed time can
    // show: let several file-watch intervals pass on the clock.
    let passes = std::time::Instant::now() + 4 * std::time::Duration::from_millis(500); // the default watch_interval_ms
    wait_until("four file-watch intervals", || async {
        std::time::Instant::now() >= passes
    })
    .await;
    assert_refused(&gw, &old_token, "unknown signing key", "token_unknown_key").await;
}

/// The headers a client sends to pass itself off as someone: every spelling a container's server
/// might read as the subject header (WSGI and older gunicorn merge `_` into `-`).
const SPOOFS: [(&str, &str); 3] = [
    ("x-scoregate-subject", "admin"),
    ("X_Scoregate_Subject", "admin"),
    ("x-scoregate_subject", "admin"),
];

/// Sends `POST {route}/echo` with the spoofed subject headers (and `bearer`, if any) and returns
/// the header names the container received.
async fn names_upstream(gw: &TestGateway, route: &str, bearer: Option<&str>) -> Vec<String> {
    let mut req = gw
        .client()
        .post(gw.url(&format!("{route}/echo")))
        .body("{}");
    for (name, value) in SPOOFS {
        req = req.header(name, value);
    }
    if let Some(bearer) = bearer {
        req = req.bearer_auth(bearer);
    }
    let resp = within("echo", req.send()).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK, "{route}");
    let echo: Value = within("echo body", resp.json()).await.expect("JSON");
    echo["headers"]
        .as_object()
        .expect("headers object")
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn no_spelling_of_the_subject_header_reaches_the_container_in_any_auth_mode() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service("open", "/api/v1/service/open", &upstream.url())
        .service_with(
            "keyed",
            "/api/v1/service/keyed",
            &upstream.url(),
            "auth = \"key\"",
        )
        .service_with("iris", IRIS, &upstream.url(), "auth = \"token\"")
        .start()
        .await;
    gw.wait_ready().await;
    let admin = support::admin_api::Admin::of(&gw).await;
    let (key, _) = admin.keys("keyed").await;
    let token = admin.token("iris").await;

    for (route, bearer) in [
        ("/api/v1/service/open", None),
        ("/api/v1/service/keyed", Some(key.as_str())),
    ] {
        let names = names_upstream(&gw, route, bearer).await;
        assert!(
            !names
                .iter()
                .any(|n| n.replace('_', "-") == "x-scoregate-subject"),
            "{route}: {names:?}"
        );
    }
    let names = names_upstream(&gw, IRIS, Some(&token)).await;
    let subjects: Vec<&String> = names
        .iter()
        .filter(|n| n.replace('_', "-") == "x-scoregate-subject")
        .collect();
    assert_eq!(subjects, ["x-scoregate-subject"], "only the gateway's own");
    let resp = within(
        "token request",
        gw.client()
            .post(gw.url(&format!("{IRIS}/echo")))
            .bearer_auth(&token)
            .header("X_Scoregate_Subject", "admin")
            .body("{}")
            .send(),
    )
    .await
    .expect("answer");
    let echo: Value = within("echo body", resp.json()).await.expect("JSON");
    assert_eq!(
        echo["headers"]["x-scoregate-subject"],
        json!(["bootstrap-admin"])
    );
}

#[tokio::test]
async fn a_token_whose_subject_is_not_a_header_value_is_401() {
    let upstream = MockUpstream::start().await;
    let gw = token_gateway(&upstream, "lifetime_s = 600").await;
    gw.wait_ready().await;
    let signer = Minter::from_signing_state(&signing_state(&gw, "iris"), None);
    for sub in ["alice\r\nx-admin: yes", "bob\u{0}", "carol\u{7f}"] {
        let token = signer.token(&own_claims("iris", sub, 600));
        let (status, body) = score(&gw, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{sub:?}: {body}");
        assert_eq!(body["error"]["code"], "token_claims", "{sub:?}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    let token = signer.token(&own_claims("iris", "dana", 600));
    assert_eq!(score(&gw, &token).await.0, StatusCode::OK);
}
