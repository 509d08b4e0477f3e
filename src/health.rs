//! Upstream health probes behind `/readyz`.
//!
//! One background task probes every service's health path with `GET` (Azure ML scoring
//! containers answer `GET /` with 200). Unhealthy services are re-probed quickly so readiness
//! follows a container's cold start closely; healthy ones at the configured interval. Transitions
//! are logged once, and `scoregate_upstream_healthy{service}` shows the current state. The probe
//! interval is the current state's (`health_interval_ms` is reloadable).

use std::sync::Arc;
use std::time::Duration;

use crate::gateway::Gateway;
use crate::runtime::Service;

/// Re-probe interval while some upstream is not (yet) healthy.
const UNHEALTHY_INTERVAL: Duration = Duration::from_millis(250);
/// Upper bound on one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn probe_loop(gw: Arc<Gateway>) {
    let stop = gw.lifecycle.stop_background.clone();
    loop {
        let state = gw.state_full();
        let interval = state.config.server.health_interval;
        let mut all_healthy = true;
        for service in state.services() {
            all_healthy &= probe(&gw, service, interval).await;
        }
        drop(state);
        let wait = if all_healthy {
            interval
        } else {
            interval.min(UNHEALTHY_INTERVAL)
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            () = gw.health_wake.notified() => {}
        }
    }
}

async fn probe(gw: &Gateway, service: &Service, interval: Duration) -> bool {
    let up = &service.config.upstream;
    let path = format!("{}{}", up.base_path, service.config.health_path);
    // The next probe of a service that answers healthy comes `interval` from now (sooner only
    // while another service is unhealthy); of one that does not, soon.
    let next_in = (interval, interval.min(UNHEALTHY_INTERVAL));
    let healthy = service
        .upstream
        .probe(&path, service.host_header.clone(), PROBE_TIMEOUT, next_in)
        .await;
    let was = service.is_healthy();
    if healthy != was {
        if healthy {
            tracing::info!(service = %service.config.name, upstream = %up, "upstream is healthy");
        } else {
            tracing::warn!(service = %service.config.name, upstream = %up, "upstream health probe failed");
        }
    }
    service.set_healthy(healthy);
    gw.metrics
        .upstream_healthy
        .with_label_values(&[service.config.name.as_str()])
        .set(i64::from(healthy));
    healthy
}
