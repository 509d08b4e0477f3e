//! scoregate: a TLS-terminating, authenticating reverse proxy for machine-learning scoring
//! containers, modelled on Azure Machine Learning's web-service front end.
//!
//! # Layout
//!
//! - [`config`]: the TOML file → validated [`config::Config`] (`raw` holds the serde types).
//! - [`tls`]: rustls server configuration and the live certificate resolver; the admin
//!   listener's configuration (`[server.admin_tls]`); `stream` the scoring listener's TLS stream
//!   over rustls' unbuffered API, whose buffers an idle connection frees.
//! - [`auth`]: who is calling (`Principal`); key and token verification; `admin` the management
//!   API's callers (bootstrap credential, identity provider).
//! - `policy`: actions, roles, role assignments and `authorize` (Azure-RBAC-style), as data.
//! - [`proxy`]: the request pipeline; `ctx` the per-request `RequestCtx` (private fields,
//!   transitions, the in-flight/slot guard, the one place the outcome is settled); `headers`
//!   rewrites headers, `body` the response body and the record guard, `linger` discards the
//!   unread rest of a request body answered early, `watchdog` ends requests whose client stopped
//!   taking the response or that passed their deadline.
//! - [`upstream`]: the pooled keep-alive client to scoring containers over TCP, TLS or a Unix
//!   socket (and its `Dialer` seam for in-memory tests); `body` the request body streamed to
//!   them, with its size, idle and rate bounds.
//! - `error`: `GatewayError`, its status mapping and client body.
//! - [`telemetry`]: diagnostics; `request_log` writes request records from the settled
//!   `Exchange` the pipeline hands over read-only (reading the service and the state through
//!   its own `ServiceFacts` / `StateFacts` traits, which `runtime` implements); `metrics` owns
//!   the Prometheus registry; `export` (`otlp`, `azure_monitor`) queues spans and activity
//!   entries for collectors on tasks of their own.
//! - [`runtime`]: the one immutable `RuntimeState` (routes, per-service state, certificate, TLS,
//!   identity, roles, admin credential, changeable telemetry options) behind one `StateCell`;
//!   `runtime/build.rs` builds a complete candidate without writing anything; `assignments`
//!   is where API role assignments are stored (a file, or etcd keys in fleet mode).
//! - `health`: upstream health probes for `/readyz`.
//! - [`reload`]: the one reload loop (`Applier`): observes every source, builds a candidate,
//!   commits its pending writes and swaps it whole, or keeps the last good; management writes.
//! - `admission`: concurrency limit and wait queue, rate limits, network rules.
//! - `admin`: the admin listener (health, readiness, metrics, management API), over TLS with
//!   `[server.admin_tls]`.
//! - [`server`]: accept loops, TLS handshakes, serving (`h1` parks idle HTTP/1.1 connections,
//!   `h2` bounds HTTP/2 connections' idle time and age), the drain sequence.
//! - [`shutdown`]: the signal future and lifecycle flags.
//! - `state`: the state directory and atomic file writes.
//! - [`sample_model`]: a built-in Azure-ML-style scoring container for demos and tests.
//! - [`demo`]: the `scoregate demo` command.
//! - [`cli`]: offline operator commands (`keys list`, `keys regen`, `token ...`); `args` is the
//!   whole command line (clap), its completions and manual page.
//! - [`cluster`]: fleet mode: the etcd client, the namespace's local copy and the watch
//!   loop that feeds it to the applier as one more source.
//! - [`seal`]: AES-256-GCM sealing of the secrets fleet mode stores in etcd, and the seal key
//!   (a leaf: `config` reads the key file, `cluster` seals with it).
//! - [`probe`]: `scoregate probe`, one GET against a health endpoint (container health checks).
//! - `watch`: the background loop that drives the applier (file polls every
//!   `watch_interval_ms`, fetched JWKS, signing-key retirement, rate-bucket eviction).
//! - [`app`]: the composition root: binds listeners, starts telemetry, assembles the gateway,
//!   runs every listener and the drain.
//! - [`gateway`]: `Gateway`, what every handler holds (state cell, metrics, record sink,
//!   activity log, lifecycle flags, applier).
//! - `source`: the shape every source of state has (observe → fingerprint → read → validate,
//!   keep the last good), with `fingerprint`'s cheap file fingerprints.
//! - `fingerprint`: cheap file fingerprints the sources use to notice a change.
//! - `fuzzing` (hidden): thin wrappers over the real parsers and checks for the `cargo fuzz`
//!   targets in `fuzz/` (docs/security.md).

#![forbid(unsafe_code)]

mod admin;
mod admission;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
mod error;
mod fingerprint;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
mod health;
mod policy;
pub mod probe;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod sample_model;
pub mod seal;
pub mod server;
pub mod shutdown;
mod source;
mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
mod watch;
