//! Group streams: one unidirectional stream per group, a header then the group's frames until the
//! stream ends. Wire format in the [module docs](super).

use bytes::{Buf, BufMut, BytesMut};

use super::wire::Reader;
use super::{EncodeError, RelayError, FRAME_HEADER_LEN, GROUP_HEADER_LEN, MAX_FRAME};
use crate::{Frame, TrackId};

/// The type byte that opens a group stream; it catches a stream opened for something else.
const GROUP_STREAM_TYPE: u8 = 0x20;

/// Frame flag: the frame is a keyframe (random access point).
const FLAG_KEYFRAME: u8 = 0x01;

/// The first bytes of a group stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHeader {
    /// The subscription (see `ControlMessage::Subscribe`) the group belongs to.
    pub request_id: u64,
    /// The group's sequence number, assigned by the origin.
    pub group: u64,
}

/// The fixed-size header in front of each frame payload on a group stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The track of the frame.
    pub track: TrackId,
    /// Decode timestamp in the track's timescale.
    pub dts: i64,
    /// `pts - dts`: small and non-negative in practice, hence narrower than a timestamp.
    pub pts_offset: i32,
    /// True for a keyframe.
    pub keyframe: bool,
    /// Payload length in bytes.
    pub len: u32,
}

/// One item read from a group stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupItem {
    /// The stream's header: always the first item, exactly once.
    Header(GroupHeader),
    /// A frame, with `group` taken from the header; its payload shares the receive buffer.
    Frame(Frame),
}

impl GroupHeader {
    /// Appends the header to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(GROUP_STREAM_TYPE);
        buf.put_u64(self.request_id);
        buf.put_u64(self.group);
    }
}

impl FrameHeader {
    /// The header for `frame`; refuses a payload over [`MAX_FRAME`] or a `pts - dts` that does
    /// not fit an `i32`.
    pub fn for_frame(frame: &Frame) -> Result<Self, EncodeError> {
        let len = frame_len(frame.data.len())?;
        let pts_offset = frame
            .pts
            .checked_sub(frame.dts)
            .and_then(|d| i32::try_from(d).ok())
            .ok_or(EncodeError::PtsOffsetOutOfRange {
                dts: frame.dts,
                pts: frame.pts,
            })?;
        Ok(Self {
            track: frame.track,
            dts: frame.dts,
            pts_offset,
            keyframe: frame.keyframe,
            len,
        })
    }

    /// Appends the header to `buf`; the caller then writes `len` payload bytes (without copying
    /// them into `buf`, e.g. with QUIC `write_chunks`).
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        frame_len(self.len as usize)?;
        buf.put_u32(self.track);
        buf.put_i64(self.dts);
        buf.put_i32(self.pts_offset);
        buf.put_u8(if self.keyframe { FLAG_KEYFRAME } else { 0 });
        buf.put_u32(self.len);
        Ok(())
    }
}

fn frame_len(len: usize) -> Result<u32, EncodeError> {
    if len > MAX_FRAME {
        return Err(EncodeError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(len as u32) // MAX_FRAME < u32::MAX
}

/// Appends `frame` (header and a copy of the payload) to `buf`. `frame.group` is not written: the
/// stream's header carries it. Nothing is written on error.
pub fn encode_frame(frame: &Frame, buf: &mut BytesMut) -> Result<(), EncodeError> {
    FrameHeader::for_frame(frame)?.encode(buf)?;
    buf.put_slice(&frame.data);
    Ok(())
}

/// Decodes one group stream: call [`decode`](Self::decode) after each read until it returns
/// `Ok(None)`, and [`finish`](Self::finish) when the stream ends.
#[derive(Debug, Default)]
pub struct GroupDecoder {
    header: Option<GroupHeader>,
    /// Stream offset of the first byte of the caller's buffer.
    offset: u64,
}

impl GroupDecoder {
    /// A decoder at the start of a group stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream's header, once decoded.
    pub fn header(&self) -> Option<&GroupHeader> {
        self.header.as_ref()
    }

    /// Bytes of the stream consumed so far (complete items only).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next complete item at the front of `buf`, removed from it; `Ok(None)` if more bytes
    /// are needed (nothing is consumed). A frame's length is checked against [`MAX_FRAME`] as soon
    /// as its header arrives; its payload is split off `buf` without a copy. On error nothing is
    /// consumed and the stream must be abandoned.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<GroupItem>, RelayError> {
        match self.header {
            None => self.decode_header(buf),
            Some(header) => self.decode_frame(header.group, buf),
        }
    }

    /// Checks that the stream ended (FIN) between frames, after the header; `buf` holds what
    /// [`decode`](Self::decode) left.
    pub fn finish(&self, buf: &BytesMut) -> Result<(), RelayError> {
        let inside = if self.header.is_none() {
            "the group header"
        } else if !buf.is_empty() {
            "a frame"
        } else {
            return Ok(());
        };
        Err(RelayError::UnexpectedEnd {
            inside,
            offset: self.offset + buf.len() as u64,
        })
    }

    fn decode_header(&mut self, buf: &mut BytesMut) -> Result<Option<GroupItem>, RelayError> {
        let Some(&ty) = buf.first() else {
            return Ok(None);
        };
        if ty != GROUP_STREAM_TYPE {
            return Err(RelayError::UnknownMessageType {
                stream: "group",
                ty,
                offset: self.offset,
            });
        }
        if buf.len() < GROUP_HEADER_LEN {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[1..GROUP_HEADER_LEN], self.offset + 1);
        let header = GroupHeader {
            request_id: r.u64("request_id")?,
            group: r.u64("group")?,
        };
        buf.advance(GROUP_HEADER_LEN);
        self.offset += GROUP_HEADER_LEN as u64;
        self.header = Some(header);
        Ok(Some(GroupItem::Header(header)))
    }

    fn decode_frame(
        &mut self,
        group: u64,
        buf: &mut BytesMut,
    ) -> Result<Option<GroupItem>, RelayError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let h = read_frame_header(&buf[..FRAME_HEADER_LEN], self.offset)?;
        let pts = h
            .dts
            .checked_add(h.pts_offset.into())
            .ok_or(RelayError::PtsOverflow {
                dts: h.dts,
                pts_offset: h.pts_offset,
                offset: self.offset,
            })?;
        let total = FRAME_HEADER_LEN + h.len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let data = buf.split_to(h.len as usize).freeze();
        self.offset += total as u64;
        Ok(Some(GroupItem::Frame(Frame {
            track: h.track,
            group,
            dts: h.dts,
            pts,
            keyframe: h.keyframe,
            data,
        })))
    }
}

/// Parses and bounds-checks a frame header; `offset` is the stream offset of its first byte.
fn read_frame_header(bytes: &[u8], offset: u64) -> Result<FrameHeader, RelayError> {
    let mut r = Reader::new(bytes, offset);
    let track = r.u32("track")?;
    let dts = r.i64("dts")?;
    let pts_offset = r.i32("pts_offset")?;
    let flags_offset = r.offset();
    let flags = r.u8("flags")?;
    if flags & !FLAG_KEYFRAME != 0 {
        return Err(RelayError::InvalidValue {
            field: "frame flags",
            value: flags.into(),
            offset: flags_offset,
        });
    }
    let len_offset = r.offset();
    let len = r.u32("frame length")?;
    if len as usize > MAX_FRAME {
        return Err(RelayError::FrameTooLarge {
            len: len.into(),
            max: MAX_FRAME,
            offset: len_offset,
        });
    }
    Ok(FrameHeader {
        track,
        dts,
        pts_offset,
        keyframe: flags & FLAG_KEYFRAME != 0,
        len,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;

    use super::*;

    pub(crate) fn header() -> GroupHeader {
        GroupHeader {
            request_id: 7,
            group: 1234,
        }
    }

    /// A group's frames: video keyframe, audio, B-frame-like negative and large pts offsets,
    /// an empty payload, extreme timestamps.
    pub(crate) fn frames() -> Vec<Frame> {
        let f = |track, dts, pts, keyframe, data: &'static [u8]| Frame {
            track,
            group: header().group,
            dts,
            pts,
            keyframe,
            data: Bytes::from_static(data),
        };
        vec![
            f(0, 0, 3000, true, b"\x00\x00\x00\x02\x65\x88"),
            f(1, -1024, -1024, true, b"aac"),
            f(0, 3000, 1500, false, b"\x00\x00\x00\x01\x41"),
            f(0, i64::MAX, i64::MAX, false, b""),
            f(
                u32::MAX,
                i64::MIN,
                i64::MIN + i64::from(i32::MAX),
                false,
                b"x",
            ),
        ]
    }

    pub(crate) fn encode_group(header: &GroupHeader, frames: &[Frame]) -> BytesMut {
        let mut buf = BytesMut::new();
        header.encode(&mut buf);
        for f in frames {
            encode_frame(f, &mut buf).unwrap();
        }
        buf
    }

    fn expected() -> Vec<GroupItem> {
        let mut items = vec![GroupItem::Header(header())];
        items.extend(frames().into_iter().map(GroupItem::Frame));
        items
    }

    #[test]
    fn group_round_trips() {
        let mut buf = encode_group(&header(), &frames());
        let mut d = GroupDecoder::new();
        let mut got = Vec::new();
        while let Some(item) = d.decode(&mut buf).unwrap() {
            got.push(item);
        }
        assert_eq!(got, expected());
        assert_eq!(d.header(), Some(&header()));
        assert_eq!(d.finish(&buf), Ok(()));
    }

    #[test]
    fn byte_by_byte_gives_the_same_items() {
        let wire = encode_group(&header(), &frames());
        let mut d = GroupDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire.iter() {
            buf.put_u8(b);
            while let Some(item) = d.decode(&mut buf).unwrap() {
                got.push(item);
            }
        }
        assert_eq!(got, expected());
        assert_eq!(d.offset(), wire.len() as u64);
    }

    #[test]
    fn payloads_are_not_copied() {
        let mut buf = encode_group(&header(), &frames()[..1]);
        let start = buf.as_ptr() as usize;
        let mut d = GroupDecoder::new();
        d.decode(&mut buf).unwrap();
        let Some(GroupItem::Frame(frame)) = d.decode(&mut buf).unwrap() else {
            panic!("expected a frame");
        };
        let payload_at = GROUP_HEADER_LEN + FRAME_HEADER_LEN;
        assert_eq!(frame.data.as_ptr() as usize, start + payload_at);
    }

    #[test]
    fn truncations_are_incomplete_and_finish_reports_them() {
        let wire = encode_group(&header(), &frames());
        let boundaries: Vec<usize> = {
            let mut at = GROUP_HEADER_LEN;
            let mut v = vec![at];
            for f in frames() {
                at += FRAME_HEADER_LEN + f.data.len();
                v.push(at);
            }
            v
        };
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut d = GroupDecoder::new();
            while d.decode(&mut buf).unwrap().is_some() {}
            let end = d.finish(&buf);
            if boundaries.contains(&cut) {
                assert_eq!(end, Ok(()), "cut {cut}");
            } else {
                let inside = if cut < GROUP_HEADER_LEN {
                    "the group header"
                } else {
                    "a frame"
                };
                assert_eq!(
                    end,
                    Err(RelayError::UnexpectedEnd {
                        inside,
                        offset: cut as u64
                    }),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header_alone() {
        let mut buf = BytesMut::new();
        header().encode(&mut buf);
        let h = FrameHeader {
            track: 0,
            dts: 0,
            pts_offset: 0,
            keyframe: true,
            len: 0,
        };
        h.encode(&mut buf).unwrap();
        let len_at = buf.len() - 4;
        for len in [MAX_FRAME as u32 + 1, u32::MAX] {
            buf[len_at..].copy_from_slice(&len.to_be_bytes());
            let mut b = buf.clone();
            let mut d = GroupDecoder::new();
            d.decode(&mut b).unwrap();
            let capacity = b.capacity();
            assert_eq!(
                d.decode(&mut b),
                Err(RelayError::FrameTooLarge {
                    len: len.into(),
                    max: MAX_FRAME,
                    offset: (GROUP_HEADER_LEN + 17) as u64
                })
            );
            assert_eq!(b.capacity(), capacity);
            assert_eq!(b.len(), FRAME_HEADER_LEN, "nothing consumed on error");
        }
        let too_big = FrameHeader {
            len: MAX_FRAME as u32 + 1,
            ..h
        };
        assert!(matches!(
            too_big.encode(&mut buf),
            Err(EncodeError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn bad_stream_type_flags_and_pts_are_errors() {
        let mut d = GroupDecoder::new();
        assert_eq!(
            d.decode(&mut BytesMut::from(&[0x01u8][..])),
            Err(RelayError::UnknownMessageType {
                stream: "group",
                ty: 0x01,
                offset: 0
            })
        );

        let mut buf = encode_group(&header(), &frames()[..1]);
        buf[GROUP_HEADER_LEN + 16] = 0x03; // keyframe + a reserved bit
        let mut d = GroupDecoder::new();
        d.decode(&mut buf).unwrap();
        assert_eq!(
            d.decode(&mut buf),
            Err(RelayError::InvalidValue {
                field: "frame flags",
                value: 3,
                offset: (GROUP_HEADER_LEN + 16) as u64
            })
        );

        let mut buf = BytesMut::new();
        header().encode(&mut buf);
        FrameHeader {
            track: 0,
            dts: i64::MAX,
            pts_offset: 1,
            keyframe: false,
            len: 0,
        }
        .encode(&mut buf)
        .unwrap();
        let mut d = GroupDecoder::new();
        d.decode(&mut buf).unwrap();
        assert!(matches!(
            d.decode(&mut buf),
            Err(RelayError::PtsOverflow { .. })
        ));
    }

    #[test]
    fn encoder_refuses_unrepresentable_frames() {
        let mut frame = frames()[0].clone();
        frame.pts = frame.dts + i64::from(i32::MAX) + 1;
        let mut buf = BytesMut::new();
        assert!(matches!(
            encode_frame(&frame, &mut buf),
            Err(EncodeError::PtsOffsetOutOfRange { .. })
        ));
        frame.pts = frame.dts;
        frame.data = Bytes::from(vec![0u8; MAX_FRAME + 1]);
        assert!(matches!(
            encode_frame(&frame, &mut buf),
            Err(EncodeError::FrameTooLarge { .. })
        ));
        assert!(buf.is_empty());
    }
}
