//! Draining an edge moves its viewers to another one, by an operator's
//! `POST /api/v1/cluster/nodes/:name/drain` and by the edge's own SIGTERM.
//!
//! 1 origin, edges A and B. Four headless Chromium tabs play the room from edge A: the player
//! page WebRTC first and with `?mode=hls`, and the SDK's `/embed` page both ways. A is drained
//! through the origin's API: within 1 s (the test allows 2 on a loaded machine and prints the
//! time) no steering answer (origin, B, A itself) names A, and A refuses a new WHEP session
//! (503); every tab moves to B by itself (its counter says so) without a fatal error or a
//! reload, and keeps decoding. A's drain is ended (`DELETE`), then B gets SIGTERM: it leaves steering as
//! fast, the tabs move back to A the same way, and B stops by itself once they are gone (well
//! within its `--drain-secs`), exiting cleanly.

use std::time::{Duration, Instant};

use serde_json::Value;
use streamhub_chaos_tests::require::{browser_available, has_command, require, BROWSER};
use streamhub_chaos_tests::tabs::Tabs;
use streamhub_chaos_tests::{chaos_seed, hls, Cluster, Node, Publisher};

/// How long each move is watched.
const WATCH: Duration = Duration::from_secs(10);
/// How soon a drained edge must get no new viewer: the issue asks 1 s, the product does it
/// within a heartbeat (0.5 s) plus a round trip; the measured time is printed, and the test
/// allows a loaded machine twice the bound.
const OUT_OF_STEERING: Duration = Duration::from_secs(2);
/// The longest gap between frames a moved tab may show: WHEP waits 1 s without media before it
/// asks whether its session lives; HLS moves on its next playlist.
const WHEP_GAP_MS: u64 = 3_000;
const HLS_GAP_MS: u64 = 2_000;
/// The tabs: (what, path on the edge, the counter that tells it moved).
const TABS: [(&str, &str, &str); 4] = [
    ("page WHEP", "/play/live/cam?steered={edge}", "lostNode"),
    (
        "page HLS",
        "/play/live/cam?mode=hls&steered={edge}",
        "drained",
    ),
    ("SDK WHEP", "/embed/live/cam?steered={edge}", "reconnects"),
    (
        "SDK HLS",
        "/embed/live/cam?mode=hls&steered={edge}",
        "reconnects",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_edge_moves_its_viewers() {
    if !require(BROWSER, browser_available()) || !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    let key = admin.rtmp_ingress("live", "cam").await.unwrap();
    let a = c.start_edge("edge-a", "local", 0, &[]).await;
    let mut b = c
        .start_edge("edge-b", "local", 0, &["--drain-secs", "30"])
        .await;
    let _publisher = Publisher::start(&c.nodes[0].rtmp_url(&key));
    c.note("publishing to origin-1");
    let http = hls::client();
    hls::wait_segments(
        &http,
        &a.url("/hls/live/cam/index.m3u8"),
        2,
        Duration::from_secs(45),
    )
    .await
    .unwrap();

    let urls: Vec<String> = TABS
        .iter()
        .map(|(_, path, _)| a.url(&path.replace("{edge}", "edge-a")))
        .collect();
    let (mut tabs, _) = Tabs::open(&urls).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // An operator drains edge A.
    tabs.mark("drain").await;
    let drained = admin
        .post("/cluster/nodes/edge-a/drain", Value::Null)
        .await
        .unwrap();
    let asked = Instant::now();
    assert_eq!(drained.status, 200, "{:?}", drained.body);
    assert!(
        drained.data()["drainingSinceMs"].is_u64(),
        "{:?}",
        drained.body
    );
    c.note("edge-a drained");
    let took = no_new_viewers_for(&http, "edge-a", &a, &[&c.nodes[0], &b, &a], asked).await;
    println!("edge-a out of steering everywhere {took:?} after the drain was accepted");
    // A load balancer's health check takes it out too.
    let (status, body) = hls::get(&http, &a.url("/healthz")).await.unwrap();
    assert_eq!((status, body.as_slice()), (503, &b"draining"[..]));
    tokio::time::sleep(WATCH).await;

    // A is back; B drains itself on SIGTERM.
    let undrained = admin.delete("/cluster/nodes/edge-a/drain").await.unwrap();
    assert_eq!(undrained.status, 200, "{:?}", undrained.body);
    assert!(undrained.data()["drainingSinceMs"].is_null());
    streamhub_chaos_tests::poll("edge-a healthy again", Duration::from_secs(5), || async {
        let (status, _) = hls::get(&http, &a.url("/healthz"))
            .await
            .map_err(|e| e.to_string())?;
        (status == 200).then_some(()).ok_or(status.to_string())
    })
    .await
    .unwrap();
    // B's view of the registry has A back (within a beat) before B drains.
    let b_steers = b.url("/api/v1/apps/live/rooms/cam/playback?avoid=edge-b");
    streamhub_chaos_tests::poll(
        "edge-b steers to edge-a again",
        Duration::from_secs(5),
        || async {
            let (_, body) = hls::get(&http, &b_steers)
                .await
                .map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            (v["data"]["node"] == "edge-a")
                .then_some(())
                .ok_or(v.to_string())
        },
    )
    .await
    .unwrap();
    tabs.mark("sigterm").await;
    b.send_sigterm();
    let termed = Instant::now();
    c.note("edge-b got SIGTERM");
    let took = no_new_viewers_for(&http, "edge-b", &b, &[&c.nodes[0], &a], termed).await;
    println!("edge-b out of steering everywhere {took:?} after SIGTERM");
    let exit = b.wait_exit(Duration::from_secs(25)).await;
    let stopped_after = termed.elapsed();
    println!("edge-b stopped {stopped_after:?} after SIGTERM");
    assert!(
        exit.is_some_and(|s| s.success()),
        "edge-b exits cleanly by itself once drained"
    );
    tokio::time::sleep(WATCH.saturating_sub(stopped_after)).await;
    let samples = tabs.stop().await;

    for (tab, (what, _, counter)) in TABS.iter().enumerate() {
        let report = samples
            .iter()
            .map(|s| {
                let p = &s["pages"][tab];
                format!(
                    "{} frames={} gap={}ms node={} error={} reconnects={} {}",
                    s["mark"],
                    p["frames"],
                    p["gapMs"],
                    p["node"],
                    p["error"],
                    p["reconnects"],
                    p["state"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (mark, to) in [("drain", "edge-b"), ("sigterm", "edge-a")] {
            let rows: Vec<&Value> = samples
                .iter()
                .filter(|s| s["mark"] == mark)
                .map(|s| &s["pages"][tab])
                .collect();
            let last = rows.last().unwrap();
            // The sample before the mark: an HLS tab may have moved before the first one after.
            let first = samples.iter().position(|s| s["mark"] == mark).unwrap();
            let before = &samples[first - 1]["pages"][tab];
            let frames = |r: &Value| r["frames"].as_u64().unwrap_or(0);
            let gap = last["gapMs"].as_u64().unwrap();
            println!(
                "{what}: {mark}: moved to {}, longest gap between frames {gap} ms",
                last["node"]
            );
            let bound = if what.ends_with("WHEP") {
                WHEP_GAP_MS
            } else {
                HLS_GAP_MS
            };
            assert!(
                gap <= bound,
                "{what}: {mark}: gap {gap} ms (bound {bound} ms):\n{report}"
            );
            let moves = |r: &Value| r[*counter].as_u64().unwrap_or(0);
            assert!(
                moves(last) > moves(before),
                "{what}: {mark}: the player moved by itself ({counter}):\n{report}"
            );
            for r in &rows {
                assert!(r["error"].is_null(), "{what}: no fatal error:\n{report}");
                assert_eq!(r["reloaded"], false, "{what}: never reloaded");
            }
            assert!(
                last["node"].as_str().is_some_and(|n| n.contains(to)),
                "{what}: {mark}: plays from {to} now:\n{report}"
            );
            assert!(
                frames(last) >= frames(rows[0]) + 75,
                "{what}: {mark}: kept decoding:\n{report}"
            );
        }
    }
    c.note("done");
}

/// Waits (at most [`OUT_OF_STEERING`] from `since`) until `node` gets no new viewer: no
/// steering answer of `asked` names it or offers it, and it refuses a new WHEP session (503).
/// Returns how long that took.
async fn no_new_viewers_for(
    http: &reqwest::Client,
    name: &str,
    node: &Node,
    asked: &[&Node],
    since: Instant,
) -> Duration {
    let base = node.url("").trim_end_matches('/').to_string();
    let check = async || -> Result<(), String> {
        for n in asked {
            let url = n.url("/api/v1/apps/live/rooms/cam/playback");
            let (status, body) = hls::get(http, &url).await.map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            if status != 200 || v["data"]["node"] == name {
                return Err(format!("{url} steers to the drained {name}: {v}"));
            }
            if v["data"]["alternates"].to_string().contains(&base) {
                return Err(format!(
                    "{url} offers the drained {name} as an alternate: {v}"
                ));
            }
        }
        let whep = http
            .post(node.url("/whep/live/cam"))
            .header("content-type", "application/sdp")
            .body("v=0\r\n")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let retry = whep.headers().get("retry-after").cloned();
        if whep.status().as_u16() != 503 || retry.is_none_or(|r| r != "1") {
            return Err(format!("{name} answers a new WHEP offer {}", whep.status()));
        }
        Ok(())
    };
    loop {
        match check().await {
            Ok(()) => return since.elapsed(),
            Err(e) if since.elapsed() >= OUT_OF_STEERING => {
                panic!(
                    "{name} still gets new viewers {:?} after its drain: {e}",
                    since.elapsed()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
