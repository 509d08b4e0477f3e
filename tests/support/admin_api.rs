//! Authenticated calls to the management API (`GET /services`, `POST /reload`, `GET /activity`,
//! key listing, token issue) with the bootstrap credential from `state_dir/admin.token`, for both
//! the in-process [`TestGateway`] and a [`GatewayProcess`].

use std::net::SocketAddr;
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::process::GatewayProcess;
use super::{TestGateway, wait_until, within};

/// A management client holding the bootstrap credential.
#[derive(Debug, Clone)]
pub struct Admin {
    client: reqwest::Client,
    addr: SocketAddr,
    token: String,
}

pub use super::admin_http::read_admin_token as bootstrap_token;

impl Admin {
    /// The client for an in-process gateway; waits until the gateway has written its
    /// credential (it does so as `app::run` starts, in the gateway's own task).
    pub async fn of(gw: &TestGateway) -> Self {
        Self::new(gw.admin_addr, &gw.dir().join("state")).await
    }

    pub async fn of_process(gw: &GatewayProcess) -> Self {
        Self::new(gw.admin_addr, &gw.dir().join("state")).await
    }

    /// The client for the admin listener at `addr` of a gateway whose state is in `state_dir`.
    pub async fn new(addr: SocketAddr, state_dir: &Path) -> Self {
        Self {
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("build admin client"),
            addr,
            token: super::admin_http::wait_admin_token(state_dir).await,
        }
    }

    /// Any management call: status and JSON body (`Null` for an empty body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("http://{}{path}", self.addr);
        let (status, _, bytes) = super::admin_http::send(
            &self.client,
            method.clone(),
            &url,
            Some(&self.token),
            body.as_ref(),
        )
        .await;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "admin {method} {path}: body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, json)
    }

    /// `POST /reload`.
    pub async fn reload(&self) -> (StatusCode, Value) {
        self.call(Method::POST, "/reload", None).await
    }

    /// `GET /activity?limit=1000`, oldest first.
    pub async fn activity(&self) -> Vec<Value> {
        let (status, body) = self.call(Method::GET, "/activity?limit=1000", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().expect("activity is a JSON array").clone()
    }

    /// Waits until the activity log holds an entry matching `pred`, and returns it.
    pub async fn wait_activity(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(what, || async { self.activity().await.iter().any(&pred) }).await;
        // The log only grows (up to its ring size), so the entry is still there.
        self.activity()
            .await
            .into_iter()
            .find(|e| pred(e))
            .expect("found above")
    }

    /// The `GET /services` entry of `name`.
    pub async fn service(&self, name: &str) -> Value {
        let (status, body) = self.call(Method::GET, "/services", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array()
            .expect("services is a JSON array")
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no service {name:?} in {body}"))
            .clone()
    }

    /// Waits until `name` has exactly `n` requests waiting for an upstream slot.
    pub async fn wait_waiting(&self, name: &str, n: u64) {
        wait_until(
            &format!("{n} request(s) waiting in {name}'s queue"),
            || async { self.service(name).await["waiting"] == n },
        )
        .await;
    }

    /// `(primaryKey, secondaryKey)` of a key-mode service.
    pub async fn keys(&self, name: &str) -> (String, String) {
        let (status, body) = self
            .call(Method::POST, &format!("/services/{name}/listkeys"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let key = |field: &str| {
            body[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} in {body}"))
                .to_owned()
        };
        (key("primaryKey"), key("secondaryKey"))
    }

    /// `regenerateKeys` of `slot` ("Primary" or "Secondary") of a key-mode service, which must
    /// succeed: the new key.
    pub async fn regenerate(&self, name: &str, slot: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/services/{name}/regenerateKeys"),
                Some(serde_json::json!({ "keyType": slot })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let field = if slot == "Primary" {
            "primaryKey"
        } else {
            "secondaryKey"
        };
        body[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {body}"))
            .to_owned()
    }

    /// A token for a token-mode service.
    pub async fn token(&self, name: &str) -> String {
        let (status, body) = self
            .call(Method::POST, &format!("/services/{name}/token"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("accessToken in {body}"))
            .to_owned()
    }
}
