//! The media model shared by every ingest and every packager.
//!
//! A room carries tracks; a track carries frames (access units); frames are grouped into groups
//! that start at a video keyframe. Payloads are `Bytes`: fan-out clones the handle, never the data.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

/// Index of a track inside its room.
pub type TrackId = u32;

/// Codec and its decoder configuration, as needed to build an init segment or an SDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "codec", rename_all = "lowercase")]
pub enum CodecConfig {
    /// H.264; `avcc` is the AVCDecoderConfigurationRecord; frames are AVCC (length-prefixed NALUs).
    H264 {
        #[serde(with = "bytes_b64")]
        avcc: Bytes,
        width: u16,
        height: u16,
    },
    /// AAC; `asc` is the AudioSpecificConfig; frames are raw AAC access units (no ADTS).
    Aac {
        #[serde(with = "bytes_b64")]
        asc: Bytes,
        sample_rate: u32,
        channels: u8,
    },
}

impl CodecConfig {
    /// Short codec name for APIs and logs.
    pub fn name(&self) -> &'static str {
        match self {
            CodecConfig::H264 { .. } => "h264",
            CodecConfig::Aac { .. } => "aac",
        }
    }

    /// True for video codecs.
    pub fn is_video(&self) -> bool {
        matches!(self, CodecConfig::H264 { .. })
    }
}

/// One elementary stream of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: TrackId,
    /// Ticks per second of this track's `pts`/`dts` (90 kHz for video, the sample rate for audio).
    pub timescale: u32,
    pub codec: CodecConfig,
}

/// One access unit of one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub track: TrackId,
    /// Sequence number of the group this frame belongs to (assigned by the origin, see [`RoomMedia::push`]).
    pub group: u64,
    /// Decode timestamp in the track's timescale.
    pub dts: i64,
    /// Presentation timestamp in the track's timescale.
    pub pts: i64,
    pub keyframe: bool,
    pub data: Bytes,
}

/// What a consumer of a room receives.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    Frame(Frame),
}

/// The producer side of a room's media: owned by the ingest session. Dropping it ends the stream
/// for every consumer.
#[derive(Debug)]
pub struct RoomMedia {
    tracks: watch::Sender<Arc<Vec<TrackInfo>>>,
    frames: broadcast::Sender<Frame>,
    group: u64,
    started: bool,
}

/// Frames a consumer may fall behind before it loses frames (and resyncs on a keyframe).
pub const ROOM_CHANNEL_CAPACITY: usize = 2048;

impl Default for RoomMedia {
    fn default() -> Self {
        Self::new()
    }
}

impl RoomMedia {
    /// A room with no tracks yet.
    pub fn new() -> Self {
        let (tracks, _) = watch::channel(Arc::new(Vec::new()));
        let (frames, _) = broadcast::channel(ROOM_CHANNEL_CAPACITY);
        Self {
            tracks,
            frames,
            group: 0,
            started: false,
        }
    }

    /// Publishes the track catalog (replaces the previous one).
    pub fn set_tracks(&self, tracks: Vec<TrackInfo>) {
        self.tracks.send_replace(Arc::new(tracks));
    }

    /// The current track catalog.
    pub fn tracks(&self) -> Arc<Vec<TrackInfo>> {
        self.tracks.borrow().clone()
    }

    /// Sends a frame to every consumer. A video keyframe opens a new group; frames before the
    /// first video keyframe are dropped (nobody could decode them). Returns false if dropped.
    pub fn push(&mut self, mut frame: Frame) -> bool {
        let is_video = self
            .tracks
            .borrow()
            .iter()
            .any(|t| t.id == frame.track && t.codec.is_video());
        let has_video = self.tracks.borrow().iter().any(|t| t.codec.is_video());
        if is_video && frame.keyframe {
            if self.started {
                self.group += 1;
            }
            self.started = true;
        } else if !has_video {
            // Audio-only room: every frame is a group boundary candidate.
            self.started = true;
        }
        if !self.started {
            return false;
        }
        frame.group = self.group;
        // An error only means there is no consumer right now.
        let _ = self.frames.send(frame);
        true
    }

    /// A new consumer; it sees frames pushed from now on.
    pub fn subscribe(&self) -> MediaConsumer {
        MediaConsumer {
            tracks: self.tracks.subscribe(),
            frames: self.frames.subscribe(),
        }
    }

    /// Number of live consumers.
    pub fn consumers(&self) -> usize {
        self.frames.receiver_count()
    }
}

/// The consumer side of a room's media.
#[derive(Debug)]
pub struct MediaConsumer {
    tracks: watch::Receiver<Arc<Vec<TrackInfo>>>,
    frames: broadcast::Receiver<Frame>,
}

/// Why `MediaConsumer::recv` returned no frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("the publisher has gone")]
    Closed,
    #[error("consumer fell behind and lost {0} frames")]
    Lagged(u64),
}

impl MediaConsumer {
    /// The current track catalog.
    pub fn tracks(&self) -> Arc<Vec<TrackInfo>> {
        self.tracks.borrow().clone()
    }

    /// The next frame; `Lagged` tells the consumer it lost frames and must resync on a keyframe.
    pub async fn recv(&mut self) -> Result<Frame, RecvError> {
        match self.frames.recv().await {
            Ok(f) => Ok(f),
            Err(broadcast::error::RecvError::Closed) => Err(RecvError::Closed),
            Err(broadcast::error::RecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
        }
    }
}

mod bytes_b64 {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        unhex(&s)
            .map(Bytes::from)
            .ok_or_else(|| serde::de::Error::custom("invalid hex"))
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn unhex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> TrackInfo {
        TrackInfo {
            id: 0,
            timescale: 90_000,
            codec: CodecConfig::H264 {
                avcc: Bytes::from_static(&[1, 2, 3]),
                width: 640,
                height: 360,
            },
        }
    }

    fn frame(track: TrackId, keyframe: bool) -> Frame {
        Frame {
            track,
            group: 0,
            dts: 0,
            pts: 0,
            keyframe,
            data: Bytes::from_static(b"x"),
        }
    }

    #[tokio::test]
    async fn groups_start_at_video_keyframes() {
        let mut room = RoomMedia::new();
        room.set_tracks(vec![video()]);
        let mut c = room.subscribe();
        assert!(!room.push(frame(0, false)), "no keyframe yet: dropped");
        assert!(room.push(frame(0, true)));
        assert!(room.push(frame(0, false)));
        assert!(room.push(frame(0, true)));
        let groups: Vec<u64> = [c.recv().await, c.recv().await, c.recv().await]
            .into_iter()
            .map(|f| f.unwrap().group)
            .collect();
        assert_eq!(groups, vec![0, 0, 1]);
        drop(room);
        assert_eq!(c.recv().await, Err(RecvError::Closed));
    }

    #[test]
    fn codec_config_serde_round_trip() {
        let t = video();
        let s = serde_json::to_string(&t).unwrap();
        assert!(s.contains("\"codec\":\"h264\""));
        let back: TrackInfo = serde_json::from_str(&s).unwrap();
        assert_eq!(back, t);
    }
}
