//! A cold edge serves a room's whole playlist window at once: an edge that starts pulling a room
//! asks the origin for the groups it keeps (the playlist window) besides the live ones, so its
//! first playlist lists the same segments as the origin's, under the same names and with the
//! same bytes. A viewer moved to a cold edge (what a load balancer does when its edge dies) and
//! asking for a segment of the window straight away gets it (held while the back-fill arrives,
//! not 404), and one asking for the segment being cut is held until it exists.

use std::time::{Duration, Instant};

use streamhub_chaos_tests::hls::{self, sibling};
use streamhub_chaos_tests::{chaos_seed, Cluster, Publisher};

/// The HLS playlist window of the nodes (the default).
const WINDOW: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_edge_backfills_the_window() {
    let mut c = Cluster::start(1, chaos_seed()).await;
    let key = c.admin(0).await.rtmp_ingress("live", "cam").await.unwrap();
    let e1 = c.start_edge("edge-1", "eu", 0, &[]).await;
    let e2 = c.start_edge("edge-2", "eu", 0, &[]).await;
    let _publisher = Publisher::start(&c.nodes[0].rtmp_url(&key));
    c.note("publishing to origin-1");
    let http = hls::client();
    let path = "/hls/live/cam/index.m3u8";
    let origin_pl = c.nodes[0].url(path);
    // A full window on the origin before any edge pulls the room.
    hls::wait_segments(&http, &origin_pl, WINDOW, Duration::from_secs(60))
        .await
        .unwrap();

    // Edge 1 is cold: its first playlist (the request that starts its pull) lists the origin's
    // window, less what slid out meanwhile.
    let origin =
        String::from_utf8_lossy(&hls::get_ok(&http, &origin_pl).await.unwrap()).to_string();
    let listed = hls::segments(&origin);
    let asked = Instant::now();
    let first =
        String::from_utf8_lossy(&hls::get_ok(&http, &e1.url(path)).await.unwrap()).to_string();
    let answered = asked.elapsed();
    let on_edge = hls::segments(&first);
    println!(
        "origin lists {listed:?}; cold edge's first playlist ({} ms) lists {on_edge:?}",
        answered.as_millis()
    );
    assert!(
        listed.len() >= WINDOW,
        "the origin lists a full window: {listed:?}"
    );
    let still_listed: Vec<u64> = listed.iter().skip(2).copied().collect();
    assert!(
        still_listed.iter().all(|n| on_edge.contains(n)),
        "the cold edge's first playlist lists the origin's window {listed:?}: {on_edge:?}\n{first}"
    );
    // Same names, same bytes: every segment both list, and the init.
    let mut compared = 0;
    for n in on_edge.iter().filter(|n| listed.contains(n)) {
        let seg = format!("seg-{n}.m4s");
        let from_origin = hls::get_ok(&http, &sibling(&origin_pl, &seg)).await;
        let Ok(from_origin) = from_origin else {
            continue; // slid out of the origin's store meanwhile
        };
        let from_edge = hls::get_ok(&http, &sibling(&e1.url(path), &seg))
            .await
            .unwrap();
        assert!(
            from_edge == from_origin,
            "{seg} differs between the origin and the edge"
        );
        compared += 1;
    }
    assert!(compared >= WINDOW - 2, "{compared} segments compared");
    let init = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("#EXT-X-MAP"))
            .map(String::from)
    };
    assert_eq!(init(&first), init(&origin), "same init name");
    let map = init(&first).unwrap();
    let uri = map
        .split("URI=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    assert!(
        hls::get_ok(&http, &sibling(&e1.url(path), uri))
            .await
            .unwrap()
            == hls::get_ok(&http, &sibling(&origin_pl, uri)).await.unwrap(),
        "same init bytes"
    );
    println!("{compared} back-filled segments byte-identical to the origin's");

    // Edge 2 is cold too, and its first request is for a segment of the window (a viewer moved
    // here mid-stream asks for its next segment, not for the playlist first): held while the
    // back-fill arrives, then served, identical.
    let origin =
        String::from_utf8_lossy(&hls::get_ok(&http, &origin_pl).await.unwrap()).to_string();
    let listed = hls::segments(&origin);
    let n = listed[listed.len() - 2];
    let seg = format!("seg-{n}.m4s");
    let asked = Instant::now();
    let from_edge = hls::get_ok(&http, &sibling(&e2.url(path), &seg)).await;
    let waited = asked.elapsed();
    let from_edge = from_edge.unwrap_or_else(|e| panic!("{seg} from the cold edge: {e:#}"));
    let from_origin = hls::get_ok(&http, &sibling(&origin_pl, &seg))
        .await
        .unwrap();
    assert!(from_edge == from_origin, "{seg} differs on the cold edge");
    println!(
        "{seg} from a cold edge in {} ms, identical",
        waited.as_millis()
    );
    // The segment being cut: held until it exists (a 404 would make the player skip or fail).
    let next = listed.last().unwrap() + 1;
    let seg = format!("seg-{next}.m4s");
    let asked = Instant::now();
    let from_edge = hls::get_ok(&http, &sibling(&e2.url(path), &seg))
        .await
        .unwrap_or_else(|e| panic!("{seg}, being cut, from the edge: {e:#}"));
    println!(
        "{seg} (being cut when asked) from the edge after {} ms",
        asked.elapsed().as_millis()
    );
    let from_origin = hls::get_ok(&http, &sibling(&origin_pl, &seg))
        .await
        .unwrap();
    assert!(from_edge == from_origin, "{seg} differs");
    // What no node has is still 404.
    let (status, _) = hls::get(&http, &sibling(&e2.url(path), "seg-1000000.m4s"))
        .await
        .unwrap();
    assert_eq!(status, 404);
    c.note("done");
}
