//! Who may call the management API, and what each caller may do.
//!
//! Authentication: `Authorization: Bearer <credential>` on the admin listener. The bootstrap
//! credential is a random secret scoregate writes to `state_dir/admin.token` (0600) at first start;
//! whoever can read that file is an Owner. It is compared as a SHA-256 digest in constant time and
//! never logged.
//!
//! A trusted identity provider (`[identity]`) may vouch for other callers with signed tokens
//! ([`Identity`]). Authorization (`roles::authorize`): every management route names an
//! [`Action`]; deny by default.

use std::path::{Path, PathBuf};

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::auth::bearer;
use crate::auth::jwt::trusted::{Issuer, JwksError};
use crate::auth::keys::{Secret, generate_key};
use crate::config::IdentityConfig;
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
    /// Shown as the `initiator` of activity entries and matched by role assignments; never a
    /// credential. `bootstrap-admin`, or the identity token's subject.
    pub id: String,
    /// The bootstrap credential's holder: an Owner of everything.
    pub owner: bool,
    /// Roles named by the identity token's roles claim (scope `*`).
    pub token_roles: Vec<String>,
}

/// The trusted identity provider for management callers (`[identity]`), e.g. Azure AD: tokens
/// carry the caller in `sub` and app roles in the roles claim.
#[derive(Debug)]
pub struct Identity {
    pub config: IdentityConfig,
    pub issuer: Issuer,
}

impl Identity {
    pub fn new(config: IdentityConfig) -> Result<Self, JwksError> {
        let mut issuer = Issuer::new(config.issuer.clone())?;
        issuer.validation.leeway = config.leeway.as_secs();
        issuer.validation.validate_nbf = true;
        Ok(Self { config, issuer })
    }

    /// Verifies an identity token: algorithm, key by `kid`, signature, `iss`, `aud`, `exp`,
    /// `nbf`, `sub`.
    pub async fn verify(&self, token: &[u8]) -> Result<AdminPrincipal, AuthFailure> {
        if token.len() > crate::auth::jwt::MAX_TOKEN_BYTES {
            return Err(AuthFailure::TokenTooLarge);
        }
        let text = std::str::from_utf8(token).map_err(|_| AuthFailure::TokenMalformed)?;
        let header = jsonwebtoken::decode_header(text).map_err(|_| AuthFailure::TokenMalformed)?;
        let kid = header.kid.ok_or(AuthFailure::TokenMalformed)?;
        if header.alg != self.config.issuer.algorithm {
            return Err(AuthFailure::TokenAlgorithm);
        }
        let key = match self.issuer.find(&kid) {
            Some(k) => k,
            None => match self.issuer.refetch_for_unknown_kid(&kid).await {
                Ok(true) => self.issuer.find(&kid).ok_or(AuthFailure::TokenUnknownKey)?,
                _ => return Err(AuthFailure::TokenUnknownKey),
            },
        };
        let data = jsonwebtoken::decode::<serde_json::Value>(text, &key, &self.issuer.validation)
            .map_err(|e| crate::auth::jwt::map_error(e.kind()))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(AuthFailure::TokenClaims)?;
        let token_roles = match claims.get(&self.config.roles_claim) {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(ToOwned::to_owned))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            Some(_) => return Err(AuthFailure::TokenClaims),
        };
        Ok(AdminPrincipal {
            id: sub.to_owned(),
            owner: false,
            token_roles,
        })
    }
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
            bootstrap: crate::auth::sha256(&[secret.expose().as_bytes()]),
            path,
        })
    }

    pub fn bootstrap_path(&self) -> &Path {
        &self.path
    }

    /// Authenticates a management request: the bootstrap credential, else an identity token.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        identity: Option<&Identity>,
    ) -> Result<AdminPrincipal, AuthFailure> {
        let presented = bearer(headers)?;
        if bool::from(crate::auth::sha256(&[presented]).ct_eq(&self.bootstrap)) {
            return Ok(AdminPrincipal {
                id: "bootstrap-admin".to_owned(),
                owner: true,
                token_roles: Vec::new(),
            });
        }
        match identity {
            Some(identity) => identity.verify(presented).await,
            None => Err(AuthFailure::Invalid),
        }
    }
}
