//! Sealing of every secret fleet mode stores in etcd: AES-256-GCM under the fleet's seal key
//! (`[cluster] seal_key_file`, 32 random bytes in base64), with the etcd key as associated data,
//! so a sealed value copied under another key does not open.
//!
//! A sealed value is `b"sg1"`, a 12-byte random nonce, then the ciphertext and its 16-byte tag.
//! A value sealed under another seal key, or tampered with, fails to open with
//! [`SealError::Open`] naming the etcd key: never silently accepted, never overwritten.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

const MAGIC: &[u8] = b"sg1";

/// Why a seal key could not be loaded or a value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} must hold 32 random bytes in base64 (`scoregate cluster seal-key` prints one)", path.display())]
    Format { path: PathBuf },
    #[error(
        "the value of etcd key {key:?} does not open with this seal key (another seal_key_file sealed it, or it was altered)"
    )]
    Open { key: String },
    #[error("sealing failed")]
    Seal,
}

/// The fleet's seal key. Its bytes are wiped on drop and never printed.
#[derive(Clone)]
pub struct SealKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl PartialEq for SealKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.bytes.as_slice().ct_eq(other.bytes.as_slice()))
    }
}

impl Eq for SealKey {}

impl SealKey {
    /// Reads `path`: base64 of exactly 32 bytes (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| SealError::Read {
                    path: path.to_owned(),
                    source,
                })?,
            );
        Self::parse(&text).ok_or_else(|| SealError::Format {
            path: path.to_owned(),
        })
    }

    /// Base64 of exactly 32 bytes.
    pub fn parse(text: &str) -> Option<Self> {
        let decoded = Zeroizing::new(STANDARD.decode(text.trim()).ok()?);
        let bytes: [u8; 32] = decoded.as_slice().try_into().ok()?;
        Some(Self {
            bytes: Zeroizing::new(bytes),
        })
    }

    /// A new random key in the file's format (`scoregate cluster seal-key`).
    pub fn generate() -> Result<String, SealError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|_| SealError::Seal)?;
        Ok(STANDARD.encode(bytes.as_slice()))
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        UnboundKey::new(&AES_256_GCM, self.bytes.as_slice())
            .map(LessSafeKey::new)
            .map_err(|_| SealError::Seal)
    }

    /// Seals `plain` for storage under the etcd key `key`.
    pub fn seal(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Seal)?;
        let mut in_out = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + in_out.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&in_out);
        Ok(out)
    }

    /// Opens a value read from the etcd key `key`.
    pub fn open(&self, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let fail = || SealError::Open {
            key: key.to_owned(),
        };
        let rest = sealed.strip_prefix(MAGIC).ok_or_else(fail)?;
        if rest.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut in_out = Zeroizing::new(body.to_vec());
        let len = self
            .aead()?
            .open_in_place(nonce, Aad::from(key.as_bytes()), in_out.as_mut_slice())
            .map_err(|_| fail())?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealKey {
        SealKey::parse(&SealKey::generate().expect("generate")).expect("parse")
    }

    #[test]
    fn a_sealed_value_opens_under_its_key_only() {
        let k = key();
        let sealed = k
            .seal("/scoregate/a/keys/m", b"secret-value")
            .expect("seal");
        assert!(!sealed.windows(12).any(|w| w == b"secret-value"));
        assert_eq!(
            k.open("/scoregate/a/keys/m", &sealed)
                .expect("open")
                .as_slice(),
            b"secret-value"
        );
        // Replayed under another etcd key: refused.
        assert!(matches!(
            k.open("/scoregate/a/keys/other", &sealed),
            Err(SealError::Open { key }) if key == "/scoregate/a/keys/other"
        ));
        // Another seal key: refused.
        assert!(matches!(
            key().open("/scoregate/a/keys/m", &sealed),
            Err(SealError::Open { .. })
        ));
        // Tampered: refused.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.open("/scoregate/a/keys/m", &bad).is_err());
        assert!(k.open("/scoregate/a/keys/m", b"sg1").is_err());
    }

    #[test]
    fn the_key_file_must_hold_32_bytes_of_base64() {
        assert!(SealKey::parse("not base64!").is_none());
        assert!(SealKey::parse(&STANDARD.encode([1u8; 31])).is_none());
        assert!(SealKey::parse(&format!(" {}\n", STANDARD.encode([1u8; 32]))).is_some());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seal.key");
        std::fs::write(&path, "short").expect("write");
        let e = SealKey::from_file(&path).expect_err("bad key");
        assert!(e.to_string().contains("seal.key"), "{e}");
        assert!(matches!(
            SealKey::from_file(&dir.path().join("missing")),
            Err(SealError::Read { .. })
        ));
    }
}
