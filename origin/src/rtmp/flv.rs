//! FLV tag bodies as carried by RTMP video (type 9) and audio (type 8) messages.
//!
//! Sans-IO: bytes in, typed tags out. Only H.264 (codec id 7) and AAC (sound format 10) are
//! accepted; anything else is an error the session reports and closes on.

use bytes::{BufMut, Bytes, BytesMut};

/// Why a tag body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("empty {kind} tag")]
    Empty { kind: &'static str },
    #[error("{kind} tag truncated: need {need} bytes, got {got}")]
    Truncated {
        kind: &'static str,
        need: usize,
        got: usize,
    },
    #[error("unsupported video codec id {codec_id} (only H.264/AVC, id 7, is accepted)")]
    UnsupportedVideoCodec { codec_id: u8 },
    #[error("unsupported enhanced-RTMP video codec {fourcc:?} (only H.264/AVC is accepted)")]
    UnsupportedEnhancedVideo { fourcc: String },
    #[error("unsupported audio format {format} (only AAC, format 10, is accepted)")]
    UnsupportedAudioFormat { format: u8 },
    #[error("unknown AVC packet type {0}")]
    AvcPacketType(u8),
    #[error("unknown AAC packet type {0}")]
    AacPacketType(u8),
    #[error("NAL unit length {len} at offset {at} overruns the {size}-byte access unit")]
    NaluOverrun { at: usize, len: usize, size: usize },
    #[error("NAL unit length size {0} is not 1, 2 or 4")]
    NaluLengthSize(u8),
}

impl FlvError {
    /// True when the stream as a whole cannot be ingested (as opposed to one damaged tag).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            FlvError::UnsupportedVideoCodec { .. }
                | FlvError::UnsupportedEnhancedVideo { .. }
                | FlvError::UnsupportedAudioFormat { .. }
        )
    }
}

/// A parsed video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag {
    /// AVCPacketType 0: the AVCDecoderConfigurationRecord.
    SequenceHeader { avcc: Bytes },
    /// AVCPacketType 1: one access unit of length-prefixed NAL units.
    Nalus {
        keyframe: bool,
        /// Composition time offset in milliseconds (pts - dts).
        composition_ms: i32,
        data: Bytes,
    },
    /// AVCPacketType 2, or a video info/command frame (frame type 5): nothing to ingest.
    Ignored,
}

/// A parsed audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag {
    /// AACPacketType 0: the AudioSpecificConfig.
    SequenceHeader { asc: Bytes },
    /// AACPacketType 1: one raw AAC access unit.
    Raw { data: Bytes },
}

const CODEC_AVC: u8 = 7;
const SOUND_FORMAT_AAC: u8 = 10;
const FRAME_TYPE_KEY: u8 = 1;
const FRAME_TYPE_COMMAND: u8 = 5;
/// Enhanced RTMP (veovera) sets the top bit of the first byte and follows with a FourCC.
const ENHANCED_FLAG: u8 = 0x80;

/// Parses the body of an RTMP video message.
pub fn parse_video(body: &Bytes) -> Result<VideoTag, FlvError> {
    let kind = "video";
    let first = *body.first().ok_or(FlvError::Empty { kind })?;
    if first & ENHANCED_FLAG != 0 {
        let fourcc = body.get(1..5).ok_or(FlvError::Truncated {
            kind,
            need: 5,
            got: body.len(),
        })?;
        return Err(FlvError::UnsupportedEnhancedVideo {
            fourcc: String::from_utf8_lossy(fourcc).into_owned(),
        });
    }
    let (frame_type, codec_id) = (first >> 4, first & 0x0f);
    if codec_id != CODEC_AVC {
        return Err(FlvError::UnsupportedVideoCodec { codec_id });
    }
    if frame_type == FRAME_TYPE_COMMAND {
        return Ok(VideoTag::Ignored);
    }
    if body.len() < 5 {
        return Err(FlvError::Truncated {
            kind,
            need: 5,
            got: body.len(),
        });
    }
    match body[1] {
        0 => Ok(VideoTag::SequenceHeader {
            avcc: body.slice(5..),
        }),
        1 => Ok(VideoTag::Nalus {
            keyframe: frame_type == FRAME_TYPE_KEY,
            composition_ms: i24(body[2], body[3], body[4]),
            data: body.slice(5..),
        }),
        2 => Ok(VideoTag::Ignored),
        other => Err(FlvError::AvcPacketType(other)),
    }
}

/// Parses the body of an RTMP audio message.
pub fn parse_audio(body: &Bytes) -> Result<AudioTag, FlvError> {
    let kind = "audio";
    let first = *body.first().ok_or(FlvError::Empty { kind })?;
    let format = first >> 4;
    if format != SOUND_FORMAT_AAC {
        return Err(FlvError::UnsupportedAudioFormat { format });
    }
    let packet_type = *body.get(1).ok_or(FlvError::Truncated {
        kind,
        need: 2,
        got: body.len(),
    })?;
    match packet_type {
        0 => Ok(AudioTag::SequenceHeader {
            asc: body.slice(2..),
        }),
        1 => Ok(AudioTag::Raw {
            data: body.slice(2..),
        }),
        other => Err(FlvError::AacPacketType(other)),
    }
}

/// Sign-extends a big-endian 24-bit value.
fn i24(a: u8, b: u8, c: u8) -> i32 {
    i32::from_be_bytes([a, b, c, 0]) >> 8
}

/// Checks an AVCC access unit and returns it with 4-byte NAL unit lengths (the media model's
/// form). With `nal_length_size` 4 the input is returned as is, without copying.
pub fn normalize_nalus(data: Bytes, nal_length_size: u8) -> Result<Bytes, FlvError> {
    let n = nal_length_size as usize;
    if !matches!(n, 1 | 2 | 4) {
        return Err(FlvError::NaluLengthSize(nal_length_size));
    }
    let mut nalus = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let prefix = data.get(at..at + n).ok_or(FlvError::NaluOverrun {
            at,
            len: n,
            size: data.len(),
        })?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        let start = at + n;
        if len > data.len() - start {
            return Err(FlvError::NaluOverrun {
                at,
                len,
                size: data.len(),
            });
        }
        nalus.push(start..start + len);
        at = start + len;
    }
    if n == 4 {
        return Ok(data);
    }
    let mut out = BytesMut::with_capacity(data.len() + nalus.len() * (4 - n));
    for range in nalus {
        // A length read from at most 2 bytes always fits in u32.
        out.put_u32(range.len() as u32);
        out.put_slice(&data[range]);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[u8]) -> Bytes {
        Bytes::copy_from_slice(v)
    }

    #[test]
    fn parses_avc_sequence_header_and_nalus() {
        let seq = parse_video(&b(&[0x17, 0, 0, 0, 0, 1, 0x64])).unwrap();
        assert_eq!(
            seq,
            VideoTag::SequenceHeader {
                avcc: b(&[1, 0x64])
            }
        );
        let key = parse_video(&b(&[0x17, 1, 0, 0, 80, 0, 0, 0, 1, 0x65])).unwrap();
        assert_eq!(
            key,
            VideoTag::Nalus {
                keyframe: true,
                composition_ms: 80,
                data: b(&[0, 0, 0, 1, 0x65])
            }
        );
        let inter = parse_video(&b(&[0x27, 1, 0xff, 0xff, 0xd8, 0, 0, 0, 1, 0x41])).unwrap();
        assert!(matches!(
            inter,
            VideoTag::Nalus {
                keyframe: false,
                composition_ms: -40,
                ..
            }
        ));
        assert_eq!(parse_video(&b(&[0x17, 2, 0, 0, 0])), Ok(VideoTag::Ignored));
        assert_eq!(parse_video(&b(&[0x57, 0])), Ok(VideoTag::Ignored));
    }

    #[test]
    fn refuses_other_video_codecs() {
        assert_eq!(
            parse_video(&b(&[0x1c, 0, 0, 0, 0])),
            Err(FlvError::UnsupportedVideoCodec { codec_id: 12 })
        );
        let hevc = parse_video(&b(&[0x90, b'h', b'v', b'c', b'1', 1])).unwrap_err();
        assert_eq!(
            hevc,
            FlvError::UnsupportedEnhancedVideo {
                fourcc: "hvc1".into()
            }
        );
        assert!(hevc.is_unsupported());
        assert!(hevc.to_string().contains("hvc1"));
    }

    #[test]
    fn parses_aac_and_refuses_other_audio() {
        assert_eq!(
            parse_audio(&b(&[0xaf, 0, 0x12, 0x10])),
            Ok(AudioTag::SequenceHeader {
                asc: b(&[0x12, 0x10])
            })
        );
        assert_eq!(
            parse_audio(&b(&[0xaf, 1, 0x21, 0x00])),
            Ok(AudioTag::Raw {
                data: b(&[0x21, 0])
            })
        );
        assert_eq!(
            parse_audio(&b(&[0x2f, 1, 0])),
            Err(FlvError::UnsupportedAudioFormat { format: 2 })
        );
        assert_eq!(parse_audio(&b(&[0xaf, 7])), Err(FlvError::AacPacketType(7)));
    }

    #[test]
    fn truncated_tags_are_errors() {
        let video = [0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65];
        for n in 0..5 {
            assert!(parse_video(&b(&video[..n])).is_err(), "video len {n}");
        }
        assert!(parse_audio(&b(&[])).is_err());
        assert!(parse_audio(&b(&[0xaf])).is_err());
    }

    #[test]
    fn rewrites_short_nalu_lengths_to_four_bytes() {
        let two = b(&[0, 2, 0x65, 1, 0, 1, 0x06]);
        assert_eq!(
            normalize_nalus(two, 2).unwrap(),
            b(&[0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x06])
        );
        let one = b(&[1, 0x41]);
        assert_eq!(normalize_nalus(one, 1).unwrap(), b(&[0, 0, 0, 1, 0x41]));
        let four = b(&[0, 0, 0, 1, 0x41]);
        assert_eq!(normalize_nalus(four.clone(), 4).unwrap(), four);
    }

    #[test]
    fn refuses_overrunning_nalu_lengths() {
        assert!(matches!(
            normalize_nalus(b(&[0, 0, 0, 9, 0x65]), 4),
            Err(FlvError::NaluOverrun { .. })
        ));
        assert!(normalize_nalus(b(&[0, 0, 0]), 4).is_err());
        assert_eq!(
            normalize_nalus(b(&[1]), 3),
            Err(FlvError::NaluLengthSize(3))
        );
        assert_eq!(normalize_nalus(Bytes::new(), 4), Ok(Bytes::new()));
    }

    /// Deterministic xorshift so the property test is reproducible without a rand dependency.
    pub(crate) struct XorShift(pub u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = (self.next() as usize) % (max_len + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn random_and_truncated_input_never_panics() {
        let mut rng = XorShift(0x5eed_f1f0);
        for _ in 0..20_000 {
            let mut raw = rng.bytes(64);
            // Bias half of the cases towards the accepted codecs so the deep paths run too.
            if rng.next() & 1 == 0 && raw.len() > 1 {
                raw[0] = (raw[0] & 0xf0) | 7;
            }
            let body = Bytes::from(raw);
            let _ = parse_video(&body);
            let mut audio = body.to_vec();
            if let Some(first) = audio.first_mut() {
                *first = 0xaf;
            }
            let _ = parse_audio(&Bytes::from(audio));
            for size in [1, 2, 3, 4] {
                let _ = normalize_nalus(body.clone(), size);
            }
            for n in 0..body.len() {
                let _ = parse_video(&body.slice(..n));
                let _ = parse_audio(&body.slice(..n));
            }
        }
    }
}
