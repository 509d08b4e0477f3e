//! Turns the TOML file into a validated [`Config`]: typed addresses, durations, routes, upstream
//! URLs and a loaded TLS certificate.
//!
//! [`load_and_validate`] is the only entry point; startup, `check-config` and reload all call it
//! (startup and `check-config` through [`check`], which adds the machine checks of `preflight`:
//! writable directories, free listen addresses), so the check an operator runs is the check the
//! gateway applies. `parse` reads the file's shape (unknown keys with the closest valid name,
//! wrong types, with lines) without stopping at the first error; validation then collects every
//! value problem. All are reported together, each prefixed with the key it concerns
//! (`service[1].upstream: ...`). Relative paths are resolved against the config file's directory.
//! This module reads files but opens no sockets and spawns no tasks.
//!
//! Settings that cannot change without a restart (`reload::restart_only` names them when a reload
//! changes one): `server.listen`, `server.admin_listen`, `server.probe_listen`,
//! `server.metrics_listen`, `server.worker_threads`, `server.state_dir`,
//! `server.admin_token_file`, and the telemetry output. Everything else is reloadable.

mod cluster;
mod parse;
mod preflight;
mod raw;
mod roles;
mod server;
mod service;
#[cfg(test)]
mod tests;
mod token;

pub use cluster::{ClusterConfig, EtcdConfig, POD_NAME_ENV, default_instance};
pub use roles::IdentityConfig;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use rustls::sign::CertifiedKey;

use crate::fingerprint::Fingerprint;

pub use preflight::listen_error;
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
    pub policy: crate::policy::Policy,
    /// Where shared state lives: this process (`local`) or an etcd namespace (fleet mode).
    pub cluster: ClusterConfig,
    /// The watched files as they were just before they were read.
    pub fingerprints: FileFingerprints,
}

/// Versions of the files a running gateway watches (config, certificate, key), taken before
/// each was read, so a file replaced in between is still seen as changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFingerprints {
    pub config: Option<Fingerprint>,
    pub cert: Option<Fingerprint>,
    pub key: Option<Fingerprint>,
}

impl FileFingerprints {
    /// The files' versions now.
    pub fn current(config: &Config) -> Self {
        Self {
            config: Fingerprint::of(&config.source),
            cert: config
                .server
                .tls
                .as_ref()
                .and_then(|t| Fingerprint::of(&t.cert_path)),
            key: config
                .server
                .tls
                .as_ref()
                .and_then(|t| Fingerprint::of(&t.key_path)),
        }
    }
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
    /// Bytes held by records waiting for (or being written by) the writer before request
    /// records are dropped.
    pub queue_max_bytes: usize,
    /// Query parameters whose values records hide (`None`: the built-in list of
    /// `telemetry::redact`).
    pub redact_query_params: Option<Vec<String>>,
    /// `tracing` filter directives for diagnostics (`SCOREGATE_LOG` overrides).
    pub log_filter: String,
    pub log_format: LogFormat,
    /// `RoleName` of records and activity entries that concern no service (unrouted requests,
    /// configuration reloads); services have their own (`ServiceConfig::role_name`).
    pub role_name: Arc<str>,
    /// OTLP/HTTP span export (`None`: off).
    pub otlp: Option<OtlpConfig>,
    /// Application Insights export (`None`: off).
    pub azure_monitor: Option<AzureMonitorConfig>,
}

/// `[telemetry.azure_monitor]`, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureMonitorConfig {
    /// The connection string's `IngestionEndpoint` with `/v2.1/track`.
    pub endpoint: Uri,
    /// The connection string's `InstrumentationKey` (never printed).
    pub instrumentation_key: String,
    pub queue: ExportQueue,
    /// A CA (PEM) trusted for the ingestion endpoint, beside the system's roots.
    pub ca: Option<PathBuf>,
}

impl fmt::Debug for AzureMonitorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureMonitorConfig")
            .field("endpoint", &self.endpoint)
            .field("instrumentation_key", &"<redacted>")
            .field("queue", &self.queue)
            .field("ca", &self.ca)
            .finish()
    }
}

/// `[telemetry.otlp]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// `http(s)://host:port/v1/traces` (the path defaults to the OTLP/HTTP traces path).
    pub endpoint: Uri,
    /// Where activity entries go as log records: `logs_endpoint`, else the traces endpoint with
    /// its `/v1/traces` replaced by `/v1/logs` (or `/v1/logs` on its host).
    pub logs_endpoint: Uri,
    /// Sent with every export request (`headers_file`: e.g. a collector's API key). The values
    /// are marked sensitive, so `Debug` never prints them.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A CA (PEM) trusted for an `https://` endpoint, beside the system's roots.
    pub ca: Option<PathBuf>,
    pub queue: ExportQueue,
}

/// How an exporter queues, batches and sends (`queue_capacity`, `batch_size`, `batch_delay_ms`,
/// `timeout_ms` of its table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportQueue {
    /// Items waiting for export; beyond it new items are dropped and counted.
    pub capacity: usize,
    /// Items per export request at most.
    pub batch_size: usize,
    /// How long a batch may wait for more items before it is sent (a full batch goes at once).
    pub batch_delay: Duration,
    /// Bound on one export request (connect, send, answer).
    pub timeout: Duration,
}

/// A bootstrap credential is at least 32 visible ASCII characters (no spaces).
pub fn acceptable_admin_credential(credential: &str) -> bool {
    credential.len() >= 32 && credential.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// `[telemetry] queue_max_bytes` when not configured: 16 MiB.
pub const DEFAULT_QUEUE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Diagnostic output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    /// Optional listener serving only `/healthz`, `/livez` and `/readyz`, without a credential
    /// (for the kubelet); `None` leaves the probes on the admin listener only.
    pub probe_listen: Option<SocketAddr>,
    /// Optional listener serving only `GET /metrics`, without a credential (for Prometheus).
    pub metrics_listen: Option<SocketAddr>,
    pub state_dir: PathBuf,
    /// An operator-provided bootstrap admin credential (read at startup, never written);
    /// `None`: `state_dir/admin.token`, generated at first start.
    pub admin_token_file: Option<PathBuf>,
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
    /// An HTTP/1.1 connection with no request for this long gives its HTTP buffers back (about
    /// 16 KiB) until the client sends again; zero keeps them for the connection's life.
    pub idle_release: Duration,
    /// After an answer sent before the request body was read to its end (a refusal, or an
    /// upstream's early answer), the rest of the body is read and discarded for at most this long
    /// (nginx's lingering close), so the client reads the answer instead of a reset.
    pub lingering_timeout: Duration,
    /// ... and at most this many bytes; beyond either bound the stream or connection is closed.
    pub lingering_max_bytes: u64,
    /// Tokio worker threads; `None` lets tokio decide (one per core, or `TOKIO_WORKER_THREADS`).
    pub worker_threads: Option<usize>,
    /// How often each upstream's health path is probed for `/readyz`.
    pub health_interval: Duration,
    /// How often watched sources (config, certificate, key, signing-key, role-assignment and
    /// credential files) are checked; a change on disk applies within about this long.
    pub watch_interval: Duration,
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
    /// An HTTP/2 connection with no open stream for this long is sent GOAWAY and closed.
    pub http2_idle_timeout: Duration,
    /// An HTTP/2 connection older than this is sent GOAWAY (`None`: no bound).
    pub http2_max_connection_age: Option<Duration>,
    /// Open connections from one client address; beyond it a new one is closed at once
    /// (0: no bound).
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Who may reach the admin listener (`None`: anyone who can connect).
    pub admin_allow_cidrs: Option<Vec<ipnet::IpNet>>,
    /// `None` serves plain HTTP (logged as a warning at startup).
    pub tls: Option<TlsConfig>,
    /// `[server.admin_tls]`: the admin listener's certificate (and client CA); `None` serves
    /// it over plain HTTP. Re-read with every configuration reload.
    pub admin_tls: Option<TlsConfig>,
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
    /// An idle pooled upstream connection is not reused after this long (zero: connections are
    /// never reused). Kept below the container's own keep-alive timeout, the gateway never sends
    /// a request on a connection the container is closing.
    pub upstream_keepalive: Duration,
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
    /// A client that takes no response data for this long is disconnected (slot freed).
    pub send_timeout: Duration,
    /// The whole exchange, from admission to the end of the response (`None`: unbounded).
    pub request_timeout: Option<Duration>,
    /// A request body slower than this (bytes per second, over each `min_body_rate_window`) is
    /// cut off with 408 (0: no minimum).
    pub min_body_rate: u64,
    pub min_body_rate_window: Duration,
    /// Client addresses allowed to call the service (`None`: all).
    pub allow_cidrs: Option<Vec<ipnet::IpNet>>,
    pub rate_limit: Option<RateLimit>,
    /// Extra CA (PEM) to verify an `https://` upstream with, besides the system roots.
    pub upstream_ca: Option<PathBuf>,
    /// `RoleName` of this service's records and activity entries (Application Insights'
    /// `cloud_RoleName`); the service name unless configured.
    pub role_name: Arc<str>,
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

/// How generated keys are kept at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyStorage {
    /// Plain text in the 0600 state file; `listkeys` can show them.
    #[default]
    Plain,
    /// Salted SHA-256 digests only; a key is shown once, when it is generated.
    Hashed,
}

/// Where a service's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Generated and managed by scoregate in the state directory.
    State { path: PathBuf, storage: KeyStorage },
    /// Provided by the operator; scoregate only reads it.
    OperatorFile { path: PathBuf },
}

impl KeySource {
    pub fn path(&self) -> &Path {
        match self {
            Self::State { path, .. } | Self::OperatorFile { path } => path,
        }
    }

    /// The state-directory file for a service.
    pub fn state_path(state_dir: &Path, service: &str) -> PathBuf {
        state_dir.join("keys").join(format!("{service}.json"))
    }
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

/// Where a service's scoring container lives: `http(s)://host:port[/base]`, or
/// `unix:/absolute/socket/path[:/base]` for a container listening on a Unix socket (plain
/// HTTP/1.1 over the socket, as nginx's `proxy_pass http://unix:/path:/base`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` for a Unix socket.
    pub scheme: http::uri::Scheme,
    /// The `Host` sent upstream; `localhost` for a Unix socket.
    pub authority: http::uri::Authority,
    /// Prepended to the forwarded path; no trailing slash, `""` for none.
    pub base_path: String,
    /// The socket a `unix:` upstream listens on (absolute; no `:` in it).
    pub socket: Option<PathBuf>,
}

impl Upstream {
    /// A Unix socket's longest path on Linux (`sun_path` holds 108 bytes with the NUL).
    pub const MAX_SOCKET_PATH: usize = 107;
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.socket {
            Some(path) if self.base_path.is_empty() => write!(f, "unix:{}", path.display()),
            Some(path) => write!(f, "unix:{}:{}", path.display(), self.base_path),
            None => write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path),
        }
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
    /// The problems as JSON (`check-config --format json`): the file and each problem's key
    /// (`null` for read and syntax errors) and message.
    pub fn to_json(&self) -> serde_json::Value {
        let (path, problems) = match self {
            Self::Invalid { path, issues } => (
                path,
                issues
                    .iter()
                    .map(|i| serde_json::json!({"key": i.key, "message": i.message}))
                    .collect(),
            ),
            Self::Read { path, source } => (
                path,
                vec![serde_json::json!({"key": null, "message": format!("cannot read: {source}")})],
            ),
            Self::Parse { path, message } => (
                path,
                vec![serde_json::json!({"key": null, "message": message})],
            ),
        };
        serde_json::json!({"file": path, "ok": false, "problems": problems})
    }

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
    // Fingerprint before reading: a change that lands between the two is then seen as a change.
    let fingerprint = Fingerprint::of(path);
    let text = read(path)?;
    let mut config = parse_and_validate(&text, path)?;
    config.fingerprints.config = fingerprint;
    Ok(config)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses and validates TOML text as if it had been read from `path` (relative paths in it are
/// resolved against `path`'s directory).
pub fn parse_and_validate(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let (config, issues) = validate_all(text, path)?;
    finish(config, issues)
}

/// What `check-config` and `run` check: [`load_and_validate`], and whether the configuration can
/// run here (state directory and record file writable, listen addresses free); every problem of
/// both kinds in one list. A reload does not use this (the running gateway holds its listeners).
pub fn check(path: &Path, machine: MachineChecks) -> Result<Config, ConfigError> {
    let fingerprint = Fingerprint::of(path);
    let text = read(path)?;
    let (mut config, mut issues) = validate_all(&text, path)?;
    config.fingerprints.config = fingerprint;
    let flagged: Vec<String> = issues.iter().map(|i| i.key.clone()).collect();
    issues.extend(preflight::preflight(&config, machine, &|key| {
        flagged.iter().any(|f| f == key)
    }));
    finish(config, issues)
}

/// Which checks of this machine [`check`] runs besides validating the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineChecks {
    /// State directory, record file and listen addresses (`run`, `check-config`).
    All,
    /// Not the listen addresses: the file of a running gateway, whose listeners hold them.
    SkipListeners,
    /// None: a file meant for another machine (e.g. a rendered Kubernetes `ConfigMap`).
    None,
}

fn finish(config: Config, issues: Vec<ConfigIssue>) -> Result<Config, ConfigError> {
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            path: config.source,
            issues,
        })
    }
}

/// Every shape and value problem of `text`, and the configuration (with placeholders where a
/// value was wrong); `Err` only for TOML syntax errors.
fn validate_all(text: &str, path: &Path) -> Result<(Config, Vec<ConfigIssue>), ConfigError> {
    let shaped = parse::shape(text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let mut v = Validator {
        base,
        issues: Vec::new(),
        fingerprints: FileFingerprints::default(),
    };
    let mut config = v.config(shaped.raw, path);
    config.fingerprints = v.fingerprints;
    // A key removed for its own problem is validated as absent: what that says is noise.
    let under_removed = |key: &str| {
        shaped.removed.iter().any(|r| {
            key.strip_prefix(r.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    };
    let mut issues = shaped.issues;
    issues.extend(v.issues.into_iter().filter(|i| !under_removed(&i.key)));
    Ok((config, issues))
}

/// Accumulates issues while converting raw values; every conversion returns a usable placeholder
/// on failure so validation can continue and report the rest.
struct Validator<'a> {
    base: &'a Path,
    issues: Vec<ConfigIssue>,
    /// Certificate and key versions, taken just before they are loaded.
    fingerprints: FileFingerprints,
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
        let cluster = self.cluster(&raw.cluster);
        Config {
            source: path.to_owned(),
            server,
            services,
            telemetry,
            identity,
            policy,
            cluster,
            fingerprints: FileFingerprints::default(),
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

    /// A byte count of at most 1 TiB (a larger one is almost surely a unit mistake).
    fn bytes(&mut self, key: &str, raw: Option<u64>, default: u64) -> u64 {
        const MAX: u64 = 1 << 40;
        let n = raw.unwrap_or(default);
        if n > MAX {
            self.issue(key, format!("{n} exceeds the maximum of {MAX} (1 TiB)"));
        }
        n
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

    fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }
}
