//! Builds a complete candidate [`RuntimeState`] from the current value of every source, sharing
//! every unchanged part with the running state.
//!
//! The builder writes nothing. What it has to create because a source has no value yet (the keys
//! of a new key-mode service, the first signing key of a token-mode service, the bootstrap admin
//! credential) or must rewrite (plain keys under `key_storage = "hashed"`) comes back as
//! [`PendingWrite`]s with the candidate; the reload loop writes them only once it has decided to
//! publish the candidate, so a refused candidate leaves the state directory untouched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use zeroize::Zeroizing;

use super::{RuntimeState, Service, StateCert};
use crate::auth::ServiceAuth;
use crate::auth::admin::{AdminCredentials, CredentialError, CredentialFile, Identity};
use crate::auth::jwt::cache::TokenCache;
use crate::auth::jwt::signing::{SigningError, SigningFile, SigningFileState};
use crate::auth::jwt::trusted::{FetchedTx, Issuer, IssuerId, IssuerKeys, JwksError, KeyMap};
use crate::auth::jwt::{CacheCounters, TokenAuthority};
use crate::auth::keys::{KeyError, KeyFile, KeyFileState, KeySet};
use crate::config::{AuthMode, Config, ServiceConfig, TrustedIssuer, TrustedKeys};
use crate::policy::Assignment;
use crate::telemetry::metrics::{Metrics, ServiceMetrics};
use crate::telemetry::redact::Redaction;

/// Why a candidate state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("service {service:?}: {source}")]
    Keys {
        service: String,
        #[source]
        source: KeyError,
    },
    #[error("service {service:?}: {source}")]
    Signing {
        service: String,
        #[source]
        source: SigningError,
    },
    #[error("{owner}: trusted issuer {index}: {source}")]
    Jwks {
        owner: String,
        index: usize,
        #[source]
        source: JwksError,
    },
    #[error("service {service:?}: upstream TLS: {reason}")]
    Upstream { service: String, reason: String },
    #[error("scoring listener TLS: {0}")]
    Tls(#[source] rustls::Error),
    #[error("admin credential: {0}")]
    Admin(#[source] CredentialError),
    #[error("role assignments: {0}")]
    Assignments(#[source] crate::runtime::assignments::AssignmentError),
    #[error("service {0:?}: its key or signing-key source was not loaded")]
    NotLoaded(String),
}

/// The current value of every source the builder reads.
#[derive(Debug)]
pub struct Inputs {
    pub config: Arc<Config>,
    /// The scoring listener's certificate pair (present exactly when `[server.tls]` is).
    pub cert: Option<Arc<CertifiedKey>>,
    /// Key files of key-mode services, by service name.
    pub keys: BTreeMap<String, (KeyFile, Arc<KeyFileState>)>,
    /// Signing-key files of token-mode services, by service name.
    pub signing: BTreeMap<String, (SigningFile, Arc<SigningFileState>)>,
    /// Key sets of JWKS files and fetched JWKS URLs, by issuer.
    pub jwks: BTreeMap<IssuerId, Arc<KeyMap>>,
    pub assignments: Arc<Vec<Assignment>>,
    pub admin: (CredentialFile, Option<AdminCredentials>),
}

/// Long-lived handles the builder wires into a state.
#[derive(Debug)]
pub struct Context<'a> {
    pub metrics: &'a Metrics,
    pub resolver: &'a Arc<StateCert>,
    /// Where trusted issuers send the key sets they fetch.
    pub fetched: &'a FetchedTx,
    pub previous: Option<&'a RuntimeState>,
    /// Opens every service's upstream connections instead of the network (pipeline tests).
    pub dialer: Option<&'a crate::upstream::Dialer>,
}

/// A value the builder created, to be written before its state is published.
#[derive(Debug)]
pub enum Generated {
    Keys {
        service: String,
        file: KeyFile,
        state: KeyFileState,
    },
    Signing {
        service: String,
        file: SigningFile,
        state: SigningFileState,
    },
    Admin {
        file: CredentialFile,
        credentials: AdminCredentials,
    },
}

/// A file to write if, and only if, the candidate is published.
#[derive(Debug)]
pub struct PendingWrite {
    pub path: PathBuf,
    /// Fleet mode: the value goes to etcd (create-if-absent, or compare-and-swap).
    pub shared: Option<crate::cluster::SharedKey>,
    pub bytes: Zeroizing<Vec<u8>>,
    pub generated: Generated,
}

/// A built state and the writes it depends on.
#[derive(Debug)]
pub struct Candidate {
    pub state: RuntimeState,
    pub writes: Vec<PendingWrite>,
}

/// Builds the state for `inputs`.
pub fn build(ctx: &Context<'_>, inputs: &Inputs) -> Result<Candidate, BuildError> {
    let mut writes = Vec::new();
    let admin = admin_credentials(inputs, &mut writes)?;
    let mut services = Vec::with_capacity(inputs.config.services.len());
    for config in &inputs.config.services {
        let before = ctx
            .previous
            .and_then(|p| p.by_name(&config.name))
            .map(AsRef::as_ref);
        let metrics = match before.filter(|b| b.config.auth == config.auth) {
            Some(b) => b.metrics.clone(),
            None => ServiceMetrics::new(ctx.metrics, &config.name, config.auth.as_str()),
        };
        let auth = service_auth(ctx, inputs, config, before, &metrics, &mut writes)?;
        services.push(Arc::new(Service::new(
            config.clone(),
            auth,
            metrics,
            ctx.metrics,
            before,
            ctx.dialer,
        )?));
    }
    services.sort_by_key(|s| std::cmp::Reverse(s.config.route.len()));
    let identity = identity(ctx, inputs)?;
    Ok(Candidate {
        state: RuntimeState {
            services,
            cert: inputs.cert.clone(),
            tls: listener_tls(ctx, &inputs.config)?,
            admin_tls: admin_listener_tls(ctx, &inputs.config)?,
            identity,
            assignments: Arc::clone(&inputs.assignments),
            admin,
            compute_type: Arc::from(inputs.config.server.compute_type.as_str()),
            redaction: inputs
                .config
                .telemetry
                .redact_query_params
                .clone()
                .map_or_else(Redaction::default, Redaction::new),
            // Decided once per process: a replica keeps its name across reloads. In fleet mode
            // it is `[cluster] instance`, the name its registration and activity carry.
            role_instance: ctx.previous.map_or_else(
                || {
                    let configured = inputs.config.cluster.etcd().map(|e| e.instance.as_str());
                    Arc::from(crate::telemetry::role::instance(configured))
                },
                |p| Arc::clone(&p.role_instance),
            ),
            config: Arc::clone(&inputs.config),
            generation: ctx.previous.map_or(1, |p| p.generation + 1),
        },
        writes,
    })
}

fn admin_credentials(
    inputs: &Inputs,
    writes: &mut Vec<PendingWrite>,
) -> Result<AdminCredentials, BuildError> {
    let (file, current) = &inputs.admin;
    if let Some(c) = current {
        return Ok(c.clone());
    }
    let (credentials, bytes) = file.generate().map_err(BuildError::Admin)?;
    writes.push(PendingWrite {
        path: file.path.clone(),
        shared: file.shared.clone(),
        bytes,
        generated: Generated::Admin {
            file: file.clone(),
            credentials: credentials.clone(),
        },
    });
    Ok(credentials)
}

fn service_auth(
    ctx: &Context<'_>,
    inputs: &Inputs,
    config: &ServiceConfig,
    before: Option<&Service>,
    metrics: &ServiceMetrics,
    writes: &mut Vec<PendingWrite>,
) -> Result<ServiceAuth, BuildError> {
    let name = &config.name;
    match config.auth {
        AuthMode::None => Ok(ServiceAuth::None),
        AuthMode::Key => {
            let (file, state) = inputs
                .keys
                .get(name)
                .ok_or_else(|| BuildError::NotLoaded(name.clone()))?;
            let keys_err = |source| BuildError::Keys {
                service: name.clone(),
                source,
            };
            let set = match state.keys() {
                Some(set) => match file.conversion(set) {
                    None => Arc::clone(set),
                    Some((hashed, bytes)) => {
                        tracing::info!(file = %file.path().display(), "converting stored keys to hashed storage");
                        pending_keys(writes, name, file, hashed, bytes)
                    }
                },
                None => {
                    let (set, bytes) = file.generate().map_err(keys_err)?;
                    tracing::info!(file = %file.path().display(), "generating primary and secondary keys");
                    pending_keys(writes, name, file, set, bytes)
                }
            };
            Ok(ServiceAuth::Key(set))
        }
        AuthMode::Token => token_authority(ctx, inputs, config, before, metrics, writes)
            .map(|t| ServiceAuth::Token(Arc::new(t))),
    }
}

/// Queues a key file write and returns the set it holds.
fn pending_keys(
    writes: &mut Vec<PendingWrite>,
    service: &str,
    file: &KeyFile,
    set: KeySet,
    bytes: Zeroizing<Vec<u8>>,
) -> Arc<KeySet> {
    let shared = Arc::new(set);
    let state = KeyFileState::written(Arc::clone(&shared), &bytes, "scoregate");
    writes.push(PendingWrite {
        path: file.path().to_owned(),
        shared: file.shared.clone(),
        bytes,
        generated: Generated::Keys {
            service: service.to_owned(),
            file: file.clone(),
            state,
        },
    });
    shared
}

/// A token service without a signing key yet: one is generated, and written only if the
/// candidate is accepted (`writes`).
fn first_signing_key(
    name: &str,
    file: &SigningFile,
    token: &crate::config::TokenConfig,
    writes: &mut Vec<PendingWrite>,
) -> Result<Arc<crate::auth::jwt::signing::SigningSet>, BuildError> {
    let (set, bytes) = file.generate().map_err(|source| BuildError::Signing {
        service: name.to_owned(),
        source,
    })?;
    tracing::info!(file = %file.path().display(), algorithm = ?token.algorithm, "generating a token signing key");
    let shared = Arc::new(set);
    let state = SigningFileState::written(Arc::clone(&shared), &bytes, "scoregate");
    writes.push(PendingWrite {
        path: file.path().to_owned(),
        shared: file.shared.clone(),
        bytes,
        generated: Generated::Signing {
            service: name.to_owned(),
            file: file.clone(),
            state,
        },
    });
    Ok(shared)
}

fn token_authority(
    ctx: &Context<'_>,
    inputs: &Inputs,
    config: &ServiceConfig,
    before: Option<&Service>,
    service_metrics: &ServiceMetrics,
    writes: &mut Vec<PendingWrite>,
) -> Result<TokenAuthority, BuildError> {
    let name = &config.name;
    let token = config
        .token
        .as_ref()
        .ok_or_else(|| BuildError::NotLoaded(name.clone()))?;
    let (file, state) = inputs
        .signing
        .get(name)
        .ok_or_else(|| BuildError::NotLoaded(name.clone()))?;
    let signing = match state.set() {
        Some(set) => Arc::clone(set),
        None => first_signing_key(name, file, token, writes)?,
    };
    let running = before
        .and_then(Service::tokens)
        .filter(|t| t.config == *token);
    let metrics = ctx.metrics;
    let mut trusted = Vec::with_capacity(token.trusted.len());
    for (index, t) in token.trusted.iter().enumerate() {
        let id = IssuerId {
            owner: name.clone(),
            index,
        };
        let reuse = before
            .and_then(Service::tokens)
            .and_then(|a| a.trusted.get(index))
            .filter(|k| k.issuer.config == *t);
        trusted.push(issuer_keys(ctx, inputs, &id, t, reuse, |issuer| {
            issuer.validation.leeway = token.leeway.as_secs();
            issuer.validation.validate_nbf = true;
            issuer.count_fetches(
                metrics
                    .jwks_fetches
                    .with_label_values(&[name, &t.issuer, "success"]),
                metrics
                    .jwks_fetches
                    .with_label_values(&[name, &t.issuer, "error"]),
            );
        })?);
    }
    let cache = running.map_or_else(
        || Arc::new(TokenCache::new(token.cache_entries)),
        |t| Arc::clone(&t.cache),
    );
    let authority = TokenAuthority::new(
        name,
        token.clone(),
        signing,
        trusted,
        cache,
        CacheCounters {
            hit: service_metrics.token_cache_hit.clone(),
            miss: service_metrics.token_cache_miss.clone(),
        },
    );
    // Entries vouched for by keys that left (a rotation retired, a JWKS dropped) go with them.
    if running.is_some_and(|r| !Arc::ptr_eq(&r.signing, &authority.signing)) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        authority.cache.retain_kids(&authority.live_kids(now));
    }
    Ok(authority)
}

/// A trusted issuer with its keys: the running issuer when its settings are unchanged, else a new
/// one (`setup` adjusts its validation and counters).
fn issuer_keys(
    ctx: &Context<'_>,
    inputs: &Inputs,
    id: &IssuerId,
    config: &TrustedIssuer,
    running: Option<&IssuerKeys>,
    setup: impl FnOnce(&mut Issuer),
) -> Result<IssuerKeys, BuildError> {
    let err = |source| BuildError::Jwks {
        owner: id.owner.clone(),
        index: id.index,
        source,
    };
    let issuer = match running {
        Some(r) => Arc::clone(&r.issuer),
        None => {
            let mut issuer =
                Issuer::new(id.clone(), config.clone(), ctx.fetched.clone()).map_err(err)?;
            setup(&mut issuer);
            Arc::new(issuer)
        }
    };
    let keys = match &config.keys {
        TrustedKeys::Pem(_) => match running {
            Some(r) => Arc::clone(&r.keys),
            None => Arc::new(issuer.initial_keys().map_err(err)?),
        },
        TrustedKeys::JwksFile(_) | TrustedKeys::JwksUrl { .. } => inputs
            .jwks
            .get(id)
            .cloned()
            .or_else(|| running.map(|r| Arc::clone(&r.keys)))
            .unwrap_or_default(),
    };
    Ok(IssuerKeys { issuer, keys })
}

fn identity(ctx: &Context<'_>, inputs: &Inputs) -> Result<Option<Identity>, BuildError> {
    let Some(config) = &inputs.config.identity else {
        return Ok(None);
    };
    let id = IssuerId::identity();
    let running = ctx
        .previous
        .and_then(|p| p.identity.as_ref())
        .filter(|i| i.config == *config)
        .map(|i| &i.issuer);
    let metrics = ctx.metrics;
    let issuer = issuer_keys(ctx, inputs, &id, &config.issuer, running, |issuer| {
        Identity::adjust(issuer, config);
        issuer.count_fetches(
            metrics
                .jwks_fetches
                .with_label_values(&["admin", &config.issuer.issuer, "success"]),
            metrics
                .jwks_fetches
                .with_label_values(&["admin", &config.issuer.issuer, "error"]),
        );
    })?;
    Ok(Some(Identity {
        config: config.clone(),
        issuer,
    }))
}

/// The scoring listener's TLS settings: the running ones while the client CA is unchanged (new
/// certificates reach handshakes through the resolver), else new ones.
fn listener_tls(
    ctx: &Context<'_>,
    config: &Config,
) -> Result<Option<Arc<rustls::ServerConfig>>, BuildError> {
    let Some(tls) = &config.server.tls else {
        return Ok(None);
    };
    let client_ca = tls.client_ca.as_ref().map(|(_, certs)| certs.clone());
    if let Some(previous) = ctx.previous
        && let (Some(running), Some(before)) = (&previous.tls, &previous.config.server.tls)
        && before.client_ca.as_ref().map(|(_, c)| c) == client_ca.as_ref()
    {
        return Ok(Some(Arc::clone(running)));
    }
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> = Arc::clone(ctx.resolver) as _;
    crate::tls::server_config(resolver, client_ca)
        .map(|c| Some(Arc::new(c)))
        .map_err(BuildError::Tls)
}

/// The admin listener's TLS settings: the running ones while the certificate chain and the
/// client CA are unchanged (so session tickets stay valid), else new ones.
fn admin_listener_tls(
    ctx: &Context<'_>,
    config: &Config,
) -> Result<Option<Arc<rustls::ServerConfig>>, BuildError> {
    let Some(tls) = &config.server.admin_tls else {
        return Ok(None);
    };
    let client_ca = tls.client_ca.as_ref().map(|(_, certs)| certs.clone());
    if let Some(previous) = ctx.previous
        && let (Some(running), Some(before)) =
            (&previous.admin_tls, &previous.config.server.admin_tls)
        && before.certified_key.cert == tls.certified_key.cert
        && before.client_ca.as_ref().map(|(_, c)| c) == client_ca.as_ref()
    {
        return Ok(Some(Arc::clone(running)));
    }
    crate::tls::admin_server_config(tls.certified_key.clone(), client_ca)
        .map(|c| Some(Arc::new(c)))
        .map_err(BuildError::Tls)
}

#[cfg(test)]
mod tests;
