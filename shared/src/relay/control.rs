//! The control stream: the edge subscribes and unsubscribes, the origin answers with the catalog,
//! its updates, an error, or the end of the room. Wire format in the [module docs](super).

use bytes::{Buf, BufMut, BytesMut};

use super::wire::{put_flag, put_string, Reader};
use super::{
    EncodeError, RelayError, CONTROL_HEADER_LEN, MAX_CONTROL_MESSAGE, MAX_ERROR_MESSAGE_LEN,
    MAX_HOLDER_LEN, MAX_TRACKS,
};
use crate::{AppName, RoomName, TrackId, TrackInfo};

/// Which peer sends a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the subscriber (an edge, or a child edge to its parent).
    EdgeToOrigin,
    /// Sent by the node that holds the room.
    OriginToEdge,
}

/// Why the origin refused a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    /// No such room is live on this node or anywhere the origin knows of.
    UnknownRoom,
    /// The room is live, but on another node; `holder` names it when the origin knows it.
    NotHere {
        /// The node id of the holder, so the edge can retry there without asking the registry.
        holder: Option<String>,
    },
    /// This connection already has as many subscriptions as the origin allows.
    TooManySubscriptions,
    /// The origin failed; the edge may retry with backoff.
    Internal,
    /// The subscribe named a track the room does not have.
    UnknownTrack,
}

/// One message of the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Start receiving a room's tracks; `request_id` is chosen by the edge, unique per connection.
    Subscribe {
        /// Names this subscription in every later message about it.
        request_id: u64,
        /// The app (tenant) of the room.
        app: AppName,
        /// The room.
        room: RoomName,
        /// The tracks wanted: `None` for all (present and future), `Some(empty)` for the catalog
        /// only.
        tracks: Option<Vec<TrackId>>,
        /// Complete groups wanted before the newest one (back-fill, at most
        /// [`MAX_BACKFILL_GROUPS`]): as many of them as the origin keeps come first, in order.
        /// Encoded only when non-zero (a trailing byte).
        backfill: u8,
    },
    /// Stop a subscription; the origin stops opening group streams for it.
    Unsubscribe {
        /// The subscription to stop.
        request_id: u64,
    },
    /// A viewer behind this subscription lost the picture (a WebRTC PLI/FIR): ask the room's
    /// publisher for a keyframe if it can make one on demand (a WHIP publisher). Advisory:
    /// the origin rate-limits it and may ignore it.
    KeyframeRequest {
        /// The subscription whose viewers need the keyframe.
        request_id: u64,
    },
    /// The answer to a subscribe: the room's tracks; group streams follow.
    Catalog {
        /// The subscription answered.
        request_id: u64,
        /// The subscribed tracks with their codec configuration.
        tracks: Vec<TrackInfo>,
        /// The first group the origin sends, if any: the newest, or with back-fill the
        /// oldest back-filled one.
        latest_group: Option<u64>,
        /// With back-fill: the newest group when the subscription began (groups before it are
        /// the back-fill). Encoded only when present (trailing), so only to a subscriber that
        /// asked for back-fill.
        live_group: Option<u64>,
    },
    /// The subscription was refused; nothing more follows for this `request_id`.
    SubscribeError {
        /// The subscription refused.
        request_id: u64,
        /// Why, for the edge's logic.
        code: ErrorCode,
        /// Why, for humans; truncated to [`MAX_ERROR_MESSAGE_LEN`] bytes on encode.
        message: String,
    },
    /// The room's tracks changed (a new codec configuration, a track added or removed).
    CatalogUpdate {
        /// The subscription concerned.
        request_id: u64,
        /// The new list of subscribed tracks; replaces the previous one.
        tracks: Vec<TrackInfo>,
    },
    /// The publisher has gone: no more groups will come for this subscription.
    Ended {
        /// The subscription ended.
        request_id: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    Subscribe = 0x01,
    Unsubscribe = 0x02,
    KeyframeRequest = 0x03,
    Catalog = 0x10,
    SubscribeError = 0x11,
    CatalogUpdate = 0x12,
    Ended = 0x13,
}

const SUBSCRIBE_MAX_BODY: usize =
    8 + 2 + AppName::MAX_LEN + 2 + RoomName::MAX_LEN + 1 + 2 + 4 * MAX_TRACKS + 1;
/// The most complete groups a subscriber may ask to have back-filled.
pub const MAX_BACKFILL_GROUPS: u8 = 16;
const SUBSCRIBE_ERROR_MAX_BODY: usize = 8 + 1 + 1 + 2 + MAX_HOLDER_LEN + 2 + MAX_ERROR_MESSAGE_LEN;

impl MessageType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Subscribe,
            0x02 => Self::Unsubscribe,
            0x03 => Self::KeyframeRequest,
            0x10 => Self::Catalog,
            0x11 => Self::SubscribeError,
            0x12 => Self::CatalogUpdate,
            0x13 => Self::Ended,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Subscribe => "Subscribe",
            Self::Unsubscribe => "Unsubscribe",
            Self::KeyframeRequest => "KeyframeRequest",
            Self::Catalog => "Catalog",
            Self::SubscribeError => "SubscribeError",
            Self::CatalogUpdate => "CatalogUpdate",
            Self::Ended => "Ended",
        }
    }

    /// The longest body this type can have: a small message cannot make us buffer a megabyte.
    fn max_body(self) -> usize {
        match self {
            Self::Subscribe => SUBSCRIBE_MAX_BODY,
            Self::Unsubscribe | Self::KeyframeRequest | Self::Ended => 8,
            Self::Catalog | Self::CatalogUpdate => MAX_CONTROL_MESSAGE,
            Self::SubscribeError => SUBSCRIBE_ERROR_MAX_BODY,
        }
    }
}

impl ErrorCode {
    fn to_byte(&self) -> u8 {
        match self {
            Self::UnknownRoom => 1,
            Self::NotHere { .. } => 2,
            Self::TooManySubscriptions => 3,
            Self::Internal => 4,
            Self::UnknownTrack => 5,
        }
    }
}

impl ControlMessage {
    /// The subscription this message is about.
    pub fn request_id(&self) -> u64 {
        match self {
            Self::Subscribe { request_id, .. }
            | Self::Unsubscribe { request_id }
            | Self::KeyframeRequest { request_id }
            | Self::Catalog { request_id, .. }
            | Self::SubscribeError { request_id, .. }
            | Self::CatalogUpdate { request_id, .. }
            | Self::Ended { request_id } => *request_id,
        }
    }

    /// Which peer may send this message; the session refuses the other direction.
    pub fn direction(&self) -> Direction {
        match self {
            Self::Subscribe { .. } | Self::Unsubscribe { .. } | Self::KeyframeRequest { .. } => {
                Direction::EdgeToOrigin
            }
            _ => Direction::OriginToEdge,
        }
    }

    fn message_type(&self) -> MessageType {
        match self {
            Self::Subscribe { .. } => MessageType::Subscribe,
            Self::Unsubscribe { .. } => MessageType::Unsubscribe,
            Self::KeyframeRequest { .. } => MessageType::KeyframeRequest,
            Self::Catalog { .. } => MessageType::Catalog,
            Self::SubscribeError { .. } => MessageType::SubscribeError,
            Self::CatalogUpdate { .. } => MessageType::CatalogUpdate,
            Self::Ended { .. } => MessageType::Ended,
        }
    }

    /// Appends the message (header and body) to `buf`. On error `buf` is left as it was.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let ty = self.message_type();
        let start = buf.len();
        buf.put_u8(ty as u8);
        buf.put_u32(0); // patched below, once the body length is known
        let body = self.encode_body(buf).and_then(|()| {
            let len = buf.len() - start - CONTROL_HEADER_LEN;
            if len > ty.max_body() {
                return Err(EncodeError::MessageTooLarge {
                    message: ty.name(),
                    len,
                    max: ty.max_body(),
                });
            }
            Ok(len)
        });
        match body {
            Ok(len) => {
                // len <= MAX_CONTROL_MESSAGE, so it fits a u32.
                buf[start + 1..start + CONTROL_HEADER_LEN]
                    .copy_from_slice(&(len as u32).to_be_bytes());
                Ok(())
            }
            Err(e) => {
                buf.truncate(start);
                Err(e)
            }
        }
    }

    fn encode_body(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        buf.put_u64(self.request_id());
        match self {
            Self::Subscribe {
                app,
                room,
                tracks,
                backfill,
                ..
            } => {
                put_string(buf, "app", app.as_str(), AppName::MAX_LEN)?;
                put_string(buf, "room", room.as_str(), RoomName::MAX_LEN)?;
                put_flag(buf, tracks.is_some());
                if let Some(tracks) = tracks {
                    put_track_count(buf, tracks.len())?;
                    tracks.iter().for_each(|&t| buf.put_u32(t));
                }
                if *backfill > 0 {
                    buf.put_u8((*backfill).min(MAX_BACKFILL_GROUPS));
                }
            }
            Self::Catalog {
                tracks,
                latest_group,
                live_group,
                ..
            } => {
                put_flag(buf, latest_group.is_some());
                if let Some(g) = latest_group {
                    buf.put_u64(*g);
                }
                put_track_infos(buf, tracks)?;
                if let Some(g) = live_group {
                    buf.put_u64(*g);
                }
            }
            Self::SubscribeError { code, message, .. } => {
                buf.put_u8(code.to_byte());
                if let ErrorCode::NotHere { holder } = code {
                    put_flag(buf, holder.is_some());
                    if let Some(h) = holder {
                        put_string(buf, "holder", h, MAX_HOLDER_LEN)?;
                    }
                }
                let message = truncate_at_char(message, MAX_ERROR_MESSAGE_LEN);
                put_string(buf, "message", message, MAX_ERROR_MESSAGE_LEN)?;
            }
            Self::CatalogUpdate { tracks, .. } => put_track_infos(buf, tracks)?,
            Self::Unsubscribe { .. } | Self::KeyframeRequest { .. } | Self::Ended { .. } => {}
        }
        Ok(())
    }
}

fn put_track_count(buf: &mut BytesMut, count: usize) -> Result<(), EncodeError> {
    if count > MAX_TRACKS {
        return Err(EncodeError::TooManyTracks {
            count,
            max: MAX_TRACKS,
        });
    }
    buf.put_u16(count as u16); // MAX_TRACKS < u16::MAX
    Ok(())
}

fn put_track_infos(buf: &mut BytesMut, tracks: &[TrackInfo]) -> Result<(), EncodeError> {
    put_track_count(buf, tracks.len())?;
    for track in tracks {
        let at = buf.len();
        buf.put_u32(0);
        serde_json::to_writer(buf.writer(), track)
            .map_err(|e| EncodeError::TrackInfo(e.to_string()))?;
        // The whole message is bounded by MAX_CONTROL_MESSAGE (checked by the caller); a longer
        // entry is refused there, so a truncated u32 here never reaches the wire.
        let len = (buf.len() - at - 4) as u32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate_at_char(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes the control stream: call [`decode`](Self::decode) after each read until it returns
/// `Ok(None)`, then read more bytes into the same buffer.
#[derive(Debug, Default)]
pub struct ControlDecoder {
    /// Stream offset of the first byte of the caller's buffer.
    offset: u64,
}

impl ControlDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the stream consumed so far (complete messages only).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next complete message at the front of `buf`, removed from it; `Ok(None)` if more bytes
    /// are needed (nothing is consumed). The type and length are checked as soon as they arrive,
    /// before the body is waited for. On error nothing is consumed and the stream must be
    /// abandoned.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<ControlMessage>, RelayError> {
        let Some(&ty_byte) = buf.first() else {
            return Ok(None);
        };
        let ty = MessageType::from_byte(ty_byte).ok_or(RelayError::UnknownMessageType {
            stream: "control",
            ty: ty_byte,
            offset: self.offset,
        })?;
        if buf.len() < CONTROL_HEADER_LEN {
            return Ok(None);
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&buf[1..CONTROL_HEADER_LEN]);
        let len = u32::from_be_bytes(len_bytes);
        if len as usize > ty.max_body() {
            return Err(RelayError::MessageTooLarge {
                message: ty.name(),
                len: len.into(),
                max: ty.max_body(),
                offset: self.offset + 1,
            });
        }
        let total = CONTROL_HEADER_LEN + len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let body = Reader::new(
            &buf[CONTROL_HEADER_LEN..total],
            self.offset + CONTROL_HEADER_LEN as u64,
        );
        let message = decode_body(ty, body)?;
        buf.advance(total);
        self.offset += total as u64;
        Ok(Some(message))
    }
}

fn decode_body(ty: MessageType, mut r: Reader<'_>) -> Result<ControlMessage, RelayError> {
    let request_id = r.u64("request_id")?;
    let message = match ty {
        MessageType::Subscribe => {
            let app = read_name(&mut r, "app", AppName::MAX_LEN, AppName::new)?;
            let room = read_name(&mut r, "room", RoomName::MAX_LEN, RoomName::new)?;
            let tracks = if r.flag("has_tracks")? {
                let count = read_track_count(&mut r)?;
                let ids = (0..count).map(|_| r.u32("track id"));
                Some(ids.collect::<Result<Vec<_>, _>>()?)
            } else {
                None
            };
            // Older subscribers send no back-fill byte.
            let backfill = if r.remaining() > 0 {
                r.u8("backfill")?.min(MAX_BACKFILL_GROUPS)
            } else {
                0
            };
            ControlMessage::Subscribe {
                request_id,
                app,
                room,
                tracks,
                backfill,
            }
        }
        MessageType::Unsubscribe => ControlMessage::Unsubscribe { request_id },
        MessageType::KeyframeRequest => ControlMessage::KeyframeRequest { request_id },
        MessageType::Catalog => {
            let latest_group = if r.flag("has_latest_group")? {
                Some(r.u64("latest_group")?)
            } else {
                None
            };
            let tracks = read_track_infos(&mut r)?;
            let live_group = if r.remaining() > 0 {
                Some(r.u64("live_group")?)
            } else {
                None
            };
            ControlMessage::Catalog {
                request_id,
                tracks,
                latest_group,
                live_group,
            }
        }
        MessageType::SubscribeError => {
            let code = read_error_code(&mut r)?;
            let message = r.string("message", MAX_ERROR_MESSAGE_LEN)?;
            ControlMessage::SubscribeError {
                request_id,
                code,
                message,
            }
        }
        MessageType::CatalogUpdate => ControlMessage::CatalogUpdate {
            request_id,
            tracks: read_track_infos(&mut r)?,
        },
        MessageType::Ended => ControlMessage::Ended { request_id },
    };
    r.finish(ty.name())?;
    Ok(message)
}

fn read_name<T>(
    r: &mut Reader<'_>,
    field: &'static str,
    max: usize,
    parse: fn(String) -> Result<T, crate::NameError>,
) -> Result<T, RelayError> {
    // The offset of the name's bytes, past the u16 length prefix.
    let offset = r.offset() + 2;
    let s = r.string(field, max)?;
    parse(s).map_err(|source| RelayError::InvalidName {
        field,
        offset,
        source,
    })
}

fn read_track_count(r: &mut Reader<'_>) -> Result<usize, RelayError> {
    let offset = r.offset();
    let count = usize::from(r.u16("track count")?);
    if count > MAX_TRACKS {
        return Err(RelayError::TooManyTracks {
            count,
            max: MAX_TRACKS,
            offset,
        });
    }
    Ok(count)
}

fn read_track_infos(r: &mut Reader<'_>) -> Result<Vec<TrackInfo>, RelayError> {
    let count = read_track_count(r)?;
    let mut tracks = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u32("track info length")? as usize;
        let offset = r.offset();
        // `take` checks `len` against the bytes present before anything is parsed.
        let json = r.take(len, "track info")?;
        let track = serde_json::from_slice(json).map_err(|e| RelayError::InvalidTrackInfo {
            offset,
            reason: e.to_string(),
        })?;
        tracks.push(track);
    }
    Ok(tracks)
}

fn read_error_code(r: &mut Reader<'_>) -> Result<ErrorCode, RelayError> {
    let offset = r.offset();
    Ok(match r.u8("error code")? {
        1 => ErrorCode::UnknownRoom,
        2 => {
            let holder = if r.flag("has_holder")? {
                Some(r.string("holder", MAX_HOLDER_LEN)?)
            } else {
                None
            };
            ErrorCode::NotHere { holder }
        }
        3 => ErrorCode::TooManySubscriptions,
        4 => ErrorCode::Internal,
        5 => ErrorCode::UnknownTrack,
        value => {
            return Err(RelayError::InvalidValue {
                field: "error code",
                value: value.into(),
                offset,
            })
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::CodecConfig;

    pub(crate) fn video_track() -> TrackInfo {
        TrackInfo {
            id: 0,
            timescale: 90_000,
            codec: CodecConfig::H264 {
                avcc: Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff]),
                width: 1280,
                height: 720,
            },
        }
    }

    pub(crate) fn audio_track() -> TrackInfo {
        TrackInfo {
            id: 1,
            timescale: 48_000,
            codec: CodecConfig::Aac {
                asc: Bytes::from_static(&[0x11, 0x90]),
                sample_rate: 48_000,
                channels: 2,
            },
        }
    }

    /// One of every message and every optional branch.
    pub(crate) fn samples() -> Vec<ControlMessage> {
        let app = AppName::new("demo").unwrap();
        let room = RoomName::new("lobby-1").unwrap();
        vec![
            ControlMessage::Subscribe {
                request_id: 1,
                app: app.clone(),
                room: room.clone(),
                tracks: None,
                backfill: 0,
            },
            ControlMessage::Subscribe {
                request_id: u64::MAX,
                app,
                room,
                tracks: Some(vec![0, 1, u32::MAX]),
                backfill: MAX_BACKFILL_GROUPS,
            },
            ControlMessage::Unsubscribe { request_id: 7 },
            ControlMessage::KeyframeRequest { request_id: 8 },
            ControlMessage::Catalog {
                request_id: 1,
                tracks: vec![video_track(), audio_track()],
                latest_group: Some(42),
                live_group: None,
            },
            ControlMessage::Catalog {
                request_id: 2,
                tracks: vec![],
                latest_group: None,
                live_group: None,
            },
            ControlMessage::Catalog {
                request_id: 5,
                tracks: vec![video_track()],
                latest_group: Some(36),
                live_group: Some(42),
            },
            ControlMessage::SubscribeError {
                request_id: 3,
                code: ErrorCode::UnknownRoom,
                message: "no such room".into(),
            },
            ControlMessage::SubscribeError {
                request_id: 4,
                code: ErrorCode::NotHere {
                    holder: Some("origin-2".into()),
                },
                message: String::new(),
            },
            ControlMessage::SubscribeError {
                request_id: 5,
                code: ErrorCode::NotHere { holder: None },
                message: "moved".into(),
            },
            ControlMessage::SubscribeError {
                request_id: 6,
                code: ErrorCode::TooManySubscriptions,
                message: "limit 1000".into(),
            },
            ControlMessage::SubscribeError {
                request_id: 7,
                code: ErrorCode::Internal,
                message: "é".into(),
            },
            ControlMessage::SubscribeError {
                request_id: 7,
                code: ErrorCode::UnknownTrack,
                message: "no track 9".into(),
            },
            ControlMessage::CatalogUpdate {
                request_id: 1,
                tracks: vec![audio_track()],
            },
            ControlMessage::Ended { request_id: 1 },
        ]
    }

    fn encode_all(messages: &[ControlMessage]) -> BytesMut {
        let mut buf = BytesMut::new();
        for m in messages {
            m.encode(&mut buf).unwrap();
        }
        buf
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<ControlMessage>, RelayError> {
        ControlDecoder::new().decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let mut buf = encode_all(std::slice::from_ref(&m));
            let mut d = ControlDecoder::new();
            assert_eq!(d.decode(&mut buf).unwrap().as_ref(), Some(&m));
            assert!(buf.is_empty(), "{m:?} left bytes");
            assert_eq!(d.decode(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_messages() {
        let wire = encode_all(&samples());
        let mut d = ControlDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire.iter() {
            buf.put_u8(b);
            while let Some(m) = d.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, samples());
        assert!(buf.is_empty());
        assert_eq!(d.offset(), wire.len() as u64);
    }

    #[test]
    fn every_truncation_is_incomplete_and_consumes_nothing() {
        for m in samples() {
            let wire = encode_all(std::slice::from_ref(&m));
            for cut in 0..wire.len() {
                let mut buf = BytesMut::from(&wire[..cut]);
                assert_eq!(
                    ControlDecoder::new().decode(&mut buf),
                    Ok(None),
                    "{m:?} cut {cut}"
                );
                assert_eq!(buf.len(), cut);
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        for (ty, len) in [
            (0x10u8, MAX_CONTROL_MESSAGE as u32 + 1),
            (0x12, u32::MAX),
            (0x02, 9),
        ] {
            let mut buf = BytesMut::new();
            buf.put_u8(ty);
            buf.put_u32(len);
            let capacity = buf.capacity();
            let err = ControlDecoder::new().decode(&mut buf).unwrap_err();
            assert!(
                matches!(err, RelayError::MessageTooLarge { len: l, offset: 1, .. } if l == u64::from(len)),
                "{err}"
            );
            assert_eq!(buf.capacity(), capacity, "nothing reserved for the body");
        }
        // A Subscribe is small: a 1 KiB one is refused without waiting for its body.
        let err = decode_one(&[0x01, 0, 0, 4, 0]).unwrap_err();
        assert!(matches!(
            err,
            RelayError::MessageTooLarge {
                message: "Subscribe",
                max: 368,
                ..
            }
        ));
    }

    #[test]
    fn unknown_types_are_errors_at_their_offset() {
        for ty in [0x00u8, 0x04, 0x0f, 0x14, 0x20, 0xff] {
            assert_eq!(
                decode_one(&[ty]),
                Err(RelayError::UnknownMessageType {
                    stream: "control",
                    ty,
                    offset: 0
                })
            );
        }
        let mut buf = encode_all(&[ControlMessage::Ended { request_id: 1 }]);
        buf.put_u8(0x7f);
        let mut d = ControlDecoder::new();
        assert!(d.decode(&mut buf).unwrap().is_some());
        assert_eq!(
            d.decode(&mut buf),
            Err(RelayError::UnknownMessageType {
                stream: "control",
                ty: 0x7f,
                offset: 13
            })
        );
    }

    #[test]
    fn malformed_bodies_say_what_and_where() {
        // Subscribe body: request_id, app "Demo" (bad charset).
        let mut body = BytesMut::new();
        body.put_u64(1);
        body.put_u16(4);
        body.put_slice(b"Demo");
        let err = decode_one(&framed(0x01, &body)).unwrap_err();
        assert!(
            matches!(
                err,
                RelayError::InvalidName {
                    field: "app",
                    offset: 15,
                    ..
                }
            ),
            "{err}"
        );

        // Unsubscribe with 4 bytes: truncated request_id.
        let err = decode_one(&framed(0x02, &[0, 0, 0, 1])).unwrap_err();
        assert_eq!(
            err,
            RelayError::Truncated {
                field: "request_id",
                need: 8,
                have: 4,
                offset: 5
            }
        );

        // Catalog with a presence byte of 2.
        let mut body = BytesMut::new();
        body.put_u64(1);
        body.put_u8(2);
        let err = decode_one(&framed(0x10, &body)).unwrap_err();
        assert_eq!(
            err,
            RelayError::InvalidValue {
                field: "has_latest_group",
                value: 2,
                offset: 13
            }
        );

        // Catalog declaring 65 tracks.
        let mut body = BytesMut::new();
        body.put_u64(1);
        body.put_u8(0);
        body.put_u16(65);
        let err = decode_one(&framed(0x10, &body)).unwrap_err();
        assert_eq!(
            err,
            RelayError::TooManyTracks {
                count: 65,
                max: 64,
                offset: 14
            }
        );

        // Catalog whose track info is not JSON.
        let mut body = BytesMut::new();
        body.put_u64(1);
        body.put_u8(0);
        body.put_u16(1);
        body.put_u32(2);
        body.put_slice(b"{]");
        let err = decode_one(&framed(0x10, &body)).unwrap_err();
        assert!(
            matches!(err, RelayError::InvalidTrackInfo { offset: 20, .. }),
            "{err}"
        );

        // SubscribeError with code 9, and with a non-UTF-8 message.
        let err = decode_one(&framed(0x11, &[0, 0, 0, 0, 0, 0, 0, 1, 9])).unwrap_err();
        assert_eq!(
            err,
            RelayError::InvalidValue {
                field: "error code",
                value: 9,
                offset: 13
            }
        );
        let err = decode_one(&framed(0x11, &[0, 0, 0, 0, 0, 0, 0, 1, 4, 0, 1, 0xff])).unwrap_err();
        assert_eq!(
            err,
            RelayError::InvalidUtf8 {
                field: "message",
                offset: 16
            }
        );

        // SubscribeError with a byte after its empty message.
        let body = [0, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0xaa];
        let err = decode_one(&framed(0x11, &body)).unwrap_err();
        assert_eq!(
            err,
            RelayError::TrailingBytes {
                message: "SubscribeError",
                extra: 1,
                offset: 16
            }
        );
    }

    fn framed(ty: u8, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u8(ty);
        buf.put_u32(body.len() as u32);
        buf.put_slice(body);
        buf
    }

    #[test]
    fn string_lengths_are_checked_before_reading() {
        let mut body = BytesMut::new();
        body.put_u64(1);
        body.put_u8(2);
        body.put_u8(1);
        body.put_u16(MAX_HOLDER_LEN as u16 + 1);
        let err = decode_one(&framed(0x11, &body)).unwrap_err();
        assert_eq!(
            err,
            RelayError::StringTooLong {
                field: "holder",
                len: 256,
                max: 255,
                offset: 15
            }
        );
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would_and_writes_nothing() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        let too_many = ControlMessage::Subscribe {
            request_id: 1,
            app: AppName::new("a").unwrap(),
            room: RoomName::new("r").unwrap(),
            tracks: Some((0..65).collect()),
            backfill: 0,
        };
        assert_eq!(
            too_many.encode(&mut buf),
            Err(EncodeError::TooManyTracks { count: 65, max: 64 })
        );
        let long_holder = ControlMessage::SubscribeError {
            request_id: 1,
            code: ErrorCode::NotHere {
                holder: Some("h".repeat(256)),
            },
            message: String::new(),
        };
        assert!(matches!(
            long_holder.encode(&mut buf),
            Err(EncodeError::StringTooLong {
                field: "holder",
                ..
            })
        ));
        let huge_catalog = ControlMessage::Catalog {
            request_id: 1,
            tracks: vec![
                TrackInfo {
                    codec: CodecConfig::Aac {
                        asc: Bytes::from(vec![0u8; 300_000]),
                        sample_rate: 48_000,
                        channels: 2,
                    },
                    ..audio_track()
                };
                2
            ],
            latest_group: None,
            live_group: None,
        };
        assert!(matches!(
            huge_catalog.encode(&mut buf),
            Err(EncodeError::MessageTooLarge {
                message: "Catalog",
                ..
            })
        ));
        assert_eq!(&buf[..], b"prefix");
    }

    #[test]
    fn long_error_messages_are_cut_at_a_char_boundary() {
        let m = ControlMessage::SubscribeError {
            request_id: 1,
            code: ErrorCode::Internal,
            message: "é".repeat(MAX_ERROR_MESSAGE_LEN), // 2 bytes each
        };
        let mut buf = BytesMut::new();
        m.encode(&mut buf).unwrap();
        let Some(ControlMessage::SubscribeError { message, .. }) =
            ControlDecoder::new().decode(&mut buf).unwrap()
        else {
            panic!("not a SubscribeError");
        };
        assert_eq!(message, "é".repeat(MAX_ERROR_MESSAGE_LEN / 2));
    }

    #[test]
    fn documented_body_bounds_hold() {
        assert_eq!(SUBSCRIBE_MAX_BODY, 368);
        assert_eq!(SUBSCRIBE_ERROR_MAX_BODY, 1293);
        let largest = ControlMessage::Subscribe {
            request_id: 1,
            app: AppName::new("a".repeat(AppName::MAX_LEN)).unwrap(),
            room: RoomName::new("r".repeat(RoomName::MAX_LEN)).unwrap(),
            tracks: Some((0..MAX_TRACKS as u32).collect()),
            backfill: MAX_BACKFILL_GROUPS,
        };
        let mut buf = BytesMut::new();
        largest.encode(&mut buf).unwrap();
        assert_eq!(buf.len(), CONTROL_HEADER_LEN + SUBSCRIBE_MAX_BODY);
    }

    #[test]
    fn direction_and_request_id() {
        for m in samples() {
            let from_edge = matches!(
                m,
                ControlMessage::Subscribe { .. }
                    | ControlMessage::Unsubscribe { .. }
                    | ControlMessage::KeyframeRequest { .. }
            );
            assert_eq!(m.direction() == Direction::EdgeToOrigin, from_edge);
        }
        assert_eq!(ControlMessage::Ended { request_id: 9 }.request_id(), 9);
    }
}
