//! Reloads under load: client tasks keep calling the gateway while certificates rotate or the
//! configuration of another service changes, and not one request may fail. Progress between
//! steps is awaited on the clients' success counter, so every change lands in the middle of
//! traffic.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use rustls::ClientConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::reload::certs::gateway_with_cert;
use crate::support::admin_api::Admin;
use crate::support::certs::{self, SecretVolume, TestCa};
use crate::support::{GatewayBuilder, IRIS, MockUpstream, wait_until, within};
use crate::{CERTS_FAILED, CERTS_OK, count, rewrite};

/// What the client tasks saw.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
    /// Server certificates presented (DER), for the rotation test.
    certs: HashSet<Vec<u8>>,
}

type Shared = Arc<Mutex<Tally>>;

fn tally(shared: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    shared.lock().expect("tally lock")
}

/// Waits until the clients have completed `more` further requests.
async fn more_traffic(shared: &Shared, more: usize) {
    let target = tally(shared).ok + more;
    wait_until(&format!("{more} more successful requests"), || async {
        tally(shared).ok >= target
    })
    .await;
}

/// One request on a new TLS connection (`Connection: close`); returns the certificate seen.
async fn fresh_connection_request(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    url: String,
) -> Result<Vec<u8>, String> {
    let tls = certs::try_connect(addr, config)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = certs::peer_leaf(&tls).to_vec();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::get(url)
        .header("host", "localhost")
        .header("connection", "close")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if status == StatusCode::OK {
        Ok(leaf)
    } else {
        Err(format!("status {status}"))
    }
}

/// Runs `one` in a loop until `stop`, counting into `shared`.
fn client_task<F, Fut>(shared: &Shared, stop: &CancellationToken, one: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<u8>, String>> + Send,
{
    let (shared, stop) = (Arc::clone(shared), stop.clone());
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let outcome = one().await;
            let mut t = tally(&shared);
            match outcome {
                Ok(cert) => {
                    t.ok += 1;
                    if !cert.is_empty() {
                        t.certs.insert(cert);
                    }
                }
                Err(e) => t.failures.push(e),
            }
        }
    })
}

async fn stop_clients(stop: &CancellationToken, clients: Vec<JoinHandle<()>>, shared: &Shared) {
    stop.cancel();
    for client in clients {
        within("a client task to stop", client)
            .await
            .expect("client task did not panic");
    }
    let t = tally(shared);
    assert!(
        t.failures.is_empty(),
        "{} failed request(s): {:?}",
        t.failures.len(),
        t.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_twice_under_load_without_a_failed_request() {
    let upstream = MockUpstream::start().await;
    let (ca_a, ca_b) = (TestCa::new("CA a"), TestCa::new("CA b"));
    // A new CA, then the first CA again with a new key and serial.
    let leaves = [
        ca_a.server_leaf("first"),
        ca_b.server_leaf("second"),
        ca_a.server_leaf("third"),
    ];
    let dir = tempfile::tempdir().expect("secret volume");
    let mut volume = SecretVolume::new(dir.path(), &leaves[0]);
    let gw = gateway_with_cert(&volume.cert_path(), &volume.key_path(), &upstream).await;
    let config = certs::client_config(&[&ca_a, &ca_b], None, &[b"http/1.1"]);

    let shared = Shared::default();
    let stop = CancellationToken::new();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, config, url) = (
                gw.scoring_addr,
                Arc::clone(&config),
                gw.url(&format!("{IRIS}/echo")),
            );
            client_task(&shared, &stop, move || {
                fresh_connection_request(addr, Arc::clone(&config), url.clone())
            })
        })
        .collect();

    more_traffic(&shared, 20).await;
    for leaf in &leaves[1..] {
        volume.update(leaf);
        let der = leaf.cert_der.to_vec();
        wait_until("clients to be handed the new certificate", || async {
            tally(&shared).certs.contains(&der)
        })
        .await;
        more_traffic(&shared, 20).await;
    }
    stop_clients(&stop, clients, &shared).await;

    assert_eq!(
        tally(&shared).certs.len(),
        3,
        "every certificate was served"
    );
    wait_until("both rotations to be counted", || async {
        count(&gw, CERTS_OK) >= 2
    })
    .await;
    assert_eq!(count(&gw, CERTS_FAILED), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_under_load_never_fail_a_request_to_an_unchanged_service() {
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let config = |i: usize| {
        let mut b = GatewayBuilder::new()
            .service("iris", IRIS, &url)
            .service_with(
                "other",
                &format!("/api/v1/service/other-{i}"),
                &url,
                &format!("scoring_timeout_ms = {}", 1000 + i),
            );
        if i % 2 == 1 {
            b = b.service_with("extra", "/api/v1/service/extra", &url, "auth = \"key\"");
        }
        b
    };
    let gw = config(0).start().await;
    let admin = Admin::of(&gw).await;

    let shared = Shared::default();
    let stop = CancellationToken::new();
    let target = gw.url(&format!("{IRIS}/echo"));
    let mut clients = Vec::new();
    // Pooled HTTP/1.1 connections, one multiplexed HTTP/2 connection, and a new client (so a
    // new connection) per request.
    for client in [
        gw.client().clone(),
        gw.client().clone(),
        gw.h2_client().clone(),
    ] {
        let target = target.clone();
        clients.push(client_task(&shared, &stop, move || {
            let (client, target) = (client.clone(), target.clone());
            async move { pooled_request(&client, &target).await }
        }));
    }
    let (pki, addr) = (gw.pki().clone(), gw.scoring_addr);
    let fresh_target = target.clone();
    clients.push(client_task(&shared, &stop, move || {
        let client = pki.http1_client(addr);
        let target = fresh_target.clone();
        async move { pooled_request(&client, &target).await }
    }));

    more_traffic(&shared, 20).await;
    for i in 1..=6 {
        rewrite(&gw, &config(i));
        let (code, summary) = admin.reload().await;
        assert_eq!(code, StatusCode::OK, "reload {i}: {summary}");
        let (code, _, _) = crate::support::check::send_json(
            gw.client()
                .get(gw.url(&format!("/api/v1/service/other-{i}/echo"))),
        )
        .await;
        assert_eq!(
            code,
            StatusCode::OK,
            "the changed service follows reload {i}"
        );
        more_traffic(&shared, 20).await;
    }
    stop_clients(&stop, clients, &shared).await;
}

async fn pooled_request(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    resp.bytes().await.map_err(|e| e.to_string())?;
    if status == StatusCode::OK {
        Ok(Vec::new())
    } else {
        Err(format!("status {status}"))
    }
}
