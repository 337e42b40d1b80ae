//! The origin -> edge track relay wire format. Sans-IO: encoders append to a `BytesMut`, decoders
//! take complete items off the front of one and say `Ok(None)` when they need more bytes. The
//! cluster transport carries these bytes on QUIC streams.
//!
//! All integers are big-endian. Every length is checked against its bound as soon as it arrives,
//! before anything is allocated or waited for; every error names the field and its stream offset.
//!
//! # Control stream (bidirectional, opened by the edge)
//!
//! ```text
//! message  := type:u8 len:u32 body[len]            len <= the type's bound (<= 1 MiB)
//! string   := n:u16 utf8[n]                        n <= the field's bound
//! opt<T>   := 0:u8 | 1:u8 T
//! tracks   := n:u16 (len:u32 json(TrackInfo)[len])*n   n <= MAX_TRACKS
//! ```
//!
//! | type | message          | from   | body                                                                         | max body |
//! |------|------------------|--------|------------------------------------------------------------------------------|----------|
//! | 0x01 | `Subscribe`      | edge   | `request_id:u64 app:string room:string opt<n:u16 track:u32*n> [backfill:u8]` | 368 B    |
//! | 0x02 | `Unsubscribe`    | edge   | `request_id:u64`                                                             | 8 B      |
//! | 0x10 | `Catalog`        | origin | `request_id:u64 latest_group:opt<u64> tracks [live_group:u64]`               | 1 MiB    |
//! | 0x11 | `SubscribeError` | origin | `request_id:u64 code:u8 [holder:opt<string> if code=2] message:string`       | 1293 B   |
//! | 0x12 | `CatalogUpdate`  | origin | `request_id:u64 tracks`                                                      | 1 MiB    |
//! | 0x13 | `Ended`          | origin | `request_id:u64`                                                             | 8 B      |
//!
//! Error codes: 1 `UnknownRoom`, 2 `NotHere { holder }`, 3 `TooManySubscriptions`, 4 `Internal`,
//! 5 `UnknownTrack`.
//! String bounds: app 32, room 64, holder [`MAX_HOLDER_LEN`], message [`MAX_ERROR_MESSAGE_LEN`].
//! Any other type byte, code, presence byte, or bytes left after the last field are errors.
//! The bracketed trailing fields are present only when used: `backfill` (1..=16 complete groups
//! wanted before the newest) when an edge asks for back-fill, and `live_group` (the newest group
//! when the origin answered: those before it are the back-fill) only in answer to it. Peers
//! built before them refuse them as trailing bytes: upgrade origins before edges.
//!
//! # Group stream (unidirectional origin -> edge, one per group)
//!
//! ```text
//! stream := header frame* FIN
//! header := 0x20:u8 request_id:u64 group:u64                                  17 B
//! frame  := track:u32 dts:i64 pts_offset:i32 flags:u8 len:u32 payload[len]   21 B + len
//! ```
//!
//! | field        | meaning                                                            |
//! |--------------|--------------------------------------------------------------------|
//! | `pts_offset` | `pts - dts` in the track's timescale                               |
//! | `flags`      | bit 0 keyframe; the other bits are reserved and must be 0          |
//! | `len`        | payload bytes, at most [`MAX_FRAME`] (8 MiB)                       |
//!
//! The header carries no track count: a live group's frames are sent as they are produced, so the
//! origin cannot know in advance which tracks a group will hold; the catalog lists them. The group
//! ends with the stream (FIN); a stream that ends inside the header or a frame is an error
//! ([`GroupDecoder::finish`]). An origin that gives up on an old group resets its stream instead.

mod control;
mod error;
#[cfg(test)]
mod fuzz;
mod group;
mod wire;

pub use control::{ControlDecoder, ControlMessage, Direction, ErrorCode, MAX_BACKFILL_GROUPS};
pub use error::{EncodeError, RelayError};
pub use group::{encode_frame, FrameHeader, GroupDecoder, GroupHeader, GroupItem};

/// Bound of a control message body: catalogs are the largest and are far smaller.
pub const MAX_CONTROL_MESSAGE: usize = 1 << 20;
/// Bound of a frame payload: a 4K keyframe at high bitrate stays well under it.
pub const MAX_FRAME: usize = 8 << 20;
/// Bound of the track count of a subscribe or a catalog.
pub const MAX_TRACKS: usize = 64;
/// Bound of the holder node name in `ErrorCode::NotHere`.
pub const MAX_HOLDER_LEN: usize = 255;
/// Bound of the human-readable message of a `SubscribeError`.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// Bytes of a control message header (type and length).
pub const CONTROL_HEADER_LEN: usize = 5;
/// Bytes of a group stream header.
pub const GROUP_HEADER_LEN: usize = 17;
/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 21;
