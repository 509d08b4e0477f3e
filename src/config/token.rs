//! Validation of `[service.token]` and trusted issuers (also used by `[identity]`).

use std::path::Path;
use std::time::Duration;

use http::Uri;

use super::raw;
use super::{AuthMode, SigningSource, TokenConfig, TrustedIssuer, TrustedKeys, Validator};

impl Validator<'_> {
    #[expect(
        clippy::too_many_lines,
        reason = "a declarative table: one validated setting per key of its TOML section"
    )]
    pub(super) fn token(
        &mut self,
        i: usize,
        auth: AuthMode,
        name: &str,
        raw: Option<raw::RawToken>,
        state_dir: &Path,
    ) -> Option<TokenConfig> {
        let key = |field: &str| format!("service[{i}].token.{field}");
        if auth != AuthMode::Token {
            if raw.is_some() {
                self.issue(
                    format!("service[{i}].token"),
                    format!("applies only to auth = \"token\" (this service uses {:?}; exactly one mode per service)", auth.as_str()),
                );
            }
            return None;
        }
        let raw = raw.unwrap_or_default();
        let algorithm = self.algorithm(&key("algorithm"), raw.algorithm.as_deref(), "ES256");
        let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
        let lifetime = secs(raw.lifetime_s, 3600);
        let refresh_after = secs(raw.refresh_after_s, 1800.min(lifetime.as_secs() / 2));
        let leeway = secs(raw.leeway_s, 60);
        if lifetime.is_zero() || lifetime > Duration::from_secs(7 * 86_400) {
            self.issue(
                key("lifetime_s"),
                format!(
                    "{} is not between 1 and 604800 (7 days)",
                    lifetime.as_secs()
                ),
            );
        }
        if refresh_after >= lifetime {
            self.issue(
                key("refresh_after_s"),
                format!(
                    "{} must be less than lifetime_s ({})",
                    refresh_after.as_secs(),
                    lifetime.as_secs()
                ),
            );
        }
        if leeway > Duration::from_secs(600) {
            self.issue(
                key("leeway_s"),
                format!("{} exceeds the maximum of 600", leeway.as_secs()),
            );
        }
        let signing = match raw.signing_key_file {
            Some(f) => {
                let path = self.path(&f);
                if !path.is_file() {
                    self.issue(
                        key("signing_key_file"),
                        format!("{} is not a readable file", path.display()),
                    );
                }
                SigningSource::File { path }
            }
            None => SigningSource::State {
                path: state_dir.join("signing").join(format!("{name}.json")),
            },
        };
        let subject_header = match raw.subject_header.as_deref() {
            None => Some(http::HeaderName::from_static("x-scoregate-subject")),
            Some("") => None,
            Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.issue(
                        key("subject_header"),
                        format!("{h:?} is not a valid header name"),
                    );
                    None
                }
            },
        };
        let cache_entries = raw.cache_entries.unwrap_or(65_536);
        if !(1..=10_000_000).contains(&cache_entries) {
            self.issue(
                key("cache_entries"),
                format!("{cache_entries} is not between 1 and 10000000"),
            );
        }
        let trusted = raw
            .trusted_issuer
            .into_iter()
            .enumerate()
            .filter_map(|(j, t)| {
                self.trusted_issuer(&format!("service[{i}].token.trusted_issuer[{j}]"), t)
            })
            .collect();
        Some(TokenConfig {
            algorithm,
            issuer: raw.issuer.unwrap_or_else(|| "scoregate".to_owned()),
            lifetime,
            refresh_after,
            leeway,
            signing,
            subject_header,
            cache_entries,
            trusted,
        })
    }

    pub(super) fn algorithm(
        &mut self,
        key: &str,
        raw: Option<&str>,
        default: &str,
    ) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm;
        match raw.unwrap_or(default) {
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "EdDSA" => Algorithm::EdDSA,
            "HS256" => Algorithm::HS256,
            other => {
                self.issue(
                    key,
                    format!("{other:?} is not one of \"ES256\", \"ES384\", \"RS256\", \"RS384\", \"RS512\", \"PS256\", \"EdDSA\", \"HS256\""),
                );
                Algorithm::ES256
            }
        }
    }

    #[expect(
        clippy::too_many_lines,
        reason = "a declarative table: one validated setting per key of its TOML section"
    )]
    pub(super) fn trusted_issuer(
        &mut self,
        prefix: &str,
        raw: raw::RawTrustedIssuer,
    ) -> Option<TrustedIssuer> {
        let key = |field: &str| format!("{prefix}.{field}");
        let issuer = raw.issuer.unwrap_or_default();
        if issuer.is_empty() {
            self.issue(key("issuer"), "is required");
        }
        let audience = raw.audience.unwrap_or_default();
        if audience.is_empty() {
            self.issue(key("audience"), "is required");
        }
        let algorithm = self.algorithm(&key("algorithm"), raw.algorithm.as_deref(), "RS256");
        if algorithm == jsonwebtoken::Algorithm::HS256 {
            self.issue(
                key("algorithm"),
                "HS256 needs a shared secret and cannot be used for an external issuer",
            );
        }
        let sources = usize::from(!raw.public_keys.is_empty())
            + usize::from(raw.jwks_file.is_some())
            + usize::from(raw.jwks_url.is_some());
        if sources != 1 {
            self.issue(
                prefix.to_owned(),
                "needs exactly one of public_keys, jwks_file, jwks_url",
            );
            return None;
        }
        let keys = if let Some(url) = raw.jwks_url {
            let parsed = url.parse::<Uri>().ok().filter(|u| u.host().is_some());
            let Some(uri) = parsed else {
                self.issue(key("jwks_url"), format!("{url:?} is not a URL"));
                return None;
            };
            let loopback = uri.host().is_some_and(|h| {
                h == "localhost"
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            match uri.scheme_str() {
                Some("https") => {}
                Some("http") if loopback => {}
                _ => {
                    self.issue(
                        key("jwks_url"),
                        format!("{url:?} must be https (plain http only to loopback)"),
                    );
                }
            }
            let refresh = Duration::from_secs(raw.jwks_refresh_s.unwrap_or(600));
            if refresh < Duration::from_secs(1) {
                self.issue(key("jwks_refresh_s"), "must be at least 1");
            }
            TrustedKeys::JwksUrl {
                url: uri,
                ca: raw.jwks_ca.map(|c| self.path(&c)),
                refresh,
            }
        } else if let Some(file) = raw.jwks_file {
            let path = self.path(&file);
            if !path.is_file() {
                self.issue(
                    key("jwks_file"),
                    format!("{} is not a readable file", path.display()),
                );
            }
            TrustedKeys::JwksFile(path)
        } else {
            let mut keys = Vec::new();
            for (k, pk) in raw.public_keys.into_iter().enumerate() {
                let (Some(kid), Some(file)) = (pk.kid, pk.file) else {
                    self.issue(format!("{prefix}.public_keys[{k}]"), "needs kid and file");
                    continue;
                };
                let path = self.path(&file);
                if !path.is_file() {
                    self.issue(
                        format!("{prefix}.public_keys[{k}].file"),
                        format!("{} is not a readable file", path.display()),
                    );
                }
                keys.push((kid, path));
            }
            TrustedKeys::Pem(keys)
        };
        Some(TrustedIssuer {
            issuer,
            audience,
            algorithm,
            keys,
        })
    }
}
