//! Origin failover timeline: three real origins and an edge on loopback, a room published to one
//! origin and watched through the edge; the origin is killed (-9) and the encoder retries its
//! backup origin at once each time it is refused ([`scenarios::origin_failover`], the scenario
//! of the chaos tests `edge_follows_the_room_to_a_new_origin` and
//! `leader_death_moves_its_rooms_within_seconds`). Each case runs `FAILOVER_RUNS` times (default
//! 5), seeds `CHAOS_SEED`, `CHAOS_SEED + 1`, ... (random when unset), a fresh cluster each run.
//!
//! Printed per case, from the kill: the room freed in the placement table, the republish
//! accepted, the first LL-HLS part of the new session on the new origin and on the edge; p50
//! and max over the runs.
//!
//! ```sh
//! cargo build -p streamhub-origin -p streamhub-edge
//! STREAMHUB_ORIGIN_BIN=target/debug/streamhub-origin STREAMHUB_EDGE_BIN=target/debug/streamhub-edge \
//!   cargo run -p streamhub-chaos-tests --bin failover_bench
//! ```

use std::time::Duration;

use rand::Rng;
use streamhub_chaos_tests::scenarios::{origin_failover, Failover, Holder};
use streamhub_chaos_tests::Cluster;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let first_seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let mut report = String::new();
    for holder in [Holder::Follower, Holder::Leader] {
        let mut all: Vec<Failover> = Vec::new();
        for run in 0..runs {
            let seed = first_seed.wrapping_add(run as u64);
            println!("== {holder:?} holder, run {}/{runs}, seed {seed}", run + 1);
            let mut c = Cluster::start(3, seed).await;
            all.push(origin_failover(&mut c, holder).await);
            c.note("done");
            drop(c);
        }
        let stage = |name: &str, pick: fn(&Failover) -> Duration| {
            let mut v: Vec<Duration> = all.iter().map(pick).collect();
            v.sort();
            format!(
                "{name}: p50 {} ms, max {} ms ({})\n",
                v[v.len() / 2].as_millis(),
                v[v.len() - 1].as_millis(),
                v.iter()
                    .map(|d| d.as_millis().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        report.push_str(&format!(
            "{holder:?} holder killed, {runs} runs from seed {first_seed}:\n"
        ));
        report.push_str(&stage("  room freed", |f| f.detected));
        report.push_str(&stage("  republish accepted", |f| f.accepted));
        report.push_str(&stage("  first part on the new origin", |f| f.origin_media));
        report.push_str(&stage("  new media on the edge", |f| f.edge_media));
        let attempts: Vec<String> = all.iter().map(|f| f.attempts.to_string()).collect();
        report.push_str(&format!("  encoder attempts: {}\n", attempts.join(", ")));
    }
    println!("\n{report}");
}
