//! What a reload cycle tells operators: a diagnostic line, a metric and an activity entry for
//! every change it found, applied or refused.

use super::sources::Event;
use super::{Own, ReloadError, ReloadSummary, Trigger};
use crate::telemetry::activity::{ActivityLog, ActivityRecord, Outcome};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::sink::Keep;

/// Where a cycle reports.
#[derive(Debug)]
pub struct Out<'a> {
    pub metrics: &'a Metrics,
    pub activity: &'a ActivityLog,
}

/// Who changed a file, as the activity log names it: the offline CLI says so in the file; any
/// other change seen on disk is the file watch's.
fn file_initiator(updated_by: Option<&str>) -> &'static str {
    match updated_by {
        Some("cli") => "cli",
        _ => "file-watch",
    }
}

/// The configuration's outcome.
pub fn config(out: &Out<'_>, trigger: &Trigger, result: &Result<ReloadSummary, ReloadError>) {
    let (initiator, source) = match trigger {
        Trigger::Reload { initiator, source } => (initiator.as_str(), source.clone()),
        _ => ("file-watch", None),
    };
    let mut entry = match result {
        Ok(_) => ActivityRecord::new("reloadConfig", initiator, Outcome::Succeeded),
        Err(e) => {
            ActivityRecord::new("reloadConfig", initiator, Outcome::Failed).reason(e.summary())
        }
    };
    if let Some((ip, request_id)) = source {
        entry = entry.source(ip, request_id);
    }
    out.activity.record(entry, Keep::Always);
    match result {
        Ok(summary) => {
            out.metrics
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
            out.metrics
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            tracing::error!(initiator, error = %e, "configuration reload rejected; the running configuration stays");
        }
    }
}

/// Every other source's changes. A management write's own change is not reported (the write
/// has its own activity entry).
pub fn events(out: &Out<'_>, trigger: &Trigger, events: &[Event]) {
    let own = match trigger {
        Trigger::OwnWrite(own) => Some(own),
        _ => None,
    };
    for event in events {
        match event {
            Event::Cert(result) => certificate(out, result),
            Event::Keys { service, result } => {
                if own != Some(&Own::Keys(service.clone())) || result.is_err() {
                    file_change(out, FileKind::Keys, service, result);
                }
            }
            Event::Signing { service, result } => {
                if own != Some(&Own::Signing(service.clone())) || result.is_err() {
                    file_change(out, FileKind::Signing, service, result);
                }
            }
            Event::Jwks { id, result } => match result {
                Ok(n) => {
                    tracing::info!(owner = %id.owner, issuer = id.index, keys = n, "JWKS file reloaded");
                }
                Err(e) => {
                    tracing::error!(owner = %id.owner, issuer = id.index, error = %e, "JWKS file change rejected; previous keys kept");
                }
            },
            Event::Assignments(result) => {
                if own != Some(&Own::Assignments) || result.is_err() {
                    state_file(out, "reloadRoleAssignments", result.as_ref().map(drop));
                }
            }
            Event::Admin(result) => {
                state_file(out, "reloadAdminCredential", result.as_ref().map(drop));
            }
        }
    }
}

fn certificate(out: &Out<'_>, result: &Result<(), String>) {
    let outcome = if result.is_ok() { "success" } else { "error" };
    out.metrics
        .certificate_reloads
        .with_label_values(&[outcome])
        .inc();
    match result {
        Ok(()) => {
            tracing::info!("certificate reloaded; new handshakes use it");
            out.activity.record(
                ActivityRecord::new("reloadCertificate", "file-watch", Outcome::Succeeded),
                Keep::Always,
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "new certificate rejected; the previous one stays in use");
            out.activity.record(
                ActivityRecord::new("reloadCertificate", "file-watch", Outcome::Failed)
                    .reason("the new certificate or key is invalid; previous pair kept"),
                Keep::Always,
            );
        }
    }
}

#[derive(Clone, Copy)]
enum FileKind {
    Keys,
    Signing,
}

fn file_change(
    out: &Out<'_>,
    kind: FileKind,
    service: &str,
    result: &Result<Option<String>, String>,
) {
    let (family, operation, what) = match kind {
        FileKind::Keys => (&out.metrics.key_reloads, "reloadKeys", "key file"),
        FileKind::Signing => (
            &out.metrics.signing_key_reloads,
            "reloadSigningKeys",
            "signing key file",
        ),
    };
    match result {
        Ok(updated_by) => {
            family.with_label_values(&[service, "success"]).inc();
            tracing::info!(service, "{what} changed; new keys are in force");
            out.activity.record(
                ActivityRecord::new(
                    operation,
                    file_initiator(updated_by.as_deref()),
                    Outcome::Succeeded,
                )
                .service(service),
                Keep::Always,
            );
        }
        Err(e) => {
            family.with_label_values(&[service, "error"]).inc();
            tracing::error!(service, error = %e, "{what} change rejected; the previous keys stay in force");
            out.activity.record(
                ActivityRecord::new(operation, "file-watch", Outcome::Failed)
                    .service(service)
                    .reason(format!(
                        "the new {what} is invalid or unreadable; previous keys kept"
                    )),
                Keep::Always,
            );
        }
    }
}

/// Role assignments or the admin credential changed on disk.
fn state_file(out: &Out<'_>, operation: &'static str, result: Result<(), &String>) {
    match result {
        Ok(()) => {
            tracing::info!(operation, "state file changed on disk; applied");
            out.activity.record(
                ActivityRecord::new(operation, "file-watch", Outcome::Succeeded),
                Keep::Always,
            );
        }
        Err(e) => {
            tracing::error!(operation, error = %e, "state file change rejected; the previous value stays");
            out.activity.record(
                ActivityRecord::new(operation, "file-watch", Outcome::Failed)
                    .reason("the changed file is invalid or unreadable; previous value kept"),
                Keep::Always,
            );
        }
    }
}
