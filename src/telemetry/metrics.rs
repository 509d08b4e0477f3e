//! The Prometheus registry and every series the gateway exports.
//!
//! `Metrics` owns an explicit `prometheus::Registry` (never the global default), created once per
//! gateway and passed down in an `Arc`, so tests read their own registry. Label values come from
//! fixed sets only (service names from config, methods folded to a fixed list, status classes,
//! reasons from `GatewayError::code`); never raw paths, keys, tokens or subjects. Per-service
//! handles are resolved once in [`ServiceMetrics::new`], so the request path never hashes labels.

use http::Method;

use crate::auth::KeySlot;
use crate::error::AuthFailure;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label value used for requests that matched no service.
pub const UNROUTED: &str = "-";

/// Methods get their own label value; anything else is counted as `OTHER` so a client cannot
/// inflate cardinality with invented methods.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Latency buckets in seconds: sub-millisecond resolution for the gateway's own overhead, up to
/// Azure ML's 60 s scoring timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// All metric families. Cloning the inner `*Vec`s is cheap (they are `Arc`s inside).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    queue_wait: HistogramVec,
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
    pub config_reloads: IntCounterVec,
    pub key_reloads: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_age: IntGaugeVec,
    pub signing_key_reloads: IntCounterVec,
    pub certificate_reloads: IntCounterVec,
    pub records_dropped: IntCounter,
    pub activity_dropped: IntCounter,
    pub record_write_errors: IntCounter,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric names are unique");
    vec
}

fn histogram_vec(registry: &Registry, name: &str, help: &str) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let vec = HistogramVec::new(opts, &["service"]).expect("static metric definition");
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

impl Metrics {
    /// Registers every family in a fresh registry. Only fails on programming errors (duplicate
    /// or malformed static names), hence the `expect`s, which run once at startup.
    #[allow(clippy::too_many_lines)] // one flat list of metric definitions reads best whole
    pub fn new() -> Self {
        let r = Registry::new();
        let build = gauge_vec(
            &r,
            "scoregate_build_info",
            "Build information; the value is always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            requests: counter_vec(
                &r,
                "scoregate_requests_total",
                "Requests answered on the scoring listener.",
                &["service", "method", "status_class", "auth_mode"],
            ),
            request_duration: histogram_vec(
                &r,
                "scoregate_request_duration_seconds",
                "Time from request start to the end of the response body.",
            ),
            upstream_duration: histogram_vec(
                &r,
                "scoregate_upstream_duration_seconds",
                "Time from forwarding a request to receiving the scoring container's response headers.",
            ),
            queue_wait: histogram_vec(
                &r,
                "scoregate_queue_wait_seconds",
                "Time requests waited for a free upstream slot (admission queue).",
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
                "Activity entries dropped because the record sink stalled and the backlog was full.",
            ),
            record_write_errors: counter(
                &r,
                "scoregate_request_record_write_errors_total",
                "Failed writes of request records to their sink.",
            ),
            registry: r,
        }
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

/// Handles for one service (or for unrouted requests), resolved once.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    requests: Vec<[IntCounter; 5]>,
    pub duration: Histogram,
    pub upstream_duration: Histogram,
    pub queue_wait: Histogram,
    pub inflight: IntGauge,
    /// Indexed by `KeySlot` (primary, secondary).
    key_auth: [IntCounter; 2],
    /// Indexed by `AuthFailure::index`.
    auth_failures: Vec<IntCounter>,
    /// `scoregate_token_cache_total{result="hit"|"miss"}` (handed to the token authority).
    pub token_cache_hit: IntCounter,
    pub token_cache_miss: IntCounter,
}

impl ServiceMetrics {
    pub fn new(metrics: &Metrics, service: &str, auth_mode: &str) -> Self {
        let requests = METHODS
            .iter()
            .map(|m| {
                STATUS_CLASSES.map(|class| {
                    metrics
                        .requests
                        .with_label_values(&[service, m, class, auth_mode])
                })
            })
            .collect();
        Self {
            requests,
            key_auth: ["primary", "secondary"]
                .map(|slot| metrics.key_auth.with_label_values(&[service, slot])),
            auth_failures: AuthFailure::ALL
                .iter()
                .map(|f| {
                    metrics
                        .auth_failures
                        .with_label_values(&[service, f.reason()])
                })
                .collect(),
            token_cache_hit: metrics.token_cache.with_label_values(&[service, "hit"]),
            token_cache_miss: metrics.token_cache.with_label_values(&[service, "miss"]),
            duration: metrics.request_duration.with_label_values(&[service]),
            upstream_duration: metrics.upstream_duration.with_label_values(&[service]),
            queue_wait: metrics.queue_wait.with_label_values(&[service]),
            inflight: metrics.inflight.with_label_values(&[service]),
        }
    }

    pub fn count_request(&self, method: &Method, status: u16) {
        self.requests[method_index(method)][status_class_index(status)].inc();
    }

    pub fn count_key_auth(&self, slot: KeySlot) {
        self.key_auth[match slot {
            KeySlot::Primary => 0,
            KeySlot::Secondary => 1,
        }]
        .inc();
    }

    pub fn count_auth_failure(&self, failure: AuthFailure) {
        if let Some(c) = self.auth_failures.get(failure.index()) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counter_uses_fixed_labels() {
        let m = Metrics::new();
        let s = ServiceMetrics::new(&m, "iris", "key");
        s.count_request(&Method::POST, 200);
        s.count_request(&Method::from_bytes(b"BREW").expect("method"), 418);
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(text.contains(
            r#"scoregate_requests_total{auth_mode="key",method="POST",service="iris",status_class="2xx"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"scoregate_requests_total{auth_mode="key",method="OTHER",service="iris",status_class="4xx"} 1"#
        ), "{text}");
        assert!(!text.contains("BREW"));
        assert!(text.contains(r#"scoregate_build_info{version=""#));
    }

    #[test]
    fn status_classes_cover_odd_codes() {
        assert_eq!(status_class_index(99), 0);
        assert_eq!(status_class_index(499), 3);
        assert_eq!(status_class_index(599), 4);
        assert_eq!(status_class_index(999), 4);
    }
}
