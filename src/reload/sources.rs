//! Every source of the runtime state, as one cloneable set: the config file, and what the
//! configuration points at (the certificate pair, key files, signing-key files, JWKS files and
//! fetched JWKS documents), plus the state directory's role assignments and admin credential.
//!
//! The reload loop polls a copy of this set, builds a state from it and keeps the copy only when
//! that state is published, so a refused candidate changes no source (and writes no file).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::files::{CertPair, ConfigFile};
use crate::auth::admin::CredentialFile;
use crate::auth::jwt::TokenAuthority;
use crate::auth::jwt::signing::SigningFile;
use crate::auth::jwt::trusted::{IssuerId, JwksFile, KeyMap};
use crate::auth::keys::KeyFile;
use crate::cluster::Cluster;
use crate::config::{AuthMode, Config, KeySource, SigningSource, TrustedIssuer, TrustedKeys};
use crate::runtime::BuildError;
use crate::runtime::assignments::AssignmentFile;
use crate::runtime::build::{Generated, Inputs};
use crate::source::{Change, Source, Watched};

/// The sources of one candidate state.
#[derive(Debug, Clone)]
pub struct Sources {
    pub config: Watched<ConfigFile>,
    pub cert: Option<Watched<CertPair>>,
    pub keys: BTreeMap<String, Watched<KeyFile>>,
    pub signing: BTreeMap<String, Watched<SigningFile>>,
    pub jwks_files: BTreeMap<IssuerId, Watched<JwksFile>>,
    /// Key sets fetched from JWKS URLs, with the issuer settings they were fetched for.
    pub fetched: BTreeMap<IssuerId, (TrustedIssuer, Arc<KeyMap>)>,
    pub assignments: Watched<AssignmentFile>,
    pub admin: Watched<CredentialFile>,
    /// Fleet mode: state-directory sources are bound to etcd keys instead of files.
    pub cluster: Option<Arc<Cluster>>,
}

/// A change a poll found in a source other than the config file, for logs, metrics and the
/// activity log. Errors are their display text (the last good value stays in force).
#[derive(Debug)]
pub enum Event {
    Cert(Result<(), String>),
    /// `Ok` names who wrote the file, if it says.
    Keys {
        service: String,
        result: Result<Option<String>, String>,
    },
    Signing {
        service: String,
        result: Result<Option<String>, String>,
    },
    Jwks {
        id: IssuerId,
        result: Result<usize, String>,
    },
    Assignments(Result<usize, String>),
    Admin(Result<(), String>),
}

impl Event {
    /// Whether a new value is in place.
    pub fn applied(&self) -> bool {
        match self {
            Self::Cert(r) | Self::Admin(r) => r.is_ok(),
            Self::Keys { result, .. } | Self::Signing { result, .. } => result.is_ok(),
            Self::Jwks { result, .. } => result.is_ok(),
            Self::Assignments(r) => r.is_ok(),
        }
    }
}

/// Polls `w`, turning what it found into an event.
fn poll<S: Source>(
    w: &mut Watched<S>,
    events: &mut Vec<Event>,
    event: impl FnOnce(Result<&S::Value, String>) -> Event,
) {
    match w.poll() {
        Change::None => {}
        Change::Applied => events.push(event(Ok(w.value()))),
        Change::Rejected(e) => events.push(event(Err(e.to_string()))),
    }
}

impl Sources {
    /// The sources of the configuration the gateway starts with; every one is read now.
    pub fn open(config: Config, cluster: Option<Arc<Cluster>>) -> Result<Self, BuildError> {
        let state_dir = config.server.state_dir.clone();
        let mut admin_file = CredentialFile::of(&config.server);
        let mut assignment_file = AssignmentFile::new(&state_dir);
        if let Some(c) = &cluster {
            // An operator's admin_token_file stays per replica (delivered like the config).
            if !admin_file.provided {
                admin_file.shared = Some(c.shared("admin"));
            }
            assignment_file.shared = Some(c.shared("assignments/"));
        }
        let seen = vec![config.fingerprints.config];
        let mut sources = Self {
            config: Watched::with_value(
                ConfigFile {
                    path: config.source.clone(),
                },
                seen,
                config,
            ),
            cert: None,
            keys: BTreeMap::new(),
            signing: BTreeMap::new(),
            jwks_files: BTreeMap::new(),
            fetched: BTreeMap::new(),
            assignments: Watched::open(assignment_file).map_err(BuildError::Assignments)?,
            admin: Watched::open(admin_file).map_err(BuildError::Admin)?,
            cluster,
        };
        let config = Arc::clone(sources.config.value());
        sources.follow(&config)?;
        Ok(sources)
    }

    /// Makes the configuration-derived sources those of `config`: unchanged ones are kept (with
    /// their last good values), new ones are read now. A new source that cannot be read makes
    /// `config` unusable.
    pub fn follow(&mut self, config: &Config) -> Result<(), BuildError> {
        self.cert = config.server.tls.as_ref().map(|t| {
            // Read together with the configuration, at the version recorded just before.
            Watched::with_value(
                CertPair {
                    cert: t.cert_path.clone(),
                    key: t.key_path.clone(),
                },
                vec![config.fingerprints.cert, config.fingerprints.key],
                t.certified_key.clone(),
            )
        });
        let mut keys = BTreeMap::new();
        let mut signing = BTreeMap::new();
        for s in &config.services {
            if let (AuthMode::Key, Some(source)) = (s.auth, &s.keys) {
                let mut file = KeyFile::new(source.clone());
                if let (Some(c), KeySource::State { .. }) = (&self.cluster, source) {
                    file = file.shared(c.shared(&format!("keys/{}", s.name)));
                }
                let watched = reuse_or_open(self.keys.remove(&s.name), file).map_err(|source| {
                    BuildError::Keys {
                        service: s.name.clone(),
                        source,
                    }
                })?;
                keys.insert(s.name.clone(), watched);
            }
            if let Some(token) = &s.token {
                let mut file = SigningFile::new(
                    token.signing.clone(),
                    token.algorithm,
                    TokenAuthority::overlap(token),
                );
                if let (Some(c), SigningSource::State { .. }) = (&self.cluster, &token.signing) {
                    file = file.shared(c.shared(&format!("signing/{}", s.name)));
                }
                let watched =
                    reuse_or_open(self.signing.remove(&s.name), file).map_err(|source| {
                        BuildError::Signing {
                            service: s.name.clone(),
                            source,
                        }
                    })?;
                signing.insert(s.name.clone(), watched);
            }
        }
        self.keys = keys;
        self.signing = signing;
        self.follow_issuers(config)
    }

    /// JWKS files are opened (or kept); fetched key sets are kept for issuers whose settings are
    /// unchanged.
    fn follow_issuers(&mut self, config: &Config) -> Result<(), BuildError> {
        let mut files = BTreeMap::new();
        let mut fetched = BTreeMap::new();
        for (id, issuer) in issuers(config) {
            match &issuer.keys {
                TrustedKeys::JwksFile(path) => {
                    let file = JwksFile {
                        path: path.clone(),
                        algorithm: issuer.algorithm,
                    };
                    let watched =
                        reuse_or_open(self.jwks_files.remove(&id), file).map_err(|source| {
                            BuildError::Jwks {
                                owner: id.owner.clone(),
                                index: id.index,
                                source,
                            }
                        })?;
                    files.insert(id, watched);
                }
                TrustedKeys::JwksUrl { .. } => {
                    if let Some(kept) = self.fetched.remove(&id).filter(|(c, _)| c == issuer) {
                        fetched.insert(id, kept);
                    }
                }
                TrustedKeys::Pem(_) => {}
            }
        }
        self.jwks_files = files;
        self.fetched = fetched;
        Ok(())
    }

    /// Polls every source but the config file.
    pub fn poll_all(&mut self, events: &mut Vec<Event>) {
        if let Some(cert) = &mut self.cert {
            poll(cert, events, |r| Event::Cert(r.map(drop)));
        }
        for (name, w) in &mut self.keys {
            poll(w, events, |r| Event::Keys {
                service: name.clone(),
                result: r.map(|state| match state {
                    crate::auth::keys::KeyFileState::Loaded(l) => l.updated_by.clone(),
                    crate::auth::keys::KeyFileState::Absent => None,
                }),
            });
        }
        for (name, w) in &mut self.signing {
            poll(w, events, |r| Event::Signing {
                service: name.clone(),
                result: r.map(|state| match state {
                    crate::auth::jwt::signing::SigningFileState::Loaded(l) => l.updated_by.clone(),
                    crate::auth::jwt::signing::SigningFileState::Absent => None,
                }),
            });
        }
        for (id, w) in &mut self.jwks_files {
            poll(w, events, |r| Event::Jwks {
                id: id.clone(),
                result: r.map(std::collections::HashMap::len),
            });
        }
        poll(&mut self.assignments, events, |r| {
            Event::Assignments(r.map(Vec::len))
        });
        poll(&mut self.admin, events, |r| Event::Admin(r.map(drop)));
    }

    /// Takes a key set fetched from a JWKS URL, if the issuer still exists with those settings.
    pub fn fetched(&mut self, id: IssuerId, keys: Arc<KeyMap>) -> bool {
        let config = Arc::clone(self.config.value());
        let Some((_, issuer)) = issuers(&config).find(|(i, _)| *i == id) else {
            return false;
        };
        self.fetched.insert(id, (issuer.clone(), keys));
        true
    }

    /// Drops signing keys retired at `now` from the values in force (their files are tidied at
    /// the next rotation). True when some were dropped.
    pub fn prune(&mut self, now: u64) -> bool {
        let mut pruned = false;
        for w in self.signing.values_mut() {
            if let Some(state) = w.value().pruned(now) {
                let seen = w.seen().clone();
                w.replace(seen, state);
                pruned = true;
            }
        }
        pruned
    }

    /// What the builder reads.
    pub fn inputs(&self) -> Inputs {
        let mut jwks: BTreeMap<IssuerId, Arc<KeyMap>> = self
            .jwks_files
            .iter()
            .map(|(id, w)| (id.clone(), Arc::clone(w.value())))
            .collect();
        for (id, (_, keys)) in &self.fetched {
            jwks.insert(id.clone(), Arc::clone(keys));
        }
        Inputs {
            config: Arc::clone(self.config.value()),
            cert: self.cert.as_ref().map(|w| Arc::clone(w.value())),
            keys: self
                .keys
                .iter()
                .map(|(n, w)| (n.clone(), (w.source().clone(), Arc::clone(w.value()))))
                .collect(),
            signing: self
                .signing
                .iter()
                .map(|(n, w)| (n.clone(), (w.source().clone(), Arc::clone(w.value()))))
                .collect(),
            jwks,
            assignments: Arc::clone(self.assignments.value()),
            admin: (
                self.admin.source().clone(),
                self.admin.value().as_ref().clone(),
            ),
        }
    }

    /// Takes a value the builder generated and that has just been written: the source now holds
    /// it at the version written.
    pub fn adopt(&mut self, generated: Generated) {
        match generated {
            Generated::Keys { service, state, .. } => {
                if let Some(w) = self.keys.get_mut(&service) {
                    let seen = w.source().observe();
                    w.replace(seen, state);
                }
            }
            Generated::Signing { service, state, .. } => {
                if let Some(w) = self.signing.get_mut(&service) {
                    let seen = w.source().observe();
                    w.replace(seen, state);
                }
            }
            Generated::Admin { credentials, .. } => {
                let seen = self.admin.source().observe();
                self.admin.replace(seen, Some(credentials));
            }
        }
    }
}

/// The running source if it reads the same thing, else the new source, read now.
fn reuse_or_open<S: Source + PartialEq>(
    running: Option<Watched<S>>,
    wanted: S,
) -> Result<Watched<S>, S::Error> {
    match running {
        Some(w) if *w.source() == wanted => Ok(w),
        _ => Watched::open(wanted),
    }
}

/// Every trusted issuer of a configuration, with its id.
fn issuers(config: &Config) -> impl Iterator<Item = (IssuerId, &TrustedIssuer)> {
    let admin = config
        .identity
        .iter()
        .map(|i| (IssuerId::identity(), &i.issuer));
    let services = config.services.iter().flat_map(|s| {
        s.token.iter().flat_map(move |t| {
            t.trusted.iter().enumerate().map(move |(index, issuer)| {
                (
                    IssuerId {
                        owner: s.name.clone(),
                        index,
                    },
                    issuer,
                )
            })
        })
    });
    admin.chain(services)
}
