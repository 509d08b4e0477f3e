//! One configured scoring service with its resolved handles, and which of them a new state can
//! share with the running one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::admission::{ConcurrencyLimit, RateLimiter};
use crate::auth::ServiceAuth;
use crate::auth::jwt::TokenAuthority;
use crate::auth::keys::KeySet;
use crate::config::ServiceConfig;
use crate::telemetry::metrics::{Metrics, ServiceMetrics};
use crate::upstream::{Dialer, UpstreamClient};

use super::BuildError;

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
    /// How callers are checked, with the keys or token authority of this state version.
    pub auth: ServiceAuth,
    /// Concurrency limit and wait queue.
    pub limit: Arc<ConcurrencyLimit>,
    /// Per-caller token buckets, if configured.
    pub rate: Option<Arc<RateLimiter>>,
    /// Result of the latest health probe of the upstream; shared by every state version whose
    /// service probes the same target, so a probe's result is never written to a stale copy.
    healthy: Arc<AtomicBool>,
}

impl Service {
    /// Builds a service around its `auth` (made by the builder from this version's keys). With
    /// `previous`, the running service of the same name, every part whose settings did not
    /// change is shared: the upstream pool keeps its connections, in-flight requests and waiters
    /// keep counting against the same concurrency limit, rate buckets keep their tokens, health
    /// carries over.
    pub(super) fn new(
        config: ServiceConfig,
        auth: ServiceAuth,
        service_metrics: ServiceMetrics,
        metrics: &Metrics,
        previous: Option<&Self>,
        dialer: Option<&Dialer>,
    ) -> Result<Self, BuildError> {
        let same = |f: &dyn Fn(&ServiceConfig) -> bool| previous.filter(|p| f(&p.config));
        // The running limit is kept (and reconfigured in place once the new state is
        // published), so a change never forgets requests in flight or waiting.
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
                dialer,
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
                .map_or_else(
                    || Arc::new(AtomicBool::new(false)),
                    |p| Arc::clone(&p.healthy),
                );
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
            healthy,
            config,
        })
    }

    /// The keys of a key-mode service.
    pub fn keys(&self) -> Option<&Arc<KeySet>> {
        match &self.auth {
            ServiceAuth::Key(set) => Some(set),
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

    /// Brings the shared concurrency limit to this version's settings; called when the state
    /// is published, never before (a candidate that is refused must not change running limits).
    pub(crate) fn apply_limit(&self) {
        self.limit.reconfigure(
            self.config.max_concurrent_requests,
            self.config.max_request_wait,
            self.config.max_queue_length,
        );
    }
}

impl crate::telemetry::request_log::ServiceFacts for Service {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn auth_mode(&self) -> &'static str {
        self.config.auth.as_str()
    }

    fn route_len(&self) -> usize {
        self.config.route.len()
    }

    fn role_name(&self) -> &Arc<str> {
        &self.config.role_name
    }

    fn metrics(&self) -> &ServiceMetrics {
        &self.metrics
    }
}
