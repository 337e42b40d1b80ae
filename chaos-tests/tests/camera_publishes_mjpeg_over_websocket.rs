//! A camera publishes JPEGs over WebSocket to an origin (as an ESP32 would), and an edge serves
//! them: `frame.jpg` on the edge is byte-equal to a picture that was sent, the multipart stream
//! parses into consecutive pictures, and a headless Chromium shows the stream in an `<img>`.
//! Bad input is dropped and counted while the device stays connected; wrong keys are refused
//! before the upgrade; revoking the key disconnects the device at once; a 50 MB message closes
//! only that connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use streamhub_chaos_tests::camera::mjpeg_parts;
use streamhub_chaos_tests::require::{browser_available, require, BROWSER};
use streamhub_chaos_tests::{chaos_seed, poll, Cluster};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// `n` different JPEGs (320x240, ffmpeg's test pattern with a frame counter).
fn jpegs(n: usize) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10",
        ])
        .args(["-frames:v", &n.to_string(), "-q:v", "5"])
        .arg(dir.path().join("%03d.jpg"))
        .status()
        .expect("ffmpeg");
    assert!(status.success());
    (1..=n)
        .map(|i| std::fs::read(dir.path().join(format!("{i:03}.jpg"))).unwrap())
        .collect()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the device's WebSocket; `Err(status)` if the upgrade was refused.
async fn connect(url: &str, key: Option<&str>) -> Result<Ws, u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(key) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_publishes_mjpeg_over_websocket() {
    let mut c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    for app in ["cams", "other"] {
        assert_eq!(admin.create_app(app).await.unwrap().status, 201);
    }
    let r = admin
        .post("/apps/cams/ws-ingest", json!({"room": "door"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.data()["streamKey"].as_str().unwrap().to_string();
    assert!(key.starts_with("wsk_"));
    let id = r.data()["ingressId"].as_str().unwrap().to_string();
    let ws_url = r.data()["wsUrl"].as_str().unwrap().to_string();
    assert_eq!(
        ws_url,
        c.nodes[0]
            .url("/ingest/ws?app=cams&room=door")
            .replacen("http", "ws", 1)
    );
    let r = admin
        .post("/apps/other/ws-ingest", json!({"room": "door"}))
        .await
        .unwrap();
    let foreign = r.data()["streamKey"].as_str().unwrap().to_string();
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;

    // Refused before the upgrade: no key, an unknown key, another app's key.
    assert_eq!(connect(&ws_url, None).await.err(), Some(401));
    assert_eq!(connect(&ws_url, Some("wsk_nope")).await.err(), Some(401));
    assert_eq!(connect(&ws_url, Some(&foreign)).await.err(), Some(403));
    // An RTMP key is not a device key, and a device key is not accepted over RTMP (see the
    // ingress list): the kinds never mix.
    let listed = admin.get("/apps/cams/ws-ingest").await.unwrap();
    assert_eq!(listed.data().as_array().unwrap().len(), 1);
    assert!(
        listed.data()[0].get("streamKey").is_none(),
        "keys are shown once"
    );

    // The device connects with ?key= (libraries that cannot set headers) and misbehaves a bit.
    let mut ws = connect(&format!("{ws_url}&key={key}"), None).await.unwrap();
    let pictures = jpegs(40);
    ws.send(Message::Text("hello".into())).await.unwrap();
    ws.send(Message::Binary(b"not a jpeg".to_vec().into()))
        .await
        .unwrap();
    let cut = pictures[0][..pictures[0].len() / 2].to_vec();
    ws.send(Message::Binary(cut.into())).await.unwrap();
    // Then publishes at 10 fps, cycling its pictures, until told to stop (a camera streams on;
    // one that stops sending is closed as idle after 15 s). It keeps reading too, so the
    // server's pings get their pongs and its Close is taken off the socket as soon as it comes.
    let (mut tx, mut rx) = ws.split();
    let sent = pictures.clone();
    let streaming = Arc::new(AtomicBool::new(true));
    let publisher = tokio::spawn({
        let streaming = streaming.clone();
        async move {
            for p in sent.iter().cycle() {
                if !streaming.load(Ordering::Relaxed)
                    || tx.send(Message::Binary(p.clone().into())).await.is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tx
        }
    });
    let reader = tokio::spawn(async move {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("device read error: {e}");
                    return None;
                }
            }
        }
        None
    });

    // The edge pulls the JPEG track: frame.jpg is a picture that was sent, byte for byte.
    let http = reqwest::Client::new();
    let index: HashMap<Vec<u8>, usize> = pictures
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, p)| (p, i))
        .collect();
    let frame_url = edge.url("/live/cams/door/frame.jpg");
    poll("frame.jpg on the edge", Duration::from_secs(20), || async {
        let resp = http
            .get(&frame_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
        index
            .get(&body)
            .copied()
            .ok_or(format!("{status}: {} bytes", body.len()))
    })
    .await
    .unwrap();
    // The multipart stream on the edge delivers the camera's pictures in order (a viewer that
    // falls behind skips to the newest one, as documented: no repeats, no going back).
    let mut stream = http
        .get(edge.url("/live/cams/door/mjpeg"))
        .send()
        .await
        .unwrap();
    let mut body = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while mjpeg_parts(&body).len() < 5 {
            body.extend_from_slice(&stream.chunk().await.unwrap().expect("the stream goes on"));
        }
        mjpeg_parts(&body)
    })
    .await
    .expect("five pictures in time");
    let seq: Vec<usize> = got
        .iter()
        .map(|p| *index.get(p).expect("a picture that was sent"))
        .collect();
    let n = pictures.len();
    assert!(
        seq.windows(2)
            .all(|w| (1..=n / 2).contains(&((w[1] + n - w[0]) % n))),
        "pictures in order, none twice: {seq:?}"
    );
    drop(stream);

    // A browser shows the stream in an <img>.
    if require(BROWSER, browser_available()) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/mjpeg_img.mjs");
        let out = std::process::Command::new("node")
            .arg(script)
            .arg(edge.url("/live/cams/door/mjpeg"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
            .output()
            .expect("node (and chromium + playwright-core, installed by .ci/run)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "browser check failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["naturalWidth"], 320, "{v}");
        assert_eq!(v["naturalHeight"], 240, "{v}");
    }

    let origin = &c.nodes[0];
    assert!(
        origin
            .metric("streamhub_ws_frames_invalid_total")
            .await
            .unwrap()
            >= 3.0
    );
    assert!(origin.metric("streamhub_ws_frames_total").await.unwrap() >= 10.0);
    assert_eq!(
        origin.metric("streamhub_ws_refused_total").await.unwrap(),
        3.0
    );

    // Revoking the key disconnects the device at once, while it is streaming.
    assert!(!reader.is_finished(), "the device is still connected");
    let reply = admin
        .delete(&format!("/apps/cams/ws-ingest/{id}"))
        .await
        .unwrap();
    assert_eq!(reply.status, 204, "{reply:?}");
    // Well before its idle timeout (15 s; the camera keeps sending anyway): the revocation closed
    // it, as the policy close code says.
    let closed = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the device is disconnected within 10 s")
        .unwrap();
    assert_eq!(closed, Some(1008), "closed for policy");
    streaming.store(false, Ordering::Relaxed);
    drop(publisher.await.unwrap());
    assert_eq!(
        connect(&ws_url, Some(&key)).await.err(),
        Some(401),
        "the key is gone"
    );

    // A 50 MB message closes that connection, and only that one; the node stays up.
    let r = admin
        .post("/apps/cams/ws-ingest", json!({"room": "big"}))
        .await
        .unwrap();
    let big_key = r.data()["streamKey"].as_str().unwrap().to_string();
    let big_url = c.nodes[0]
        .url("/ingest/ws?app=cams&room=big")
        .replacen("http", "ws", 1);
    let mut big = connect(&big_url, Some(&big_key)).await.unwrap();
    let _ = big
        .send(Message::Binary(vec![0xffu8; 50 << 20].into()))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match big.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the oversized connection is closed");
    let health = http.get(origin.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    c.note("done");
}
