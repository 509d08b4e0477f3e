//! Which replica wrote a record: `RoleInstance` (Application Insights' `cloud_RoleInstance`).
//!
//! [`instance`] is the one place the instance name is decided, so a configured name (a fleet's
//! `[cluster] instance`) can take precedence later without touching its callers.

use super::POD_NAME_ENV;

/// The instance name: `configured` if given, else `$POD_NAME` (set from the pod's
/// `metadata.name` by the Kubernetes kit), else the host name, else `"unknown"`.
pub fn instance(configured: Option<&str>) -> String {
    let non_empty = |s: String| {
        let s = s.trim().to_owned();
        (!s.is_empty()).then_some(s)
    };
    configured
        .map(str::to_owned)
        .and_then(non_empty)
        .or_else(|| std::env::var(POD_NAME_ENV).ok().and_then(non_empty))
        .or_else(|| host_name().and_then(non_empty))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The kernel's host name (Linux), else what the shell exported.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
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
