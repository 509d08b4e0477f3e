//! Offline operator commands that act on the state directory without a running gateway:
//! `keys list`, `keys regen`, `token issue` and `token rotate-signing-key`. A running gateway picks their changes up through its file watch,
//! exactly as it would an operator editing the file.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::auth::KeySlot;
use crate::auth::keys::{KeySource, KeyStore, Secret};
use crate::config::{self, AuthMode};

fn open_store(config_path: &Path, service: &str) -> anyhow::Result<KeyStore> {
    let config = config::load_and_validate(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let svc = config
        .services
        .iter()
        .find(|s| s.name == service)
        .with_context(|| format!("no service named {service:?} in {}", config_path.display()))?;
    let (AuthMode::Key, Some(source)) = (svc.auth, &svc.keys) else {
        bail!(
            "service {service:?} uses auth = {:?}, not \"key\"",
            svc.auth.as_str()
        );
    };
    if let KeySource::State { .. } = source {
        crate::state::ensure_state_dir(&config.server.state_dir)?;
    }
    Ok(KeyStore::open(source.clone())?)
}

/// `scoregate keys list`: both keys as JSON (the same shape as the `listkeys` API).
pub fn keys_list(config_path: &Path, service: &str) -> anyhow::Result<String> {
    let store = open_store(config_path, service)?;
    let keys = store.list()?;
    Ok(json!({
        "primaryKey": keys.primary.expose(),
        "secondaryKey": keys.secondary.expose(),
    })
    .to_string())
}

/// `scoregate keys regen`: replaces one key (generated, or `value`) and prints the result.
pub fn keys_regen(
    config_path: &Path,
    service: &str,
    slot: KeySlot,
    value: Option<String>,
) -> anyhow::Result<String> {
    let store = open_store(config_path, service)?;
    let new = store.regenerate(slot, value.map(Secret::new), "cli")?;
    Ok(json!({
        "primaryKey": new.primary.as_ref().map(Secret::expose),
        "secondaryKey": new.secondary.as_ref().map(Secret::expose),
    })
    .to_string())
}

/// `scoregate token rotate-signing-key`: a new signing key for one token-mode service, or for
/// all of them. Earlier keys keep verifying until the tokens they signed have expired.
pub fn rotate_signing_keys(config_path: &Path, service: Option<&str>) -> anyhow::Result<String> {
    use crate::auth::jwt::signing::SigningStore;
    let config = config::load_and_validate(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rotated = serde_json::Map::new();
    for svc in &config.services {
        let Some(token) = &svc.token else { continue };
        if service.is_some_and(|s| s != svc.name) {
            continue;
        }
        crate::state::ensure_state_dir(&config.server.state_dir)?;
        let store = SigningStore::open(
            token.signing.clone(),
            token.algorithm,
            token.lifetime + token.leeway,
        )?;
        let kid = store.rotate("cli")?;
        rotated.insert(svc.name.clone(), json!({ "kid": &*kid }));
    }
    match service {
        Some(name) if rotated.is_empty() => bail!("no token-mode service named {name:?}"),
        None if rotated.is_empty() => bail!("no service uses auth = \"token\""),
        _ => Ok(serde_json::Value::Object(rotated).to_string()),
    }
}

/// `scoregate token issue`: signs a token with the service's current signing key, offline (as
/// `POST /services/{name}/token` would), e.g. for scripts and load tests.
pub fn issue_token(config_path: &Path, service: &str, subject: &str) -> anyhow::Result<String> {
    use crate::auth::jwt::{CacheCounters, TokenAuthority};
    let config = config::load_and_validate(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let svc = config
        .services
        .iter()
        .find(|s| s.name == service)
        .with_context(|| format!("no service named {service:?} in {}", config_path.display()))?;
    let Some(token) = &svc.token else {
        bail!(
            "service {service:?} uses auth = {:?}, not \"token\"",
            svc.auth.as_str()
        );
    };
    crate::state::ensure_state_dir(&config.server.state_dir)?;
    let metrics = crate::telemetry::metrics::Metrics::new();
    let counters: CacheCounters =
        crate::telemetry::metrics::ServiceMetrics::new(&metrics, service, "token").token_cache;
    let authority = TokenAuthority::new(service, token.clone(), counters)?;
    Ok(serde_json::to_string(&authority.issue(subject)?)?)
}
