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

use crate::admin::authz::{AdminCredentials, Identity};
use crate::admin::roles::{AssignmentStore, Policy};
use crate::admission::{ConcurrencyLimit, RateLimiter};
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
use crate::tls::CertResolver;

/// One configured scoring service with its resolved handles.
#[derive(Debug)]
pub struct Service {
    pub config: ServiceConfig,
    /// The name as shared text for records (cloned per request without allocating).
    pub name: Arc<str>,
    pub metrics: ServiceMetrics,
    /// Pooled client to this service's scoring container.
    pub upstream: UpstreamClient,
    /// `Host` sent upstream (the upstream's authority), built once.
    pub host_header: http::HeaderValue,
    /// How callers are checked, with the key store or token verifier that needs.
    pub auth: ServiceAuth,
    /// Concurrency limit and wait queue.
    pub limit: Arc<ConcurrencyLimit>,
    /// Per-caller token buckets, if configured.
    pub rate: Option<Arc<RateLimiter>>,
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
    #[error("service {service:?}: upstream TLS: {reason}")]
    Upstream { service: String, reason: String },
    #[error("identity provider: {0}")]
    Identity(#[source] crate::auth::jwt::trusted::JwksError),
    #[error("role assignments: {0}")]
    Assignments(#[source] crate::admin::roles::AssignmentError),
    #[error("admin credential: {0}")]
    Admin(#[source] crate::admin::authz::CredentialError),
}

impl Service {
    /// Builds a service. On reload, `previous` is the running service of the same name: every
    /// part whose settings did not change is shared with it, so keys keep their last-used times,
    /// token caches and JWKS stay warm, the upstream pool keeps its connections, and in-flight
    /// requests and waiters keep counting against the same concurrency limit.
    fn new(
        config: ServiceConfig,
        metrics: &Metrics,
        previous: Option<&Self>,
    ) -> Result<Self, BuildError> {
        let service_metrics = ServiceMetrics::new(metrics, &config.name, config.auth.as_str());
        let same = |f: &dyn Fn(&ServiceConfig) -> bool| previous.filter(|p| f(&p.config));
        let auth = match (config.auth, &config.keys, &config.token) {
            (AuthMode::Key, Some(source), _) => {
                match same(&|p| p.keys == config.keys).and_then(Self::keys) {
                    Some(store) => ServiceAuth::Key(Arc::clone(store)),
                    None => ServiceAuth::Key(Arc::new(KeyStore::open(source.clone()).map_err(
                        |source| BuildError::Keys {
                            service: config.name.clone(),
                            source,
                        },
                    )?)),
                }
            }
            (AuthMode::Token, _, Some(token)) => {
                match same(&|p| p.token == config.token && p.name == config.name)
                    .and_then(Self::tokens)
                {
                    Some(t) => ServiceAuth::Token(Arc::clone(t)),
                    None => ServiceAuth::Token(Arc::new(
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
                }
            }
            _ => ServiceAuth::None,
        };
        // The running limit is kept (and reconfigured in place by `Routes::apply_limits` once the
        // new table is committed), so a reload never forgets requests in flight or waiting.
        let limit = same(&|_| true).map_or_else(
            || {
                Arc::new(ConcurrencyLimit::new(
                    config.max_concurrent_requests,
                    config.max_request_wait,
                    config.max_queue_length,
                ))
            },
            |p| Arc::clone(&p.limit),
        );
        let rate = match (
            same(&|p| p.rate_limit == config.rate_limit),
            config.rate_limit,
        ) {
            (Some(p), Some(_)) => p.rate.clone(),
            (None, Some(r)) => Some(Arc::new(RateLimiter::new(r))),
            (_, None) => None,
        };
        let same_upstream = same(&|p| {
            p.upstream == config.upstream
                && p.connect_timeout == config.connect_timeout
                && p.upstream_keepalive == config.upstream_keepalive
                && p.upstream_ca == config.upstream_ca
        });
        let upstream = match same_upstream {
            Some(p) => p.upstream.clone(),
            None => UpstreamClient::new(
                &config,
                metrics
                    .upstream_connections
                    .with_label_values(&[config.name.as_str()]),
            )
            .map_err(|reason| BuildError::Upstream {
                service: config.name.clone(),
                reason,
            })?,
        };
        // Health belongs to the container, not to the client: it carries over whenever the
        // probe target is the same, even if the client was rebuilt (e.g. a new connect timeout).
        let healthy =
            same(&|p| p.upstream == config.upstream && p.health_path == config.health_path)
                .is_some_and(Self::is_healthy);
        let host_header =
            http::HeaderValue::from_str(config.upstream.authority.as_str()).map_err(|_| {
                BuildError::Upstream {
                    service: config.name.clone(),
                    reason: "the upstream authority is not a valid Host header".into(),
                }
            })?;
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            host_header,
            limit,
            rate,
            metrics: service_metrics,
            upstream,
            auth,
            healthy: AtomicBool::new(healthy),
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
    /// Peers whose `X-Forwarded-For` is believed (reloadable with the routes).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Who may reach the admin listener.
    pub admin_allow_cidrs: Option<Vec<ipnet::IpNet>>,
    /// Trusted identity provider for management callers.
    pub identity: Option<Arc<Identity>>,
    /// Roles and config role assignments.
    pub policy: Policy,
}

impl Routes {
    /// Builds the table for `config`, sharing unchanged parts with `previous` (see
    /// [`Service::new`]).
    pub fn build(
        config: &Config,
        metrics: &Metrics,
        previous: Option<&Self>,
    ) -> Result<Self, BuildError> {
        let mut services = config
            .services
            .iter()
            .map(|c| {
                let before = previous.and_then(|p| p.by_name(&c.name)).map(AsRef::as_ref);
                Service::new(c.clone(), metrics, before).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        services.sort_by_key(|s| std::cmp::Reverse(s.config.route.len()));
        let identity = match (&config.identity, previous.and_then(|p| p.identity.as_ref())) {
            (Some(c), Some(running)) if running.config == *c => Some(Arc::clone(running)),
            (Some(c), _) => {
                let mut identity = Identity::new(c.clone()).map_err(BuildError::Identity)?;
                identity
                    .issuer
                    .count_fetches(&metrics.jwks_fetches, "admin");
                Some(Arc::new(identity))
            }
            (None, _) => None,
        };
        Ok(Self {
            services,
            trusted_proxies: config.server.trusted_proxies.clone(),
            admin_allow_cidrs: config.server.admin_allow_cidrs.clone(),
            identity,
            policy: config.policy.clone(),
        })
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

    /// Brings every shared concurrency limit to this table's settings; called when the table
    /// is swapped in, never before (a build that fails must not change the running limits).
    pub fn apply_limits(&self) {
        for s in &self.services {
            s.limit.reconfigure(
                s.config.max_concurrent_requests,
                s.config.max_request_wait,
                s.config.max_queue_length,
            );
        }
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
    /// Role assignments made through the API.
    pub assignments: AssignmentStore,
    /// `GET /metrics` needs no credential.
    pub public_metrics: bool,
    /// The configuration in force (reloads swap it).
    pub config: ArcSwap<Config>,
    /// The scoring listener's certificate, swappable for new handshakes.
    pub cert: Option<Arc<CertResolver>>,
    /// Serialises reloads.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Wakes the health prober (after a reload, so new services are probed at once).
    pub health_wake: tokio::sync::Notify,
    /// Fingerprints of the config and certificate files.
    pub watched: std::sync::Mutex<crate::config::FileFingerprints>,
    /// The configuration the process started with (what restart-only settings really are).
    pub startup_config: Arc<Config>,
}

impl Gateway {
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        records: RecordSink,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            routes: ArcSwap::from_pointee(Routes::build(config, &metrics, None)?),
            admin: AdminCredentials::load_or_create(&config.server.state_dir)
                .map_err(BuildError::Admin)?,
            assignments: AssignmentStore::open(&config.server.state_dir)
                .map_err(BuildError::Assignments)?,
            unrouted: ServiceMetrics::new(&metrics, UNROUTED, "none"),
            metrics,
            activity: ActivityLog::new(records.clone()),
            records,
            redaction: config.telemetry.redaction.clone(),
            lifecycle: Arc::new(Lifecycle::default()),
            compute_type: Arc::from(config.server.compute_type.as_str()),
            tls: config.server.tls.is_some(),
            public_metrics: config.server.public_metrics,
            cert: config
                .server
                .tls
                .as_ref()
                .map(|t| CertResolver::new(t.certified_key.clone())),
            watched: std::sync::Mutex::new(config.fingerprints.clone()),
            startup_config: Arc::new(config.clone()),
            reload_lock: tokio::sync::Mutex::new(()),
            health_wake: tokio::sync::Notify::new(),
            config: ArcSwap::from_pointee(config.clone()),
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

    fn routes_of(configs: &[ServiceConfig], metrics: &Metrics) -> Result<Routes, BuildError> {
        let mut services = configs
            .iter()
            .map(|c| Service::new(c.clone(), metrics, None).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        services.sort_by_key(|s| std::cmp::Reverse(s.config.route.len()));
        Ok(Routes {
            services,
            ..Routes::default()
        })
    }

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
            upstream_keepalive: Duration::from_secs(1),
            health_path: "/".into(),
            max_body_bytes: 1,
            keys: None,
            token: None,
            max_concurrent_requests: 1,
            max_request_wait: Duration::from_millis(1),
            max_queue_length: 1,
            body_idle_timeout: Duration::from_secs(1),
            allow_cidrs: None,
            rate_limit: None,
            upstream_ca: None,
        }
    }

    #[test]
    fn longest_route_wins_on_segment_boundaries() {
        let m = Metrics::new();
        let routes = routes_of(
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
        let routes = routes_of(&[svc("iris", "/iris")], &m).expect("routes");
        assert!(routes.route("/other").is_none());
        assert!(routes.route("/iri").is_none());
    }
}
