//! The TOML file as serde sees it: plain data, no validation, no defaults beyond "absent".
//!
//! Every table denies unknown fields so a typo fails loudly. Values that need checking (addresses,
//! URLs, modes) stay strings here so `config::validate` can report *all* problems together, each
//! naming its key, instead of serde stopping at the first one.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default, rename = "service")]
    pub services: Vec<RawService>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    pub identity: Option<RawIdentity>,
    #[serde(default, rename = "role")]
    pub roles: Vec<RawRole>,
    #[serde(default, rename = "role_assignment")]
    pub role_assignments: Vec<RawAssignment>,
    #[serde(default)]
    pub cluster: RawCluster,
}

/// `[cluster]`: where shared state lives (fleet mode).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub backend: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub namespace: Option<String>,
    pub instance: Option<String>,
    pub seal_key_file: Option<String>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub dial_timeout_ms: Option<u64>,
}

/// `[identity]`: the trusted identity provider for management callers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub algorithm: Option<String>,
    #[serde(default)]
    pub public_keys: Vec<RawPublicKey>,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_ca: Option<String>,
    pub jwks_refresh_s: Option<u64>,
    pub leeway_s: Option<u64>,
    pub roles_claim: Option<String>,
}

/// `[[role]]`: a custom role.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
}

/// `[[role_assignment]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssignment {
    pub principal: Option<String>,
    pub role: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub output: Option<String>,
    pub file: Option<String>,
    pub file_max_bytes: Option<u64>,
    pub file_keep: Option<usize>,
    pub request_records: Option<bool>,
    pub queue_capacity: Option<usize>,
    pub queue_max_bytes: Option<usize>,
    pub redact_query_params: Option<Vec<String>>,
    pub log: Option<String>,
    pub log_format: Option<String>,
    pub role_name: Option<String>,
    pub otlp: Option<RawOtlp>,
    pub azure_monitor: Option<RawAzureMonitor>,
}

/// `[telemetry.azure_monitor]`: Application Insights export.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAzureMonitor {
    pub connection_string_file: Option<String>,
    pub queue_capacity: Option<usize>,
    pub batch_size: Option<usize>,
    pub timeout_ms: Option<u64>,
    pub batch_delay_ms: Option<u64>,
    pub ca: Option<String>,
}

/// `[telemetry.otlp]`: OTLP/HTTP export of one span per request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    pub endpoint: Option<String>,
    pub queue_capacity: Option<usize>,
    pub batch_size: Option<usize>,
    pub timeout_ms: Option<u64>,
    pub batch_delay_ms: Option<u64>,
    pub headers_file: Option<String>,
    pub ca: Option<String>,
    pub logs_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub probe_listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub state_dir: Option<String>,
    pub admin_token_file: Option<String>,
    pub compute_type: Option<String>,
    pub drain_timeout_ms: Option<u64>,
    pub pre_drain_delay_ms: Option<u64>,
    pub tls_handshake_timeout_ms: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub idle_release_ms: Option<u64>,
    pub lingering_timeout_ms: Option<u64>,
    pub lingering_max_bytes: Option<u64>,
    pub worker_threads: Option<usize>,
    pub health_interval_ms: Option<u64>,
    pub watch_interval_ms: Option<u64>,
    pub public_metrics: Option<bool>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub http2_max_concurrent_streams: Option<u32>,
    pub http2_idle_timeout_ms: Option<u64>,
    pub http2_max_connection_age_ms: Option<u64>,
    pub max_connections_per_ip: Option<usize>,
    pub trusted_proxies: Option<Vec<String>>,
    pub admin_allow_cidrs: Option<Vec<String>>,
    pub tls: Option<RawTls>,
    pub admin_tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Option<String>,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub auth: Option<String>,
    pub scoring_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub upstream_keepalive_ms: Option<u64>,
    pub health_path: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub keys_file: Option<String>,
    pub key_storage: Option<String>,
    pub token: Option<RawToken>,
    pub max_concurrent_requests: Option<usize>,
    pub max_request_wait_ms: Option<u64>,
    pub max_queue_length: Option<usize>,
    pub body_idle_timeout_ms: Option<u64>,
    pub send_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub min_body_rate_bytes_per_s: Option<u64>,
    pub min_body_rate_window_ms: Option<u64>,
    pub allow_cidrs: Option<Vec<String>>,
    pub rate_limit: Option<RawRateLimit>,
    pub upstream_ca: Option<String>,
    pub role_name: Option<String>,
}

/// `[service.rate_limit]`: a token bucket per caller.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
}

/// `[service.token]`: token-mode settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub algorithm: Option<String>,
    pub issuer: Option<String>,
    pub lifetime_s: Option<u64>,
    pub refresh_after_s: Option<u64>,
    pub leeway_s: Option<u64>,
    pub signing_key_file: Option<String>,
    pub subject_header: Option<String>,
    pub cache_entries: Option<usize>,
    #[serde(default)]
    pub trusted_issuer: Vec<RawTrustedIssuer>,
}

/// `[[service.token.trusted_issuer]]`: an external issuer whose tokens are accepted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedIssuer {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub algorithm: Option<String>,
    #[serde(default)]
    pub public_keys: Vec<RawPublicKey>,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_ca: Option<String>,
    pub jwks_refresh_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublicKey {
    pub kid: Option<String>,
    pub file: Option<String>,
}
