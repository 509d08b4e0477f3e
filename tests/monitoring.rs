//! The monitoring pack against a running gateway: every metric name that
//! `deploy/monitoring/grafana-dashboard.json` and `deploy/monitoring/prometheus-rules.yaml` use is
//! exported by a real gateway scraped over its metrics listener, once traffic of each kind has
//! created the series that appear at first use. Names that exist only in fleet mode are listed in
//! [`FLEET_ONLY`], which a gateway in fleet mode exports (checked against a real etcd); no other
//! name may be missing.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::StatusCode;
use support::admin_api::Admin;
use support::process::free_port;
use support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, within};

/// Used by the pack, exported only by a gateway in fleet mode (`[cluster] backend = "etcd"`,
/// issue 14). Keep this list exact: a name here that the pack stops using fails the test too.
const FLEET_ONLY: [&str; 2] = [
    "scoregate_cluster_applied_revision",
    "scoregate_cluster_connected",
];

/// Every `scoregate_*` and `process_*` name in a file of the monitoring pack.
fn names_used(file: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices(['s', 'p']) {
        let rest = &text[i..];
        if !(rest.starts_with("scoregate_") || rest.starts_with("process_")) {
            continue;
        }
        let preceded_by_word = text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if preceded_by_word {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

/// The sample names of a Prometheus text exposition.
fn names_exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.split(['{', ' '])
                .next()
                .expect("a sample line has a name")
                .to_owned()
        })
        .collect()
}

/// One scrape of `gw`'s metrics listener.
async fn scrape(gw: &TestGateway) -> String {
    let url = format!(
        "http://{}/metrics",
        gw.metrics_addr.expect("metrics listener")
    );
    within("scrape", async {
        gw.admin_client()
            .get(&url)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text")
    })
    .await
}

/// A gateway with every kind of service, driven through each outcome the pack charts.
async fn driven_gateway(upstream: &MockUpstream) -> TestGateway {
    let gw = GatewayBuilder::new()
        .split_admin_plane()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "auth = \"key\"\nmax_body_bytes = 16",
        )
        .service_with("tok", "/tok", &upstream.url(), "auth = \"token\"")
        .service("down", "/down", &format!("http://{}", free_port()))
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    let (primary, _) = admin.keys("iris").await;
    let score = gw.url("/api/v1/service/iris/echo");
    let send = |req: reqwest::RequestBuilder| async move {
        within("scoring call", req.send())
            .await
            .expect("the gateway answered")
            .status()
    };
    let c = gw.client();
    assert_eq!(
        send(c.post(&score).bearer_auth(&primary).body("{}")).await,
        StatusCode::OK
    );
    assert_eq!(
        send(c.post(&score).body("{}")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(c.post(&score).bearer_auth(&primary).body("x".repeat(64))).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        send(c.post(gw.url("/down/score")).body("{}")).await,
        StatusCode::BAD_GATEWAY
    );
    gw
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let upstream = MockUpstream::start().await;
    let gw = driven_gateway(&upstream).await;
    let exported = names_exported(&scrape(&gw).await);

    let dashboard = names_used("grafana-dashboard.json");
    let rules = names_used("prometheus-rules.yaml");
    assert!(
        dashboard.len() >= 20 && rules.len() >= 10,
        "names found: dashboard {dashboard:?}, rules {rules:?}"
    );
    let used: BTreeSet<String> = dashboard.union(&rules).cloned().collect();
    let missing: BTreeSet<&str> = used
        .iter()
        .map(String::as_str)
        .filter(|n| !exported.contains(*n))
        .collect();
    assert_eq!(
        missing,
        FLEET_ONLY.into_iter().collect(),
        "used by the monitoring pack but not exported (other than the fleet-only names)"
    );
    for name in FLEET_ONLY {
        assert!(
            used.contains(name),
            "{name} is listed as fleet-only but no longer used"
        );
    }
}

/// Series that carry `service="<name>"` in a scrape.
fn series_of(text: &str, service: &str) -> usize {
    let label = format!("service=\"{service}\"");
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .count()
}

/// Cardinality scales with services (issue 16): an idle key-mode service has 10 series and one
/// that serves successful calls at most 40 (the README states both numbers).
#[tokio::test]
async fn a_key_mode_service_serving_calls_has_at_most_40_series() {
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .split_admin_plane()
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .start()
        .await;
    // The health gauge appears with the first probe's result.
    support::wait_until("the first health probe", || async {
        scrape(&gw)
            .await
            .contains("scoregate_upstream_healthy{service=\"iris\"} 1")
    })
    .await;
    assert_eq!(series_of(&scrape(&gw).await, "iris"), 10, "idle service");
    let (primary, _) = Admin::of(&gw).await.keys("iris").await;
    let res = within(
        "scoring call",
        gw.client()
            .post(gw.url("/api/v1/service/iris/score"))
            .bearer_auth(&primary)
            .body("{}")
            .send(),
    )
    .await
    .expect("the gateway answered");
    assert_eq!(res.status(), StatusCode::OK);
    let after = scrape(&gw).await;
    let serving = series_of(&after, "iris");
    assert!(
        (11..=40).contains(&serving),
        "a service serving calls has {serving} series:\n{after}"
    );
}

/// The fleet-only names are exported by a gateway in fleet mode (a real etcd), so every name the
/// pack uses is exported by some running gateway.
#[tokio::test]
async fn a_fleet_mode_gateway_exports_the_fleet_only_names() {
    let etcd = support::etcd::Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .split_admin_plane()
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .table(&etcd.cluster_toml("monitoring", "pod-a"))
        .start()
        .await;
    gw.wait_ready().await;
    let exported = names_exported(&scrape(&gw).await);
    for name in FLEET_ONLY {
        assert!(exported.contains(name), "{name} not exported in fleet mode");
    }
}
