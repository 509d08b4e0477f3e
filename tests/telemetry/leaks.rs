//! The structural redaction check: the real binary with debug diagnostics, driven with real keys,
//! tokens and the admin credential; none of them may appear in records, activity, diagnostics or
//! metrics.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::support::mgmt_keys::{self, read_admin_token};
use super::support::process::GatewayProcess;
use super::support::{GatewayBuilder, IRIS, MockUpstream, within};
use super::{IRIS_SCORE, TOK, TOK_SCORE};

/// Everything a leak would be: each secret and, where its start is itself secret, its first 16
/// characters (a truncated credential in a log is still a leak).
fn needles(secrets: &[Secret]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (what, secret, prefix) in secrets {
        assert!(secret.len() > 24, "{what} is long enough to search for");
        out.push(((*what).to_owned(), secret.clone()));
        if *prefix {
            out.push((format!("{what} (prefix)"), secret[..16].to_owned()));
        }
    }
    out
}

/// A running `scoregate` process driven with real credentials.
struct Live<'a> {
    gw: &'a GatewayProcess,
    admin: String,
    admin_client: reqwest::Client,
    h1: reqwest::Client,
    h2: reqwest::Client,
}

/// A secret to search for: what it is, its text, and whether its start alone is secret.
type Secret = (&'static str, String, bool);

impl Live<'_> {
    /// An admin call with `credential`.
    async fn call_as(
        &self,
        credential: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("http://{}{path}", self.gw.admin_addr);
        let (status, _, body) = mgmt_keys::call(
            &self.admin_client,
            method,
            &url,
            Some(credential),
            body.as_ref(),
        )
        .await;
        (status, body)
    }

    /// An admin call with the admin credential.
    async fn manage(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(&self.admin, method, path, body).await
    }

    /// A scoring POST with `Authorization: Bearer <credential>`, over HTTP/2 if `h2`.
    async fn score(&self, h2: bool, path: &str, credential: &str) -> StatusCode {
        let client = if h2 { &self.h2 } else { &self.h1 };
        let req = client
            .post(self.gw.url(path))
            .bearer_auth(credential)
            .body("{}");
        let resp = within("scoring request", req.send())
            .await
            .expect("answered");
        let status = resp.status();
        within("body", resp.bytes()).await.expect("body");
        status
    }

    /// Key-mode traffic and key management; returns the secrets it used.
    async fn drive_keys(&self) -> Vec<Secret> {
        let (_, listed) = self
            .manage(Method::POST, "/services/iris/listkeys", None)
            .await;
        let key = |v: &Value| v.as_str().expect("a key").to_owned();
        let (primary, secondary) = (key(&listed["primaryKey"]), key(&listed["secondaryKey"]));
        assert_eq!(
            self.score(false, IRIS_SCORE, &primary).await,
            StatusCode::OK
        );
        assert_eq!(
            self.score(true, IRIS_SCORE, &secondary).await,
            StatusCode::OK
        );
        let in_query = format!("{IRIS_SCORE}?key={primary}&code={secondary}");
        assert_eq!(self.score(false, &in_query, &primary).await, StatusCode::OK);
        // An upstream failure is logged with its cause chain; the URL carries a key.
        let failing = format!("/api/v1/service/iris/reset?key={primary}");
        assert_eq!(
            self.score(false, &failing, &primary).await,
            StatusCode::BAD_GATEWAY
        );
        // A mistyped key is as secret as the key it was meant to be.
        let typo = format!("{}~", &secondary[..secondary.len() - 1]);
        assert_eq!(
            self.score(false, IRIS_SCORE, &typo).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            self.score(true, TOK_SCORE, &primary).await,
            StatusCode::UNAUTHORIZED
        );

        let (status, regenerated) = self
            .manage(
                Method::POST,
                "/services/iris/regenerateKeys",
                Some(json!({"keyType": "Secondary"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let new_secondary = key(&regenerated["secondaryKey"]);
        let uuid = || uuid::Uuid::new_v4().simple().to_string();
        let chosen = format!("{}{}", uuid(), uuid());
        let too_short = uuid()[..30].to_owned();
        for (value, expected) in [
            (&too_short, StatusCode::BAD_REQUEST),
            (&chosen, StatusCode::OK),
        ] {
            let body = json!({"keyType": "Primary", "keyValue": value});
            let (status, resp) = self
                .manage(Method::POST, "/services/iris/regenerateKeys", Some(body))
                .await;
            assert_eq!(status, expected, "{resp}");
        }
        assert_eq!(
            self.score(false, IRIS_SCORE, &new_secondary).await,
            StatusCode::OK
        );
        assert_eq!(self.score(true, IRIS_SCORE, &chosen).await, StatusCode::OK);
        vec![
            ("primary key", primary, true),
            ("secondary key", secondary, true),
            ("mistyped key", typo, true),
            ("regenerated secondary key", new_secondary, true),
            ("chosen primary key", chosen, true),
            ("refused keyValue", too_short, true),
        ]
    }

    /// Token-mode traffic and signing-key rotation; returns the secrets it used.
    async fn drive_tokens(&self) -> Vec<Secret> {
        let (status, issued) = self.manage(Method::POST, "/services/tok/token", None).await;
        assert_eq!(status, StatusCode::OK, "{issued}");
        let token = issued["accessToken"].as_str().expect("token").to_owned();
        let signature = token.rsplit('.').next().expect("JWS signature").to_owned();
        assert_eq!(self.score(false, TOK_SCORE, &token).await, StatusCode::OK);
        assert_eq!(self.score(true, TOK_SCORE, &token).await, StatusCode::OK);
        assert_eq!(
            self.score(false, IRIS_SCORE, &token).await,
            StatusCode::UNAUTHORIZED
        );
        let (status, _) = self
            .manage(Method::POST, "/services/tok/rotateSigningKey", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        vec![
            // Header and claims are not secret on their own (every ES256 token starts alike);
            // the signature is what makes the token a credential.
            ("access token", token, false),
            ("token signature", signature, true),
        ]
    }
}

#[tokio::test]
async fn no_key_token_or_admin_credential_reaches_records_logs_or_metrics() {
    let upstream = MockUpstream::start().await;
    let builder = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .service_with("tok", TOK, &upstream.url(), "auth = \"token\"");
    let mut gw = GatewayProcess::start_with_env(builder, &[("SCOREGATE_LOG", "debug")]);
    gw.wait_ready().await;
    let live = Live {
        gw: &gw,
        admin: read_admin_token(&gw.dir().join("state")),
        admin_client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("admin client"),
        h1: gw.client(),
        h2: gw.h2_client(),
    };
    let mut secrets = live.drive_keys().await;
    secrets.extend(live.drive_tokens().await);
    let admin = live.admin.clone();
    let wrong_admin = format!("{}~", &admin[..admin.len() - 1]);
    let (status, _) = live
        .call_as(&wrong_admin, Method::POST, "/services/iris/listkeys", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    secrets.push(("admin credential", admin, true));
    secrets.push(("mistyped admin credential", wrong_admin, true));
    let (status, metrics) = live.manage(Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().expect("metrics text").to_owned();
    let (_, activity) = live.manage(Method::GET, "/activity?limit=1000", None).await;
    let activity = activity.to_string();

    gw.signal("TERM");
    assert!(gw.wait_exit().await.success(), "{}", gw.stderr());
    let (stdout, stderr) = (gw.stdout(), gw.stderr());
    let requests = stdout.matches(r#""type":"request""#).count();
    assert!(
        requests >= 11,
        "records were captured: {requests}\n{stdout}"
    );
    assert!(stdout.contains(r#""type":"activity""#), "{stdout}");
    assert!(stderr.contains("upstream failure"), "{stderr}");
    assert!(
        stderr.contains("DEBUG"),
        "debug diagnostics were on:\n{stderr}"
    );

    for (output, text) in [
        ("stdout (records, activity)", &stdout),
        ("stderr (diagnostics)", &stderr),
        ("/metrics", &metrics),
        ("/activity", &activity),
    ] {
        for (what, needle) in needles(&secrets) {
            assert!(
                !text.contains(&needle),
                "the {what} appears in {output}:\n{}",
                text.lines()
                    .filter(|l| l.contains(&needle))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
