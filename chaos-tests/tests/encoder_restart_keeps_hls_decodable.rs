//! An encoder restarted with other settings and the same key, as OBS users do: ffmpeg publishes
//! 1280x720 H.264 Main with B-frames and 44.1 kHz mono AAC; it is killed and, half a second
//! later, ffmpeg publishes 1920x1080 Baseline without B-frames and 48 kHz stereo; then again
//! 854x480 High with B-frames and 44.1 kHz mono, on the second origin this time (the encoder's
//! backup URL). ffmpeg reads the live playlist on the first origin (through the first change) and
//! on an edge (through both, following the room to the other origin): it must decode each
//! encoder's pictures at their own size, without a decoder error, at the full frame rate outside
//! the restart gaps.
//!
//! Two things make this work: the playlist stays open for a few seconds after the publisher
//! leaves (an `#EXT-X-ENDLIST` at once made the reader stop before the encoder was back), and
//! each keyframe carries its SPS and PPS in band (ffmpeg-based players keep the first init
//! segment's decoder configuration across `EXT-X-MAP` changes and decoded the new encoder's
//! slices with the old parameter sets: `decode_slice_header error`, checked without them).

use std::process::Stdio;
use std::time::{Duration, Instant};

use streamhub_chaos_tests::encoder::{publish, RESTARTS as RUNS};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, Cluster};
use tokio::process::{Child, Command};

/// ffmpeg reading `playlist` live, writing one line per decoded video frame (`framecrc`, at the
/// decoded size: no scaling to the first picture's size). Video only: ffmpeg skips every init
/// segment after the first ("duplicated MOOV"), so its AAC decoder keeps the first audio
/// configuration, and reading both tracks it stalls at an audio change (a limitation of its
/// fMP4 HLS reading that no packaging of AAC in fMP4 avoids; browsers follow the new init).
fn reader(playlist: &str) -> Child {
    Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            playlist,
        ])
        .args(["-map", "0:v:0", "-fps_mode", "passthrough"])
        .args(["-autoscale", "0", "-f", "framecrc", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg")
}

/// What a reader decoded.
struct Decoded {
    video_frames: usize,
    /// The decoded picture sizes in bytes, in order, each once per run of equal sizes.
    sizes: Vec<usize>,
    errors: String,
}

/// Stops a reader (SIGINT: ffmpeg flushes) and returns what it decoded.
async fn finish(mut r: Child) -> Decoded {
    if let Some(pid) = r.id() {
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await;
    }
    let out = tokio::time::timeout(Duration::from_secs(20), async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        use tokio::io::AsyncReadExt;
        let (mut so, mut se) = (r.stdout.take().unwrap(), r.stderr.take().unwrap());
        let _ = tokio::join!(so.read_to_end(&mut out), se.read_to_end(&mut err));
        let _ = r.wait().await;
        (out, err)
    })
    .await
    .expect("the reader stops");
    let text = String::from_utf8_lossy(&out.0);
    // `stream, dts, pts, duration, size, crc`
    let fields = |l: &str| -> Vec<String> { l.split(',').map(|f| f.trim().to_string()).collect() };
    let frames: Vec<Vec<String>> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(fields)
        .collect();
    let video: Vec<&Vec<String>> = frames.iter().filter(|f| f[0] == "0").collect();
    let mut sizes: Vec<usize> = Vec::new();
    for f in &video {
        let size = f[4].parse().unwrap_or(0);
        if sizes.last() != Some(&size) {
            sizes.push(size);
        }
    }
    Decoded {
        video_frames: video.len(),
        sizes,
        errors: String::from_utf8_lossy(&out.1).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoder_restart_keeps_hls_decodable() {
    if !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let mut c = Cluster::start(2, chaos_seed()).await;
    let admin = c.admin(0).await;
    let key = admin.rtmp_ingress("live", "obs").await.unwrap();
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    // The third run goes to the second origin, as an encoder's backup URL would.
    let urls = [
        c.nodes[0].rtmp_url(&key),
        c.nodes[0].rtmp_url(&key),
        c.nodes[1].rtmp_url(&key),
    ];
    let origin_playlist = c.nodes[0].url("/hls/live/obs/index.m3u8");
    let edge_playlist = edge.url("/hls/live/obs/index.m3u8");

    let mut encoder = publish(&urls[0], &RUNS[0]);
    let http = reqwest::Client::new();
    for p in [&origin_playlist, &edge_playlist] {
        hls::wait_segments(&http, p, 3, Duration::from_secs(45))
            .await
            .unwrap();
    }
    let origin_reader = reader(&origin_playlist);
    let edge_reader = reader(&edge_playlist);
    let started = Instant::now();
    let mut gaps = Duration::ZERO;
    let (mut moved, mut gaps_before_move) = (Duration::ZERO, Duration::ZERO);
    for (i, next) in RUNS.iter().enumerate().skip(1) {
        tokio::time::sleep(Duration::from_secs(8)).await;
        let cut = Instant::now();
        if i == 2 {
            (moved, gaps_before_move) = (cut - started, gaps);
        }
        c.note(format!(
            "encoder restarts as {} {} on {}",
            next.size, next.profile, urls[i]
        ));
        encoder.kill().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        encoder = publish(&urls[i], next);
        // The new encoder's first frames: ffmpeg starts, connects, sends its first GOP.
        gaps += cut.elapsed() + Duration::from_secs(2);
    }
    // The readers play ~3 segments behind live: give them the last encoder's first segments.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let window = started.elapsed();
    let sizes: Vec<usize> = RUNS.iter().map(|r| r.picture_bytes()).collect();
    // The first origin's playlist ends once the encoder has moved away; the edge follows the
    // room to the second origin and plays on.
    for (p, r, want_sizes, window, gaps) in [
        (
            &origin_playlist,
            origin_reader,
            &sizes[..2],
            moved,
            gaps_before_move,
        ),
        (&edge_playlist, edge_reader, &sizes[..], window, gaps),
    ] {
        let d = finish(r).await;
        println!(
            "{p}: {} frames in {window:?} (gaps ~{gaps:?}), picture sizes {:?}; errors: {}",
            d.video_frames, d.sizes, d.errors
        );
        for bad in [
            "decode_slice_header",
            "illegal",
            "non-existing PPS",
            "no frame",
            "Error while decoding",
            "error while decoding",
            "Error submitting",
        ] {
            assert!(
                !d.errors.contains(bad),
                "{p}: decoder error `{bad}`:\n{}",
                d.errors
            );
        }
        assert_eq!(
            d.sizes, want_sizes,
            "{p}: each encoder's pictures decoded at its own size, in order"
        );
        // The reader starts ~3 segments behind live, so its window is the wall window; at
        // 25 fps outside the gaps, with room for a slow start.
        let want = (window.saturating_sub(gaps).as_secs_f64() * 25.0 * 0.75) as usize;
        assert!(
            d.video_frames >= want,
            "{p}: {} frames decoded, want >= {want} ({window:?}, gaps ~{gaps:?}):\n{}",
            d.video_frames,
            d.errors
        );
    }
    drop(encoder);
}
