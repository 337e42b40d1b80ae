//! Cameras for the tests: a WebSocket-MJPEG camera (as an ESP32 would be) and an MJPEG viewer,
//! and an RTSP camera no one here wrote (GStreamer's RTSP server).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
        let (ws, _) = tokio_tungstenite::connect_async(request(ws_url, key))
            .await
            .expect("the camera connects");
        Camera::run(ws, pictures, fps)
    }

    /// As [`Camera::start`], to a `wss://` URL, trusting the CA certificate `root_pem` (an
    /// ESP32 is given its server's root the same way).
    pub async fn start_tls(
        ws_url: &str,
        key: &str,
        pictures: Vec<Vec<u8>>,
        fps: u32,
        root_pem: &str,
    ) -> Camera {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let req = request(ws_url, key);
        assert_eq!(req.uri().scheme_str(), Some("wss"), "{ws_url}");
        let host = req.uri().host().expect("a host").to_string();
        let port = req.uri().port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            roots.add(cert.expect("a PEM certificate")).expect("a CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .expect("the camera reaches the port");
        let name = ServerName::try_from(host).expect("a server name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("the TLS handshake");
        let (ws, _) = tokio_tungstenite::client_async(req, tls)
            .await
            .expect("the camera connects");
        Camera::run(ws, pictures, fps)
    }

    fn run<S>(ws: tokio_tungstenite::WebSocketStream<S>, pictures: Vec<Vec<u8>>, fps: u32) -> Camera
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
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

/// The upgrade request of a camera: `ws_url` with its key as a bearer token.
fn request(ws_url: &str, key: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = ws_url.into_client_request().expect("ws url");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    req
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// Splits an MJPEG (`multipart/x-mixed-replace`) body into its complete parts' payloads.
pub fn mjpeg_parts(body: &[u8]) -> Vec<Vec<u8>> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(start) = find(rest, b"--streamhub-mjpeg-frame\r\n") {
        let after = &rest[start + 25..];
        let Some(head_end) = find(after, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&after[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("content length");
        let data = &after[head_end + 4..];
        if data.len() < len + 2 {
            break;
        }
        out.push(data[..len].to_vec());
        rest = &data[len + 2..];
    }
    out
}

/// The width and height of a baseline or progressive JPEG (its SOF segment).
pub fn jpeg_size(jpeg: &[u8]) -> Option<(u16, u16)> {
    let mut at = 2;
    while at + 9 < jpeg.len() {
        if jpeg[at] != 0xff {
            return None;
        }
        let marker = jpeg[at + 1];
        let len = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        if matches!(marker, 0xc0..=0xc2) {
            let h = u16::from_be_bytes([jpeg[at + 5], jpeg[at + 6]]);
            let w = u16::from_be_bytes([jpeg[at + 7], jpeg[at + 8]]);
            return Some((w, h));
        }
        at += 2 + len;
    }
    None
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

/// GStreamer's RTSP server on `port` (Debian's python3-gst-1.0 + gir1.2-gst-rtsp-server-1.0),
/// with a watchdog: gst-rtsp-server 1.22 sometimes aborts on an assertion
/// (`gst_rtsp_media_get_rates`) while several clients set up at once, and a camera that dies is
/// restarted as a real one reboots (the test is about our ingress, not GStreamer's). Stopping
/// the camera on purpose is dropping it.
pub struct RtspCamera {
    child: Arc<Mutex<Child>>,
    stop: Arc<AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

fn spawn_camera(port: u16) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/rtsp/server.py");
    let mut child = Command::new("/usr/bin/python3")
        .args([script, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect(
            "GStreamer RTSP server (apt-get install python3-gst-1.0 gir1.2-gst-rtsp-server-1.0)",
        );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the RTSP server did not start");
    child
}

impl RtspCamera {
    /// Starts the camera on `port` (`rtsp://127.0.0.1:<port>/cam`) and waits until it listens.
    pub fn start(port: u16) -> RtspCamera {
        let child = Arc::new(Mutex::new(spawn_camera(port)));
        let stop = Arc::new(AtomicBool::new(false));
        let watchdog = std::thread::spawn({
            let (child, stop) = (child.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let mut c = child.lock().unwrap();
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(Some(status)) = c.try_wait() {
                        eprintln!("the RTSP camera died ({status}); restarting it");
                        *c = spawn_camera(port);
                    }
                }
            }
        });
        RtspCamera {
            child,
            stop,
            watchdog: Some(watchdog),
        }
    }
}

impl Drop for RtspCamera {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}
