//! What private playback costs an HLS fan-out: N HLS viewers of one room of a public app (the
//! access check finds `playback: public`, verifies nothing and rewrites nothing), then N viewers
//! of an identical room of a `playback: token` app, each with its own viewer token sent as a
//! Bearer header (the check alone: verified, remembered, decided, counted), then the same with
//! the token in `?token=` (the check, and the token added to every URI of each playlist), on
//! one origin, one phase after the other and then again in the other order. A control phase
//! sends the public app's requests with a header of the same size as the Bearer one (`X-Pad`):
//! the same bytes on the wire and through the HTTP parser, no token checked, so what the check
//! itself costs is header against padded, and what bigger requests cost is padded against
//! public. Each viewer is its own client with its own keep-alive connection from its own
//! loopback address (127.0.x.y), polling the playlist every second and fetching each new
//! segment with the URI the playlist gives, as a player does: so the public app's viewers are
//! counted one by one as real viewers from their own addresses are (from one address they
//! would all be one anonymous viewer, and the token phases would also pay for counting 1 000
//! viewers where the public ones paid for one). Reports the origin's CPU per phase (from
//! `/proc`) and the ratio.
//!
//! ```sh
//! cargo build --release -p streamhub-origin -p streamhub-chaos-tests --bin authz_bench
//! STREAMHUB_ORIGIN_BIN=$PWD/target/release/streamhub-origin VIEWERS=1000 SECS=30 ROUNDS=2 \
//!   target/release/authz_bench
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use streamhub_chaos_tests::procfs::cpu_ticks;
use streamhub_chaos_tests::{hls, Node, NodeConfig, Publisher, Timeline};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Counts {
    playlists: AtomicU64,
    segments: AtomicU64,
    errors: AtomicU64,
}

/// The URI of the newest segment a playlist lists (with whatever query it carries).
fn newest_segment(playlist: &str) -> Option<String> {
    playlist
        .lines()
        .rev()
        .find(|l| l.starts_with("seg-"))
        .map(str::to_string)
}

/// One player until `stop`: the playlist every second, each new segment once; `playlist` may
/// carry a header line to send with every request (`\nAuthorization: Bearer <token>`).
async fn viewer(i: usize, playlist: String, counts: Arc<Counts>, stop: CancellationToken) {
    let (playlist, extra) = match playlist.split_once('\n') {
        Some((p, h)) => (p.to_string(), h.split_once(": ")),
        None => (playlist.clone(), None),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some((name, value)) = extra {
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    // The whole 127/8 is loopback: viewer i connects from its own address.
    let from = std::net::Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::V4(from))
        .pool_max_idle_per_host(1)
        .default_headers(headers)
        .build()
        .unwrap();
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
        let Some(newest) = newest_segment(&String::from_utf8_lossy(&body)) else {
            continue;
        };
        if last.as_ref() == Some(&newest) {
            continue;
        }
        let url = hls::sibling(playlist.split('?').next().unwrap_or(&playlist), &newest);
        last = Some(newest);
        match hls::get(&client, &url).await {
            Ok((200, _)) => counts.segments.fetch_add(1, Ordering::Relaxed),
            _ => counts.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The origin's CPU (% of one core) while `playlists` are watched for `secs`, the segments
/// fetched and the errors.
async fn phase(pid: u32, playlists: &[String], secs: u64) -> (f64, u64, u64) {
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let tasks: Vec<_> = playlists
        .iter()
        .enumerate()
        .map(|(i, p)| tokio::spawn(viewer(i, p.clone(), counts.clone(), stop.clone())))
        .collect();
    // Every viewer connected and its token verified before the window: the steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (o0, s0, e0) = (
        cpu_ticks(pid),
        counts.segments.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let dt = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - o0) as f64 / 100.0 / dt * 100.0;
    let out = (
        cpu,
        counts.segments.load(Ordering::Relaxed) - s0,
        counts.errors.load(Ordering::Relaxed) - e0,
    );
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    out
}

#[tokio::main]
async fn main() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (viewers, secs) = (env("VIEWERS", 1000) as usize, env("SECS", 30));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new("origin-bench", dir.path());
    cfg.args = vec!["--http-max-per-address".into(), (viewers * 2).to_string()];
    let origin = Node::start(cfg, Arc::new(Timeline::quiet())).await.unwrap();
    let pid = origin.pid().unwrap();
    let admin = origin.admin().await.unwrap();
    let mut publishers = Vec::new();
    for app in ["open", "private"] {
        let key = admin.rtmp_ingress(app, "bench").await.unwrap();
        publishers.push(Publisher::start(&origin.rtmp_url(&key)));
    }
    let r = admin
        .patch("/apps/private", json!({"playback": "token"}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let open = vec![origin.url("/hls/open/bench/index.m3u8"); viewers];
    let mut private = Vec::with_capacity(viewers);
    let mut bearer = Vec::with_capacity(viewers);
    let mut padded = Vec::with_capacity(viewers);
    for i in 0..viewers {
        let r = admin
            .post(
                "/apps/private/tokens",
                json!({"room": "bench", "identity": format!("viewer-{i}")}),
            )
            .await
            .unwrap();
        let token = r.body["data"]["token"].as_str().unwrap().to_string();
        private.push(origin.url(&format!("/hls/private/bench/index.m3u8?token={token}")));
        bearer.push(format!(
            "{}\nAuthorization: Bearer {token}",
            origin.url("/hls/private/bench/index.m3u8")
        ));
        // Same length as the token (an `Authorization` header's name is 13 bytes, `X-Pad`'s 5).
        padded.push(format!(
            "{}\nX-Pad: Bearer {}{}",
            origin.url("/hls/open/bench/index.m3u8"),
            "x".repeat(8),
            "p".repeat(token.len())
        ));
    }
    let client = reqwest::Client::new();
    hls::wait_segments(&client, &open[0], 2, Duration::from_secs(30))
        .await
        .unwrap();
    // Its URIs carry the token (`seg-N.m4s?token=…`): waited for by hand.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = hls::get(&client, &private[0]).await {
            if newest_segment(&String::from_utf8_lossy(&body)).is_some() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the private room never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("| phase | viewers | origin CPU % | segments | errors |");
    println!("|---|---|---|---|---|");
    // `ONLY=public|padded|header|query` runs that phase alone (to profile it: `perf record -p`).
    let only = std::env::var("ONLY").ok();
    println!("origin pid {pid}");
    let phases = [
        ("public", "public app, no token", &open),
        (
            "padded",
            "public app, a header the size of the Bearer one (control)",
            &padded,
        ),
        (
            "header",
            "token app, a token per viewer as a Bearer header",
            &bearer,
        ),
        (
            "query",
            "token app, a token per viewer in ?token= (added to every URI)",
            &private,
        ),
    ];
    let mut cpu_sum = [0.0f64; 4];
    let rounds = env("ROUNDS", 2).max(1);
    for round in 0..rounds {
        for i in 0..phases.len() {
            // Every other round runs in the other order: drift hits every phase alike.
            let i = if round % 2 == 0 {
                i
            } else {
                phases.len() - 1 - i
            };
            let (short, name, urls) = phases[i];
            if only.as_deref().is_some_and(|o| o != short) {
                continue;
            }
            let (cpu, segments, errors) = phase(pid, urls, secs).await;
            println!(
                "| {name} (round {}) | {viewers} | {cpu:.1} | {segments} | {errors} |",
                round + 1
            );
            cpu_sum[i] += cpu;
        }
    }
    let (base, control) = (cpu_sum[0].max(0.01), cpu_sum[1].max(0.01));
    println!(
        "\norigin CPU against the public app: requests as large as the header ones (padded) {:.3}x, \
         the check (header) {:.3}x, the check and the token in every URI (query) {:.3}x\n\
         the check against the same requests unchecked (header / padded): {:.3}x",
        control / base,
        cpu_sum[2] / base,
        cpu_sum[3] / base,
        cpu_sum[2] / control,
    );
}
