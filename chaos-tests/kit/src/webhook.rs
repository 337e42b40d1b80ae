//! A webhook receiver for tests: a plain HTTP/1.1 server on loopback that records every
//! request and answers as told (200, 500, or down: its port closed), and the documented
//! signature check.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 to everything.
    Ok,
    /// 500 to everything.
    Fail,
    /// The port is closed (connection refused) and open connections are dropped.
    Down,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: String,
    pub event: String,
    pub delivery: String,
    pub body: Vec<u8>,
    /// What the receiver answered (0: the connection was dropped).
    pub answered: u16,
    pub at_ms: u64,
}

struct Shared {
    mode: Mutex<(Mode, CancellationToken)>,
    got: Mutex<Vec<Received>>,
}

/// A running receiver.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// A receiver answering 200, on a free loopback port.
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = CancellationToken::new();
        let shared = Arc::new(Shared {
            mode: Mutex::new((Mode::Ok, up.clone())),
            got: Mutex::new(Vec::new()),
        });
        tokio::spawn(serve(listener, shared.clone(), up));
        Ok(Receiver { addr, shared })
    }

    /// The URL webhooks are sent to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches how it answers; from or to [`Mode::Down`] the port is closed or opened again.
    pub async fn set(&self, mode: Mode) -> anyhow::Result<()> {
        let was = {
            let mut m = self.shared.mode.lock().unwrap();
            let was = m.0;
            m.0 = mode;
            if mode == Mode::Down {
                m.1.cancel();
            }
            was
        };
        if was == Mode::Down && mode != Mode::Down {
            let mut tries = 0;
            let listener = loop {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => break l,
                    // The old listener's port may take a moment to be free again.
                    Err(_) if tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let up = CancellationToken::new();
            self.shared.mode.lock().unwrap().1 = up.clone();
            tokio::spawn(serve(listener, self.shared.clone(), up));
        }
        Ok(())
    }

    /// Everything received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, up: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = up.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let (shared, up) = (shared.clone(), up.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = up.cancelled() => {}
                _ = connection(stream, shared) => {}
            }
        });
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Serves requests on one keep-alive connection.
async fn connection(mut stream: TcpStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            anyhow::ensure!(buf.len() < 64 * 1024, "request head too long");
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let len: usize = header("content-length").parse().unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[body_start..body_start + len].to_vec();
        buf.drain(..body_start + len);
        let mode = shared.mode.lock().unwrap().0;
        let answered = match mode {
            Mode::Ok => 200,
            Mode::Fail => 500,
            Mode::Down => 0,
        };
        shared.got.lock().unwrap().push(Received {
            signature: header("x-streamhub-signature"),
            event: header("x-streamhub-event"),
            delivery: header("x-streamhub-delivery"),
            body,
            answered,
            at_ms: now_ms(),
        });
        if answered == 0 {
            return Ok(());
        }
        let reason = if answered == 200 {
            "OK"
        } else {
            "Internal Server Error"
        };
        stream
            .write_all(
                format!("HTTP/1.1 {answered} {reason}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
            )
            .await?;
    }
}

/// Checks a request's signature the way docs/webhooks.md tells integrators to: the `t=` and
/// every `v1=` of `X-StreamHub-Signature`, one of which must be the hex HMAC-SHA256 of
/// `"<t>.<body>"` under `secret`, and `t` within `tolerance` of now. The body, parsed.
pub fn verify(secret: &str, r: &Received, tolerance: Duration) -> Result<Value, String> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in r.signature.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => sigs.push(v.to_string()),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| format!("no t= in {:?}", r.signature))?;
    let now = now_ms() / 1000;
    if now.abs_diff(t) > tolerance.as_secs() {
        return Err(format!("timestamp {t} is {} s from now", now.abs_diff(t)));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    let want = hex::encode(mac.finalize().into_bytes());
    if !sigs.contains(&want) {
        return Err(format!("no valid v1= in {:?}", r.signature));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("body: {e}"))
}
