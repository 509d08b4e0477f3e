//! Offline operator commands that act on the state directory without a running gateway:
//! `keys list`, `keys regen`, `token issue` and `token rotate-signing-key`; fleet mode's `cluster status` and
//! `cluster import` (`cluster`). A running gateway picks their changes up through its file watch,
//! exactly as it would an operator editing the file.

pub mod cluster;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::auth::KeySlot;
use crate::auth::jwt::TokenAuthority;
use crate::auth::jwt::signing::{SigningFile, SigningFileState};
use crate::auth::keys::{KeyFile, KeyFileState, KeySet, KeySource, Secret};
use crate::config::{self, AuthMode, Config};

fn load(config_path: &Path) -> anyhow::Result<Config> {
    config::load_and_validate(config_path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A key-mode service's key file and its keys, creating them (as a starting gateway would) if
/// the state directory has none yet.
pub(crate) fn open_keys(
    config_path: &Path,
    service: &str,
) -> anyhow::Result<(KeyFile, Arc<KeySet>)> {
    let config = load(config_path)?;
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
    let file = KeyFile::new(source.clone());
    let set = match file.read(None)? {
        KeyFileState::Loaded(loaded) => loaded.set,
        KeyFileState::Absent => {
            let (set, bytes) = file.generate()?;
            file.write(&bytes)?;
            Arc::new(set)
        }
    };
    Ok((file, set))
}

/// `scoregate keys list`: both keys as JSON (the same shape as the `listkeys` API).
pub fn keys_list(config_path: &Path, service: &str) -> anyhow::Result<String> {
    let (_, set) = open_keys(config_path, service)?;
    let keys = set.list()?;
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
    let (file, set) = open_keys(config_path, service)?;
    let (_, new, bytes) = file.regenerate(&set, slot, value.map(Secret::new), "cli")?;
    file.write(&bytes)?;
    Ok(json!({
        "primaryKey": new.primary.as_ref().map(Secret::expose),
        "secondaryKey": new.secondary.as_ref().map(Secret::expose),
    })
    .to_string())
}

/// A token-mode service's signing-key file and its keys, creating the first key if needed.
fn open_signing(
    config: &Config,
    svc: &crate::config::ServiceConfig,
) -> anyhow::Result<Option<(SigningFile, Arc<crate::auth::jwt::signing::SigningSet>)>> {
    let Some(token) = &svc.token else {
        return Ok(None);
    };
    crate::state::ensure_state_dir(&config.server.state_dir)?;
    let file = SigningFile::new(
        token.signing.clone(),
        token.algorithm,
        TokenAuthority::overlap(token),
    );
    let set = match file.read(false)? {
        SigningFileState::Loaded(loaded) => loaded.set,
        SigningFileState::Absent => {
            let (set, bytes) = file.generate()?;
            file.write(&bytes)?;
            Arc::new(set)
        }
    };
    Ok(Some((file, set)))
}

/// `scoregate token rotate-signing-key`: a new signing key for one token-mode service, or for
/// all of them. Earlier keys keep verifying until the tokens they signed have expired.
pub fn rotate_signing_keys(config_path: &Path, service: Option<&str>) -> anyhow::Result<String> {
    let config = load(config_path)?;
    let mut rotated = serde_json::Map::new();
    for svc in &config.services {
        if service.is_some_and(|s| s != svc.name) {
            continue;
        }
        let Some((file, set)) = open_signing(&config, svc)? else {
            continue;
        };
        let (_, kid, bytes) = file.rotate(&set, "cli")?;
        file.write(&bytes)?;
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
    let config = load(config_path)?;
    let svc = config
        .services
        .iter()
        .find(|s| s.name == service)
        .with_context(|| format!("no service named {service:?} in {}", config_path.display()))?;
    let (Some(token), Some((_, set))) = (&svc.token, open_signing(&config, svc)?) else {
        bail!(
            "service {service:?} uses auth = {:?}, not \"token\"",
            svc.auth.as_str()
        );
    };
    let counter = || prometheus::IntCounter::new("unused", "offline").map_err(anyhow::Error::from);
    let authority = TokenAuthority::new(
        service,
        token.clone(),
        set,
        Vec::new(),
        Arc::new(crate::auth::jwt::cache::TokenCache::new(1)),
        crate::auth::jwt::CacheCounters {
            hit: counter()?,
            miss: counter()?,
        },
    );
    Ok(serde_json::to_string(&authority.issue(subject)?)?)
}
