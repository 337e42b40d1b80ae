//! A small HLS client for the tests: playlists, segments and parts over HTTP, and ffprobe.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::poll::poll;

/// One HTTP client for every HLS request of a test (keep-alive, short timeouts).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// GET `url`: status and body.
pub async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.bytes().await?.to_vec()))
}

/// The body of `url`, which must answer 200.
pub async fn get_ok(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let (status, body) = get(client, url).await?;
    anyhow::ensure!(
        status == 200,
        "GET {url}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// The media sequence numbers of the complete segments a playlist lists (gaps left out).
pub fn segments(playlist: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut gap = false;
    for line in playlist.lines() {
        if line == "#EXT-X-GAP" {
            gap = true;
        } else if let Some(n) = line
            .strip_prefix("seg-")
            .and_then(|l| l.strip_suffix(".m4s"))
        {
            if !std::mem::take(&mut gap) {
                if let Ok(n) = n.parse() {
                    out.push(n);
                }
            }
        }
    }
    out
}

/// The part URIs of segment `msn` listed in a playlist.
pub fn parts(playlist: &str, msn: u64) -> Vec<String> {
    let prefix = format!("part-{msn}.");
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PART:"))
        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .filter(|u| u.starts_with(&prefix))
        .map(String::from)
        .collect()
}

/// The `(msn, part)` of the playlist's `EXT-X-PRELOAD-HINT`.
pub fn preload_hint(playlist: &str) -> Option<(u64, u32)> {
    let line = playlist
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))?;
    let uri = line.split("URI=\"part-").nth(1)?.split(".m4s").next()?;
    let (msn, part) = uri.split_once('.')?;
    Some((msn.parse().ok()?, part.parse().ok()?))
}

/// Polls the playlist at `url` until it lists at least `n` complete segments; returns it.
pub async fn wait_segments(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<String> {
    let what = format!("{n} segments at {url}");
    wait_playlist(client, url, &what, timeout, |t| segments(t).len() >= n).await
}

/// Polls until the playlist at `url` lists segment `msn` complete; returns it.
pub async fn wait_segment(
    client: &reqwest::Client,
    url: &str,
    msn: u64,
    timeout: Duration,
) -> anyhow::Result<String> {
    let what = format!("segment {msn} at {url}");
    wait_playlist(client, url, &what, timeout, |t| segments(t).contains(&msn)).await
}

/// Polls the playlist at `url` until it answers 200 and `ready` holds for its text.
async fn wait_playlist(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    poll(what, timeout, || async {
        let (status, body) = get(client, url).await.map_err(|e| format!("{e:#}"))?;
        let text = String::from_utf8_lossy(&body).to_string();
        if status == 200 && ready(&text) {
            Ok(text)
        } else {
            Err(format!("{status}: {text}"))
        }
    })
    .await
}

/// `url` with its last path component replaced by `file`.
pub fn sibling(url: &str, file: &str) -> String {
    match url.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{file}"),
        None => file.to_string(),
    }
}

/// The codec names of the streams ffprobe finds at `url`.
pub fn ffprobe_codecs(url: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            // A live playlist that stops moving must not hang the caller (in microseconds).
            "-rw_timeout",
            "10000000",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
            url,
        ])
        .output()
        .context("run ffprobe (apt-get install ffmpeg)")?;
    anyhow::ensure!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Decodes `secs` seconds of the stream at `url` with ffmpeg; returns the video frames decoded.
pub fn ffmpeg_decode_frames(url: &str, secs: u32) -> anyhow::Result<u64> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i", url])
        .args([
            "-t",
            &secs.to_string(),
            "-map",
            "0:v:0",
            "-f",
            "framemd5",
            "-",
        ])
        .output()
        .context("run ffmpeg")?;
    anyhow::ensure!(
        out.status.success(),
        "ffmpeg {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count() as u64)
}

/// ffprobe's view of an HLS URL: decoded video frames, codecs, picture size and duration.
#[derive(Debug)]
pub struct Probe {
    pub video_frames: u64,
    pub codecs: Vec<String>,
    pub width: u64,
    pub height: u64,
    pub duration: f64,
}

/// Reads and decodes the whole (current) HLS playlist at `url` with ffprobe.
pub fn ffprobe_hls(url: &str) -> anyhow::Result<Probe> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-rw_timeout", "10000000"])
        .args(["-count_frames", "-print_format", "json"])
        .args(["-show_streams", "-show_format", url])
        .output()
        .context("run ffprobe (apt-get install ffmpeg)")?;
    anyhow::ensure!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ffprobe json")?;
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video = streams.iter().find(|s| s["codec_type"] == "video");
    let num = |s: Option<&serde_json::Value>, k: &str| {
        s.and_then(|s| s[k].as_str().and_then(|x| x.parse().ok()).or(s[k].as_u64()))
            .unwrap_or(0)
    };
    Ok(Probe {
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
    })
}

/// GET `url` as text: status and body.
pub async fn get_text(url: &str) -> anyhow::Result<(u16, String)> {
    let (status, body) = get(&client(), url).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
