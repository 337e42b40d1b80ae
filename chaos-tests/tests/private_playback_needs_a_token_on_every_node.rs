//! An app switched to `playback: token` (`PATCH /apps/priv {"playback":"token"}`) plays only with
//! a viewer token for the room, on the origin and on an edge alike: without one, the playlist,
//! its init segment, segments, parts, an LL-HLS blocking playlist request, MJPEG, frame.jpg, the
//! `/play` page and ffprobe are all refused (401); a token for another room of the app is refused
//! too. With the room's token, ffprobe finds both tracks and ffmpeg decodes the live playlist
//! through `?token=` (every URI the playlist lists carries it), and from the edge Chromium
//! plays the room with hls.js and with its WHEP player (which is refused without the token).

use std::time::Duration;

use serde_json::{json, Value};
use streamhub_chaos_tests::require::{browser_available, has_command, require, BROWSER};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Cluster, Node, Publisher};

const APP: &str = "priv";
const ROOM: &str = "cam";

/// `s` form-urlencoded, as a token appears in the query of a rewritten playlist URI.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every URI a playlist lists: URI lines and `URI="…"` attributes.
fn uris(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            if !l.starts_with('#') {
                Some(l.to_string())
            } else {
                l.split("URI=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(String::from)
            }
        })
        .collect()
}

/// The playlist with the token taken out of its URIs (what a player without it would ask for).
fn without_token(playlist: &str, token: &str) -> String {
    let t = url_encode(token);
    playlist
        .replace(&format!("?token={t}"), "")
        .replace(&format!("&token={t}"), "")
}

/// Status of a GET (headers only: an MJPEG stream is never read to its end).
async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
        .as_u16()
}

/// Mints a token of app `priv` for `room`.
async fn mint(admin: &streamhub_chaos_tests::Api, room: &str, identity: &str) -> String {
    let r = admin
        .post(
            &format!("/apps/{APP}/tokens"),
            json!({"room": room, "identity": identity}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    r.data()["token"].as_str().unwrap().to_string()
}

/// The checks on one node (origin or edge): refusals without the token or with another room's,
/// and ffprobe with it.
async fn check_node(node: &Node, token: &str, other: &str) {
    let name = node.name().to_string();
    let client = hls::client();
    let playlist_url = node.url(&format!("/hls/{APP}/{ROOM}/index.m3u8"));
    let with = |url: &str, t: &str| {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}token={}", url_encode(t))
    };

    // A playlist with the room's token, with parts and a complete segment; every URI in it
    // carries the token (so a player that knows nothing of tokens sends it everywhere).
    let (tokened, plain) = poll(
        &format!("{name}: a playlist with segments and parts, fetched with the token"),
        Duration::from_secs(40),
        || {
            let (client, url) = (client.clone(), with(&playlist_url, token));
            async move {
                let (st, body) = hls::get(&client, &url)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let text = String::from_utf8_lossy(&body).to_string();
                let plain = without_token(&text, token);
                let segs = hls::segments(&plain);
                let ready = st == 200
                    && segs.len() >= 2
                    && !hls::parts(&plain, *segs.last().unwrap_or(&0)).is_empty()
                    && hls::preload_hint(&plain).is_some();
                ready
                    .then(|| (text.clone(), plain))
                    .ok_or(format!("{st}: {text}"))
            }
        },
    )
    .await
    .unwrap();
    let listed = uris(&tokened);
    assert!(listed.len() >= 4, "{name}: {tokened}");
    let t = url_encode(token);
    for uri in &listed {
        assert!(
            uri.ends_with(&format!("?token={t}")) || uri.ends_with(&format!("&token={t}")),
            "{name}: a URI without the token: {uri}\n{tokened}"
        );
    }
    let segs = hls::segments(&plain);
    let msn = *segs.last().unwrap();
    let segment = hls::sibling(&playlist_url, &format!("seg-{msn}.m4s"));
    let part = hls::sibling(&playlist_url, &hls::parts(&plain, msn)[0]);
    let init = plain
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .and_then(|r| r.split('"').next())
        .map(|u| hls::sibling(&playlist_url, u))
        .unwrap_or_else(|| panic!("{name}: no EXT-X-MAP in {plain}"));
    let (hint_msn, hint_part) = hls::preload_hint(&plain).unwrap();
    let blocking = format!("{playlist_url}?_HLS_msn={hint_msn}&_HLS_part={hint_part}");
    let mjpeg = node.url(&format!("/live/{APP}/{ROOM}/mjpeg"));
    let frame = node.url(&format!("/live/{APP}/{ROOM}/frame.jpg"));
    let page = node.url(&format!("/play/{APP}/{ROOM}"));
    let embed = node.url(&format!("/embed/{APP}/{ROOM}"));

    // With the room's token, the media is there: each refusal below is the gate's.
    for url in [&segment, &part, &init, &blocking] {
        assert_eq!(
            status(&client, &with(url, token)).await,
            200,
            "{name}: {url}"
        );
    }
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for url in [&page, &embed] {
        let st = status(&no_follow, &with(url, token)).await;
        assert!(
            st == 200 || (300..400).contains(&st),
            "{name}: {url} with the token: {st}"
        );
    }

    // Without a token: 401 everywhere, with a reason.
    for url in [
        &playlist_url,
        &segment,
        &part,
        &init,
        &blocking,
        &mjpeg,
        &frame,
        &page,
        &embed,
    ] {
        let resp = no_follow.get(url.as_str()).send().await.unwrap();
        let st = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(st, 401, "{name}: {url} without a token: {body}");
        if !url.contains("/play/") && !url.contains("/embed/") {
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|_| panic!("{name}: {url}: not a JSON refusal: {body}"));
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("token")),
                "{name}: {url}: {body}"
            );
        }
    }
    // A token for another room of the app, and a forged one.
    for url in [
        &playlist_url,
        &segment,
        &part,
        &blocking,
        &mjpeg,
        &frame,
        &page,
    ] {
        assert_eq!(
            status(&no_follow, &with(url, other)).await,
            401,
            "{name}: {url} with a token for room other"
        );
        assert_eq!(
            status(&no_follow, &with(url, "not.a.token")).await,
            401,
            "{name}: {url} with a forged token"
        );
    }

    // ffprobe: refused without the token (or with another room's), reads the tracks with it
    // (the token reaches the init segment and the segments it reads).
    let url = playlist_url.clone();
    let refused = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&url))
        .await
        .unwrap();
    let why = refused.expect_err(&format!("{name}: ffprobe without a token must fail"));
    println!("{name}: ffprobe without a token: {why:#}");
    let url = with(&playlist_url, other);
    let refused = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&url))
        .await
        .unwrap();
    assert!(
        refused.is_err(),
        "{name}: ffprobe with another room's token must fail"
    );
    let url = with(&playlist_url, token);
    let codecs = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&url))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{name}: ffprobe with the token: {e:#}"));
    println!("{name}: ffprobe with the token: {codecs:?}");
    assert!(codecs.iter().any(|c| c == "h264"), "{codecs:?}");
    assert!(codecs.iter().any(|c| c == "aac"), "{codecs:?}");
    // ffmpeg decodes 3 s of the live playlist: the token reaches every segment it reads.
    let url = with(&playlist_url, token);
    let frames = tokio::task::spawn_blocking(move || hls::ffmpeg_decode_frames(&url, 3))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{name}: ffmpeg with the token: {e:#}"));
    assert!(frames >= 50, "{name}: decoded {frames} frames in 3 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_playback_needs_a_token_on_every_node() {
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
    let key = admin.rtmp_ingress(APP, ROOM).await.unwrap();
    let r = admin
        .patch(&format!("/apps/{APP}"), json!({"playback": "token"}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data()["playback"], "token", "{r:?}");
    let r = admin.get(&format!("/apps/{APP}")).await.unwrap();
    assert_eq!(r.data()["playback"], "token", "{r:?}");
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let origin = &c.nodes[0];
    let _publisher = Publisher::start(&origin.rtmp_url(&key));
    c.note("publishing priv/cam");
    let token = mint(&admin, ROOM, "v1").await;
    let other = mint(&admin, "other", "v1").await;

    check_node(origin, &token, &other).await;
    c.note("origin: refused without the token, plays with it");
    check_node(&edge, &token, &other).await;
    c.note("edge: refused without the token, plays with it");

    // Chromium on the edge: hls.js (mode=hls) and the WHEP player, both given the token by the
    // page; the page itself is refused without one (checked above).
    let page = edge.url(&format!("/play/{APP}/{ROOM}"));
    let t = url_encode(&token);
    let hls_page = format!("{page}?mode=hls&token={t}");
    let whep_page = format!("{page}?token={t}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/player.mjs");
    let out = tokio::time::timeout(
        Duration::from_secs(150),
        tokio::process::Command::new("node")
            .arg(script)
            .args([&hls_page, &whep_page])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser answers in time")
    .expect("node (and chromium + playwright-core, installed by .ci/run)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "browser failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    println!("players: {v}");
    let (hls_player, whep_player) = (&v[0], &v[1]);
    assert_eq!(hls_player["mode"], "hls", "{hls_player}");
    assert!(hls_player["error"].is_null(), "{hls_player}");
    assert!(
        hls_player["currentTime"].as_f64().unwrap_or(0.0) > 1.0,
        "hls.js plays with the token: {hls_player}"
    );
    assert_eq!(hls_player["videoWidth"], 320, "{hls_player}");
    assert_eq!(whep_player["mode"], "whep", "{whep_player}");
    assert!(
        whep_player["framesDecoded"].as_u64().unwrap_or(0) >= 25,
        "WHEP plays with the token: {whep_player}"
    );
    assert_eq!(whep_player["videoWidth"], 320, "{whep_player}");

    // WHEP without a token (or with another room's) is refused before any session is made.
    let whep = edge.url(&format!("/whep/{APP}/{ROOM}"));
    let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    for auth in [None, Some(other.as_str())] {
        let mut req = reqwest::Client::new()
            .post(&whep)
            .header("content-type", "application/sdp")
            .body(offer);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let st = req.send().await.unwrap().status().as_u16();
        assert_eq!(st, 401, "WHEP on the edge with {auth:?}");
    }
}
