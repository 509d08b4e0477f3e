//! The one transport for management calls in tests, shared by the suites' typed helpers
//! ([`super::mgmt`], [`super::mgmt_keys`], [`super::admin_api`]): reading the bootstrap
//! credential, and sending `method url` with an optional bearer credential and JSON body.

use std::path::Path;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{wait_until, within};

/// The bootstrap admin credential in `state_dir` (`admin.token`, trimmed).
pub fn read_admin_token(state_dir: &Path) -> String {
    std::fs::read_to_string(state_dir.join("admin.token"))
        .expect("read state_dir/admin.token")
        .trim()
        .to_owned()
}

/// The credential once the gateway has written it completely (it does so as it starts).
pub async fn wait_admin_token(state_dir: &Path) -> String {
    let path = state_dir.join("admin.token");
    wait_until("the gateway to write state_dir/admin.token", || {
        let path = path.clone();
        async move { std::fs::read_to_string(&path).is_ok_and(|t| t.ends_with('\n')) }
    })
    .await;
    read_admin_token(state_dir)
}

/// `method url` with `Authorization: Bearer <token>` and a JSON body when given; the status,
/// headers and raw body.
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = client.request(method.clone(), url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = within(&format!("admin {method} {url}"), req.send())
        .await
        .unwrap_or_else(|e| panic!("admin {method} {url}: {e}"));
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = within("admin response body", resp.bytes())
        .await
        .expect("admin response body");
    (status, headers, bytes)
}
