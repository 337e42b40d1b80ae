//! An ffmpeg RTMP publisher: testsrc video (H.264) and a sine tone (AAC) in real time.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `ffmpeg ... -f flv rtmp://...`; killed when dropped.
pub struct Publisher {
    child: Child,
    url: String,
    stderr: tempfile::NamedTempFile,
    started: Instant,
}

impl Publisher {
    /// Starts publishing to `url` until stopped.
    pub fn start(url: &str) -> Publisher {
        let stderr = tempfile::NamedTempFile::new().expect("ffmpeg log file");
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
            .args(["-f", "lavfi", "-i", "sine"])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-pix_fmt", "yuv420p", "-g", "25", "-c:a", "aac"])
            .args(["-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr.reopen().expect("reopen ffmpeg log")))
            .spawn()
            .expect("spawn ffmpeg (apt-get install ffmpeg)");
        Publisher {
            child,
            url: url.to_string(),
            stderr,
            started: Instant::now(),
        }
    }

    /// Starts publishing 1280x720 at 30 fps and 2.5 Mb/s (the benchmark kit's stream) to `url`.
    pub fn start_hd(url: &str) -> Publisher {
        let stderr = tempfile::NamedTempFile::new().expect("ffmpeg log file");
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
            .args(["-f", "lavfi", "-i", "sine"])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "5000k"])
            .args([
                "-pix_fmt", "yuv420p", "-g", "60", "-c:a", "aac", "-b:a", "128k",
            ])
            .args(["-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr.reopen().expect("reopen ffmpeg log")))
            .spawn()
            .expect("spawn ffmpeg (apt-get install ffmpeg)");
        Publisher {
            child,
            url: url.to_string(),
            stderr,
            started: Instant::now(),
        }
    }

    /// The URL it publishes to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The exit status once ffmpeg has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for ffmpeg to exit; returns its status and how long it ran.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.exit_status() {
                return Some((s, self.started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// What ffmpeg wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Kills ffmpeg.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop();
    }
}
