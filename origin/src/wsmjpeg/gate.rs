//! The sans-IO policy of one WebSocket-MJPEG device: each message is checked (a whole JPEG, within
//! the size bound, dimensions from its frame header), rate limited, timestamped on a 90 kHz clock
//! from the time passed in, and turned into a frame of the room's JPEG track. A change of
//! dimensions publishes a new catalog.

use std::time::Instant;

use bytes::Bytes;
use streamhub_shared::jpeg::{self, JpegError};
use streamhub_shared::media::{CodecConfig, Frame, TrackInfo};

use super::WsConfig;

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("text messages are not pictures: send one JPEG per binary message")]
    Text,
    #[error("not an acceptable JPEG: {0}")]
    Jpeg(#[from] JpegError),
    #[error("over {0} pictures per second")]
    RateLimited(u32),
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A picture for the room; `tracks` is the new catalog when it changed (first picture, new
    /// dimensions).
    Frame {
        frame: Frame,
        tracks: Option<Vec<TrackInfo>>,
    },
    /// Dropped, the connection stays.
    Dropped(Refusal),
}

/// The state of one device's stream.
#[derive(Debug)]
pub struct Gate {
    config: WsConfig,
    start: Option<Instant>,
    tokens: f64,
    last_refill: Option<Instant>,
    dims: Option<(u16, u16)>,
    last_dts: i64,
}

/// 90 kHz, the usual video clock.
const TIMESCALE: u32 = 90_000;

impl Gate {
    /// A gate with the limits of `config`.
    pub fn new(config: WsConfig) -> Self {
        let tokens = f64::from(config.max_fps);
        Self {
            config,
            start: None,
            tokens,
            last_refill: None,
            dims: None,
            last_dts: -1,
        }
    }

    /// A text message arrived.
    pub fn text(&mut self) -> Outcome {
        Outcome::Dropped(Refusal::Text)
    }

    /// A binary message arrived at `now`.
    pub fn binary(&mut self, data: Bytes, now: Instant) -> Outcome {
        let info = match jpeg::parse(&data, self.config.max_frame_bytes) {
            Ok(info) => info,
            Err(e) => return Outcome::Dropped(e.into()),
        };
        if !self.admit(now) {
            return Outcome::Dropped(Refusal::RateLimited(self.config.max_fps));
        }
        let start = *self.start.get_or_insert(now);
        let ticks = now.duration_since(start).as_micros() * u128::from(TIMESCALE) / 1_000_000;
        // Strictly increasing, whatever the clock's resolution.
        let dts = i64::try_from(ticks)
            .unwrap_or(i64::MAX)
            .max(self.last_dts + 1);
        self.last_dts = dts;
        let dims = (info.width, info.height);
        let tracks = (self.dims != Some(dims)).then(|| {
            self.dims = Some(dims);
            vec![TrackInfo {
                id: 0,
                timescale: TIMESCALE,
                codec: CodecConfig::Jpeg {
                    width: info.width,
                    height: info.height,
                },
            }]
        });
        Outcome::Frame {
            frame: Frame {
                track: 0,
                group: 0,
                dts,
                pts: dts,
                keyframe: true,
                data,
            },
            tracks,
        }
    }

    /// Token bucket: `max_fps` tokens per second, at most one second's worth banked.
    fn admit(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.config.max_fps);
        if let Some(last) = self.last_refill {
            let elapsed = now.duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(rate);
        }
        self.last_refill = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A minimal well-formed JPEG of `w` x `h` (markers only).
    fn jpeg(w: u16, h: u16) -> Bytes {
        let mut v = vec![0xff, 0xd8, 0xff, 0xc0, 0x00, 0x0b, 0x08];
        v.extend(h.to_be_bytes());
        v.extend(w.to_be_bytes());
        v.extend([0x01, 0x01, 0x11, 0x00]);
        v.extend([
            0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3f, 0x00, 0x42,
        ]);
        v.extend([0xff, 0xd9]);
        Bytes::from(v)
    }

    fn gate() -> Gate {
        Gate::new(WsConfig {
            max_fps: 10,
            max_frame_bytes: 1000,
            ..WsConfig::default()
        })
    }

    #[test]
    fn pictures_become_frames_with_a_catalog_on_the_first_and_on_a_new_size() {
        let mut g = gate();
        let t0 = Instant::now();
        let Outcome::Frame { frame, tracks } = g.binary(jpeg(640, 480), t0) else {
            panic!()
        };
        assert_eq!(frame.dts, 0);
        let codec = &tracks.unwrap()[0].codec;
        assert_eq!(
            *codec,
            CodecConfig::Jpeg {
                width: 640,
                height: 480
            }
        );
        let Outcome::Frame { frame, tracks } =
            g.binary(jpeg(640, 480), t0 + Duration::from_millis(100))
        else {
            panic!()
        };
        assert_eq!((frame.dts, tracks), (9000, None));
        let Outcome::Frame { tracks, .. } =
            g.binary(jpeg(320, 240), t0 + Duration::from_millis(200))
        else {
            panic!()
        };
        assert!(tracks.is_some(), "a new size is a new catalog");
    }

    #[test]
    fn bad_messages_are_dropped_with_a_reason() {
        let mut g = gate();
        let now = Instant::now();
        assert_eq!(g.text(), Outcome::Dropped(Refusal::Text));
        assert!(matches!(
            g.binary(Bytes::from_static(b"not a jpeg"), now),
            Outcome::Dropped(Refusal::Jpeg(JpegError::NoSoi))
        ));
        let whole = jpeg(64, 48);
        let cut = whole.slice(..whole.len() - 4);
        assert!(matches!(
            g.binary(cut, now),
            Outcome::Dropped(Refusal::Jpeg(JpegError::NoEoi))
        ));
        let big = Bytes::from(vec![0u8; 2000]);
        assert!(matches!(
            g.binary(big, now),
            Outcome::Dropped(Refusal::Jpeg(JpegError::TooLarge { .. }))
        ));
    }

    #[test]
    fn a_flood_is_cut_to_the_rate() {
        let mut g = gate();
        let t0 = Instant::now();
        // 100 pictures in one second at 10 fps allowed: the banked second plus the refill
        let taken = (0..100)
            .filter(|i| {
                matches!(
                    g.binary(jpeg(8, 8), t0 + Duration::from_millis(i * 10)),
                    Outcome::Frame { .. }
                )
            })
            .count();
        assert!((19..=21).contains(&taken), "{taken}");
        // timestamps never go backwards or repeat, even within the same instant
        let mut g = gate();
        let mut last = -1;
        for _ in 0..5 {
            if let Outcome::Frame { frame, .. } = g.binary(jpeg(8, 8), t0) {
                assert!(frame.dts > last);
                last = frame.dts;
            }
        }
    }
}
