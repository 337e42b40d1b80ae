//! An app's viewer quota holds across the whole cluster: one origin and two edges, a quota of 2
//! viewers, viewers told apart by their token identity. v1 plays on edge A, v2 on edge B (each
//! polling its playlist as a player does); v3 is then refused (429, `quota: ...`) on edge A, on
//! edge B and on the origin alike while v1 and v2 keep playing. Once v1 stops, it is forgotten
//! after the viewer TTL (10 s) and v3 gets in. The app's usage never shows more than 2 viewers.
//!
//! The overshoot: each node admits against its own count plus what the other nodes last
//! reported (load reports every 1 s, each node's view of a room cached for 1 s), so viewers
//! arriving at the same moment on different nodes may overshoot the quota by what arrives on
//! each node within those ~1-3 s (docs/api.md). Here the viewers arrive one by one, each after
//! the previous one was reported, and then the quota is exact: this test asserts exactness.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Api, Cluster, Publisher};

/// The viewer TTL of the product (`VIEWER_TTL`): a viewer is counted for this long after its
/// last request.
const VIEWER_TTL: Duration = Duration::from_secs(10);

/// How long a report in the state may take to reach every node's view of the room (docs/api.md:
/// "reports up to ~3 s old"; each node remembers a room's access for 1 s).
const REPORT_REACHES_EVERY_NODE: Duration = Duration::from_secs(3);

/// A player polling one playlist every 500 ms until stopped; every answer is kept.
struct Player {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(Instant, u16)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Player {
    fn start(http: &reqwest::Client, url: String) -> Player {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, answers, http) = (stop.clone(), answers.clone(), http.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = match http.get(&url).send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let _ = r.bytes().await;
                            s
                        }
                        Err(_) => 0,
                    };
                    answers.lock().unwrap().push((Instant::now(), status));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        Player {
            stop,
            answers,
            task,
        }
    }

    /// Waits until the player's last answer is 200.
    async fn wait_playing(&self, who: &str) {
        poll(
            &format!("{who} plays (200)"),
            Duration::from_secs(30),
            || async {
                match self.answers.lock().unwrap().last() {
                    Some((_, 200)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
        .unwrap();
    }

    /// The answers it got after `since` (asserting there are some).
    fn answers_since(&self, since: Instant) -> Vec<u16> {
        let answers: Vec<u16> = self
            .answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, s)| *s)
            .collect();
        assert!(!answers.is_empty(), "the player asked nothing since then");
        answers
    }

    /// Stops polling; the time of its last request.
    async fn stop(self) -> Instant {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let last = self.answers.lock().unwrap().last().map(|(t, _)| *t);
        last.expect("the player asked at least once")
    }
}

/// `usage.viewers` of app vq.
async fn usage_viewers(admin: &Api) -> Result<u64, String> {
    let r = admin
        .get("/apps/vq/quotas")
        .await
        .map_err(|e| e.to_string())?;
    r.data()["usage"]["viewers"]
        .as_u64()
        .ok_or_else(|| format!("{r:?}"))
}

/// Waits until `usage.viewers` of app vq is `want`.
async fn wait_viewers(admin: &Api, want: u64, timeout: Duration) {
    poll(&format!("usage.viewers == {want}"), timeout, || async {
        match usage_viewers(admin).await? {
            n if n == want => Ok(()),
            n => Err(format!("usage.viewers = {n}")),
        }
    })
    .await
    .unwrap();
}

/// A viewer token for `identity` in vq/cam.
async fn token(admin: &Api, identity: &str) -> String {
    let r = admin
        .post(
            "/apps/vq/tokens",
            json!({"room": "cam", "identity": identity}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    r.data()["token"].as_str().unwrap().to_string()
}

/// GET `url`: status and the JSON body (Null if not JSON).
async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let (status, body) = hls::get(http, url).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_quota_holds_across_two_edges() {
    require("ffmpeg", has_command("ffmpeg"));
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    let key = admin.rtmp_ingress("vq", "cam").await.unwrap();
    let edge_a = c.start_edge("edge-a", "local", 0, &[]).await;
    let edge_b = c.start_edge("edge-b", "local", 0, &[]).await;
    let _publisher = Publisher::start(&c.nodes[0].rtmp_url(&key));
    // Live without a single playback request (every one would count as a viewer).
    poll("vq/cam live", Duration::from_secs(30), || async {
        let r = admin
            .get("/apps/vq/quotas")
            .await
            .map_err(|e| e.to_string())?;
        (r.data()["usage"]["publishers"] == json!(1))
            .then_some(())
            .ok_or(format!("{r:?}"))
    })
    .await
    .unwrap();

    let r = admin
        .send(
            admin
                .request(reqwest::Method::PUT, "/apps/vq/quotas")
                .json(&json!({"viewers": 2})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data()["viewers"], json!(2), "{r:?}");
    assert_eq!(r.data()["usage"]["viewers"], json!(0), "{r:?}");
    let (v1, v2, v3) = (
        token(&admin, "v1").await,
        token(&admin, "v2").await,
        token(&admin, "v3").await,
    );
    let playlist = |node: &streamhub_chaos_tests::Node, t: &str| {
        node.url(&format!("/hls/vq/cam/index.m3u8?token={t}"))
    };

    // What the app's usage shows, all along: never more than the quota.
    let most = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(AtomicBool::new(true));
    let monitor = tokio::spawn({
        let (most, watching, admin) = (most.clone(), watching.clone(), admin.clone());
        async move {
            while watching.load(Ordering::Relaxed) {
                if let Ok(n) = usage_viewers(&admin).await {
                    most.fetch_max(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    // v1 plays on edge A, and is reported; then v2 on edge B.
    let http = hls::client();
    let p1 = Player::start(&http, playlist(&edge_a, &v1));
    p1.wait_playing("v1 on edge A").await;
    wait_viewers(&admin, 1, Duration::from_secs(20)).await;
    c.note("v1 plays on edge A, reported");
    let p2 = Player::start(&http, playlist(&edge_b, &v2));
    p2.wait_playing("v2 on edge B").await;
    wait_viewers(&admin, 2, Duration::from_secs(20)).await;
    c.note("v2 plays on edge B, reported");
    // The report is in the state; the nodes see it once their remembered view of the room
    // (1 s) has been renewed. No node shows that view from the outside, so the documented bound
    // is waited out here: a v3 arriving inside it is the documented overshoot, not this case.
    tokio::time::sleep(REPORT_REACHES_EVERY_NODE).await;

    // v3 is refused on every node, for as long as v1 and v2 play (3 s of tries here).
    let full = Instant::now();
    let nodes = [
        ("edge A", &edge_a),
        ("edge B", &edge_b),
        ("origin", &c.nodes[0]),
    ];
    while full.elapsed() < Duration::from_secs(3) {
        for (name, node) in nodes {
            let (status, body) = get(&http, &playlist(node, &v3)).await;
            assert_eq!(status, 429, "v3 on {name} past the quota: {body}");
            assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("quota:") && message.contains("of 2 viewers"),
                "v3 on {name}: {body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (who, p) in [("v1", &p1), ("v2", &p2)] {
        let answers = p.answers_since(full);
        assert!(
            answers.iter().all(|&s| s == 200),
            "{who} keeps playing while v3 is refused: {answers:?}"
        );
    }
    c.note("v3 refused on edge A, edge B and the origin; v1 and v2 play on");

    // v1 stops: once it is forgotten (the TTL after its last request) and that is reported, v3
    // gets in (asked on edge B: edge A's report has to reach it through the origin).
    let v1_last = p1.stop().await;
    c.note("v1 stopped");
    let (admitted, tries) = {
        let tries = Arc::new(Mutex::new(Vec::new()));
        let url = playlist(&edge_b, &v3);
        let at = poll("v3 admitted on edge B", Duration::from_secs(30), || {
            let (http, url, tries) = (http.clone(), url.clone(), tries.clone());
            async move {
                let (status, body) = get(&http, &url).await;
                tries.lock().unwrap().push(status);
                match status {
                    200 => Ok(Instant::now()),
                    429 => Err(format!("429 {body}")),
                    other => panic!("v3 on edge B: {other} {body}"),
                }
            }
        })
        .await
        .unwrap();
        let tries = tries.lock().unwrap().clone();
        (at, tries)
    };
    let after = admitted.duration_since(v1_last);
    assert!(
        after >= VIEWER_TTL - Duration::from_secs(2),
        "v3 got in {after:?} after v1's last request: v1 was still counted then"
    );
    assert!(
        tries.iter().filter(|&&s| s == 429).count() > 0,
        "v3 was refused while v1 was counted: {tries:?}"
    );
    c.note(format!(
        "v3 admitted on edge B {after:?} after v1's last request"
    ));
    let answers = p2.answers_since(full);
    assert!(
        answers.iter().all(|&s| s == 200),
        "v2 played on all along: {answers:?}"
    );

    // v3 plays on; the usage settles at v2 + v3, and never showed more than the quota.
    let p3 = Player::start(&http, playlist(&edge_b, &v3));
    p3.wait_playing("v3 on edge B").await;
    wait_viewers(&admin, 2, Duration::from_secs(20)).await;
    watching.store(false, Ordering::Relaxed);
    monitor.await.unwrap();
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= 2,
        "usage.viewers reached {most} with a quota of 2 and viewers arriving one by one"
    );
    assert!(
        p3.answers_since(admitted).iter().all(|&s| s == 200),
        "v3 plays on once admitted"
    );
    p2.stop().await;
    p3.stop().await;
}
