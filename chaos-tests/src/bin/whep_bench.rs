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
//! `PATHS="rtc fanout floor"`: also the kernel's floor ([`floor`]): a process that only sends
//! the datagrams the fan-out row's viewers received (count, sizes, 20 ms audio and per-frame
//! video bursts, one `sendmmsg` per burst across viewers), from its own namespace host (with
//! `NETNS=1`) pinned to CPU 1 as an edge is, to plain UDP sockets of this client. Its viewers
//! per core are what the UDP/IP send path alone allows on this machine: no send path on
//! standard sockets goes above it.
//!
//! [`floor`]: streamhub_chaos_tests::floor
//!
//! [`Network::nic_like`]: streamhub_chaos_tests::netns::Network::nic_like

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use streamhub_chaos_tests::procfs::{
    context_switches, cpu_idle_ticks, cpu_steal_ticks, cpu_ticks, rss_kib,
};

use streamhub_chaos_tests::floor;
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

/// Host number of the floor sender's namespace (`NETNS=1`), clear of the cluster's hosts.
const FLOOR_HOST: u8 = 200;
/// Bytes of an Opus packet's payload: the origin's mono Opus at 48 kb/s, 20 ms a packet.
const OPUS_PAYLOAD: usize = 120;
/// What SRTP adds to a payload on the fan-out path: the RTP header (12, no extensions) and the
/// AES-GCM tag (16).
const RTP_OVERHEAD: usize = 28;

fn main() {
    if std::env::var("WHEP_FLOOR_SEND").as_deref() == Ok("1") {
        floor_sender();
        return;
    }
    bench();
}

/// The floor's sender process: the plan from the environment, the destinations from stdin;
/// sends until killed.
fn floor_sender() {
    use std::io::Read;
    use streamhub_chaos_tests::floor::{parse_dests, send, Plan};
    let var = |name: &str| -> f64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not set"))
    };
    let plan = Plan {
        audio_bytes: var("FLOOR_AUDIO_BYTES") as usize,
        video_per_sec: var("FLOOR_VIDEO_PER_SEC"),
        video_bytes: var("FLOOR_VIDEO_BYTES") as usize,
        fps: var("FLOOR_FPS") as u32,
    };
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .expect("destinations on stdin");
    let dests = parse_dests(&text).expect("destinations");
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("floor socket");
    eprintln!("floor: {} viewers, {plan:?}", dests.len());
    send(&socket, &dests, plan, |_| false);
}

/// Runs the floor for `n` viewers: `n` receiving sockets here (bound to `bind`), the sender as
/// a child process (in `ns` if given, on CPU 1 if `pinned`); returns the row's figures:
/// (sender process CPU %, CPU 1 busy %, of it steal %, datagrams and bytes received per viewer
/// per second, the sender's wake-ups per second).
async fn floor_row(
    n: usize,
    plan: streamhub_chaos_tests::floor::Plan,
    bind: std::net::IpAddr,
    ns: Option<&str>,
    pinned: bool,
) -> (f64, f64, f64, f64, f64, f64) {
    use std::io::Write;
    let packets = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut dests = String::new();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::UdpSocket::bind((bind, 0))
            .await
            .expect("receiver");
        dests.push_str(&format!("{}\n", socket.local_addr().unwrap()));
        let (packets, bytes, stop) = (packets.clone(), bytes.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = socket.recv(&mut buf) => if let Ok(len) = r {
                        packets.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(len as u64, Ordering::Relaxed);
                    },
                }
            }
        }));
    }
    let exe = std::env::current_exe().expect("this binary");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&exe);
            c
        }
        None => std::process::Command::new(&exe),
    };
    let mut child = cmd
        .env("WHEP_FLOOR_SEND", "1")
        .env("FLOOR_AUDIO_BYTES", plan.audio_bytes.to_string())
        .env("FLOOR_VIDEO_PER_SEC", plan.video_per_sec.to_string())
        .env("FLOOR_VIDEO_BYTES", plan.video_bytes.to_string())
        .env("FLOOR_FPS", plan.fps.to_string())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("floor sender");
    // `ip netns exec` execs the command in place: the child's pid is the sender's.
    let pid = child.id();
    if pinned {
        pin(pid, 1);
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dests.as_bytes())
        .expect("destinations to the floor sender");
    // As for the edges: settle, then a steady window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c0, idle0, steal0) = (cpu_ticks(pid), cpu_idle_ticks(1), cpu_steal_ticks(1));
    let switches0 = context_switches(pid);
    let (p0, b0) = (
        packets.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
    );
    let start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(SECS)).await;
    let window = start.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - c0) as f64 / 100.0 / window * 100.0;
    let busy = 100.0 - (cpu_idle_ticks(1) - idle0) as f64 / 100.0 / window * 100.0;
    let steal = (cpu_steal_ticks(1) - steal0) as f64 / 100.0 / window * 100.0;
    let wakeups = context_switches(pid).saturating_sub(switches0) as f64 / window;
    let per = n.max(1) as f64 * window;
    let got = (
        (packets.load(Ordering::Relaxed) - p0) as f64 / per,
        (bytes.load(Ordering::Relaxed) - b0) as f64 / per,
    );
    let _ = child.kill();
    let _ = child.wait();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    (cpu, busy, steal, got.0, got.1, wakeups)
}

#[tokio::main]
async fn bench() {
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
    println!("| stream | path | viewers | connected | edge process CPU % | edge core busy % | viewers per core | RSS MiB | HLS cache growth MiB | KiB per viewer | per viewer: pkts/s, kb/s | loss | edge send drops | client CPU % | edge wake-ups/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
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
        for path in paths.iter().filter(|p| *p != "floor") {
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
            if paths.iter().any(|p| p == "floor") {
                net.add_host(FLOOR_HOST).expect("the floor's host");
                hosts.push(FLOOR_HOST);
            }
            for (i, host) in hosts.into_iter().enumerate() {
                let t = net.nic_like(host).expect("NIC-like veth (ethtool)");
                if pinned {
                    pin(t.outer, 0);
                    pin(t.inner, 0);
                }
                if i > 0 {
                    // The edges' in order, then the floor's.
                    nics.push(Some(t.inner));
                }
            }
        } else {
            nics.resize(edges.len() + 1, None);
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
            // What each viewer of the fan-out row received: the floor sends the same.
            let mut received = None;
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
                let (steal0, switches0) = (cpu_steal_ticks(1), context_switches(pid));
                let start = std::time::Instant::now();
                let (p0, b0) = (
                    tally.packets.load(Ordering::Relaxed),
                    tally.bytes.load(Ordering::Relaxed),
                );
                tokio::time::sleep(Duration::from_secs(SECS)).await;
                let window = start.elapsed().as_secs_f64();
                let cpu = (cpu_ticks(pid) - c0) as f64 / tck / window * 100.0;
                let idle = (cpu_idle_ticks(1) - idle0) as f64 / tck / window * 100.0;
                let steal = (cpu_steal_ticks(1) - steal0) as f64 / tck / window * 100.0;
                let wakeups = context_switches(pid).saturating_sub(switches0) as f64 / window;
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
                if path == "fanout" {
                    received = Some((pkts / per, bytes / per));
                }
                let expected = tally.expected.load(Ordering::Relaxed).max(1) as f64;
                let lost = tally.lost.load(Ordering::Relaxed) as f64;
                let auth = tally.auth_failures.load(Ordering::Relaxed);
                let failed = failed.load(Ordering::Relaxed);
                println!(
                    "| {kbps} kb/s {size}{} | {path} | {n} | {connected}{} | {cpu:.1} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1}, {:.0} | {:.3} %{} | {drops} | {client:.1} | {wakeups:.0} |",
                    if audio { " + Opus" } else { "" },
                    if failed > 0 { format!(" ({failed} failed)") } else { String::new() },
                    if pinned { format!("{busy:.1} (steal {steal:.1})") } else { "-".into() },
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
            if paths.iter().any(|p| p == "floor") {
                let fps: u32 = fps.parse().unwrap();
                // Without a fan-out row: the stream's rate in whole packets per frame.
                let (pkts, bytes) = received.unwrap_or_else(|| {
                    let frame = f64::from(kbps) * 125.0 / f64::from(fps);
                    let audio = if audio { 50.0 } else { 0.0 };
                    (
                        audio + f64::from(fps) * (frame / 1172.0).ceil(),
                        audio * OPUS_PAYLOAD as f64 + f64::from(kbps) * 125.0,
                    )
                });
                let opus = audio.then_some(OPUS_PAYLOAD);
                let plan = floor::Plan::from_received(pkts, bytes, opus, RTP_OVERHEAD, fps);
                let nic = nics.last().copied().flatten();
                if pinned {
                    if let Some(t) = nic {
                        pin(t, 1);
                    }
                }
                let ns = net.as_ref().map(|net| net.ns(FLOOR_HOST));
                let to = bind.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                let (cpu, busy, steal, pkts, bytes, wakeups) =
                    floor_row(n, plan, to, ns.as_deref(), pinned).await;
                let share = if pinned { busy.max(cpu) } else { cpu };
                println!(
                    "| {kbps} kb/s {size}{} | floor (kernel only) | {n} | {n} | {cpu:.1} | {} | {:.0} | - | - | - | {pkts:.1}, {:.0} (datagrams) | - | - | - | {wakeups:.0} |",
                    if audio { " + Opus" } else { "" },
                    if pinned { format!("{busy:.1} (steal {steal:.1})") } else { "-".into() },
                    n as f64 / (share / 100.0),
                    bytes * 8.0 / 1000.0,
                );
                if pinned {
                    if let Some(t) = nic {
                        pin(t, 0);
                    }
                }
            }
        }
        let _ = ffmpeg.kill();
        let _ = ffmpeg.wait();
    }
}
