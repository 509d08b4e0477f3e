//! Change detection for files scoregate reads at runtime (key files, signing keys, JWKS files),
//! and the background loop that applies changes, retires signing keys and refreshes JWKS URLs.
//!
//! Files are polled rather than watched with inotify: a `stat` of a handful of paths every few
//! hundred milliseconds costs nothing, and it sees every way operators replace files, including
//! Kubernetes' atomic `..data` symlink swap of Secret volumes (the watched path's own inode never
//! changes there, only the target's) and editors that rename a new file over the old one. The
//! fingerprint follows symlinks, so any of those show up as a new inode, size or mtime.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::jwt::TokenAuthority;
use crate::auth::jwt::trusted::Issuer;
use crate::auth::keys::{KeyError, Reloaded};
use crate::runtime::Gateway;
use crate::telemetry::activity::{ActivityRecord, Outcome};

/// How often watched files are checked; changes apply within about this long.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    /// The fingerprint of the file `path` resolves to, or `None` if it cannot be read.
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// Polls every watched file until background tasks stop. Each pass re-reads the route table, so
/// services added or removed by a reload are followed automatically.
pub async fn watch_loop(gw: Arc<Gateway>) {
    let stop = gw.lifecycle.stop_background.clone();
    loop {
        crate::reload::poll(&gw).await;
        let routes = gw.routes.load_full();
        if let Some(identity) = &routes.identity {
            watch_issuer(&gw, "admin", &identity.issuer, Arc::clone(identity), |id| {
                &id.issuer
            });
        }
        for service in routes.services() {
            if let Some(store) = service.keys().cloned() {
                // Reading and parsing a small file; off the async workers all the same.
                if let Ok(Some(result)) =
                    tokio::task::spawn_blocking(move || store.poll_file()).await
                {
                    key_file_changed(&gw, &service.config.name, result);
                }
            }
            if let Some(tokens) = service.tokens() {
                watch_tokens(&gw, &service.config.name, tokens);
            }
            if let Some(rate) = &service.rate {
                rate.evict_full(std::time::Instant::now());
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

fn key_file_changed(gw: &Gateway, name: &str, result: Result<Reloaded, KeyError>) {
    match result {
        Ok(Reloaded::Unchanged) => {}
        Ok(Reloaded::Applied { updated_by }) => {
            gw.metrics
                .key_reloads
                .with_label_values(&[name, "success"])
                .inc();
            tracing::info!(service = name, "key file changed; new keys are in force");
            gw.activity.record(
                ActivityRecord::new(
                    "reloadKeys",
                    initiator(updated_by.as_deref()),
                    Outcome::Succeeded,
                )
                .service(name),
            );
        }
        Err(e) => {
            gw.metrics
                .key_reloads
                .with_label_values(&[name, "error"])
                .inc();
            tracing::error!(service = name, error = %e, "key file change rejected; the previous keys stay in force");
            gw.activity.record(
                ActivityRecord::new("reloadKeys", "file-watch", Outcome::Failed)
                    .service(name)
                    .reason("the new key file is invalid or unreadable; previous keys kept"),
            );
        }
    }
}

/// Files written by this gateway's API were already applied and are skipped as unchanged; a
/// change seen here came from the offline CLI or from an operator.
fn initiator(updated_by: Option<&str>) -> &'static str {
    match updated_by {
        Some("cli") => "cli",
        _ => "file-watch",
    }
}

/// Signing-key retirement and reloads, JWKS file changes and JWKS URL refreshes.
fn watch_tokens(gw: &Arc<Gateway>, name: &str, tokens: &Arc<TokenAuthority>) {
    tokens.prune();
    match tokens.signing.poll_file() {
        None => {}
        Some(Ok(author)) => {
            gw.metrics
                .signing_key_reloads
                .with_label_values(&[name, "success"])
                .inc();
            tracing::info!(
                service = name,
                "signing key file changed; new keys are in force"
            );
            gw.activity.record(
                ActivityRecord::new(
                    "reloadSigningKeys",
                    initiator(author.as_deref()),
                    Outcome::Succeeded,
                )
                .service(name),
            );
        }
        Some(Err(e)) => {
            gw.metrics
                .signing_key_reloads
                .with_label_values(&[name, "error"])
                .inc();
            tracing::error!(service = name, error = %e, "signing key file change rejected; the previous keys stay in force");
            gw.activity.record(
                ActivityRecord::new("reloadSigningKeys", "file-watch", Outcome::Failed)
                    .service(name)
                    .reason(
                        "the new signing key file is invalid or unreadable; previous keys kept",
                    ),
            );
        }
    }
    for i in 0..tokens.trusted.len() {
        watch_issuer(gw, name, &tokens.trusted[i], Arc::clone(tokens), move |t| {
            &t.trusted[i]
        });
    }
}

/// JWKS file changes, scheduled JWKS URL refreshes (in a task, never blocking this loop) and the
/// key-set age gauge of one trusted issuer. `owner` keeps the issuer alive in the refresh task;
/// `get` finds it there.
fn watch_issuer<T: Send + Sync + 'static>(
    gw: &Arc<Gateway>,
    name: &str,
    issuer: &Issuer,
    owner: Arc<T>,
    get: impl Fn(&T) -> &Issuer + Send + 'static,
) {
    let label = issuer.config.issuer.as_str();
    if let Some(result) = issuer.poll_file() {
        match result {
            Ok(n) => tracing::info!(
                service = name,
                issuer = label,
                keys = n,
                "JWKS file reloaded"
            ),
            Err(e) => {
                tracing::error!(service = name, issuer = label, error = %e, "JWKS file change rejected; previous keys kept");
            }
        }
    }
    if issuer.refresh_due() {
        let name = name.to_owned();
        tokio::spawn(async move {
            let issuer = get(&owner);
            let label = issuer.config.issuer.as_str();
            // The issuer counts its own fetches (scoregate_jwks_fetch_total).
            match issuer.refresh().await {
                Ok(n) => tracing::debug!(service = %name, issuer = label, keys = n, "JWKS fetched"),
                Err(e) => {
                    tracing::warn!(service = %name, issuer = label, error = %e, "JWKS fetch failed; previous keys kept");
                }
            }
        });
    }
    if let Some(age) = issuer.age_secs() {
        gw.metrics
            .jwks_age
            .with_label_values(&[name, label])
            .set(i64::try_from(age).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_swap_changes_the_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "same").expect("write");
        std::fs::write(&b, "same").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).expect("symlink");
        let before = Fingerprint::of(&link).expect("fp");
        assert_eq!(Fingerprint::of(&link), Some(before));
        // Swap the link atomically, as Kubernetes does with `..data`.
        let tmp = dir.path().join("link.tmp");
        std::os::unix::fs::symlink(&b, &tmp).expect("symlink");
        std::fs::rename(&tmp, &link).expect("rename");
        assert_ne!(Fingerprint::of(&link), Some(before));
        assert_eq!(Fingerprint::of(&dir.path().join("gone")), None);
    }
}
