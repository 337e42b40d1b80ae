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
    // A room live on the origin about to be cut off (its encoder stays connected to it).
    let key = apis[0].rtmp_ingress("split", "cam").await.unwrap();
    let (minor_name, major_name) = (
        c.nodes[minority].name().to_string(),
        c.nodes[majority[0]].name().to_string(),
    );
    let mut stale = Publisher::start(&c.nodes[minority].rtmp_url(&key));
    wait_owners(
        &apis[0],
        "split",
        "cam",
        &[&minor_name],
        Duration::from_secs(30),
    )
    .await;
    c.note(format!("split/cam live on {minor_name}"));
    // An edge (joined through the majority) plays the room throughout: it must show exactly one
    // new session, the majority's, however the cut-off holder behaves.
    let edge = c.start_edge("edge-1", "local", majority[1], &[]).await;
    let watch = PlaylistWatch::start(edge.url("/hls/split/cam/index.m3u8")).await;
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

    // The encoder moves to a majority origin, retrying as soon as it is refused; the majority
    // gives it the room once the cut-off holder is declared dead.
    let url = c.nodes[majority[0]].rtmp_url(&key);
    let mut moved = Publisher::start(&url);
    let took = crate::poll(
        "the majority takes the room",
        Duration::from_secs(60),
        || {
            if moved.exit_status().is_some() {
                moved = Publisher::start(&url);
            }
            let (api, major_name) = (&apis[1], major_name.clone());
            async move {
                match owners(api, "split", "cam").await.as_slice() {
                    [o] if *o == major_name => Ok(Instant::now()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
    .unwrap();
    println!(
        "room taken by the majority {} ms after the partition",
        took.saturating_duration_since(cut).as_millis()
    );
    c.note(format!("{major_name} took split/cam"));
    // Meanwhile the cut-off holder, whose encoder still pushes, holds its media back: it could
    // not renew its lease, so it stopped serving before the majority could take the room.
    let held_back = c.nodes[minority]
        .metric("streamhub_publish_frames_fenced_total")
        .await
        .unwrap();
    assert!(
        held_back > 0.0,
        "the cut-off holder kept serving its room (no frame held back)"
    );
    println!("frames held back by the cut-off holder: {held_back}");

    // The majority's leader and term as the partition heals: the cut-off origin must not have
    // raised its term while it could reach nobody (pre-vote), or on return it would depose this
    // healthy leader and leave the cluster without one for an election or two.
    let (leader_before, term_before) = leader_and_term(&apis[0]).await;
    let minority_term = term_of(&cut_api).await;
    assert!(
        minority_term <= term_before,
        "the cut-off origin raised its term to {minority_term} (the majority's: {term_before})"
    );
    drop(partition);
    let healed = Instant::now();
    c.wait_apps(minority, &written, Duration::from_secs(60))
        .await
        .unwrap_or_else(|missing| panic!("the healed origin lacks {missing:?}"));
    println!(
        "healed origin caught up {} ms after the heal",
        healed.elapsed().as_millis()
    );
    // The stale publisher is dropped on return; one holder, everywhere, and it still publishes.
    crate::poll(
        "the stale publisher dropped",
        Duration::from_secs(20),
        || {
            let exited = stale.exit_status().is_some();
            async move {
                exited
                    .then_some(())
                    .ok_or_else(|| "still publishing".to_string())
            }
        },
    )
    .await
    .unwrap();
    println!(
        "stale publisher dropped {} ms after the heal",
        healed.elapsed().as_millis()
    );
    for i in 0..3 {
        let api = c.admin(i).await;
        wait_owners(
            &api,
            "split",
            "cam",
            &[&major_name],
            Duration::from_secs(30),
        )
        .await;
    }
    assert!(
        moved.exit_status().is_none(),
        "the majority's publisher died: {}",
        moved.stderr()
    );
    // The edge's playlist, from before the cut to a few seconds past the stale publisher's drop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.check(1);
    let (leader_after, term_after) = leader_and_term(&apis[0]).await;
    assert_eq!(
        (&leader_after, term_after),
        (&leader_before, term_before),
        "the healed origin deposed the majority's leader (leader, term before the heal: \
         {leader_before} {term_before})"
    );
    println!("the majority's leader {leader_after} kept term {term_after} across the heal");
    drop(edge);
    let log = c.nodes[minority].log_of_current_run();
    assert!(
        !log.contains("media flows again"),
        "the cut-off holder resumed its stale room's media"
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
    // And the healed origin takes writes again.
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

/// The leader (by name) and term `api`'s origin reports, once it reports a leader.
async fn leader_and_term(api: &crate::Api) -> (String, u64) {
    crate::poll("a leader is known", Duration::from_secs(30), || async {
        let s = api.cluster().await.map_err(|e| format!("{e:#}"))?;
        match (s["leader"].as_str(), s["term"].as_u64()) {
            (Some(l), Some(t)) => Ok((l.to_string(), t)),
            _ => Err(s.to_string()),
        }
    })
    .await
    .unwrap()
}

/// The term `api`'s origin reports (with or without a leader).
async fn term_of(api: &crate::Api) -> u64 {
    crate::poll("the term", Duration::from_secs(30), || async {
        let s = api.cluster().await.map_err(|e| format!("{e:#}"))?;
        s["term"].as_u64().ok_or(s.to_string())
    })
    .await
    .unwrap()
}

/// Every origin `GET /apps/:app/rooms` on `api` lists for `room` (more than one would be split
/// brain).
pub async fn owners(api: &crate::Api, app: &str, room: &str) -> Vec<String> {
    let Ok(r) = api.get(&format!("/apps/{app}/rooms")).await else {
        return vec![];
    };
    r.data()
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["room"] == room)
                .filter_map(|x| x["origin"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `timeout` until [`owners`] is exactly `want`.
pub async fn wait_owners(
    api: &crate::Api,
    app: &str,
    room: &str,
    want: &[&str],
    timeout: Duration,
) {
    crate::poll("room owners", timeout, || async move {
        let got = owners(api, app, room).await;
        if got.iter().map(String::as_str).eq(want.iter().copied()) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
    .unwrap();
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

/// Which origin dies under a live room in [`origin_failover`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The room's holder is a follower: placement moves under a standing leader.
    Follower,
    /// The holder is the Raft leader: an election comes first, then the placement moves.
    Leader,
}

/// When each step of an origin failover was seen, from the kill (SIGKILL) of the holder.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// The dead holder's room left the placement table (`GET /apps/:app/rooms`).
    pub detected: Duration,
    /// The backup origin holds the room (the encoder's retry was accepted).
    pub accepted: Duration,
    /// The backup origin's playlist has a part of the new session.
    pub origin_media: Duration,
    /// The edge's playlist has a part of the new session (after a discontinuity).
    pub edge_media: Duration,
    /// Encoder attempts on the backup origin (1: the first was accepted).
    pub attempts: u32,
}

/// The dead holder's full lease (10 s), less the half-second heartbeat period: without declaring
/// the holder dead early, no other origin could take its room before this after the kill.
pub const FULL_LEASE: Duration = Duration::from_secs(9);

impl Failover {
    /// Asserts the failover's promises: the backup origin took the room before the dead
    /// holder's full lease could have let it (the holder was declared dead early), and the edge
    /// followed once its relay stalled rather than waiting out the dead holder's QUIC timeouts
    /// (bounded well under those, with room for a loaded machine).
    pub fn assert_moved_early(&self) {
        assert!(
            self.accepted < FULL_LEASE,
            "the backup origin took the room {:?} after the kill: the dead holder was not declared dead early",
            self.accepted
        );
        let lag = self.edge_media.saturating_sub(self.origin_media);
        assert!(
            lag <= Duration::from_secs(8),
            "new media on the edge {lag:?} after the new origin had it"
        );
    }
}

/// A room published to one origin (the Raft leader or a follower, as `holder` says) and watched
/// through an edge; the origin is killed (-9) and the encoder retries its backup origin at once
/// each time it is refused, as an encoder with a backup URL does. Returns the timeline, after
/// checking that the edge's playlist keeps its numbering with a discontinuity.
pub async fn origin_failover(c: &mut Cluster, holder: Holder) -> Failover {
    origin_failover_with(c, holder, async |_: &crate::Node| ())
        .await
        .timeline
}

/// What [`origin_failover_with`] leaves running.
pub struct FailoverRun<T> {
    pub timeline: Failover,
    /// What `before_kill` gave.
    pub extra: T,
    /// The edge, still serving the room.
    pub edge: crate::Node,
    /// The encoder, still publishing to the backup origin.
    pub publisher: Publisher,
}

/// [`origin_failover`], calling `before_kill` with the edge once it serves the room (to start
/// players on it); leaves the edge and the encoder running.
pub async fn origin_failover_with<T>(
    c: &mut Cluster,
    holder: Holder,
    before_kill: impl AsyncFnOnce(&crate::Node) -> T,
) -> FailoverRun<T> {
    let leader = c.leader().await;
    let victim = match holder {
        Holder::Leader => leader,
        Holder::Follower => {
            let followers: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != leader).collect();
            followers[c.rng.gen_range(0..followers.len())]
        }
    };
    let backup = (0..c.nodes.len())
        .find(|&i| i != victim && i != leader)
        .unwrap_or((victim + 1) % c.nodes.len());
    let key = c
        .admin(backup)
        .await
        .rtmp_ingress("live", "cam")
        .await
        .unwrap();
    let edge = c.start_edge("edge-1", "local", backup, &[]).await;
    let publisher = Publisher::start(&c.nodes[victim].rtmp_url(&key));
    let (victim_name, backup_name) = (
        c.nodes[victim].name().to_string(),
        c.nodes[backup].name().to_string(),
    );
    c.note(format!("publishing to {victim_name} ({holder:?})"));
    let http = hls::client();
    let url = edge.url("/hls/live/cam/index.m3u8");
    let before = hls::wait_segments(&http, &url, 2, Duration::from_secs(40))
        .await
        .unwrap();
    let last_before = *hls::segments(&before).last().unwrap();
    let discontinuities = before.matches("#EXT-X-DISCONTINUITY").count();

    let extra = before_kill(&edge).await;
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
    // Where the placement table puts the room, watched through the backup origin.
    let api = c.admin(backup).await;
    let placements = tokio::spawn({
        let (api, victim_name, backup_name) =
            (api.clone(), victim_name.clone(), backup_name.clone());
        async move {
            let mut detected = None;
            loop {
                if let Ok(r) = api.get("/apps/live/rooms").await {
                    let origins: Vec<String> = r
                        .data()
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|room| room["origin"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    if detected.is_none() && r.status == 200 && !origins.contains(&victim_name) {
                        detected = Some(Instant::now());
                    }
                    if origins.contains(&backup_name) {
                        let accepted = Instant::now();
                        return (detected.unwrap_or(accepted), accepted);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    c.nodes[victim].kill9();
    drop(publisher);
    let killed = Instant::now();
    c.note(format!("{victim_name} killed"));
    // The encoder retries its backup URL as soon as it is refused.
    let backup_url = c.nodes[backup].rtmp_url(&key);
    let mut republisher = Publisher::start(&backup_url);
    let mut attempts = 1;
    let (detected, accepted) = loop {
        if placements.is_finished() {
            break placements.await.unwrap();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "{backup_name} never took the room: last attempt said {}",
            republisher.stderr()
        );
        if republisher.exit_status().is_some() {
            republisher = Publisher::start(&backup_url);
            attempts += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.note(format!(
        "{backup_name} accepted the publisher (attempt {attempts})"
    ));
    let backup_pl = c.nodes[backup].url("/hls/live/cam/index.m3u8");
    let origin_media = crate::poll(
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
    let (edge_media, text) = crate::poll(
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
            // The new session starts after a discontinuity the playlist did not have before;
            // its first part (or segment) listed after it is new media.
            let new_session = text.matches("#EXT-X-DISCONTINUITY").count() > discontinuities;
            let after = text.rsplit("#EXT-X-DISCONTINUITY").next().unwrap_or("");
            let resumed = new_session
                && newest > last_before
                && (after.contains("#EXT-X-PART:") || after.contains("#EXTINF"));
            resumed.then(|| (Instant::now(), text.clone())).ok_or(text)
        },
    )
    .await
    .unwrap();
    watching.abort();
    let msns = hls::segments(&text);
    assert!(
        msns.windows(2).all(|w| w[1] > w[0]),
        "numbering only goes forward: {text}"
    );
    assert!(text.contains(&format!("seg-{last_before}.m4s")) || msns[0] > last_before);
    let since = |t: Instant| t.saturating_duration_since(killed);
    let f = Failover {
        detected: since(detected),
        accepted: since(accepted),
        origin_media: since(origin_media),
        edge_media: since(edge_media),
        attempts,
    };
    println!(
        "{holder:?} holder killed -> room freed {} ms, republish accepted {} ms ({attempts} attempts), first part on the new origin {} ms, new media on the edge {} ms",
        f.detected.as_millis(),
        f.accepted.as_millis(),
        f.origin_media.as_millis(),
        f.edge_media.as_millis()
    );
    FailoverRun {
        timeline: f,
        extra,
        edge,
        publisher: republisher,
    }
}

/// Watches a room's HLS playlist on an edge while origins fail: each publisher session the edge
/// serves adds one discontinuity, so a stale holder that served again would show as one more
/// session than expected.
pub struct PlaylistWatch {
    before: usize,
    /// Per read: the discontinuities so far and the segment numbers listed.
    seen: std::sync::Arc<std::sync::Mutex<Vec<PlaylistRead>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PlaylistWatch {
    /// Starts watching `url` (read every 200 ms) once it lists two segments.
    pub async fn start(url: String) -> PlaylistWatch {
        let http = hls::client();
        let first = hls::wait_segments(&http, &url, 2, Duration::from_secs(40))
            .await
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    if let Ok(body) = hls::get_ok(&http, &url).await {
                        let text = String::from_utf8_lossy(&body).to_string();
                        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        if seen.len() < 10_000 {
                            seen.push((discontinuities(&text), hls::segments(&text)));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        PlaylistWatch {
            before: discontinuities(&first),
            seen,
            task,
        }
    }

    /// Stops watching and asserts what the edge showed since the start: exactly `new` new
    /// publisher sessions, sessions only coming, numbering only forward.
    pub fn check(self, new: usize) {
        self.task.abort();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let sessions: Vec<usize> = seen.iter().map(|(d, _)| *d).collect();
        assert_eq!(
            sessions.iter().max().copied(),
            Some(self.before + new),
            "the edge served {new} new session(s), no more: {sessions:?} (before: {})",
            self.before
        );
        assert!(
            sessions.windows(2).all(|w| w[1] >= w[0]),
            "sessions only come: {sessions:?}"
        );
        let newest: Vec<u64> = seen
            .iter()
            .filter_map(|(_, segs)| segs.last().copied())
            .collect();
        assert!(
            newest.windows(2).all(|w| w[1] >= w[0]),
            "the edge's numbering only goes forward: {newest:?}"
        );
    }
}

type PlaylistRead = (usize, Vec<u64>);

/// Discontinuities a playlist has had: those slid out of its window
/// (`EXT-X-DISCONTINUITY-SEQUENCE`) and those in it.
pub fn discontinuities(playlist: &str) -> usize {
    let slid: usize = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-DISCONTINUITY-SEQUENCE:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    slid + playlist
        .lines()
        .filter(|l| l.trim() == "#EXT-X-DISCONTINUITY")
        .count()
}
