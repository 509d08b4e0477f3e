//! Validation of `[server]`, `[server.tls]` and `[telemetry]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::raw;
use super::{LogFormat, RecordsOutput, ServerConfig, TelemetryConfig, TlsConfig, Validator};

impl ServerConfig {
    /// Settings that are valid but risky, for `check-config` and the startup log: an admin
    /// listener reachable from the network without `admin_allow_cidrs`, or without TLS (the
    /// management API carries keys and the admin credential).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.admin_listen.ip().is_loopback() {
            return warnings;
        }
        if self.admin_allow_cidrs.is_none() {
            warnings.push(format!(
                "server.admin_listen: {} is not a loopback address and server.admin_allow_cidrs \
                 is unset: anyone who can reach it may call the management API; list the \
                 networks that may (e.g. admin_allow_cidrs = [\"10.0.0.0/8\"])",
                self.admin_listen
            ));
        }
        if self.admin_tls.is_none() {
            warnings.push(format!(
                "server.admin_listen: {} is not a loopback address and [server.admin_tls] is \
                 not set: keys, tokens and the admin credential cross the network unencrypted",
                self.admin_listen
            ));
        }
        warnings
    }
}

/// `lingering_timeout_ms`: nginx's `lingering_timeout` is 5 s.
const DEFAULT_LINGERING_TIMEOUT_MS: u64 = 5_000;
/// `lingering_max_bytes`: 64 MiB reads in well under a second on a fast link, and keeps a
/// refused upload from making the gateway read for ever.
const DEFAULT_LINGERING_MAX_BYTES: u64 = 64 * 1024 * 1024;

impl Validator<'_> {
    #[expect(
        clippy::too_many_lines,
        reason = "a declarative table: one validated setting per key of its TOML section"
    )]
    pub(super) fn telemetry(&mut self, raw: raw::RawTelemetry) -> TelemetryConfig {
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
        let queue_max_bytes = raw
            .queue_max_bytes
            .unwrap_or(super::DEFAULT_QUEUE_MAX_BYTES);
        if !(65_536..=1 << 30).contains(&queue_max_bytes) {
            self.issue(
                "telemetry.queue_max_bytes",
                format!("{queue_max_bytes} is not between 65536 (64 KiB) and 1073741824 (1 GiB)"),
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
            queue_max_bytes,
            redact_query_params: raw.redact_query_params,
            log_filter,
            log_format,
            role_name: self.role_name("telemetry.role_name", raw.role_name, "scoregate"),
            otlp: raw.otlp.as_ref().map(|o| self.otlp(o)),
            azure_monitor: raw.azure_monitor.as_ref().map(|a| self.azure_monitor(a)),
        }
    }

    /// `[telemetry.azure_monitor]`: the connection string file is read here, so `check-config`
    /// reports a missing key or a bad endpoint; errors never quote the instrumentation key.
    fn azure_monitor(&mut self, raw: &raw::RawAzureMonitor) -> crate::config::AzureMonitorConfig {
        const KEY: &str = "telemetry.azure_monitor.connection_string_file";
        let (endpoint, instrumentation_key) = match raw.connection_string_file.as_deref() {
            None => {
                self.issue(KEY, "is required in [telemetry.azure_monitor]");
                (None, String::new())
            }
            Some(file) => {
                let path = self.path(file);
                match std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|text| {
                        connection_string(&text).map_err(|e| format!("{}: {e}", path.display()))
                    }) {
                    Ok((endpoint, key)) => (Some(endpoint), key),
                    Err(e) => {
                        self.issue(KEY, e);
                        (None, String::new())
                    }
                }
            }
        };
        let ca = raw.ca.as_deref().map(|ca| {
            let path = self.path(ca);
            if let Err(e) = crate::tls::load_ca(&path) {
                self.issue("telemetry.azure_monitor.ca", e);
            }
            path
        });
        crate::config::AzureMonitorConfig {
            endpoint: endpoint.unwrap_or_else(|| {
                http::Uri::from_static("https://dc.services.visualstudio.com/v2.1/track")
            }),
            instrumentation_key,
            queue: self.export_queue(
                "telemetry.azure_monitor",
                [raw.queue_capacity, raw.batch_size],
                [raw.batch_delay_ms, raw.timeout_ms],
                1000,
            ),
            ca,
        }
    }

    /// `[telemetry.otlp]`: an `http://` or `https://` endpoint (the path defaults to
    /// `/v1/traces`), optional headers from a file and a CA for https.
    fn otlp(&mut self, raw: &raw::RawOtlp) -> crate::config::OtlpConfig {
        let endpoint = match raw.endpoint.as_deref() {
            None => {
                self.issue("telemetry.otlp.endpoint", "is required in [telemetry.otlp]");
                http::Uri::from_static("http://127.0.0.1:4318/v1/traces")
            }
            Some(text) => self.otlp_endpoint("telemetry.otlp.endpoint", text, "/v1/traces"),
        };
        let logs_endpoint = match raw.logs_endpoint.as_deref() {
            Some(text) => self.otlp_endpoint("telemetry.otlp.logs_endpoint", text, "/v1/logs"),
            None => logs_beside(&endpoint),
        };
        let ca = raw.ca.as_deref().map(|ca| {
            let path = self.path(ca);
            if let Err(e) = crate::tls::load_ca(&path) {
                self.issue("telemetry.otlp.ca", e);
            }
            path
        });
        if ca.is_some() && endpoint.scheme_str() != Some("https") {
            self.issue("telemetry.otlp.ca", "applies to an https:// endpoint only");
        }
        let headers = match raw.headers_file.as_deref() {
            None => Vec::new(),
            Some(file) => {
                let path = self.path(file);
                read_headers(&path).unwrap_or_else(|e| {
                    self.issue("telemetry.otlp.headers_file", e);
                    Vec::new()
                })
            }
        };
        crate::config::OtlpConfig {
            endpoint,
            logs_endpoint,
            headers,
            ca,
            queue: self.export_queue(
                "telemetry.otlp",
                [raw.queue_capacity, raw.batch_size],
                [raw.batch_delay_ms, raw.timeout_ms],
                200,
            ),
        }
    }

    /// An exporter's queue settings under `table`: `[queue_capacity, batch_size]` (4096, 512) and
    /// `[batch_delay_ms, timeout_ms]` (`default_delay_ms`, 10000).
    fn export_queue(
        &mut self,
        table: &str,
        [capacity, batch_size]: [Option<usize>; 2],
        [delay_ms, timeout_ms]: [Option<u64>; 2],
        default_delay_ms: u64,
    ) -> crate::config::ExportQueue {
        crate::config::ExportQueue {
            capacity: self.count(
                &format!("{table}.queue_capacity"),
                capacity,
                4096,
                16,
                1_048_576,
            ),
            batch_size: self.count(&format!("{table}.batch_size"), batch_size, 512, 1, 8192),
            batch_delay: self.millis(
                &format!("{table}.batch_delay_ms"),
                delay_ms,
                default_delay_ms,
                0,
            ),
            timeout: self.millis(&format!("{table}.timeout_ms"), timeout_ms, 10_000, 100),
        }
    }

    /// An OTLP/HTTP endpoint: `http(s)://host:port[/path]`, the path defaulting to `signal_path`.
    fn otlp_endpoint(&mut self, key: &str, text: &str, signal_path: &str) -> http::Uri {
        let fallback = || http::Uri::from_static("http://127.0.0.1:4318/");
        match text.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) => {
                match uri.authority() {
                    // No path: the signal's OTLP/HTTP path.
                    Some(authority) if matches!(uri.path(), "" | "/") => {
                        let scheme = uri.scheme_str().unwrap_or("http");
                        format!("{scheme}://{authority}{signal_path}")
                            .parse()
                            .unwrap_or(uri)
                    }
                    Some(_) => uri,
                    None => {
                        self.issue(key, format!("{text:?} has no host"));
                        fallback()
                    }
                }
            }
            _ => {
                self.issue(
                    key,
                    format!("{text:?} is not an http(s)://host:port[/path] URL (OTLP/HTTP)"),
                );
                fallback()
            }
        }
    }

    /// A `role_name`: 1 to 256 printable characters (it becomes a record field and a tag on
    /// exported telemetry).
    pub(super) fn role_name(
        &mut self,
        key: &str,
        raw: Option<String>,
        default: &str,
    ) -> std::sync::Arc<str> {
        let Some(name) = raw else {
            return default.into();
        };
        if name.is_empty() || name.chars().count() > 256 || name.chars().any(char::is_control) {
            self.issue(key, "must be 1 to 256 printable characters");
        }
        name.into()
    }

    #[expect(
        clippy::too_many_lines,
        reason = "a declarative table: one validated setting per key of its TOML section"
    )]
    pub(super) fn server(&mut self, raw: raw::RawServer) -> ServerConfig {
        let (lingering_timeout, lingering_max_bytes) =
            self.lingering(raw.lingering_timeout_ms, raw.lingering_max_bytes);
        let (http2_idle_timeout, http2_max_connection_age, max_connections_per_ip) =
            self.connection_bounds(&raw);
        let listen = self.addr("server.listen", raw.listen.as_deref(), "127.0.0.1:8443");
        let admin_listen = self.addr(
            "server.admin_listen",
            raw.admin_listen.as_deref(),
            "127.0.0.1:9901",
        );
        let (probe_listen, metrics_listen) = self.plane_listeners(
            listen,
            admin_listen,
            raw.probe_listen.as_deref(),
            raw.metrics_listen.as_deref(),
        );
        let state_dir = self.state_dir(raw.state_dir.as_deref());
        let admin_token_file = raw.admin_token_file.map(|f| self.admin_token_file(&f));
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
            probe_listen,
            metrics_listen,
            state_dir,
            admin_token_file,
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
            idle_release: self.millis("server.idle_release_ms", raw.idle_release_ms, 250, 0),
            lingering_timeout,
            lingering_max_bytes,
            worker_threads: raw.worker_threads,
            health_interval: self.millis(
                "server.health_interval_ms",
                raw.health_interval_ms,
                5_000,
                10,
            ),
            watch_interval: self.millis("server.watch_interval_ms", raw.watch_interval_ms, 500, 10),
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
            http2_idle_timeout,
            http2_max_connection_age,
            max_connections_per_ip,
            trusted_proxies: self
                .cidrs("server.trusted_proxies", raw.trusted_proxies)
                .unwrap_or_default(),
            admin_allow_cidrs: self.cidrs("server.admin_allow_cidrs", raw.admin_allow_cidrs),
            tls: raw.tls.and_then(|tls| self.tls(tls)),
            admin_tls: raw
                .admin_tls
                .and_then(|tls| self.tls_table("server.admin_tls", tls)),
        }
    }

    /// `http2_idle_timeout_ms`, `http2_max_connection_age_ms`, `max_connections_per_ip`.
    fn connection_bounds(&mut self, raw: &raw::RawServer) -> (Duration, Option<Duration>, usize) {
        let idle = self.millis(
            "server.http2_idle_timeout_ms",
            raw.http2_idle_timeout_ms,
            30_000,
            1,
        );
        let age = match raw.http2_max_connection_age_ms {
            None | Some(0) => None,
            ms => Some(self.millis("server.http2_max_connection_age_ms", ms, 0, 1)),
        };
        let per_ip = self.count(
            "server.max_connections_per_ip",
            raw.max_connections_per_ip,
            0,
            0,
            1_000_000,
        );
        (idle, age, per_ip)
    }

    /// `lingering_timeout_ms` and `lingering_max_bytes`.
    fn lingering(&mut self, timeout_ms: Option<u64>, max_bytes: Option<u64>) -> (Duration, u64) {
        (
            self.millis(
                "server.lingering_timeout_ms",
                timeout_ms,
                DEFAULT_LINGERING_TIMEOUT_MS,
                0,
            ),
            self.bytes(
                "server.lingering_max_bytes",
                max_bytes,
                DEFAULT_LINGERING_MAX_BYTES,
            ),
        )
    }

    /// `server.state_dir` (default `state`): a directory if it exists, private to its owner.
    fn state_dir(&mut self, raw: Option<&str>) -> PathBuf {
        let state_dir = self.path(raw.unwrap_or("state"));
        if state_dir.exists() && !state_dir.is_dir() {
            self.issue(
                "server.state_dir",
                format!("{} exists and is not a directory", state_dir.display()),
            );
        }
        for problem in crate::state::check_state_dir(&state_dir) {
            self.issue("server.state_dir", problem);
        }
        state_dir
    }

    /// `probe_listen` and `metrics_listen`, optional, each on an address of its own.
    fn plane_listeners(
        &mut self,
        listen: std::net::SocketAddr,
        admin_listen: std::net::SocketAddr,
        probe: Option<&str>,
        metrics: Option<&str>,
    ) -> (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>) {
        let probe = probe.map(|a| self.addr("server.probe_listen", Some(a), ""));
        let metrics = metrics.map(|a| self.addr("server.metrics_listen", Some(a), ""));
        self.distinct_listeners(&[
            ("server.listen", Some(listen)),
            ("server.admin_listen", Some(admin_listen)),
            ("server.probe_listen", probe),
            ("server.metrics_listen", metrics),
        ]);
        (probe, metrics)
    }

    /// An operator-provided admin credential: read here so `check-config` catches a missing or
    /// short file (the gateway reads it again at startup).
    fn admin_token_file(&mut self, file: &str) -> PathBuf {
        let path = self.path(file);
        match std::fs::read_to_string(&path) {
            Ok(text) if super::acceptable_admin_credential(text.trim()) => {}
            Ok(_) => self.issue(
                "server.admin_token_file",
                format!(
                    "{} must hold at least 32 visible characters",
                    path.display()
                ),
            ),
            Err(e) => self.issue(
                "server.admin_token_file",
                format!("cannot read {}: {e}", path.display()),
            ),
        }
        path
    }

    /// Every listener needs its own address (port 0, "any free port", may repeat). A later key
    /// is named when it repeats an earlier one.
    fn distinct_listeners(&mut self, listeners: &[(&str, Option<std::net::SocketAddr>)]) {
        for (i, (key, addr)) in listeners.iter().enumerate() {
            let Some(addr) = addr.filter(|a| a.port() != 0) else {
                continue;
            };
            if let Some((earlier, _)) = listeners[..i].iter().find(|(_, a)| *a == Some(addr)) {
                self.issue(
                    *key,
                    format!("{addr} is also {earlier}; each listener needs its own address"),
                );
            }
        }
    }

    /// `[server.tls]`: a TLS table whose files are also a watched source (their versions are
    /// recorded just before they are read).
    pub(super) fn tls(&mut self, raw: raw::RawTls) -> Option<TlsConfig> {
        if let (Some(cert), Some(key)) = (&raw.cert, &raw.key) {
            self.fingerprints.cert = crate::fingerprint::Fingerprint::of(&self.path(cert));
            self.fingerprints.key = crate::fingerprint::Fingerprint::of(&self.path(key));
        }
        self.tls_table("server.tls", raw)
    }

    /// A TLS table (`[server.tls]`, `[server.admin_tls]`): the pair is read and checked to
    /// match, the client CA read; problems name `table.field`.
    pub(super) fn tls_table(&mut self, table: &str, raw: raw::RawTls) -> Option<TlsConfig> {
        let cert = raw.cert.map(|c| self.path(&c));
        let key = raw.key.map(|k| self.path(&k));
        if cert.is_none() {
            self.issue(
                format!("{table}.cert"),
                format!("is required when [{table}] is present"),
            );
        }
        if key.is_none() {
            self.issue(
                format!("{table}.key"),
                format!("is required when [{table}] is present"),
            );
        }
        let client_ca = raw.client_ca.and_then(|ca| {
            let path = self.path(&ca);
            match crate::tls::load_ca(&path) {
                Ok(certs) => Some((path, certs)),
                Err(e) => {
                    self.issue(format!("{table}.client_ca"), e);
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
                self.issue(format!("{table}.{field}"), e.to_string());
                None
            }
        }
    }
}

/// Headers the OTLP exporter sets itself or that belong to the connection.
const RESERVED_EXPORT_HEADERS: [&str; 6] = [
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
];

/// A headers file (`[telemetry.otlp] headers_file`): one `Name: value` per line; blank lines and
/// lines starting with `#` are skipped. Values are marked sensitive (they are often API keys), and
/// no error quotes one.
fn read_headers(path: &Path) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut headers = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("{}: expected `Name: value`", at()))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{}: {:?} is not a header name", at(), name.trim()))?;
        if RESERVED_EXPORT_HEADERS.contains(&name.as_str()) {
            return Err(format!("{}: {name} is set by the exporter", at()));
        }
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("{}: the value of {name} is not a valid header value", at()))?;
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Ok(headers)
}

/// The logs endpoint beside a traces endpoint: `/v1/traces` at the end of its path becomes
/// `/v1/logs`; any other path gives `/v1/logs` on the same host.
fn logs_beside(traces: &http::Uri) -> http::Uri {
    let path = traces.path();
    let logs = match path.strip_suffix("/v1/traces") {
        Some(prefix) => format!("{prefix}/v1/logs"),
        None => "/v1/logs".to_owned(),
    };
    let mut parts = traces.clone().into_parts();
    parts.path_and_query = logs.parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| traces.clone())
}

/// Application Insights' public ingestion host, when a connection string names none.
const DEFAULT_INGESTION: &str = "https://dc.services.visualstudio.com/";

/// A connection string (`InstrumentationKey=...;IngestionEndpoint=https://...;...`, names
/// case-insensitive, other names ignored): the track endpoint and the instrumentation key.
fn connection_string(text: &str) -> Result<(http::Uri, String), String> {
    let mut key = None;
    let mut ingestion = None;
    for part in text.trim().split(';').filter(|p| !p.trim().is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| "expected Name=value pairs separated by ';'".to_owned())?;
        match name.trim().to_ascii_lowercase().as_str() {
            "instrumentationkey" => key = Some(value.trim().to_owned()),
            "ingestionendpoint" => ingestion = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let key = key
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .ok_or_else(|| "no valid InstrumentationKey".to_owned())?;
    let base = ingestion.unwrap_or_else(|| DEFAULT_INGESTION.to_owned());
    let uri = format!("{}/v2.1/track", base.trim_end_matches('/'))
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some())
        .ok_or_else(|| format!("IngestionEndpoint {base:?} is not an http(s):// URL"))?;
    Ok((uri, key))
}
