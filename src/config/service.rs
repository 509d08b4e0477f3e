//! Validation of `[[service]]` tables: names, routes, upstreams, auth mode, keys, limits.

use std::path::{Path, PathBuf};

use http::Uri;

use super::raw;
use super::{
    AuthMode, ConfigIssue, DEFAULT_MAX_BODY_BYTES, KeySource, KeyStorage, RateLimit, ServiceConfig,
    Upstream, Validator,
};

impl Validator<'_> {
    pub(super) fn services(
        &mut self,
        raw: Vec<raw::RawService>,
        state_dir: &Path,
    ) -> Vec<ServiceConfig> {
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
    pub(super) fn service(
        &mut self,
        i: usize,
        raw: raw::RawService,
        state_dir: &Path,
    ) -> ServiceConfig {
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
        let role_name = self.role_name(&key("role_name"), raw.role_name, &name);
        ServiceConfig {
            role_name,
            scoring_timeout: self.millis(
                &key("scoring_timeout_ms"),
                raw.scoring_timeout_ms,
                u64::try_from(super::DEFAULT_SCORING_TIMEOUT.as_millis()).unwrap_or(60_000),
                1,
            ),
            connect_timeout: self.millis(
                &key("connect_timeout_ms"),
                raw.connect_timeout_ms,
                5_000,
                1,
            ),
            upstream_keepalive: self.millis(
                &key("upstream_keepalive_ms"),
                raw.upstream_keepalive_ms,
                4_000,
                0,
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
            send_timeout: self.millis(&key("send_timeout_ms"), raw.send_timeout_ms, 30_000, 1),
            request_timeout: match raw.request_timeout_ms {
                None | Some(0) => None,
                Some(ms) => Some(self.millis(&key("request_timeout_ms"), Some(ms), 0, 1)),
            },
            min_body_rate: raw.min_body_rate_bytes_per_s.unwrap_or(500),
            min_body_rate_window: self.millis(
                &key("min_body_rate_window_ms"),
                raw.min_body_rate_window_ms,
                10_000,
                100,
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

    pub(super) fn key_source(
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

    pub(super) fn rate_limit(&mut self, key: &str, raw: &raw::RawRateLimit) -> Option<RateLimit> {
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

const NOT_AN_UPSTREAM: &str = "is not an http(s) URL or unix:/socket/path";

fn parse_upstream(text: &str) -> Result<Upstream, &'static str> {
    if let Some(rest) = text.strip_prefix("unix:") {
        return parse_unix_upstream(rest);
    }
    let uri: Uri = text.parse().map_err(|_| NOT_AN_UPSTREAM)?;
    let scheme = uri.scheme().cloned().ok_or(NOT_AN_UPSTREAM)?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(NOT_AN_UPSTREAM);
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
        socket: None,
    })
}

/// `unix:PATH[:BASE]` (after `unix:`): the socket path ends at the first `:`, so a socket path
/// cannot contain one; what follows is the base path, as in nginx's `http://unix:PATH:BASE`.
fn parse_unix_upstream(rest: &str) -> Result<Upstream, &'static str> {
    let (socket, base) = match rest.split_once(':') {
        Some((socket, base)) => (socket, Some(base)),
        None => (rest, None),
    };
    if !socket.starts_with('/') {
        return Err("needs an absolute socket path (unix:/run/model/model.sock)");
    }
    if socket.ends_with('/') {
        return Err("names a directory, not a socket (unix:/run/model/model.sock)");
    }
    if socket.len() > Upstream::MAX_SOCKET_PATH {
        return Err("has a socket path longer than 107 bytes, the limit of a Unix socket address");
    }
    if socket.chars().any(char::is_control) {
        return Err("has a control character in its socket path");
    }
    let base_path = match base {
        None => String::new(),
        Some(base) => {
            if !base.starts_with('/') {
                return Err(
                    "has a base path that does not start with '/' (unix:/path/model.sock:/base; \
                     a socket path cannot contain ':')",
                );
            }
            let uri: Uri = base.parse().map_err(|_| "has an invalid base path")?;
            if uri.query().is_some() || uri.authority().is_some() {
                return Err("must not have a query");
            }
            uri.path().trim_end_matches('/').to_owned()
        }
    };
    Ok(Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority: http::uri::Authority::from_static("localhost"),
        base_path,
        socket: Some(PathBuf::from(socket)),
    })
}

fn placeholder_upstream() -> Upstream {
    Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority: http::uri::Authority::from_static("invalid"),
        base_path: String::new(),
        socket: None,
    }
}
