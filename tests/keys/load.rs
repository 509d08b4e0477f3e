//! A key rotation under concurrent load: no request made with a current key may fail.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::support::{GatewayBuilder, IRIS, MockUpstream, wait_until, within};
use super::{SCORE, score};

/// What the load clients share with the rotator.
#[derive(Debug)]
struct Load {
    /// Requests each client completed successfully.
    done: Vec<AtomicU64>,
    /// The newest key generation each client has completed a request with.
    adopted: Vec<AtomicU64>,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn new(clients: usize) -> Arc<Self> {
        Arc::new(Self {
            done: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            adopted: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            failures: Mutex::new(Vec::new()),
        })
    }

    /// Lets the load run for at least [`PHASE`] and until every client made 10 more requests.
    async fn phase(&self, what: &str) {
        let floor = self.min_done() + 10;
        tokio::join!(
            tokio::time::sleep(PHASE),
            wait_until(what, || async { self.min_done() >= floor })
        );
    }

    fn min_done(&self) -> u64 {
        self.done
            .iter()
            .map(|d| d.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }

    fn all_adopted(&self, generation: u64) -> bool {
        self.adopted
            .iter()
            .all(|a| a.load(Ordering::SeqCst) >= generation)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("failures lock").clone()
    }
}

/// One client: always sends the newest key it was given; never a key it knows was replaced.
async fn load_client(
    i: usize,
    client: reqwest::Client,
    url: String,
    mut current: watch::Receiver<(u64, String)>,
    load: Arc<Load>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let (generation, key) = current.borrow_and_update().clone();
        let outcome = client
            .post(&url)
            .bearer_auth(&key)
            .body(r#"{"data": [[1, 2, 3, 4]]}"#)
            .send()
            .await;
        let status = match outcome {
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Ok(_) => Ok(status),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match status {
            Ok(StatusCode::OK) => {
                load.done[i].fetch_add(1, Ordering::SeqCst);
                load.adopted[i].fetch_max(generation, Ordering::SeqCst);
            }
            other => load.failures.lock().expect("failures lock").push(format!(
                "client {i}, key generation {generation}: {other:?}"
            )),
        }
    }
}

/// How long each phase of the rotation keeps the load running, at least.
const PHASE: Duration = Duration::from_millis(750);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_fails_no_request_made_with_a_current_key() {
    const CLIENTS: usize = 8;
    let upstream = MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "auth = \"key\"\nmax_concurrent_requests = 1024",
        )
        .start()
        .await;
    gw.wait_ready().await;
    let (p0, s0) = gw.list_keys("iris").await;
    let load = Load::new(CLIENTS);
    let (publish, current) = watch::channel((0, p0.clone()));
    let stop = CancellationToken::new();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            // Half over HTTP/1.1, half over HTTP/2.
            let client = if i % 2 == 0 {
                gw.client()
            } else {
                gw.h2_client()
            };
            tokio::spawn(load_client(
                i,
                client.clone(),
                gw.url(SCORE),
                current.clone(),
                Arc::clone(&load),
                stop.clone(),
            ))
        })
        .collect();

    load.phase("load on the original primary").await;

    // Standard rotation: replace the unused secondary, move everyone to it, then replace the
    // primary. Clients learn a key only from the API's answer, i.e. after it is in force.
    let s1 = gw.regenerate("iris", "Secondary", None).await["secondaryKey"]
        .as_str()
        .expect("new secondary")
        .to_owned();
    publish.send_replace((1, s1.clone()));
    wait_until("every client to move to the new secondary", || async {
        load.all_adopted(1)
    })
    .await;
    load.phase("load on the new secondary").await;

    let p1 = gw.regenerate("iris", "Primary", None).await["primaryKey"]
        .as_str()
        .expect("new primary")
        .to_owned();
    load.phase("load while the primary was replaced").await;
    publish.send_replace((2, p1.clone()));
    wait_until("every client to move to the new primary", || async {
        load.all_adopted(2)
    })
    .await;
    load.phase("load on the new primary").await;

    stop.cancel();
    for client in clients {
        within("a load client to stop", client)
            .await
            .expect("load client did not panic");
    }
    let failures = load.failures();
    assert!(
        failures.is_empty(),
        "{} failed request(s): {failures:#?}",
        failures.len()
    );
    let total: u64 = load.done.iter().map(|d| d.load(Ordering::SeqCst)).sum();
    assert!(total >= 40 * CLIENTS as u64, "only {total} requests");
    let by_slot = |slot: &str| {
        gw.counter(&format!(
            r#"scoregate_key_auth_total{{service="iris",slot="{slot}"}}"#
        ))
    };
    assert_eq!(
        by_slot("primary") + by_slot("secondary"),
        total,
        "every success was a key authentication"
    );
    for (what, key, expected) in [
        ("original primary", &p0, StatusCode::UNAUTHORIZED),
        ("original secondary", &s0, StatusCode::UNAUTHORIZED),
        ("new primary", &p1, StatusCode::OK),
        ("new secondary", &s1, StatusCode::OK),
    ] {
        assert_eq!(score(&gw, key).await, expected, "{what}");
    }
}
