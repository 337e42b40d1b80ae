//! The player page, reached through steering (`/play` on an origin redirects to the edge): with
//! an RTMP (ffmpeg H.264 + AAC) room it plays over WebRTC (WHEP) from the edge, H.264 passed
//! through and decoded by the browser. The edge takes one WebRTC session only, so a second
//! player is refused WHEP (503) and falls back to HLS through the bundled hls.js, and plays.
//! Then the publisher stops for longer than a WHEP session waits for its room's next publisher
//! (10 s; a shorter restart keeps the session, see `encoder_restart_keeps_browsers_playing`): the
//! page notices the stopped stream, reconnects by itself once the publisher is back, and plays
//! again.

use std::time::Duration;

use serde_json::Value;
use streamhub_chaos_tests::require::{browser_available, require, BROWSER};
use streamhub_chaos_tests::{chaos_seed, hls, Cluster, Publisher};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_prefers_whep_and_falls_back_to_hls() {
    if !require(BROWSER, browser_available()) {
        return;
    }
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    let key = admin.rtmp_ingress("live", "cam").await.unwrap();
    let edge = c
        .start_edge("edge-1", "local", 0, &["--webrtc-max-sessions", "1"])
        .await;
    let origin = &c.nodes[0];
    let mut publisher = Publisher::start(&origin.rtmp_url(&key));
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
    let mut node = tokio::process::Command::new("node")
        .arg(script)
        .args([&play, &play, "--reconnect"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (and chromium + playwright-core, installed by .ci/run)");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("the browser answers in time")
            .unwrap()
            .expect("a line from the browser (see its stderr above)")
    };
    let v: Value = serde_json::from_str(next_line().await.trim()).unwrap();
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

    // The publisher goes (OBS losing its network, say) and comes back with the same key, after
    // the node has given up on it for its WebRTC viewers.
    publisher.stop();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let _publisher = Publisher::start(&origin.rtmp_url(&key));
    let again: Value = serde_json::from_str(next_line().await.trim()).unwrap();
    println!("after the publisher came back: {again}");
    assert!(again["reconnects"].as_u64().unwrap_or(0) >= 1, "{again}");
    assert!(again["framesDecoded"].as_u64().unwrap() >= 25, "{again}");
    assert!(node.wait().await.unwrap().success());
}
