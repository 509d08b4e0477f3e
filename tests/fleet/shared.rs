//! Shared state across in-process replicas of one namespace, against a real etcd: a first start
//! of three replicas at once, keys and tokens that work on every replica, writes on one replica
//! applied on all, concurrent writes that never lose one another, and nothing secret in etcd in
//! plaintext.

use reqwest::{Method, StatusCode};

use serde_json::json;

use crate::support::admin_api::Admin;
use crate::support::etcd::Etcd;
use crate::support::{GatewayBuilder, MockUpstream, TestGateway, wait_until, within};

/// A replica `instance` of namespace `ns`: a key-mode service `m` at `/m` and a token-mode
/// service `tok` at `/tok`, both in front of `upstream`.
pub async fn replica(etcd: &Etcd, ns: &str, instance: &str, upstream: &str) -> TestGateway {
    GatewayBuilder::new()
        .service_with("m", "/m", upstream, "auth = \"key\"")
        .service_with("tok", "/tok", upstream, "auth = \"token\"")
        .table(&etcd.cluster_toml(ns, instance))
        .start()
        .await
}

/// The status of `POST {route}/score` on `gw` with `Authorization: Bearer {credential}`.
pub async fn score(gw: &TestGateway, route: &str, credential: &str) -> StatusCode {
    within(
        "a scoring request",
        gw.client()
            .post(gw.url(&format!("{route}/score")))
            .bearer_auth(credential)
            .body("{}")
            .send(),
    )
    .await
    .expect("scoring request")
    .status()
}

/// Waits until `credential` gets `want` on `gw`.
pub async fn wait_score(gw: &TestGateway, route: &str, credential: &str, want: StatusCode) {
    wait_until(&format!("{route} answers {want}"), || async {
        score(gw, route, credential).await == want
    })
    .await;
}

#[tokio::test]
async fn three_replicas_started_together_agree_and_apply_each_others_writes() {
    let etcd = Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let (a, b, c) = tokio::join!(
        replica(&etcd, "agree", "a", &url),
        replica(&etcd, "agree", "b", &url),
        replica(&etcd, "agree", "c", &url),
    );
    let gws = [&a, &b, &c];
    let mut admins = Vec::new();
    for gw in gws {
        admins.push(Admin::of(gw).await);
    }
    // One admin credential for the fleet, in every replica's state_dir/admin.token (0600).
    let tokens: Vec<String> = gws
        .iter()
        .map(|gw| crate::support::admin_api::bootstrap_token(&gw.dir().join("state")))
        .collect();
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(a.dir().join("state/admin.token"))
            .expect("admin.token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // One set of keys: each replica lists the same, and a key scores on every replica.
    let keys = admins[0].keys("m").await;
    for admin in &admins[1..] {
        assert_eq!(admin.keys("m").await, keys);
    }
    for gw in gws {
        assert_eq!(score(gw, "/m", &keys.0).await, StatusCode::OK);
        assert_eq!(score(gw, "/m", &keys.1).await, StatusCode::OK);
    }
    // One signing key: a token issued by any replica verifies on every replica.
    for (i, admin) in admins.iter().enumerate() {
        let token = admin.token("tok").await;
        for gw in gws {
            assert_eq!(
                score(gw, "/tok", &token).await,
                StatusCode::OK,
                "token from {i}"
            );
        }
    }

    // Regenerate the secondary on B: the call answers once B applied it; C and A follow.
    let (status, body) = admins[1]
        .call(
            Method::POST,
            "/services/m/regenerateKeys",
            Some(json!({"keyType": "Secondary"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_secondary = body["secondaryKey"]
        .as_str()
        .expect("secondaryKey")
        .to_owned();
    assert_ne!(new_secondary, keys.1);
    assert_eq!(score(&b, "/m", &new_secondary).await, StatusCode::OK);
    assert_eq!(score(&b, "/m", &keys.1).await, StatusCode::UNAUTHORIZED);
    for gw in [&a, &c] {
        wait_score(gw, "/m", &new_secondary, StatusCode::OK).await;
        wait_score(gw, "/m", &keys.1, StatusCode::UNAUTHORIZED).await;
        assert_eq!(
            score(gw, "/m", &keys.0).await,
            StatusCode::OK,
            "primary unchanged"
        );
    }

    // Rotate the signing key on A: old tokens keep verifying everywhere, new ones verify on B
    // and C as soon as they applied the rotation.
    let old_token = admins[2].token("tok").await;
    let (status, body) = admins[0]
        .call(Method::POST, "/services/tok/rotateSigningKey", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_token = admins[0].token("tok").await;
    assert_ne!(new_token, old_token);
    for gw in [&b, &c] {
        wait_score(gw, "/tok", &new_token, StatusCode::OK).await;
        assert_eq!(score(gw, "/tok", &old_token).await, StatusCode::OK);
    }
    assert_eq!(score(&a, "/tok", &old_token).await, StatusCode::OK);
}

#[tokio::test]
async fn twenty_concurrent_assignment_adds_over_three_replicas_are_all_kept() {
    let etcd = Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let (a, b, c) = tokio::join!(
        replica(&etcd, "assign", "a", &url),
        replica(&etcd, "assign", "b", &url),
        replica(&etcd, "assign", "c", &url),
    );
    let gws = [&a, &b, &c];
    let mut admins = Vec::new();
    for gw in gws {
        admins.push(Admin::of(gw).await);
    }
    let adds = (0..20).map(|i| {
        let admin = admins[i % 3].clone();
        async move {
            admin
                .call(
                    Method::POST,
                    "/role-assignments",
                    Some(json!({"principal": format!("user-{i}"), "role": "Reader"})),
                )
                .await
        }
    });
    let answers = within("20 concurrent adds", futures_util::future::join_all(adds)).await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
    }
    let principals = |list: &serde_json::Value| -> std::collections::BTreeSet<String> {
        list.as_array()
            .expect("assignments list")
            .iter()
            .filter(|a| a["source"] == "api")
            .filter_map(|a| a["principal"].as_str().map(str::to_owned))
            .collect()
    };
    let want: std::collections::BTreeSet<String> = (0..20).map(|i| format!("user-{i}")).collect();
    for admin in &admins {
        wait_until("all 20 assignments on every replica", || async {
            let (status, list) = admin.call(Method::GET, "/role-assignments", None).await;
            status == StatusCode::OK && principals(&list) == want
        })
        .await;
    }

    // A delete on one replica reaches the others.
    let (_, list) = admins[0].call(Method::GET, "/role-assignments", None).await;
    let id = list
        .as_array()
        .expect("list")
        .iter()
        .find(|a| a["principal"] == "user-7")
        .and_then(|a| a["id"].as_str())
        .expect("user-7's id")
        .to_owned();
    let (status, body) = admins[1]
        .call(Method::DELETE, &format!("/role-assignments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for admin in &admins {
        wait_until("the delete on every replica", || async {
            let (_, list) = admin.call(Method::GET, "/role-assignments", None).await;
            principals(&list).len() == 19
        })
        .await;
    }
}

#[tokio::test]
async fn no_secret_is_stored_in_etcd_in_plaintext() {
    let etcd = Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let a = replica(&etcd, "sealed", "a", &upstream.url()).await;
    let admin = Admin::of(&a).await;
    let (primary, secondary) = admin.keys("m").await;
    let credential = crate::support::admin_api::bootstrap_token(&a.dir().join("state"));
    let (status, body) = admin
        .call(Method::POST, "/services/tok/rotateSigningKey", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dump = etcd.etcdctl_get_prefix("/scoregate/sealed/").await;
    let text = String::from_utf8_lossy(&dump);
    for key in ["keys/m", "signing/tok", "admin", "seal-check"] {
        assert!(
            text.contains(&format!("/scoregate/sealed/state/{key}")),
            "{key} is stored: {text}"
        );
    }
    for secret in [primary.as_str(), secondary.as_str(), credential.as_str()] {
        assert!(
            !dump.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is in etcd in plaintext"
        );
    }
    for marker in ["PRIVATE KEY", "primaryKey", "\"d\""] {
        assert!(!text.contains(marker), "{marker:?} found in etcd: {text}");
    }
}

/// Clients that score one request after another on their replica with the key the operator has
/// handed out, counting what does not answer 200.
struct Load {
    current: std::sync::Arc<std::sync::RwLock<String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `per_replica` clients on each of `gws`, all sending `key` to `/m`.
    fn start(gws: &[std::sync::Arc<TestGateway>], per_replica: usize, key: &str) -> Self {
        use std::sync::atomic::Ordering;
        let load = Self {
            current: std::sync::Arc::new(std::sync::RwLock::new(key.to_owned())),
            stop: std::sync::Arc::default(),
            ok: std::sync::Arc::default(),
            failed: std::sync::Arc::default(),
            clients: Vec::new(),
        };
        let clients = (0..gws.len() * per_replica)
            .map(|i| {
                let gw = std::sync::Arc::clone(&gws[i % gws.len()]);
                let current = std::sync::Arc::clone(&load.current);
                let stop = std::sync::Arc::clone(&load.stop);
                let (ok, failed) = (
                    std::sync::Arc::clone(&load.ok),
                    std::sync::Arc::clone(&load.failed),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let key = current.read().expect("current key").clone();
                        match score(&gw, "/m", &key).await {
                            StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                            status => {
                                eprintln!("replica {}: {status} with a current key", i % 3);
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Self { clients, ..load }
    }

    /// Hands out `key`: the clients' next requests carry it.
    fn hand_out(&self, key: &str) {
        key.clone_into(&mut self.current.write().expect("current key"));
    }

    /// Waits until `n` more requests have been answered 200.
    async fn served(&self, n: u64) {
        let from = self.ok.load(std::sync::atomic::Ordering::Relaxed);
        wait_until("the clients to be served", || async {
            self.ok.load(std::sync::atomic::Ordering::Relaxed) >= from + n
        })
        .await;
    }

    /// Stops the clients: (answered 200, anything else).
    async fn stop(self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            within("a client to stop", client)
                .await
                .expect("client task");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// `regenerateKeys` of `slot` ("Primary" or "Secondary") through `admin`: the new key, and when
/// the answer came.
async fn regenerate(admin: &Admin, slot: &str) -> (String, std::time::Instant) {
    let key = admin.regenerate("m", slot).await;
    (key, std::time::Instant::now())
}

/// How long after `since` every replica refuses `old` and accepts `new`.
async fn converged(
    gws: &[std::sync::Arc<TestGateway>],
    old: &str,
    new: &str,
    since: std::time::Instant,
) -> std::time::Duration {
    for gw in gws {
        wait_score(gw, "/m", old, StatusCode::UNAUTHORIZED).await;
        wait_score(gw, "/m", new, StatusCode::OK).await;
    }
    since.elapsed()
}

/// Item 5: clients spread over three replicas keep scoring while the secondary is regenerated on
/// B and, once they moved to it, the primary on C. No request with a current key fails, and each
/// old key is refused on every replica within 1 s of the regeneration's answer.
#[tokio::test]
async fn rotation_under_load_across_three_replicas_fails_no_request_with_a_current_key() {
    use std::sync::Arc;
    use std::time::Duration;

    let etcd = Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let (a, b, c) = tokio::join!(
        replica(&etcd, "rotate", "a", &url),
        replica(&etcd, "rotate", "b", &url),
        replica(&etcd, "rotate", "c", &url),
    );
    let gws = [Arc::new(a), Arc::new(b), Arc::new(c)];
    let mut admins = Vec::new();
    for gw in &gws {
        admins.push(Admin::of(gw).await);
    }
    let (primary, secondary) = admins[0].keys("m").await;
    let load = Load::start(&gws, 2, &primary);
    load.served(30).await;

    // 1. Regenerate the secondary on B; the clients still use the primary.
    let (new_secondary, answered) = regenerate(&admins[1], "Secondary").await;
    let took = converged(&gws, &secondary, &new_secondary, answered).await;
    assert!(
        took < Duration::from_secs(1),
        "the old secondary was refused everywhere {took:?} after the regeneration"
    );
    load.served(30).await;

    // 2. Move the clients to the new secondary, then regenerate the primary on C.
    load.hand_out(&new_secondary);
    load.served(30).await;
    let (new_primary, answered) = regenerate(&admins[2], "Primary").await;
    let took = converged(&gws, &primary, &new_primary, answered).await;
    assert!(
        took < Duration::from_secs(1),
        "the old primary was refused everywhere {took:?} after the regeneration"
    );
    load.served(30).await;

    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "requests with a current key failed");
    assert!(ok >= 150, "{ok} requests served");
    // Every replica agrees on the final pair.
    for admin in &admins {
        assert_eq!(
            admin.keys("m").await,
            (new_primary.clone(), new_secondary.clone())
        );
    }
}
