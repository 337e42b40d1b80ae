//! Scenarios run by more than one test (the same faults, injected differently).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use rand::Rng;

use crate::{hls, Cluster, Publisher};

const WRITES: usize = 20;
/// How long the degraded edge link is watched.
const WATCH: Duration = Duration::from_secs(30);
/// The HLS target duration of the nodes (the default).
const TARGET: Duration = Duration::from_secs(2);
/// How far behind the origin a segment may reach the edge over the degraded link.
const LATE: Duration = Duration::from_millis(3_500);

/// The scenario on a formed cluster of 3; `cut` partitions node `minority` from the other two
/// and heals when its guard is dropped.
pub async fn minority_partition<G>(mut c: Cluster, cut: impl FnOnce(&Cluster, usize) -> G) {
    let minority = c.rng.gen_range(0..3);
    let majority = [(minority + 1) % 3, (minority + 2) % 3];
    let cut_api = c
        .admin(minority)
        .await
        .with_timeout(Duration::from_secs(15));
    let apis = [c.admin(majority[0]).await, c.admin(majority[1]).await];
    let partition = cut(&c, minority);
    let cut = Instant::now();
    c.note(format!("{} cut off", c.nodes[minority].name()));

    // The majority takes writes (after electing a leader if the cut-off one was it).
    let mut written = BTreeSet::new();
    let mut first_ack = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while written.len() < WRITES {
        assert!(
            Instant::now() < deadline,
            "the majority took only {} writes",
            written.len()
        );
        let name = format!("major-{}", written.len());
        let api = &apis[written.len() % 2];
        match api.create_app(&name).await {
            Ok(r) if r.status == 201 => {
                first_ack.get_or_insert(cut.elapsed());
                written.insert(name);
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    println!(
        "first write through the majority {} ms after the partition",
        first_ack.unwrap().as_millis()
    );

    // The cut-off origin refuses writes: it cannot reach a quorum.
    let refused = cut_api.create_app("minority-write").await;
    // A timeout is not an acknowledgement either.
    if let Ok(r) = &refused {
        assert_ne!(
            r.status, 201,
            "the cut-off origin acknowledged a write: {r:?}"
        );
    }
    c.note("minority write refused");

    drop(partition);
    let healed = Instant::now();
    c.wait_apps(minority, &written, Duration::from_secs(60))
        .await
        .unwrap_or_else(|missing| panic!("the healed origin lacks {missing:?}"));
    println!(
        "healed origin caught up {} ms after the heal",
        healed.elapsed().as_millis()
    );
    // No split brain: the refused write is nowhere.
    for i in 0..3 {
        let names = c.admin(i).await.app_names().await.unwrap();
        assert!(
            !names.contains("minority-write"),
            "{} has the refused write",
            c.nodes[i].name()
        );
    }
    // And the healed origin takes writes again (a re-election may come first: its term grew).
    let api = c.admin(minority).await;
    crate::poll(
        "a write through the healed origin",
        Duration::from_secs(30),
        || async {
            let r = api
                .create_app("after-heal")
                .await
                .map_err(|e| format!("{e:#}"))?;
            matches!(r.status, 201 | 409)
                .then_some(())
                .ok_or(format!("{r:?}"))
        },
    )
    .await
    .unwrap();
    c.note("done");
}

/// The degraded edge link (`edge_link_with_loss_and_delay.rs`, and its network-namespace
/// variant): `c` is one origin whose cluster address is advertised through a delaying proxy;
/// `loss` adds 5 % loss on the edge's side of the proxy and returns its guard. Beside the HLS
/// room, a WebSocket camera room (640x480 JPEGs at 10 fps) plays as MJPEG on the edge.
pub async fn edge_link_degraded<G>(mut c: Cluster, loss: impl FnOnce(&Cluster, &crate::Node) -> G) {
    let admin = c.admin(0).await;
    let key = admin.rtmp_ingress("live", "cam").await.unwrap();
    let r = admin
        .post("/apps/live/ws-ingest", serde_json::json!({"room": "door"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let (ws_url, ws_key) = (
        r.data()["wsUrl"].as_str().unwrap().to_string(),
        r.data()["streamKey"].as_str().unwrap().to_string(),
    );
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let _loss = loss(&c, &edge);
    c.note("edge <-> origin: +100 ms ±10 ms, 5% loss each way");
    let _publisher = Publisher::start_hd(&c.nodes[0].rtmp_url(&key));
    let http = hls::client();
    let origin_pl = c.nodes[0].url("/hls/live/cam/index.m3u8");
    let edge_pl = edge.url("/hls/live/cam/index.m3u8");
    hls::wait_segments(&http, &origin_pl, 1, Duration::from_secs(30))
        .await
        .unwrap();
    hls::wait_segments(&http, &edge_pl, 2, Duration::from_secs(40))
        .await
        .unwrap();
    let camera =
        crate::camera::Camera::start(&ws_url, &ws_key, crate::camera::jpegs(20, "640x480"), 10)
            .await;
    let mjpeg = edge.url("/live/live/door/mjpeg");
    crate::poll(
        "the camera room on the edge",
        Duration::from_secs(30),
        || async {
            let n = crate::camera::count_mjpeg(&mjpeg, Duration::from_secs(1)).await;
            (n > 0).then_some(()).ok_or(format!("{n} pictures"))
        },
    )
    .await
    .unwrap();
    let until = Instant::now() + WATCH;
    let sent0 = camera.sent.load(std::sync::atomic::Ordering::Relaxed);
    let (o, e, pictures) = tokio::join!(
        watch(origin_pl.clone(), until),
        watch(edge_pl.clone(), until),
        crate::camera::count_mjpeg(&mjpeg, WATCH)
    );
    let sent = camera.sent.load(std::sync::atomic::Ordering::Relaxed) - sent0;
    println!(
        "MJPEG viewer on the edge: {pictures} of {sent} camera pictures in {} s",
        WATCH.as_secs()
    );
    // A slow link may cost pictures (each is its own group; old ones are dropped, never queued),
    // but the camera room keeps playing: at least one picture a second on average (how many of
    // the camera's ten arrive depends on the machine's load, not on a promise).
    assert!(
        pictures >= WATCH.as_secs(),
        "MJPEG viewer got {pictures} of {sent} pictures in {WATCH:?}"
    );
    let (o_segs, o_parts) = o;
    let (e_segs, e_parts) = e;
    // Segments the origin listed during the window, except the last two (the edge may not have
    // had time): each must be on the edge, behind the origin by less than the target duration
    // plus what the link costs (100 ms each way, 5 % loss, retransmits) and the pollers' jitter:
    // a player holding three segments never stalls. The median stays under the target.
    let first_edge = *e_segs.keys().next().expect("the edge listed segments");
    let checked: Vec<u64> = o_segs
        .keys()
        .copied()
        .filter(|n| *n >= first_edge)
        .collect();
    let checked = &checked[..checked.len().saturating_sub(2)];
    assert!(checked.len() >= 4, "too few segments to judge: {checked:?}");
    let mut late = Vec::new();
    let mut delays = Vec::new();
    for n in checked {
        match e_segs.get(n) {
            None => late.push(format!("seg {n} missing on the edge")),
            Some(t) => {
                let d = t.saturating_duration_since(o_segs[n]);
                delays.push(d);
                if d > LATE {
                    late.push(format!("seg {n} {} ms late", ms(d)));
                }
            }
        }
    }
    let mut part_delays: Vec<Duration> = o_parts
        .iter()
        .filter_map(|(k, t)| e_parts.get(k).map(|e| e.saturating_duration_since(*t)))
        .collect();
    delays.sort();
    part_delays.sort();
    let pct = |v: &[Duration], q: f64| {
        v.get(((v.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0, |d| ms(*d))
    };
    println!(
        "{} segments checked: edge behind origin p50 {} ms, max {} ms; {} parts: p50 {} ms, p99 {} ms; relay groups lost: {}",
        checked.len(),
        pct(&delays, 0.5),
        pct(&delays, 1.0),
        part_delays.len(),
        pct(&part_delays, 0.5),
        pct(&part_delays, 0.99),
        edge.metric("streamhub_relay_groups_lost_total").await.unwrap_or(f64::NAN)
    );
    assert!(late.is_empty(), "late or missing segments: {late:?}");
    assert!(
        pct(&delays, 0.5) <= TARGET.as_millis(),
        "the edge is behind by more than a target duration half the time: {delays:?}"
    );
    c.note("done");
}

/// First time each segment and part was listed, polling `url` every 50 ms until `until`.
async fn watch(
    url: String,
    until: Instant,
) -> (BTreeMap<u64, Instant>, BTreeMap<(u64, usize), Instant>) {
    let http = hls::client();
    let (mut segs, mut parts) = (BTreeMap::new(), BTreeMap::new());
    while Instant::now() < until {
        if let Ok(body) = hls::get_ok(&http, &url).await {
            let text = String::from_utf8_lossy(&body).to_string();
            let now = Instant::now();
            for n in hls::segments(&text) {
                segs.entry(n).or_insert(now);
            }
            let open = hls::preload_hint(&text).map(|(m, _)| m);
            for m in open.into_iter().chain(hls::segments(&text).last().copied()) {
                for (i, _) in hls::parts(&text, m).iter().enumerate() {
                    parts.entry((m, i)).or_insert(now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (segs, parts)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}
