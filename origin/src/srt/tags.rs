//! What an MPEG-TS stream carries, as the FLV tag bodies RTMP carries the same media in: H.264
//! access units in Annex B become AVC sequence headers (`avcC`, from the stream's SPS and PPS)
//! and length-prefixed NALU tags; ADTS frames become an AAC sequence header (the
//! AudioSpecificConfig their headers describe) and raw frames. The RTMP ingest's track
//! assembler then takes them: one path from tags to the media model for both protocols.

use bytes::{BufMut, Bytes, BytesMut};

/// A tag body and its timestamp (ms, as RTMP's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    Video { ms: u32, body: Bytes },
    Audio { ms: u32, body: Bytes },
}

/// 33-bit timestamps that wrap, made monotonic.
#[derive(Debug, Default)]
struct Unwrap {
    last: Option<u64>,
    base: u64,
}

const WRAP: u64 = 1 << 33;

impl Unwrap {
    fn unwrap(&mut self, ts: u64) -> u64 {
        let ts = ts & (WRAP - 1);
        if let Some(last) = self.last {
            // A jump back by more than half the range is a wrap (and forward, an old value).
            if ts + WRAP / 2 < last {
                self.base += WRAP;
            } else if last + WRAP / 2 < ts && self.base >= WRAP {
                self.base -= WRAP;
            }
        }
        self.last = Some(ts);
        self.base + ts
    }
}

/// Audio may start a little before the first video frame: the first timestamp seen is this far
/// into the published timeline, so nothing is before 0.
const LEAD: u64 = 5 * 90_000;

/// Turns demuxed TS frames into FLV tag bodies.
#[derive(Debug, Default)]
pub struct TagBridge {
    clock: Unwrap,
    origin: Option<u64>,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    sent_avc: Option<(Bytes, Bytes)>,
    sent_asc: Option<[u8; 2]>,
}

impl TagBridge {
    fn ms(&mut self, ts: u64) -> u32 {
        let t = self.clock.unwrap(ts);
        let origin = *self.origin.get_or_insert(t.saturating_sub(LEAD));
        (t.saturating_sub(origin) / 90) as u32
    }

    /// The tags of one access unit (a sequence header first when the SPS or PPS changed);
    /// nothing until the stream has shown its SPS and PPS.
    pub fn video(&mut self, pts: u64, dts: u64, annexb: &[u8], out: &mut Vec<Tag>) {
        let mut nalus = Vec::new();
        let mut key = false;
        for nal in nal_units(annexb) {
            match nal[0] & 0x1f {
                7 => self.sps = Some(Bytes::copy_from_slice(nal)),
                8 => self.pps = Some(Bytes::copy_from_slice(nal)),
                9 => {}
                kind => {
                    key |= kind == 5;
                    nalus.push(nal);
                }
            }
        }
        let ms = self.ms(dts);
        let cts = ((pts as i64 - dts as i64) / 90).clamp(-(1 << 23), (1 << 23) - 1) as i32;
        let (Some(sps), Some(pps)) = (self.sps.clone(), self.pps.clone()) else {
            return;
        };
        if sps.len() < 4 {
            return;
        }
        if self.sent_avc.as_ref() != Some(&(sps.clone(), pps.clone())) {
            let mut body = BytesMut::with_capacity(16 + sps.len() + pps.len());
            body.put_slice(&[0x17, 0x00, 0, 0, 0]);
            body.put_slice(&[1, sps[1], sps[2], sps[3], 0xff, 0xe1]);
            body.put_u16(sps.len() as u16);
            body.put_slice(&sps);
            body.put_u8(1);
            body.put_u16(pps.len() as u16);
            body.put_slice(&pps);
            out.push(Tag::Video {
                ms,
                body: body.freeze(),
            });
            self.sent_avc = Some((sps, pps));
        }
        if nalus.is_empty() {
            return;
        }
        let size: usize = nalus.iter().map(|n| 4 + n.len()).sum();
        let mut body = BytesMut::with_capacity(5 + size);
        body.put_u8(if key { 0x17 } else { 0x27 });
        body.put_u8(0x01);
        body.put_slice(&cts.to_be_bytes()[1..]);
        for n in nalus {
            body.put_u32(n.len() as u32);
            body.put_slice(n);
        }
        out.push(Tag::Video {
            ms,
            body: body.freeze(),
        });
    }

    /// The tags of one PES of ADTS frames (an AAC sequence header first when the config
    /// changed); malformed frames end the PES.
    pub fn audio(&mut self, pts: u64, adts: &[u8], out: &mut Vec<Tag>) {
        let mut rest = adts;
        let mut n = 0u64;
        while let Some(frame) = Adts::parse(rest) {
            let asc = frame.asc();
            if self.sent_asc != Some(asc) {
                let ms = self.ms(pts);
                out.push(Tag::Audio {
                    ms,
                    body: Bytes::copy_from_slice(&[0xaf, 0x00, asc[0], asc[1]]),
                });
                self.sent_asc = Some(asc);
            }
            let ms = self.ms(pts + n * 1024 * 90_000 / u64::from(frame.sample_rate));
            let mut body = BytesMut::with_capacity(2 + frame.payload.len());
            body.put_slice(&[0xaf, 0x01]);
            body.put_slice(frame.payload);
            out.push(Tag::Audio {
                ms,
                body: body.freeze(),
            });
            rest = &rest[frame.len..];
            n += 1;
        }
    }
}

/// Tags held while waiting for the second track's config (about 4 s of 25 fps video and
/// 48 kHz audio).
const MAX_HELD_TAGS: usize = 300;

/// A transport stream in, FLV tags out: the demuxer, the bridge, and until both tracks' configs
/// are known (up to a bound) the media held back, so a room starts with its whole catalog
/// instead of changing it when the second track appears.
#[derive(Debug)]
pub struct TsToTags {
    demux: crate::srt::ts::TsDemuxer,
    bridge: TagBridge,
    held: Option<Vec<Tag>>,
    out: Vec<Tag>,
}

impl TsToTags {
    /// Refusing PES packets (frames) larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            demux: crate::srt::ts::TsDemuxer::new(max_frame),
            bridge: TagBridge::default(),
            held: Some(Vec::new()),
            out: Vec::new(),
        }
    }

    /// Feeds transport stream bytes (any split).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), crate::srt::ts::TsError> {
        self.demux.feed(bytes)?;
        self.collect(false);
        Ok(())
    }

    /// The stream ended: what the demuxer still holds, and anything held back, comes out.
    pub fn finish(&mut self) {
        self.demux.finish();
        self.collect(true);
    }

    /// The tags ready, in order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Tag> {
        self.out.drain(..)
    }

    fn collect(&mut self, end: bool) {
        use crate::srt::ts::TsEvent;
        let mut tags = Vec::new();
        while let Some(event) = self.demux.poll_event() {
            match event {
                TsEvent::Video { pts, dts, annexb } => {
                    self.bridge.video(pts, dts, &annexb, &mut tags)
                }
                TsEvent::Audio { pts, adts } => self.bridge.audio(pts, &adts, &mut tags),
            }
        }
        let Some(held) = self.held.as_mut() else {
            self.out.append(&mut tags);
            return;
        };
        held.append(&mut tags);
        let (video, audio) = self.demux.streams();
        let has = |want_video: bool| {
            held.iter().any(|t| match t {
                Tag::Video { body, .. } => want_video && is_config(body),
                Tag::Audio { body, .. } => !want_video && is_config(body),
            })
        };
        let complete = (video || audio) && (!video || has(true)) && (!audio || has(false));
        if !complete && held.len() < MAX_HELD_TAGS && !end {
            return;
        }
        // Configs first, then the media in stream order.
        let held = self.held.take().unwrap_or_default();
        let (configs, media): (Vec<Tag>, Vec<Tag>) = held.into_iter().partition(|t| match t {
            Tag::Video { body, .. } | Tag::Audio { body, .. } => is_config(body),
        });
        self.out.extend(configs);
        self.out.extend(media);
    }
}

/// Whether a tag body is a sequence header (AVC or AAC packet type 0).
fn is_config(body: &[u8]) -> bool {
    body.get(1) == Some(&0)
}

/// The NAL units of an Annex B byte stream (start codes removed, empty units skipped).
pub fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // The next unit's start code, with the zero byte of a 4-byte code.
            let mut e = s - 3;
            while e > 0 && data[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .filter(|(s, e)| s < e)
        .map(move |(s, e)| &data[s..e])
}

const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// One ADTS frame.
struct Adts<'a> {
    object_type: u8,
    rate_index: u8,
    channels: u8,
    sample_rate: u32,
    payload: &'a [u8],
    len: usize,
}

impl<'a> Adts<'a> {
    fn parse(b: &'a [u8]) -> Option<Self> {
        if b.len() < 7 || b[0] != 0xff || b[1] & 0xf0 != 0xf0 {
            return None;
        }
        let header = if b[1] & 0x01 == 0 { 9 } else { 7 };
        let len =
            (usize::from(b[3] & 0x03) << 11) | (usize::from(b[4]) << 3) | usize::from(b[5] >> 5);
        let rate_index = (b[2] >> 2) & 0x0f;
        let sample_rate = *SAMPLE_RATES.get(usize::from(rate_index))?;
        if len < header || len > b.len() {
            return None;
        }
        Some(Self {
            object_type: (b[2] >> 6) + 1,
            rate_index,
            channels: ((b[2] & 0x01) << 2) | (b[3] >> 6),
            sample_rate,
            payload: &b[header..len],
            len,
        })
    }

    /// The AudioSpecificConfig this frame's header describes.
    fn asc(&self) -> [u8; 2] {
        [
            (self.object_type << 3) | (self.rate_index >> 1),
            ((self.rate_index & 1) << 7) | (self.channels << 3),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_annex_b_with_both_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let units: Vec<&[u8]> = nal_units(&data).collect();
        assert_eq!(units, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 4, 5]]);
    }

    #[test]
    fn timestamps_unwrap_across_33_bits() {
        let mut u = Unwrap::default();
        assert_eq!(u.unwrap(WRAP - 90), WRAP - 90);
        assert_eq!(u.unwrap(10), WRAP + 10);
        assert_eq!(
            u.unwrap(WRAP - 50),
            WRAP - 50,
            "a late packet from before the wrap"
        );
        assert_eq!(u.unwrap(100), WRAP + 100);
    }

    #[test]
    fn adts_gives_its_audio_specific_config() {
        // AAC LC, 48 kHz (index 3), stereo; 7-byte header, 10-byte frame.
        let frame = [0xff, 0xf1, 0x4c, 0x80, 0x01, 0x5f, 0xfc, 1, 2, 3];
        let a = Adts::parse(&frame).unwrap();
        assert_eq!(a.sample_rate, 48_000);
        assert_eq!(a.payload, &[1, 2, 3]);
        assert_eq!(a.asc(), [0x11, 0x90]);
        let mut bridge = TagBridge::default();
        let mut out = Vec::new();
        bridge.audio(0, &[&frame[..], &frame[..]].concat(), &mut out);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(matches!(&out[0], Tag::Audio { body, .. } if body[..] == [0xaf, 0, 0x11, 0x90]));
        // The second frame is 1024 samples (21 ms) later.
        let (Tag::Audio { ms: a, .. }, Tag::Audio { ms: b, .. }) = (&out[1], &out[2]) else {
            panic!()
        };
        assert_eq!(b - a, 21);
    }
}
