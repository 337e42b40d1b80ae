//! Steering with real processes: `/play` on an origin redirects a viewer to the healthy edge of
//! its region (`?region=`), the playback API names the same node, and once an edge is killed
//! its region's viewers go elsewhere within seconds (once its last heartbeat is 2.5 s behind
//! the other nodes'), well before the registry's 10 s TTL, never to the dead edge.

use std::time::{Duration, Instant};

use streamhub_chaos_tests::{chaos_seed, poll, Cluster};

async fn location(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    if resp.status() != 302 {
        return Err(format!("status {}", resp.status()));
    }
    resp.headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(String::from)
        .ok_or_else(|| "no location".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_steers_to_the_region_edge() {
    let mut c = Cluster::start(1, chaos_seed()).await;
    let mut eu = c.start_edge("edge-eu", "eu", 0, &[]).await;
    let us = c.start_edge("edge-us", "us", 0, &[]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let play = |region: &str| c.nodes[0].url(&format!("/play/live/cam?region={region}"));
    // The edges are in the registry once their first heartbeats are in.
    let to_eu = poll(
        "eu viewers steered to edge-eu",
        Duration::from_secs(20),
        || async {
            let l = location(&http, &play("eu")).await?;
            l.contains(&eu.url("")).then_some(l.clone()).ok_or(l)
        },
    )
    .await
    .unwrap();
    assert!(to_eu.ends_with("/play/live/cam?steered=edge-eu"), "{to_eu}");
    let to_us = location(&http, &play("us")).await.unwrap();
    assert!(to_us.starts_with(&us.url("/play/live/cam")), "{to_us}");
    // The chosen edge serves the page instead of steering again.
    let page = http.get(&to_eu).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("/whep") && page.contains("/assets/hls.light.min.js"),
        "the player page (WHEP first, hls.js fallback): {page}"
    );
    // The playback API on an edge steers the same way.
    let api = us.url("/api/v1/apps/live/rooms/cam/playback?region=eu");
    let v: serde_json::Value = http.get(&api).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["data"]["node"], "edge-eu", "{v}");
    assert_eq!(v["data"]["reason"], "same_region_edge");
    assert_eq!(
        v["data"]["hlsUrl"],
        format!("{}/hls/live/cam/index.m3u8", eu.url(""))
    );

    eu.kill9();
    let killed = Instant::now();
    // The registry's last heartbeat of the edge (it may still grow by a beat in flight, which
    // only makes the check below looser).
    let admin = c.admin(0).await;
    let nodes = admin.get("/nodes").await.unwrap();
    let last_beat_ms = nodes
        .data()
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == "edge-eu"))
        .and_then(|n| n["lastHeartbeatMs"].as_u64())
        .expect("edge-eu in the registry");
    let moved = poll(
        "eu viewers steered away from the dead edge",
        Duration::from_secs(30),
        || async {
            let l = location(&http, &play("eu")).await?;
            (!l.contains(&eu.url(""))).then_some(l.clone()).ok_or(l)
        },
    )
    .await
    .unwrap();
    let after = killed.elapsed();
    println!(
        "/play stopped sending eu viewers to the killed edge after {} ms (now {moved})",
        after.as_millis()
    );
    assert!(
        moved.contains(&us.url("")),
        "the remaining edge, not an origin: {moved}"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Not before the rule allows (its beat 2.5 s behind the others'), and long before the
    // 10 s TTL: about 3 s after the kill (up to a beat and a commit later), with room for a
    // loaded machine.
    assert!(
        now_ms + 100 >= last_beat_ms + 2_500,
        "steering left the edge out before its beat was 2.5 s behind: {} ms after it",
        now_ms.saturating_sub(last_beat_ms)
    );
    assert!(
        after < Duration::from_secs(7),
        "steering kept sending viewers to the dead edge for {after:?}"
    );
    c.note("done");
}
