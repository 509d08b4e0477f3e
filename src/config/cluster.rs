//! Validation of `[cluster]`: `backend = "local"` (the default: every piece of state in
//! `state_dir`, as without the table) or `backend = "etcd"` (fleet mode: replicas with the same
//! `namespace` share keys, signing keys, role assignments and the admin credential through etcd).
//!
//! Validation reads the seal key file (so a wrong one is a config error naming the key) but never
//! connects to etcd: `check-config` works offline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Validator;
use super::raw::RawCluster;
use crate::seal::SealKey;

/// Where shared state lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClusterConfig {
    /// Everything in this replica's `state_dir`.
    #[default]
    Local,
    /// Shared through an etcd namespace.
    Etcd(Arc<EtcdConfig>),
}

impl ClusterConfig {
    pub fn etcd(&self) -> Option<&Arc<EtcdConfig>> {
        match self {
            Self::Local => None,
            Self::Etcd(e) => Some(e),
        }
    }
}

/// `[cluster]` with `backend = "etcd"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://` or `https://` (all the same scheme), no path.
    pub endpoints: Vec<http::Uri>,
    /// Keys live under `/scoregate/<namespace>/`.
    pub namespace: String,
    /// This replica's name in the fleet (registrations, records, activity).
    pub instance: String,
    pub seal_key_file: PathBuf,
    pub seal: SealKey,
    /// Extra CA for `https://` endpoints (else the system roots).
    pub ca: Option<PathBuf>,
    /// Client certificate and key for `https://` endpoints.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// etcd user and the file holding its password.
    pub user: Option<(String, PathBuf)>,
    /// Bound on connecting to an endpoint, and on each unary call.
    pub dial_timeout: Duration,
}

impl EtcdConfig {
    /// `/scoregate/<namespace>/`: every key of the namespace starts with it.
    pub fn prefix(&self) -> String {
        format!("/scoregate/{}/", self.namespace)
    }

    pub fn tls(&self) -> bool {
        self.endpoints
            .first()
            .is_some_and(|u| u.scheme_str() == Some("https"))
    }
}

/// A name usable in an etcd key and a label: letters, digits, `.`, `_`, `-`.
fn name_ok(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The pod's name (Kubernetes downward API): `[cluster] instance`'s default and the records'
/// `RoleInstance` (`telemetry::role`).
pub const POD_NAME_ENV: &str = "POD_NAME";

/// `$POD_NAME` (set from the pod's `metadata.name` by the Kubernetes kit), else the host name.
pub fn default_instance() -> Option<String> {
    std::env::var(POD_NAME_ENV)
        .ok()
        .as_deref()
        .and_then(non_empty)
        .or_else(|| host_name().as_deref().and_then(non_empty))
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The kernel's host name (Linux), else what the shell exported.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
}

/// `[cluster] instance`'s default (empty: neither is known, which validation refuses).
fn instance_default() -> String {
    default_instance().unwrap_or_default()
}

impl Validator<'_> {
    pub(super) fn cluster(&mut self, raw: &RawCluster) -> ClusterConfig {
        match raw.backend.as_deref().unwrap_or("local") {
            "local" => {
                for (field, set) in [
                    ("endpoints", raw.endpoints.is_some()),
                    ("namespace", raw.namespace.is_some()),
                    ("instance", raw.instance.is_some()),
                    ("seal_key_file", raw.seal_key_file.is_some()),
                    ("ca", raw.ca.is_some()),
                    ("cert", raw.cert.is_some()),
                    ("key", raw.key.is_some()),
                    ("username", raw.username.is_some()),
                    ("password_file", raw.password_file.is_some()),
                    ("dial_timeout_ms", raw.dial_timeout_ms.is_some()),
                ] {
                    if set {
                        self.issue(
                            format!("cluster.{field}"),
                            "applies only to backend = \"etcd\"",
                        );
                    }
                }
                ClusterConfig::Local
            }
            "etcd" => self.etcd(raw),
            other => {
                self.issue(
                    "cluster.backend",
                    format!("{other:?} is not \"local\" or \"etcd\""),
                );
                ClusterConfig::Local
            }
        }
    }

    fn etcd(&mut self, raw: &RawCluster) -> ClusterConfig {
        let endpoints = self.endpoints(raw.endpoints.as_deref().unwrap_or_default());
        let https = endpoints
            .first()
            .is_some_and(|u| u.scheme_str() == Some("https"));
        let namespace = raw.namespace.clone().unwrap_or_default();
        if !name_ok(&namespace, 64) {
            self.issue(
                "cluster.namespace",
                format!("{namespace:?} must be 1 to 64 letters, digits, '.', '_' or '-'"),
            );
        }
        let (instance, key) = match raw.instance.clone() {
            Some(i) => (i, "cluster.instance"),
            None => (
                instance_default(),
                "cluster.instance (from $POD_NAME or the host name)",
            ),
        };
        if !name_ok(&instance, 253) {
            self.issue(
                key,
                format!("{instance:?} must be 1 to 253 letters, digits, '.', '_' or '-'"),
            );
        }
        let seal_key_file = raw
            .seal_key_file
            .as_deref()
            .map(|p| self.path(p))
            .unwrap_or_default();
        let seal = if raw.seal_key_file.is_none() {
            self.issue(
                "cluster.seal_key_file",
                "is required with backend = \"etcd\" (`scoregate cluster seal-key` prints a new key)",
            );
            None
        } else {
            SealKey::from_file(&seal_key_file)
                .map_err(|e| self.issue("cluster.seal_key_file", e.to_string()))
                .ok()
        };
        let (ca, identity) = self.etcd_tls(raw, https);
        let user = self.etcd_user(raw);
        let dial_timeout = self.millis("cluster.dial_timeout_ms", raw.dial_timeout_ms, 2000, 50);
        match seal {
            Some(seal) => ClusterConfig::Etcd(Arc::new(EtcdConfig {
                endpoints,
                namespace,
                instance,
                seal_key_file,
                seal,
                ca,
                identity,
                user,
                dial_timeout,
            })),
            // The issue is reported; the placeholder keeps validation going.
            None => ClusterConfig::Local,
        }
    }

    /// `ca`, `cert` and `key`: client TLS to etcd, for https:// endpoints only.
    fn etcd_tls(
        &mut self,
        raw: &RawCluster,
        https: bool,
    ) -> (Option<PathBuf>, Option<(PathBuf, PathBuf)>) {
        let ca = raw.ca.as_deref().map(|p| self.path(p));
        let identity = match (raw.cert.as_deref(), raw.key.as_deref()) {
            (Some(c), Some(k)) => Some((self.path(c), self.path(k))),
            (None, None) => None,
            (Some(_), None) => {
                self.issue("cluster.key", "is required when cluster.cert is set");
                None
            }
            (None, Some(_)) => {
                self.issue("cluster.cert", "is required when cluster.key is set");
                None
            }
        };
        if !https {
            for (field, set) in [
                ("ca", ca.is_some()),
                ("cert", raw.cert.is_some()),
                ("key", raw.key.is_some()),
            ] {
                if set {
                    self.issue(
                        format!("cluster.{field}"),
                        "applies only to https:// endpoints",
                    );
                }
            }
        }
        for (field, path) in [("ca", ca.as_ref())].into_iter().chain(
            identity
                .iter()
                .flat_map(|(c, k)| [("cert", Some(c)), ("key", Some(k))]),
        ) {
            if let Some(p) = path
                && !p.is_file()
            {
                self.issue(
                    format!("cluster.{field}"),
                    format!("{} does not exist or is not a file", p.display()),
                );
            }
        }
        (ca, identity)
    }

    /// `username` and `password_file`: both or neither.
    fn etcd_user(&mut self, raw: &RawCluster) -> Option<(String, PathBuf)> {
        match (raw.username.clone(), raw.password_file.as_deref()) {
            (Some(u), Some(p)) => Some((u, self.path(p))),
            (None, None) => None,
            (Some(_), None) => {
                self.issue(
                    "cluster.password_file",
                    "is required when cluster.username is set",
                );
                None
            }
            (None, Some(_)) => {
                self.issue(
                    "cluster.username",
                    "is required when cluster.password_file is set",
                );
                None
            }
        }
    }

    fn endpoints(&mut self, raw: &[String]) -> Vec<http::Uri> {
        if raw.is_empty() {
            self.issue(
                "cluster.endpoints",
                "needs at least one etcd endpoint (e.g. \"http://127.0.0.1:2379\")",
            );
        }
        let mut out = Vec::with_capacity(raw.len());
        for (i, text) in raw.iter().enumerate() {
            let key = format!("cluster.endpoints[{i}]");
            let Ok(uri) = text.parse::<http::Uri>() else {
                self.issue(key, format!("{text:?} is not a URL"));
                continue;
            };
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                self.issue(
                    key,
                    format!("{text:?} must be http://host:port or https://host:port"),
                );
                continue;
            }
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                self.issue(key, format!("{text:?} must not have a path"));
                continue;
            }
            if let Some(first) = out.first().map(|u: &http::Uri| u.scheme_str())
                && first != uri.scheme_str()
            {
                self.issue(key, "every endpoint must use the same scheme");
                continue;
            }
            out.push(uri);
        }
        out
    }
}

#[cfg(test)]
mod tests;
