//! The web surface tried as a new user would, in headless Chromium (`browser/dashboard.mjs`),
//! against an origin and an edge: sign in to the dashboard, create an app and an RTMP ingress,
//! copy the key from the page, publish with ffmpeg, see the room live with a decoding preview,
//! follow the token API's `playUrl` and `embedUrl`, play the embed inside another site's iframe,
//! play a camera room (JPEG over WebSocket) as MJPEG on `/play` and `/embed`, publish from the
//! sample page with the fake camera and watch it with the sample viewer on the edge, open the
//! edge's `/`. Every page's console stays free of errors and no request fails. Screenshots of
//! each page at 1280 and 360 px go to `target/results/dashboard/` (not committed).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use streamhub_chaos_tests::require::{browser_available, require, BROWSER};
use streamhub_chaos_tests::{chaos_seed, Cluster};
use streamhub_testkit::{ADMIN_PASS, ADMIN_USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_embeds_samples_and_sdk_in_a_browser() {
    if !require(BROWSER, browser_available()) {
        return;
    }
    let mut c = Cluster::start(1, chaos_seed()).await;
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let origin = &c.nodes[0];
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/results/dashboard");
    let _ = std::fs::remove_dir_all(&shots);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/dashboard.mjs");
    let run = tokio::process::Command::new("node")
        .arg(script)
        .args([
            &origin.url(""),
            &edge.url(""),
            ADMIN_USER,
            ADMIN_PASS,
            &shots.display().to_string(),
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the browser run ends within 10 minutes")
        .expect("node (and chromium + playwright-core, installed by .ci/run)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("no JSON from the browser ({e}): {stdout}"));
    println!("{}", serde_json::to_string_pretty(&v).unwrap());
    assert!(v["error"].is_null(), "a step failed: {}", v["error"]);
    let s = &v["steps"];

    assert_eq!(s["ingress"]["keyPrefix"], "rk_", "{s}");
    assert!(
        s["ingress"]["server"]
            .as_str()
            .unwrap()
            .starts_with("rtmp://"),
        "{s}"
    );
    // The live preview decoded frames (WHEP from the edge steering chose).
    assert_eq!(s["preview"]["protocol"], "whep", "{s}");
    assert!(s["preview"]["framesDecoded"].as_u64().unwrap() >= 25, "{s}");
    // playUrl and embedUrl from the token API work; the embed plays inside another site.
    assert!(s["playUrl"]["t"].as_f64().unwrap() > 1.0, "{s}");
    assert!(
        s["embedUrl"]["framesDecoded"].as_u64().unwrap() >= 25,
        "{s}"
    );
    assert!(s["iframe"]["framesDecoded"].as_u64().unwrap() >= 25, "{s}");
    assert!(
        s["iframe"]["url"]
            .as_str()
            .unwrap()
            .starts_with(&edge.url("/embed/web/stage")),
        "the embed was steered to the edge: {s}"
    );
    // The camera room plays as MJPEG on both pages.
    assert_eq!(s["cameraPlay"]["mode"], "mjpeg", "{s}");
    assert_eq!(s["cameraEmbed"]["protocol"], "mjpeg", "{s}");
    assert!(s["cameraEmbed"]["pictures"].as_u64().unwrap() >= 3, "{s}");
    // The sample publisher's fake camera is decoded by the sample viewer on the edge.
    assert!(
        s["samplePublisher"]["bytesSent"].as_u64().unwrap() > 50_000,
        "{s}"
    );
    assert!(
        s["sampleViewer"]["framesDecoded"].as_u64().unwrap() >= 25,
        "{s}"
    );
    assert!(
        s["sampleViewer"]["url"]
            .as_str()
            .unwrap()
            .starts_with(&edge.url("/samples/web")),
        "{s}"
    );
    // The edge's `/` is the origin's dashboard.
    assert!(
        s["edgeRoot"]["url"]
            .as_str()
            .unwrap()
            .starts_with(&origin.url("/")),
        "{s}"
    );
    assert!(
        s["clusterRows"].as_u64().unwrap() >= 2,
        "origin and edge listed: {s}"
    );
    assert_eq!(s["signedOut"], true);

    assert_eq!(v["consoleErrors"], Value::Array(vec![]), "console errors");
    assert_eq!(v["failedRequests"], Value::Array(vec![]), "failed requests");
    let files = v["screenshots"].as_array().unwrap();
    assert_eq!(files.len(), 2 * 14, "14 pages at two widths: {files:?}");
    for f in files {
        let len = std::fs::metadata(f.as_str().unwrap()).map_or(0, |m| m.len());
        assert!(len > 5_000, "{f}: {len} bytes");
    }
}
