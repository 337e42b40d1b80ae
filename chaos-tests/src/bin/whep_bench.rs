//! WHEP fan-out benchmark, the two send paths side by side in one run: ffmpeg publishes H.264
//! (and AAC, which the origin transcodes to Opus) over RTMP to a real origin; two real edges fed
//! over QUIC serve the room, one on the `rtc` pipeline (`--webrtc-send-path rtc`, the old path)
//! and one on the fan-out workers (`fanout`, the default). For each stream rate and viewer count,
//! N viewers play the room from one edge, then from the other.
//!
//! The viewers are a load client as cheap as the new send path: `rtc` only for ICE and DTLS,
//! then every RTP packet authenticated, decrypted and its sequence number checked for loss
//! with the negotiated keys (`Viewer::run_decrypting`). Reports the edge's CPU (from `/proc`)
//! and viewers per core, its resident memory per viewer (growth over the warm, idle edge less
//! what its HLS cache grew by meanwhile), what each viewer got (packets and
//! payload bitrate per second), the loss, and the client's own CPU.
//!
//! ```sh
//! cargo build --release -p streamhub-origin -p streamhub-edge
//! cargo build --release -p streamhub-chaos-tests --bin whep_bench
//! STREAMHUB_ORIGIN_BIN=$PWD/target/release/streamhub-origin \
//!   STREAMHUB_EDGE_BIN=$PWD/target/release/streamhub-edge \
//!   VIEWERS="500 1000" KBPS="200 2500" PIN=1 target/release/whep_bench
//! ```
//!
//! `PIN=1`: the edge under test runs alone on CPU 1 and everything else (this client, the
//! origin, ffmpeg, the other edge) on CPU 0, so the edge's CPU share is its own and viewers per
//! core extrapolate from it: from CPU 1's busy time (the window less the time it was idle:
//! everything that ran there, the edge, the kernel's work for it, interrupts, and time a
//! hypervisor took), never less than the edge process's own time. Nothing else may run on
//! the machine meanwhile (a build would count as the edge's).
//!
//! `NETNS=1` (root, `ethtool`): the nodes in their own network namespaces, the client in this
//! one, media over veth pairs and a bridge instead of loopback, each veth end receiving as a
//! NIC does (threaded NAPI, [`Network::nic_like`]): what the client receives is processed on
//! the client's core, what the edge receives on the edge's. On loopback (the default) Linux
//! delivers each packet into the client's socket inside the edge's `sendmmsg`, so the edge's
//! figure includes the receivers' kernel work, which between two machines the receiving host
//! does. `AUDIO=0`: video only. `PATHS="fanout"`: one path only.
//!
//! [`Network::nic_like`]: streamhub_chaos_tests::netns::Network::nic_like

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use streamhub_chaos_tests::procfs::{cpu_idle_ticks, cpu_ticks, rss_kib};

use streamhub_chaos_tests::whep::{RtpTally, RunEnd, Viewer, ViewerOptions};
use streamhub_chaos_tests::{chaos_seed, hls, Cluster};
use tokio_util::sync::CancellationToken;

const SECS: u64 = 20;
/// Seconds the edges run without viewers before the first run (`WARMUP`).
const WARMUP_SECS: u64 = 60;
/// The nodes' metrics token (the bench reads the edge's send drops).
const TOKEN: &str = "bench-metrics-token-0123456789";
const ENV: &[(&str, &str)] = &[("STREAMHUB_METRICS_TOKEN", TOKEN)];

/// A counter or gauge of the edge's `/metrics` (0 if absent).
async fn metric(http: &reqwest::Client, edge: &streamhub_chaos_tests::Node, name: &str) -> u64 {
    let Ok(r) = http
        .get(edge.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
    else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let v: f64 = l
                .strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()?;
            Some(v as u64)
        })
        .unwrap_or(0)
}

/// Datagrams the edge's media socket would not take so far.
const SEND_DROPS: &str = "streamhub_webrtc_send_drops_total";
/// HLS media the edge holds: its packager fills the cache (up to `--cache-bytes`, 256 MiB) with
/// every part and segment of a pulled room whether or not anyone fetches them, so the cache
/// grows with time while viewers play, whatever their protocol.
const CACHE_BYTES: &str = "streamhub_cache_bytes";

/// Viewers starting (offer sent, not connected) at once: under a node's per-address limit (16).
const IN_FLIGHT: u64 = 12;

/// One WHEP viewer until `stop`: decrypting and counting every RTP packet.
async fn viewer(
    whep: String,
    http: reqwest::Client,
    tally: Arc<RtpTally>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
    bind: Option<std::net::IpAddr>,
) -> anyhow::Result<()> {
    let options = ViewerOptions {
        audio: true,
        interceptors: false,
        bind,
        // Larger than Linux's 208 KiB default: a 720p keyframe arrives as one ~100 KB burst,
        // and this client, sharing its core with the origin and ffmpeg, may be late to read.
        receive_buffer: Some(1 << 20),
    };
    let mut v = Viewer::with(options).await?;
    let location = v.play(&http, &whep, None).await?;
    let end = v.run_decrypting(stop.cancelled(), &tally).await;
    if end == RunEnd::Failed {
        failed.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(url) = location {
        let _ = http.delete(url).send().await;
    }
    Ok(())
}

fn self_ticks() -> u64 {
    cpu_ticks(std::process::id())
}

/// Pins every thread of `pid` to `cpu`.
fn pin(pid: u32, cpu: usize) {
    let ok = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset could not pin {pid} to CPU {cpu}");
}

#[tokio::main]
async fn main() {
    let list = |name: &str, default: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let viewers: Vec<usize> = list("VIEWERS", "200 500")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    let rates: Vec<u32> = list("KBPS", "200 2500")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    let paths = list("PATHS", "rtc fanout");
    let audio = std::env::var("AUDIO").as_deref() != Ok("0");
    let pinned = std::env::var("PIN").as_deref() == Ok("1");
    let netns = std::env::var("NETNS").as_deref() == Ok("1");
    if pinned {
        // This client and every process it starts: CPU 0. The edge under test moves to CPU 1.
        pin(std::process::id(), 0);
    }
    let tck = 100.0;
    println!("| stream | path | viewers | connected | edge process CPU % | edge core busy % | viewers per core | RSS MiB | HLS cache growth MiB | KiB per viewer | per viewer: pkts/s, kb/s | loss | edge send drops | client CPU % |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for kbps in rates {
        // NETNS=1: every node in its own network namespace behind a bridge, this client in the
        // test's: media crosses veth pairs, not loopback.
        let (mut c, bind, net) = if netns {
            let net = streamhub_chaos_tests::netns::Network::new().expect("bridge (root)");
            let bind = std::net::IpAddr::V4(net.ip(254));
            (
                Cluster::start_on_network(1, chaos_seed(), ENV, net.clone()).await,
                Some(bind),
                Some(net),
            )
        } else {
            (
                Cluster::start_with_env(1, chaos_seed(), ENV).await,
                None,
                None,
            )
        };
        let admin = c.admin(0).await;
        let key = admin.rtmp_ingress("live", "bench").await.unwrap();
        let mut edges = Vec::new();
        for path in &paths {
            let e = c
                .start_edge(
                    &format!("edge-{path}"),
                    "local",
                    0,
                    &["--webrtc-send-path", path],
                )
                .await;
            edges.push((path.clone(), e));
        }
        // NETNS=1: every veth receives as a NIC. Pinned, the receiving threads of what the nodes
        // send run on the client's core (0), those of what an edge receives on its core.
        let mut nics = Vec::new();
        if let Some(net) = &net {
            let mut hosts = vec![c.host_of(0)];
            for (_, e) in &edges {
                let std::net::IpAddr::V4(ip) = e.config().http.ip() else {
                    unreachable!("namespace hosts are IPv4");
                };
                hosts.push(ip.octets()[3]);
            }
            for (i, host) in hosts.into_iter().enumerate() {
                let t = net.nic_like(host).expect("NIC-like veth (ethtool)");
                if pinned {
                    pin(t.outer, 0);
                    pin(t.inner, 0);
                }
                if i > 0 {
                    nics.push(Some(t.inner));
                }
            }
        } else {
            nics.resize(edges.len(), None);
        }
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
        for (_, edge) in &edges {
            hls::wait_segments(
                &http,
                &edge.url("/hls/live/bench/index.m3u8"),
                2,
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        }
        // The edges warm up without viewers first: their HLS windows fill (at 2.5 Mb/s tens of
        // MiB that would otherwise count as the viewers').
        let warmup = std::env::var("WARMUP")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(WARMUP_SECS);
        for t in (0..=warmup).step_by(10) {
            let rss: Vec<String> = edges
                .iter()
                .map(|(p, e)| format!("{p} {:.1} MiB", rss_kib(e.pid().unwrap()) as f64 / 1024.0))
                .collect();
            eprintln!("warm-up {t:>3} s, idle RSS: {}", rss.join(", "));
            if t < warmup {
                tokio::time::sleep(Duration::from_secs(10.min(warmup - t))).await;
            }
        }
        // Each edge's resident memory before its first viewer: memory per viewer is the growth
        // over it (measured from the previous run's end instead, an allocator that kept the
        // previous viewers' pages would make the next run look cheaper than it is), less what
        // the HLS cache grew by meanwhile (it fills with time while the room is pulled).
        let idle: Vec<u64> = edges
            .iter()
            .map(|(_, e)| rss_kib(e.pid().unwrap()))
            .collect();
        let mut idle_cache = Vec::new();
        for (_, e) in &edges {
            idle_cache.push(metric(&http, e, CACHE_BYTES).await / 1024);
        }
        for &n in &viewers {
            for (k, (path, edge)) in edges.iter().enumerate() {
                let pid = edge.pid().unwrap();
                if pinned {
                    pin(pid, 1);
                    if let Some(t) = nics[k] {
                        pin(t, 1);
                    }
                }
                let tally = Arc::new(RtpTally::default());
                let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let stop = CancellationToken::new();
                let rss0 = idle[k];
                let mut tasks = Vec::new();
                // Viewers start as fast as they connect: all come from one address, which a
                // node allows only a few unconnected offers at once.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                for _ in 0..n {
                    while tasks.len() as u64
                        >= tally.connected.load(Ordering::Relaxed)
                            + failed.load(Ordering::Relaxed)
                            + IN_FLIGHT
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let (whep, http, tally, failed, stop, bind) = (
                        edge.url("/whep/live/bench"),
                        http.clone(),
                        tally.clone(),
                        failed.clone(),
                        stop.clone(),
                        bind,
                    );
                    tasks.push(tokio::spawn(async move {
                        if let Err(e) = viewer(whep, http, tally, failed.clone(), stop, bind).await
                        {
                            eprintln!("viewer: {e:#}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                // Let every viewer connect and settle, then measure a steady window.
                tokio::time::sleep(Duration::from_secs(5)).await;
                let drops0 = metric(&http, edge, SEND_DROPS).await;
                let (c0, s0, idle0) = (cpu_ticks(pid), self_ticks(), cpu_idle_ticks(1));
                let start = std::time::Instant::now();
                let (p0, b0) = (
                    tally.packets.load(Ordering::Relaxed),
                    tally.bytes.load(Ordering::Relaxed),
                );
                tokio::time::sleep(Duration::from_secs(SECS)).await;
                let window = start.elapsed().as_secs_f64();
                let cpu = (cpu_ticks(pid) - c0) as f64 / tck / window * 100.0;
                let idle = (cpu_idle_ticks(1) - idle0) as f64 / tck / window * 100.0;
                // Pinned, the edge is alone on CPU 1: all that CPU did counts (the process's
                // own time too, if the idle time read is off).
                let busy = 100.0 - idle;
                let share = if pinned { busy.max(cpu) } else { cpu };
                let client = (self_ticks() - s0) as f64 / tck / window * 100.0;
                let pkts = (tally.packets.load(Ordering::Relaxed) - p0) as f64 / window;
                let bytes = (tally.bytes.load(Ordering::Relaxed) - b0) as f64 / window;
                let rss = rss_kib(pid);
                let cache = metric(&http, edge, CACHE_BYTES).await / 1024;
                let cache_growth = cache.saturating_sub(idle_cache[k]);
                let drops = metric(&http, edge, SEND_DROPS).await - drops0;
                stop.cancel();
                for t in tasks {
                    let _ = t.await;
                }
                let connected = tally.connected.load(Ordering::Relaxed);
                let per = connected.max(1) as f64;
                let expected = tally.expected.load(Ordering::Relaxed).max(1) as f64;
                let lost = tally.lost.load(Ordering::Relaxed) as f64;
                let auth = tally.auth_failures.load(Ordering::Relaxed);
                let failed = failed.load(Ordering::Relaxed);
                println!(
                    "| {kbps} kb/s {size}{} | {path} | {n} | {connected}{} | {cpu:.1} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1}, {:.0} | {:.3} %{} | {drops} | {client:.1} |",
                    if audio { " + Opus" } else { "" },
                    if failed > 0 { format!(" ({failed} failed)") } else { String::new() },
                    if pinned { format!("{busy:.1}") } else { "-".into() },
                    per / (share / 100.0),
                    rss as f64 / 1024.0,
                    cache_growth as f64 / 1024.0,
                    rss.saturating_sub(rss0).saturating_sub(cache_growth) as f64 / per,
                    pkts / per,
                    bytes * 8.0 / 1000.0 / per,
                    lost / expected * 100.0,
                    if auth > 0 { format!(" ({auth} failed auth)") } else { String::new() },
                );
                // The sessions end (DELETE, or consent after 10 s) before the next run's viewers
                // take the same ports.
                tokio::time::sleep(Duration::from_secs(12)).await;
                if pinned {
                    // CPU 1 is the next edge's alone.
                    pin(pid, 0);
                    if let Some(t) = nics[k] {
                        pin(t, 0);
                    }
                }
            }
        }
        let _ = ffmpeg.kill();
        let _ = ffmpeg.wait();
    }
}
