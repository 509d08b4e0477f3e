//! Calling the management API of a [`TestGateway`] with a bearer credential: the bootstrap
//! Owner credential from `state_dir/admin.token`, or an identity token.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{TestGateway, wait_until, within};

/// One management response, body kept as text (`/metrics` is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {:?}", self.status, self.text))
    }

    /// Asserts a 403 whose JSON error names the missing `action`.
    pub fn assert_forbidden(&self, action: &str, context: &str) {
        assert_eq!(
            self.status,
            StatusCode::FORBIDDEN,
            "{context}: {}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], "forbidden", "{context}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("`{action}`")),
            "{context}: the 403 names {action}: {message:?}"
        );
    }
}

/// The bootstrap credential (`state_dir/admin.token`), once the gateway has written it.
pub async fn bootstrap_credential(gw: &TestGateway) -> String {
    super::admin_http::wait_admin_token(&gw.dir().join("state")).await
}

/// `method path` on the admin listener with an optional bearer credential and JSON body.
pub async fn call(
    gw: &TestGateway,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let (status, headers, bytes) =
        super::admin_http::send(gw.admin_client(), method, &gw.admin_url(path), bearer, body).await;
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// `POST /services/{service}/token`, asserting 200; returns the JSON body.
pub async fn issue_token(gw: &TestGateway, service: &str, bearer: &str) -> Value {
    let answer = call(
        gw,
        Method::POST,
        &format!("/services/{service}/token"),
        Some(bearer),
        None,
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "issue token: {}",
        answer.text
    );
    answer.json()
}

/// The access token of [`issue_token`].
pub async fn access_token(gw: &TestGateway, service: &str, bearer: &str) -> String {
    issue_token(gw, service, bearer).await["accessToken"]
        .as_str()
        .expect("accessToken is text")
        .to_owned()
}

/// `GET /activity` with `bearer`: the entries, oldest first.
pub async fn activity(gw: &TestGateway, bearer: &str) -> Vec<Value> {
    let answer = call(gw, Method::GET, "/activity?limit=1000", Some(bearer), None).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "GET /activity: {}",
        answer.text
    );
    answer
        .json()
        .as_array()
        .expect("activity is a list")
        .clone()
}
