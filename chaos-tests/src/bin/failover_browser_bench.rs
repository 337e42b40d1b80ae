//! What a viewer in a browser sees of an origin failover: the scenario of `failover_bench`
//! ([`scenarios::origin_failover_with`]: 3 origins, an edge, the holder killed with -9, the
//! encoder retrying its backup origin at once) with Chromium playing the room from the edge in
//! two tabs of the player page, one over WebRTC (WHEP) and one over HLS (`?mode=hls`, hls.js in
//! low-latency mode), sampled twice a second (`chaos-tests/browser/restart.mjs`). Neither tab is
//! reloaded. Printed per tab and run: when frames stopped being decoded after the kill, when
//! they were decoded again, the longest stall, the player's reconnects and any fatal error; then
//! p50 and max of "decoding again" over the runs. `FAILOVER_RUNS` runs per case (default 3),
//! seeds from `CHAOS_SEED`.
//!
//! ```sh
//! cargo build -p streamhub-origin -p streamhub-edge
//! (cd chaos-tests/browser && npm ci)
//! STREAMHUB_ORIGIN_BIN=target/debug/streamhub-origin STREAMHUB_EDGE_BIN=target/debug/streamhub-edge \
//!   cargo run -p streamhub-chaos-tests --bin failover_browser_bench
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde_json::Value;
use streamhub_chaos_tests::scenarios::{origin_failover_with, Holder};
use streamhub_chaos_tests::tabs::Tabs;
use streamhub_chaos_tests::Cluster;

/// How long the tabs are watched after the new media reached the edge.
const AFTER: Duration = Duration::from_secs(12);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One tab's view of the failover: (stopped, decoding again, longest stall) in ms from the
/// kill, reconnects, error.
fn tab_figures(samples: &[Value], tab: usize, killed_ms: u64) -> (u64, u64, u64, u64, String) {
    let rows: Vec<(u64, u64, &Value)> = samples
        .iter()
        .map(|s| {
            let p = &s["pages"][tab];
            (
                s["t"].as_u64().unwrap_or(0),
                p["frames"].as_u64().unwrap_or(0),
                p,
            )
        })
        .collect();
    // The last sample whose frame count grew since the previous one, before the stall, and
    // the first after it: the longest run of samples without a new frame after the kill.
    let (mut stall_from, mut stall_to, mut longest) = (killed_ms, killed_ms, 0);
    let mut last_growth = killed_ms;
    for w in rows.windows(2) {
        let (t, frames, _) = w[1];
        if t < killed_ms || frames <= w[0].1 {
            continue;
        }
        let gap = t.saturating_sub(last_growth.max(killed_ms));
        if gap > longest {
            longest = gap;
            stall_from = last_growth.max(killed_ms);
            stall_to = t;
        }
        last_growth = t;
    }
    let last = rows.last().map(|r| r.2).cloned().unwrap_or(Value::Null);
    let error = rows
        .iter()
        .find_map(|r| r.2["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    (
        stall_from - killed_ms,
        stall_to - killed_ms,
        longest,
        last["reconnects"].as_u64().unwrap_or(0),
        error,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let first_seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let mut report = String::new();
    for holder in [Holder::Follower, Holder::Leader] {
        let mut resumed: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        for run in 0..runs {
            let seed = first_seed.wrapping_add(run as u64);
            println!("== {holder:?} holder, run {}/{runs}, seed {seed}", run + 1);
            let mut c = Cluster::start(3, seed).await;
            let start_browser = async |edge: &streamhub_chaos_tests::Node| {
                let tabs = [
                    edge.url("/play/live/cam"),
                    edge.url("/play/live/cam?mode=hls"),
                ];
                let (mut b, _) = Tabs::open(&tabs).await;
                let killed_ms = unix_ms();
                b.mark("kill").await;
                (b, killed_ms)
            };
            let f = origin_failover_with(&mut c, holder, start_browser).await;
            let (b, killed_ms) = f.extra;
            tokio::time::sleep(AFTER).await;
            let samples = b.stop().await;
            for (tab, name) in ["WHEP", "hls.js"].iter().enumerate() {
                let (from, to, longest, reconnects, error) = tab_figures(&samples, tab, killed_ms);
                println!(
                    "{holder:?} {name}: last frame before the stall {from} ms after the kill, decoding again at {to} ms (longest stall {longest} ms), reconnects {reconnects}, error {error:?}; new media on the edge at {} ms",
                    f.timeline.edge_media.as_millis()
                );
                resumed[tab].push(to);
            }
            drop(f.publisher);
            drop(f.edge);
            drop(c);
        }
        for (tab, name) in ["WHEP", "hls.js"].iter().enumerate() {
            let mut v = resumed[tab].clone();
            v.sort();
            report.push_str(&format!(
                "{holder:?} holder, {name}: decoding again after the kill p50 {} ms, max {} ms ({:?}), runs from seed {first_seed}\n",
                v[v.len() / 2],
                v[v.len() - 1],
                v
            ));
        }
    }
    println!("\n{report}");
}
