//! Property-based fuzzing of the ingest parsers, seeded from real captures made here with ffmpeg:
//! an MPEG-TS stream (H.264 + AAC, as encoders send over SRT), the FLV tags of the same media
//! (as RTMP carries them), a JPEG (as cameras send over WebSocket), and the SRT datagrams
//! ffmpeg (libsrt) sends a listener while it publishes with a passphrase (handshakes with their
//! extensions, key material, data, ACKs), relayed to a real listener and recorded on the way. Each capture is first
//! parsed whole (so the parsers are known to read it), then mutated (bytes overwritten,
//! truncated, spliced) and fed again: nothing may panic, and every error is an error value.
//!
//! A short run is part of `cargo test`; a long one:
//! `PROPTEST_CASES=100000 cargo test --release -p streamhub-origin --test parsers_fuzz`.
//! Arbitrary (unseeded) input for the same parsers runs too.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

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

/// Every datagram ffmpeg (libsrt) sends while it publishes 2 s of MPEG-TS over SRT with a
/// passphrase: ffmpeg talks to a relay socket that records its datagrams and forwards both ways
/// to a real SRT listener (srt-tokio, as the origin runs it) that accepts and reads the stream.
fn srt_capture() -> &'static [Vec<u8>] {
    static SRT: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SRT.get_or_init(|| {
        require("ffmpeg", has_command("ffmpeg"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(record_srt_publish())
    })
}

async fn record_srt_publish() -> Vec<Vec<u8>> {
    use futures::StreamExt;
    use srt_tokio::options::Passphrase;
    use tokio::net::UdpSocket;
    const PASSPHRASE: &str = "0123456789abcdef0123456789abcdef";
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let listener_at = socket.local_addr().unwrap();
    let (_listener, mut incoming) = srt_tokio::SrtListener::builder()
        .socket(socket)
        .bind(listener_at)
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let request = incoming.incoming().next().await.expect("a caller");
        let keys = srt_protocol::settings::KeySettings {
            key_size: request.key_size(),
            passphrase: Passphrase::try_from(PASSPHRASE.to_string()).unwrap(),
        };
        let mut socket = request.accept(Some(keys)).await.expect("accepted");
        let mut bytes = 0;
        while let Some(Ok((_, data))) = socket.next().await {
            bytes += data.len();
        }
        bytes
    });
    let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let toward_listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    toward_listener.connect(listener_at).await.unwrap();
    let url = format!(
        "srt://{}?streamid=publish:key&passphrase={PASSPHRASE}&pkt_size=1316",
        relay.local_addr().unwrap()
    );
    let mut ffmpeg = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            "2",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-f",
            "mpegts",
        ])
        .arg(&url)
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    let mut recorded = Vec::new();
    let mut caller = None;
    let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
    loop {
        tokio::select! {
            r = relay.recv_from(&mut a) => {
                let (n, from) = r.unwrap();
                caller = Some(from);
                recorded.push(a[..n].to_vec());
                let _ = toward_listener.send(&a[..n]).await;
            }
            r = toward_listener.recv(&mut b) => {
                if let (Ok(n), Some(to)) = (r, caller) {
                    let _ = relay.send_to(&b[..n], to).await;
                }
            }
            status = ffmpeg.wait() => {
                assert!(status.unwrap().success(), "ffmpeg over SRT failed");
                break;
            }
        }
    }
    let bytes = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the listener saw the stream end")
        .unwrap();
    assert!(bytes > 10_000, "{bytes} bytes through the listener");
    recorded
}

/// The datagrams of `srt_capture` that are control packets (handshakes, ACKs, key material):
/// where the parser branches.
fn srt_controls() -> Vec<&'static Vec<u8>> {
    srt_capture().iter().filter(|d| d[0] & 0x80 != 0).collect()
}

/// Parses `data` as the SRT listener does; fails when it panicked the parser (caught, but a
/// shape `srt_tokio::parse_datagram`'s screen should refuse first).
fn srt_parse(data: &[u8]) -> Result<(), TestCaseError> {
    let before = srt_tokio::caught_panics();
    let _ = srt_tokio::parse_datagram(data, false);
    prop_assert_eq!(
        srt_tokio::caught_panics(),
        before,
        "the SRT parser panicked on {:02x?}",
        data
    );
    Ok(())
}

#[test]
fn the_srt_capture_parses() {
    let capture = srt_capture();
    for d in capture {
        srt_tokio::parse_datagram(d, false).unwrap_or_else(|e| panic!("{e:?}: {d:02x?}"));
    }
    // A conclusion handshake with extension blocks (HSREQ, KMREQ, stream id) is among them.
    let conclusion = srt_controls()
        .into_iter()
        .find(|d| d[1] == 0 && d.len() > 64 && d[36..40] == [0xff; 4]);
    assert!(conclusion.is_some(), "no conclusion handshake captured");
    assert!(capture.iter().filter(|d| d[0] & 0x80 == 0).count() > 50);
    // The shapes that panicked srt-protocol 0.4.4 are refused, not parsed.
    let mut hs = conclusion.unwrap()[..64].to_vec();
    hs.extend_from_slice(&[0, 6, 0, 1, b'l', b'i', b'v', b'e']);
    assert!(srt_tokio::parse_datagram(&hs, false).is_err());
    assert_eq!(srt_tokio::caught_panics(), 0);
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
    fn mutated_srt_datagrams(
        which in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
        cut in any::<usize>(),
        tail in proptest::collection::vec(any::<u8>(), 0..24),
    ) {
        let controls = srt_controls();
        let seed = controls[which % controls.len()];
        let mut data = mutate(seed, &edits, seed.len() - cut % seed.len());
        srt_parse(&data)?;
        // Extension blocks of any kind and length after a handshake.
        data.extend_from_slice(&tail);
        srt_parse(&data)?;
    }

    #[test]
    fn arbitrary_srt_control_packets(
        kind in proptest::sample::select(vec![0u16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x7fff]),
        reserved in 0u16..12,
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::collection::vec(any::<u8>(), 0..160),
        ],
    ) {
        let mut data = (kind | 0x8000).to_be_bytes().to_vec();
        data.extend_from_slice(&reserved.to_be_bytes());
        data.extend_from_slice(&[0; 12]);
        data.extend_from_slice(&body);
        srt_parse(&data)?;
    }

    #[test]
    fn srt_handshake_extensions(
        blocks in proptest::collection::vec(
            (0u16..10, 0u16..4, proptest::collection::vec(any::<u8>(), 0..16)),
            1..4,
        ),
    ) {
        // The captured conclusion handshake's fixed part, then extension blocks of any kind
        // and declared length (the content as given, so shorter or longer than declared).
        let conclusion = srt_controls()
            .into_iter()
            .find(|d| d[1] == 0 && d.len() > 64 && d[36..40] == [0xff; 4])
            .unwrap();
        let mut data = conclusion[..64].to_vec();
        for (kind, words, content) in blocks {
            data.extend_from_slice(&kind.to_be_bytes());
            data.extend_from_slice(&words.to_be_bytes());
            data.extend_from_slice(&content);
        }
        srt_parse(&data)?;
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
