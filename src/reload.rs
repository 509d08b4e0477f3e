//! The one reload mechanism: every source of the runtime state goes observe → fingerprint →
//! parse → validate, the builder makes a complete candidate state, and the [`Applier`] publishes
//! it with one swap, or keeps the running state and the last good value of every source.
//!
//! Sources (`sources`): the config file; the certificate pair, key files, signing-key files and
//! JWKS files it points at; key sets fetched from JWKS URLs; the role assignments and the
//! bootstrap admin credential in the state directory. Triggers: the watch loop's poll every
//! 500 ms (`watch`), SIGHUP and `POST /reload` (which re-read the config file even when it looks
//! unchanged), fetched JWKS documents, retired signing keys, and management writes.
//!
//! One cycle, serialised by the applier's lock:
//! 1. poll a *copy* of every source but the config file (a bad new file keeps its last good value
//!    and is reported once);
//! 2. poll (or, for a reload, re-read) the config file; a new config brings its own certificate
//!    pair and the key, signing and JWKS sources it names;
//! 3. build the candidate; if the new config is what fails, build again with the old one, so a
//!    certificate or key change in the same poll still applies;
//! 4. write what the builder generated (first keys, first signing key, the admin credential);
//!    only now does anything reach the disk;
//! 5. publish the state, keep the copied sources, and report every change (logs, metrics, the
//!    activity log).
//!
//! A management write (`regenerateKeys`, `rotateSigningKey`, role assignments) never changes the
//! state directly: under the same lock it writes the source file and runs a cycle, so the change
//! arrives through the same observe path as an operator's edit, and the call answers once it is
//! applied. Settings that need a restart (listen addresses, `worker_threads`, `state_dir`, the
//! telemetry output) are compared with the configuration the process started with; a reload that
//! changes them applies everything else and warns about those.

mod files;
mod report;
mod sources;
mod writes;

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::auth::jwt::trusted::{Fetched, FetchedTx};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{self, Config};
use crate::runtime::build::{self, Candidate, Context, Generated, PendingWrite};
use crate::runtime::{BuildError, RuntimeState, StateCell, StateCert};
use crate::source::Change;
use crate::telemetry::activity::ActivityLog;
use crate::telemetry::metrics::Metrics;
use sources::{Event, Sources};

pub use writes::WriteError;

/// What a successful configuration reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadSummary {
    pub services: usize,
    /// Changed settings that only a restart applies.
    #[serde(rename = "restartRequired")]
    pub restart_required: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("writing generated state failed: {0}")]
    Write(String),
    #[error("writing generated state to etcd failed: {0}")]
    Cluster(#[source] ClusterError),
    #[error("reload task failed")]
    Task,
}

impl ReloadError {
    /// One line for the activity log: every configuration problem, or the error.
    fn summary(&self) -> String {
        match self {
            Self::Config(c) => {
                format!("{} problem(s): {}", c.issues().len(), c.issues().join("; "))
            }
            other => other.to_string(),
        }
    }
}

/// Why a cycle runs.
#[derive(Debug)]
pub enum Trigger {
    /// The watch loop's periodic look at every source.
    Poll,
    /// The etcd watch changed the replica's copy of its namespace (fleet mode).
    Cluster,
    /// SIGHUP or `POST /reload`: the config file is re-read even if it looks unchanged.
    Reload {
        initiator: String,
        /// The caller's address and request id, for an API reload.
        source: Option<(std::net::IpAddr, String)>,
    },
    /// A JWKS URL was fetched.
    Fetched(Fetched),
    /// Signing keys may have retired (unix seconds now).
    Prune(u64),
    /// A management write just wrote this source; its change is the write's own and is not
    /// reported as an outside edit.
    OwnWrite(Own),
}

/// The source a management write wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Own {
    Keys(String),
    Signing(String),
    Assignments,
}

/// Builds and publishes every runtime state; see the module docs. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Applier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Serialises cycles (held across the blocking part).
    serial: tokio::sync::Mutex<()>,
    sources: Mutex<Sources>,
    /// The configuration the process started with: what restart-only settings really are.
    startup: Arc<Config>,
    cell: StateCell,
    metrics: Arc<Metrics>,
    activity: Arc<ActivityLog>,
    health_wake: Arc<tokio::sync::Notify>,
    fetched_tx: FetchedTx,
    fetched_rx: Mutex<Option<UnboundedReceiver<Fetched>>>,
    dialer: Option<crate::upstream::Dialer>,
    /// Fleet mode: the namespace's copy the shared sources read, and where "applied" is told.
    cluster: Option<Arc<Cluster>>,
}

/// Where the applier reports and whom it wakes.
#[derive(Debug)]
pub struct Handles {
    pub metrics: Arc<Metrics>,
    pub activity: Arc<ActivityLog>,
    /// Woken after every published state (the health prober probes new services at once).
    pub health_wake: Arc<tokio::sync::Notify>,
    /// Fleet mode's link to etcd (`None`: local backend).
    pub cluster: Option<Arc<Cluster>>,
    /// Opens upstream connections instead of the network (`None`: the network; see
    /// `upstream::Dialer`).
    pub dialer: Option<crate::upstream::Dialer>,
}

impl Applier {
    /// Reads every source of `config`, builds the first state, writes what it generated and
    /// publishes the state in a new cell (blocking: run it off the async workers).
    ///
    /// In fleet mode, values the builder generates are created in etcd only if absent; when
    /// another replica created one first, the namespace is read again and the state rebuilt
    /// with its values (so replicas started together agree).
    pub fn start(config: Config, handles: Handles) -> Result<(Self, StateCell), ReloadError> {
        const ATTEMPTS: usize = 5;
        let startup = Arc::new(config);
        let (fetched_tx, fetched_rx) = tokio::sync::mpsc::unbounded_channel();
        let resolver = Arc::new(StateCert::default());
        let ctx = Context {
            metrics: &handles.metrics,
            resolver: &resolver,
            fetched: &fetched_tx,
            previous: None,
            dialer: handles.dialer.as_ref(),
        };
        let mut attempt = 0;
        let (sources, state, revision) = loop {
            attempt += 1;
            let revision = handles.cluster.as_ref().map(|c| c.mirror.revision());
            let mut sources = Sources::open(startup.as_ref().clone(), handles.cluster.clone())?;
            let Candidate { state, writes } = build::build(&ctx, &sources.inputs())?;
            match commit_writes(&mut sources, writes) {
                Ok(()) => break (sources, state, revision),
                Err(ReloadError::Cluster(e)) if attempt < ATTEMPTS && !e.is_unavailable() => {
                    tracing::info!(error = %e, "another replica created shared state first; adopting it");
                    if let Some(cluster) = &handles.cluster {
                        resync(cluster).map_err(ReloadError::Cluster)?;
                    }
                }
                Err(e) => return Err(e),
            }
        };
        if let (Some(cluster), Some(revision)) = (&handles.cluster, revision) {
            cluster.set_applied(revision);
        }
        let cell = StateCell::new(state, resolver);
        handles.activity.bind(cell.clone());
        let inner = Inner {
            serial: tokio::sync::Mutex::new(()),
            sources: Mutex::new(sources),
            startup,
            cell: cell.clone(),
            metrics: handles.metrics,
            activity: handles.activity,
            health_wake: handles.health_wake,
            fetched_tx,
            fetched_rx: Mutex::new(Some(fetched_rx)),
            dialer: handles.dialer,
            cluster: handles.cluster,
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            cell,
        ))
    }

    /// The receiver of fetched JWKS documents (taken once, by the watch loop).
    pub fn take_fetched(&self) -> Option<UnboundedReceiver<Fetched>> {
        self.inner
            .fetched_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The configuration the process started with.
    pub fn startup_config(&self) -> &Arc<Config> {
        &self.inner.startup
    }

    /// Fleet mode's link to etcd (`None`: local backend).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.inner.cluster.as_ref()
    }

    /// Runs one cycle for `trigger`; returns the configuration's outcome when the config file
    /// was read (changed, or reloaded on request).
    pub async fn run(&self, trigger: Trigger) -> Option<Result<ReloadSummary, ReloadError>> {
        let _serial = self.inner.serial.lock().await;
        let inner = Arc::clone(&self.inner);
        // Reading files, parsing certificates, generating keys and fsync block.
        tokio::task::spawn_blocking(move || {
            let mut sources = inner.sources.lock().unwrap_or_else(PoisonError::into_inner);
            inner.cycle(&mut sources, &trigger)
        })
        .await
        .unwrap_or(Some(Err(ReloadError::Task)))
    }

    /// Re-reads the configuration (SIGHUP, `POST /reload`): the outcome of that reload.
    pub async fn reload(
        &self,
        initiator: &str,
        source: Option<(std::net::IpAddr, String)>,
    ) -> Result<ReloadSummary, ReloadError> {
        let trigger = Trigger::Reload {
            initiator: initiator.to_owned(),
            source,
        };
        self.run(trigger).await.unwrap_or(Err(ReloadError::Task))
    }
}

impl Inner {
    /// One cycle over `sources` (see the module docs). Blocking; called with the lock held.
    fn cycle(
        &self,
        sources: &mut Sources,
        trigger: &Trigger,
    ) -> Option<Result<ReloadSummary, ReloadError>> {
        // What the shared sources are about to read: once this cycle is over, the published
        // state reflects (at least) this revision of the namespace.
        let revision = self.cluster.as_ref().map(|c| c.mirror.revision());
        let outcome = self.cycle_inner(sources, trigger);
        if let (Some(cluster), Some(revision)) = (&self.cluster, revision) {
            cluster.set_applied(revision);
        }
        outcome
    }

    fn cycle_inner(
        &self,
        sources: &mut Sources,
        trigger: &Trigger,
    ) -> Option<Result<ReloadSummary, ReloadError>> {
        let mut work = sources.clone();
        let mut events = Vec::new();
        work.poll_all(&mut events);
        let mut changed = events.iter().any(Event::applied);
        changed |= match trigger {
            Trigger::Fetched(f) => work.fetched(f.id.clone(), Arc::clone(&f.keys)),
            Trigger::Prune(now) => work.prune(*now),
            Trigger::Poll | Trigger::Cluster | Trigger::Reload { .. } | Trigger::OwnWrite(_) => {
                false
            }
        };
        let mut fallback = work.clone();
        let config_change = match trigger {
            Trigger::Reload { .. } => Some(work.config.reload()),
            _ => match work.config.poll() {
                Change::None => None,
                other => Some(other),
            },
        };
        fallback.config.mark_seen(work.config.seen().clone());
        let mut config_result = match config_change {
            Some(Change::Applied) => {
                let config = Arc::clone(work.config.value());
                Some(work.follow(&config).map_err(ReloadError::from))
            }
            Some(Change::Rejected(e)) => Some(Err(ReloadError::Config(e))),
            Some(Change::None) | None => None,
        };
        if matches!(config_result, Some(Err(_))) {
            work = fallback.clone();
        }
        let config_applied = matches!(config_result, Some(Ok(())));
        let mut outcome = None;
        if changed || config_applied {
            match self.build_and_publish(work, fallback, config_applied) {
                Ok((published, config_error)) => {
                    *sources = published;
                    if let Some(e) = config_error {
                        config_result = Some(Err(e));
                    }
                }
                Err(e) => {
                    // Nothing was published; sources stay as they were (and are re-read).
                    tracing::error!(error = %e, "building the runtime state failed; the running state stays");
                    config_result = Some(Err(e));
                }
            }
        } else {
            // Keep the versions seen (rejected files are not re-read until they change).
            *sources = work;
        }
        let out = report::Out {
            metrics: &self.metrics,
            activity: &self.activity,
        };
        if let Some(result) = config_result {
            let result = result.map(|()| self.summary(&self.cell.load()));
            report::config(&out, trigger, &result);
            outcome = Some(result);
        }
        report::events(&out, trigger, &events);
        outcome
    }

    /// Builds from `work`, falling back to `fallback` (the old config with every other change)
    /// when the new config is what fails; writes what the builder generated; publishes. Returns
    /// the sources of the published state and the config's error if it fell back.
    fn build_and_publish(
        &self,
        work: Sources,
        fallback: Sources,
        config_applied: bool,
    ) -> Result<(Sources, Option<ReloadError>), ReloadError> {
        let previous = self.cell.load_full();
        let ctx = Context {
            metrics: &self.metrics,
            resolver: self.cell.resolver(),
            fetched: &self.fetched_tx,
            previous: Some(&previous),
            dialer: self.dialer.as_ref(),
        };
        let (mut work, candidate, config_error) = match build::build(&ctx, &work.inputs()) {
            Ok(c) => (work, c, None),
            Err(e) if config_applied => {
                let c = build::build(&ctx, &fallback.inputs())?;
                (fallback, c, Some(ReloadError::Build(e)))
            }
            Err(e) => return Err(e.into()),
        };
        commit_writes(&mut work, candidate.writes)?;
        self.publish(candidate.state);
        Ok((work, config_error))
    }

    /// Publishes `state` and brings shared parts (concurrency limits, the health prober) to it.
    fn publish(&self, state: RuntimeState) {
        for service in state.services() {
            service.apply_limit();
        }
        self.cell.publish(state);
        self.health_wake.notify_one();
    }

    fn summary(&self, state: &RuntimeState) -> ReloadSummary {
        ReloadSummary {
            services: state.config.services.len(),
            restart_required: restart_only(&self.startup, &state.config),
        }
    }
}

/// Reads the whole namespace again (blocking; a first start that lost a create race).
fn resync(cluster: &Cluster) -> Result<(), ClusterError> {
    let prefix = cluster.state_prefix();
    let (kvs, revision) =
        tokio::runtime::Handle::current().block_on(cluster.client.get_prefix(&prefix))?;
    cluster.mirror.replace(kvs, revision);
    Ok(())
}

/// Writes what the builder generated, then lets the sources hold those values. On a failed
/// write, files created by this commit are removed again and nothing is published.
///
/// A value bound to etcd (fleet mode) is written there instead, only if it is still as it was
/// read (create-if-absent for a first value): when another replica wrote first, the commit
/// fails with [`ReloadError::Cluster`] and the winner's value arrives through the watch. The
/// admin credential is also written to this replica's file.
fn commit_writes(sources: &mut Sources, writes: Vec<PendingWrite>) -> Result<(), ReloadError> {
    let mut created = Vec::new();
    let mut adopted = Vec::with_capacity(writes.len());
    for w in writes {
        if let Some(shared) = &w.shared {
            shared
                .put_if_blocking(shared.mod_revision(), &w.bytes)
                .map_err(ReloadError::Cluster)?;
            if !matches!(w.generated, Generated::Admin { .. }) {
                adopted.push(w.generated);
                continue;
            }
        }
        let existed = w.path.exists();
        let written = match w.path.parent() {
            Some(dir) => crate::state::ensure_state_dir(dir),
            None => Ok(()),
        }
        .and_then(|()| crate::state::write_atomic(&w.path, &w.bytes, 0o600));
        if let Err(e) = written {
            for path in &created {
                let _ = std::fs::remove_file(path);
            }
            return Err(ReloadError::Write(format!("{}: {e}", w.path.display())));
        }
        if !existed {
            created.push(w.path.clone());
        }
        adopted.push(w.generated);
    }
    for generated in adopted {
        sources.adopt(generated);
    }
    Ok(())
}

/// Settings that cannot change live, by the key an operator would look for.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let mut changed = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("server.listen", o.listen != n.listen);
    check("server.admin_listen", o.admin_listen != n.admin_listen);
    check("server.probe_listen", o.probe_listen != n.probe_listen);
    check(
        "server.metrics_listen",
        o.metrics_listen != n.metrics_listen,
    );
    check("server.state_dir", o.state_dir != n.state_dir);
    check(
        "server.admin_token_file",
        o.admin_token_file != n.admin_token_file,
    );
    check("cluster", old.cluster != new.cluster);
    check(
        "server.worker_threads",
        o.worker_threads != n.worker_threads,
    );
    let (ot, nt) = (&old.telemetry, &new.telemetry);
    check(
        "telemetry output",
        (
            &ot.output,
            ot.queue_capacity,
            ot.queue_max_bytes,
            &ot.log_filter,
            ot.log_format,
        ) != (
            &nt.output,
            nt.queue_capacity,
            nt.queue_max_bytes,
            &nt.log_filter,
            nt.log_format,
        ),
    );
    changed
}
