//! Fleet mode against an etcd set up the way production etcd is: client TLS with a client
//! certificate it verifies (`--client-cert-auth`), and user authentication with a role limited
//! to the namespace. Replicas share and apply state through it; a management write still
//! commits after etcd stopped accepting the replica's auth token (it logs in again); a wrong
//! password or a missing client certificate is a clear error, not a hang.

use reqwest::{Method, StatusCode};

use super::shared::{score, wait_score};
use crate::support::admin_api::Admin;
use crate::support::etcd::Etcd;
use crate::support::process::run;
use crate::support::{DEADLINE, GatewayBuilder, MockUpstream, TestGateway};

const USER: &str = "scoregate";
const PASSWORD: &str = "fleet-password";

/// A TLS-only etcd with authentication on; user [`USER`] may use `namespace`.
async fn secure_etcd(namespace: &str) -> Etcd {
    let mut etcd = Etcd::start_secure().await;
    etcd.enable_auth(USER, PASSWORD, namespace).await;
    etcd
}

/// The `[cluster]` table of replica `instance`, logging in with `password` (written to a file
/// beside the seal key).
fn table(etcd: &Etcd, namespace: &str, instance: &str, password: &str) -> String {
    let file = etcd.dir().join(format!("password-{instance}"));
    std::fs::write(&file, format!("{password}\n")).expect("write password file");
    format!(
        "{}username = \"{USER}\"\npassword_file = \"{}\"\n",
        etcd.cluster_toml(namespace, instance),
        file.display()
    )
}

fn builder(upstream: &str) -> GatewayBuilder {
    GatewayBuilder::new()
        .service_with("m", "/m", upstream, "auth = \"key\"")
        .service_with("tok", "/tok", upstream, "auth = \"token\"")
}

async fn replica(etcd: &Etcd, ns: &str, instance: &str, upstream: &str) -> TestGateway {
    builder(upstream)
        .table(&table(etcd, ns, instance, PASSWORD))
        .start()
        .await
}

#[tokio::test]
async fn replicas_share_state_through_an_etcd_with_client_certificates_and_a_login() {
    let etcd = secure_etcd("sec").await;
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let (a, b) = tokio::join!(
        replica(&etcd, "sec", "a", &url),
        replica(&etcd, "sec", "b", &url)
    );
    let (admin_a, admin_b) = (Admin::of(&a).await, Admin::of(&b).await);
    for gw in [&a, &b] {
        assert_eq!(gw.metric("scoregate_cluster_connected"), Some(1.0));
    }
    // One set of keys and one signing key for both.
    let keys = admin_a.keys("m").await;
    assert_eq!(admin_b.keys("m").await, keys);
    let token = admin_a.token("tok").await;
    assert_eq!(score(&b, "/tok", &token).await, StatusCode::OK);

    // A write on A reaches B.
    let secondary = admin_a.regenerate("m", "Secondary").await;
    wait_score(&b, "/m", &secondary, StatusCode::OK).await;
    wait_score(&b, "/m", &keys.1, StatusCode::UNAUTHORIZED).await;

    // etcd forgets every auth token (auth turned off and on, as after an auth-store change):
    // the next write on B logs in again and commits, and A applies it.
    etcd.etcdctl_ok(&["auth".into(), "disable".into()]).await;
    etcd.etcdctl_ok(&["auth".into(), "enable".into()]).await;
    let primary = admin_b.regenerate("m", "Primary").await;
    wait_score(&a, "/m", &primary, StatusCode::OK).await;
    wait_score(&a, "/m", &keys.0, StatusCode::UNAUTHORIZED).await;

    // GET /cluster sees the TLS endpoint healthy and both replicas.
    let (status, view) = admin_a.call(Method::GET, "/cluster", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let endpoints = view["endpoints"].as_array().expect("endpoints");
    assert!(
        endpoints.iter().all(|e| e["healthy"] == true
            && e["endpoint"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://"))),
        "{view}"
    );
    let replicas = view["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2, "{view}");

    // What the fleet stored is sealed (etcdctl reads it as root, over TLS).
    let stored = etcd.etcdctl_get_prefix("/scoregate/sec/").await;
    let stored = String::from_utf8_lossy(&stored);
    for secret in [&primary, &secondary, &keys.1] {
        assert!(
            !stored.contains(secret.as_str()),
            "a key in plaintext in etcd"
        );
    }
}

#[tokio::test]
async fn a_wrong_password_or_no_client_certificate_is_a_clear_error() {
    let etcd = secure_etcd("denied").await;
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().expect("config dir");

    // A wrong password: etcd refuses the login, and the command says so.
    let (_pki, path) = builder(&upstream.url())
        .table(&table(&etcd, "denied", "wrong", "not-the-password"))
        .write(dir.path());
    let path = path.display().to_string();
    let out = run(&["cluster", "status", "--config", &path], DEADLINE).await;
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("authentication failed"),
        "the error names the refused login: {}",
        out.stderr
    );
    let out = run(&["run", "--config", &path], DEADLINE).await;
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("authentication failed"),
        "{}",
        out.stderr
    );

    // No client certificate: the TLS handshake is refused; the replica reports etcd as
    // unreachable and, never having synced, does not start serving invented state.
    let text = table(&etcd, "denied", "nocert", PASSWORD)
        .lines()
        .filter(|l| !l.starts_with("cert =") && !l.starts_with("key ="))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().expect("config dir");
    let (_pki, path) = builder(&upstream.url()).table(&text).write(dir.path());
    let path = path.display().to_string();
    let out = run(&["cluster", "status", "--config", &path], DEADLINE).await;
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains(&etcd.endpoints()[0])
            && out.stderr.contains("set [cluster] cert and key"),
        "the error names the endpoint and what to check: {}",
        out.stderr
    );
}
