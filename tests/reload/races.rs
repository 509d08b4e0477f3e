//! Issue 13's races, and what a refused reload leaves on disk:
//! (a) a config that fails validation in the same poll as a certificate change still lets the
//!     certificate apply;
//! (b) under a storm of alternating config and certificate changes (watcher and API reloads at
//!     once), a handshake never sees an older certificate after a newer one was served;
//! (c) a refused candidate leaves the state directory byte for byte as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::StatusCode;

use super::certs::presented;
use crate::support::admin_api::Admin;
use crate::support::certs::{self, Leaf, TestCa};
use crate::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until, within};
use crate::{CERTS_OK, RELOADS_FAILED, RELOADS_OK, count};

/// A projected volume as Kubernetes mounts a `ConfigMap` and `Secret` together: every file is a
/// symlink into `..data`, which one rename swaps to a new generation, so all files change in
/// the same instant.
struct Projected {
    dir: PathBuf,
    generation: u32,
}

impl Projected {
    fn new(dir: &Path, files: &[(&str, &str)]) -> Self {
        let mut volume = Self {
            dir: dir.to_owned(),
            generation: 0,
        };
        volume.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name))
                .expect("symlink into ..data");
        }
        volume
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let version = format!("..gen_{}", self.generation);
        std::fs::create_dir(self.dir.join(&version)).expect("generation dir");
        for (name, text) in files {
            std::fs::write(self.dir.join(&version).join(name), text).expect("write file");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }
}

fn tls_line(cert: &Path, key: &Path) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn a_rejected_config_in_the_same_poll_as_a_new_certificate_still_applies_the_certificate() {
    let upstream = MockUpstream::start().await;
    let ca = TestCa::new("race CA");
    let (one, two) = (ca.server_leaf("first"), ca.server_leaf("second"));
    let volume_dir = tempfile::tempdir().expect("volume");
    let (cert, key) = (
        volume_dir.path().join("tls.crt"),
        volume_dir.path().join("tls.key"),
    );
    let builder = |extra: &str| {
        GatewayBuilder::new()
            .plain_http()
            .server(&tls_line(&cert, &key))
            .server(extra)
            .service("iris", IRIS, &upstream.url())
    };
    let good = builder("");
    let mut volume = Projected::new(
        volume_dir.path(),
        &[
            ("scoregate.toml", ""),
            ("tls.crt", one.cert_pem.as_str()),
            ("tls.key", one.key_pem.as_str()),
        ],
    );
    let gw = good.clone().start().await;
    // The gateway's config file moves into the volume (as a ConfigMap mount would have it).
    let config_text = good.toml(gw.pki(), gw.dir());
    volume.update(&[
        ("scoregate.toml", config_text.as_str()),
        ("tls.crt", one.cert_pem.as_str()),
        ("tls.key", one.key_pem.as_str()),
    ]);
    let config_path = gw.dir().join("scoregate.toml");
    let link = gw.dir().join("scoregate.toml.link");
    std::os::unix::fs::symlink(volume.path("scoregate.toml"), &link).expect("config symlink");
    std::fs::rename(&link, &config_path).expect("config path becomes the volume's");
    wait_until(
        "the watcher to follow the config into the volume",
        || async { count(&gw, RELOADS_OK) == 1 },
    )
    .await;
    let client = certs::client_config(&[&ca], None, &[b"http/1.1"]);
    assert_eq!(presented(&gw, &client).await, one.cert_der);

    // One swap: an invalid config and a new certificate pair, seen by the same poll.
    let bad = builder("max_headers = 0").toml(gw.pki(), gw.dir());
    volume.update(&[
        ("scoregate.toml", bad.as_str()),
        ("tls.crt", two.cert_pem.as_str()),
        ("tls.key", two.key_pem.as_str()),
    ]);
    Box::pin(wait_until("the new certificate to be served", || async {
        presented(&gw, &client).await == two.cert_der
    }))
    .await;
    wait_until("the config to be refused", || async {
        count(&gw, RELOADS_FAILED) == 1
    })
    .await;
    assert_eq!(
        count(&gw, RELOADS_OK),
        1,
        "only the move into the volume applied"
    );
}

/// Serial number of the certificate a handshake got: the leaves are numbered by their CN.
fn which(leaves: &[Leaf], der: &rustls::pki_types::CertificateDer<'_>) -> usize {
    leaves
        .iter()
        .position(|l| l.cert_der == *der)
        .expect("a certificate this test wrote")
}

#[tokio::test]
async fn certificates_never_go_back_under_a_storm_of_config_and_certificate_changes() {
    const ROUNDS: usize = 12;
    let upstream = MockUpstream::start().await;
    let ca = TestCa::new("storm CA");
    let leaves: Vec<Leaf> = (0..=ROUNDS)
        .map(|i| ca.server_leaf(&format!("leaf-{i}")))
        .collect();
    let cert_dir = tempfile::tempdir().expect("cert dir");
    let (cert, key) = (
        cert_dir.path().join("server.crt"),
        cert_dir.path().join("server.key"),
    );
    std::fs::write(&cert, &leaves[0].cert_pem).expect("write cert");
    std::fs::write(&key, &leaves[0].key_pem).expect("write key");
    let builder = |timeout: usize| {
        GatewayBuilder::new()
            .plain_http()
            .server(&tls_line(&cert, &key))
            .service_with(
                "iris",
                IRIS,
                &upstream.url(),
                &format!("scoring_timeout_ms = {}", 1000 + timeout),
            )
    };
    let gw = Arc::new(builder(0).start().await);
    let admin = Admin::of(&gw).await;
    let client = certs::client_config(&[&ca], None, &[b"http/1.1"]);

    // A client handshaking in a loop records every certificate it is served.
    let done = Arc::new(AtomicBool::new(false));
    let observer = {
        let (gw, client, done) = (Arc::clone(&gw), Arc::clone(&client), Arc::clone(&done));
        let leaves = leaves.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::Acquire) {
                seen.push(which(&leaves, &presented(&gw, &client).await));
            }
            seen
        })
    };
    for (round, leaf) in leaves.iter().enumerate().skip(1) {
        certs::write_atomic(&key, &leaf.key_pem);
        certs::write_atomic(&cert, &leaf.cert_pem);
        certs::write_atomic(
            &gw.dir().join("scoregate.toml"),
            &builder(round).toml(gw.pki(), gw.dir()),
        );
        // An API reload races the watcher, which sees the same files.
        let (code, body) = admin.reload().await;
        assert_eq!(code, StatusCode::OK, "{body}");
        Box::pin(wait_until(
            "this round's certificate to be served",
            || async { presented(&gw, &client).await == leaf.cert_der },
        ))
        .await;
    }
    done.store(true, Ordering::Release);
    let seen = within("the observer to stop", observer)
        .await
        .expect("observer task");
    assert!(
        seen.len() > ROUNDS,
        "the observer handshook {} times",
        seen.len()
    );
    for pair in seen.windows(2) {
        assert!(
            pair[0] <= pair[1],
            "certificate {} was served after {}: {seen:?}",
            pair[1],
            pair[0]
        );
    }
    assert!(count(&gw, CERTS_OK) + count(&gw, RELOADS_OK) >= 1);
}

/// Every file under `dir`: its bytes and mode.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list state dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path.clone());
                files.insert(path, (Vec::new(), meta.permissions().mode()));
            } else {
                let bytes = std::fs::read(&path).expect("read state file");
                files.insert(path, (bytes, meta.permissions().mode()));
            }
        }
    }
    files
}

#[tokio::test]
async fn a_refused_candidate_leaves_the_state_directory_untouched() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let gw: TestGateway = GatewayBuilder::new()
        .service_with("iris", IRIS, &url, "auth = \"key\"")
        .start()
        .await;
    let admin = Admin::of(&gw).await;
    // A management call answers from the published state, so everything the first start
    // generated has been written by now (the admin credential comes first).
    admin.keys("iris").await;
    let state = gw.dir().join("state");
    let before = snapshot(&state);
    assert!(before.keys().any(|p| p.ends_with("keys/iris.json")));

    // A new key-mode service (whose keys a build would generate) and, after it, a token-mode
    // service whose trusted issuer's JWKS file is unusable: the candidate is refused.
    let jwks = gw.dir().join("bad-jwks.json");
    std::fs::write(&jwks, "{\"keys\": 7}").expect("write bad JWKS");
    crate::rewrite(
        &gw,
        &GatewayBuilder::new()
            .service_with("iris", IRIS, &url, "auth = \"key\"")
            .service_with("fresh", "/api/v1/service/fresh", &url, "auth = \"key\"")
            .service_with(
                "tok",
                "/api/v1/service/tok",
                &url,
                &format!(
                    "auth = \"token\"\n[[service.token.trusted_issuer]]\nissuer = \"https://idp\"\naudience = \"tok\"\njwks_file = \"{}\"",
                    jwks.display()
                ),
            ),
    );
    let (code, body) = admin.reload().await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(snapshot(&state), before, "the state directory is unchanged");
    assert!(!state.join("keys/fresh.json").exists());

    // The same service in an acceptable configuration is created, with its keys.
    crate::rewrite(
        &gw,
        &GatewayBuilder::new()
            .service_with("iris", IRIS, &url, "auth = \"key\"")
            .service_with("fresh", "/api/v1/service/fresh", &url, "auth = \"key\""),
    );
    let (code, body) = admin.reload().await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(state.join("keys/fresh.json").exists());
    let (primary, _) = admin.keys("fresh").await;
    let resp = within(
        "a call with the new service's key",
        gw.client()
            .get(gw.url("/api/v1/service/fresh/echo"))
            .bearer_auth(primary)
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
}
