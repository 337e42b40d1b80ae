//! A WebSocket camera (as an ESP32 would be) streams 320x240 pictures; it disconnects and, a
//! second later, reconnects with the same key sending 640x480 (a camera that rebooted with
//! another resolution setting). MJPEG viewers on the origin and on an edge keep their one HTTP
//! stream through the change and get the new pictures on it: the node follows the room to the
//! camera's new session (waiting up to `CAMERA_RETURN`) instead of ending every viewer's stream
//! when the camera leaves.

use std::time::Duration;

use streamhub_chaos_tests::camera::{jpeg_size, jpegs, mjpeg_parts, Camera};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, poll, Cluster};

/// Reads the MJPEG stream at `url` on one connection for `window`: every picture's size, in
/// order, and whether the stream was still open at the end.
async fn watch(url: String, window: Duration) -> (Vec<(u16, u16)>, bool) {
    let mut resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let mut body = Vec::new();
    let until = tokio::time::Instant::now() + window;
    let open = loop {
        match tokio::time::timeout_at(until, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            Ok(_) => break false,
            Err(_) => break true,
        }
    };
    let sizes = mjpeg_parts(&body)
        .iter()
        .map(|p| jpeg_size(p).expect("a JPEG"))
        .collect();
    (sizes, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_reconnect_keeps_mjpeg_viewers() {
    if !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    assert_eq!(admin.create_app("cams").await.unwrap().status, 201);
    let r = admin
        .post("/apps/cams/ws-ingest", serde_json::json!({"room": "door"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let ws_url = r.data()["wsUrl"].as_str().unwrap().to_string();
    let key = r.data()["streamKey"].as_str().unwrap().to_string();
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let camera = Camera::start(&ws_url, &key, jpegs(10, "320x240"), 10).await;
    let streams = [
        c.nodes[0].url("/live/cams/door/mjpeg"),
        edge.url("/live/cams/door/mjpeg"),
    ];
    for url in &streams {
        poll("pictures", Duration::from_secs(30), || async {
            let n = streamhub_chaos_tests::camera::count_mjpeg(url, Duration::from_secs(1)).await;
            (n > 0)
                .then_some(())
                .ok_or(format!("{n} pictures at {url}"))
        })
        .await
        .unwrap();
    }

    let window = Duration::from_secs(14);
    let viewers: Vec<_> = streams
        .iter()
        .map(|url| tokio::spawn(watch(url.clone(), window)))
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.note("the camera disconnects");
    drop(camera);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _camera = Camera::start(&ws_url, &key, jpegs(10, "640x480"), 10).await;
    c.note("the camera is back at 640x480");

    for (url, viewer) in streams.iter().zip(viewers) {
        let (sizes, open) = viewer.await.unwrap();
        let small = sizes.iter().filter(|s| **s == (320, 240)).count();
        let large = sizes.iter().filter(|s| **s == (640, 480)).count();
        println!("{url}: {small} pictures at 320x240, then {large} at 640x480; open: {open}");
        assert!(small >= 10, "{url}: the first camera's pictures: {sizes:?}");
        // ~8 s of the returned camera at 10 fps; a loaded machine delivers fewer.
        assert!(
            large >= 20,
            "{url}: the returned camera's pictures on the same stream: {sizes:?}"
        );
        let first_large = sizes.iter().position(|s| *s == (640, 480)).unwrap();
        assert!(
            sizes[first_large..].iter().all(|s| *s == (640, 480)),
            "{url}: in order: {sizes:?}"
        );
        assert!(open, "{url}: the stream is still open");
    }
}
