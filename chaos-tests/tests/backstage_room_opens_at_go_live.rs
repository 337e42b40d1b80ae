//! A room created ahead of time (`POST /apps/show/rooms`) is in backstage: its host publishes
//! into it with ffmpeg, using a user token as the RTMP stream key, and only its hosts watch
//! (a host member's token, on the origin and on an edge); a public viewer and a viewer token of
//! someone else get 425 `not_live_yet`. The `/play` page in Chromium waits meanwhile
//! (`mode === 'waiting'`); at `go-live` it starts playing by itself, without a reload, and the
//! room is public. `stop-live` returns it to backstage: public viewers are refused again
//! within seconds.

use std::time::Duration;

use serde_json::{json, Value};
use streamhub_chaos_tests::require::{browser_available, has_command, require, BROWSER};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Api, Cluster, Node, Publisher};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const APP: &str = "show";
const ROOM: &str = "stage";

async fn mint(admin: &Api, body: Value) -> String {
    let r = admin
        .post(&format!("/apps/{APP}/tokens"), body)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    r.data()["token"].as_str().unwrap().to_string()
}

async fn room(admin: &Api) -> Value {
    let r = admin
        .get(&format!("/apps/{APP}/rooms/{ROOM}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.data().clone()
}

fn playlist(node: &Node, token: Option<&str>) -> String {
    let url = node.url(&format!("/hls/{APP}/{ROOM}/index.m3u8"));
    match token {
        Some(t) => format!("{url}?token={t}"),
        None => url,
    }
}

/// Status, error code and body of a GET.
async fn get(url: &str) -> (u16, Option<String>, String) {
    let (status, body) = hls::get(&hls::client(), url).await.unwrap();
    let text = String::from_utf8_lossy(&body).to_string();
    let code = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(String::from));
    (status, code, text)
}

/// Polls until the playlist at `url` answers `want` (a second's caches on every node).
async fn wait_status(url: &str, want: u16, what: &str) {
    poll(what, Duration::from_secs(10), || async {
        let (status, _, body) = get(url).await;
        (status == want)
            .then_some(())
            .ok_or(format!("{status}: {body}"))
    })
    .await
    .unwrap();
}

/// Polls until the playlist at `url` answers 200 with two complete segments (the token taken
/// out of its URIs).
async fn wait_playing(url: &str, token: Option<&str>, what: &str) {
    poll(what, Duration::from_secs(40), || async {
        let (status, _, body) = get(url).await;
        let plain = match token {
            Some(t) => body.replace(&format!("?token={t}"), ""),
            None => body.clone(),
        };
        (status == 200 && hls::segments(&plain).len() >= 2)
            .then_some(())
            .ok_or(format!("{status}: {body}"))
    })
    .await
    .unwrap();
}

/// The refusals of a room in backstage on `node`: 425 `not_live_yet` for a public viewer and a
/// viewer who is not a host.
async fn assert_backstage(node: &Node, fan: &str) {
    for (who, token) in [("a public viewer", None), ("a fan's token", Some(fan))] {
        let (status, code, body) = get(&playlist(node, token)).await;
        assert_eq!(status, 425, "{} {who}: {body}", node.name());
        assert_eq!(code.as_deref(), Some("not_live_yet"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backstage_room_opens_at_go_live() {
    if !require(
        "ffmpeg and ffprobe",
        has_command("ffmpeg") && has_command("ffprobe"),
    ) {
        return;
    }
    if !require(BROWSER, browser_available()) {
        return;
    }
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let origin = &c.nodes[0];
    let r = admin.create_app(APP).await.unwrap();
    assert_eq!(r.status, 201, "{r:?}");

    // The room, ahead of time: backstage by default, one host.
    let r = admin
        .post(
            &format!("/apps/{APP}/rooms"),
            json!({"name": ROOM, "members": [{"identity": "host-1", "role": "host"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.data()["state"], "backstage", "{r:?}");
    let view = room(&admin).await;
    assert_eq!(view["state"], "backstage", "{view}");
    assert_eq!(view["publishing"], false, "{view}");

    // The host publishes with a user token as the stream key (no ingress was made).
    let publish = mint(
        &admin,
        json!({"room": ROOM, "identity": "host-1", "canPublish": true}),
    )
    .await;
    let _publisher = Publisher::start(&origin.rtmp_url(&publish));
    c.note("ffmpeg publishes show/stage with a user token as the stream key");
    poll(
        "the room is publishing",
        Duration::from_secs(30),
        || async {
            let v = room(&admin).await;
            (v["publishing"] == true)
                .then_some(v.clone())
                .ok_or(v.to_string())
        },
    )
    .await
    .unwrap();
    let view = room(&admin).await;
    assert_eq!(
        view["state"], "backstage",
        "publishing keeps it backstage: {view}"
    );

    // Only hosts watch: a host member's token (it cannot publish) plays on the origin and the
    // edge; a public viewer and a fan get 425.
    let host = mint(&admin, json!({"room": ROOM, "identity": "host-1"})).await;
    let fan = mint(&admin, json!({"room": ROOM, "identity": "fan"})).await;
    for node in [origin, &edge] {
        let what = format!("{}: the host watches in backstage", node.name());
        wait_playing(&playlist(node, Some(&host)), Some(&host), &what).await;
        assert_backstage(node, &fan).await;
    }
    let url = playlist(origin, Some(&host));
    let codecs = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&url))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("ffprobe with the host's token: {e:#}"));
    assert!(codecs.iter().any(|c| c == "h264"), "{codecs:?}");
    let url = playlist(origin, Some(&host));
    let frames = tokio::task::spawn_blocking(move || hls::ffmpeg_decode_frames(&url, 2))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("ffmpeg with the host's token: {e:#}"));
    assert!(frames >= 25, "the host decodes {frames} frames in 2 s");
    let url = playlist(origin, None);
    let refused = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&url))
        .await
        .unwrap();
    assert!(refused.is_err(), "ffprobe of a public viewer in backstage");

    // The player page (no token) through steering: it waits.
    let play = origin.url(&format!("/play/{APP}/{ROOM}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/wait_then_play.mjs");
    let mut browser = tokio::process::Command::new("node")
        .arg(script)
        .arg(&play)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (and chromium + playwright-core, installed by .ci/run)");
    let mut stdin = browser.stdin.take().unwrap();
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next = async |timeout: u64| -> Value {
        let line = tokio::time::timeout(Duration::from_secs(timeout), lines.next_line())
            .await
            .expect("the browser answers in time")
            .unwrap()
            .expect("a line from the browser (see its stderr above)");
        serde_json::from_str(line.trim()).unwrap()
    };
    let waiting = next(90).await;
    println!("the page before go-live: {waiting}");
    assert_eq!(
        waiting["status"], 200,
        "the page is served in backstage: {waiting}"
    );
    assert_eq!(waiting["mode"], "waiting", "{waiting}");
    assert!(
        waiting["finalUrl"]
            .as_str()
            .unwrap()
            .starts_with(&edge.url("/play/")),
        "steered to the edge: {waiting}"
    );
    // Still waiting while the room stays backstage (its 2 s polls keep getting 425).
    assert_backstage(origin, &fan).await;
    assert_backstage(&edge, &fan).await;
    stdin.write_all(b"state\n").await.unwrap();
    let before = next(30).await;
    println!("the page just before go-live: {before}");
    assert_eq!(before["mode"], "waiting", "{before}");
    assert_eq!(before["currentTime"], 0.0, "{before}");

    // Go live: the page starts by itself.
    let r = admin
        .post(
            &format!("/apps/{APP}/rooms/{ROOM}/go-live"),
            json!({"startHls": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data()["state"], "live", "{r:?}");
    c.note("go-live");
    stdin.write_all(b"play\n").await.unwrap();
    let playing = next(150).await;
    println!("the page after go-live: {playing}");
    assert!(
        playing["error"].is_null() || playing["mode"] == "whep",
        "{playing}"
    );
    assert_eq!(playing["sameDocument"], true, "not reloaded: {playing}");
    let mode = playing["mode"].as_str().unwrap_or_default();
    match mode {
        "whep" => assert!(
            playing["framesDecoded"].as_u64().unwrap_or(0) >= 25,
            "{playing}"
        ),
        "hls" => assert!(
            playing["currentTime"].as_f64().unwrap_or(0.0) > 1.0,
            "{playing}"
        ),
        _ => panic!("the page did not start playing after go-live: {playing}"),
    }
    assert_eq!(playing["videoWidth"], 320, "{playing}");
    assert!(browser.wait().await.unwrap().success());

    let view = room(&admin).await;
    assert_eq!(view["state"], "live", "{view}");
    for node in [origin, &edge] {
        let what = format!("{}: a public viewer watches once live", node.name());
        wait_playing(&playlist(node, None), None, &what).await;
        let (status, _, body) = get(&playlist(node, Some(&fan))).await;
        assert_eq!(status, 200, "{} the fan: {body}", node.name());
    }

    // Stop-live: back to backstage, public viewers refused again within seconds.
    let r = admin
        .post(&format!("/apps/{APP}/rooms/{ROOM}/stop-live"), json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data()["state"], "backstage", "{r:?}");
    c.note("stop-live");
    for node in [origin, &edge] {
        let what = format!("{}: refused again after stop-live", node.name());
        wait_status(&playlist(node, None), 425, &what).await;
        assert_backstage(node, &fan).await;
        let (status, _, body) = get(&playlist(node, Some(&host))).await;
        assert_eq!(status, 200, "{} the host: {body}", node.name());
    }
    assert_eq!(room(&admin).await["state"], "backstage");
}
