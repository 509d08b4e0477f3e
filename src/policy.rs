//! Who may do what on the management API: actions, roles and role assignments, modelled on Azure
//! RBAC, and [`authorize`]. Plain data and rules: no I/O besides the assignment file's source.
//!
//! A role is a set of action patterns (`services/*`) minus `not_actions`; `*` matches any run of
//! characters. Built-in roles mirror Azure ML's: **Owner** (everything), **Contributor**
//! (everything but `roles/assign`), **Reader** (read-only, plus issuing tokens, because calling a
//! token-mode service needs one; never key material). Owner and Contributor hold
//! `services/keys/set` (choosing a key value): they can list keys anyway. A principal holds
//! roles through assignments, each with a scope (`*` or `service:NAME`): assignments from the
//! config file, from the API (persisted in `state_dir/role-assignments.json`), and the `roles` claim of a trusted
//! identity token (scope `*`). Everything not granted is denied.

use serde::{Deserialize, Serialize};

/// A management operation, as named in roles and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ServicesRead,
    KeysList,
    KeysRegenerate,
    /// Choosing the new key's value in `regenerateKeys` (`keyValue`): separate from rotating,
    /// so a rotator cannot plant a key it knows.
    KeysSet,
    TokenIssue,
    SigningKeysRotate,
    ActivityRead,
    MetricsRead,
    ConfigReload,
    RolesRead,
    RolesAssign,
    /// `GET /cluster`: fleet mode's backend, endpoints and replicas (nothing secret).
    ClusterRead,
}

impl Action {
    pub const ALL: [Self; 12] = [
        Self::ServicesRead,
        Self::KeysList,
        Self::KeysRegenerate,
        Self::KeysSet,
        Self::TokenIssue,
        Self::SigningKeysRotate,
        Self::ActivityRead,
        Self::MetricsRead,
        Self::ConfigReload,
        Self::RolesRead,
        Self::RolesAssign,
        Self::ClusterRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ServicesRead => "services/read",
            Self::KeysList => "services/keys/list",
            Self::KeysRegenerate => "services/keys/regenerate",
            Self::KeysSet => "services/keys/set",
            Self::TokenIssue => "services/token/issue",
            Self::SigningKeysRotate => "services/signingkeys/rotate",
            Self::ActivityRead => "activity/read",
            Self::MetricsRead => "metrics/read",
            Self::ConfigReload => "config/reload",
            Self::RolesRead => "roles/read",
            Self::RolesAssign => "roles/assign",
            Self::ClusterRead => "cluster/read",
        }
    }
}

/// An authenticated management caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    /// Shown as the `initiator` of activity entries and used as the subject of tokens issued to
    /// the caller; never a credential. `bootstrap-admin`, or `idp:<sub>` for an identity token.
    pub id: String,
    /// The identity token's `sub` as issued (what role assignments name); `None` for the
    /// bootstrap credential.
    pub subject: Option<String>,
    /// The bootstrap credential's holder: an Owner of everything.
    pub owner: bool,
    /// Roles named by the identity token's roles claim (scope `*`).
    pub token_roles: Vec<String>,
}

impl AdminPrincipal {
    /// Whether a role assignment's `principal` names this caller: an identity principal by its
    /// `sub` or by its full `idp:<sub>` id. The bootstrap credential needs no assignment.
    pub fn is_named(&self, assigned: &str) -> bool {
        self.subject
            .as_deref()
            .is_some_and(|sub| assigned == sub || assigned == self.id)
    }
}

/// A named set of permitted actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub actions: Vec<String>,
    #[serde(rename = "notActions")]
    pub not_actions: Vec<String>,
    #[serde(rename = "builtIn")]
    pub builtin: bool,
}

impl Role {
    pub fn permits(&self, action: Action) -> bool {
        let a = action.as_str();
        self.actions.iter().any(|p| pattern_matches(p, a))
            && !self.not_actions.iter().any(|p| pattern_matches(p, a))
    }
}

/// Glob match where `*` stands for any run of characters (including `/`).
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Whether a pattern names at least one known action (config validation).
pub fn pattern_is_known(pattern: &str) -> bool {
    Action::ALL
        .iter()
        .any(|a| pattern_matches(pattern, a.as_str()))
}

pub fn builtin_roles() -> Vec<Role> {
    let role = |name: &str, description: &str, actions: &[&str], not_actions: &[&str]| Role {
        name: name.to_owned(),
        description: description.to_owned(),
        actions: actions.iter().map(ToString::to_string).collect(),
        not_actions: not_actions.iter().map(ToString::to_string).collect(),
        builtin: true,
    };
    vec![
        role(
            "Owner",
            "Full access, including assigning roles.",
            &["*"],
            &[],
        ),
        role(
            "Contributor",
            "Full access except assigning roles.",
            &["*"],
            &["roles/assign"],
        ),
        role(
            "Reader",
            "Read-only access, and tokens to call token-mode services; never key material.",
            &[
                "services/read",
                "activity/read",
                "metrics/read",
                "roles/read",
                "services/token/issue",
                "cluster/read",
            ],
            &[],
        ),
    ]
}

/// Where an assignment applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Service(String),
}

impl Scope {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "*" => Some(Self::All),
            _ => text
                .strip_prefix("service:")
                .filter(|name| !name.is_empty())
                .map(|name| Self::Service(name.to_owned())),
        }
    }

    /// Whether this scope covers an action on `service` (`None`: a gateway-wide action, which
    /// only `*` covers).
    pub fn covers(&self, service: Option<&str>) -> bool {
        match (self, service) {
            (Self::All, _) => true,
            (Self::Service(s), Some(target)) => s == target,
            (Self::Service(_), None) => false,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Service(s) => write!(f, "service:{s}"),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid scope {text:?}")))
    }
}

/// A role held by a principal within a scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Stable identifier (`config-N` for config assignments, random for API ones).
    pub id: String,
    pub principal: String,
    pub role: String,
    pub scope: Scope,
    /// `config` or `api`.
    pub source: String,
}

/// Roles and config assignments: part of the reloadable runtime state.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub roles: Vec<Role>,
    pub assignments: Vec<Assignment>,
}

impl Policy {
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }
}

/// Whether `principal` may perform `action` on `service` (or gateway-wide when `None`).
/// Deny by default; the missing action is returned for the 403 body.
pub fn authorize(
    principal: &AdminPrincipal,
    action: Action,
    service: Option<&str>,
    policy: &Policy,
    assigned_by_api: &[Assignment],
) -> Result<(), Action> {
    let grants = |role: &str, scope: &Scope| {
        scope.covers(service) && policy.role(role).is_some_and(|r| r.permits(action))
    };
    if principal.owner && grants("Owner", &Scope::All) {
        return Ok(());
    }
    if principal.token_roles.iter().any(|r| grants(r, &Scope::All)) {
        return Ok(());
    }
    let assigned = |a: &Assignment| principal.is_named(&a.principal) && grants(&a.role, &a.scope);
    if policy.assignments.iter().any(assigned) || assigned_by_api.iter().any(assigned) {
        return Ok(());
    }
    Err(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "services/keys/list"));
        assert!(pattern_matches("services/*", "services/keys/list"));
        assert!(pattern_matches(
            "services/keys/*",
            "services/keys/regenerate"
        ));
        assert!(pattern_matches("*/read", "activity/read"));
        assert!(pattern_matches("services/*/list", "services/keys/list"));
        assert!(!pattern_matches("services/*", "activity/read"));
        assert!(!pattern_matches(
            "services/keys/list",
            "services/keys/listx"
        ));
        assert!(pattern_is_known("roles/*"));
        assert!(!pattern_is_known("deploy/*"));
    }

    #[test]
    fn builtin_roles_match_the_seed_table() {
        let roles = builtin_roles();
        let get = |n: &str| roles.iter().find(|r| r.name == n).expect("role");
        for action in Action::ALL {
            assert!(get("Owner").permits(action));
            assert_eq!(
                get("Contributor").permits(action),
                action != Action::RolesAssign,
                "{action:?}"
            );
        }
        let reader: Vec<Action> = Action::ALL
            .into_iter()
            .filter(|a| get("Reader").permits(*a))
            .collect();
        assert_eq!(
            reader,
            [
                Action::ServicesRead,
                Action::TokenIssue,
                Action::ActivityRead,
                Action::MetricsRead,
                Action::RolesRead,
                Action::ClusterRead
            ]
        );
    }

    #[test]
    fn scopes() {
        assert_eq!(Scope::parse("*"), Some(Scope::All));
        assert_eq!(
            Scope::parse("service:iris"),
            Some(Scope::Service("iris".into()))
        );
        assert_eq!(Scope::parse("service:"), None);
        assert_eq!(Scope::parse("iris"), None);
        assert!(Scope::Service("iris".into()).covers(Some("iris")));
        assert!(!Scope::Service("iris".into()).covers(Some("other")));
        assert!(!Scope::Service("iris".into()).covers(None));
    }
}
