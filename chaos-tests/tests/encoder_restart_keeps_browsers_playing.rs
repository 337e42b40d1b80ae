//! The encoder restarts with other settings and the same key (720p Main with B-frames and
//! 44.1 kHz mono, then 1080p Baseline and 48 kHz stereo, then 480p High with B-frames and
//! 44.1 kHz mono: `encoder::RESTARTS`), while Chromium plays the room from an edge in two tabs of
//! the player page: one over WebRTC (WHEP, H.264 passed through, AAC transcoded to Opus), one over
//! HLS (`?mode=hls`, the bundled hls.js). Neither tab is reloaded; through both changes each keeps
//! decoding video and audio, shows each encoder's picture size in turn, and hls.js reports no
//! fatal error. The WHEP tab keeps its WebRTC session: the node goes on with the room's next
//! publisher session on the same RTP streams, so the page never has to reconnect; the HLS tab
//! gets there by the playlist staying open through the restart and continuing after a
//! discontinuity with the new init section.

use std::time::Duration;

use serde_json::Value;
use streamhub_chaos_tests::encoder::{publish, RESTARTS as RUNS};
use streamhub_chaos_tests::require::{browser_available, has_command, require, BROWSER};
use streamhub_chaos_tests::tabs::Tabs;
use streamhub_chaos_tests::{chaos_seed, hls, Cluster};

/// How long each encoder run lasts: long enough for the WHEP tab to have reconnected (should its
/// session have ended) on a loaded machine too.
const RUN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoder_restart_keeps_browsers_playing() {
    if !require(BROWSER, browser_available()) || !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    let key = admin.rtmp_ingress("live", "obs").await.unwrap();
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let url = c.nodes[0].rtmp_url(&key);
    let mut encoder = publish(&url, &RUNS[0]);
    let http = reqwest::Client::new();
    hls::wait_segments(
        &http,
        &edge.url("/hls/live/obs/index.m3u8"),
        2,
        Duration::from_secs(45),
    )
    .await
    .unwrap();

    let tabs = [
        edge.url("/play/live/obs"),
        edge.url("/play/live/obs?mode=hls"),
    ];
    let (mut browser, ready) = Tabs::open(&tabs).await;
    let ready = &ready["ready"];
    assert_eq!(ready[0]["mode"], "whep", "{ready}");
    assert_eq!(ready[1]["mode"], "hls", "{ready}");
    for (tab, r) in tabs.iter().zip(ready.as_array().unwrap()) {
        assert!(
            r["frames"].as_u64().unwrap() >= 25 && r["audio"].as_u64().unwrap() > 0,
            "{tab} plays video and audio before the first restart: {r}"
        );
    }

    for (i, next) in RUNS.iter().enumerate().skip(1) {
        tokio::time::sleep(RUN).await;
        c.note(format!(
            "encoder restarts as {} {}",
            next.size, next.profile
        ));
        browser.mark(&format!("run{i}")).await;
        encoder.kill().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        encoder = publish(&url, next);
    }
    tokio::time::sleep(RUN).await;
    let samples = browser.stop().await;
    drop(encoder);

    let widths: Vec<u64> = RUNS.iter().map(|r| u64::from(r.width())).collect();
    for (n, tab) in tabs.iter().enumerate() {
        let rows: Vec<&Value> = samples.iter().map(|s| &s["pages"][n]).collect();
        let report = rows
            .iter()
            .zip(&samples)
            .map(|(r, s)| {
                format!(
                    "{} {} frames={} audio={} width={} time={} buffered={} reconnects={} error={} {}",
                    s["mark"],
                    r["mode"],
                    r["frames"],
                    r["audio"],
                    r["width"],
                    r["time"],
                    r["buffered"],
                    r["reconnects"],
                    r["error"],
                    r["state"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        println!("{tab}:\n{report}");
        assert!(
            rows.iter().all(|r| r["reloaded"] == false),
            "{tab}: the page was never reloaded"
        );
        assert!(
            rows.iter().all(|r| r["error"].is_null()),
            "{tab}: no fatal player error:\n{report}"
        );
        if n == 0 {
            // A session that brings nothing for 6 s is reconnected by the page; the node's
            // session goes on with the next publisher within a second or two.
            assert!(
                rows.iter().all(|r| r["reconnects"] == 0),
                "{tab}: the WebRTC session went on across the restarts, no reconnect:\n{report}"
            );
        }
        // Each encoder's pictures, in order: the first sample at each new width.
        let mut at = Vec::new();
        for w in &widths {
            let from = at.last().copied().unwrap_or(0);
            let i = rows[from..]
                .iter()
                .position(|r| r["width"].as_u64() == Some(*w))
                .map(|i| from + i);
            let Some(i) = i else {
                panic!(
                    "{tab}: never showed a {w} px wide picture after the earlier ones:\n{report}"
                );
            };
            at.push(i);
        }
        // Video and audio keep being decoded through each run: more of both by the next
        // change (or the end) than when the run's pictures first showed.
        let count = |i: usize, k: &str| rows[i][k].as_u64().unwrap_or(0);
        let ends = [at[1], at[2], rows.len() - 1];
        for (run, (&from, &to)) in at.iter().zip(&ends).enumerate() {
            // WebRTC has no frame reordering: browsers decode little more than the keyframes
            // of H.264 with B-frames (docs/webrtc.md), whoever sends it.
            let frames = if n == 0 && RUNS[run].bframes > 0 {
                3
            } else {
                50
            };
            for (k, min) in [("frames", frames), ("audio", 1)] {
                assert!(
                    count(to, k) >= count(from, k) + min,
                    "{tab}: {k} decoded during run {run} ({} at its first picture, {} later):\n{report}",
                    count(from, k),
                    count(to, k)
                );
            }
        }
    }
}
