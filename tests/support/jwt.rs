//! An independent JWS encoder for token tests: hand-built JSON, base64url and aws-lc-rs
//! signatures, never jsonwebtoken (which the gateway verifies with), so an accepted token shows
//! that the gateway interoperates with a second implementation.
//!
//! A [`Minter`] signs with a key it generated ([`Minter::generate_es256`], for trusted issuers
//! and identity providers; [`Minter::jwk`] publishes it) or with a token-mode service's own key
//! read from `state_dir/signing/<service>.json` ([`Minter::from_signing_state`]).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

/// base64url without padding (RFC 7515 §2).
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the Unix epoch, the unit of `exp`, `nbf` and `iat`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The JSON of segment `i` (0 = header, 1 = claims) of a compact JWS.
pub fn segment(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("token has the segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("segment is base64url"))
        .expect("segment is JSON")
}

/// The `kid` in a token's header.
pub fn kid_of(token: &str) -> String {
    segment(token, 0)["kid"]
        .as_str()
        .expect("header has a kid")
        .to_owned()
}

/// `iss`, `aud`, `sub`, `iat`, `nbf` = now and `exp` = now + `lifetime_s`.
pub fn claims(iss: &str, aud: &str, sub: &str, lifetime_s: u64) -> Value {
    let now = unix_now();
    json!({"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + lifetime_s})
}

enum Key {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Hs256(Vec<u8>),
}

/// Signs compact JWS tokens with one key.
pub struct Minter {
    key: Key,
    pub kid: String,
    /// The `SubjectPublicKeyInfo` PEM of a generated key (for `public_keys = [{kid, file}]`).
    public_pem: Option<String>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("alg", &self.alg())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A fresh P-256 key named `kid`.
    pub fn generate_es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate a P-256 key");
        let ecdsa =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pair.serialize_der())
                .expect("rcgen's PKCS#8 is readable by aws-lc-rs");
        Self {
            key: Key::Es256(ecdsa),
            kid: kid.to_owned(),
            public_pem: Some(pair.public_key_pem()),
        }
    }

    /// The key `kid` of a service's signing state file, or its current signer (the last key
    /// without `retireAfter`) when `kid` is `None`. The algorithm comes from the file.
    pub fn from_signing_state(path: &Path, kid: Option<&str>) -> Self {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("read signing state {}: {e}", path.display()));
        let file: Value = serde_json::from_slice(&bytes).expect("signing state is JSON");
        let keys = file["keys"].as_array().expect("signing state has keys");
        let entry = match kid {
            Some(kid) => keys.iter().find(|k| k["kid"] == kid),
            None => keys.iter().rev().find(|k| k["retireAfter"].is_null()),
        }
        .unwrap_or_else(|| panic!("key {kid:?} in {file}"));
        let material = entry["privateKey"].as_str().expect("privateKey is text");
        let der = || {
            PrivateKeyDer::from_pem_slice(material.as_bytes())
                .expect("privateKey is a PEM private key")
                .secret_der()
                .to_vec()
        };
        let key = match file["algorithm"].as_str().expect("algorithm is text") {
            "ES256" => Key::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der())
                    .expect("ES256 PKCS#8"),
            ),
            "RS256" => Key::Rs256(RsaKeyPair::from_pkcs8(&der()).expect("RSA PKCS#8")),
            "EdDSA" => Key::EdDsa(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der()).expect("Ed25519 PKCS#8"),
            ),
            "HS256" => Key::Hs256(STANDARD.decode(material).expect("HS256 secret is base64")),
            other => panic!("no independent signer for {other}"),
        };
        Self {
            key,
            kid: entry["kid"].as_str().expect("kid is text").to_owned(),
            public_pem: None,
        }
    }

    /// The JWS `alg` this key signs with.
    pub fn alg(&self) -> &'static str {
        match self.key {
            Key::Es256(_) => "ES256",
            Key::Rs256(_) => "RS256",
            Key::EdDsa(_) => "EdDSA",
            Key::Hs256(_) => "HS256",
        }
    }

    /// `{"alg", "typ": "JWT", "kid"}`.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid})
    }

    /// A token with this key's header.
    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }

    /// A token with any header (e.g. another `kid`), signed with this key.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match &self.key {
            Key::Es256(pair) => pair
                .sign(&rng, message.as_bytes())
                .expect("ECDSA sign")
                .as_ref()
                .to_vec(),
            Key::Rs256(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut sig)
                    .expect("RSA sign");
                sig
            }
            Key::EdDsa(pair) => pair.sign(message.as_bytes()).as_ref().to_vec(),
            Key::Hs256(secret) => aws_lc_rs::hmac::sign(
                &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
                message.as_bytes(),
            )
            .as_ref()
            .to_vec(),
        };
        format!("{message}.{}", b64(&signature))
    }

    /// The public key as PEM (generated keys only).
    pub fn public_pem(&self) -> &str {
        self.public_pem
            .as_deref()
            .expect("only generated keys have a public PEM here")
    }

    /// The public key as a JWK (`kty` EC, `crv` P-256; generated ES256 keys only).
    pub fn jwk(&self) -> Value {
        let Key::Es256(pair) = &self.key else {
            panic!("JWKs are built for ES256 keys only");
        };
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        })
    }
}

/// A JWKS document publishing `keys`.
pub fn jwks(keys: &[&Minter]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}
