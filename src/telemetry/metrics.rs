//! The Prometheus registry and every series the gateway exports.
//!
//! `Metrics` owns an explicit `prometheus::Registry` (never the global default), created once per
//! gateway and passed down in an `Arc`, so tests read their own registry. Label values come from
//! fixed sets only (service names from config, methods folded to a fixed list, status classes,
//! reasons from `GatewayError::code`); never raw paths, keys, tokens or subjects, so no series
//! carries anything secret and `/metrics` may be served without a credential.
//!
//! Cardinality follows the services: a series exists only where it can carry meaning. Each
//! service pre-creates the few series an idle dashboard needs (see [`ServiceMetrics`]); the rest
//! (histograms, refusal reasons, rare methods and status classes) appear the first time they
//! happen. Labels that are constant per service (its auth mode) are not repeated on its series.
//! Per-service handles are resolved once (eagerly or at first use), so the request path never
//! hashes labels. The process collector adds the standard `process_*` series (CPU, memory, file
//! descriptors, start time) on Linux.

mod service;

pub use service::ServiceMetrics;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Label value used for requests that matched no service.
pub const UNROUTED: &str = "-";

/// Latency buckets in seconds for request and upstream durations: from 1 ms (a sidecar model's
/// fastest answers) to 5 s; slower requests (up to Azure ML's 60 s scoring timeout) fall in
/// `+Inf`. Nine buckets (with the queue's three) keep a service serving successful calls at 40
/// series; the gateway's own share of the latency is read from the histograms' sums (request
/// minus upstream), which need no buckets.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Queue wait buckets in seconds: no wait to speak of, a short wait, and the default bound
/// (`max_request_wait_ms` = 500); longer waits (a raised bound) fall in `+Inf`.
const QUEUE_BUCKETS: &[f64] = &[0.001, 0.05, 0.5];

/// All metric families. Cloning the inner `*Vec`s is cheap (they are `Arc`s inside).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    queue_wait: HistogramVec,
    admission_rejections: IntCounterVec,
    queue_length: IntGaugeVec,
    upstream_slots: IntGaugeVec,
    /// `notAfter` of a listener's certificate, as Unix seconds (set at each scrape; no series
    /// for a listener without TLS).
    pub certificate_expiry: IntGaugeVec,
    pub auth_failures: IntCounterVec,
    pub key_auth: IntCounterVec,
    pub token_cache: IntCounterVec,
    inflight: IntGaugeVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub upstream_connections: IntCounterVec,
    pub tls_handshake_errors: IntCounter,
    pub accept_errors: IntCounter,
    pub connections_parked: IntGauge,
    pub connection_releases: IntCounter,
    /// Connections closed at once because their address had `max_connections_per_ip` open.
    pub connections_refused_per_ip: IntCounter,
    /// Request bodies read and discarded after their answer (`proxy::linger`), by outcome.
    pub lingering_discards: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub key_reloads: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_age: IntGaugeVec,
    pub signing_key_reloads: IntCounterVec,
    pub certificate_reloads: IntCounterVec,
    pub records_dropped: IntCounter,
    pub activity_dropped: IntCounter,
    /// Telemetry an exporter dropped (queue full, or the receiver refused it for good).
    pub export_dropped: IntCounterVec,
    /// Batches an exporter delivered, by exporter and result.
    pub export_batches: IntCounterVec,
    pub record_write_errors: IntCounter,
    /// Bytes of records and activity entries waiting for, or being written to, the sink.
    pub record_queue_bytes: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric names are unique");
    vec
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let vec = HistogramVec::new(opts, labels).expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric names are unique");
    vec
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

/// The standard `process_*` series of the prometheus crate (Linux: read from `/proc/self`).
fn register_process_collector(registry: &Registry) {
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        registry
            .register(Box::new(collector))
            .expect("process metric names are unique");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = registry;
}

impl Metrics {
    /// Registers every family in a fresh registry. Only fails on programming errors (duplicate
    /// or malformed static names), hence the `expect`s, which run once at startup.
    #[allow(clippy::too_many_lines)] // one flat list of metric definitions reads best whole
    pub fn new() -> Self {
        let r = Registry::new();
        register_process_collector(&r);
        let build = gauge_vec(
            &r,
            "scoregate_build_info",
            "Build information; the value is always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let this = Self {
            requests: counter_vec(
                &r,
                "scoregate_requests_total",
                "Requests answered on the scoring listener.",
                &["service", "method", "status_class"],
            ),
            request_duration: histogram_vec(
                &r,
                "scoregate_request_duration_seconds",
                "Time from request start to the end of the response body.",
                &["service", "status_class"],
                LATENCY_BUCKETS,
            ),
            upstream_duration: histogram_vec(
                &r,
                "scoregate_upstream_duration_seconds",
                "Time from forwarding a request to receiving the scoring container's response headers.",
                &["service"],
                LATENCY_BUCKETS,
            ),
            queue_wait: histogram_vec(
                &r,
                "scoregate_queue_wait_seconds",
                "Time requests waited for a free upstream slot (admission queue).",
                &["service"],
                QUEUE_BUCKETS,
            ),
            admission_rejections: counter_vec(
                &r,
                "scoregate_admission_rejections_total",
                "Requests refused by admission control before reaching the scoring container, by reason (queue_full, queue_wait_exceeded, rate_limited, body_too_large, cidr_denied).",
                &["service", "reason"],
            ),
            queue_length: gauge_vec(
                &r,
                "scoregate_queue_length",
                "Requests waiting for a free upstream slot right now.",
                &["service"],
            ),
            upstream_slots: gauge_vec(
                &r,
                "scoregate_upstream_slots",
                "Requests the service admits into its container at once (max_concurrent_requests).",
                &["service"],
            ),
            certificate_expiry: gauge_vec(
                &r,
                "scoregate_certificate_expiry_timestamp_seconds",
                "When the listener's certificate expires (notAfter of the leaf), in Unix seconds.",
                &["listener"],
            ),
            auth_failures: counter_vec(
                &r,
                "scoregate_auth_failures_total",
                "Requests refused by authentication, by reason.",
                &["service", "reason"],
            ),
            key_auth: counter_vec(
                &r,
                "scoregate_key_auth_total",
                "Successful key authentications by key slot.",
                &["service", "slot"],
            ),
            token_cache: counter_vec(
                &r,
                "scoregate_token_cache_total",
                "Verified-token cache lookups by result.",
                &["service", "result"],
            ),
            inflight: gauge_vec(
                &r,
                "scoregate_inflight_requests",
                "Requests currently being handled.",
                &["service"],
            ),
            upstream_errors: counter_vec(
                &r,
                "scoregate_upstream_errors_total",
                "Failed forwards to the scoring container, by kind.",
                &["service", "kind"],
            ),
            upstream_healthy: gauge_vec(
                &r,
                "scoregate_upstream_healthy",
                "1 when the service's last health probe succeeded.",
                &["service"],
            ),
            upstream_connections: counter_vec(
                &r,
                "scoregate_upstream_connections_total",
                "Connections opened to the scoring container (a keep-alive pool reuses them; a fast-growing count means the container closes them).",
                &["service"],
            ),
            tls_handshake_errors: counter(
                &r,
                "scoregate_tls_handshake_errors_total",
                "TLS handshakes that failed or timed out.",
            ),
            accept_errors: counter(
                &r,
                "scoregate_accept_errors_total",
                "Errors accepting TCP connections (e.g. file descriptor exhaustion).",
            ),
            connections_parked: gauge(
                &r,
                "scoregate_connections_parked",
                "Idle HTTP/1.1 connections holding no HTTP buffers until their next request (server.idle_release_ms).",
            ),
            connection_releases: counter(
                &r,
                "scoregate_connection_releases_total",
                "Times an idle HTTP/1.1 connection gave its HTTP buffers back.",
            ),
            connections_refused_per_ip: counter(
                &r,
                "scoregate_connections_refused_per_ip_total",
                "Connections closed at once because their client address already had server.max_connections_per_ip open.",
            ),
            lingering_discards: counter_vec(
                &r,
                "scoregate_lingering_discards_total",
                "Request bodies answered before they were read, then read and discarded so the client could read the answer, by outcome (complete, too_large, timeout, client_stopped).",
                &["outcome"],
            ),
            config_reloads: counter_vec(
                &r,
                "scoregate_config_reloads_total",
                "Configuration and credential reloads by result.",
                &["result"],
            ),
            key_reloads: counter_vec(
                &r,
                "scoregate_key_reloads_total",
                "Changes of key files picked up from disk, by result.",
                &["service", "result"],
            ),
            jwks_fetches: counter_vec(
                &r,
                "scoregate_jwks_fetch_total",
                "JWKS fetches from trusted issuers' URLs, by result.",
                &["service", "issuer", "result"],
            ),
            jwks_age: gauge_vec(
                &r,
                "scoregate_jwks_age_seconds",
                "Seconds since a trusted issuer's key set was last loaded successfully.",
                &["service", "issuer"],
            ),
            signing_key_reloads: counter_vec(
                &r,
                "scoregate_signing_key_reloads_total",
                "Signing key files picked up from disk, by result.",
                &["service", "result"],
            ),
            certificate_reloads: counter_vec(
                &r,
                "scoregate_certificate_reloads_total",
                "Certificate file changes picked up from disk, by result.",
                &["result"],
            ),
            records_dropped: counter(
                &r,
                "scoregate_request_records_dropped_total",
                "Request records dropped because the record sink could not keep up.",
            ),
            activity_dropped: counter(
                &r,
                "scoregate_activity_records_dropped_total",
                "Refusals of callers without valid credentials left out of the record stream because the sink stalled and the activity backlog was full.",
            ),
            export_dropped: counter_vec(
                &r,
                "scoregate_export_dropped_total",
                "Spans or records an exporter dropped: its queue was full, or the receiver kept refusing them.",
                &["exporter"],
            ),
            export_batches: counter_vec(
                &r,
                "scoregate_export_batches_total",
                "Export requests sent, by exporter and result (ok, retried, failed).",
                &["exporter", "result"],
            ),
            record_write_errors: counter(
                &r,
                "scoregate_request_record_write_errors_total",
                "Failed writes of request records to their sink.",
            ),
            record_queue_bytes: gauge(
                &r,
                "scoregate_request_record_queue_bytes",
                "Bytes of records waiting for or being written to the record sink (bounded by queue_max_bytes).",
            ),
            registry: r,
        };
        // Failed reloads alert on `increase(...) > 0`, which cannot see an increment that creates
        // the series; so the error counters exist (at 0) from the start.
        this.config_reloads.with_label_values(&["error"]);
        this.config_reloads.with_label_values(&["success"]);
        this
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format for `GET /metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on invalid metric data, which the typed API prevents.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
