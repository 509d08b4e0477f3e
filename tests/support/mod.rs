//! The integration-test harness: everything a suite in `tests/` needs to drive the real gateway
//! over real sockets and real TLS, and nothing that decides what a test asserts.
//!
//! - [`pki`]: a throwaway CA and a `localhost`/`127.0.0.1` server certificate, written as PEM
//!   files into a private temporary directory, and clients (reqwest HTTP/1.1 and HTTP/2, raw
//!   rustls) that trust only that CA.
//! - [`upstream`]: `MockUpstream`, an in-process HTTP/1.1 scoring container that records every
//!   request it receives and behaves by path (`/echo`, `/echo-body`, `/stream`, `/slow`,
//!   `/hang`, `/reset`, `/hop`, `/gate`, `/status`, `GET /` health).
//! - [`gateway`]: `GatewayBuilder` → `TestGateway`, the library's `server::run` in a task on
//!   `127.0.0.1:0` listeners with its own `Metrics`, an in-memory record sink and a
//!   test-driven shutdown.
//! - [`process`]: the real `scoregate` binary as a child process (CLI, signals, memory).
//! - [`pattern`]: deterministic large bodies generated and verified as streams, never held whole.
//! - [`wire`]: raw TLS and low-level hyper requests for exact bytes and headers.
//! - [`check`]: reading responses and asserting the gateway's error envelope.
//! - [`curl`]: the system `curl` as a child process (its own HTTP/2 and HTTP/1.1 stacks).
//! - [`jwt`]: an independent JWS encoder (aws-lc-rs) for tokens the gateway must accept or refuse.
//! - [`jwks`]: `JwksServer`, a trusted issuer's JWKS URL that can rotate, fail and count fetches.
//! - [`admin_http`]: the shared transport and credential reading for the three management
//!   helpers below (one per suite family).
//! - [`mgmt`]: management API calls with the bootstrap credential or an identity token.
//! - [`certs`]: extra CAs, server and client certificates, multi-CA TLS clients, atomic and
//!   Kubernetes-style certificate file swaps.
//! - [`tls_upstream`]: an `https://` front for the mock upstream, and an upstream that stalls
//!   mid-body.
//! - [`admin_api`]: management calls with the bootstrap credential (`/services`, `/reload`,
//!   `/activity`, keys, tokens).
//! - [`mgmt_keys`]: the management API as the key and telemetry suites use it (keys, tokens,
//!   activity, the admin error envelope).
//!
//! Time: nothing here sleeps to synchronise. Awaits that could hang go through [`within`]
//! (a deadline that fails the test with a message), and conditions that change without an event
//! (metrics, records, readiness) are polled by [`wait_until`] under the same deadline.
//! Every listener binds `127.0.0.1:0`; the only fixed ports are the ones a child process must be
//! told up front ([`process::free_port`]).

// Each test binary (`tests/*.rs`) compiles this module and uses a different part of it.
#![allow(dead_code, unused_imports)]

pub mod admin_api;
pub mod admin_http;
pub mod certs;
pub mod check;
pub mod curl;
pub mod etcd;
pub mod gateway;
pub mod jwks;
pub mod jwt;
pub mod mgmt;
pub mod mgmt_keys;
pub mod pattern;
pub mod pipeline;
pub mod pki;
pub mod process;
pub mod tls_upstream;
pub mod upstream;
pub mod wire;

use std::future::Future;
use std::time::Duration;

pub use gateway::{GatewayBuilder, TestGateway, iris_gateway};
pub use pki::Pki;
pub use upstream::MockUpstream;

/// Upper bound for any single step of a test (a request, a readiness wait, a drain). Generous
/// for a loaded CI machine; a healthy run takes milliseconds per step.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// How often [`wait_until`] re-checks its condition.
const POLL: Duration = Duration::from_millis(10);

/// The route every single-service test gateway uses (Azure ML's layout).
pub const IRIS: &str = "/api/v1/service/iris";

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(DEADLINE, what, fut).await
}

/// Awaits `fut`, failing the test if it takes longer than `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|elapsed| panic!("{elapsed} after {limit:?}: {what}"))
}

/// Polls `condition` until it holds, failing the test after [`DEADLINE`]. For state that changes
/// without an event to wait on (metrics, records written by another thread, readiness).
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
}

/// Installs a test-friendly tracing subscriber once per test binary. Silent unless
/// `SCOREGATE_TEST_LOG` holds a filter (e.g. `SCOREGATE_TEST_LOG=scoregate=debug cargo test`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCOREGATE_TEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    // A second call (another test in the same binary) finds the subscriber installed: fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
