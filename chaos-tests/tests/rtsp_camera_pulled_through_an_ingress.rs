//! An RTSP camera that no one here wrote (GStreamer's RTSP server, H.264 over RTP) is pulled
//! through a `url` ingress: the ingress goes `live`, an edge serves the room as HLS (ffprobe reads
//! it), the camera is stopped (`retrying`, with the error) and restarted (`live` again, new
//! segments on the edge). TCP-interleaved and UDP transports both work. Bad sources (a URL that
//! is not RTSP, a server that never answers, one that answers garbage) get clear errors and leave
//! the node serving.

use std::time::Duration;

use serde_json::json;
use streamhub_chaos_tests::camera::RtspCamera as Camera;
use streamhub_chaos_tests::hls::{self, ffprobe_codecs};
use streamhub_chaos_tests::ports::free_tcp;
use streamhub_chaos_tests::{chaos_seed, poll, Api, Cluster};

async fn state(api: &Api, id: &str) -> (String, String) {
    let r = api.get(&format!("/apps/cams/ingress/{id}")).await.unwrap();
    let d = r.data();
    (
        d["state"].as_str().unwrap_or("").to_string(),
        d["lastError"].as_str().unwrap_or("").to_string(),
    )
}

async fn wait_state(api: &Api, id: &str, want: &str, timeout: Duration) -> String {
    poll(&format!("ingress {id} {want}"), timeout, || async {
        let (s, e) = state(api, id).await;
        (s == want).then_some(e.clone()).ok_or(format!("{s} ({e})"))
    })
    .await
    .unwrap()
}

async fn url_ingress(api: &Api, room: &str, url: &str, transport: Option<&str>) -> String {
    let mut body = json!({"type": "url", "room": room, "url": url});
    if let Some(t) = transport {
        body["transport"] = t.into();
    }
    let r = api.post("/apps/cams/ingress", body).await.unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        r.data().get("streamKey").is_none(),
        "a pulled ingress has no key to show"
    );
    r.data()["ingressId"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_camera_pulled_through_an_ingress() {
    let mut c = Cluster::start(1, chaos_seed()).await;
    let api = c.admin(0).await;
    assert_eq!(api.create_app("cams").await.unwrap().status, 201);
    let port = free_tcp().port();
    let camera_url = format!("rtsp://127.0.0.1:{port}/cam");
    let camera = Camera::start(port);
    c.note(format!("RTSP camera at {camera_url}"));
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;

    // Refused up front: not an RTSP URL, an unknown transport.
    for (url, transport) in [
        ("http://127.0.0.1/cam", None),
        (camera_url.as_str(), Some("sctp")),
    ] {
        let mut body = json!({"type": "url", "room": "bad", "url": url});
        if let Some(t) = transport {
            body["transport"] = t.into();
        }
        let r = api.post("/apps/cams/ingress", body).await.unwrap();
        assert_eq!(r.status, 400, "{r:?}");
    }

    // Credentials in the URL are used (when the camera asks) and never shown back.
    let with_creds = camera_url.replacen("rtsp://", "rtsp://viewer:s3cret@", 1);
    let creds = url_ingress(&api, "gate-auth", &with_creds, None).await;
    let shown = api
        .get(&format!("/apps/cams/ingress/{creds}"))
        .await
        .unwrap();
    let shown_url = shown.data()["url"].as_str().unwrap().to_string();
    assert!(
        !shown_url.contains("s3cret") && shown_url.starts_with("rtsp://***@"),
        "{shown_url}"
    );
    let tcp = url_ingress(&api, "gate", &camera_url, None).await;
    let udp = url_ingress(&api, "gate-udp", &camera_url, Some("udp")).await;
    // The GStreamer camera answers 503 to DESCRIBE while its media is not prepared, which on
    // a loaded machine lasted over 30 s once: the pulls retry until it serves.
    wait_state(&api, &tcp, "live", Duration::from_secs(90)).await;
    wait_state(&api, &udp, "live", Duration::from_secs(90)).await;
    wait_state(&api, &creds, "live", Duration::from_secs(90)).await;
    c.note("both pulls live");
    let http = hls::client();
    let pl = edge.url("/hls/cams/gate/index.m3u8");
    let before = hls::wait_segments(&http, &pl, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let codecs = ffprobe_codecs(&pl).unwrap();
    assert!(
        !codecs.is_empty() && codecs.iter().all(|c| c == "h264"),
        "{codecs:?}"
    );
    let udp_pl = edge.url("/hls/cams/gate-udp/index.m3u8");
    hls::wait_segments(&http, &udp_pl, 1, Duration::from_secs(30))
        .await
        .unwrap();

    // The camera goes away: retrying, with the reason; it comes back: live, new segments.
    drop(camera);
    c.note("camera stopped");
    let error = wait_state(&api, &tcp, "retrying", Duration::from_secs(30)).await;
    assert!(!error.is_empty(), "the ingress says why it retries");
    println!("while the camera is down: retrying ({error})");
    let _camera = Camera::start(port);
    c.note("camera restarted");
    wait_state(&api, &tcp, "live", Duration::from_secs(40)).await;
    let last_before = *hls::segments(&before).last().unwrap();
    poll(
        "new segments on the edge after the camera came back",
        Duration::from_secs(30),
        || async {
            let body = hls::get_ok(&http, &pl)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let text = String::from_utf8_lossy(&body).to_string();
            let newest = hls::segments(&text).last().copied().unwrap_or(0);
            (newest > last_before + 2 && text.contains("#EXT-X-DISCONTINUITY"))
                .then_some(())
                .ok_or(text)
        },
    )
    .await
    .unwrap();

    // Sources that never answer, or answer garbage: retrying with an error; the node serves on.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("rtsp://{}/cam", silent.local_addr().unwrap());
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_url = format!("rtsp://{}/cam", garbage.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::Write;
        for s in garbage.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.0 418 I'm a teapot\r\n\r\n\x00\xff\xfe garbage");
        }
    });
    let a = url_ingress(&api, "silent", &silent_url, None).await;
    let b = url_ingress(&api, "garbage", &garbage_url, None).await;
    let e1 = wait_state(&api, &a, "retrying", Duration::from_secs(40)).await;
    let e2 = wait_state(&api, &b, "retrying", Duration::from_secs(40)).await;
    println!("silent source: {e1}\ngarbage source: {e2}");
    assert!(!e1.is_empty() && !e2.is_empty());
    drop(silent);
    let health = http.get(c.nodes[0].url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    hls::wait_segments(&http, &pl, 1, Duration::from_secs(10))
        .await
        .unwrap();
    c.note("done");
}
