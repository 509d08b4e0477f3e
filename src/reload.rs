//! Live reconfiguration: SIGHUP, `POST /reload`, or a change of the config file rebuilds the
//! runtime state from the file and swaps it in; certificate and key files are watched and swapped
//! the same way.
//!
//! A reload runs the same `config::load_and_validate` as startup, then builds the complete new
//! route table (sharing every unchanged part with the running one, see `runtime::Service::new`)
//! and only then stores it: requests that started keep the services they hold, the next request
//! sees the new table. Listeners are never rebound. On any failure the running state stays and
//! the reason is logged, counted (`scoregate_config_reloads_total{result="error"}`) and written
//! to the activity log. Settings that need a restart are listed in `config`'s module docs; a
//! reload that changes them applies everything else and warns about those.

use std::sync::Arc;

use crate::config::{self, Config, FileFingerprints};
use crate::runtime::{Gateway, Routes};
use crate::telemetry::activity::{ActivityRecord, Outcome};
use crate::tls;

/// What a successful reload did.
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
    Build(#[from] crate::runtime::BuildError),
    #[error("reload task failed")]
    Task,
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
    check("server.state_dir", o.state_dir != n.state_dir);
    check(
        "server.worker_threads",
        o.worker_threads != n.worker_threads,
    );
    check("server.tls (on/off)", o.tls.is_some() != n.tls.is_some());
    check(
        "server.tls.client_ca",
        o.tls.as_ref().map(|t| &t.client_ca) != n.tls.as_ref().map(|t| &t.client_ca),
    );
    check(
        "server.max_connections",
        o.max_connections != n.max_connections,
    );
    check(
        "server listener limits",
        (
            o.max_header_bytes,
            o.max_headers,
            o.http2_max_concurrent_streams,
        ) != (
            n.max_header_bytes,
            n.max_headers,
            n.http2_max_concurrent_streams,
        ) || (
            o.header_read_timeout,
            o.tls_handshake_timeout,
            o.idle_release,
        ) != (
            n.header_read_timeout,
            n.tls_handshake_timeout,
            n.idle_release,
        ),
    );
    check(
        "server.public_metrics",
        o.public_metrics != n.public_metrics,
    );
    check("server.compute_type", o.compute_type != n.compute_type);
    check(
        "telemetry",
        format!("{:?}", old.telemetry) != format!("{:?}", new.telemetry),
    );
    changed
}

/// Reloads the configuration file. `initiator` names who asked (a principal, `signal`,
/// `file-watch`) for the activity log.
pub async fn reload(
    gw: &Arc<Gateway>,
    initiator: &str,
    source: Option<(std::net::IpAddr, String)>,
) -> Result<ReloadSummary, ReloadError> {
    let _serial = gw.reload_lock.lock().await;
    let result = build(gw).await;
    let mut entry = match &result {
        Ok(_) => ActivityRecord::new("reloadConfig", initiator, Outcome::Succeeded),
        Err(e) => {
            ActivityRecord::new("reloadConfig", initiator, Outcome::Failed).reason(first_line(e))
        }
    };
    if let Some((ip, request_id)) = source {
        entry = entry.source(ip, request_id);
    }
    gw.activity.record(entry);
    match &result {
        Ok(summary) => {
            gw.metrics
                .config_reloads
                .with_label_values(&["success"])
                .inc();
            tracing::info!(
                initiator,
                services = summary.services,
                "configuration reloaded"
            );
            for key in &summary.restart_required {
                tracing::warn!(
                    setting = key,
                    "changed in the config file, but applies only after a restart"
                );
            }
        }
        Err(e) => {
            gw.metrics
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            tracing::error!(initiator, error = %e, "configuration reload rejected; the running configuration stays");
        }
    }
    result
}

fn first_line(e: &ReloadError) -> String {
    let text = e.to_string();
    match e {
        ReloadError::Config(c) => {
            format!("{} problem(s): {}", c.issues().len(), c.issues().join("; "))
        }
        _ => text,
    }
}

async fn build(gw: &Arc<Gateway>) -> Result<ReloadSummary, ReloadError> {
    let path = gw.config.load().source.clone();
    let builder = Arc::clone(gw);
    // Reading files, parsing certificates and (for new token services) generating keys block.
    let (config, routes) =
        tokio::task::spawn_blocking(move || -> Result<(Config, Routes), ReloadError> {
            let config = config::load_and_validate(&path)?;
            let routes = Routes::build(&config, &builder.metrics, Some(&builder.routes.load()))?;
            Ok((config, routes))
        })
        .await
        .map_err(|_| ReloadError::Task)??;
    // Compared with what is really running: the startup settings (restart-only values never
    // change after startup, whatever later reloads read).
    let restart_required = restart_only(&gw.startup_config, &config);
    if let (Some(resolver), Some(t)) = (&gw.cert, &config.server.tls) {
        resolver.current.store(Arc::new(t.certified_key.clone()));
    }
    let summary = ReloadSummary {
        services: config.services.len(),
        restart_required,
    };
    *gw.watched
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = config.fingerprints.clone();
    routes.apply_limits();
    gw.routes.store(Arc::new(routes));
    gw.health_wake.notify_one();
    gw.config.store(Arc::new(config));
    Ok(summary)
}

/// Called by the watch loop: reloads when the config file changed, and swaps the certificate
/// when its files changed (a bad new pair keeps the old one).
pub async fn poll(gw: &Arc<Gateway>) {
    let config = gw.config.load_full();
    let (config_changed, cert_changed) = {
        let mut w = gw
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = FileFingerprints::current(&config);
        let config_changed = now.config != w.config;
        let cert_changed = now.cert != w.cert || now.key != w.key;
        if config_changed || cert_changed {
            *w = now;
        }
        (config_changed, cert_changed)
    };
    if config_changed {
        // A failed reload is already logged, counted and in the activity log.
        let _ = reload(gw, "file-watch", None).await;
        return;
    }
    if cert_changed && let (Some(resolver), Some(t)) = (&gw.cert, &config.server.tls) {
        let (cert, key) = (t.cert_path.clone(), t.key_path.clone());
        let loaded =
            tokio::task::spawn_blocking(move || tls::load_certified_key(&cert, &key)).await;
        match loaded {
            Ok(Ok(pair)) => {
                resolver.current.store(Arc::new(pair));
                gw.metrics
                    .certificate_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(cert = %t.cert_path.display(), "certificate reloaded; new handshakes use it");
                gw.activity.record(ActivityRecord::new(
                    "reloadCertificate",
                    "file-watch",
                    Outcome::Succeeded,
                ));
            }
            Ok(Err(e)) => {
                gw.metrics
                    .certificate_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "new certificate rejected; the previous one stays in use");
                gw.activity.record(
                    ActivityRecord::new("reloadCertificate", "file-watch", Outcome::Failed)
                        .reason("the new certificate or key is invalid; previous pair kept"),
                );
            }
            Err(_) => {}
        }
    }
}
