//! The management API from a test's side: the bootstrap admin credential scoregate writes to
//! `state_dir/admin.token`, and authenticated calls on the admin listener (keys, tokens,
//! activity, metrics).
//!
//! Only transport and parsing live here; every expectation about status codes and bodies stays in
//! the tests (except in [`TestGateway::list_keys`] and [`TestGateway::regenerate`], shortcuts
//! for the success path that fail loudly otherwise).

use std::path::Path;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::check::header;
use super::{TestGateway, wait_until, within};

pub use super::admin_http::read_admin_token;

/// One admin call: `method url` with `Authorization: Bearer <token>` when given and a JSON body
/// when given. Returns status, headers and the body as JSON (`Null` when empty, a JSON string
/// when it is not JSON, e.g. the metrics text).
pub async fn call(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, bytes) = super::admin_http::send(client, method, url, token, body).await;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, headers, value)
}

/// Asserts an admin API error: JSON content, the envelope with `code` and a message, and
/// `requestId` equal to the `x-request-id` header, which it returns. (The admin listener sets
/// only `x-request-id`; `x-ms-request-id` is the scoring listener's Azure ML header.)
pub fn assert_admin_error(headers: &HeaderMap, body: &Value, code: &str) -> String {
    assert_eq!(header(headers, "content-type"), "application/json");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error message present: {body}"
    );
    let id = header(headers, "x-request-id");
    assert_eq!(
        body["requestId"], id,
        "requestId is the x-request-id header"
    );
    id.to_owned()
}

impl TestGateway {
    /// The bootstrap admin credential of this gateway, once the gateway has created it (the
    /// gateway task may not have run yet right after `start`).
    pub async fn admin_token(&self) -> String {
        let state = self.dir().join("state");
        wait_until("the gateway to create admin.token", || async {
            state.join("admin.token").exists()
        })
        .await;
        read_admin_token(&state)
    }

    /// `method path` on the admin listener with the bootstrap admin credential.
    pub async fn manage(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let token = self.admin_token().await;
        call(
            self.admin_client(),
            method,
            &self.admin_url(path),
            Some(&token),
            body,
        )
        .await
    }

    /// `POST /services/{service}/listkeys`, which must succeed: (primary, secondary).
    pub async fn list_keys(&self, service: &str) -> (String, String) {
        let (status, headers, body) = self
            .manage(Method::POST, &format!("/services/{service}/listkeys"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "listkeys {service}: {body}");
        // Keys in the body: no cache may keep the answer.
        assert_eq!(headers["cache-control"], "no-store", "listkeys {service}");
        let key = |field: &str| {
            body[field]
                .as_str()
                .unwrap_or_else(|| panic!("listkeys {field}: {body}"))
                .to_owned()
        };
        (key("primaryKey"), key("secondaryKey"))
    }

    /// `POST /services/{service}/regenerateKeys`, which must succeed; returns the response body.
    pub async fn regenerate(&self, service: &str, key_type: &str, value: Option<&str>) -> Value {
        let (status, _, body) = self
            .manage(
                Method::POST,
                &format!("/services/{service}/regenerateKeys"),
                Some(&json!({ "keyType": key_type, "keyValue": value })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "regenerateKeys {service}: {body}");
        body
    }

    /// `GET /activity?limit=N` with the admin credential: the entries, oldest first.
    pub async fn activity(&self, limit: usize) -> Vec<Value> {
        let (status, _, body) = self
            .manage(Method::GET, &format!("/activity?limit={limit}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "GET /activity: {body}");
        match body {
            Value::Array(entries) => entries,
            other => panic!("GET /activity is not a JSON array: {other}"),
        }
    }
}
