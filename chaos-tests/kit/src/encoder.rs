//! An encoder restarted with other settings and the same stream key, as OBS users do: the
//! settings of each run ([`RESTARTS`]) and ffmpeg publishing one of them.

use std::process::Stdio;

use tokio::process::{Child, Command};

/// One encoder run: picture `size` (`WxH`), x264 `profile`, B-frames, AAC sample rate and
/// channels.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub size: &'static str,
    pub profile: &'static str,
    pub bframes: u32,
    pub rate: u32,
    pub channels: u32,
}

impl Settings {
    /// The picture width.
    pub fn width(&self) -> u32 {
        self.size.split_once('x').unwrap().0.parse().unwrap()
    }

    /// Bytes of one decoded yuv420p picture, as ffmpeg's `framecrc` reports it.
    pub fn picture_bytes(&self) -> usize {
        let (w, h) = self.size.split_once('x').unwrap();
        let (w, h): (usize, usize) = (w.parse().unwrap(), h.parse().unwrap());
        w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
    }
}

/// 720p Main with B-frames and 44.1 kHz mono, then 1080p Baseline without B-frames and 48 kHz
/// stereo, then 480p High with B-frames and 44.1 kHz mono: every change a restart can bring.
pub const RESTARTS: [Settings; 3] = [
    Settings {
        size: "1280x720",
        profile: "main",
        bframes: 2,
        rate: 44_100,
        channels: 1,
    },
    Settings {
        size: "1920x1080",
        profile: "baseline",
        bframes: 0,
        rate: 48_000,
        channels: 2,
    },
    Settings {
        size: "854x480",
        profile: "high",
        bframes: 3,
        rate: 44_100,
        channels: 1,
    },
];

/// ffmpeg publishing a live test pattern and tone with `s` to the RTMP `url` (killed on drop).
pub fn publish(url: &str, s: &Settings) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc=size={}:rate=25", s.size),
        ])
        .args(["-f", "lavfi", "-i", &format!("sine=sample_rate={}", s.rate)])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args([
            "-profile:v",
            s.profile,
            "-bf",
            &s.bframes.to_string(),
            "-g",
            "50",
        ])
        .args(["-c:a", "aac", "-ar", &s.rate.to_string()])
        .args(["-ac", &s.channels.to_string(), "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg")
}
