//! An edge restarted on its data dir comes back as the same member (no `--join` needed: its
//! certificate and the origins it learned are on disk), stays in the registry, and serves the
//! room again under the origin's numbering: a restart loses nothing but the cache.

use std::time::Duration;

use streamhub_chaos_tests::hls::{self, sibling};
use streamhub_chaos_tests::{chaos_seed, poll, Cluster, Publisher};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_restart_loses_only_its_cache() {
    let mut c = Cluster::start(1, chaos_seed()).await;
    let key = c.admin(0).await.rtmp_ingress("live", "cam").await.unwrap();
    let mut edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let _publisher = Publisher::start(&c.nodes[0].rtmp_url(&key));
    let http = hls::client();
    let url = edge.url("/hls/live/cam/index.m3u8");
    let before = hls::wait_segments(&http, &url, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let last_before = *hls::segments(&before).last().unwrap();

    let exit = edge.terminate().await;
    assert!(exit.is_some_and(|s| s.success()), "clean exit on SIGTERM");
    // It drained itself first (the registry says so), and the restart ends that drain.
    let draining = |r: &streamhub_chaos_tests::api::Reply| {
        r.data()
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == "edge-1"))
            .map(|n| n["drainingSinceMs"].is_u64())
    };
    let nodes = c.admin(0).await.get("/nodes").await.unwrap();
    assert_eq!(
        draining(&nodes),
        Some(true),
        "SIGTERM drains: {:?}",
        nodes.body
    );
    edge.restart().await.unwrap();
    c.note("edge-1 restarted on its data dir");
    let after = poll(
        "the restarted edge serves the room again",
        Duration::from_secs(30),
        || async {
            let body = hls::get_ok(&http, &url)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let text = String::from_utf8_lossy(&body).to_string();
            let newest = hls::segments(&text).last().copied().unwrap_or(0);
            (newest > last_before).then_some(text.clone()).ok_or(text)
        },
    )
    .await
    .unwrap();
    // Same numbering and bytes as the origin.
    let n = *hls::segments(&after).last().unwrap();
    let origin_pl = c.nodes[0].url("/hls/live/cam/index.m3u8");
    hls::wait_segment(&http, &origin_pl, n, Duration::from_secs(10))
        .await
        .unwrap();
    let seg = format!("seg-{n}.m4s");
    let a = hls::get_ok(&http, &sibling(&url, &seg)).await.unwrap();
    let b = hls::get_ok(&http, &sibling(&origin_pl, &seg))
        .await
        .unwrap();
    assert!(a == b, "{seg} differs after the restart");
    // Still one registered edge, up.
    let nodes = c.admin(0).await.get("/nodes").await.unwrap();
    let edges: Vec<_> = nodes
        .data()
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["role"] == "edge")
        .cloned()
        .collect();
    assert_eq!(edges.len(), 1, "{nodes:?}");
    assert_eq!(edges[0]["name"], "edge-1");
    poll(
        "edge-1 up in the registry, no longer draining",
        Duration::from_secs(10),
        || async {
            let r = c
                .admin(0)
                .await
                .get("/nodes")
                .await
                .map_err(|e| format!("{e:#}"))?;
            let up = r.data().as_array().is_some_and(|a| {
                a.iter()
                    .any(|n| n["name"] == "edge-1" && n["status"] == "up")
            });
            (up && draining(&r) == Some(false))
                .then_some(())
                .ok_or(r.body.to_string())
        },
    )
    .await
    .unwrap();
    c.note("done");
}
