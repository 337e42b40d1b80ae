//! An ffmpeg publisher (RTMP, or MPEG-TS over SRT): testsrc video (H.264) and a sine tone (AAC)
//! in real time.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `ffmpeg ... -f flv rtmp://...`; killed when dropped.
pub struct Publisher {
    child: Child,
    url: String,
    stderr: tempfile::NamedTempFile,
    started: Instant,
}

/// The picture a publisher sends.
#[derive(Debug, Clone, Copy)]
enum Picture {
    /// 320x240 at 25 fps, a keyframe a second.
    Small,
    /// 1280x720 at 30 fps and 2.5 Mb/s (the benchmark kit's stream).
    Hd,
}

impl Publisher {
    /// Starts publishing to `url` until stopped.
    pub fn start(url: &str) -> Publisher {
        Publisher::spawn(url, Picture::Small, None)
    }

    /// Publishes to `url` for `secs` seconds, then ffmpeg exits.
    pub fn for_secs(url: &str, secs: u32) -> Publisher {
        Publisher::spawn(url, Picture::Small, Some(secs))
    }

    /// Starts publishing MPEG-TS over SRT to `url` (`srt://…?streamid=…&passphrase=…`).
    pub fn start_srt(url: &str) -> Publisher {
        Publisher::spawn_as(url, Picture::Small, None, "mpegts")
    }

    /// Starts publishing 1280x720 at 30 fps and 2.5 Mb/s (the benchmark kit's stream) to `url`.
    pub fn start_hd(url: &str) -> Publisher {
        Publisher::spawn(url, Picture::Hd, None)
    }

    /// As [`start_hd`](Self::start_hd) for `secs` seconds, then ffmpeg exits.
    pub fn start_hd_for_secs(url: &str, secs: u32) -> Publisher {
        Publisher::spawn(url, Picture::Hd, Some(secs))
    }

    fn spawn(url: &str, picture: Picture, secs: Option<u32>) -> Publisher {
        Publisher::spawn_as(url, picture, secs, "flv")
    }

    fn spawn_as(url: &str, picture: Picture, secs: Option<u32>, format: &str) -> Publisher {
        let stderr = tempfile::NamedTempFile::new().expect("ffmpeg log file");
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"]);
        match picture {
            Picture::Small => cmd.args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]),
            Picture::Hd => cmd.args(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"]),
        };
        cmd.args(["-f", "lavfi", "-i", "sine"]);
        if let Some(secs) = secs {
            cmd.args(["-t", &secs.to_string()]);
        }
        cmd.args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ]);
        match picture {
            Picture::Small => cmd.args(["-g", "25", "-b:a", "64k"]),
            Picture::Hd => cmd.args([
                "-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "5000k", "-g", "60", "-b:a",
                "128k",
            ]),
        };
        let child = cmd
            .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-f", format, url])
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

    /// ffmpeg's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URL it publishes to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The exit status once ffmpeg has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether ffmpeg has exited.
    pub fn exited(&mut self) -> bool {
        self.exit_status().is_some()
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

    /// Blocks until ffmpeg exits; whether it succeeded, and what it wrote to stderr.
    pub fn wait(mut self) -> (bool, String) {
        let ok = self.child.wait().is_ok_and(|s| s.success());
        (ok, self.stderr())
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
