//! 1 origin + 2 edges as real processes: ffmpeg publishes RTMP to the origin, both edges pull the
//! room over the QUIC relay, and the origin and the edges serve byte-identical segments and init
//! under identical names; ffprobe reads HLS from each edge; LL-HLS works on an edge (a blocking
//! reload for the hinted part answers with that part, parts concatenate to their segment, and
//! ffmpeg decodes the LL-HLS playlist); a viewer token presented to the edge is verified offline.

use std::time::{Duration, Instant};

use streamhub_chaos_tests::hls::{self, ffmpeg_decode_frames, ffprobe_codecs, sibling};
use streamhub_chaos_tests::{chaos_seed, Cluster, Publisher};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_serve_identical_segments() {
    let mut c = Cluster::start(1, chaos_seed()).await;
    let key = c.admin(0).await.rtmp_ingress("live", "cam").await.unwrap();
    let e1 = c.start_edge("edge-1", "eu", 0, &[]).await;
    let e2 = c.start_edge("edge-2", "us", 0, &[]).await;
    let _publisher = Publisher::start(&c.nodes[0].rtmp_url(&key));
    c.note("publishing to origin-1");
    let http = hls::client();
    let path = "/hls/live/cam/index.m3u8";
    let origin_pl = c.nodes[0].url(path);
    hls::wait_segments(&http, &origin_pl, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let (u1, u2) = (e1.url(path), e2.url(path));
    hls::wait_segments(&http, &u1, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let p2 = hls::wait_segments(&http, &u2, 2, Duration::from_secs(30))
        .await
        .unwrap();
    c.note("both edges list segments");

    // A segment every node has complete: the newest one the edge that started last lists.
    let n = *hls::segments(&p2).last().unwrap();
    for url in [&origin_pl, &u1, &u2] {
        hls::wait_segment(&http, url, n, Duration::from_secs(20))
            .await
            .unwrap();
    }
    let seg = format!("seg-{n}.m4s");
    let from_origin = hls::get_ok(&http, &sibling(&origin_pl, &seg))
        .await
        .unwrap();
    assert!(from_origin.len() > 1000, "a real segment");
    for url in [&u1, &u2] {
        let from_edge = hls::get_ok(&http, &sibling(url, &seg)).await.unwrap();
        assert!(
            from_edge == from_origin,
            "{seg} differs between origin-1 and {url}"
        );
        let init = hls::get_ok(&http, &sibling(url, "init.mp4")).await.unwrap();
        let origin_init = hls::get_ok(&http, &sibling(&origin_pl, "init.mp4"))
            .await
            .unwrap();
        assert!(init == origin_init, "init differs at {url}");
    }
    let (t1, t2) = (
        hls::get_ok(&http, &u1).await.unwrap(),
        hls::get_ok(&http, &u2).await.unwrap(),
    );
    let map = |t: &[u8]| {
        String::from_utf8_lossy(t)
            .lines()
            .find(|l| l.starts_with("#EXT-X-MAP"))
            .map(String::from)
    };
    assert_eq!(map(&t1), map(&t2), "same init name everywhere");
    println!(
        "segment {n}: {} bytes, identical on origin-1, edge-1, edge-2",
        from_origin.len()
    );

    for url in [&u1, &u2] {
        let codecs = ffprobe_codecs(url).unwrap();
        assert!(
            codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
            "{codecs:?}"
        );
    }

    // LL-HLS on edge-1: the parts of segment n concatenate to it.
    let text = String::from_utf8_lossy(&t1).to_string();
    let parts = hls::parts(&text, n);
    assert!(parts.len() >= 2, "segment {n} lists its parts: {text}");
    let mut joined = Vec::new();
    for p in &parts {
        joined.extend(hls::get_ok(&http, &sibling(&u1, p)).await.unwrap());
    }
    assert!(joined == from_origin, "parts of {seg} concatenate to it");

    // A blocking reload for the hinted (not yet existing) part answers with that part listed.
    let text = String::from_utf8_lossy(&hls::get_ok(&http, &u1).await.unwrap()).to_string();
    let (msn, part) = hls::preload_hint(&text).expect("a preload hint");
    let hinted_uri = format!("part-{msn}.{part}.m4s");
    assert!(
        !hls::parts(&text, msn).contains(&hinted_uri),
        "the hinted part is not listed yet"
    );
    let started = Instant::now();
    let blocked = format!("{u1}?_HLS_msn={msn}&_HLS_part={part}");
    let answer = String::from_utf8_lossy(&hls::get_ok(&http, &blocked).await.unwrap()).to_string();
    let waited = started.elapsed();
    let listed =
        hls::parts(&answer, msn).contains(&hinted_uri) || hls::segments(&answer).contains(&msn);
    assert!(listed, "the answer lists the part it waited for:\n{answer}");
    // Answered once the part existed, not at the hold limit (three target durations, which
    // answers 503 and would have failed `get_ok`).
    assert!(waited < Duration::from_secs(6), "held {waited:?}");
    println!(
        "blocking reload for part {msn}.{part} held {} ms",
        waited.as_millis()
    );
    let hinted = hls::get_ok(&http, &sibling(&u1, &hinted_uri))
        .await
        .unwrap();
    assert!(hinted.len() > 100);

    // A viewer token presented to an edge is verified offline with the app's cached key.
    let admin = c.admin(0).await;
    let mint = |room: &str| {
        let (admin, room) = (admin.clone(), room.to_string());
        async move {
            let r = admin
                .post(
                    "/apps/live/tokens",
                    serde_json::json!({"room": room, "identity": "viewer-1"}),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201, "{r:?}");
            r.data()["token"].as_str().unwrap().to_string()
        }
    };
    let good = mint("cam").await;
    let other_room = mint("other").await;
    for (token, want) in [
        (good.as_str(), 200),
        (other_room.as_str(), 401),
        ("garbage", 401),
    ] {
        for base in [&u1, &origin_pl] {
            let (status, body) = hls::get(&http, &format!("{base}?token={token}"))
                .await
                .unwrap();
            assert_eq!(
                status,
                want,
                "{base} token {}: {}",
                &token[..8.min(token.len())],
                String::from_utf8_lossy(&body)
            );
        }
    }

    // ffmpeg plays the LL-HLS playlist of an edge.
    let frames = ffmpeg_decode_frames(&u1, 3).unwrap();
    assert!(frames >= 50, "decoded {frames} frames in 3 s of 25 fps");
    c.note("done");
}
