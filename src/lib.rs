//! scoregate: a TLS-terminating, authenticating reverse proxy for machine-learning scoring
//! containers, modelled on Azure Machine Learning's web-service front end.
//!
//! # Layout
//!
//! - [`config`]: the TOML file → validated [`config::Config`] (`raw` holds the serde types).
//! - [`tls`]: rustls server configuration and the live certificate resolver.
//! - [`auth`]: who is calling (`Principal`); key and token verification.
//! - [`proxy`]: the request pipeline and `RequestCtx`; `headers` rewrites headers, `upstream` owns
//!   the pooled client, `body` the streaming bodies and the record guard.
//! - [`error`]: `GatewayError`, its status mapping and client body.
//! - [`telemetry`]: diagnostics; `request_log` builds and writes request records; `metrics` owns
//!   the Prometheus registry.
//! - [`runtime`]: the shared state handlers read (route table behind `ArcSwap`).
//! - [`health`]: upstream health probes for `/readyz`.
//! - [`reload`]: live reconfiguration (SIGHUP, `POST /reload`, file changes) and certificate swaps.
//! - [`admission`]: concurrency limit and wait queue, rate limits, network rules.
//! - [`admin`]: the admin listener (health, readiness, metrics, management API).
//! - [`server`]: accept loops, TLS handshakes, serving, the drain sequence.
//! - [`shutdown`]: the signal future and lifecycle flags.
//! - [`state`]: the state directory and atomic file writes.
//! - [`sample_model`]: a built-in Azure-ML-style scoring container for demos and tests.
//! - [`demo`]: the `scoregate demo` command.
//! - [`cli`]: offline operator commands (`keys list`, `keys regen`).
//! - [`cluster`]: fleet mode: the etcd client, sealing, the namespace's local copy and the watch
//!   loop that feeds it to the applier as one more source.
//! - [`probe`]: `scoregate probe`, one GET against a health endpoint (container health checks).
//! - [`watch`]: change detection for key files (and later certificates, JWKS and config).

#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod fingerprint;
pub mod gateway;
pub mod health;
pub mod probe;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod sample_model;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod watch;
