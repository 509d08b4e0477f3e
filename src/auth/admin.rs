//! Who is calling the management API: the bootstrap admin credential and the trusted identity
//! provider. What each caller may do is `policy`'s.
//!
//! Authentication: `Authorization: Bearer <credential>` on the admin listener. The bootstrap
//! credential is a random secret scoregate writes to `state_dir/admin.token` (0600) at first start;
//! whoever can read that file is an Owner. It is compared as a SHA-256 digest in constant time and
//! never logged.
//!
//! A trusted identity provider (`[identity]`) may vouch for other callers with signed tokens
//! ([`Identity`]). Both produce a `policy::AdminPrincipal` for `policy::authorize`.

use std::path::{Path, PathBuf};

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::auth::bearer;
use crate::auth::jwt::trusted::IssuerKeys;
use crate::auth::keys::{Secret, generate_key};
use crate::config::IdentityConfig;
use crate::error::AuthFailure;
use crate::policy::AdminPrincipal;

/// File name of the bootstrap Owner credential inside the state directory.
pub const BOOTSTRAP_FILE: &str = "admin.token";

/// The prefix of every identity-provider principal: `idp:<sub>`. Names without it
/// (`bootstrap-admin`, `cli`, `file-watch`, `signal`, `anonymous`) belong to scoregate itself,
/// so no identity token, whatever its `sub`, can appear as one of them in the activity log or
/// in the subject of the tokens it is issued.
pub const IDENTITY_PREFIX: &str = "idp:";

/// The trusted identity provider for management callers (`[identity]`), e.g. Azure AD: tokens
/// carry the caller in `sub` and app roles in the roles claim. Its keys are those of one state
/// version.
#[derive(Debug, Clone)]
pub struct Identity {
    pub config: IdentityConfig,
    pub issuer: IssuerKeys,
}

impl Identity {
    /// Validation rules for the identity provider's issuer (leeway and `nbf` as configured).
    pub fn adjust(issuer: &mut crate::auth::jwt::trusted::Issuer, config: &IdentityConfig) {
        issuer.validation.leeway = config.leeway.as_secs();
        issuer.validation.validate_nbf = true;
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
        let Ok(Some(key)) = self.issuer.find_or_fetch(&kid).await else {
            return Err(AuthFailure::TokenUnknownKey);
        };
        let data =
            jsonwebtoken::decode::<serde_json::Value>(text, &key, &self.issuer.issuer.validation)
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
            id: format!("{IDENTITY_PREFIX}{sub}"),
            subject: Some(sub.to_owned()),
            owner: false,
            token_roles,
        })
    }
}

/// The bootstrap credential the admin listener accepts: its digest only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCredentials {
    bootstrap: [u8; 32],
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

/// `state_dir/admin.token`: a source of the runtime state. Created by the state's builder on
/// first start; an operator may replace it to rotate the bootstrap credential while running.
/// With `server.admin_token_file` the file is the operator's (e.g. a Kubernetes Secret): read and
/// watched the same way, but never generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFile {
    pub path: PathBuf,
    /// The operator provides the file; a missing one is an error, not a first start.
    pub provided: bool,
    /// Fleet mode: the credential is the fleet's, in etcd under this key; the file is this
    /// replica's copy of it.
    pub shared: Option<crate::cluster::SharedKey>,
}

impl CredentialFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(BOOTSTRAP_FILE),
            provided: false,
            shared: None,
        }
    }

    /// The credential file a configuration uses: `admin_token_file`, else `state_dir/admin.token`.
    pub fn of(server: &crate::config::ServerConfig) -> Self {
        match &server.admin_token_file {
            Some(path) => Self {
                path: path.clone(),
                provided: true,
                shared: None,
            },
            None => Self::new(&server.state_dir),
        }
    }

    /// Reads the credential; `None` when the file does not exist.
    pub fn read(&self) -> Result<Option<AdminCredentials>, CredentialError> {
        if let Some(shared) = &self.shared {
            return self.read_shared(shared);
        }
        match std::fs::read_to_string(&self.path) {
            Ok(text) => AdminCredentials::from_secret(&Secret::new(text.trim().to_owned()))
                .map(Some)
                .ok_or_else(|| CredentialError::TooShort {
                    path: self.path.clone(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CredentialError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The fleet's credential from etcd; this replica's copy in the file follows it.
    fn read_shared(
        &self,
        shared: &crate::cluster::SharedKey,
    ) -> Result<Option<AdminCredentials>, CredentialError> {
        let io = |source| CredentialError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = match shared.read() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        let credentials = AdminCredentials::from_secret(&Secret::new(text)).ok_or_else(|| {
            CredentialError::TooShort {
                path: self.path.clone(),
            }
        })?;
        let local = std::fs::read(&self.path).unwrap_or_default();
        if local != bytes.as_slice() {
            if let Some(dir) = self.path.parent() {
                crate::state::ensure_state_dir(dir).map_err(io)?;
            }
            crate::state::write_atomic(&self.path, &bytes, 0o600).map_err(io)?;
        }
        Ok(Some(credentials))
    }

    /// A new random credential and the file's bytes; nothing is written here.
    pub fn generate(
        &self,
    ) -> Result<(AdminCredentials, zeroize::Zeroizing<Vec<u8>>), CredentialError> {
        if self.provided {
            return Err(CredentialError::Io {
                path: self.path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let secret = generate_key().map_err(|e| CredentialError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let bytes = zeroize::Zeroizing::new(format!("{}\n", secret.expose()).into_bytes());
        let credentials =
            AdminCredentials::from_secret(&secret).ok_or_else(|| CredentialError::TooShort {
                path: self.path.clone(),
            })?;
        Ok((credentials, bytes))
    }
}

impl crate::source::Source for CredentialFile {
    type Value = Option<AdminCredentials>;
    type Error = CredentialError;

    fn observe(&self) -> crate::source::Version {
        match &self.shared {
            Some(shared) => vec![shared.stamp()],
            None => vec![crate::source::Fingerprint::of(&self.path)],
        }
    }

    fn load(
        &self,
        previous: Option<&Option<AdminCredentials>>,
    ) -> Result<Option<AdminCredentials>, CredentialError> {
        match self.read()? {
            Some(c) => Ok(Some(c)),
            // Deleted while running: keep the credential in force (a restart creates a new one).
            None if previous.is_some_and(Option::is_some) => Err(CredentialError::Io {
                path: self.path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
            None => Ok(None),
        }
    }

    fn same(current: &Option<AdminCredentials>, new: &Option<AdminCredentials>) -> bool {
        current == new
    }
}

impl AdminCredentials {
    /// The credential's digest, if the secret is 32 or more visible characters.
    fn from_secret(secret: &Secret) -> Option<Self> {
        let text = secret.expose();
        crate::config::acceptable_admin_credential(text).then(|| Self {
            bootstrap: crate::auth::sha256(&[text.as_bytes()]),
        })
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
                subject: None,
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
