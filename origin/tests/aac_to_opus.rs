//! The AAC -> Opus path of AAC rooms, on real encoder output: ffmpeg encodes a known tone to AAC,
//! the origin's transcoder turns it into Opus packets, libopus decodes them, and the tone's
//! frequency and level must come back.

use bytes::Bytes;
use streamhub_origin::transcode::{AudioTranscode, OPUS_TRACK};
use streamhub_shared::media::{CodecConfig, Frame, TrackInfo};
use streamhub_testkit::audio::{aac_tone, Aac};

/// Runs the frames through the transcoder (AAC as track 1, `dts` from `start`), returns the
/// catalog it published and the Opus frames.
fn transcode(aac: &Aac, starts: &[(usize, i64)]) -> (Vec<TrackInfo>, Vec<Frame>) {
    let (catalog, out, _) = transcode_counting(aac, starts);
    (catalog, out)
}

/// As [`transcode`], with the number of AAC frames that did not decode.
fn transcode_counting(aac: &Aac, starts: &[(usize, i64)]) -> (Vec<TrackInfo>, Vec<Frame>, u64) {
    let mut t = AudioTranscode::default();
    let catalog = t.catalog(vec![TrackInfo {
        id: 1,
        timescale: aac.rate,
        codec: CodecConfig::Aac {
            asc: Bytes::from(aac.asc.clone()),
            sample_rate: aac.rate,
            channels: aac.channels,
        },
    }]);
    let mut out = Vec::new();
    for (i, data) in aac.frames.iter().enumerate() {
        // `starts`: from frame index k on, timestamps continue from this base.
        let (k, base) = starts.iter().rev().find(|(k, _)| *k <= i).copied().unwrap();
        let dts = base + (i - k) as i64 * 1024;
        let frame = Frame {
            track: 1,
            group: 0,
            dts,
            pts: dts,
            keyframe: true,
            data: data.clone(),
        };
        t.frame(&frame, &mut out);
    }
    (catalog, out, t.decode_errors())
}

/// Decodes Opus packets to the first channel's 48 kHz samples.
fn decode(frames: &[Frame], channels: u8) -> Vec<f32> {
    let layout = if channels == 1 {
        streamhub_opus::Channels::Mono
    } else {
        streamhub_opus::Channels::Stereo
    };
    let mut d = streamhub_opus::Decoder::new(48_000, layout).unwrap();
    let ch = usize::from(channels);
    let mut pcm = vec![0f32; 5760 * ch];
    let mut left = Vec::new();
    for f in frames {
        let n = d.decode_float(&f.data, &mut pcm, false).unwrap();
        assert_eq!(n, 960, "20 ms packets");
        left.extend(pcm[..n * ch].iter().step_by(ch));
    }
    left
}

/// (frequency from rising zero crossings, RMS) of one second of 48 kHz audio from `from`.
fn tone(samples: &[f32], from: usize) -> (f64, f64) {
    let s = &samples[from..from + 48_000];
    let rising = s.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
    let rms = (s.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / s.len() as f64).sqrt();
    (rising as f64, rms)
}

#[test]
fn a_44k1_stereo_aac_tone_comes_back_as_opus_at_its_frequency() {
    let aac = aac_tone(1000, 44_100, 2, 3);
    assert!(aac.frames.len() > 120, "{} AAC frames", aac.frames.len());
    let (catalog, opus) = transcode(&aac, &[(0, 0)]);
    assert_eq!(catalog.len(), 2, "AAC kept, Opus added: {catalog:?}");
    assert_eq!(
        catalog[1],
        TrackInfo {
            id: OPUS_TRACK,
            timescale: 48_000,
            codec: CodecConfig::Opus { channels: 2 },
        }
    );
    // 3 s of input (plus the AAC encoder's priming and padding) is ~150 packets of 20 ms,
    // on one continuous 48 kHz timeline.
    assert!((145..=156).contains(&opus.len()), "{}", opus.len());
    for (i, f) in opus.iter().enumerate() {
        assert_eq!(
            (f.track, f.dts, f.pts),
            (OPUS_TRACK, i as i64 * 960, i as i64 * 960)
        );
    }
    let pcm = decode(&opus, 2);
    let (freq, rms) = tone(&pcm, 24_000);
    assert!((freq - 1000.0).abs() <= 5.0, "{freq} Hz");
    // ffmpeg's sine source has amplitude 1/8: RMS 0.088.
    assert!((0.06..0.12).contains(&rms), "rms {rms}");
}

#[test]
fn a_48k_mono_tone_keeps_its_frequency_and_a_jump_restarts_the_timeline() {
    let aac = aac_tone(440, 48_000, 1, 3);
    let jump_at = aac.frames.len() / 2;
    // Half-way the publisher's clock jumps 10 s ahead (a reconnect, a camera clock reset).
    let (catalog, opus) = transcode(
        &aac,
        &[(0, 0), (jump_at, 10 * 48_000 + jump_at as i64 * 1024)],
    );
    assert_eq!(catalog[1].codec, CodecConfig::Opus { channels: 1 });
    let pcm = decode(&opus, 1);
    let (freq, _) = tone(&pcm, 12_000);
    assert!((freq - 440.0).abs() <= 3.0, "{freq} Hz");
    let jump = opus
        .windows(2)
        .position(|w| w[1].dts - w[0].dts != 960)
        .unwrap();
    let after = opus[jump + 1].dts;
    let expected = 10 * 48_000 + jump_at as i64 * 1024;
    assert!((after - expected).abs() < 960, "{after} vs {expected}");
    assert!(opus[jump + 1..]
        .windows(2)
        .all(|w| w[1].dts - w[0].dts == 960));
}

#[test]
fn a_lost_aac_frame_becomes_silence_and_the_opus_timeline_goes_on() {
    let aac = aac_tone(440, 48_000, 1, 2);
    let (_, whole) = transcode(&aac, &[(0, 0)]);
    // Frame 40 lost on the way (an RTSP packet): the next one comes 2048 samples later.
    let mut lossy = Aac {
        asc: aac.asc.clone(),
        rate: aac.rate,
        channels: aac.channels,
        frames: aac.frames.clone(),
    };
    lossy.frames.remove(40);
    let (_, opus) = transcode(&lossy, &[(0, 0), (40, 41 * 1024)]);
    assert!(
        opus.windows(2).all(|w| w[1].dts - w[0].dts == 960),
        "one continuous timeline"
    );
    assert_eq!(opus.len(), whole.len(), "the gap is filled, not skipped");
}

#[test]
fn garbage_aac_frames_become_counted_silence_and_the_tone_goes_on() {
    let mut aac = aac_tone(1000, 48_000, 1, 3);
    // Frames overwritten with noise (a corrupting relay, a buggy encoder).
    let mut x = 0x2545_f491u32;
    for i in [30, 31, 60] {
        let noise: Vec<u8> = (0..aac.frames[i].len())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        aac.frames[i] = Bytes::from(noise);
    }
    let (_, whole) = transcode(&aac_tone(1000, 48_000, 1, 3), &[(0, 0)]);
    let (_, opus, errors) = transcode_counting(&aac, &[(0, 0)]);
    assert!((1..=3).contains(&errors), "{errors} frames refused");
    assert_eq!(opus.len(), whole.len(), "no frame of the timeline lost");
    assert!(opus.windows(2).all(|w| w[1].dts - w[0].dts == 960));
    // The tone is still there after the garbage.
    let pcm = decode(&opus, 1);
    let (freq, _) = tone(&pcm, 66 * 1024 + 4800);
    assert!((freq - 1000.0).abs() <= 5.0, "{freq} Hz");
}

#[test]
fn rooms_without_aac_or_with_opus_already_get_no_transcoded_track() {
    let mut t = AudioTranscode::default();
    let opus = TrackInfo {
        id: 1,
        timescale: 48_000,
        codec: CodecConfig::Opus { channels: 2 },
    };
    assert_eq!(t.catalog(vec![opus.clone()]), vec![opus]);
    // HE-AAC (SBR) is beyond the AAC-LC decoder: published as is.
    let he_aac = TrackInfo {
        id: 1,
        timescale: 24_000,
        codec: CodecConfig::Aac {
            asc: Bytes::from_static(&[0x2b, 0x92, 0x08, 0x00]),
            sample_rate: 24_000,
            channels: 2,
        },
    };
    assert_eq!(t.catalog(vec![he_aac.clone()]), vec![he_aac]);
}
