//! The runtime state: everything a scoring request or the admin plane reads that can change while
//! the gateway runs, in one immutable [`RuntimeState`] published through one `ArcSwap`.
//!
//! A request takes one lock-free snapshot and finishes under the settings it started with, while a
//! change builds a complete new state and swaps it in for the requests that follow. Only the
//! reload loop (`reload::Applier`) publishes a state into the [`StateCell`]; it builds candidates
//! with [`build::build`], which shares every unchanged part (upstream pools, token caches,
//! concurrency limits, rate buckets, metric handles) with the running state. What does not change
//! after startup lives beside the cell in `gateway::Gateway`: the metrics registry, the record
//! sink, the activity log and the lifecycle flags.

pub mod assignments;
pub mod build;
mod service;

use std::sync::{Arc, OnceLock, Weak};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::auth::admin::{AdminCredentials, Identity};
use crate::config::Config;
use crate::policy::{Assignment, Policy};
use crate::telemetry::redact::Redaction;

pub use build::BuildError;
pub use service::Service;

/// One version of everything that can change while running.
#[derive(Debug)]
pub struct RuntimeState {
    /// The configuration in force. Restart-only settings in it (listen addresses, worker
    /// threads, the telemetry output) may be newer than what runs; see `reload`.
    pub config: Arc<Config>,
    /// Longest route first, so the first match is the most specific.
    services: Vec<Arc<Service>>,
    /// The scoring listener's certificate (`None` without TLS).
    pub cert: Option<Arc<CertifiedKey>>,
    /// The scoring listener's TLS settings (`None`: plain HTTP). Shared across versions while
    /// `[server.tls]`'s client CA is unchanged, so session tickets stay valid.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The admin listener's TLS settings (`[server.admin_tls]`; `None`: plain HTTP). Shared
    /// across versions while its certificate chain and client CA are unchanged.
    pub admin_tls: Option<Arc<rustls::ServerConfig>>,
    /// The trusted identity provider for management callers, with its current keys.
    pub identity: Option<Identity>,
    /// Role assignments made through the API (`state_dir/role-assignments.json`).
    pub assignments: Arc<Vec<Assignment>>,
    /// The bootstrap admin credential.
    pub admin: AdminCredentials,
    /// `ComputeType` of every record.
    pub compute_type: Arc<str>,
    /// Applied to every recorded URL (`redact_query_params`).
    redaction: Redaction,
    /// `RoleInstance` of every record and activity entry (`telemetry::role::instance`).
    pub role_instance: Arc<str>,
    /// Counts published states (1 is the first).
    pub generation: u64,
}

impl RuntimeState {
    /// Finds the service whose route is the longest prefix of `path` on a segment boundary and
    /// returns it with the rest of the path (always starting with `/`).
    pub fn route<'p>(&self, path: &'p str) -> Option<(&Arc<Service>, &'p str)> {
        route_in(&self.services, path)
    }

    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.config.name == name)
    }

    /// Peers whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.config.server.trusted_proxies
    }

    /// Who may reach the admin listener (`None`: anyone who can connect).
    pub fn admin_allow_cidrs(&self) -> Option<&[ipnet::IpNet]> {
        self.config.server.admin_allow_cidrs.as_deref()
    }

    /// Roles and the config file's role assignments.
    pub fn policy(&self) -> &Policy {
        &self.config.policy
    }

    /// `RoleName` of records and entries about `service` (`None`: about no service).
    pub fn role_name(&self, service: Option<&str>) -> &str {
        service
            .and_then(|name| self.by_name(name))
            .map_or(&self.config.telemetry.role_name, |s| &s.config.role_name)
    }

    /// Applied to every recorded URL.
    pub fn redaction(&self) -> &Redaction {
        &self.redaction
    }

    /// Ready = every upstream answered its latest health probe and every JWKS URL has been
    /// fetched once (the lifecycle flags are the gateway's).
    fn services_ready(&self) -> bool {
        self.services
            .iter()
            .all(|s| s.is_healthy() && s.tokens().is_none_or(|t| t.keys_loaded()))
    }
}

fn route_in<'s, 'p>(
    services: &'s [Arc<Service>],
    path: &'p str,
) -> Option<(&'s Arc<Service>, &'p str)> {
    services
        .iter()
        .find_map(|s| route_rest(&s.config.route, path).map(|rest| (s, rest)))
}

/// The rest of `path` (always starting with `/`) when `route` is a prefix of it on a segment
/// boundary.
pub(crate) fn route_rest<'p>(route: &str, path: &'p str) -> Option<&'p str> {
    let rest = path.strip_prefix(route)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// Where the state is published: one `ArcSwap`, and the certificate resolver that reads from
/// it. Cloning shares the same cell.
#[derive(Debug, Clone)]
pub struct StateCell {
    cell: Arc<ArcSwap<RuntimeState>>,
    resolver: Arc<StateCert>,
    /// The generation of the state last published, for whoever waits for a change (the scoring
    /// listener's connection cap).
    published: Arc<tokio::sync::watch::Sender<u64>>,
}

impl StateCell {
    /// A cell holding `first`, whose TLS settings were built around `resolver`.
    pub fn new(first: RuntimeState, resolver: Arc<StateCert>) -> Self {
        let (published, _) = tokio::sync::watch::channel(first.generation);
        let cell = Arc::new(ArcSwap::from_pointee(first));
        // Set once, here; a second cell around the same resolver keeps the first binding.
        let _ = resolver.state.set(Arc::downgrade(&cell));
        Self {
            cell,
            resolver,
            published: Arc::new(published),
        }
    }

    /// Sees every publication from now on (`changed()` resolves after each).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// The current state: a cheap snapshot to read within a request or call.
    pub fn load(&self) -> arc_swap::Guard<Arc<RuntimeState>> {
        self.cell.load()
    }

    /// The current state, owned (to keep across awaits).
    pub fn load_full(&self) -> Arc<RuntimeState> {
        self.cell.load_full()
    }

    /// Publishes a state. Only the reload loop calls this, under its lock.
    pub(crate) fn publish(&self, state: RuntimeState) {
        let generation = state.generation;
        self.cell.store(Arc::new(state));
        self.published.send_replace(generation);
    }

    /// The certificate resolver every TLS configuration of the scoring listener uses.
    pub(crate) fn resolver(&self) -> &Arc<StateCert> {
        &self.resolver
    }

    /// Every upstream answered its latest health probe and every JWKS URL has been fetched once.
    pub fn services_ready(&self) -> bool {
        self.load().services_ready()
    }
}

impl crate::telemetry::activity::Roles for StateCell {
    fn roles(&self, service: Option<&str>) -> (String, Arc<str>) {
        let state = self.load();
        (
            state.role_name(service).to_owned(),
            Arc::clone(&state.role_instance),
        )
    }
}

impl crate::telemetry::request_log::StateFacts for RuntimeState {
    fn redaction(&self) -> &Redaction {
        &self.redaction
    }

    fn compute_type(&self) -> &str {
        &self.compute_type
    }

    fn request_records(&self) -> bool {
        self.config.telemetry.request_records
    }

    fn role_name(&self) -> &Arc<str> {
        &self.config.telemetry.role_name
    }

    fn role_instance(&self) -> &Arc<str> {
        &self.role_instance
    }
}

/// Reads the certificate of the current state at each handshake: new connections get the newest
/// certificate, established ones keep theirs (linkerd2-proxy's meshtls pattern). Created before
/// the first state (whose TLS configuration holds it) and bound to the gateway's state once that
/// exists; holds it weakly, since the state holds the TLS configuration that holds this.
#[derive(Debug, Default)]
pub struct StateCert {
    state: OnceLock<Weak<ArcSwap<RuntimeState>>>,
}

impl ResolvesServerCert for StateCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.state.get()?.upgrade()?.load().cert.clone()
    }
}
