//! A WHIP publisher's RTP turned into the media model: H.264 access units (AVCC, the catalog's
//! `avcC` built from the in-band SPS/PPS) and Opus packets, timestamped on one clock.
//!
//! Each track's RTP timestamps are unwrapped and placed on the session clock at the arrival time
//! of its first packet, so audio and video start aligned to within the network jitter (an RTCP
//! sender-report mapping would be tighter; browsers start both tracks together).

use std::time::{Duration, Instant};

use bytes::Bytes;
use streamhub_shared::h264::sps_dimensions;
use streamhub_shared::media::{CodecConfig, Frame, TrackId, TrackInfo};
use streamhub_shared::rtp_h264::{avcc_record, Depacketizer};

/// Track id of the video in a WHIP room.
pub const VIDEO_TRACK: TrackId = 0;
/// Track id of the audio in a WHIP room.
pub const AUDIO_TRACK: TrackId = 1;
/// Largest Opus packet taken (RFC 6716 caps a packet at 1275 bytes per frame, 120 ms).
const MAX_OPUS_PACKET: usize = 6 * 1275;

/// Where a WHIP session's frames go (an origin's room publisher).
pub trait IngestSink: Send + 'static {
    /// The room's tracks changed.
    fn set_tracks(&mut self, tracks: Vec<TrackInfo>);
    /// One frame.
    fn push(&mut self, frame: Frame);
    /// Keyframe requests from the room's viewers (see `RoomMedia::keyframe_requests`); the
    /// session answers each with a PLI to the publisher, rate-limited.
    fn keyframe_requests(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Unwraps 32-bit RTP timestamps into a monotonic 64-bit timeline starting at an offset.
#[derive(Debug, Default)]
struct Timeline {
    first: Option<u32>,
    last: u32,
    ext: i64,
    offset: i64,
}

impl Timeline {
    fn at(&mut self, ts: u32, offset_if_first: impl FnOnce() -> i64) -> i64 {
        if self.first.is_none() {
            self.first = Some(ts);
            self.last = ts;
            self.offset = offset_if_first();
        }
        let delta = ts.wrapping_sub(self.last) as i32;
        self.ext += i64::from(delta);
        self.last = ts;
        self.offset + self.ext
    }
}

/// Why a packet was dropped (counted by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not decodable (malformed, or part of a frame with a lost packet).
    Bad,
    /// Waiting for a keyframe with parameter sets.
    NoConfig,
}

/// The per-session conversion state.
pub struct Ingest {
    sink: Box<dyn IngestSink>,
    start: Instant,
    video: Depacketizer,
    video_time: Timeline,
    audio_time: Timeline,
    avcc: Option<Bytes>,
    tracks: Vec<TrackInfo>,
    /// How long audio waits for the video's parameter sets (see [`Ingest::new`]).
    video_grace: Duration,
    /// The audio track offered or seen while it waited: announced with the video, in one
    /// catalog.
    waiting_audio: Option<TrackInfo>,
    /// When the first media packet arrived (the grace counts from there, not from the offer).
    first_media: Option<Instant>,
    /// The publisher needs to be asked for a keyframe.
    pub want_keyframe: bool,
}

/// How long a WHIP publisher that offers video has to send a decodable keyframe before its
/// audio goes on alone.
pub const AUDIO_WAITS_FOR_VIDEO: Duration = Duration::from_secs(3);

impl Ingest {
    /// An ingest into `sink`. With a nonzero `video_grace` (the publisher offered video), audio
    /// is dropped until the video's parameter sets are known or the grace (from the first media
    /// packet) is over: a room that announced itself audio-only for its first second would start
    /// HLS players on an audio-only init segment and switch catalogs under them. With
    /// `audio_offered` (the offer sends Opus, always `opus/48000/2` in SDP), the audio track is
    /// announced with the video even if no audio packet came first.
    pub fn new(sink: Box<dyn IngestSink>, video_grace: Duration, audio_offered: bool) -> Self {
        Self {
            sink,
            start: Instant::now(),
            video: Depacketizer::default(),
            video_time: Timeline::default(),
            audio_time: Timeline::default(),
            avcc: None,
            tracks: Vec::new(),
            video_grace,
            waiting_audio: (audio_offered && !video_grace.is_zero()).then(|| TrackInfo {
                id: AUDIO_TRACK,
                timescale: 48_000,
                codec: CodecConfig::Opus { channels: 2 },
            }),
            first_media: None,
            want_keyframe: true,
        }
    }

    fn since_start(&self, timescale: i64) -> i64 {
        let us = self.start.elapsed().as_micros() as i64;
        us * timescale / 1_000_000
    }

    fn set_track(&mut self, info: TrackInfo) {
        if self.tracks.contains(&info) {
            return;
        }
        self.tracks.retain(|t| t.id != info.id);
        self.tracks.push(info);
        if let Some(audio) = self.waiting_audio.take() {
            self.tracks.retain(|t| t.id != audio.id);
            self.tracks.push(audio);
        }
        self.tracks.sort_by_key(|t| t.id);
        self.sink.set_tracks(self.tracks.clone());
    }

    /// One RTP packet of the H.264 track.
    pub fn video(
        &mut self,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), Dropped> {
        self.first_media.get_or_insert_with(Instant::now);
        let units = self
            .video
            .push(seq, ts, marker, payload)
            .map_err(|_| Dropped::Bad);
        if self.video.needs_keyframe() {
            self.want_keyframe = true;
        }
        for au in units? {
            if let Some((sps, pps)) = au.parameter_sets() {
                if let Some(rec) = avcc_record(&sps, &pps) {
                    if self.avcc.as_ref() != Some(&rec) {
                        let (width, height) = sps_dimensions(&sps).unwrap_or((0, 0));
                        self.avcc = Some(rec.clone());
                        self.set_track(TrackInfo {
                            id: VIDEO_TRACK,
                            timescale: 90_000,
                            codec: CodecConfig::H264 {
                                avcc: rec,
                                width,
                                height,
                            },
                        });
                    }
                }
            }
            if self.avcc.is_none() {
                self.want_keyframe = true;
                return Err(Dropped::NoConfig);
            }
            let first = self.since_start(90_000);
            let t = self.video_time.at(au.timestamp, || first);
            if au.keyframe {
                self.want_keyframe = false;
            }
            self.sink.push(Frame {
                track: VIDEO_TRACK,
                group: 0,
                dts: t,
                pts: t,
                keyframe: au.keyframe,
                data: au.to_avcc(),
            });
        }
        Ok(())
    }

    /// One RTP packet of the Opus track (one Opus packet each).
    pub fn audio(&mut self, ts: u32, payload: &[u8], channels: u8) -> Result<(), Dropped> {
        if payload.is_empty() || payload.len() > MAX_OPUS_PACKET {
            return Err(Dropped::Bad);
        }
        let info = TrackInfo {
            id: AUDIO_TRACK,
            timescale: 48_000,
            codec: CodecConfig::Opus { channels },
        };
        let waited = self.first_media.get_or_insert_with(Instant::now).elapsed();
        if self.avcc.is_none() && waited < self.video_grace {
            self.waiting_audio = Some(info);
            return Err(Dropped::NoConfig);
        }
        self.waiting_audio = None;
        self.set_track(info);
        let first = self.since_start(48_000);
        let t = self.audio_time.at(ts, || first);
        self.sink.push(Frame {
            track: AUDIO_TRACK,
            group: 0,
            dts: t,
            pts: t,
            keyframe: true,
            data: Bytes::copy_from_slice(payload),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = (Vec<Vec<TrackInfo>>, Vec<Frame>);

    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Log>>);

    impl IngestSink for Seen {
        fn set_tracks(&mut self, tracks: Vec<TrackInfo>) {
            self.0.lock().unwrap().0.push(tracks);
        }
        fn push(&mut self, frame: Frame) {
            self.0.lock().unwrap().1.push(frame);
        }
    }

    // SPS and PPS of a 640x360 High profile stream (x264; the record in shared's h264 tests).
    const SPS: &[u8] = &[
        0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03,
        0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16, 0x2d, 0x96,
    ];
    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];

    fn stap(units: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![0x78];
        for u in units {
            v.extend_from_slice(&(u.len() as u16).to_be_bytes());
            v.extend_from_slice(u);
        }
        v
    }

    #[test]
    fn frames_wait_for_parameter_sets_then_build_the_catalog() {
        let seen = Seen::default();
        let mut ing = Ingest::new(Box::new(seen.clone()), Duration::ZERO, false);
        // A delta frame before any keyframe: nothing to decode it with.
        assert!(ing.video(1, 0, true, &[0x41, 1]).is_err());
        assert!(ing.want_keyframe);
        // Keyframe with SPS/PPS in a STAP-A, then the IDR slice.
        ing.video(2, 3000, false, &stap(&[SPS, PPS])).unwrap();
        ing.video(3, 3000, true, &[0x65, 9, 9]).unwrap();
        assert!(!ing.want_keyframe);
        ing.video(4, 6000, true, &[0x41, 2]).unwrap();
        ing.video(5, 6000u32.wrapping_add(u32::MAX - 10), true, &[0x41, 3])
            .unwrap();
        let (tracks, frames) = seen.0.lock().unwrap().clone();
        assert_eq!(tracks.len(), 1);
        match &tracks[0][0].codec {
            CodecConfig::H264 { width, height, .. } => assert_eq!((*width, *height), (640, 360)),
            c => panic!("{c:?}"),
        }
        assert_eq!(frames.len(), 3);
        assert!(frames[0].keyframe);
        assert_eq!(&frames[0].data[..], &[0, 0, 0, 3, 0x65, 9, 9]);
        assert_eq!(frames[1].dts - frames[0].dts, 3000);
        // A timestamp that went back by 11 ticks (wrapping) unwraps to a small step back.
        assert_eq!(frames[2].dts - frames[1].dts, -11);
    }

    #[test]
    fn opus_packets_become_audio_frames() {
        let seen = Seen::default();
        let mut ing = Ingest::new(Box::new(seen.clone()), Duration::ZERO, true);
        ing.audio(1000, &[0xfc, 1, 2], 2).unwrap();
        ing.audio(1960, &[0xfc, 3], 2).unwrap();
        assert_eq!(ing.audio(2920, &[], 2), Err(Dropped::Bad));
        let (tracks, frames) = seen.0.lock().unwrap().clone();
        assert_eq!(tracks.len(), 1, "catalog set once");
        assert_eq!(tracks[0][0].codec, CodecConfig::Opus { channels: 2 });
        assert_eq!(frames[1].dts - frames[0].dts, 960);
    }

    #[test]
    fn audio_waits_for_the_video_config_of_a_publisher_that_offered_video() {
        let seen = Seen::default();
        let mut ing = Ingest::new(Box::new(seen.clone()), Duration::from_secs(3600), false);
        assert_eq!(ing.audio(1000, &[0xfc, 1], 2), Err(Dropped::NoConfig));
        assert!(seen.0.lock().unwrap().0.is_empty(), "no audio-only catalog");
        ing.video(2, 3000, false, &stap(&[SPS, PPS])).unwrap();
        ing.video(3, 3000, true, &[0x65, 9, 9]).unwrap();
        ing.audio(1960, &[0xfc, 2], 2).unwrap();
        let (tracks, frames) = seen.0.lock().unwrap().clone();
        assert_eq!(tracks.len(), 1, "one catalog: {tracks:?}");
        let ids: Vec<u32> = tracks[0].iter().map(|t| t.id).collect();
        assert_eq!(
            ids,
            vec![VIDEO_TRACK, AUDIO_TRACK],
            "video and audio together"
        );
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn an_offered_audio_track_is_announced_with_the_video_even_before_its_first_packet() {
        let seen = Seen::default();
        let mut ing = Ingest::new(Box::new(seen.clone()), Duration::from_secs(3600), true);
        ing.video(2, 3000, false, &stap(&[SPS, PPS])).unwrap();
        ing.video(3, 3000, true, &[0x65, 9, 9]).unwrap();
        ing.audio(1000, &[0xfc, 1], 2).unwrap();
        let (tracks, _) = seen.0.lock().unwrap().clone();
        assert_eq!(tracks.len(), 1, "one catalog: {tracks:?}");
        assert_eq!(tracks[0].len(), 2, "video and the offered audio");
        assert_eq!(tracks[0][1].codec, CodecConfig::Opus { channels: 2 });
    }
}
