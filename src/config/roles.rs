//! Validation of `[identity]`, `[[role]]` and `[[role_assignment]]`.

use std::time::Duration;

use super::raw::{RawAssignment, RawIdentity, RawRole, RawTrustedIssuer};
use super::{TrustedIssuer, Validator};
use crate::policy::{Assignment, Policy, Role, Scope, builtin_roles, pattern_is_known};

/// `[identity]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    pub issuer: TrustedIssuer,
    pub leeway: Duration,
    /// The claim that lists the caller's roles (Azure AD app roles: `roles`).
    pub roles_claim: String,
}

impl Validator<'_> {
    pub(super) fn identity(&mut self, raw: Option<RawIdentity>) -> Option<IdentityConfig> {
        let raw = raw?;
        let leeway = Duration::from_secs(raw.leeway_s.unwrap_or(60));
        let roles_claim = raw.roles_claim.unwrap_or_else(|| "roles".to_owned());
        let issuer = self.trusted_issuer(
            "identity",
            RawTrustedIssuer {
                issuer: raw.issuer,
                audience: raw.audience,
                algorithm: raw.algorithm,
                public_keys: raw.public_keys,
                jwks_file: raw.jwks_file,
                jwks_url: raw.jwks_url,
                jwks_ca: raw.jwks_ca,
                jwks_refresh_s: raw.jwks_refresh_s,
            },
        )?;
        Some(IdentityConfig {
            issuer,
            leeway,
            roles_claim,
        })
    }

    /// Built-in roles plus custom ones, and the config's assignments, checked against each other
    /// and against the services.
    pub(super) fn policy(
        &mut self,
        roles: Vec<RawRole>,
        assignments: Vec<RawAssignment>,
        services: &[String],
    ) -> Policy {
        let mut all = builtin_roles();
        for (i, r) in roles.into_iter().enumerate() {
            let key = |f: &str| format!("role[{i}].{f}");
            let Some(name) = r.name.filter(|n| !n.is_empty()) else {
                self.issue(key("name"), "is required");
                continue;
            };
            if all.iter().any(|x| x.name == name) {
                self.issue(
                    key("name"),
                    format!(
                        "{name:?} is already defined (built-in roles: Owner, Contributor, Reader)"
                    ),
                );
                continue;
            }
            if r.actions.is_empty() {
                self.issue(key("actions"), "must list at least one action");
            }
            for (field, list) in [("actions", &r.actions), ("not_actions", &r.not_actions)] {
                for (j, pattern) in list.iter().enumerate() {
                    if !pattern_is_known(pattern) {
                        self.issue(
                            format!("role[{i}].{field}[{j}]"),
                            format!("{pattern:?} matches no known action (e.g. \"services/keys/regenerate\", \"services/*\")"),
                        );
                    }
                }
            }
            all.push(Role {
                name,
                description: r.description.unwrap_or_default(),
                actions: r.actions,
                not_actions: r.not_actions,
                builtin: false,
            });
        }
        let mut list = Vec::new();
        for (i, a) in assignments.into_iter().enumerate() {
            let key = |f: &str| format!("role_assignment[{i}].{f}");
            let principal = a.principal.unwrap_or_default();
            if principal.is_empty() {
                self.issue(key("principal"), "is required");
            }
            let role = a.role.unwrap_or_default();
            if !all.iter().any(|r| r.name == role) {
                self.issue(key("role"), format!("{role:?} is not a defined role"));
            }
            let scope_text = a.scope.unwrap_or_else(|| "*".to_owned());
            let scope = match Scope::parse(&scope_text) {
                Some(Scope::Service(s)) if !services.contains(&s) => {
                    self.issue(
                        key("scope"),
                        format!("{scope_text:?} names no configured service"),
                    );
                    Scope::Service(s)
                }
                Some(scope) => scope,
                None => {
                    self.issue(
                        key("scope"),
                        format!("{scope_text:?} is not \"*\" or \"service:NAME\""),
                    );
                    Scope::All
                }
            };
            list.push(Assignment {
                id: format!("config-{i}"),
                principal,
                role,
                scope,
                source: "config".to_owned(),
            });
        }
        Policy {
            roles: all,
            assignments: list,
        }
    }
}
