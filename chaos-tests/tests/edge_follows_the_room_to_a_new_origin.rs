//! Origin failover under an edge: the origin holding a live room is killed (-9) while a viewer
//! plays it from an edge; the publisher reconnects to another origin (as an encoder with a
//! backup URL would). The edge follows the new placement and keeps serving the same playlist:
//! numbering goes on, a discontinuity marks the new session, and new media (its first LL-HLS
//! part) arrives within 3 s of the republish.

use std::time::{Duration, Instant};

use rand::Rng;
use streamhub_chaos_tests::hls;
use streamhub_chaos_tests::{chaos_seed, poll, Cluster, Publisher};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_follows_the_room_to_a_new_origin() {
    let mut c = Cluster::start(3, chaos_seed()).await;
    let key = c.admin(0).await.rtmp_ingress("live", "cam").await.unwrap();
    let victim = c.rng.gen_range(0..3);
    let backup = (victim + 1) % 3;
    let edge = c.start_edge("edge-1", "local", backup, &[]).await;
    let publisher = Publisher::start(&c.nodes[victim].rtmp_url(&key));
    c.note(format!("publishing to {}", c.nodes[victim].name()));
    let http = hls::client();
    let url = edge.url("/hls/live/cam/index.m3u8");
    let before = hls::wait_segments(&http, &url, 2, Duration::from_secs(40))
        .await
        .unwrap();
    let last_before = *hls::segments(&before).last().unwrap();

    // A viewer keeps playing through the outage (so the edge keeps the room).
    let watching = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            loop {
                let _ = hls::get(&http, &url).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });

    c.nodes[victim].kill9();
    drop(publisher);
    let killed = Instant::now();
    // The encoder retries its backup URL until the cluster gives it the room (the dead
    // origin's lease has to run out first).
    let api = c.admin(backup).await;
    let backup_name = c.nodes[backup].name().to_string();
    let mut republisher = None;
    let accepted = poll(
        "the backup origin accepts the publisher",
        Duration::from_secs(40),
        || {
            let fresh = republisher
                .as_mut()
                .is_none_or(|p: &mut Publisher| p.exit_status().is_some());
            if fresh {
                republisher = Some(Publisher::start(&c.nodes[backup].rtmp_url(&key)));
            }
            let (api, backup_name) = (api.clone(), backup_name.clone());
            async move {
                let r = api
                    .get("/apps/live/rooms")
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let here = r
                    .data()
                    .as_array()
                    .is_some_and(|a| a.iter().any(|room| room["origin"] == backup_name.as_str()));
                here.then_some(Instant::now())
                    .ok_or_else(|| r.body.to_string())
            }
        },
    )
    .await
    .unwrap();
    c.note(format!("{} accepted the publisher", c.nodes[backup].name()));
    // The republished media reaches the backup origin (the encoder's own start-up is not the
    // edge's doing): its first LL-HLS part.
    let backup_pl = c.nodes[backup].url("/hls/live/cam/index.m3u8");
    let origin_media = poll(
        "new media on the backup origin",
        Duration::from_secs(30),
        || async {
            let body = hls::get_ok(&http, &backup_pl)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let text = String::from_utf8_lossy(&body).to_string();
            text.contains("#EXT-X-PART:").then(Instant::now).ok_or(text)
        },
    )
    .await
    .unwrap();
    let resumed = poll(
        "the edge serves the new session",
        Duration::from_secs(30),
        || async {
            let body = hls::get_ok(&http, &url)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let text = String::from_utf8_lossy(&body).to_string();
            // New media is the first LL-HLS part of the new session (segments follow).
            let newest_part = text
                .lines()
                .filter_map(|l| {
                    l.split("URI=\"part-")
                        .nth(1)?
                        .split('.')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .unwrap_or(0);
            let newest = hls::segments(&text)
                .last()
                .copied()
                .unwrap_or(0)
                .max(newest_part);
            let resumed = newest > last_before + 1 && text.contains("#EXT-X-DISCONTINUITY");
            resumed.then(|| (Instant::now(), text.clone())).ok_or(text)
        },
    )
    .await
    .unwrap();
    watching.abort();
    let (resumed_at, text) = resumed;
    println!(
        "origin killed -> republish accepted: {} ms; -> its first part on the new origin: {} ms; -> new media (first part) on the edge: {} ms after the origin had it; kill -> new media on the edge: {} ms",
        (accepted - killed).as_millis(),
        (origin_media - accepted).as_millis(),
        resumed_at.saturating_duration_since(origin_media).as_millis(),
        (resumed_at - killed).as_millis()
    );
    let msns = hls::segments(&text);
    assert!(
        msns.windows(2).all(|w| w[1] > w[0]),
        "numbering only goes forward: {text}"
    );
    assert!(text.contains(&format!("seg-{last_before}.m4s")) || msns[0] > last_before);
    // The edge follows the placement (checked every second) rather than waiting out the dead
    // holder's QUIC timeouts (connect 3 s, idle 10 s): bounded well under those together, with
    // room for a loaded machine.
    let lag = resumed_at.saturating_duration_since(origin_media);
    assert!(
        lag <= Duration::from_secs(8),
        "new media on the edge {lag:?} after the new origin had it"
    );
    c.note("done");
}
