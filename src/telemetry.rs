//! Diagnostics (tracing to stderr), and the homes of request records and metrics.
//!
//! `metrics` owns the Prometheus registry; `request_log` builds request records; `activity` the
//! management activity log; `sink` writes both to their output; `redact` is the only way URLs and
//! headers reach a log; `trace` reads and continues W3C trace context; `role` names the instance;
//! `export` sends one span per request and the activity entries to OTLP and Azure Monitor
//! receivers when `[telemetry.otlp]` / `[telemetry.azure_monitor]` are set.
//! Diagnostics always go to stderr so stdout can carry the machine-readable record stream.
//! This module decides no request outcomes.

pub mod activity;
pub mod export;
mod json_line;
pub mod metrics;
pub mod redact;
pub mod request_log;
pub mod role;
pub mod sink;
pub mod trace;

use tracing_subscriber::EnvFilter;

/// The one environment variable that sets the diagnostic filter (`tracing` directives, e.g.
/// `info,scoregate=debug`). Declared here so all `SCOREGATE_*` overrides live in one place.
pub const LOG_ENV: &str = "SCOREGATE_LOG";

pub use crate::config::LogFormat;
/// RFC 3339 to the second, `None` for a time humantime cannot show (the management API's times).
pub use json_line::rfc3339_seconds;
/// The pod's name (Kubernetes downward API), the `RoleInstance` of records when set.
pub const POD_NAME_ENV: &str = "POD_NAME";

/// Installs the global tracing subscriber. Called once by `main`, never by the library, so tests
/// can install their own.
pub fn init_diagnostics(default_filter: &str, format: LogFormat) {
    // Only `main` calls this; precedence: SCOREGATE_LOG, then the configured filter.
    let filter =
        EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into log files or collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = result {
        eprintln!("scoregate: diagnostics already initialised: {e}");
    }
}

/// Starts the record writer for a configuration.
pub fn start_records(
    config: &crate::config::TelemetryConfig,
    metrics: &metrics::Metrics,
) -> std::io::Result<(sink::RecordSink, sink::RecordWriter)> {
    let output = match &config.output {
        crate::config::RecordsOutput::Stdout => sink::RecordOutput::Stdout,
        crate::config::RecordsOutput::File {
            path,
            max_bytes,
            keep,
        } => sink::RecordOutput::File {
            path: path.clone(),
            max_bytes: *max_bytes,
            keep: *keep,
        },
    };
    // Whether request records are written is decided per request from the runtime state
    // (`request_records` is reloadable); the sink itself always accepts them.
    sink::RecordSink::spawn(
        output,
        sink::QueueLimits::new(config.queue_capacity, config.queue_max_bytes),
        true,
        sink::SinkCounters::of(metrics),
    )
}
