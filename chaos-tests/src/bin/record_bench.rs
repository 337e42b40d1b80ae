//! What recording costs an origin: one 1280x720 room at 2.5 Mb/s published into an app that
//! does not record, then the same stream into an app that records `always` to a local S3
//! server (`s3s-fs`), one after the other and again in the other order; the origin's CPU per
//! phase (from `/proc`; the S3 server's own CPU is shown apart). Then the upload throughput:
//! S3 is stopped while the recorded room goes on, so the spool fills, and started again; the
//! time the spool takes to drain gives the upload rate.
//!
//! ```sh
//! cargo build --release -p streamhub-origin -p streamhub-chaos-tests --bin record_bench
//! STREAMHUB_ORIGIN_BIN=$PWD/target/release/streamhub-origin SECS=40 target/release/record_bench
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use streamhub_chaos_tests::procfs::cpu_ticks;
use streamhub_chaos_tests::{Node, NodeConfig, Publisher, Timeline};
use streamhub_testkit::s3::{self, S3Server};

/// CPU (% of one core) of `pid` over `secs`.
async fn cpu(pids: &[u32], secs: u64) -> Vec<f64> {
    let t0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let dt = start.elapsed().as_secs_f64();
    pids.iter()
        .zip(t0)
        .map(|(p, t)| (cpu_ticks(*p) - t) as f64 / 100.0 / dt * 100.0)
        .collect()
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut s3 = S3Server::start()
        .await
        .expect("s3s-fs (cargo install s3s-fs)");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new("origin-bench", dir.path());
    cfg.args = vec!["--record-part-mb".into(), "8".into()];
    let origin = Node::start(cfg, Arc::new(Timeline::quiet())).await.unwrap();
    let pid = origin.pid().unwrap();
    let s3_pid = s3.pid().expect("s3s-fs runs");
    let admin = origin.admin().await.unwrap();
    let mut keys = Vec::new();
    for app in ["plain", "rec"] {
        keys.push(admin.rtmp_ingress(app, "bench").await.unwrap());
    }
    let r = admin
        .put("/apps/rec/storage", s3.storage(s3::BUCKET, s3::SECRET_KEY))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    admin
        .patch("/apps/rec", json!({"record": "always"}))
        .await
        .unwrap();

    println!("| phase | origin CPU % | s3s-fs CPU % | uploaded MiB |");
    println!("|---|---|---|---|");
    let mut sums = [0.0f64; 2];
    for round in 0..2 {
        for i in 0..2 {
            let i = if round == 0 { i } else { 1 - i };
            let mut publisher = Publisher::start_hd(&origin.rtmp_url(&keys[i]));
            // The encoder and the packager settle before the window.
            tokio::time::sleep(Duration::from_secs(6)).await;
            let up0 = origin
                .metric("streamhub_recording_uploaded_bytes_total")
                .await
                .unwrap_or(0.0);
            let c = cpu(&[pid, s3_pid], secs).await;
            let up = origin
                .metric("streamhub_recording_uploaded_bytes_total")
                .await
                .unwrap_or(0.0)
                - up0;
            publisher.stop();
            let name = ["not recorded", "recorded to S3"][i];
            println!(
                "| {name} (round {}) | {:.1} | {:.1} | {:.1} |",
                round + 1,
                c[0],
                c[1],
                up / 1048576.0
            );
            sums[i] += c[0];
            // Let the room end and its recording settle.
            tokio::time::sleep(Duration::from_secs(8)).await;
        }
    }
    println!(
        "\nrecording one 2.5 Mb/s room: {:.2}x the origin CPU of the same room not recorded (+{:.1} % of a core)",
        sums[1] / sums[0].max(0.01),
        (sums[1] - sums[0]) / 2.0
    );

    // Upload throughput: fill the spool while S3 is down, then time the drain.
    let mut publisher = Publisher::start_hd(&origin.rtmp_url(&keys[1]));
    tokio::time::sleep(Duration::from_secs(5)).await;
    s3.stop();
    tokio::time::sleep(Duration::from_secs(2 * secs)).await;
    publisher.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spooled = origin
        .metric("streamhub_recording_spool_bytes")
        .await
        .unwrap();
    let limit = origin
        .metric("streamhub_recording_spool_limit_bytes")
        .await
        .unwrap();
    let before = origin
        .metric("streamhub_recording_uploaded_bytes_total")
        .await
        .unwrap();
    s3.resume().await.unwrap();
    // The clock starts at the first part that lands (the retry backoff is not upload time).
    let back = Instant::now();
    let up0 = loop {
        let up = origin
            .metric("streamhub_recording_uploaded_bytes_total")
            .await
            .unwrap();
        if up > before || back.elapsed() > Duration::from_secs(120) {
            break up;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first_after = back.elapsed().as_secs_f64();
    let start = Instant::now();
    loop {
        let left = origin
            .metric("streamhub_recording_spool_bytes")
            .await
            .unwrap();
        if left == 0.0 || start.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = start.elapsed().as_secs_f64();
    let up = origin
        .metric("streamhub_recording_uploaded_bytes_total")
        .await
        .unwrap()
        - up0;
    println!(
        "spool after {} s without S3: {:.1} MiB (bound {:.0} MiB); first part landed {first_after:.1} s after S3 came back (retry backoff), the rest drained in {took:.1} s: {:.1} MiB, {:.1} MiB/s",
        2 * secs,
        spooled / 1048576.0,
        limit / 1048576.0,
        up / 1048576.0,
        up / 1048576.0 / took.max(0.001)
    );
}
