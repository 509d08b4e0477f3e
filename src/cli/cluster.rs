//! `scoregate cluster status` and `scoregate cluster import`: operator commands against a
//! fleet's etcd namespace, run without a gateway.
//!
//! `import` copies an existing local `state_dir` (the keys and signing keys scoregate generated,
//! the API role assignments and the bootstrap admin credential) into an empty namespace, sealed
//! as a replica would store them, in one all-or-nothing transaction: a namespace that holds
//! anything is refused, so nothing is ever overwritten.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::cluster::etcd::Client;
use crate::config::{AuthMode, Config, EtcdConfig, KeySource, SigningSource};

fn etcd_of(config: &Config) -> anyhow::Result<&Arc<EtcdConfig>> {
    config.cluster.etcd().with_context(|| {
        format!(
            "{} has no [cluster] backend = \"etcd\" table",
            config.source.display()
        )
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `scoregate cluster status`: connection (per endpoint), the namespace's revision and size,
/// and the live replicas with the revision each applied. Fails when no endpoint answers.
pub fn status(config: &Config) -> anyhow::Result<String> {
    let etcd = etcd_of(config)?;
    runtime()?.block_on(async {
        let client = Client::new(etcd)?;
        client.authenticate().await?;
        let endpoints = client.status().await;
        let prefix = etcd.prefix();
        let (state, revision) = client
            .get_prefix(&format!("{prefix}state/"))
            .await
            .context("reading the namespace")?;
        let (replicas, _) = client.get_prefix(&format!("{prefix}replicas/")).await?;
        let replicas: Vec<serde_json::Value> = replicas
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        Ok(json!({
            "namespace": etcd.namespace,
            "endpoints": endpoints,
            "revision": revision,
            "stateKeys": state.len(),
            "replicas": replicas,
        })
        .to_string())
    })
}

/// `scoregate cluster import`: see the module docs.
pub fn import(config: &Config) -> anyhow::Result<String> {
    let etcd = etcd_of(config)?;
    let state_prefix = format!("{}state/", etcd.prefix());
    let seal = |relative: &str, plain: &[u8]| -> anyhow::Result<(String, Vec<u8>)> {
        let key = format!("{state_prefix}{relative}");
        let sealed = etcd.seal.seal(&key, plain)?;
        Ok((key, sealed))
    };
    let mut entries = Vec::new();
    let mut imported = Vec::new();
    for s in &config.services {
        if let (AuthMode::Key, Some(KeySource::State { path, .. })) = (s.auth, &s.keys)
            && let Some(bytes) = read_optional(path)?
        {
            // Parsed first: a broken file is refused here, not by every replica later.
            crate::auth::keys::KeyFile::new(
                s.keys
                    .clone()
                    .unwrap_or(KeySource::OperatorFile { path: path.clone() }),
            )
            .read(None)
            .with_context(|| format!("service {:?}: {}", s.name, path.display()))?;
            entries.push(seal(&format!("keys/{}", s.name), &bytes)?);
            imported.push(format!("keys/{}", s.name));
        }
        if let Some(token) = &s.token
            && let SigningSource::State { path } = &token.signing
            && let Some(bytes) = read_optional(path)?
        {
            entries.push(seal(&format!("signing/{}", s.name), &bytes)?);
            imported.push(format!("signing/{}", s.name));
        }
    }
    let assignments =
        crate::runtime::assignments::AssignmentFile::new(&config.server.state_dir).read()?;
    for a in &assignments {
        entries.push((
            format!("{state_prefix}assignments/{}", a.id),
            serde_json::to_vec(a)?,
        ));
    }
    if !assignments.is_empty() {
        imported.push(format!("{} role assignment(s)", assignments.len()));
    }
    if config.server.admin_token_file.is_none() {
        let path = crate::auth::admin::CredentialFile::new(&config.server.state_dir).path;
        if let Some(bytes) = read_optional(&path)? {
            entries.push(seal("admin", &bytes)?);
            imported.push("admin".to_owned());
        }
    }
    if entries.is_empty() {
        bail!(
            "{} holds nothing to import",
            config.server.state_dir.display()
        );
    }
    entries.push(seal("seal-check", crate::cluster::SEAL_CHECK_TEXT)?);
    runtime()?.block_on(async {
        let client = Client::new(etcd)?;
        client.authenticate().await?;
        let (existing, _) = client.get_prefix(&state_prefix).await?;
        if !existing.is_empty() {
            bail!(
                "namespace {:?} is not empty ({} key(s) under {state_prefix}); import refuses to overwrite",
                etcd.namespace,
                existing.len()
            );
        }
        match client.create_all(entries).await? {
            Some(revision) => Ok(json!({
                "namespace": etcd.namespace,
                "revision": revision,
                "imported": imported,
            })
            .to_string()),
            None => bail!(
                "namespace {:?} was written to while importing; nothing was imported",
                etcd.namespace
            ),
        }
    })
}

fn read_optional(path: &std::path::Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
