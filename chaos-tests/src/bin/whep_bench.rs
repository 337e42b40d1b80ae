//! WHEP fan-out benchmark on loopback: ffmpeg publishes H.264 over RTMP to a real origin; N
//! WebRTC viewers (a load client written on the same `rtc` crate, one UDP socket per viewer)
//! play the room over WHEP from a real edge fed over QUIC. Reports the edge's CPU per viewer and
//! viewers per core (from `/proc`), its resident memory per viewer, and what each viewer got
//! (RTP packets and payload bitrate per second, against the stream's rate).
//!
//! ```sh
//! cargo build --release -p streamhub-origin -p streamhub-edge
//! cargo build --release -p streamhub-chaos-tests --bin whep_bench
//! STREAMHUB_ORIGIN_BIN=$PWD/target/release/streamhub-origin \
//!   STREAMHUB_EDGE_BIN=$PWD/target/release/streamhub-edge \
//!   VIEWERS="50 200" KBPS="200 2500" target/release/whep_bench
//! ```
//!
//! With `AUDIO=1` the stream also carries AAC (64 kb/s), which the origin transcodes to Opus:
//! viewers then receive ~50 more packets a second.
//!
//! The client shares the machine with the edge (DTLS and SRTP on both sides), so on a small
//! machine the client, not the edge, may be what limits N; the edge's CPU share is reported
//! separately from the client's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use streamhub_chaos_tests::procfs::{cpu_ticks, rss_kib};

use streamhub_chaos_tests::whep::{RunEnd, Viewer, ViewerOptions};
use streamhub_chaos_tests::{chaos_seed, hls, Cluster};
use tokio_util::sync::CancellationToken;

const SECS: u64 = 20;

#[derive(Default)]
struct Counts {
    packets: AtomicU64,
    bytes: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
}

/// One WHEP viewer until `stop`: the test kit's viewer, lean (no interceptors), counting RTP.
async fn viewer(
    whep: String,
    http: reqwest::Client,
    counts: Arc<Counts>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let options = ViewerOptions {
        audio: true,
        interceptors: false,
    };
    let mut v = Viewer::with(options).await?;
    let location = v.play(&http, &whep, None).await?;
    let mut connected = false;
    let end = v
        .run_until(
            stop.cancelled(),
            |_| false,
            |p| {
                if !connected {
                    connected = true;
                    counts.connected.fetch_add(1, Ordering::Relaxed);
                }
                counts.packets.fetch_add(1, Ordering::Relaxed);
                counts
                    .bytes
                    .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
            },
        )
        .await;
    if end == RunEnd::Failed {
        counts.failed.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(url) = location {
        let _ = http.delete(url).send().await;
    }
    Ok(())
}

fn self_ticks() -> u64 {
    cpu_ticks(std::process::id())
}

#[tokio::main]
async fn main() {
    let viewers: Vec<usize> = std::env::var("VIEWERS")
        .unwrap_or_else(|_| "100 300".into())
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let rates: Vec<u32> = std::env::var("KBPS")
        .unwrap_or_else(|_| "200 2500".into())
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let tck = 100.0;
    let audio = std::env::var("AUDIO").as_deref() == Ok("1");
    println!("| stream | viewers | connected | edge CPU % | CPU % per viewer | viewers per core | RSS MiB | KiB per viewer | per viewer: pkts/s, kb/s | client CPU % |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for kbps in rates {
        let mut c = Cluster::start(1, chaos_seed()).await;
        let admin = c.admin(0).await;
        let key = admin.rtmp_ingress("live", "bench").await.unwrap();
        let edge = c.start_edge("edge-1", "local", 0, &[]).await;
        let origin = &c.nodes[0];
        let (size, fps) = if kbps >= 1000 {
            ("1280x720", "30")
        } else {
            ("426x240", "25")
        };
        let rate = format!("{kbps}k");
        let mut ffmpeg = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
            .args([
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size={size}:rate={fps}"),
            ])
            .args(if audio {
                &["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"][..]
            } else {
                &[][..]
            })
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-b:v", &rate, "-maxrate", &rate, "-bufsize", &rate])
            .args([
                "-pix_fmt",
                "yuv420p",
                "-g",
                &(fps.parse::<u32>().unwrap() * 2).to_string(),
            ])
            .args(if audio {
                &["-c:a", "aac", "-b:a", "64k"][..]
            } else {
                &["-an"][..]
            })
            .args(["-f", "flv", &origin.rtmp_url(&key)])
            .spawn()
            .expect("ffmpeg");
        let http = reqwest::Client::new();
        hls::wait_segments(
            &http,
            &edge.url("/hls/live/bench/index.m3u8"),
            2,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let pid = edge.pid().unwrap();
        for &n in &viewers {
            let counts = Arc::new(Counts::default());
            let stop = CancellationToken::new();
            let rss0 = rss_kib(pid);
            let mut tasks = Vec::new();
            for i in 0..n {
                tasks.push(tokio::spawn(viewer(
                    edge.url("/whep/live/bench"),
                    http.clone(),
                    counts.clone(),
                    stop.clone(),
                )));
                if i % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            // Let every viewer connect and settle, then measure a steady window.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (c0, s0) = (cpu_ticks(pid), self_ticks());
            let (p0, b0) = (
                counts.packets.load(Ordering::Relaxed),
                counts.bytes.load(Ordering::Relaxed),
            );
            tokio::time::sleep(Duration::from_secs(SECS)).await;
            let cpu = (cpu_ticks(pid) - c0) as f64 / tck / SECS as f64 * 100.0;
            let client = (self_ticks() - s0) as f64 / tck / SECS as f64 * 100.0;
            let pkts = (counts.packets.load(Ordering::Relaxed) - p0) as f64 / SECS as f64;
            let bytes = (counts.bytes.load(Ordering::Relaxed) - b0) as f64 / SECS as f64;
            let rss = rss_kib(pid);
            let connected = counts.connected.load(Ordering::Relaxed);
            let per = connected.max(1) as f64;
            println!(
                "| {kbps} kb/s {size}{} | {n} | {connected} | {cpu:.1} | {:.3} | {:.0} | {:.1} | {:.0} | {:.1}, {:.0} | {client:.1} |",
                if audio { " + AAC->Opus" } else { "" },
                cpu / per,
                per / (cpu / 100.0),
                rss as f64 / 1024.0,
                rss.saturating_sub(rss0) as f64 / per,
                pkts / per,
                bytes * 8.0 / 1000.0 / per,
            );
            stop.cancel();
            for t in tasks {
                let _ = t.await;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let _ = ffmpeg.kill();
        let _ = ffmpeg.wait();
    }
}
