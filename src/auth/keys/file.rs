//! The key file format, shared by generated state files (plain or hashed) and operator-provided
//! key files: parsing with every problem named, and rendering for atomic writes.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{KeyError, KeySet, Secret, validate_key_value};

/// The on-disk format, shared by generated state files and operator key files.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    storage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secondary_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary_key_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secondary_key_hash: Option<String>,
    /// Who wrote this file (a principal id, or `cli`), so a gateway that picks the change up
    /// from disk can name the initiator in its activity log. Absent in operator files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_by: Option<String>,
}

impl KeyFile {
    /// Zeroes the plain keys; called once a parsed or rendered file has served its purpose.
    fn wipe(&mut self) {
        use zeroize::Zeroize;
        self.primary_key.zeroize();
        self.secondary_key.zeroize();
    }
}

/// Key material as parsed from a file, before it becomes a `KeySet`.
pub(super) enum Material {
    Plain([Secret; 2]),
    Hashed {
        salt: [u8; 16],
        digests: [[u8; 32]; 2],
    },
}

pub(super) fn parse_file(
    path: &Path,
    bytes: &[u8],
) -> Result<(Material, Option<String>), KeyError> {
    let invalid = |reason: String| KeyError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let mut file: KeyFile = serde_json::from_slice(bytes).map_err(|e| invalid(format!("{e}")))?;
    let updated_by = file.updated_by.take();
    if let Some(v) = file.version
        && v != 1
    {
        return Err(invalid(format!("unsupported version {v}")));
    }
    let hashed = match file.storage.as_deref() {
        None => file.salt.is_some(),
        Some("plain") => false,
        Some("hashed") => true,
        Some(other) => {
            return Err(invalid(format!(
                "storage {other:?} is not \"plain\" or \"hashed\""
            )));
        }
    };
    if hashed {
        fn decode<const N: usize>(field: &str, v: Option<&String>) -> Result<[u8; N], String> {
            let v = v.ok_or_else(|| format!("{field} is required for hashed storage"))?;
            let bytes = STANDARD
                .decode(v)
                .map_err(|_| format!("{field} is not base64"))?;
            <[u8; N]>::try_from(bytes.as_slice())
                .map_err(|_| format!("{field} must decode to {N} bytes"))
        }
        let material = Material::Hashed {
            salt: decode("salt", file.salt.as_ref()).map_err(invalid)?,
            digests: [
                decode("primaryKeyHash", file.primary_key_hash.as_ref()).map_err(invalid)?,
                decode("secondaryKeyHash", file.secondary_key_hash.as_ref()).map_err(invalid)?,
            ],
        };
        return Ok((material, updated_by));
    }
    let take = |field: &str, v: &mut Option<String>| -> Result<Secret, KeyError> {
        let v = v
            .take()
            .ok_or_else(|| invalid(format!("{field} is required")))?;
        let secret = Secret::new(v);
        validate_key_value(secret.expose()).map_err(|why| invalid(format!("{field} {why}")))?;
        Ok(secret)
    };
    let primary = take("primaryKey", &mut file.primary_key);
    let secondary = take("secondaryKey", &mut file.secondary_key);
    file.wipe();
    let (primary, secondary) = (primary?, secondary?);
    if primary == secondary {
        return Err(invalid("primaryKey and secondaryKey must differ".into()));
    }
    Ok((Material::Plain([primary, secondary]), updated_by))
}

pub(super) fn render_file(set: &KeySet, updated_by: &str) -> Zeroizing<Vec<u8>> {
    let mut file = match (&set.slots[0].plain, &set.slots[1].plain) {
        (Some(p), Some(s)) => KeyFile {
            version: Some(1),
            storage: Some("plain".into()),
            primary_key: Some(p.expose().to_owned()),
            secondary_key: Some(s.expose().to_owned()),
            ..KeyFile::default()
        },
        _ => KeyFile {
            version: Some(1),
            storage: Some("hashed".into()),
            salt: Some(STANDARD.encode(set.salt)),
            primary_key_hash: Some(STANDARD.encode(set.slots[0].digest)),
            secondary_key_hash: Some(STANDARD.encode(set.slots[1].digest)),
            ..KeyFile::default()
        },
    };
    file.updated_by = Some(updated_by.to_owned());
    let mut out = Zeroizing::new(serde_json::to_vec_pretty(&file).unwrap_or_default());
    out.push(b'\n');
    file.wipe();
    out
}
