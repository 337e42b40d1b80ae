//! The player page, reached through steering (`/play` on an origin redirects to the edge): with
//! an RTMP (ffmpeg H.264 + AAC) room it plays over WebRTC (WHEP) from the edge, H.264 passed
//! through and decoded by the browser. The edge takes one WebRTC session only, so a second
//! player is refused WHEP (503) and falls back to HLS through the bundled hls.js, and plays.

use std::time::Duration;

use serde_json::Value;
use streamhub_chaos_tests::{chaos_seed, hls, Cluster, Publisher};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_prefers_whep_and_falls_back_to_hls() {
    if std::env::var("STREAMHUB_SKIP_BROWSER").as_deref() == Ok("1") {
        return;
    }
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    let key = admin.rtmp_ingress("live", "cam").await.unwrap();
    let edge = c
        .start_edge("edge-1", "local", 0, &["--webrtc-max-sessions", "1"])
        .await;
    let origin = &c.nodes[0];
    let _publisher = Publisher::start(&origin.rtmp_url(&key));
    let http = reqwest::Client::new();
    hls::wait_segments(
        &http,
        &edge.url("/hls/live/cam/index.m3u8"),
        2,
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let play = origin.url("/play/live/cam");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/player.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args([&play, &play])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("node (and chromium + playwright-core, installed by .ci/run)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "browser failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    println!("players: {v}");
    let (first, second) = (&v[0], &v[1]);
    for p in [first, second] {
        assert!(
            p["finalUrl"]
                .as_str()
                .unwrap()
                .starts_with(&edge.url("/play/live/cam")),
            "steered to the edge: {p}"
        );
    }
    assert_eq!(first["mode"], "whep", "{first}");
    assert!(first["framesDecoded"].as_u64().unwrap() >= 25, "{first}");
    assert_eq!(first["videoWidth"], 320, "{first}");
    assert!(first["currentTime"].as_f64().unwrap() > 1.0, "{first}");
    assert_eq!(second["mode"], "hls", "{second}");
    assert!(
        second["whepError"].as_str().unwrap().contains("503"),
        "refused for the session limit: {second}"
    );
    assert!(
        second["currentTime"].as_f64().unwrap() > 1.0,
        "HLS plays: {second}"
    );
    assert!(edge.metric("streamhub_webrtc_refused_total").await.unwrap() >= 1.0);
}
