//! MJPEG fan-out benchmark on loopback: a WebSocket camera (640x480, 10 fps JPEGs made by
//! ffmpeg) publishes to a real origin; N viewers read `/live/<app>/<room>/mjpeg` from a real edge
//! fed over QUIC. Reports the edge's CPU per viewer (from `/proc`), the pictures each viewer got,
//! and the device-to-viewer latency of every picture: the camera writes its send time into a JPEG
//! comment segment (a valid JPEG), each viewer reads it back from the multipart stream.
//!
//! ```sh
//! cargo build --release -p streamhub-origin -p streamhub-edge
//! cargo run --release -p streamhub-chaos-tests --bin mjpeg_bench      # VIEWERS="100 500 1000"
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use streamhub_chaos_tests::procfs::cpu_ticks;

use futures::SinkExt;
use serde_json::json;
use streamhub_chaos_tests::{chaos_seed, Cluster};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECS: u64 = 20;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn jpegs(n: usize) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x480:rate=10",
        ])
        .args(["-frames:v", &n.to_string(), "-q:v", "4"])
        .arg(dir.path().join("%03d.jpg"))
        .status()
        .unwrap();
    assert!(status.success());
    (1..=n)
        .map(|i| std::fs::read(dir.path().join(format!("{i:03}.jpg"))).unwrap())
        .collect()
}

/// `jpeg` with a COM segment after SOI carrying `t=<microseconds since the epoch>`.
fn stamped(jpeg: &[u8], t: u64) -> Vec<u8> {
    let text = format!("t={t:020}");
    let mut out = Vec::with_capacity(jpeg.len() + 32);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xff, 0xfe]);
    out.extend_from_slice(&((text.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn stamp_of(part: &[u8]) -> Option<u64> {
    let at = part.windows(2).position(|w| w == b"t=")?;
    std::str::from_utf8(part.get(at + 2..at + 22)?)
        .ok()?
        .parse()
        .ok()
}

/// One viewer: reads the multipart stream for `secs`, returns the latency of every picture (µs).
async fn viewer(url: String, local: std::net::IpAddr, secs: u64) -> Vec<u64> {
    let http = reqwest::Client::builder()
        .local_address(local)
        .build()
        .unwrap();
    let mut out = Vec::new();
    let Ok(mut resp) = http.get(&url).send().await else {
        return out;
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf: Vec<u8> = Vec::new();
    while Instant::now() < deadline {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(2), resp.chunk()).await
        else {
            break;
        };
        buf.extend_from_slice(&chunk);
        // A picture is complete once the next boundary (or a part header) follows it; the
        // part headers carry Content-Length, so count on the EOI + CRLF that ends each part.
        while let Some(end) = buf.windows(4).position(|w| w == [0xff, 0xd9, b'\r', b'\n']) {
            if let Some(t) = stamp_of(&buf[..end]) {
                out.push(now_us().saturating_sub(t));
            }
            buf.drain(..end + 4);
        }
    }
    out
}

fn pct(v: &mut [u64], q: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    for (var, bin) in [
        ("STREAMHUB_ORIGIN_BIN", "streamhub-origin"),
        ("STREAMHUB_EDGE_BIN", "streamhub-edge"),
    ] {
        if std::env::var(var).is_err() {
            std::env::set_var(var, root.join("target/release").join(bin));
        }
    }
    let counts: Vec<usize> = std::env::var("VIEWERS")
        .unwrap_or_else(|_| "100 500 1000".into())
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let mut c = Cluster::start(1, chaos_seed()).await;
    let api = c.admin(0).await;
    api.create_app("cams").await.unwrap();
    let r = api
        .post("/apps/cams/ws-ingest", json!({"room": "door"}))
        .await
        .unwrap();
    let key = r.data()["streamKey"].as_str().unwrap().to_string();
    let ws_url = r.data()["wsUrl"].as_str().unwrap().to_string();
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let edge_pid = edge.pid().unwrap();
    let pictures = jpegs(50);
    let avg = pictures.iter().map(Vec::len).sum::<usize>() / pictures.len();
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for i in 0.. {
            tick.tick().await;
            let p = stamped(&pictures[i % pictures.len()], now_us());
            if ws.send(Message::Binary(p.into())).await.is_err() {
                return;
            }
        }
    });
    let url = edge.url("/live/cams/door/mjpeg");
    // warm up: the edge subscribes
    viewer(url.clone(), [127, 0, 0, 1].into(), 2).await;
    println!("MJPEG fan-out from an edge fed over QUIC: 640x480 10 fps, {} kB per picture, {SECS} s per step", avg / 1000);
    println!("| viewers | edge CPU % | CPU % per 100 viewers | viewers per core | pictures/s per viewer | latency p50 / p99 / max ms |");
    println!("|---|---|---|---|---|---|");
    let tck = 100.0;
    for n in counts {
        let t0 = Instant::now();
        let c0 = cpu_ticks(edge_pid);
        // Spread viewers over loopback addresses (the edge bounds streams per client address).
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let local =
                    std::net::IpAddr::from([127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8]);
                tokio::spawn(viewer(url.clone(), local, SECS))
            })
            .collect();
        let mut lat = Vec::new();
        let mut got = 0usize;
        for t in tasks {
            let v = t.await.unwrap();
            got += v.len();
            lat.extend(v);
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(edge_pid) - c0) as f64 / tck / secs * 100.0;
        let per_viewer_fps = got as f64 / n as f64 / SECS as f64;
        println!(
            "| {n} | {cpu:.1} | {:.2} | {:.0} | {per_viewer_fps:.1} | {:.1} / {:.1} / {:.1} |",
            cpu / n as f64 * 100.0,
            n as f64 / (cpu / 100.0),
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0)
        );
    }
    c.note("done");
}
