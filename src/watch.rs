//! The background loop that keeps the runtime state current: it runs a reload cycle every
//! `watch_interval_ms` (every source is observed; see `reload`), applies JWKS documents as they are
//! fetched, retires signing keys whose overlap has ended, schedules JWKS URL refreshes, and evicts
//! full rate-limit buckets. It never changes the state itself: every change goes through
//! `reload::Applier`.

use std::sync::Arc;

use crate::auth::jwt::trusted::IssuerKeys;
use crate::gateway::Gateway;
use crate::reload::Trigger;
use crate::runtime::RuntimeState;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs until background tasks stop.
pub async fn watch_loop(gw: Arc<Gateway>) {
    let stop = gw.lifecycle.stop_background.clone();
    let mut fetched = gw.applier.take_fetched();
    // The applier has just built the state from every source; the first poll is one interval on.
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            // Outcomes are logged, counted and in the activity log by the applier.
            let _ = gw.applier.run(Trigger::Poll).await;
        }
        let state = gw.state_full();
        let now = unix_now();
        let retired = state
            .services()
            .iter()
            .filter_map(|s| s.tokens())
            .any(|t| t.signing.has_expired_keys(now));
        if retired {
            let _ = gw.applier.run(Trigger::Prune(now)).await;
        }
        for (owner, trusted) in issuers(&state) {
            refresh_issuer(&gw, owner, &trusted);
        }
        for service in state.services() {
            if let Some(rate) = &service.rate {
                rate.evict_full(std::time::Instant::now());
            }
        }
        // The current state's interval: `watch_interval_ms` is reloadable.
        let interval = state.config.server.watch_interval;
        drop(state);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
            Some(f) = async { match &mut fetched {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            } } => {
                let _ = gw.applier.run(Trigger::Fetched(f)).await;
            }
        }
    }
}

/// Every trusted issuer in a state with the metrics label of its owner (`admin` for the
/// identity provider).
fn issuers(state: &RuntimeState) -> Vec<(String, IssuerKeys)> {
    let mut all: Vec<(String, IssuerKeys)> = state
        .identity
        .iter()
        .map(|i| ("admin".to_owned(), i.issuer.clone()))
        .collect();
    for service in state.services() {
        if let Some(tokens) = service.tokens() {
            for trusted in &tokens.trusted {
                all.push((service.config.name.clone(), trusted.clone()));
            }
        }
    }
    all
}

/// A scheduled JWKS URL refresh (in a task, never blocking this loop; its result reaches the
/// state through the applier) and the key set's age gauge.
fn refresh_issuer(gw: &Gateway, owner: String, trusted: &IssuerKeys) {
    let issuer = Arc::clone(&trusted.issuer);
    let label = issuer.config.issuer.clone();
    if let Some(age) = issuer.age_secs() {
        gw.metrics
            .jwks_age
            .with_label_values(&[&owner, &label])
            .set(i64::try_from(age).unwrap_or(i64::MAX));
    }
    if issuer.refresh_due(trusted.is_loaded()) {
        tokio::spawn(async move {
            // The issuer counts its own fetches (scoregate_jwks_fetch_total).
            match issuer.refresh().await {
                Ok(n) => {
                    tracing::debug!(service = %owner, issuer = %label, keys = n, "JWKS fetched");
                }
                Err(e) => {
                    tracing::warn!(service = %owner, issuer = %label, error = %e, "JWKS fetch failed; previous keys kept");
                }
            }
        });
    }
}
