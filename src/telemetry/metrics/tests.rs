//! The exported series: fixed label values, and which series exist for which kind of service.

use http::Method;

use super::{Metrics, ServiceMetrics, UNROUTED};
use crate::auth::KeySlot;
use crate::error::{AuthFailure, GatewayError};

fn text(m: &Metrics) -> String {
    String::from_utf8(m.render()).expect("utf8")
}

/// The sample lines (not comments) that carry `service="{service}"`, sorted.
fn series_of(m: &Metrics, service: &str) -> Vec<String> {
    let label = format!("service=\"{service}\"");
    let mut series: Vec<String> = text(m)
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_owned()
        })
        .collect();
    series.sort();
    series
}

#[test]
fn request_counter_uses_fixed_labels() {
    let m = Metrics::new();
    let s = ServiceMetrics::new(&m, "iris", "key");
    s.count_request(&Method::POST, 200);
    s.count_request(&Method::from_bytes(b"BREW").expect("method"), 418);
    let text = text(&m);
    assert!(
        text.contains(
            r#"scoregate_requests_total{method="POST",service="iris",status_class="2xx"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"scoregate_requests_total{method="OTHER",service="iris",status_class="4xx"} 1"#
        ),
        "{text}"
    );
    assert!(!text.contains("BREW"));
    assert!(!text.contains("auth_mode"), "constant per service: {text}");
    assert!(text.contains(r#"scoregate_build_info{version=""#));
}

#[test]
fn an_idle_service_pre_creates_only_what_can_occur_in_its_mode() {
    let m = Metrics::new();
    let _key = ServiceMetrics::new(&m, "k", "key");
    let _token = ServiceMetrics::new(&m, "t", "token");
    let _none = ServiceMetrics::new(&m, "n", "none");
    let _unrouted = ServiceMetrics::new(&m, UNROUTED, "none");
    let common = |s: &str| {
        vec![
            format!(r#"scoregate_inflight_requests{{service="{s}"}}"#),
            format!(r#"scoregate_queue_length{{service="{s}"}}"#),
            format!(
                r#"scoregate_requests_total{{method="POST",service="{s}",status_class="2xx"}}"#
            ),
            format!(
                r#"scoregate_requests_total{{method="POST",service="{s}",status_class="5xx"}}"#
            ),
            format!(r#"scoregate_upstream_slots{{service="{s}"}}"#),
        ]
    };
    let mut key = common("k");
    key.extend([
        r#"scoregate_key_auth_total{service="k",slot="primary"}"#.to_owned(),
        r#"scoregate_key_auth_total{service="k",slot="secondary"}"#.to_owned(),
        r#"scoregate_key_reloads_total{result="error",service="k"}"#.to_owned(),
    ]);
    key.sort();
    assert_eq!(series_of(&m, "k"), key);
    let mut token = common("t");
    token.extend([
        r#"scoregate_token_cache_total{result="hit",service="t"}"#.to_owned(),
        r#"scoregate_token_cache_total{result="miss",service="t"}"#.to_owned(),
        r#"scoregate_signing_key_reloads_total{result="error",service="t"}"#.to_owned(),
    ]);
    token.sort();
    assert_eq!(series_of(&m, "t"), token);
    assert_eq!(series_of(&m, "n"), common("n"));
    assert_eq!(series_of(&m, UNROUTED), Vec::<String>::new());
}

#[test]
fn a_busy_key_service_has_about_forty_series() {
    let m = Metrics::new();
    let s = ServiceMetrics::new(&m, "iris", "key");
    s.count_request(&Method::POST, 200);
    s.observe_duration(200, 0.004);
    s.observe_upstream_duration(0.003);
    s.observe_queue_wait(0.0);
    s.count_key_auth(KeySlot::Primary);
    // Slots and the key reload error counter included; without the upstream health gauge and
    // connection counter, which `health` and the upstream client add (40 in a running gateway,
    // tests/monitoring.rs).
    assert_eq!(
        series_of(&m, "iris").len(),
        38,
        "{:#?}",
        series_of(&m, "iris")
    );
    let text = text(&m);
    assert!(
        text.contains(
            r#"scoregate_request_duration_seconds_bucket{service="iris",status_class="2xx",le="0.005"} 1"#
        ),
        "{text}"
    );
}

#[test]
fn refusals_appear_by_reason_when_they_happen() {
    let m = Metrics::new();
    let s = ServiceMetrics::new(&m, "iris", "key");
    assert!(s.count_admission_rejection(&GatewayError::QueueFull { limit: 1 }));
    assert!(s.count_admission_rejection(&GatewayError::ClientNotAllowed));
    assert!(!s.count_admission_rejection(&GatewayError::RouteNotFound));
    s.count_auth_failure(AuthFailure::Invalid);
    let text = text(&m);
    for series in [
        r#"scoregate_admission_rejections_total{reason="queue_full",service="iris"} 1"#,
        r#"scoregate_admission_rejections_total{reason="cidr_denied",service="iris"} 1"#,
        r#"scoregate_auth_failures_total{reason="invalid_credentials",service="iris"} 1"#,
    ] {
        assert!(text.contains(series), "{series}\n{text}");
    }
    let series = series_of(&m, "iris").join("\n");
    assert!(!series.contains("rate_limited"), "{series}");
    assert!(!series.contains("missing_credentials"), "{series}");
}

#[test]
fn key_counts_never_reach_token_or_unrouted_series() {
    let m = Metrics::new();
    let t = ServiceMetrics::new(&m, "t", "token");
    let u = ServiceMetrics::new(&m, UNROUTED, "none");
    t.count_key_auth(KeySlot::Primary);
    u.count_key_auth(KeySlot::Secondary);
    u.inflight.inc();
    u.token_cache_hit.inc();
    let text = text(&m);
    assert!(!text.contains("scoregate_key_auth_total"), "{text}");
    assert!(!text.contains(r#"service="-""#), "{text}");
}

#[cfg(target_os = "linux")]
#[test]
fn process_collector_is_registered() {
    let text = text(&Metrics::new());
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(&format!("\n{name} ")), "{name}\n{text}");
    }
}
