//! A browser publishes its (fake) camera and microphone over WHIP to an origin, and another
//! browser page plays the room over WHEP from an edge (a separate process that pulls the tracks
//! over QUIC): H.264 frames are decoded and Opus packets arrive (getStats). While it plays,
//! a second publisher for the live room is refused (409) and garbage datagrams hit both media
//! ports without hurting the session. Bad offers and credentials get clear statuses first.
//! The edge's HLS of the WHIP room carries its H.264 and Opus (CMAF). Then ffmpeg publishes
//! RTMP (H.264 + AAC) to the same room and the browser plays it over WHEP from the edge: video
//! decoded, and Opus audio (transcoded once at the origin) received; that room's HLS keeps AAC.

use std::time::Duration;

use serde_json::{json, Value};
use streamhub_chaos_tests::require::{browser_available, require, BROWSER};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Cluster, Publisher};

/// An audio-only offer (valid SDP; not a whole WebRTC offer: it is refused before that matters).
const OPUS_ONLY: &str =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n";

const VP8_ONLY: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
a=rtpmap:96 VP8/90000\r\n";

async fn post_sdp(url: &str, auth: Option<&str>, ctype: &str, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", ctype)
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.bearer_auth(a);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// The JSON line `webrtc.mjs` printed; fails with its output if it failed.
fn browser_json(out: std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "browser failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

fn unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_whip_to_whep_through_an_edge() {
    if !require(BROWSER, browser_available()) {
        return;
    }
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    let stream_key = admin.rtmp_ingress("live", "cam").await.unwrap();
    let mint = |room: &str, can_publish: bool| {
        let (admin, room) = (admin.clone(), room.to_string());
        async move {
            let r = admin
                .post(
                    "/apps/live/tokens",
                    json!({"room": room, "identity": "phone-1", "canPublish": can_publish}),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201, "{r:?}");
            r.data()["token"].as_str().unwrap().to_string()
        }
    };
    let publish_token = mint("cam", true).await;
    let viewer_token = mint("cam", false).await;
    let other_room = mint("other", true).await;
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let origin = &c.nodes[0];
    let whip = origin.url("/whip/live/cam");
    let whep = edge.url("/whep/live/cam");

    // Bad credentials and offers, answered before any room is claimed.
    let sdp = "application/sdp";
    assert_eq!(post_sdp(&whip, None, sdp, VP8_ONLY).await.0, 401);
    assert_eq!(
        post_sdp(&whip, Some("rk_wrong"), sdp, VP8_ONLY).await.0,
        401
    );
    assert_eq!(post_sdp(&whip, Some("a.b.c"), sdp, VP8_ONLY).await.0, 401);
    assert_eq!(
        post_sdp(&whip, Some(&viewer_token), sdp, OPUS_ONLY).await.0,
        403,
        "a token without canPublish"
    );
    assert_eq!(
        post_sdp(&whip, Some(&other_room), sdp, OPUS_ONLY).await.0,
        403
    );
    let (status, body) = post_sdp(&whip, Some(&publish_token), sdp, "hello").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post_sdp(&whip, Some(&publish_token), sdp, VP8_ONLY).await;
    assert_eq!(status, 406, "{body}");
    assert!(body.contains("H.264"), "{body}");
    assert_eq!(
        post_sdp(&whip, Some(&publish_token), "text/plain", VP8_ONLY)
            .await
            .0,
        415
    );
    assert_eq!(
        post_sdp(&whep, None, sdp, VP8_ONLY).await.0,
        404,
        "not live yet"
    );
    let rooms = admin.get("/apps/live/rooms").await.unwrap();
    assert_eq!(rooms.data().as_array().map(Vec::len), Some(0), "{rooms:?}");

    // The browser: publish with the token, then play from the edge.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/webrtc.mjs");
    let browser = tokio::process::Command::new("node")
        .arg(script)
        .args(["--whip", &whip, "--token", &publish_token, "--whep", &whep])
        .args(["--seconds", "10"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (and chromium + playwright-core, installed by .ci/run)");

    // While it publishes: the room is live from WHIP, and a second publisher is refused.
    poll("the WHIP room is live", Duration::from_secs(30), || async {
        let r = admin
            .get("/apps/live/rooms")
            .await
            .map_err(|e| e.to_string())?;
        let live = r.data().as_array().is_some_and(|a| {
            a.iter()
                .any(|room| room["room"] == "cam" && room["publisher"]["protocol"] == "whip")
        });
        live.then_some(()).ok_or(format!("{:?}", r.data()))
    })
    .await
    .unwrap();
    let (status, body) = post_sdp(&whip, Some(&stream_key), sdp, OPUS_ONLY).await;
    assert_eq!(status, 409, "{body}");
    // The edge packages the WHIP room's H.264 and Opus for HLS (CMAF).
    let playlist = edge.url("/hls/live/cam/index.m3u8");
    hls::wait_segments(&hls::client(), &playlist, 1, Duration::from_secs(20))
        .await
        .unwrap();
    let probe = playlist.clone();
    let codecs = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&probe))
        .await
        .unwrap()
        .unwrap();
    // ffprobe lists an HLS stream's streams once per program as well: compare the sets.
    assert_eq!(unique(codecs), vec!["h264", "opus"], "WHIP room over HLS");
    // Garbage on both media ports while the sessions run.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..2000u32 {
        let port = if i % 2 == 0 {
            origin.config().webrtc
        } else {
            edge.config().webrtc
        };
        let mut b = vec![0u8; 20 + (i as usize % 300)];
        for (j, x) in b.iter_mut().enumerate() {
            *x = (i as usize * 31 + j * 7) as u8;
        }
        // Some look like STUN binding requests for nobody.
        if i % 5 == 0 {
            b[..8].copy_from_slice(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
        }
        let _ = junk.send_to(&b, port).await;
        // Paced, so the kernel's receive buffers (not the nodes) do not drop most of them.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let v = browser_json(browser.wait_with_output().await.unwrap());
    println!("browser: {v}");
    let play = &v["play"];
    assert_eq!(v["publish"]["status"], 201, "{v}");
    assert_eq!(play["status"], 201, "{v}");
    assert_eq!(play["codec"], "video/H264", "{v}");
    assert!(play["framesDecoded"].as_u64().unwrap() >= 60, "{v}");
    // Still playing at the end: video and audio go on over the last 3 s (rates are the
    // browser's and the machine's, so the bound is "flowing", not a frame rate).
    assert!(
        play["framesDecodedInWindow"].as_u64().unwrap() >= 5,
        "still decoding: {v}"
    );
    assert!(play["audioPackets"].as_u64().unwrap() >= 100, "{v}");
    assert!(play["audioPacketsInWindow"].as_u64().unwrap() >= 25, "{v}");
    assert_eq!(play["deleteStatus"], 200, "{v}");
    println!(
        "whep_first_frame_after_answer_ms={} (edge, relayed over QUIC)",
        play["firstFrameMs"]
    );

    // Both nodes counted the garbage (some of it: a loaded machine's socket buffers may drop
    // datagrams before the node reads them) and kept serving.
    assert!(
        edge.metric("streamhub_webrtc_garbage_datagrams_total")
            .await
            .unwrap()
            >= 100.0
    );
    assert!(
        origin
            .metric("streamhub_webrtc_garbage_datagrams_total")
            .await
            .unwrap()
            >= 100.0
    );
    assert!(edge.metric("streamhub_webrtc_rtp_out_total").await.unwrap() > 100.0);
    assert!(
        origin
            .metric("streamhub_webrtc_rtp_in_total")
            .await
            .unwrap()
            > 100.0
    );
    assert!(
        origin
            .metric("streamhub_webrtc_plis_sent_total")
            .await
            .unwrap()
            >= 1.0
    );
    // Both sessions are gone once the browser has closed (DELETE, then consent failure).
    for node in [origin, &edge] {
        poll("WebRTC sessions freed", Duration::from_secs(20), || async {
            let n = node
                .metric("streamhub_webrtc_sessions")
                .await
                .map_err(|e| e.to_string())?;
            (n == 0.0).then_some(()).ok_or(format!("{n} sessions"))
        })
        .await
        .unwrap();
    }
    // The WHIP room ended with its publisher.
    poll("the room ended", Duration::from_secs(20), || async {
        let r = admin
            .get("/apps/live/rooms")
            .await
            .map_err(|e| e.to_string())?;
        (r.data().as_array().map(Vec::len) == Some(0))
            .then_some(())
            .ok_or(format!("{:?}", r.data()))
    })
    .await
    .unwrap();

    // An RTMP publisher (H.264 + AAC) in the same room, played over WHEP from the edge.
    let _rtmp = Publisher::start(&origin.rtmp_url(&stream_key));
    poll("the RTMP room is live", Duration::from_secs(30), || async {
        let r = admin
            .get("/apps/live/rooms")
            .await
            .map_err(|e| e.to_string())?;
        let tracks = r.data().as_array().and_then(|a| {
            a.iter()
                .find(|room| room["room"] == "cam" && room["publisher"]["protocol"] == "rtmp")
                .map(|room| room["tracks"].to_string())
        });
        tracks
            .filter(|t| t.contains("opus"))
            .map(|_| ())
            .ok_or(format!("{:?}", r.data()))
    })
    .await
    .unwrap();
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args(["--whep", &whep, "--seconds", "6"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("node");
    let v = browser_json(out);
    println!("browser (RTMP room): {v}");
    let play = &v["play"];
    assert_eq!(play["status"], 201, "{v}");
    assert_eq!(play["codec"], "video/H264", "{v}");
    assert_eq!(play["audioCodec"], "audio/opus", "{v}");
    assert!(play["framesDecoded"].as_u64().unwrap() >= 50, "{v}");
    // 20 ms Opus packets: ~50 a second.
    assert!(play["audioPackets"].as_u64().unwrap() >= 150, "{v}");
    assert!(play["audioPacketsInWindow"].as_u64().unwrap() >= 25, "{v}");
    // The browser decodes them: samples come out of the Opus decoder, mostly not its
    // concealment (some is jitter on a loaded machine).
    let samples = play["audioSamples"].as_u64().unwrap();
    assert!(samples >= 3 * 48_000, "{v}");
    assert!(
        play["audioConcealed"].as_u64().unwrap() < samples / 4,
        "{v}"
    );
    // The RTMP room's HLS keeps its AAC (the Opus track is for WebRTC only).
    let probe = playlist.clone();
    let codecs = poll("the RTMP room over HLS", Duration::from_secs(20), || {
        let probe = probe.clone();
        async move {
            let c = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&probe))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{e:#}"))?;
            (c.contains(&"aac".to_string()))
                .then_some(c.clone())
                .ok_or(format!("{c:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(unique(codecs), vec!["aac", "h264"], "RTMP room over HLS");
}
