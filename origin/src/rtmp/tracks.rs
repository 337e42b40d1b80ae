//! From FLV tags to the media model: the track catalog and frames in track timescales.
//!
//! Sans-IO. Video runs on a 90 kHz clock (RTMP milliseconds * 90, pts = dts + composition time).
//! Audio runs on the AAC sample rate and advances exactly 1024 samples per access unit, so the
//! millisecond rounding of RTMP timestamps does not make it jitter; it resyncs to the RTMP clock
//! when the two drift apart by more than [`AUDIO_RESYNC_MS`].

use bytes::Bytes;
use streamhub_shared::aac::{AacError, AudioSpecificConfig};
use streamhub_shared::h264::{AvcConfig, H264Error};
use streamhub_shared::media::{CodecConfig, Frame, TrackId, TrackInfo};

use super::flv::{self, AudioTag, FlvError, VideoTag};

/// Track id of the H.264 video track.
pub const VIDEO_TRACK: TrackId = 0;
/// Track id of the AAC audio track.
pub const AUDIO_TRACK: TrackId = 1;
/// Timescale of the video track.
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// Audio drift from the RTMP clock beyond which audio timestamps jump back onto it.
pub const AUDIO_RESYNC_MS: i64 = 100;
const AAC_SAMPLES_PER_FRAME: i64 = 1024;

/// Why a tag could not be turned into media.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error(transparent)]
    Flv(#[from] FlvError),
    #[error("invalid H.264 decoder configuration: {0}")]
    Avc(#[from] H264Error),
    #[error("invalid AAC AudioSpecificConfig: {0}")]
    Aac(#[from] AacError),
    #[error("{kind} frame before its sequence header")]
    MissingConfig { kind: &'static str },
}

impl TrackError {
    /// True when ingest cannot go on (unsupported codec, undecodable configuration); otherwise
    /// only the one tag is lost.
    pub fn is_fatal(&self) -> bool {
        match self {
            TrackError::Flv(e) => e.is_unsupported(),
            TrackError::Avc(_) | TrackError::Aac(_) => true,
            TrackError::MissingConfig { .. } => false,
        }
    }
}

/// What the assembler produces for the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackEvent {
    /// The (new) track catalog; publish it before the frames that follow.
    Tracks(Vec<TrackInfo>),
    /// One access unit.
    Frame(Frame),
}

#[derive(Debug)]
struct VideoTrack {
    info: TrackInfo,
    nal_length_size: u8,
}

/// Extends 32-bit RTMP millisecond timestamps (which wrap after ~49 days) onto an i64 timeline
/// that starts at 0 with the first media tag of either track, so A/V alignment is kept.
#[derive(Debug, Default)]
struct RtmpClock {
    last: Option<u32>,
    now_ms: i64,
}

impl RtmpClock {
    fn extend(&mut self, raw: u32) -> i64 {
        if let Some(last) = self.last {
            // Signed delta: interleaved tracks may step slightly backwards.
            self.now_ms += i64::from(raw.wrapping_sub(last) as i32);
        }
        self.last = Some(raw);
        self.now_ms
    }
}

/// Turns the FLV tags of one publish into track catalogs and frames.
#[derive(Debug, Default)]
pub struct TrackAssembler {
    video: Option<VideoTrack>,
    audio: Option<TrackInfo>,
    announced: bool,
    clock: RtmpClock,
    /// Next audio timestamp in samples, once audio has started.
    audio_next: Option<i64>,
}

impl TrackAssembler {
    /// An assembler that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current catalog: video first, then audio.
    pub fn tracks(&self) -> Vec<TrackInfo> {
        let video = self.video.as_ref().map(|v| v.info.clone());
        video.into_iter().chain(self.audio.clone()).collect()
    }

    /// Handles one video message body with its RTMP timestamp (ms).
    pub fn video(
        &mut self,
        timestamp_ms: u32,
        body: &Bytes,
        out: &mut Vec<TrackEvent>,
    ) -> Result<(), TrackError> {
        match flv::parse_video(body)? {
            VideoTag::SequenceHeader { avcc } => {
                let config = AvcConfig::parse(&avcc)?;
                let (width, height) = config.dimensions()?;
                let info = TrackInfo {
                    id: VIDEO_TRACK,
                    timescale: VIDEO_TIMESCALE,
                    codec: CodecConfig::H264 {
                        avcc,
                        width,
                        height,
                    },
                };
                let changed = self.video.as_ref().is_none_or(|v| v.info != info);
                self.video = Some(VideoTrack {
                    info,
                    nal_length_size: config.nal_length_size,
                });
                self.config_updated(changed, out);
                Ok(())
            }
            VideoTag::Nalus {
                keyframe,
                composition_ms,
                data,
            } => self.video_frame(timestamp_ms, keyframe, composition_ms, data, out),
            VideoTag::Ignored => Ok(()),
        }
    }

    fn video_frame(
        &mut self,
        timestamp_ms: u32,
        keyframe: bool,
        composition_ms: i32,
        data: Bytes,
        out: &mut Vec<TrackEvent>,
    ) -> Result<(), TrackError> {
        let nal_length_size = self
            .video
            .as_ref()
            .ok_or(TrackError::MissingConfig { kind: "video" })?
            .nal_length_size;
        let data = flv::normalize_nalus(data, nal_length_size)?;
        let ms = self.clock.extend(timestamp_ms);
        let ticks_per_ms = i64::from(VIDEO_TIMESCALE / 1000);
        let dts = ms * ticks_per_ms;
        self.announce(out);
        out.push(TrackEvent::Frame(Frame {
            track: VIDEO_TRACK,
            group: 0,
            dts,
            pts: dts + i64::from(composition_ms) * ticks_per_ms,
            keyframe,
            data,
        }));
        Ok(())
    }

    /// Handles one audio message body with its RTMP timestamp (ms).
    pub fn audio(
        &mut self,
        timestamp_ms: u32,
        body: &Bytes,
        out: &mut Vec<TrackEvent>,
    ) -> Result<(), TrackError> {
        match flv::parse_audio(body)? {
            AudioTag::SequenceHeader { asc } => {
                let config = AudioSpecificConfig::parse(&asc)?;
                let info = TrackInfo {
                    id: AUDIO_TRACK,
                    timescale: config.sample_rate,
                    codec: CodecConfig::Aac {
                        asc,
                        sample_rate: config.sample_rate,
                        channels: config.channels,
                    },
                };
                let changed = self.audio.as_ref() != Some(&info);
                if self.audio.as_ref().map(|a| a.timescale) != Some(info.timescale) {
                    self.audio_next = None;
                }
                self.audio = Some(info);
                self.config_updated(changed, out);
                Ok(())
            }
            AudioTag::Raw { data } => self.audio_frame(timestamp_ms, data, out),
        }
    }

    fn audio_frame(
        &mut self,
        timestamp_ms: u32,
        data: Bytes,
        out: &mut Vec<TrackEvent>,
    ) -> Result<(), TrackError> {
        let rate = i64::from(
            self.audio
                .as_ref()
                .ok_or(TrackError::MissingConfig { kind: "audio" })?
                .timescale,
        );
        let ms = self.clock.extend(timestamp_ms);
        let from_clock = ms * rate / 1000;
        let ts = match self.audio_next {
            Some(next) if (next - from_clock).abs() <= AUDIO_RESYNC_MS * rate / 1000 => next,
            _ => from_clock,
        };
        self.audio_next = Some(ts + AAC_SAMPLES_PER_FRAME);
        self.announce(out);
        out.push(TrackEvent::Frame(Frame {
            track: AUDIO_TRACK,
            group: 0,
            dts: ts,
            pts: ts,
            keyframe: true,
            data,
        }));
        Ok(())
    }

    /// A sequence header arrived: re-announce a changed catalog, or announce once both are known.
    fn config_updated(&mut self, changed: bool, out: &mut Vec<TrackEvent>) {
        let complete = self.video.is_some() && self.audio.is_some();
        if (self.announced && changed) || (!self.announced && complete) {
            self.announced = true;
            out.push(TrackEvent::Tracks(self.tracks()));
        }
    }

    /// Media is flowing: announce whatever configs are known if nobody has yet.
    fn announce(&mut self, out: &mut Vec<TrackEvent>) {
        if !self.announced {
            self.announced = true;
            out.push(TrackEvent::Tracks(self.tracks()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x264 640x360 High profile record (ffmpeg testsrc, yuv420p).
    pub(crate) const AVCC_640X360: &[u8] = &[
        0x01, 0x64, 0x00, 0x1e, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40,
        0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32,
        0x0f, 0x16, 0x2d, 0x96, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xf8,
        0xf8, 0x00,
    ];

    pub(crate) fn video_seq(avcc: &[u8]) -> Bytes {
        [&[0x17, 0, 0, 0, 0][..], avcc].concat().into()
    }

    pub(crate) fn video_nalus(key: bool, cts: i32, nalus: &[u8]) -> Bytes {
        let c = cts.to_be_bytes();
        let head = [if key { 0x17 } else { 0x27 }, 1, c[1], c[2], c[3]];
        [&head[..], nalus].concat().into()
    }

    pub(crate) fn aac_seq() -> Bytes {
        Bytes::from_static(&[0xaf, 0, 0x11, 0x90]) // LC, 48 kHz, stereo
    }

    pub(crate) fn aac_raw() -> Bytes {
        Bytes::from_static(&[0xaf, 1, 0x21, 0x10, 0x04])
    }

    fn frames(events: &[TrackEvent]) -> Vec<&Frame> {
        events
            .iter()
            .filter_map(|e| match e {
                TrackEvent::Frame(f) => Some(f),
                TrackEvent::Tracks(_) => None,
            })
            .collect()
    }

    #[test]
    fn announces_both_tracks_once_then_frames() {
        let mut a = TrackAssembler::new();
        let mut out = Vec::new();
        a.video(0, &video_seq(AVCC_640X360), &mut out).unwrap();
        assert!(out.is_empty(), "waits for audio config or first frame");
        a.audio(0, &aac_seq(), &mut out).unwrap();
        let [TrackEvent::Tracks(tracks)] = &out[..] else {
            panic!("expected one catalog, got {out:?}");
        };
        assert_eq!(tracks.len(), 2);
        assert!(matches!(
            tracks[0].codec,
            CodecConfig::H264 {
                width: 640,
                height: 360,
                ..
            }
        ));
        assert_eq!(tracks[1].timescale, 48_000);
        out.clear();
        a.video(40, &video_nalus(true, 80, &[0, 0, 0, 1, 0x65]), &mut out)
            .unwrap();
        let f = frames(&out);
        assert_eq!(out.len(), 1, "no second catalog");
        assert_eq!((f[0].dts, f[0].pts, f[0].keyframe), (0, 80 * 90, true));
    }

    #[test]
    fn video_only_announces_on_first_frame_and_reannounces_changes() {
        let mut a = TrackAssembler::new();
        let mut out = Vec::new();
        a.video(0, &video_seq(AVCC_640X360), &mut out).unwrap();
        a.video(0, &video_nalus(true, 0, &[0, 0, 0, 1, 0x65]), &mut out)
            .unwrap();
        assert!(matches!(&out[0], TrackEvent::Tracks(t) if t.len() == 1));
        out.clear();
        a.video(40, &video_seq(AVCC_640X360), &mut out).unwrap();
        assert!(out.is_empty(), "identical header: no new catalog");
        a.audio(40, &aac_seq(), &mut out).unwrap();
        assert!(matches!(&out[0], TrackEvent::Tracks(t) if t.len() == 2));
    }

    #[test]
    fn audio_advances_1024_samples_per_frame_and_resyncs() {
        let mut a = TrackAssembler::new();
        let mut out = Vec::new();
        a.audio(0, &aac_seq(), &mut out).unwrap();
        // 1024 samples at 48 kHz is 21.33 ms; RTMP rounds to 21 or 22.
        for ms in [1000, 1021, 1043, 1064] {
            a.audio(ms, &aac_raw(), &mut out).unwrap();
        }
        let ts: Vec<i64> = frames(&out).iter().map(|f| f.dts).collect();
        assert_eq!(ts, vec![0, 1024, 2048, 3072]);
        out.clear();
        // A 500 ms gap in the RTMP clock: audio jumps with it.
        a.audio(1585, &aac_raw(), &mut out).unwrap();
        assert_eq!(frames(&out)[0].dts, 585 * 48);
    }

    #[test]
    fn timestamps_survive_rtmp_wraparound() {
        let mut a = TrackAssembler::new();
        let mut out = Vec::new();
        a.video(0, &video_seq(AVCC_640X360), &mut out).unwrap();
        for ms in [u32::MAX - 40, u32::MAX, 39] {
            a.video(ms, &video_nalus(false, 0, &[0, 0, 0, 1, 0x41]), &mut out)
                .unwrap();
        }
        let dts: Vec<i64> = frames(&out).iter().map(|f| f.dts).collect();
        assert_eq!(dts, vec![0, 40 * 90, 80 * 90]);
    }

    #[test]
    fn media_before_config_is_a_soft_error() {
        let mut a = TrackAssembler::new();
        let mut out = Vec::new();
        let e = a
            .video(0, &video_nalus(true, 0, &[0, 0, 0, 1, 0x65]), &mut out)
            .unwrap_err();
        assert!(!e.is_fatal());
        assert!(!a.audio(0, &aac_raw(), &mut out).unwrap_err().is_fatal());
        assert!(out.is_empty());
    }

    #[test]
    fn bad_configs_and_codecs_are_fatal() {
        let mut a = TrackAssembler::new();
        let mut out = Vec::new();
        assert!(a
            .video(0, &video_seq(&[1, 2]), &mut out)
            .unwrap_err()
            .is_fatal());
        let hevc = Bytes::from_static(&[0x90, b'h', b'v', b'c', b'1']);
        assert!(a.video(0, &hevc, &mut out).unwrap_err().is_fatal());
        let mp3 = Bytes::from_static(&[0x2f, 0xff]);
        assert!(a.audio(0, &mp3, &mut out).unwrap_err().is_fatal());
        let bad_asc = Bytes::from_static(&[0xaf, 0, 0x17]);
        assert!(a.audio(0, &bad_asc, &mut out).unwrap_err().is_fatal());
    }

    #[test]
    fn short_nalu_lengths_are_rewritten() {
        let mut avcc = AVCC_640X360.to_vec();
        avcc[4] = 0xfd; // lengthSizeMinusOne = 1
        let mut a = TrackAssembler::new();
        let mut out = Vec::new();
        a.video(0, &video_seq(&avcc), &mut out).unwrap();
        a.video(0, &video_nalus(true, 0, &[0, 1, 0x65]), &mut out)
            .unwrap();
        assert_eq!(&frames(&out)[0].data[..], &[0, 0, 0, 1, 0x65]);
    }
}
