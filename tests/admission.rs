//! Admission control end to end: who may enter a service (network rules, `X-Forwarded-For`,
//! mutual TLS), how fast (rate limits), how many at once (the AKS-style wait queue), and the
//! limits that protect the listener itself (connections, header sizes, HTTP/2 streams, slow or
//! stalled clients and upstreams). Split by topic into `admission/*.rs`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

mod admission {
    pub mod bodies;
    pub mod connections;
    pub mod early;
    pub mod idle;
    pub mod listener;
    pub mod network;
    pub mod order;
    pub mod queue;
    pub mod rate;
    pub mod slow_clients;
    pub mod tls_peers;
}

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::task::JoinHandle;

/// What a spawned request got back.
type Answer = Result<(StatusCode, HeaderMap, Bytes), reqwest::Error>;

/// Sends `GET url` in a task and reads the whole response.
fn spawn_get(client: &reqwest::Client, url: String) -> JoinHandle<Answer> {
    spawn_request(client.get(url))
}

/// Sends `req` in a task and reads the whole response.
fn spawn_request(req: reqwest::RequestBuilder) -> JoinHandle<Answer> {
    tokio::spawn(async move {
        let resp = req.send().await?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        Ok((status, headers, resp.bytes().await?))
    })
}

/// Awaits a spawned request under the harness deadline.
async fn answer(what: &str, task: JoinHandle<Answer>) -> (StatusCode, HeaderMap, Bytes) {
    support::within(what, task)
        .await
        .expect("request task did not panic")
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}
