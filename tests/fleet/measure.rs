//! Propagation measurement (issue 14 item 4), run by hand: `cargo test --locked --test fleet
//! measure -- --ignored --nocapture`. Not a pass/fail check (no wall-clock assertion): it
//! prints change-to-applied times over 60 key regenerations on replica A, measured until replica
//! B accepts the new key (B polled every millisecond), for loadtest/RESULTS.md.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::shared::{replica, score};
use crate::support::admin_api::Admin;
use crate::support::etcd::Etcd;
use crate::support::{MockUpstream, within};

#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn measure_propagation_of_a_regeneration_to_another_replica() {
    const ROUNDS: usize = 60;
    let etcd = Etcd::start().await;
    let upstream = MockUpstream::start().await;
    let url = upstream.url();
    let (a, b) = tokio::join!(
        replica(&etcd, "measure", "a", &url),
        replica(&etcd, "measure", "b", &url)
    );
    let admin = Admin::of(&a).await;
    let mut on_b = Vec::with_capacity(ROUNDS);
    let mut on_a = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let slot = if i % 2 == 0 { "Primary" } else { "Secondary" };
        let start = Instant::now();
        let key = admin.regenerate("m", slot).await;
        on_a.push(start.elapsed());
        within("B applies the regeneration", async {
            while score(&b, "/m", &key).await != StatusCode::OK {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        on_b.push(start.elapsed());
    }
    // Nearest rank: the value at rank ceil(p/100 * n) (p in percent).
    let pct = |v: &mut Vec<Duration>, p: usize| {
        v.sort();
        let rank = (p * v.len()).div_ceil(100).max(1);
        v[rank - 1]
    };
    println!(
        "regenerateKeys answered on A (committed + applied on A): p50 {:?} p99 {:?} max {:?}",
        pct(&mut on_a, 50),
        pct(&mut on_a, 99),
        pct(&mut on_a, 100)
    );
    println!(
        "change to applied on B ({ROUNDS} changes): p50 {:?} p99 {:?} max {:?}",
        pct(&mut on_b, 50),
        pct(&mut on_b, 99),
        pct(&mut on_b, 100)
    );
}
