//! A WebSocket-MJPEG camera (as an ESP32 would be) and an MJPEG viewer, for scenarios that run
//! a camera room through faults.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// `n` different JPEGs (`size`, ffmpeg's test pattern), made at test time.
pub fn jpegs(n: usize, size: &str) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={size}:rate=10"))
        .args(["-frames:v", &n.to_string(), "-q:v", "5"])
        .arg(dir.path().join("%03d.jpg"))
        .status()
        .expect("ffmpeg");
    assert!(status.success(), "ffmpeg made no JPEGs");
    (1..=n)
        .map(|i| std::fs::read(dir.path().join(format!("{i:03}.jpg"))).expect("a JPEG"))
        .collect()
}

/// A camera streaming `pictures` at `fps` to a WebSocket ingest URL until dropped; it reads
/// too (pongs, the server's Close).
pub struct Camera {
    stop: Arc<AtomicBool>,
    /// Pictures sent.
    pub sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Camera {
    pub async fn start(ws_url: &str, key: &str, pictures: Vec<Vec<u8>>, fps: u32) -> Camera {
        let mut req = ws_url.into_client_request().expect("ws url");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("the camera connects");
        let (mut tx, mut rx) = ws.split();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        let task = tokio::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            async move {
                let every = Duration::from_secs(1) / fps.max(1);
                for p in pictures.iter().cycle() {
                    if stop.load(Ordering::Relaxed)
                        || tx.send(Message::Binary(p.clone().into())).await.is_err()
                    {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(every).await;
                }
            }
        });
        Camera { stop, sent, task }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// Reads an MJPEG stream (`multipart/x-mixed-replace`) for `window`; the pictures it got.
pub async fn count_mjpeg(url: &str, window: Duration) -> u64 {
    let Ok(mut resp) = reqwest::get(url).await else {
        return 0;
    };
    let mut pictures = 0;
    let mut tail: Vec<u8> = Vec::new();
    let boundary = b"--streamhub-mjpeg-frame";
    let until = tokio::time::Instant::now() + window;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, resp.chunk()).await {
        tail.extend_from_slice(&chunk);
        let mut at = 0;
        while let Some(i) = tail[at..]
            .windows(boundary.len())
            .position(|w| w == boundary)
        {
            pictures += 1;
            at += i + boundary.len();
        }
        tail.drain(..at.max(tail.len().saturating_sub(boundary.len())));
    }
    pictures
}
