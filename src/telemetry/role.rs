//! Which replica wrote a record: `RoleInstance` (Application Insights' `cloud_RoleInstance`).
//!
//! [`instance`] is the one place the instance name is decided: fleet mode's `[cluster] instance`
//! when configured, else the pod or host name (which is also `[cluster] instance`'s default).

use crate::config::default_instance;

/// The instance name: `configured` (fleet mode's `[cluster] instance`) if given, else
/// [`default_instance`], else `"unknown"`.
pub fn instance(configured: Option<&str>) -> String {
    configured
        .and_then(non_empty)
        .or_else(default_instance)
        .unwrap_or_else(|| "unknown".to_owned())
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_wins_then_the_host() {
        assert_eq!(instance(Some("replica-7")), "replica-7");
        // Blank is not a name: fall through to the environment or the host.
        let derived = instance(Some("  "));
        assert!(!derived.trim().is_empty() && derived == derived.trim());
    }
}
