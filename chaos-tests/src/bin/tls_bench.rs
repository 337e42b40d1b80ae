//! What TLS costs an HLS fan-out: N HLS viewers of one room on an origin over plain HTTP, then
//! the same N viewers on an identical origin serving HTTPS (`--https`; its plain port only
//! redirects, so plain HLS needs the second node), each with its own publisher of the same
//! stream, side by side in one run, one phase after the other. Each viewer is its own client
//! with its own keep-alive connection (and its own TLS session: one full handshake each),
//! polling the playlist every second and fetching each new segment, as a player does. Reports
//! the serving origin's CPU per viewer in each phase (from `/proc`) and the ratio.
//!
//! ```sh
//! cargo build --release -p streamhub-origin -p streamhub-chaos-tests --bin tls_bench
//! STREAMHUB_ORIGIN_BIN=$PWD/target/release/streamhub-origin VIEWERS=1000 SECS=30 \
//!   target/release/tls_bench
//! ```
//!
//! The load client shares the machine and decrypts too: its CPU is reported apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhub_chaos_tests::procfs::cpu_ticks;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use streamhub_chaos_tests::ports::free_tcp;
use streamhub_chaos_tests::{hls, Node, NodeConfig, Publisher, Timeline};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Counts {
    playlists: AtomicU64,
    segments: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// A test CA's PEM and a certificate + key for 127.0.0.1 it signed.
fn certificates() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// One player until `stop`: the playlist every second, each new segment once.
async fn viewer(
    client: reqwest::Client,
    playlist: String,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok((200, body)) = hls::get(&client, &playlist).await else {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        counts.playlists.fetch_add(1, Ordering::Relaxed);
        let text = String::from_utf8_lossy(&body);
        let Some(newest) = hls::segments(&text).last().copied() else {
            continue;
        };
        if last == Some(newest) {
            continue;
        }
        last = Some(newest);
        match hls::get(
            &client,
            &hls::sibling(&playlist, &format!("seg-{newest}.m4s")),
        )
        .await
        {
            Ok((200, seg)) => {
                counts.segments.fetch_add(1, Ordering::Relaxed);
                counts.bytes.fetch_add(seg.len() as u64, Ordering::Relaxed);
            }
            _ => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Phase {
    origin_cpu: f64,
    client_cpu: f64,
    segments: u64,
    errors: u64,
    mbps: f64,
}

async fn phase(
    pid: u32,
    playlist: &str,
    viewers: usize,
    secs: u64,
    make: impl Fn() -> reqwest::Client,
) -> Phase {
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..viewers {
        tasks.push(tokio::spawn(viewer(
            make(),
            playlist.to_string(),
            counts.clone(),
            stop.clone(),
        )));
    }
    // Every viewer connected (and handshaken) before the window: its steady state is measured.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (o0, c0, s0, b0, e0) = (
        cpu_ticks(pid),
        cpu_ticks(std::process::id()),
        counts.segments.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let dt = t0.elapsed().as_secs_f64();
    let tck = 100.0;
    let out = Phase {
        origin_cpu: (cpu_ticks(pid) - o0) as f64 / tck / dt * 100.0,
        client_cpu: (cpu_ticks(std::process::id()) - c0) as f64 / tck / dt * 100.0,
        segments: counts.segments.load(Ordering::Relaxed) - s0,
        errors: counts.errors.load(Ordering::Relaxed) - e0,
        mbps: (counts.bytes.load(Ordering::Relaxed) - b0) as f64 * 8.0 / dt / 1e6,
    };
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    out
}

#[tokio::main]
async fn main() {
    let viewers: usize = std::env::var("VIEWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    // The plain port serves (no --https: the same router on both would need two nodes); TLS is
    // a second listener of the same node, so both phases hit the same process and room.
    let https = free_tcp();
    let mut cfg = NodeConfig::new("origin-bench", dir.path());
    cfg.args = vec![
        "--https".into(),
        https.to_string(),
        "--public-url".into(),
        format!("https://{https}"),
        "--tls-cert".into(),
        cert_file.display().to_string(),
        "--tls-key".into(),
        key_file.display().to_string(),
        "--http-max-per-address".into(),
        (viewers * 2).to_string(),
    ];
    let origin = Node::start(cfg, Arc::new(Timeline::quiet())).await.unwrap();
    let pid = origin.pid().unwrap();
    let admin = streamhub_chaos_tests::Api::with_client(
        &format!("https://{https}"),
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .build()
            .unwrap(),
    )
    .sign_in(
        streamhub_chaos_tests::ADMIN_USER,
        streamhub_chaos_tests::ADMIN_PASS,
    )
    .await
    .unwrap();
    let key = admin.rtmp_ingress("live", "bench").await.unwrap();
    let _publisher = Publisher::start(&origin.rtmp_url(&key));
    let tls_playlist = format!("https://{https}/hls/live/bench/index.m3u8");
    let tls_client = || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .pool_max_idle_per_host(1)
            .build()
            .unwrap()
    };
    hls::wait_segments(&tls_client(), &tls_playlist, 2, Duration::from_secs(30))
        .await
        .unwrap();
    // The plain phase: the redirecting port does not serve HLS, so plain HTTP is a second,
    // identical node without TLS.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new("origin-plain", dir2.path());
    cfg.args = vec!["--http-max-per-address".into(), (viewers * 2).to_string()];
    let plain = Node::start(cfg, Arc::new(Timeline::quiet())).await.unwrap();
    let plain_admin = plain.admin().await.unwrap();
    let plain_key = plain_admin.rtmp_ingress("live", "bench").await.unwrap();
    let _plain_publisher = Publisher::start(&plain.rtmp_url(&plain_key));
    let plain_playlist = plain.url("/hls/live/bench/index.m3u8");
    let plain_client = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap()
    };
    hls::wait_segments(&plain_client(), &plain_playlist, 2, Duration::from_secs(30))
        .await
        .unwrap();
    println!("| transport | viewers | origin CPU % | CPU % per 100 viewers | segments | errors | Mb/s served | client CPU % |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for (name, pid, playlist, tls) in [
        ("HTTP", plain.pid().unwrap(), plain_playlist.as_str(), false),
        ("HTTPS", pid, tls_playlist.as_str(), true),
    ] {
        let p = if tls {
            phase(pid, playlist, viewers, secs, tls_client).await
        } else {
            phase(pid, playlist, viewers, secs, plain_client).await
        };
        println!(
            "| {name} | {viewers} | {:.1} | {:.2} | {} | {} | {:.1} | {:.1} |",
            p.origin_cpu,
            p.origin_cpu / viewers as f64 * 100.0,
            p.segments,
            p.errors,
            p.mbps,
            p.client_cpu
        );
        results.push(p.origin_cpu);
    }
    println!(
        "\nHTTPS / HTTP origin CPU: {:.2}x",
        results[1] / results[0].max(0.01)
    );
}
