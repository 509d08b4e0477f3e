//! The state every request handler shares: the route table, the upstream client, telemetry
//! handles and the lifecycle flags.
//!
//! The route table sits behind an `ArcSwap`, so a request takes one lock-free snapshot at its
//! start and finishes under the settings it started with, while a reload stores a new table for
//! the requests that follow. Building a table does all the per-service work (metric handles,
//! normalised routes) once, off the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::admin::authz::AdminCredentials;
use crate::auth::ServiceAuth;
use crate::auth::jwt::TokenAuthority;
use crate::auth::keys::{KeyError, KeyStore};
use crate::config::{AuthMode, Config, ServiceConfig};
use crate::proxy::upstream::UpstreamClient;
use crate::shutdown::Lifecycle;
use crate::telemetry::activity::ActivityLog;
use crate::telemetry::metrics::{Metrics, ServiceMetrics, UNROUTED};
use crate::telemetry::redact::Redaction;
use crate::telemetry::sink::RecordSink;

/// One configured scoring service with its resolved handles.
#[derive(Debug)]
pub struct Service {
    pub config: ServiceConfig,
    /// The name as shared text for records (cloned per request without allocating).
    pub name: Arc<str>,
    pub metrics: ServiceMetrics,
    /// Pooled client to this service's scoring container.
    pub upstream: UpstreamClient,
    /// How callers are checked, with the key store or token verifier that needs.
    pub auth: ServiceAuth,
    /// Result of the latest health probe of the upstream.
    healthy: AtomicBool,
}

/// Why the runtime state for a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("service {service:?}: {source}")]
    Keys {
        service: String,
        #[source]
        source: KeyError,
    },
    #[error("service {service:?}: {source}")]
    Tokens {
        service: String,
        #[source]
        source: crate::auth::jwt::TokenSetupError,
    },
    #[error("admin credential: {0}")]
    Admin(#[source] crate::admin::authz::CredentialError),
}

impl Service {
    fn new(config: ServiceConfig, metrics: &Metrics) -> Result<Self, BuildError> {
        let service_metrics = ServiceMetrics::new(metrics, &config.name, config.auth.as_str());
        let auth = match (config.auth, &config.keys, &config.token) {
            (AuthMode::Key, Some(source), _) => ServiceAuth::Key(Arc::new(
                KeyStore::open(source.clone()).map_err(|source| BuildError::Keys {
                    service: config.name.clone(),
                    source,
                })?,
            )),
            (AuthMode::Token, _, Some(token)) => ServiceAuth::Token(Arc::new(
                TokenAuthority::new(
                    &config.name,
                    token.clone(),
                    service_metrics.token_cache.clone(),
                )
                .map_err(|source| BuildError::Tokens {
                    service: config.name.clone(),
                    source,
                })?,
            )),
            _ => ServiceAuth::None,
        };
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            metrics: service_metrics,
            upstream: UpstreamClient::new(config.connect_timeout),
            auth,
            healthy: AtomicBool::new(false),
            config,
        })
    }

    /// The key store of a key-mode service.
    pub fn keys(&self) -> Option<&Arc<KeyStore>> {
        match &self.auth {
            ServiceAuth::Key(store) => Some(store),
            ServiceAuth::None | ServiceAuth::Token(_) => None,
        }
    }

    /// The token authority of a token-mode service.
    pub fn tokens(&self) -> Option<&Arc<TokenAuthority>> {
        match &self.auth {
            ServiceAuth::Token(t) => Some(t),
            ServiceAuth::None | ServiceAuth::Key(_) => None,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
    }
}

/// The services, ordered so that the first match is the longest route.
#[derive(Debug, Default)]
pub struct Routes {
    services: Vec<Arc<Service>>,
}

impl Routes {
    pub fn new(configs: &[ServiceConfig], metrics: &Metrics) -> Result<Self, BuildError> {
        let mut services = configs
            .iter()
            .map(|c| Service::new(c.clone(), metrics).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        services.sort_by_key(|s| std::cmp::Reverse(s.config.route.len()));
        Ok(Self { services })
    }

    /// Finds the service whose route is the longest prefix of `path` on a segment boundary and
    /// returns it with the rest of the path (always starting with `/`).
    pub fn route<'p>(&self, path: &'p str) -> Option<(&Arc<Service>, &'p str)> {
        self.services.iter().find_map(|s| {
            let rest = path.strip_prefix(s.config.route.as_str())?;
            if rest.is_empty() {
                Some((s, "/"))
            } else if rest.starts_with('/') {
                Some((s, rest))
            } else {
                None
            }
        })
    }

    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.config.name == name)
    }
}

/// Everything shared by the handlers of both listeners.
#[derive(Debug)]
pub struct Gateway {
    pub routes: ArcSwap<Routes>,
    pub metrics: Arc<Metrics>,
    /// Handles for requests that matched no route.
    pub unrouted: ServiceMetrics,
    pub records: RecordSink,
    /// Management operations, with their initiators.
    pub activity: ActivityLog,
    /// Applied to every recorded URL.
    pub redaction: Redaction,
    pub lifecycle: Arc<Lifecycle>,
    /// `ComputeType` of every record.
    pub compute_type: Arc<str>,
    /// Whether the scoring listener terminates TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// Credentials accepted on the admin listener.
    pub admin: AdminCredentials,
    /// `GET /metrics` needs no credential.
    pub public_metrics: bool,
}

impl Gateway {
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        records: RecordSink,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            routes: ArcSwap::from_pointee(Routes::new(&config.services, &metrics)?),
            admin: AdminCredentials::load_or_create(&config.server.state_dir)
                .map_err(BuildError::Admin)?,
            unrouted: ServiceMetrics::new(&metrics, UNROUTED, "none"),
            metrics,
            activity: ActivityLog::new(records.clone()),
            records,
            redaction: config.telemetry.redaction.clone(),
            lifecycle: Arc::new(Lifecycle::default()),
            compute_type: Arc::from(config.server.compute_type.as_str()),
            tls: config.server.tls.is_some(),
            public_metrics: config.server.public_metrics,
        })
    }

    /// Ready = listening, not draining, every upstream answered its latest health probe, and
    /// every JWKS URL has been fetched once.
    pub fn is_ready(&self) -> bool {
        self.lifecycle.is_listening()
            && !self.lifecycle.is_draining()
            && self
                .routes
                .load()
                .services()
                .iter()
                .all(|s| s.is_healthy() && s.tokens().is_none_or(|t| t.keys_loaded()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMode, Upstream};
    use std::time::Duration;

    fn svc(name: &str, route: &str) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            route: route.into(),
            upstream: Upstream {
                scheme: http::uri::Scheme::HTTP,
                authority: http::uri::Authority::from_static("127.0.0.1:1"),
                base_path: String::new(),
            },
            auth: AuthMode::None,
            scoring_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            health_path: "/".into(),
            max_body_bytes: 1,
            keys: None,
            token: None,
        }
    }

    #[test]
    fn longest_route_wins_on_segment_boundaries() {
        let m = Metrics::new();
        let routes = Routes::new(
            &[
                svc("root", ""),
                svc("iris", "/api/v1/service/iris"),
                svc("iris2", "/api/v1/service/iris2"),
            ],
            &m,
        )
        .expect("routes");
        let name = |p: &str| {
            routes
                .route(p)
                .map(|(s, rest)| (s.config.name.clone(), rest.to_owned()))
        };
        assert_eq!(
            name("/api/v1/service/iris/score"),
            Some(("iris".into(), "/score".into()))
        );
        assert_eq!(
            name("/api/v1/service/iris"),
            Some(("iris".into(), "/".into()))
        );
        assert_eq!(
            name("/api/v1/service/iris2/score"),
            Some(("iris2".into(), "/score".into()))
        );
        // "iris" must not match "/api/v1/service/irisx": not a segment boundary.
        assert_eq!(
            name("/api/v1/service/irisx/score"),
            Some(("root".into(), "/api/v1/service/irisx/score".into()))
        );
        assert_eq!(name("/"), Some(("root".into(), "/".into())));
    }

    #[test]
    fn no_root_route_means_no_match() {
        let m = Metrics::new();
        let routes = Routes::new(&[svc("iris", "/iris")], &m).expect("routes");
        assert!(routes.route("/other").is_none());
        assert!(routes.route("/iri").is_none());
    }
}
