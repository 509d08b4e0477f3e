//! Turns the TOML file into a validated [`Config`]: typed addresses, durations, routes, upstream
//! URLs and a loaded TLS certificate.
//!
//! [`load_and_validate`] is the only entry point; startup, `check-config` and (later) reload all
//! call it, so the check an operator runs is the check the gateway applies. Validation collects
//! every problem and reports them together, each prefixed with the key it concerns
//! (`service[1].upstream: ...`). Relative paths are resolved against the config file's directory.
//! This module reads files but opens no sockets and spawns no tasks.
//!
//! Settings that cannot change without a restart: `server.listen`, `server.admin_listen`,
//! `server.worker_threads`, `server.state_dir`.

mod raw;
mod roles;
#[cfg(test)]
mod tests;

pub use roles::IdentityConfig;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use rustls::sign::CertifiedKey;

use crate::auth::keys::{KeySource, KeyStorage};
use crate::telemetry::LogFormat;
use crate::telemetry::redact::Redaction;

pub use raw::RawConfig;

/// Azure ML's scoring timeout default (`scoring_timeout_ms`, AZUREML-CONTRACT A3/A5).
pub const DEFAULT_SCORING_TIMEOUT: Duration = Duration::from_millis(60_000);

/// Azure ML's request payload limit through its front end (AZUREML-CONTRACT A2).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (for messages and reload).
    pub source: PathBuf,
    pub server: ServerConfig,
    /// In file order; routing picks the longest matching route.
    pub services: Vec<ServiceConfig>,
    pub telemetry: TelemetryConfig,
    /// Trusted identity provider for management callers.
    pub identity: Option<IdentityConfig>,
    /// Built-in and custom roles, and the config's role assignments.
    pub policy: crate::admin::roles::Policy,
}

/// `[telemetry]`: where request records and activity entries go, and diagnostics settings.
/// Not reloadable (the writer and the diagnostic subscriber are set up once).
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub output: RecordsOutput,
    /// Whether request records are written (activity entries always are).
    pub request_records: bool,
    /// Lines waiting for the writer before request records are dropped.
    pub queue_capacity: usize,
    pub redaction: Redaction,
    /// `tracing` filter directives for diagnostics (`SCOREGATE_LOG` overrides).
    pub log_filter: String,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordsOutput {
    Stdout,
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Copied into every request record (`ComputeType`).
    pub compute_type: String,
    /// Upper bound on waiting for in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// Time between readiness turning 503 and the listener closing, so an orchestrator can take
    /// the endpoint out of rotation before connections are refused.
    pub pre_drain_delay: Duration,
    pub tls_handshake_timeout: Duration,
    /// Slowloris guard: a request head must arrive within this time, counted from the start of
    /// the connection or the end of the previous response (so it is also the HTTP/1 keep-alive
    /// idle limit).
    pub header_read_timeout: Duration,
    /// Tokio worker threads; `None` lets tokio decide (one per core, or `TOKIO_WORKER_THREADS`).
    pub worker_threads: Option<usize>,
    /// How often each upstream's health path is probed for `/readyz`.
    pub health_interval: Duration,
    /// Serve `GET /metrics` without a credential (default: `metrics/read` is required).
    pub public_metrics: bool,
    /// Open connections on the scoring listener; beyond it new connections wait in the
    /// kernel's accept backlog.
    pub max_connections: usize,
    /// Largest request head (HTTP/1) or header list (HTTP/2); beyond it: 431.
    pub max_header_bytes: usize,
    /// Most request headers (HTTP/1); beyond it: 431.
    pub max_headers: usize,
    pub http2_max_concurrent_streams: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Who may reach the admin listener (`None`: anyone who can connect).
    pub admin_allow_cidrs: Option<Vec<ipnet::IpNet>>,
    /// `None` serves plain HTTP (logged as a warning at startup).
    pub tls: Option<TlsConfig>,
}

#[derive(Clone)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// CA certificates that client certificates must chain to (mutual TLS); `None`: no client
    /// certificates are requested.
    pub client_ca: Option<(PathBuf, Vec<rustls::pki_types::CertificateDer<'static>>)>,
    /// The pair, already parsed and checked to match.
    pub certified_key: CertifiedKey,
}

impl fmt::Debug for TlsConfig {
    // The key never reaches Debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// How a service authenticates callers. Exactly one mode per service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    None,
    Key,
    Token,
}

impl AuthMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Key => "key",
            Self::Token => "token",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// Normalised path prefix without a trailing slash; `""` is the root route `/`.
    pub route: String,
    pub upstream: Upstream,
    pub auth: AuthMode,
    pub scoring_timeout: Duration,
    pub connect_timeout: Duration,
    /// Probed with `GET` for readiness; Azure ML containers answer `GET /` with 200.
    pub health_path: String,
    /// Largest request body forwarded (Azure ML's front end allows 100 MB).
    pub max_body_bytes: u64,
    /// Where the keys of a key-mode service live (`Some` exactly when `auth = "key"`).
    pub keys: Option<KeySource>,
    /// Token settings (`Some` exactly when `auth = "token"`).
    pub token: Option<TokenConfig>,
    /// Requests in the upstream at once (Azure ML's `maxConcurrentRequestsPerContainer`).
    pub max_concurrent_requests: usize,
    /// How long a request waits for a free slot before 503 (Azure ML's `maxQueueWaitMs`).
    pub max_request_wait: Duration,
    /// Requests allowed to wait at once; beyond it: 503 at once.
    pub max_queue_length: usize,
    /// A body stream (either direction) that moves no data for this long is cut off.
    pub body_idle_timeout: Duration,
    /// Client addresses allowed to call the service (`None`: all).
    pub allow_cidrs: Option<Vec<ipnet::IpNet>>,
    pub rate_limit: Option<RateLimit>,
    /// Extra CA (PEM) to verify an `https://` upstream with, besides the system roots.
    pub upstream_ca: Option<PathBuf>,
}

/// A token bucket per caller: `requests_per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
}

/// `[service.token]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenConfig {
    /// The one algorithm this service's own tokens use; never taken from a token.
    pub algorithm: jsonwebtoken::Algorithm,
    /// `iss` of issued tokens (and required of them).
    pub issuer: String,
    pub lifetime: Duration,
    /// After this long a client should fetch a new token (`refreshAfter`).
    pub refresh_after: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    pub signing: SigningSource,
    /// Header that carries the verified subject upstream (client-sent values are removed).
    pub subject_header: Option<http::HeaderName>,
    /// Verified tokens cached (bounded).
    pub cache_entries: usize,
    pub trusted: Vec<TrustedIssuer>,
}

/// Where a token-mode service's signing keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningSource {
    /// Generated, rotated and persisted by scoregate (`state_dir/signing/<service>.json`).
    State { path: PathBuf },
    /// An operator-provided private key (PEM; for HS256 the raw secret), read-only.
    File { path: PathBuf },
}

/// An external issuer (e.g. Azure AD) whose tokens a service accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedIssuer {
    pub issuer: String,
    pub audience: String,
    pub algorithm: jsonwebtoken::Algorithm,
    pub keys: TrustedKeys,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrustedKeys {
    /// PEM public keys with their `kid`s.
    Pem(Vec<(String, PathBuf)>),
    /// A JWKS document on disk, re-read when it changes.
    JwksFile(PathBuf),
    /// A JWKS document fetched over HTTPS (plain HTTP only to loopback).
    JwksUrl {
        url: Uri,
        /// Extra CA to trust (PEM), in addition to the system roots.
        ca: Option<PathBuf>,
        refresh: Duration,
    },
}

/// Where a service's scoring container lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Prepended to the forwarded path; no trailing slash, `""` for none.
    pub base_path: String,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// One problem with the configuration, tied to the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{} has {} problem(s):\n{}", path.display(), issues.len(), list(issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

fn list(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The individual problems (one for read and parse errors).
    pub fn issues(&self) -> Vec<String> {
        match self {
            Self::Invalid { issues, .. } => issues.iter().map(ToString::to_string).collect(),
            Self::Read { .. } | Self::Parse { .. } => vec![self.to_string()],
        }
    }
}

/// Reads, parses and validates the file at `path`. The one function startup, `check-config` and
/// reload share.
pub fn load_and_validate(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_and_validate(&text, path)
}

/// Parses and validates TOML text as if it had been read from `path` (relative paths in it are
/// resolved against `path`'s directory).
pub fn parse_and_validate(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let mut v = Validator {
        base,
        issues: Vec::new(),
    };
    let config = v.config(raw, path);
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            path: path.to_owned(),
            issues: v.issues,
        })
    }
}

/// Accumulates issues while converting raw values; every conversion returns a usable placeholder
/// on failure so validation can continue and report the rest.
struct Validator<'a> {
    base: &'a Path,
    issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    fn issue(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
        let server = self.server(raw.server);
        let services = self.services(raw.services, &server.state_dir);
        let telemetry = self.telemetry(raw.telemetry);
        let identity = self.identity(raw.identity);
        let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        let policy = self.policy(raw.roles, raw.role_assignments, &names);
        Config {
            source: path.to_owned(),
            server,
            services,
            telemetry,
            identity,
            policy,
        }
    }

    fn telemetry(&mut self, raw: raw::RawTelemetry) -> TelemetryConfig {
        let output = match raw.output.as_deref().unwrap_or("stdout") {
            "stdout" => {
                for (field, set) in [
                    ("file", raw.file.is_some()),
                    ("file_max_bytes", raw.file_max_bytes.is_some()),
                    ("file_keep", raw.file_keep.is_some()),
                ] {
                    if set {
                        self.issue(
                            format!("telemetry.{field}"),
                            "applies only to output = \"file\"",
                        );
                    }
                }
                RecordsOutput::Stdout
            }
            "file" => {
                let path = match raw.file.as_deref() {
                    Some(f) => self.path(f),
                    None => {
                        self.issue("telemetry.file", "is required when output = \"file\"");
                        PathBuf::new()
                    }
                };
                let max_bytes = raw.file_max_bytes.unwrap_or(100 * 1024 * 1024);
                if max_bytes < 4096 {
                    self.issue(
                        "telemetry.file_max_bytes",
                        format!("{max_bytes} is below the minimum of 4096"),
                    );
                }
                RecordsOutput::File {
                    path,
                    max_bytes,
                    keep: raw.file_keep.unwrap_or(5),
                }
            }
            other => {
                self.issue(
                    "telemetry.output",
                    format!("{other:?} is not \"stdout\" or \"file\""),
                );
                RecordsOutput::Stdout
            }
        };
        let queue_capacity = raw.queue_capacity.unwrap_or(16_384);
        if !(16..=1_048_576).contains(&queue_capacity) {
            self.issue(
                "telemetry.queue_capacity",
                format!("{queue_capacity} is not between 16 and 1048576"),
            );
        }
        let log_filter = raw.log.unwrap_or_else(|| "info".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            self.issue(
                "telemetry.log",
                format!("{log_filter:?} is not a valid filter: {e}"),
            );
        }
        let log_format = match raw.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.issue(
                    "telemetry.log_format",
                    format!("{other:?} is not \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };
        TelemetryConfig {
            output,
            request_records: raw.request_records.unwrap_or(true),
            queue_capacity,
            redaction: raw
                .redact_query_params
                .map_or_else(Redaction::default, Redaction::new),
            log_filter,
            log_format,
        }
    }

    fn server(&mut self, raw: raw::RawServer) -> ServerConfig {
        let listen = self.addr("server.listen", raw.listen.as_deref(), "127.0.0.1:8443");
        let admin_listen = self.addr(
            "server.admin_listen",
            raw.admin_listen.as_deref(),
            "127.0.0.1:9901",
        );
        if listen == admin_listen && listen.port() != 0 {
            self.issue(
                "server.admin_listen",
                format!("{admin_listen} is also server.listen; the two listeners need different addresses"),
            );
        }
        let state_dir = self.path(raw.state_dir.as_deref().unwrap_or("state"));
        if state_dir.exists() && !state_dir.is_dir() {
            self.issue(
                "server.state_dir",
                format!("{} exists and is not a directory", state_dir.display()),
            );
        }
        let compute_type = raw.compute_type.unwrap_or_else(|| "AKS".to_owned());
        if compute_type.is_empty() || compute_type.len() > 64 {
            self.issue("server.compute_type", "must be 1 to 64 characters");
        }
        if raw.worker_threads == Some(0) {
            self.issue("server.worker_threads", "must be at least 1");
        }
        ServerConfig {
            listen,
            admin_listen,
            state_dir,
            compute_type,
            drain_timeout: self.millis("server.drain_timeout_ms", raw.drain_timeout_ms, 10_000, 0),
            pre_drain_delay: self.millis("server.pre_drain_delay_ms", raw.pre_drain_delay_ms, 0, 0),
            tls_handshake_timeout: self.millis(
                "server.tls_handshake_timeout_ms",
                raw.tls_handshake_timeout_ms,
                10_000,
                1,
            ),
            header_read_timeout: self.millis(
                "server.header_read_timeout_ms",
                raw.header_read_timeout_ms,
                30_000,
                1,
            ),
            worker_threads: raw.worker_threads,
            health_interval: self.millis(
                "server.health_interval_ms",
                raw.health_interval_ms,
                5_000,
                10,
            ),
            public_metrics: raw.public_metrics.unwrap_or(false),
            max_connections: self.count(
                "server.max_connections",
                raw.max_connections,
                25_000,
                1,
                1_000_000,
            ),
            max_header_bytes: self.count(
                "server.max_header_bytes",
                raw.max_header_bytes,
                64 * 1024,
                8192,
                16 * 1024 * 1024,
            ),
            max_headers: self.count("server.max_headers", raw.max_headers, 100, 1, 10_000),
            http2_max_concurrent_streams: u32::try_from(self.count(
                "server.http2_max_concurrent_streams",
                raw.http2_max_concurrent_streams.map(|v| v as usize),
                256,
                1,
                65_535,
            ))
            .unwrap_or(256),
            trusted_proxies: self
                .cidrs("server.trusted_proxies", raw.trusted_proxies)
                .unwrap_or_default(),
            admin_allow_cidrs: self.cidrs("server.admin_allow_cidrs", raw.admin_allow_cidrs),
            tls: raw.tls.and_then(|tls| self.tls(tls)),
        }
    }

    fn tls(&mut self, raw: raw::RawTls) -> Option<TlsConfig> {
        let cert = raw.cert.map(|c| self.path(&c));
        let key = raw.key.map(|k| self.path(&k));
        if cert.is_none() {
            self.issue(
                "server.tls.cert",
                "is required when [server.tls] is present",
            );
        }
        if key.is_none() {
            self.issue("server.tls.key", "is required when [server.tls] is present");
        }
        let client_ca = raw.client_ca.and_then(|ca| {
            let path = self.path(&ca);
            match crate::tls::load_ca(&path) {
                Ok(certs) => Some((path, certs)),
                Err(e) => {
                    self.issue("server.tls.client_ca", e);
                    None
                }
            }
        });
        let (cert_path, key_path) = (cert?, key?);
        match crate::tls::load_certified_key(&cert_path, &key_path) {
            Ok(certified_key) => Some(TlsConfig {
                cert_path,
                key_path,
                client_ca,
                certified_key,
            }),
            Err(e) => {
                let field = if e.is_cert_problem() { "cert" } else { "key" };
                self.issue(format!("server.tls.{field}"), e.to_string());
                None
            }
        }
    }

    fn services(&mut self, raw: Vec<raw::RawService>, state_dir: &Path) -> Vec<ServiceConfig> {
        if raw.is_empty() {
            self.issue("service", "at least one [[service]] is required");
        }
        let first_issue = self.issues.len();
        let services: Vec<ServiceConfig> = raw
            .into_iter()
            .enumerate()
            .map(|(i, s)| self.service(i, s, state_dir))
            .collect();
        // Routes that already failed validation hold a placeholder; comparing those would report
        // a duplicate that is not one.
        let bad_route = |i: usize, issues: &[ConfigIssue]| {
            let key = format!("service[{i}].route");
            issues[first_issue..].iter().any(|x| x.key == key)
        };
        for (i, s) in services.iter().enumerate() {
            let earlier = &services[..i];
            if !s.name.is_empty() && earlier.iter().any(|e| e.name == s.name) {
                self.issue(
                    format!("service[{i}].name"),
                    format!("{:?} is used by an earlier service", s.name),
                );
            }
            let duplicate_route = !bad_route(i, &self.issues)
                && earlier
                    .iter()
                    .enumerate()
                    .any(|(j, e)| e.route == s.route && !bad_route(j, &self.issues));
            if duplicate_route {
                let shown = if s.route.is_empty() { "/" } else { &s.route };
                self.issue(
                    format!("service[{i}].route"),
                    format!("{shown:?} is used by an earlier service"),
                );
            }
        }
        services
    }

    #[allow(clippy::too_many_lines)] // one field after another; split by topic below
    fn service(&mut self, i: usize, raw: raw::RawService, state_dir: &Path) -> ServiceConfig {
        let key = |field: &str| format!("service[{i}].{field}");
        let name = raw.name.unwrap_or_default();
        if name.is_empty() {
            self.issue(key("name"), "is required");
        } else if !valid_name(&name) {
            self.issue(
                key("name"),
                format!(
                    "{name:?} must be 1-64 characters of a-z, A-Z, 0-9, '-' and '_', starting with a letter or digit"
                ),
            );
        }
        let route = match raw.route {
            None => {
                self.issue(key("route"), "is required (use \"/\" to route every path)");
                String::new()
            }
            Some(r) => normalise_route(&r).unwrap_or_else(|why| {
                self.issue(key("route"), format!("{r:?} {why}"));
                String::new()
            }),
        };
        let upstream = match raw.upstream.as_deref().map(parse_upstream) {
            Some(Ok(u)) => u,
            Some(Err(why)) => {
                let text = raw.upstream.unwrap_or_default();
                self.issue(key("upstream"), format!("{text:?} {why}"));
                placeholder_upstream()
            }
            None => {
                self.issue(key("upstream"), "is required");
                placeholder_upstream()
            }
        };
        let auth = match raw.auth.as_deref().unwrap_or("none") {
            "none" => AuthMode::None,
            "key" => AuthMode::Key,
            "token" => AuthMode::Token,
            other => {
                self.issue(
                    key("auth"),
                    format!("{other:?} is not one of \"none\", \"key\", \"token\" (exactly one mode per service)"),
                );
                AuthMode::None
            }
        };
        let keys = self.key_source(
            i,
            auth,
            &name,
            raw.keys_file,
            raw.key_storage.as_deref(),
            state_dir,
        );
        let token = self.token(i, auth, &name, raw.token, state_dir);
        let health_path = raw.health_path.unwrap_or_else(|| "/".to_owned());
        if !health_path.starts_with('/') || health_path.parse::<http::uri::PathAndQuery>().is_err()
        {
            self.issue(
                key("health_path"),
                format!("{health_path:?} is not an absolute path"),
            );
        }
        ServiceConfig {
            scoring_timeout: self.millis(
                &key("scoring_timeout_ms"),
                raw.scoring_timeout_ms,
                60_000,
                1,
            ),
            connect_timeout: self.millis(
                &key("connect_timeout_ms"),
                raw.connect_timeout_ms,
                5_000,
                1,
            ),
            max_concurrent_requests: self.count(
                &key("max_concurrent_requests"),
                raw.max_concurrent_requests,
                1,
                1,
                1_000_000,
            ),
            max_request_wait: self.millis(
                &key("max_request_wait_ms"),
                raw.max_request_wait_ms,
                500,
                0,
            ),
            max_queue_length: self.count(
                &key("max_queue_length"),
                raw.max_queue_length,
                100,
                0,
                1_000_000,
            ),
            body_idle_timeout: self.millis(
                &key("body_idle_timeout_ms"),
                raw.body_idle_timeout_ms,
                60_000,
                1,
            ),
            allow_cidrs: self.cidrs(&key("allow_cidrs"), raw.allow_cidrs),
            rate_limit: raw
                .rate_limit
                .and_then(|r| self.rate_limit(&key("rate_limit"), &r)),
            upstream_ca: raw.upstream_ca.map(|ca| {
                let path = self.path(&ca);
                if let Err(e) = crate::tls::load_ca(&path) {
                    self.issue(key("upstream_ca"), e);
                }
                path
            }),
            max_body_bytes: match raw.max_body_bytes {
                Some(0) => {
                    self.issue(key("max_body_bytes"), "must be at least 1");
                    DEFAULT_MAX_BODY_BYTES
                }
                other => other.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            },
            name,
            route,
            upstream,
            auth,
            health_path,
            keys,
            token,
        }
    }

    fn token(
        &mut self,
        i: usize,
        auth: AuthMode,
        name: &str,
        raw: Option<raw::RawToken>,
        state_dir: &Path,
    ) -> Option<TokenConfig> {
        let key = |field: &str| format!("service[{i}].token.{field}");
        if auth != AuthMode::Token {
            if raw.is_some() {
                self.issue(
                    format!("service[{i}].token"),
                    format!("applies only to auth = \"token\" (this service uses {:?}; exactly one mode per service)", auth.as_str()),
                );
            }
            return None;
        }
        let raw = raw.unwrap_or_default();
        let algorithm = self.algorithm(&key("algorithm"), raw.algorithm.as_deref(), "ES256");
        let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
        let lifetime = secs(raw.lifetime_s, 3600);
        let refresh_after = secs(raw.refresh_after_s, 1800.min(lifetime.as_secs() / 2));
        let leeway = secs(raw.leeway_s, 60);
        if lifetime.is_zero() || lifetime > Duration::from_secs(7 * 86_400) {
            self.issue(
                key("lifetime_s"),
                format!(
                    "{} is not between 1 and 604800 (7 days)",
                    lifetime.as_secs()
                ),
            );
        }
        if refresh_after >= lifetime {
            self.issue(
                key("refresh_after_s"),
                format!(
                    "{} must be less than lifetime_s ({})",
                    refresh_after.as_secs(),
                    lifetime.as_secs()
                ),
            );
        }
        if leeway > Duration::from_secs(600) {
            self.issue(
                key("leeway_s"),
                format!("{} exceeds the maximum of 600", leeway.as_secs()),
            );
        }
        let signing = match raw.signing_key_file {
            Some(f) => {
                let path = self.path(&f);
                if !path.is_file() {
                    self.issue(
                        key("signing_key_file"),
                        format!("{} is not a readable file", path.display()),
                    );
                }
                SigningSource::File { path }
            }
            None => SigningSource::State {
                path: state_dir.join("signing").join(format!("{name}.json")),
            },
        };
        let subject_header = match raw.subject_header.as_deref() {
            None => Some(http::HeaderName::from_static("x-scoregate-subject")),
            Some("") => None,
            Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.issue(
                        key("subject_header"),
                        format!("{h:?} is not a valid header name"),
                    );
                    None
                }
            },
        };
        let cache_entries = raw.cache_entries.unwrap_or(65_536);
        if !(1..=10_000_000).contains(&cache_entries) {
            self.issue(
                key("cache_entries"),
                format!("{cache_entries} is not between 1 and 10000000"),
            );
        }
        let trusted = raw
            .trusted_issuer
            .into_iter()
            .enumerate()
            .filter_map(|(j, t)| {
                self.trusted_issuer(&format!("service[{i}].token.trusted_issuer[{j}]"), t)
            })
            .collect();
        Some(TokenConfig {
            algorithm,
            issuer: raw.issuer.unwrap_or_else(|| "scoregate".to_owned()),
            lifetime,
            refresh_after,
            leeway,
            signing,
            subject_header,
            cache_entries,
            trusted,
        })
    }

    fn algorithm(
        &mut self,
        key: &str,
        raw: Option<&str>,
        default: &str,
    ) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm;
        match raw.unwrap_or(default) {
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "EdDSA" => Algorithm::EdDSA,
            "HS256" => Algorithm::HS256,
            other => {
                self.issue(
                    key,
                    format!("{other:?} is not one of \"ES256\", \"ES384\", \"RS256\", \"RS384\", \"RS512\", \"PS256\", \"EdDSA\", \"HS256\""),
                );
                Algorithm::ES256
            }
        }
    }

    fn trusted_issuer(
        &mut self,
        prefix: &str,
        raw: raw::RawTrustedIssuer,
    ) -> Option<TrustedIssuer> {
        let key = |field: &str| format!("{prefix}.{field}");
        let issuer = raw.issuer.unwrap_or_default();
        if issuer.is_empty() {
            self.issue(key("issuer"), "is required");
        }
        let audience = raw.audience.unwrap_or_default();
        if audience.is_empty() {
            self.issue(key("audience"), "is required");
        }
        let algorithm = self.algorithm(&key("algorithm"), raw.algorithm.as_deref(), "RS256");
        if algorithm == jsonwebtoken::Algorithm::HS256 {
            self.issue(
                key("algorithm"),
                "HS256 needs a shared secret and cannot be used for an external issuer",
            );
        }
        let sources = usize::from(!raw.public_keys.is_empty())
            + usize::from(raw.jwks_file.is_some())
            + usize::from(raw.jwks_url.is_some());
        if sources != 1 {
            self.issue(
                prefix.to_owned(),
                "needs exactly one of public_keys, jwks_file, jwks_url",
            );
            return None;
        }
        let keys = if let Some(url) = raw.jwks_url {
            let parsed = url.parse::<Uri>().ok().filter(|u| u.host().is_some());
            let Some(uri) = parsed else {
                self.issue(key("jwks_url"), format!("{url:?} is not a URL"));
                return None;
            };
            let loopback = uri.host().is_some_and(|h| {
                h == "localhost"
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            match uri.scheme_str() {
                Some("https") => {}
                Some("http") if loopback => {}
                _ => {
                    self.issue(
                        key("jwks_url"),
                        format!("{url:?} must be https (plain http only to loopback)"),
                    );
                }
            }
            let refresh = Duration::from_secs(raw.jwks_refresh_s.unwrap_or(600));
            if refresh < Duration::from_secs(1) {
                self.issue(key("jwks_refresh_s"), "must be at least 1");
            }
            TrustedKeys::JwksUrl {
                url: uri,
                ca: raw.jwks_ca.map(|c| self.path(&c)),
                refresh,
            }
        } else if let Some(file) = raw.jwks_file {
            let path = self.path(&file);
            if !path.is_file() {
                self.issue(
                    key("jwks_file"),
                    format!("{} is not a readable file", path.display()),
                );
            }
            TrustedKeys::JwksFile(path)
        } else {
            let mut keys = Vec::new();
            for (k, pk) in raw.public_keys.into_iter().enumerate() {
                let (Some(kid), Some(file)) = (pk.kid, pk.file) else {
                    self.issue(format!("{prefix}.public_keys[{k}]"), "needs kid and file");
                    continue;
                };
                let path = self.path(&file);
                if !path.is_file() {
                    self.issue(
                        format!("{prefix}.public_keys[{k}].file"),
                        format!("{} is not a readable file", path.display()),
                    );
                }
                keys.push((kid, path));
            }
            TrustedKeys::Pem(keys)
        };
        Some(TrustedIssuer {
            issuer,
            audience,
            algorithm,
            keys,
        })
    }

    fn key_source(
        &mut self,
        i: usize,
        auth: AuthMode,
        name: &str,
        keys_file: Option<String>,
        key_storage: Option<&str>,
        state_dir: &Path,
    ) -> Option<KeySource> {
        let key = |field: &str| format!("service[{i}].{field}");
        if auth != AuthMode::Key {
            for (field, set) in [
                ("keys_file", keys_file.is_some()),
                ("key_storage", key_storage.is_some()),
            ] {
                if set {
                    self.issue(
                        key(field),
                        format!(
                            "applies only to auth = \"key\" (this service uses {:?})",
                            auth.as_str()
                        ),
                    );
                }
            }
            return None;
        }
        let storage = match key_storage {
            None | Some("plain") => KeyStorage::Plain,
            Some("hashed") => KeyStorage::Hashed,
            Some(other) => {
                self.issue(
                    key("key_storage"),
                    format!("{other:?} is not \"plain\" or \"hashed\""),
                );
                KeyStorage::Plain
            }
        };
        match keys_file {
            Some(file) => {
                if key_storage.is_some() {
                    self.issue(
                        key("key_storage"),
                        "applies only to keys scoregate generates; a keys_file decides its own format",
                    );
                }
                let path = self.path(&file);
                if !path.is_file() {
                    self.issue(
                        key("keys_file"),
                        format!("{} is not a readable file", path.display()),
                    );
                }
                Some(KeySource::OperatorFile { path })
            }
            None => Some(KeySource::State {
                path: KeySource::state_path(state_dir, name),
                storage,
            }),
        }
    }

    fn addr(&mut self, key: &str, raw: Option<&str>, default: &str) -> SocketAddr {
        let text = raw.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.issue(
                key,
                format!("{text:?} is not an IP address and port (e.g. \"127.0.0.1:8443\" or \"[::1]:8443\")"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn millis(&mut self, key: &str, raw: Option<u64>, default: u64, min: u64) -> Duration {
        // A day is far beyond any sensible gateway timeout; larger values are almost surely a
        // unit mistake (seconds vs microseconds).
        const MAX: u64 = 86_400_000;
        let ms = raw.unwrap_or(default);
        if ms < min {
            self.issue(key, format!("{ms} is below the minimum of {min} ms"));
        } else if ms > MAX {
            self.issue(
                key,
                format!("{ms} exceeds the maximum of {MAX} ms (one day)"),
            );
        }
        Duration::from_millis(ms)
    }

    fn count(
        &mut self,
        key: &str,
        raw: Option<usize>,
        default: usize,
        min: usize,
        max: usize,
    ) -> usize {
        let n = raw.unwrap_or(default);
        if !(min..=max).contains(&n) {
            self.issue(key, format!("{n} is not between {min} and {max}"));
        }
        n
    }

    /// CIDRs (`10.0.0.0/8`, `::1/128`) or single addresses; `None` when the list is absent.
    fn cidrs(&mut self, key: &str, raw: Option<Vec<String>>) -> Option<Vec<ipnet::IpNet>> {
        let raw = raw?;
        let mut nets = Vec::with_capacity(raw.len());
        for (i, text) in raw.iter().enumerate() {
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => self.issue(
                    format!("{key}[{i}]"),
                    format!(
                        "{text:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"::1/128\")"
                    ),
                ),
            }
        }
        Some(nets)
    }

    fn rate_limit(&mut self, key: &str, raw: &raw::RawRateLimit) -> Option<RateLimit> {
        let rps = raw.requests_per_second.unwrap_or(0.0);
        if !(rps > 0.0 && rps <= 1_000_000.0) {
            self.issue(
                format!("{key}.requests_per_second"),
                "is required and must be between 0 (exclusive) and 1000000",
            );
            return None;
        }
        // A burst below one request could never admit anything.
        // Default burst: one second's worth (rps is at most 1e6, so the cast is exact).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let burst = raw.burst.unwrap_or_else(|| rps.ceil().max(1.0) as u32);
        if burst == 0 {
            self.issue(format!("{key}.burst"), "must be at least 1");
            return None;
        }
        Some(RateLimit {
            requests_per_second: rps,
            burst,
        })
    }

    fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `"/api/v1/service/iris/"` → `"/api/v1/service/iris"`; `"/"` → `""`.
fn normalise_route(route: &str) -> Result<String, &'static str> {
    if !route.starts_with('/') {
        return Err("must start with '/'");
    }
    if route.contains(['?', '#', '%', ' ']) || route.chars().any(char::is_control) {
        return Err("must be a plain path (no query, fragment, escapes or spaces)");
    }
    let trimmed = route.trim_end_matches('/');
    if trimmed.contains("//") || trimmed.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("must not contain empty, '.' or '..' segments");
    }
    Ok(trimmed.to_owned())
}

fn parse_upstream(text: &str) -> Result<Upstream, &'static str> {
    let uri: Uri = text.parse().map_err(|_| "is not an http(s) URL")?;
    let scheme = uri.scheme().cloned().ok_or("is not an http(s) URL")?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err("is not an http(s) URL");
    }
    let authority = uri.authority().cloned().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry credentials");
    }
    if uri.query().is_some() {
        return Err("must not have a query");
    }
    Ok(Upstream {
        scheme,
        authority,
        base_path: uri.path().trim_end_matches('/').to_owned(),
    })
}

fn placeholder_upstream() -> Upstream {
    Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority: http::uri::Authority::from_static("invalid"),
        base_path: String::new(),
    }
}
