//! Who is calling: turns a request's credentials into a [`Principal`] for the service it targets,
//! or a typed authentication failure. Builds no responses; `proxy` maps failures through
//! `GatewayError`.

use std::sync::Arc;

/// The authenticated caller of a scoring request. Never holds a credential, only what records and
/// metrics may show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Principal {
    /// The service does not authenticate (`auth = "none"`), or authentication has not run.
    #[default]
    Anonymous,
    /// A key-mode caller, identified by the key slot that matched.
    Key(KeySlot),
    /// A token-mode caller, identified by the token's subject.
    Token {
        subject: Arc<str>,
        /// The token was used after its `refreshAfter` point.
        past_refresh: bool,
    },
}

impl Principal {
    /// The value of the record's `Principal` field.
    pub fn record_name(&self) -> Option<String> {
        match self {
            Self::Anonymous => None,
            Self::Key(slot) => Some(slot.as_str().to_owned()),
            Self::Token { subject, .. } => Some(subject.to_string()),
        }
    }
}

/// The two key slots of a key-mode service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySlot {
    Primary,
    Secondary,
}

impl KeySlot {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}
