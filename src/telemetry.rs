//! Diagnostics (tracing to stderr), and the homes of request records and metrics.
//!
//! `metrics` owns the Prometheus registry; `request_log` builds and writes request records.
//! Diagnostics always go to stderr so stdout can carry the machine-readable record stream.
//! This module decides no request outcomes.

pub mod metrics;
pub mod request_log;

use tracing_subscriber::EnvFilter;

/// The one environment variable that sets the diagnostic filter (`tracing` directives, e.g.
/// `info,scoregate=debug`). Declared here so all `SCOREGATE_*` overrides live in one place.
pub const LOG_ENV: &str = "SCOREGATE_LOG";

/// Diagnostic output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber. Called once by `main`, never by the library, so tests
/// can install their own.
pub fn init_diagnostics(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        eprintln!("scoregate: diagnostics already initialised: {e}");
    }
}
