//! Webhooks against a real receiver that checks every signature the way docs/webhooks.md
//! tells integrators to: a room's events arrive signed and in sequence; an outage of the
//! receiver loses nothing and duplicates nothing acknowledged; the origin delivering them is
//! killed and another one takes over without a gap; URLs into the node itself are refused;
//! an app that asks for `viewer.count` gets its rooms' viewers, and the room of an origin
//! killed under its publisher ends (`publisher.left` fenced, `room.ended`) once the lease is
//! over, with no encoder coming back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::webhook::{verify, Mode, Receiver};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Api, Cluster, Publisher};
use streamhub_testkit::single::Origin;

const ALLOW_PRIVATE: (&str, &str) = ("STREAMHUB_WEBHOOK_ALLOW_PRIVATE", "1");
/// The signature's timestamp may be this old (docs/webhooks.md says 5 minutes).
const TOLERANCE: Duration = Duration::from_secs(300);

/// A webhook of `app` to `url` for every event: its id and secret.
async fn webhook(api: &Api, app: &str, url: &str) -> (String, String) {
    let r = api
        .post(
            &format!("/apps/{app}/webhooks"),
            json!({"url": url, "events": ["*"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let d = r.data();
    let secret = d["secret"].as_str().expect("secret shown once").to_string();
    (d["id"].as_str().unwrap().to_string(), secret)
}

/// The delivery log of webhook `id` of `app` once `done` holds for it (attempts are reported
/// through Raft after the receiver answers, so the log may trail the receiver a moment).
async fn delivery_log(
    api: &Api,
    app: &str,
    id: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    poll("the delivery log", Duration::from_secs(30), || async {
        let log = api
            .get(&format!("/apps/{app}/webhooks/{id}/deliveries"))
            .await
            .map_err(|e| e.to_string())?;
        let entries = log.data().as_array().cloned().unwrap_or_default();
        if done(&entries) {
            Ok(entries)
        } else {
            Err(format!("{log:?}"))
        }
    })
    .await
    .unwrap()
}

/// Every acknowledged event, verified: checks each request's signature and headers, that no
/// event was acknowledged twice, and answers the bodies by event id.
fn acknowledged(rx: &Receiver, secret: &str) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    for r in rx.received() {
        let body = verify(secret, &r, TOLERANCE).unwrap_or_else(|e| panic!("{e}: {r:?}"));
        assert_eq!(body["id"], r.delivery.as_str(), "X-StreamHub-Delivery");
        assert_eq!(body["type"], r.event.as_str(), "X-StreamHub-Event");
        if r.answered != 200 {
            continue;
        }
        let n: u64 = body["id"].as_str().unwrap()["evt_".len()..]
            .parse()
            .unwrap();
        if let Some(first) = out.insert(n, body.clone()) {
            panic!("event delivered again after it was acknowledged: {first} then {body}");
        }
    }
    out
}

/// The types of `room`'s events in sequence order, checking the sequence has no gap.
fn room_events(events: &BTreeMap<u64, Value>, room: &str) -> Vec<String> {
    let mut by_seq: Vec<(u64, String)> = events
        .values()
        .filter(|e| e["room"] == room)
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    by_seq.sort();
    for (i, (seq, _)) in by_seq.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "a gap in {room}'s sequence: {by_seq:?}");
    }
    by_seq.into_iter().map(|(_, t)| t).collect()
}

/// A room's events when `publish_once` publishes into it: its ingress is created, then it
/// lives once.
const ROOM_LIFE: [&str; 5] = [
    "ingress.created",
    "room.started",
    "publisher.joined",
    "publisher.left",
    "room.ended",
];

/// Publishes to `room` of `app` through `node` for a few seconds and waits for ffmpeg to end.
async fn publish_once(c: &Cluster, api: &Api, node: usize, app: &str, room: &str) {
    let key = api.rtmp_ingress(app, room).await.unwrap();
    let mut p = Publisher::for_secs(&c.nodes[node].rtmp_url(&key), 4);
    let done = p.wait_exit(Duration::from_secs(60)).await;
    assert!(
        done.is_some_and(|(s, _)| s.success()),
        "ffmpeg: {}",
        p.stderr()
    );
}

async fn wait_for(
    what: &str,
    rx: &Receiver,
    secret: &str,
    timeout: Duration,
    done: impl Fn(&BTreeMap<u64, Value>) -> bool,
) -> BTreeMap<u64, Value> {
    poll(what, timeout, || async {
        let got = acknowledged(rx, secret);
        if done(&got) {
            Ok(got)
        } else {
            let types: Vec<_> = got
                .values()
                .map(|e| format!("{}:{}#{}", e["type"], e["room"], e["seq"]))
                .collect();
            Err(format!("{} acknowledged: {types:?}", got.len()))
        }
    })
    .await
    .unwrap()
}

fn has_room_life(got: &BTreeMap<u64, Value>, room: &str) -> bool {
    got.values()
        .filter(|e| e["room"] == room && e["type"] == "room.ended")
        .count()
        >= 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_events_arrive_signed_and_in_sequence() {
    if !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let rx = Receiver::start().await.unwrap();
    let c = Cluster::start_with_env(3, chaos_seed(), &[ALLOW_PRIVATE]).await;
    let api = c.admin(0).await;
    assert_eq!(api.create_app("hooks").await.unwrap().status, 201);
    let (_, secret) = webhook(&api, "hooks", &rx.url()).await;
    // Publish through another origin than the one the API was called on.
    publish_once(&c, &api, 1, "hooks", "stage").await;
    let got = wait_for(
        "the room's events",
        &rx,
        &secret,
        Duration::from_secs(60),
        |g| has_room_life(g, "stage"),
    )
    .await;
    assert_eq!(room_events(&got, "stage"), ROOM_LIFE, "{got:#?}");
    let joined = got
        .values()
        .find(|e| e["type"] == "publisher.joined")
        .unwrap();
    assert_eq!(joined["data"]["protocol"], "rtmp", "{joined}");
    assert_eq!(joined["node"], c.nodes[1].name(), "{joined}");
    assert_eq!(joined["app"], "hooks");
    let left = got
        .values()
        .find(|e| e["type"] == "publisher.left")
        .unwrap();
    assert_eq!(left["data"]["reason"], "ended", "{left}");
    let ids: HashSet<_> = got.values().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), got.len(), "ids are unique");
    // The ingress was created through the API: its event came first.
    let first = got.values().next().unwrap();
    assert_eq!(first["type"], "ingress.created", "{first}");

    // The same events in the feed, and the deliveries in the log.
    let feed = api.get("/apps/hooks/events?limit=100").await.unwrap();
    let feed_ids: Vec<_> = feed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].to_string())
        .collect();
    for id in &ids {
        assert!(feed_ids.contains(id), "{id} not in the feed {feed_ids:?}");
    }
    let hooks = api.get("/apps/hooks/webhooks").await.unwrap();
    let id = hooks.data()[0]["id"].as_str().unwrap().to_string();
    assert!(
        hooks.data()[0].get("secret").is_none(),
        "secret shown again"
    );
    let delivered = |log: &[Value]| {
        log.iter()
            .filter(|d| d["status"] == "delivered" && d["lastStatus"] == 200)
            .count()
    };
    let log = delivery_log(&api, "hooks", &id, |l| delivered(l) >= got.len()).await;
    assert_eq!(delivered(&log), got.len(), "{log:?}");

    // A rotated secret: the old and the new one both sign during the overlap.
    let r = api
        .post(
            &format!("/apps/hooks/webhooks/{id}/rotate-secret"),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let new_secret = r.data()["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    let before = rx.received().len();
    publish_once(&c, &api, 2, "hooks", "second").await;
    poll(
        "events after the rotation",
        Duration::from_secs(60),
        || async {
            let after = rx.received()[before..].to_vec();
            let ended = after
                .iter()
                .any(|r| r.event == "room.ended" && r.answered == 200);
            ended
                .then_some(())
                .ok_or(format!("{} requests since", after.len()))
        },
    )
    .await
    .unwrap();
    for r in &rx.received()[before..] {
        verify(&secret, r, TOLERANCE).expect("the old secret signs during the overlap");
        verify(&new_secret, r, TOLERANCE).expect("the new secret signs");
    }

    // A delivered event is sent again on request, under its own delivery id.
    let first = got.values().next().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let hook = format!("/apps/hooks/webhooks/{id}");
    let r = api
        .post(&format!("{hook}/deliveries/{first}/redeliver"), json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    poll("the redelivery", Duration::from_secs(30), || async {
        let again = rx
            .received()
            .iter()
            .filter(|r| r.delivery == first && r.answered == 200)
            .count();
        (again == 2)
            .then_some(())
            .ok_or(format!("{first} received {again} times"))
    })
    .await
    .unwrap();
    let r = api
        .post(
            &format!("{hook}/deliveries/evt_999999999/redeliver"),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404, "an unknown event was redelivered: {r:?}");

    // Disabled, it receives nothing, and an event it has not been sent cannot be redelivered
    // ahead of its turn.
    let r = api.patch(&hook, json!({"enabled": false})).await.unwrap();
    assert_eq!(
        (r.status, &r.data()["enabled"]),
        (200, &json!(false)),
        "{r:?}"
    );
    let before = rx.received().len();
    api.rtmp_ingress("hooks", "quiet").await.unwrap();
    let feed = api.get("/apps/hooks/events?limit=1000").await.unwrap();
    let newest = feed.body["last"].as_str().unwrap().to_string();
    let r = api
        .post(&format!("{hook}/deliveries/{newest}/redeliver"), json!({}))
        .await
        .unwrap();
    assert_eq!(
        r.status, 409,
        "a redelivery would overtake the event: {r:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rx.received().len(),
        before,
        "a disabled webhook received events"
    );
    let r = api
        .patch(&hook, json!({"url": "ftp://example.com/x"}))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(api.delete(&hook).await.unwrap().status, 204);
    assert_eq!(api.get(&hook).await.unwrap().status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_outage_loses_nothing_and_repeats_nothing_acknowledged() {
    if !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let rx = Receiver::start().await.unwrap();
    let c = Cluster::start_with_env(3, chaos_seed(), &[ALLOW_PRIVATE]).await;
    let api = c.admin(0).await;
    assert_eq!(api.create_app("outage").await.unwrap().status, 201);
    let (id, secret) = webhook(&api, "outage", &rx.url()).await;
    rx.set(Mode::Down).await.unwrap();
    c.note("receiver down (connection refused)");
    let down = tokio::time::Instant::now();
    publish_once(&c, &api, 0, "outage", "a").await;
    publish_once(&c, &api, 2, "outage", "b").await;
    tokio::time::sleep_until(down + Duration::from_secs(30)).await;
    rx.set(Mode::Fail).await.unwrap();
    c.note("receiver answers 500");
    tokio::time::sleep(Duration::from_secs(10)).await;
    rx.set(Mode::Ok).await.unwrap();
    c.note("receiver answers 200");
    // The backoff is capped at a minute (its jitter only shortens it).
    let got = wait_for("every event", &rx, &secret, Duration::from_secs(150), |g| {
        has_room_life(g, "a") && has_room_life(g, "b")
    })
    .await;
    assert_eq!(room_events(&got, "a"), ROOM_LIFE);
    assert_eq!(room_events(&got, "b"), ROOM_LIFE);
    // The retries are in the delivery log: the first event was tried before it was taken.
    let first = format!("evt_{}", got.keys().next().unwrap());
    let log = delivery_log(&api, "outage", &id, |l| {
        l.iter()
            .any(|d| d["id"] == first.as_str() && d["status"] == "delivered")
    })
    .await;
    let entry = log
        .iter()
        .find(|d| d["id"] == first.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["status"], "delivered", "{entry}");
    assert!(entry["attempts"].as_u64().unwrap() >= 3, "{entry}");
    // Nothing more comes after everything was acknowledged.
    let n = rx.received().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    acknowledged(&rx, &secret);
    assert_eq!(
        rx.received().len(),
        n,
        "deliveries went on: {:?}",
        &rx.received()[n..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivering_origin_is_killed_and_another_delivers_without_a_gap() {
    if !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let rx = Receiver::start().await.unwrap();
    let mut c = Cluster::start_with_env(3, chaos_seed(), &[ALLOW_PRIVATE]).await;
    let api = c.admin(0).await;
    assert_eq!(api.create_app("kill").await.unwrap().status, 201);
    let (id, secret) = webhook(&api, "kill", &rx.url()).await;
    // The first event tells which origin delivers this app's webhooks.
    api.rtmp_ingress("kill", "warmup").await.unwrap();
    wait_for(
        "the first event",
        &rx,
        &secret,
        Duration::from_secs(30),
        |g| !g.is_empty(),
    )
    .await;
    let log = delivery_log(&api, "kill", &id, |l| !l.is_empty()).await;
    let deliverer = log[0]["node"].as_str().unwrap().to_string();
    let victim = c.index_of(&deliverer).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    c.note(format!(
        "{deliverer} delivers; the receiver fails until it is killed"
    ));
    rx.set(Mode::Fail).await.unwrap();
    let api = c.admin(others[0]).await;
    publish_once(&c, &api, others[0], "kill", "r1").await;
    publish_once(&c, &api, others[1], "kill", "r2").await;
    // Pending: tried, not acknowledged.
    poll(
        "attempts on the pending events",
        Duration::from_secs(30),
        || async {
            let tried = rx.received().iter().filter(|r| r.answered == 500).count();
            (tried > 0)
                .then_some(())
                .ok_or("no attempt yet".to_string())
        },
    )
    .await
    .unwrap();
    c.nodes[victim].kill9();
    c.note(format!("SIGKILL {deliverer}"));
    rx.set(Mode::Ok).await.unwrap();
    let got = wait_for(
        "every event after the kill",
        &rx,
        &secret,
        Duration::from_secs(150),
        |g| has_room_life(g, "r1") && has_room_life(g, "r2"),
    )
    .await;
    assert_eq!(room_events(&got, "r1"), ROOM_LIFE);
    assert_eq!(room_events(&got, "r2"), ROOM_LIFE);
    let log = delivery_log(&api, "kill", &id, |l| {
        l.iter().any(|d| d["node"] != deliverer.as_str())
    })
    .await;
    let nodes: HashMap<String, usize> = log.iter().fold(HashMap::new(), |mut m, d| {
        *m.entry(d["node"].as_str().unwrap().to_string())
            .or_default() += 1;
        m
    });
    assert!(
        nodes.keys().any(|n| *n != deliverer),
        "no other origin delivered: {nodes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_counts_arrive_and_a_killed_origins_room_ends() {
    if !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let rx = Receiver::start().await.unwrap();
    let mut c = Cluster::start_with_env(3, chaos_seed(), &[ALLOW_PRIVATE]).await;
    let leader = c.leader().await;
    // The holder is not the leader: the leader's heartbeat batches end the room.
    let holder = (leader + 1) % 3;
    let api = c.admin(leader).await;
    assert_eq!(api.create_app("counted").await.unwrap().status, 201);
    let r = api
        .patch("/apps/counted", json!({"playback": "token"}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = api
        .post(
            "/apps/counted/webhooks",
            json!({"url": rx.url(), "events": ["viewer.count", "publisher.left", "room.ended"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let secret = r.data()["secret"].as_str().unwrap().to_string();
    let key = api.rtmp_ingress("counted", "cam").await.unwrap();
    let mut publisher = Publisher::start(&c.nodes[holder].rtmp_url(&key));
    // Two viewers (two token identities) reload the playlist on the holder every second.
    let stop = tokio_util::sync::CancellationToken::new();
    for who in ["v1", "v2"] {
        let r = api
            .post(
                "/apps/counted/tokens",
                json!({"room": "cam", "identity": who, "canSubscribe": true}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        let token = r.data()["token"].as_str().unwrap().to_string();
        let url = c.nodes[holder].url(&format!("/hls/counted/cam/index.m3u8?token={token}"));
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = hls::client();
            while !stop.is_cancelled() {
                let _ = hls::get(&client, &url).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    // Counts come every 30 s: within two periods one says 2.
    let got = wait_for(
        "a viewer.count of 2",
        &rx,
        &secret,
        Duration::from_secs(100),
        |g| {
            g.values().any(|e| {
                e["type"] == "viewer.count" && e["room"] == "cam" && e["data"]["viewers"] == 2
            })
        },
    )
    .await;
    let count = got
        .values()
        .find(|e| e["type"] == "viewer.count" && e["data"]["viewers"] == 2)
        .unwrap();
    assert_eq!(count["node"], c.nodes[holder].name(), "{count}");
    assert_eq!(count["data"]["nodes"], 1, "{count}");
    assert!(count["seq"].as_u64().is_some(), "{count}");
    stop.cancel();

    // The holder dies under its publisher; no encoder comes back. The room ends when the lease
    // is over (10 s) at the leader's next heartbeat batch.
    c.nodes[holder].kill9();
    c.note(format!(
        "SIGKILL {} (holds counted/cam)",
        c.nodes[holder].name()
    ));
    let got = wait_for(
        "the dead origin's room to end",
        &rx,
        &secret,
        Duration::from_secs(60),
        |g| {
            g.values()
                .any(|e| e["type"] == "room.ended" && e["room"] == "cam")
        },
    )
    .await;
    let left = got
        .values()
        .find(|e| e["type"] == "publisher.left")
        .expect("publisher.left before room.ended");
    assert_eq!(left["data"]["reason"], "fenced", "{left}");
    assert_eq!(left["node"], c.nodes[holder].name(), "{left}");
    let ended = got.values().find(|e| e["type"] == "room.ended").unwrap();
    assert_eq!(ended["seq"].as_u64(), left["seq"].as_u64().map(|s| s + 1));
    // Nobody publishes it and it has no room object: unknown again.
    let r = api.get("/apps/counted/rooms/cam").await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");
    publisher.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_into_the_node_itself_are_refused_by_default() {
    let o = Origin::start().await;
    let api = o.admin().await;
    assert_eq!(api.create_app("ssrf").await.unwrap().status, 201);
    let cluster_port = o.config().cluster.port();
    let http_port = o.config().http.port();
    for url in [
        format!("http://127.0.0.1:{http_port}/api/v1/apps"),
        format!("http://127.0.0.1:{cluster_port}/"),
        "http://localhost:9/hook".to_string(),
        "http://[::1]:9/hook".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://10.0.0.1/hook".to_string(),
        "ftp://example.com/hook".to_string(),
        "http://user:pass@example.com/hook".to_string(),
    ] {
        let r = api
            .post("/apps/ssrf/webhooks", json!({"url": url, "events": ["*"]}))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{url} was accepted: {r:?}");
    }
    let r = api
        .post(
            "/apps/ssrf/webhooks",
            json!({"url": "https://example.com/hook", "events": ["room.nope"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "an unknown event type was accepted: {r:?}");
    let r = api
        .post(
            "/apps/ssrf/webhooks",
            json!({"url": "https://example.com/hook", "events": ["room.started"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "a public URL was refused: {r:?}");
}
