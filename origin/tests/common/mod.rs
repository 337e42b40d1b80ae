//! Test harness: runs the real `streamhub-origin` binary on free loopback ports and drives it
//! with real clients (reqwest for the API, ffmpeg/ffprobe for media).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASS: &str = "test-password-1";

/// A free TCP port on 127.0.0.1 (released before the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A free UDP port on 127.0.0.1 (for the cluster QUIC endpoint).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

/// Polls `f` every 50 ms until it returns Some or the deadline passes.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running origin process with its own data dir.
pub struct Origin {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub http: SocketAddr,
    pub rtmp: SocketAddr,
    pub log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Origin {
    /// Starts a node on a fresh data dir and waits for /healthz.
    pub async fn start() -> Origin {
        let tmp = tempfile::tempdir().expect("tempdir");
        // The node's side files (log, cluster port) sit beside its data dir, inside the tempdir.
        let dir = tmp.path().join("node");
        let mut o = Origin::start_in(&dir).await;
        o._tmp = Some(tmp);
        o
    }

    /// Starts a node on `dir` (kept by the caller) and waits for /healthz.
    pub async fn start_in(dir: &Path) -> Origin {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let rtmp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Origin::start_with(dir, http, rtmp).await
    }

    /// Starts a node on given addresses.
    pub async fn start_with(dir: &Path, http: SocketAddr, rtmp: SocketAddr) -> Origin {
        let log = dir.with_extension(format!("{}.log", http.port()));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_streamhub-origin"))
            .arg("--data-dir")
            .arg(dir)
            .arg("--http")
            .arg(http.to_string())
            .arg("--rtmp")
            .arg(rtmp.to_string())
            .arg("--cluster")
            .arg(format!("127.0.0.1:{}", cluster_port(dir)))
            .arg("--node-id")
            .arg("origin-test-1")
            .arg("--webrtc-udp")
            .arg("127.0.0.1:0")
            .env("ADMIN_USER", ADMIN_USER)
            .env("ADMIN_PASS", ADMIN_PASS)
            .env("STREAMHUB_LOG", "info,openraft=warn,streamhub_origin=debug")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn streamhub-origin");
        let o = Origin {
            child: Some(child),
            dir: dir.to_path_buf(),
            http,
            rtmp,
            log,
            _tmp: None,
        };
        let url = o.url("/healthz");
        let client = reqwest::Client::new();
        poll("origin /healthz", Duration::from_secs(30), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        o
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn rtmp_url(&self, key: &str) -> String {
        format!("rtmp://{}/live/{}", self.rtmp, key)
    }

    /// The node's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        unsafe_sigterm(c.id());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An admin API client for this node.
    pub async fn admin(&self) -> Api {
        let api = Api::new(self, None);
        let r = api
            .post(
                "/api/v1/auth/login",
                json!({"username": ADMIN_USER, "password": ADMIN_PASS}),
            )
            .await;
        assert_eq!(r.0, 200, "login: {:?}", r.1);
        let token = r.1["data"]["token"].as_str().expect("token").to_string();
        Api::new(self, Some(token))
    }
}

/// The node's cluster port: chosen once per data dir and kept, since a node's address is part
/// of its Raft membership.
fn cluster_port(dir: &Path) -> u16 {
    let file = dir.with_extension("cluster-port");
    if let Some(p) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return p;
    }
    let p = free_udp_port();
    std::fs::write(&file, p.to_string()).expect("write cluster port");
    p
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

impl Drop for Origin {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- origin log ({}) ----\n{}", self.http, self.log_text());
        }
        self.kill9();
    }
}

/// A small JSON API client: every call returns (status, body).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(o: &Origin, token: Option<String>) -> Api {
        Api {
            base: o.url(""),
            token,
            client: reqwest::Client::new(),
        }
    }

    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(m, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.req(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.req(reqwest::Method::PATCH, path).json(&body))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>, content_type: &str) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .header("content-type", content_type)
            .body(body);
        self.send(r).await
    }

    /// Creates an app and an RTMP ingress for `room`; returns the stream key.
    pub async fn app_with_ingress(&self, app: &str, room: &str) -> String {
        let r = self.post("/api/v1/apps", json!({"name": app})).await;
        assert!(r.0 == 201 || r.0 == 409, "create app: {r:?}");
        let r = self
            .post(
                &format!("/api/v1/apps/{app}/ingress"),
                json!({"type": "rtmp", "room": room}),
            )
            .await;
        assert_eq!(r.0, 201, "create ingress: {r:?}");
        r.1["data"]["streamKey"].as_str().unwrap().to_string()
    }
}

/// An ffmpeg RTMP publisher: testsrc video (H.264) + sine audio (AAC) in real time.
pub struct Publisher {
    pub child: Child,
}

impl Publisher {
    pub fn start(url: &str, seconds: u32) -> Publisher {
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
            .args(["-t", &seconds.to_string()])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args([
                "-pix_fmt", "yuv420p", "-g", "25", "-c:a", "aac", "-b:a", "64k",
            ])
            .args(["-f", "flv", url])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ffmpeg (apt-get install ffmpeg)");
        Publisher { child }
    }

    /// Waits for ffmpeg to exit; returns (success, stderr).
    pub fn wait(mut self) -> (bool, String) {
        use std::io::Read;
        let status = self.child.wait().expect("wait ffmpeg");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.success(), err)
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ffprobe's view of an HLS URL: decoded video frames, codecs and duration.
#[derive(Debug)]
pub struct Probe {
    pub video_frames: u64,
    pub codecs: Vec<String>,
    pub width: u64,
    pub height: u64,
    pub duration: f64,
}

/// Reads and decodes the whole (current) HLS playlist with ffprobe.
pub fn ffprobe_hls(url: &str) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-print_format", "json"])
        .args(["-show_streams", "-show_format", url])
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video = streams.iter().find(|s| s["codec_type"] == "video");
    let num = |s: Option<&Value>, k: &str| {
        s.and_then(|s| s[k].as_str().and_then(|x| x.parse().ok()).or(s[k].as_u64()))
            .unwrap_or(0)
    };
    Probe {
        video_frames: num(video, "nb_read_frames"),
        codecs: streams
            .iter()
            .filter_map(|s| s["codec_name"].as_str().map(String::from))
            .collect(),
        width: num(video, "width"),
        height: num(video, "height"),
        duration: v["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.0),
    }
}

/// Fetches a URL's body as text.
pub async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    let s = r.status().as_u16();
    (s, r.text().await.unwrap_or_default())
}

/// Waits until the playlist at `url` lists at least `n` segments; returns it.
pub async fn wait_segments(url: &str, n: usize, timeout: Duration) -> String {
    poll(&format!("{n} segments at {url}"), timeout, || async {
        let (s, body) = get_text(url).await;
        (s == 200 && body.matches("#EXTINF").count() >= n).then_some(body)
    })
    .await
}
