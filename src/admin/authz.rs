//! Who may call the management API, and what each caller may do.
//!
//! Authentication: `Authorization: Bearer <credential>` on the admin listener. The bootstrap
//! credential is a random secret scoregate writes to `state_dir/admin.token` (0600) at first start;
//! whoever can read that file is an Owner. It is compared as a SHA-256 digest in constant time and
//! never logged.
//!
//! Authorization: every management route names an [`Action`]; [`authorize`] decides whether a
//! principal holds it for the service in question. Deny by default.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{SHA256, digest};
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::auth::bearer;
use crate::auth::keys::{Secret, generate_key};
use crate::error::AuthFailure;

/// File name of the bootstrap Owner credential inside the state directory.
pub const BOOTSTRAP_FILE: &str = "admin.token";

/// A management operation, as named in roles and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ServicesRead,
    KeysList,
    KeysRegenerate,
    TokenIssue,
    SigningKeysRotate,
    ActivityRead,
    MetricsRead,
    ConfigReload,
    RolesRead,
    RolesAssign,
}

impl Action {
    pub const ALL: [Self; 10] = [
        Self::ServicesRead,
        Self::KeysList,
        Self::KeysRegenerate,
        Self::TokenIssue,
        Self::SigningKeysRotate,
        Self::ActivityRead,
        Self::MetricsRead,
        Self::ConfigReload,
        Self::RolesRead,
        Self::RolesAssign,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ServicesRead => "services/read",
            Self::KeysList => "services/keys/list",
            Self::KeysRegenerate => "services/keys/regenerate",
            Self::TokenIssue => "services/token/issue",
            Self::SigningKeysRotate => "services/signingkeys/rotate",
            Self::ActivityRead => "activity/read",
            Self::MetricsRead => "metrics/read",
            Self::ConfigReload => "config/reload",
            Self::RolesRead => "roles/read",
            Self::RolesAssign => "roles/assign",
        }
    }
}

/// An authenticated management caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    /// Shown as the `initiator` of activity entries; never a credential.
    pub id: String,
    /// Holds every action on every service.
    pub owner: bool,
}

/// The credentials the admin listener accepts.
#[derive(Debug)]
pub struct AdminCredentials {
    bootstrap: [u8; 32],
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read or create {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} must hold at least 32 visible characters", path.display())]
    TooShort { path: PathBuf },
}

impl AdminCredentials {
    /// Reads `state_dir/admin.token`, creating it with a random credential on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, CredentialError> {
        let path = state_dir.join(BOOTSTRAP_FILE);
        let io = |source| CredentialError::Io {
            path: path.clone(),
            source,
        };
        let secret = match std::fs::read_to_string(&path) {
            Ok(text) => Secret::new(text.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::state::ensure_state_dir(state_dir).map_err(io)?;
                let secret = generate_key().map_err(|e| io(std::io::Error::other(e)))?;
                crate::state::write_atomic(
                    &path,
                    format!("{}\n", secret.expose()).as_bytes(),
                    0o600,
                )
                .map_err(io)?;
                tracing::info!(file = %path.display(), "created the bootstrap admin credential");
                secret
            }
            Err(e) => return Err(io(e)),
        };
        if secret.expose().len() < 32
            || !secret.expose().bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(CredentialError::TooShort { path });
        }
        Ok(Self {
            bootstrap: sha256(secret.expose().as_bytes()),
            path,
        })
    }

    pub fn bootstrap_path(&self) -> &Path {
        &self.path
    }

    /// Authenticates a management request.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<AdminPrincipal, AuthFailure> {
        let presented = bearer(headers)?;
        if bool::from(sha256(presented).ct_eq(&self.bootstrap)) {
            Ok(AdminPrincipal {
                id: "bootstrap-admin".to_owned(),
                owner: true,
            })
        } else {
            Err(AuthFailure::Invalid)
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Whether `principal` may perform `action` (on `service`, when the action targets one).
pub fn authorize(
    principal: &AdminPrincipal,
    action: Action,
    _service: Option<&str>,
) -> Result<(), Action> {
    if principal.owner { Ok(()) } else { Err(action) }
}
