//! An edge dies under its HLS viewers and their requests go to another edge (what a load
//! balancer or DNS does): hls.js (low-latency mode, the player page's `?mode=hls`) in headless
//! Chromium keeps playing. 1 origin and three edges; the tab plays from edge A. A is killed with
//! SIGKILL and from that moment every request of the tab goes to edge B, which is cold (it does
//! not serve the room yet): B back-fills the playlist window on its first pull and holds what is
//! not there yet, so the longest gap between two presented frames stays within 2 s. Then B is
//! killed and the requests go to edge W, which is warm (another viewer keeps it pulling the
//! room): the gap stays within 0.5 s. No fatal hls.js error, no reload. The page keeps asking
//! for edge A's URLs throughout; only where they go changes.
//!
//! A second tab plays the player page WebRTC first (WHEP) from edge A: its media comes over
//! UDP from A, which no reroute saves. The page sees its media stop, asks A's URL whether its
//! session lives (the answer now comes from B, which does not know it), steers away from A and
//! plays from the node chosen: frames decode again within 3 s of the kill. A third tab does the
//! same through the browser SDK (the `/embed` page).

use std::time::Duration;

use serde_json::Value;
use streamhub_chaos_tests::require::{browser_available, has_command, require, BROWSER};
use streamhub_chaos_tests::tabs::Tabs;
use streamhub_chaos_tests::{chaos_seed, hls, Cluster, Publisher};

/// The bounds for the longest gap between frames, edge B cold and warm.
const COLD: u64 = 2_000;
const WARM: u64 = 500;
/// The bound from the kill to frames decoded again in the WHEP tab.
const WHEP_BACK: u64 = 3_000;
/// How long each move is watched.
const WATCH: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_viewers_move_to_another_edge() {
    if !require(BROWSER, browser_available()) || !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let mut c = Cluster::start(1, chaos_seed()).await;
    let key = c.admin(0).await.rtmp_ingress("live", "cam").await.unwrap();
    let mut a = c.start_edge("edge-a", "local", 0, &[]).await;
    let mut b = c.start_edge("edge-b", "local", 0, &[]).await;
    let w = c.start_edge("edge-w", "local", 0, &[]).await;
    let _publisher = Publisher::start(&c.nodes[0].rtmp_url(&key));
    c.note("publishing to origin-1");
    let http = hls::client();
    let path = "/hls/live/cam/index.m3u8";
    hls::wait_segments(&http, &a.url(path), 2, Duration::from_secs(45))
        .await
        .unwrap();
    // Another viewer keeps edge W pulling the room.
    let warm = tokio::spawn({
        let (http, url) = (http.clone(), w.url(path));
        async move {
            loop {
                let _ = hls::get(&http, &url).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });

    let (mut tabs, _) = Tabs::open(&[
        a.url("/play/live/cam?mode=hls&steered=edge-a"),
        a.url("/play/live/cam?steered=edge-a"),
        a.url("/embed/live/cam?steered=edge-a"),
    ])
    .await;
    // Some steady playing first.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let base = |n: &streamhub_chaos_tests::Node| n.url("").trim_end_matches('/').to_string();
    let (from, to_b, to_w) = (base(&a), base(&b), base(&w));

    // Edge A dies; its requests go to cold edge B from that moment: the reroute is in place
    // before the kill (a request refused by the dead A in between is fatal to hls.js, which does
    // not retry a connection error; what a player does about that is the player's recovery, not
    // this test).
    tabs.mark("cold").await;
    tabs.reroute(&from, &to_b).await;
    a.kill9();
    c.note("edge-a killed; its requests go to edge-b (cold)");
    tokio::time::sleep(WATCH).await;

    // Edge B dies; the requests go to warm edge W.
    tabs.mark("warm").await;
    tabs.reroute(&from, &to_w).await;
    b.kill9();
    c.note("edge-b killed; the requests go to edge-w (warm)");
    tokio::time::sleep(WATCH).await;
    let samples = tabs.stop().await;
    warm.abort();
    let report = |tab: usize| {
        samples
            .iter()
            .map(|s| {
                let p = &s["pages"][tab];
                format!(
                    "{} frames={} gap={}ms time={} buffered={} error={} node={} lost={} {}",
                    s["mark"],
                    p["frames"],
                    p["gapMs"],
                    p["time"],
                    p["buffered"],
                    p["error"],
                    p["node"],
                    p["lostNode"],
                    p["state"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (hls_report, whep_report, sdk_report) = (report(0), report(1), report(2));
    println!("HLS tab:\n{hls_report}\nWHEP tab:\n{whep_report}\nSDK tab:\n{sdk_report}");
    let rows = |mark: &str, tab: usize| -> Vec<&Value> {
        samples
            .iter()
            .filter(|s| s["mark"] == mark)
            .map(|s| &s["pages"][tab])
            .collect()
    };
    let frames = |r: &Value| r["frames"].as_u64().unwrap_or(0);
    for s in &samples {
        for (tab, report) in [(0, &hls_report), (1, &whep_report), (2, &sdk_report)] {
            let r = &s["pages"][tab];
            assert_eq!(r["reloaded"], false, "the page was never reloaded");
            if tab == 0 {
                assert!(r["error"].is_null(), "no fatal player error:\n{report}");
            } else {
                assert_eq!(r["mode"], "whep", "the WHEP tab stays on WebRTC:\n{report}");
            }
        }
    }
    for (mark, bound) in [("cold", COLD), ("warm", WARM)] {
        let rows = rows(mark, 0);
        let gap = rows.last().and_then(|r| r["gapMs"].as_u64()).unwrap();
        println!("{mark} edge: longest gap between frames {gap} ms");
        assert!(
            frames(rows.last().unwrap()) >= frames(rows[0]) + 100,
            "{mark}: the tab kept decoding:\n{hls_report}"
        );
        assert!(
            gap <= bound,
            "{mark}: the longest gap between frames was {gap} ms (bound {bound} ms):\n{hls_report}"
        );
    }

    // The WHEP tabs: the longest gap between presented frames (through their new peer
    // connections) bounds the time from each kill to frames decoded again. Each tab played from
    // the edge that died and moved: the page counts the sessions it found gone, the SDK its
    // reconnects. After the first move a tab may be on B or on W (steering's choice): the
    // second kill is checked for the tabs it hit.
    for (tab, report) in [(1, &whep_report), (2, &sdk_report)] {
        let name = ["", "WHEP tab", "SDK tab"][tab];
        let moves = |r: &Value| {
            let counter = if tab == 1 { "lostNode" } else { "reconnects" };
            r[counter].as_u64().unwrap_or(0)
        };
        for (mark, edge, on) in [("cold", "A", "edge-a"), ("warm", "B", "edge-b")] {
            let rows = rows(mark, tab);
            let (first, last) = (rows[0], *rows.last().unwrap());
            if first["node"] != on {
                println!(
                    "{name}: not on edge {edge} when it died (on {})",
                    first["node"]
                );
                continue;
            }
            let gap = last["gapMs"].as_u64().unwrap();
            println!("{name}: edge {edge} died; longest gap between frames {gap} ms");
            assert!(
                moves(last) > moves(first) && last["node"] != on,
                "{mark}: the {name} moved off edge {edge}:\n{report}"
            );
            assert!(
                gap <= WHEP_BACK,
                "{mark}: the {name} decoded no frame for {gap} ms (bound {WHEP_BACK} ms):\n{report}"
            );
            assert!(
                frames(last) >= frames(first) + 100,
                "{mark}: the {name} kept decoding:\n{report}"
            );
        }
        assert_eq!(
            rows("cold", tab)[0]["node"],
            "edge-a",
            "the {name} played from edge A:\n{report}"
        );
    }
    c.note("done");
}
