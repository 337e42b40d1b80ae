//! A real S3-compatible server for the recording tests: `s3s-fs` (installed by `.ci/run`), one
//! process per test, storing objects as files under a temporary directory, with credentials it
//! checks. Stop it and start it again on the same port to make S3 unreachable for a while.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "streamhub-test-key";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "streamhub-test-secret-0123456789";
/// The bucket [`S3Server::start`] creates.
pub const BUCKET: &str = "vods";

/// Whether `s3s-fs` runs here.
pub fn available() -> bool {
    Command::new("s3s-fs")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running `s3s-fs`; killed when dropped.
pub struct S3Server {
    child: Option<Child>,
    addr: SocketAddr,
    root: tempfile::TempDir,
    log: PathBuf,
}

impl S3Server {
    /// A server on a free port with bucket [`BUCKET`].
    pub async fn start() -> anyhow::Result<S3Server> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("data").join(BUCKET))?;
        let log = root.path().join("s3s-fs.log");
        let mut s = S3Server {
            child: None,
            addr: crate::ports::free_tcp(),
            root,
            log,
        };
        s.resume().await?;
        Ok(s)
    }

    /// The body of `PUT /api/v1/apps/:app/storage` for `bucket` on this server, signed with
    /// `secret` (path-style, as s3s-fs needs).
    pub fn storage(&self, bucket: &str, secret: &str) -> serde_json::Value {
        serde_json::json!({
            "endpoint": self.endpoint(),
            "region": "us-east-1",
            "bucket": bucket,
            "pathStyle": true,
            "accessKeyId": ACCESS_KEY,
            "secretAccessKey": secret,
        })
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the objects are stored: `<root>/<bucket>/<key>`.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The object `key` of [`BUCKET`], if it exists.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.data_dir().join(BUCKET).join(key)).ok()
    }

    /// The keys of [`BUCKET`] (files under its directory), sorted.
    pub fn keys(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else if let Ok(rel) = p.strip_prefix(base) {
                    let key = rel.to_string_lossy().to_string();
                    // s3s-fs keeps its own bookkeeping beside the objects.
                    if !key.starts_with('.') && !key.contains("/.") {
                        out.push(key);
                    }
                }
            }
        }
        let base = self.data_dir().join(BUCKET);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    /// Stops the server (connections are refused until [`resume`](Self::resume)).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and waits until it accepts connections.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("s3s-fs")
            .args([
                "--host",
                &self.addr.ip().to_string(),
                "--port",
                &self.addr.port().to_string(),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawn s3s-fs (cargo install s3s-fs): {e}"))?;
        self.child = Some(child);
        let addr = self.addr;
        crate::poll(
            "s3s-fs accepts connections",
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        Ok(())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
