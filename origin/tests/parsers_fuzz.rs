//! Property-based fuzzing of the ingest parsers, seeded from real captures made here with ffmpeg:
//! an MPEG-TS stream (H.264 + AAC, as encoders send over SRT), the FLV tags of the same media
//! (as RTMP carries them), and a JPEG (as cameras send over WebSocket). Each capture is first
//! parsed whole (so the parsers are known to read it), then mutated (bytes overwritten,
//! truncated, spliced) and fed again: nothing may panic, and every error is an error value.
//!
//! A short run is part of `cargo test`; a long one:
//! `PROPTEST_CASES=100000 cargo test --release -p streamhub-origin --test parsers_fuzz`.
//! Arbitrary (unseeded) input for the same parsers runs too.

use std::process::Command;
use std::sync::OnceLock;

use bytes::Bytes;
use proptest::prelude::*;
use streamhub_origin::rtmp::flv;
use streamhub_origin::rtmp::tracks::{TrackAssembler, TrackEvent};
use streamhub_origin::srt::tags::{Tag, TsToTags};
use streamhub_testkit::require::{has_command, require};

/// ffmpeg's output for `args` (2 s of 320x240 testsrc and a sine tone).
fn capture(format_args: &[&str]) -> Vec<u8> {
    require("ffmpeg", has_command("ffmpeg"));
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", "2"])
        .args(format_args)
        .arg("pipe:1")
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn ts_capture() -> &'static [u8] {
    static TS: OnceLock<Vec<u8>> = OnceLock::new();
    TS.get_or_init(|| {
        capture(&[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
        ])
    })
}

fn flv_capture() -> &'static [u8] {
    static FLV: OnceLock<Vec<u8>> = OnceLock::new();
    FLV.get_or_init(|| {
        capture(&[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "flv",
        ])
    })
}

fn jpeg_capture() -> &'static [u8] {
    static JPEG: OnceLock<Vec<u8>> = OnceLock::new();
    JPEG.get_or_init(|| capture(&["-frames:v", "1", "-f", "mjpeg"]))
}

/// Counts of what the SRT path made of `ts`: (video frames, audio frames, catalogs).
fn through_srt_path(ts: &[u8], split: usize) -> (usize, usize, usize) {
    let mut media = TsToTags::new(1 << 20);
    let mut assembler = TrackAssembler::new();
    let mut events = Vec::new();
    let mut counts = (0, 0, 0);
    let mut run = |media: &mut TsToTags| {
        for tag in media.drain() {
            let _ = match tag {
                Tag::Video { ms, body } => assembler.video(ms, &body, &mut events),
                Tag::Audio { ms, body } => assembler.audio(ms, &body, &mut events),
            };
            for e in events.drain(..) {
                match e {
                    TrackEvent::Tracks(_) => counts.2 += 1,
                    TrackEvent::Frame(f) if f.track == 0 => counts.0 += 1,
                    TrackEvent::Frame(_) => counts.1 += 1,
                }
            }
        }
    };
    for chunk in ts.chunks(split.max(1)) {
        if media.feed(chunk).is_err() {
            return counts;
        }
        run(&mut media);
    }
    media.finish();
    run(&mut media);
    counts
}

/// The FLV tags of an FLV file: (type, timestamp ms, body).
fn flv_tags(flv: &[u8]) -> Vec<(u8, u32, Bytes)> {
    let mut out = Vec::new();
    let Some(mut i) = flv
        .get(5..9)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize + 4)
    else {
        return out;
    };
    while i + 11 <= flv.len() {
        let kind = flv[i] & 0x1f;
        let size = u32::from_be_bytes([0, flv[i + 1], flv[i + 2], flv[i + 3]]) as usize;
        let ts = u32::from_be_bytes([flv[i + 7], flv[i + 4], flv[i + 5], flv[i + 6]]);
        let Some(body) = flv.get(i + 11..i + 11 + size) else {
            break;
        };
        out.push((kind, ts, Bytes::copy_from_slice(body)));
        i += 11 + size + 4;
    }
    out
}

/// What the RTMP path made of `tags`: (video frames, audio frames).
fn through_rtmp_path(tags: &[(u8, u32, Bytes)]) -> (usize, usize) {
    let mut assembler = TrackAssembler::new();
    let mut events = Vec::new();
    let mut counts = (0, 0);
    for (kind, ts, body) in tags {
        let _ = match kind {
            9 => assembler.video(*ts, body, &mut events),
            8 => assembler.audio(*ts, body, &mut events),
            _ => Ok(()),
        };
        for e in events.drain(..) {
            match e {
                TrackEvent::Frame(f) if f.track == 0 => counts.0 += 1,
                TrackEvent::Frame(_) => counts.1 += 1,
                TrackEvent::Tracks(_) => {}
            }
        }
    }
    counts
}

#[test]
fn the_captures_parse_whole() {
    // 2 s at 25 fps and 48 kHz AAC (~47 frames a second); the last video frame may stay in
    // the demuxer's PES until the stream ends, hence `finish`.
    let (video, audio, catalogs) = through_srt_path(ts_capture(), 1316);
    assert!((48..=50).contains(&video), "{video} video frames from TS");
    assert!((90..=96).contains(&audio), "{audio} audio frames from TS");
    assert_eq!(catalogs, 1, "one catalog, both tracks, from the start");
    let (video, audio) = through_rtmp_path(&flv_tags(flv_capture()));
    assert!((48..=50).contains(&video), "{video} video frames from FLV");
    assert!((90..=96).contains(&audio), "{audio} audio frames from FLV");
    let info = streamhub_shared::jpeg::parse(jpeg_capture(), 1 << 20).unwrap();
    assert_eq!((info.width, info.height), (320, 240));
}

/// A capture with `edits` applied: (position, byte) overwrites, then a cut at `cut`.
fn mutate(seed: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut data = seed.to_vec();
    for &(at, byte) in edits {
        if !data.is_empty() {
            let n = data.len();
            data[at % n] = byte;
        }
    }
    data.truncate(cut.max(1).min(data.len()));
    data
}

proptest! {
    #[test]
    fn mutated_transport_streams(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..64),
        cut in any::<usize>(),
        split in 1usize..4000,
    ) {
        let ts = ts_capture();
        let data = mutate(ts, &edits, ts.len() - cut % (ts.len() / 2));
        through_srt_path(&data, split);
    }

    #[test]
    fn arbitrary_transport_streams(data in proptest::collection::vec(any::<u8>(), 0..8192)) {
        // Sync bytes in the right places, the rest arbitrary: past the sync check.
        let mut data = data;
        for i in (0..data.len()).step_by(188) {
            data[i] = 0x47;
        }
        through_srt_path(&data, 188);
    }

    #[test]
    fn mutated_flv_tags(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..32),
        which in proptest::collection::vec(any::<usize>(), 1..8),
    ) {
        let mut tags = flv_tags(flv_capture());
        for w in which {
            let n = tags.len();
            let (_, _, body) = &mut tags[w % n];
            let mutated = mutate(body, &edits, body.len() - w % body.len().max(1));
            *body = Bytes::from(mutated);
        }
        through_rtmp_path(&tags);
    }

    #[test]
    fn arbitrary_codec_configs(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = streamhub_shared::h264::AvcConfig::parse(&data);
        let _ = streamhub_shared::aac::AudioSpecificConfig::parse(&data);
        let _ = flv::parse_video(&Bytes::from(data.clone()));
        let _ = flv::parse_audio(&Bytes::from(data));
    }

    #[test]
    fn mutated_jpegs(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..32),
        cut in any::<usize>(),
    ) {
        let jpeg = jpeg_capture();
        let data = mutate(jpeg, &edits, jpeg.len() - cut % jpeg.len());
        let _ = streamhub_shared::jpeg::parse(&data, 1 << 20);
    }
}
