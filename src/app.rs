//! The composition root: assembles a gateway from a validated configuration, bound listeners and
//! telemetry handles, runs it until the shutdown future resolves, and stops it in order.
//!
//! [`run`] takes its listeners and shutdown future as arguments (mini-redis' shape), so `main`
//! binds real ports and tests bind `127.0.0.1:0`. It builds the first runtime state
//! (`reload::Applier::start`, which also writes what a first start generates), starts the
//! background tasks (health probes, the reload loop, SIGHUP), serves the admin listener
//! (`admin::serve`) and the scoring listener (`server::serve`, which drains it), then stops the
//! background tasks.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::gateway::{Gateway, Parts};
use crate::reload::{Applier, Handles};
use crate::server::Drained;
use crate::telemetry::activity::ActivityLog;
use crate::telemetry::export::{self, Exporters, Flush};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::sink::RecordSink;
use crate::{admin, health, server, state, watch};

/// The two bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub scoring: TcpListener,
    pub admin: TcpListener,
    /// `server.probe_listen`: health and readiness only, no credential.
    pub probe: Option<TcpListener>,
    /// `server.metrics_listen`: `GET /metrics` only, no credential.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address of the configuration; an error names the listener's key and address.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let s = &config.server;
        Ok(Self {
            scoring: bind("server.listen", s.listen).await?,
            admin: bind("server.admin_listen", s.admin_listen).await?,
            probe: bind_optional("server.probe_listen", s.probe_listen).await?,
            metrics: bind_optional("server.metrics_listen", s.metrics_listen).await?,
        })
    }
}

async fn bind(key: &str, addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{key}: {}", crate::config::listen_error(addr, &e)),
        )
    })
}

async fn bind_optional(
    key: &str,
    addr: Option<std::net::SocketAddr>,
) -> std::io::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => bind(key, addr).await.map(Some),
        None => Ok(None),
    }
}

/// Telemetry handles owned by the caller (so tests can read their own registry and records).
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub records: RecordSink,
}

/// Runs the gateway until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Drained> {
    tokio::pin!(shutdown);
    let dir = &config.server.state_dir;
    state::ensure_state_dir(dir)
        .map_err(|e| anyhow::anyhow!("server.state_dir: cannot use {}: {e}", dir.display()))?;
    let credential = crate::auth::admin::CredentialFile::of(&config.server).path;
    let activity = Arc::new(ActivityLog::new(telemetry.records.clone()));
    let (exporters, flush_export) = start_export(&config, &telemetry.metrics)?;
    if !exporters.is_empty() {
        activity.export_to(exporters.clone());
    }
    let health_wake = Arc::new(tokio::sync::Notify::new());
    // Fleet mode: the namespace is read (or the local snapshot loaded) before the first state is
    // built from it.
    let cluster = match config.cluster.etcd() {
        Some(etcd) => {
            let mut answering = vec![&listeners.admin];
            answering.extend(listeners.probe.as_ref());
            let open = crate::cluster::unsynced::open_or_wait(
                etcd,
                &config.server.state_dir,
                telemetry.metrics.registry(),
                &answering,
            );
            // A replica still waiting for its first sync stops at once when asked to.
            tokio::select! {
                cluster = open => Some(cluster?),
                () = &mut shutdown => return Ok(Drained::Complete),
            }
        }
        None => None,
    };
    let handles = Handles {
        metrics: Arc::clone(&telemetry.metrics),
        activity: Arc::clone(&activity),
        health_wake: Arc::clone(&health_wake),
        cluster: cluster.clone(),
        dialer: None,
    };
    // Reading files and generating first keys block.
    let (applier, state) =
        tokio::task::spawn_blocking(move || Applier::start(config, handles)).await??;
    let gw = Arc::new(Gateway::new(Parts {
        state,
        applier,
        metrics: telemetry.metrics,
        records: telemetry.records,
        export: exporters,
        activity,
        health_wake,
    }));

    let health = tokio::spawn(health::probe_loop(Arc::clone(&gw)));
    let watcher = tokio::spawn(watch::watch_loop(Arc::clone(&gw)));
    let hangup = tokio::spawn(reload_on_sighup(Arc::clone(&gw)));
    let sync = cluster.map(|c| start_fleet_sync(&gw, c));
    announce(&gw, &listeners, &credential)?;
    let admin_tasks = spawn_admin_planes(&gw, listeners.admin, listeners.probe, listeners.metrics);
    let outcome = server::serve(Arc::clone(&gw), listeners.scoring, shutdown).await;
    gw.lifecycle.stop_background.cancel();
    for task in admin_tasks {
        let _ = task.await;
    }
    health.abort();
    hangup.abort();
    let _ = watcher.await;
    if let Some(sync) = sync {
        sync.await;
    }
    // Every request has finished (drained), so every span is queued.
    flush_export.run().await;
    Ok(outcome)
}

/// Fleet mode's background work: this replica's lease-bound registration, the namespace watch
/// that feeds the applier, and the fleet's audit trail. The future ends once the registration and
/// the watch have stopped (`stop_background`).
fn start_fleet_sync(
    gw: &Arc<Gateway>,
    cluster: Arc<crate::cluster::Cluster>,
) -> impl Future<Output = ()> + use<> {
    let stop = gw.lifecycle.stop_background.clone();
    let (trail_tx, trail_rx) = tokio::sync::mpsc::unbounded_channel();
    gw.activity.forward_writes(trail_tx);
    let trail = tokio::spawn(crate::cluster::trail::append(
        Arc::clone(&cluster),
        trail_rx,
    ));
    let registration = tokio::spawn(crate::cluster::sync::register(
        Arc::clone(&cluster),
        stop.clone(),
    ));
    let applier = gw.applier.clone();
    let apply = move || {
        let applier = applier.clone();
        async move {
            applier.run(crate::reload::Trigger::Cluster).await;
        }
    };
    let watch = tokio::spawn(crate::cluster::sync::run(cluster, apply, stop));
    async move {
        let _ = tokio::join!(registration, watch);
        // The trail's sender lives in the activity log (as long as the gateway).
        trail.abort();
    }
}

/// Says where the admin credential is, what listens where, and every configuration warning.
fn announce(
    gw: &Gateway,
    listeners: &Listeners,
    credential: &std::path::Path,
) -> std::io::Result<()> {
    tracing::info!(
        file = %credential.display(),
        "management API: the bootstrap admin credential is in this file"
    );
    tracing::info!(
        listen = %listeners.scoring.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        services = gw.state().services().len(),
        "scoregate listening"
    );
    for warning in gw.state().config.server.warnings() {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// Starts the configured exporters (`[telemetry.otlp]`, `[telemetry.azure_monitor]`); their
/// flush runs after the drain.
fn start_export(
    config: &Config,
    metrics: &crate::telemetry::metrics::Metrics,
) -> anyhow::Result<(Exporters, Flush)> {
    let configured = config.cluster.etcd().map(|e| e.instance.as_str());
    let instance = Arc::from(crate::telemetry::role::instance(configured));
    export::start(&config.telemetry, &instance, metrics)
        .map_err(|e| anyhow::anyhow!("telemetry export: {e}"))
}

/// Serves the admin listener and the optional probe and metrics listeners, each restricted to
/// its plane's routes, until background tasks stop.
fn spawn_admin_planes(
    gw: &Arc<Gateway>,
    admin_listener: TcpListener,
    probe: Option<TcpListener>,
    metrics: Option<TcpListener>,
) -> Vec<tokio::task::JoinHandle<()>> {
    [
        (Some(admin_listener), admin::Plane::Admin),
        (probe, admin::Plane::Probe),
        (metrics, admin::Plane::Metrics),
    ]
    .into_iter()
    .filter_map(|(listener, plane)| {
        let listener = listener?;
        if plane != admin::Plane::Admin {
            tracing::info!(?plane, addr = ?listener.local_addr().ok(), "listening");
        }
        let stop = gw.lifecycle.stop_background.clone();
        Some(tokio::spawn(admin::serve(
            listener,
            Arc::clone(gw),
            stop,
            plane,
        )))
    })
    .collect()
}

/// SIGHUP reloads the configuration (the conventional daemon signal).
async fn reload_on_sighup(gw: Arc<Gateway>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "cannot listen for SIGHUP; reload with POST /reload or by editing the config file"
        );
        return;
    };
    while hup.recv().await.is_some() {
        // The outcome is logged, counted and in the activity log.
        let _ = gw.applier.reload("signal", None).await;
    }
}
