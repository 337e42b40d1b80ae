//! Glass-to-glass latency through an edge, in headless Chromium: a real origin and a real edge
//! (this crate's cluster harness), the browser publishes a canvas showing its clock over WHIP
//! to the origin and plays it over WHEP from the edge (`browser/webrtc.mjs --clock`), reading
//! the clock back from every frame it presents. Prints the script's JSON per run.
//!
//! ```sh
//! cargo build --release -p streamhub-origin -p streamhub-edge
//! cargo build --release -p streamhub-chaos-tests --bin glass_bench
//! STREAMHUB_ORIGIN_BIN=$PWD/target/release/streamhub-origin \
//!   STREAMHUB_EDGE_BIN=$PWD/target/release/streamhub-edge RUNS=5 target/release/glass_bench
//! ```
//!
//! `EDGE_ARGS="--webrtc-send-path rtc"`: the edge's old send path.

use serde_json::json;
use streamhub_chaos_tests::{chaos_seed, Cluster};

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let edge_args = std::env::var("EDGE_ARGS").unwrap_or_default();
    let edge_args: Vec<&str> = edge_args.split_whitespace().collect();
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    admin.rtmp_ingress("live", "cam").await.unwrap();
    let r = admin
        .post(
            "/apps/live/tokens",
            json!({"room": "cam", "identity": "glass", "canPublish": true}),
        )
        .await
        .unwrap();
    let token = r.data()["token"].as_str().unwrap().to_string();
    let edge = c.start_edge("edge-1", "local", 0, &edge_args).await;
    let whip = c.nodes[0].url("/whip/live/cam");
    let whep = edge.url("/whep/live/cam");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/browser");
    for run in 1..=runs {
        let out = tokio::process::Command::new("node")
            .arg(format!("{dir}/webrtc.mjs"))
            .args([
                "--clock", "--whip", &whip, "--token", &token, "--whep", &whep,
            ])
            .args(["--seconds", "10"])
            .current_dir(dir)
            .output()
            .await
            .expect("node, chromium and playwright-core");
        println!("run {run}: {}", String::from_utf8_lossy(&out.stdout).trim());
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        // The room's WHIP session ends with the browser; the next run publishes anew.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
}
