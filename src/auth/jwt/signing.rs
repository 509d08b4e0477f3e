//! A token-mode service's own signing keys: generation, persistence, rotation with overlap.
//!
//! The newest key signs. On rotation the previous keys get `retireAfter = now + lifetime +
//! leeway`: they keep verifying until the last token they signed has expired, then drop out (and
//! cache entries they vouched for with them). Generated keys live in
//! `state_dir/signing/<service>.json` (0600, atomic writes); an operator may provide one read-only
//! key instead (`signing_key_file`, PEM, or the raw secret for HS256).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::SigningSource;
use crate::source::Fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid signing key file: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("the signing key is provided by the read-only file {} (signing_key_file)", path.display())]
    ReadOnly { path: PathBuf },
    #[error("generating a signing key failed: {0}")]
    Generate(String),
}

/// One key: what it signs and verifies with, and until when it verifies.
pub struct SigningKey {
    pub kid: Arc<str>,
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    pub decoding: Arc<DecodingKey>,
    /// Unix seconds after which the key no longer verifies (`None`: the current signer).
    pub retire_after: Option<u64>,
    /// The persisted private material.
    material: Zeroizing<String>,
    created: u64,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("retire_after", &self.retire_after)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    fn active(&self, now: u64) -> bool {
        self.retire_after.is_none_or(|t| now < t)
    }
}

/// The keys of one service; the last one without `retire_after` signs.
#[derive(Debug, Default)]
pub struct SigningSet {
    keys: Vec<Arc<SigningKey>>,
}

impl SigningSet {
    pub fn signer(&self) -> Option<&Arc<SigningKey>> {
        self.keys.iter().rev().find(|k| k.retire_after.is_none())
    }

    /// A key that may verify at `now`.
    pub fn find(&self, kid: &str, now: u64) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| &*k.kid == kid && k.active(now))
    }

    /// The kids that verify at `now`.
    pub fn active_kids(&self, now: u64) -> Vec<Arc<str>> {
        self.keys
            .iter()
            .filter(|k| k.active(now))
            .map(|k| Arc::clone(&k.kid))
            .collect()
    }

    /// Whether some key retires at or before `now` (so the set should be pruned).
    pub fn has_expired_keys(&self, now: u64) -> bool {
        self.keys.iter().any(|k| !k.active(now))
    }

    /// The set without the keys retired at `now` (the file is tidied at the next rotation).
    fn pruned(&self, now: u64) -> Self {
        Self {
            keys: self
                .keys
                .iter()
                .filter(|k| k.active(now))
                .cloned()
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileKey {
    kid: String,
    created: u64,
    retire_after: Option<u64>,
    /// PKCS#8 PEM for asymmetric algorithms, base64 for HS256.
    private_key: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SigningFileFormat {
    version: u32,
    algorithm: Algorithm,
    keys: Vec<FileKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_by: Option<String>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Makes new private material for `alg`: PKCS#8 PEM, or a base64 secret for HS256.
fn generate_material(alg: Algorithm) -> Result<Zeroizing<String>, SigningError> {
    use rcgen::KeyPair;
    let err = |e: rcgen::Error| SigningError::Generate(e.to_string());
    let pem = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let mut secret = Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut *secret).map_err(|e| SigningError::Generate(e.to_string()))?;
            return Ok(Zeroizing::new(STANDARD.encode(*secret)));
        }
        Algorithm::ES256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?,
        Algorithm::ES384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(err)?,
        Algorithm::EdDSA => KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(err)?,
        // RS*/PS* (the enum is non-exhaustive; config only admits the algorithms above and RSA).
        _ => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .map_err(err)?,
    };
    Ok(Zeroizing::new(pem.serialize_pem()))
}

/// Builds the signing and verifying keys from persisted material.
pub(crate) fn keys_from_material(
    alg: Algorithm,
    material: &str,
) -> Result<(EncodingKey, Arc<DecodingKey>), String> {
    let jwt = |e: jsonwebtoken::errors::Error| e.to_string();
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = Zeroizing::new(
                STANDARD
                    .decode(material.trim())
                    .map_err(|_| "secret is not base64".to_owned())?,
            );
            if secret.len() < 32 {
                return Err("HS256 secret must be at least 32 bytes".to_owned());
            }
            Ok((
                EncodingKey::from_secret(&secret).map_err(jwt)?,
                Arc::new(DecodingKey::from_secret(&secret).map_err(jwt)?),
            ))
        }
        _ => {
            let pair =
                rcgen::KeyPair::from_pem(material).map_err(|e| format!("private key: {e}"))?;
            let public = pair.public_key_pem();
            let (enc, dec) = match alg {
                Algorithm::ES256 | Algorithm::ES384 => (
                    EncodingKey::from_ec_pem(material.as_bytes()),
                    DecodingKey::from_ec_pem(public.as_bytes()),
                ),
                Algorithm::EdDSA => (
                    EncodingKey::from_ed_pem(material.as_bytes()),
                    DecodingKey::from_ed_pem(public.as_bytes()),
                ),
                _ => (
                    EncodingKey::from_rsa_pem(material.as_bytes()),
                    DecodingKey::from_rsa_pem(public.as_bytes()),
                ),
            };
            Ok((enc.map_err(jwt)?, Arc::new(dec.map_err(jwt)?)))
        }
    }
}

fn new_kid() -> Result<String, SigningError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| SigningError::Generate(e.to_string()))?;
    Ok(format!("sg-{:016x}", u64::from_be_bytes(bytes)))
}

/// A rotated set, the new signer's kid, and the file's new bytes.
pub type Rotated = (SigningSet, Arc<str>, Zeroizing<Vec<u8>>);

/// A token-mode service's signing-key file: `state_dir/signing/<service>.json`, generated and
/// rotated by scoregate, or the operator's read-only `signing_key_file`. One source of the runtime
/// state (see `source`); written only by the state's builder (the first key) or by a
/// management write (`rotateSigningKey`), which then arrives through the same observe path as an
/// operator's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningFile {
    pub source: SigningSource,
    pub algorithm: Algorithm,
    /// How long a replaced key keeps verifying: token lifetime plus leeway.
    pub overlap: Duration,
    /// Fleet mode: the keys live in etcd under this key (a state-directory source only).
    pub shared: Option<crate::cluster::SharedKey>,
}

/// A signing-key file as read.
#[derive(Debug)]
pub struct LoadedSigning {
    pub set: Arc<SigningSet>,
    /// Who wrote the file (a principal id, or `cli`), if it says.
    pub updated_by: Option<String>,
    /// SHA-256 of the file's bytes.
    digest: [u8; 32],
}

/// What reading a signing-key file found.
#[derive(Debug)]
pub enum SigningFileState {
    Loaded(LoadedSigning),
    /// A state-directory file that does not exist yet: the builder generates the first key.
    Absent,
}

impl SigningFileState {
    pub fn set(&self) -> Option<&Arc<SigningSet>> {
        match self {
            Self::Loaded(l) => Some(&l.set),
            Self::Absent => None,
        }
    }

    /// The state of a file this gateway is about to write with `bytes`.
    pub fn written(set: Arc<SigningSet>, bytes: &[u8], updated_by: &str) -> Self {
        Self::Loaded(LoadedSigning {
            set,
            updated_by: Some(updated_by.to_owned()),
            digest: crate::auth::sha256(&[bytes]),
        })
    }

    /// The same file's keys without those retired at `now`, if any retired.
    pub fn pruned(&self, now: u64) -> Option<Self> {
        match self {
            Self::Loaded(l) if l.set.has_expired_keys(now) => Some(Self::Loaded(LoadedSigning {
                set: Arc::new(l.set.pruned(now)),
                updated_by: l.updated_by.clone(),
                digest: l.digest,
            })),
            Self::Loaded(_) | Self::Absent => None,
        }
    }
}

impl SigningFile {
    pub fn new(source: SigningSource, algorithm: Algorithm, overlap: Duration) -> Self {
        Self {
            source,
            algorithm,
            overlap,
            shared: None,
        }
    }

    /// The same source, read from (and written to) etcd in fleet mode.
    #[must_use]
    pub fn shared(mut self, key: crate::cluster::SharedKey) -> Self {
        self.shared = Some(key);
        self
    }

    pub fn path(&self) -> &Path {
        source_path(&self.source)
    }

    /// Reads and parses the file. `had_previous`: a value was loaded before, so a missing
    /// state file is an error (the last good keys stay), not a first start.
    pub fn read(&self, had_previous: bool) -> Result<SigningFileState, SigningError> {
        match &self.source {
            SigningSource::File { path } => {
                let set = read_operator_file(path, self.algorithm)?;
                Ok(SigningFileState::Loaded(LoadedSigning {
                    digest: set
                        .keys
                        .first()
                        .map_or([0; 32], |k| crate::auth::sha256(&[k.material.as_bytes()])),
                    set: Arc::new(set),
                    updated_by: None,
                }))
            }
            SigningSource::State { path } => match match &self.shared {
                Some(shared) => shared.read(),
                None => std::fs::read(path).map(Zeroizing::new),
            } {
                Ok(bytes) => {
                    let (set, updated_by) = parse_state(path, &bytes, self.algorithm)?;
                    Ok(SigningFileState::Loaded(LoadedSigning {
                        set: Arc::new(set),
                        updated_by,
                        digest: crate::auth::sha256(&[&bytes]),
                    }))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !had_previous => {
                    Ok(SigningFileState::Absent)
                }
                Err(source) => Err(SigningError::Read {
                    path: path.clone(),
                    source,
                }),
            },
        }
    }

    /// The first signing key of a state-directory service, and the file's bytes. Nothing is
    /// written here.
    pub fn generate(&self) -> Result<(SigningSet, Zeroizing<Vec<u8>>), SigningError> {
        let set = SigningSet {
            keys: vec![Arc::new(new_key(self.algorithm)?)],
        };
        let bytes = render(&set, self.algorithm, "scoregate");
        Ok((set, bytes))
    }

    /// A new signer on top of `current`; earlier keys verify for `overlap` longer, then retire.
    /// Returns the new set, the new kid and the file's bytes. Pure: the caller writes them.
    pub fn rotate(&self, current: &SigningSet, initiator: &str) -> Result<Rotated, SigningError> {
        if let SigningSource::File { path } = &self.source {
            return Err(SigningError::ReadOnly { path: path.clone() });
        }
        let now = unix_now();
        let retire = now + self.overlap.as_secs();
        let mut keys: Vec<Arc<SigningKey>> = current
            .keys
            .iter()
            .filter(|k| k.active(now))
            .map(|k| {
                if k.retire_after.is_some() {
                    return Arc::clone(k);
                }
                Arc::new(SigningKey {
                    kid: Arc::clone(&k.kid),
                    algorithm: k.algorithm,
                    encoding: k.encoding.clone(),
                    decoding: Arc::clone(&k.decoding),
                    retire_after: Some(retire),
                    material: k.material.clone(),
                    created: k.created,
                })
            })
            .collect();
        let new = new_key(self.algorithm)?;
        let kid = Arc::clone(&new.kid);
        keys.push(Arc::new(new));
        let set = SigningSet { keys };
        let bytes = render(&set, self.algorithm, initiator);
        Ok((set, kid, bytes))
    }

    /// Writes the file atomically (0600), creating its directory (0700) if needed.
    pub fn write(&self, bytes: &[u8]) -> Result<(), SigningError> {
        let path = self.path();
        let write_err = |source| SigningError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            crate::state::ensure_state_dir(dir).map_err(write_err)?;
        }
        crate::state::write_atomic(path, bytes, 0o600).map_err(write_err)
    }
}

impl crate::source::Source for SigningFile {
    type Value = SigningFileState;
    type Error = SigningError;

    fn observe(&self) -> crate::source::Version {
        match &self.shared {
            Some(shared) => vec![shared.stamp()],
            None => vec![Fingerprint::of(self.path())],
        }
    }

    fn load(&self, previous: Option<&SigningFileState>) -> Result<SigningFileState, SigningError> {
        self.read(previous.is_some_and(|p| p.set().is_some()))
    }

    fn same(current: &SigningFileState, new: &SigningFileState) -> bool {
        match (current, new) {
            (SigningFileState::Loaded(a), SigningFileState::Loaded(b)) => a.digest == b.digest,
            (SigningFileState::Absent, SigningFileState::Absent) => true,
            _ => false,
        }
    }
}

fn new_key(algorithm: Algorithm) -> Result<SigningKey, SigningError> {
    let material = generate_material(algorithm)?;
    let (encoding, decoding) =
        keys_from_material(algorithm, &material).map_err(SigningError::Generate)?;
    Ok(SigningKey {
        kid: Arc::from(new_kid()?),
        algorithm,
        encoding,
        decoding,
        retire_after: None,
        material,
        created: unix_now(),
    })
}

fn read_operator_file(path: &Path, algorithm: Algorithm) -> Result<SigningSet, SigningError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| SigningError::Read {
                path: path.to_owned(),
                source,
            })?,
        );
    let material = if matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        // The raw secret; stored base64 internally.
        Zeroizing::new(STANDARD.encode(text.trim_end().as_bytes()))
    } else {
        Zeroizing::new(text.to_string())
    };
    let (encoding, decoding) =
        keys_from_material(algorithm, &material).map_err(|reason| SigningError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
    // A stable kid derived from the key, so restarts keep accepting earlier tokens.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, material.as_bytes());
    let kid = u64::from_be_bytes(digest.as_ref()[..8].try_into().unwrap_or([0; 8]));
    Ok(SigningSet {
        keys: vec![Arc::new(SigningKey {
            kid: Arc::from(format!("op-{kid:016x}")),
            algorithm,
            encoding,
            decoding,
            retire_after: None,
            material,
            created: 0,
        })],
    })
}

/// Parses a state file; also returns who wrote it, if it says.
pub(crate) fn parse_state(
    path: &Path,
    bytes: &[u8],
    algorithm: Algorithm,
) -> Result<(SigningSet, Option<String>), SigningError> {
    let invalid = |reason: String| SigningError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let mut file: SigningFileFormat =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if file.version != 1 {
        return Err(invalid(format!("unsupported version {}", file.version)));
    }
    if file.algorithm != algorithm {
        return Err(invalid(format!(
            "keys are for {:?} but the service is configured for {algorithm:?}; rotate the signing key after changing the algorithm",
            file.algorithm
        )));
    }
    let mut keys = Vec::with_capacity(file.keys.len());
    for k in std::mem::take(&mut file.keys) {
        let material = Zeroizing::new(k.private_key);
        let (encoding, decoding) = keys_from_material(algorithm, &material)
            .map_err(|r| invalid(format!("key {}: {r}", k.kid)))?;
        keys.push(Arc::new(SigningKey {
            kid: Arc::from(k.kid),
            algorithm,
            encoding,
            decoding,
            retire_after: k.retire_after,
            material,
            created: k.created,
        }));
    }
    if !keys.iter().any(|k| k.retire_after.is_none()) {
        return Err(invalid(
            "no current signing key (every key is retiring)".to_owned(),
        ));
    }
    Ok((SigningSet { keys }, file.updated_by))
}

fn source_path(source: &SigningSource) -> &Path {
    match source {
        SigningSource::State { path } | SigningSource::File { path } => path,
    }
}

/// The state file's bytes for `set`.
fn render(set: &SigningSet, algorithm: Algorithm, initiator: &str) -> Zeroizing<Vec<u8>> {
    let file = SigningFileFormat {
        version: 1,
        algorithm,
        keys: set
            .keys
            .iter()
            .map(|k| FileKey {
                kid: k.kid.to_string(),
                created: k.created,
                retire_after: k.retire_after,
                private_key: k.material.to_string(),
            })
            .collect(),
        updated_by: Some(initiator.to_owned()),
    };
    let mut bytes = Zeroizing::new(serde_json::to_vec_pretty(&file).unwrap_or_default());
    bytes.push(b'\n');
    // The private keys were copied into `file`; its strings are dropped here (not zeroed by
    // serde); the persisted bytes are.
    bytes
}
