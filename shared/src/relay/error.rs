//! What can go wrong reading or writing the relay wire format.

use crate::NameError;

/// Why bytes received on a relay stream were refused. Every variant carries the absolute byte
/// offset in the stream of the field that was wrong. After an error the stream is unusable: the
/// peer is broken or hostile, so the caller resets the stream (or closes the connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The type byte of a message (or of a group stream's header) is not one we know.
    #[error("unknown {stream} message type {ty:#04x} at offset {offset}")]
    UnknownMessageType {
        /// `"control"` or `"group"`.
        stream: &'static str,
        /// The type byte received.
        ty: u8,
        /// Offset of the type byte.
        offset: u64,
    },
    /// A control message declares a body longer than its type allows.
    #[error("{message} body of {len} bytes at offset {offset} exceeds the bound of {max}")]
    MessageTooLarge {
        /// The message type.
        message: &'static str,
        /// The declared body length.
        len: u64,
        /// The bound for this message type.
        max: usize,
        /// Offset of the length field.
        offset: u64,
    },
    /// A frame declares a payload longer than [`MAX_FRAME`](super::MAX_FRAME).
    #[error("frame payload of {len} bytes at offset {offset} exceeds the bound of {max}")]
    FrameTooLarge {
        /// The declared payload length.
        len: u64,
        /// The bound.
        max: usize,
        /// Offset of the length field.
        offset: u64,
    },
    /// A field runs past the end of its (complete) message body.
    #[error("{field} at offset {offset} needs {need} bytes, the message has {have} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the body.
        have: usize,
        /// Offset of the field.
        offset: u64,
    },
    /// A message body has bytes after its last field.
    #[error("{extra} unexpected bytes after {message} at offset {offset}")]
    TrailingBytes {
        /// The message type.
        message: &'static str,
        /// How many bytes are left over.
        extra: usize,
        /// Offset of the first extra byte.
        offset: u64,
    },
    /// A string declares a length over its field's bound.
    #[error("{field} of {len} bytes at offset {offset} exceeds the bound of {max}")]
    StringTooLong {
        /// The field being read.
        field: &'static str,
        /// The declared length.
        len: usize,
        /// The bound for this field.
        max: usize,
        /// Offset of the length prefix.
        offset: u64,
    },
    /// A string is not UTF-8.
    #[error("{field} at offset {offset} is not UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
        /// Offset of the string's bytes.
        offset: u64,
    },
    /// An app or room name is not a valid name.
    #[error("{field} at offset {offset}: {source}")]
    InvalidName {
        /// The field being read.
        field: &'static str,
        /// Offset of the string's bytes.
        offset: u64,
        /// What is wrong with the name.
        #[source]
        source: NameError,
    },
    /// An enumerated field (flag byte, presence byte, error code) has a value we do not know.
    #[error("{field} at offset {offset} has invalid value {value:#x}")]
    InvalidValue {
        /// The field being read.
        field: &'static str,
        /// The value received.
        value: u64,
        /// Offset of the field.
        offset: u64,
    },
    /// A track list declares more tracks than [`MAX_TRACKS`](super::MAX_TRACKS).
    #[error("{count} tracks at offset {offset} exceeds the bound of {max}")]
    TooManyTracks {
        /// The declared count.
        count: usize,
        /// The bound.
        max: usize,
        /// Offset of the count field.
        offset: u64,
    },
    /// A catalog entry is not the JSON of a `TrackInfo`.
    #[error("track info at offset {offset} is invalid: {reason}")]
    InvalidTrackInfo {
        /// Offset of the JSON bytes.
        offset: u64,
        /// What serde_json said.
        reason: String,
    },
    /// `dts + pts_offset` does not fit an `i64`.
    #[error("frame at offset {offset}: dts {dts} + pts offset {pts_offset} overflows")]
    PtsOverflow {
        /// The frame's decode timestamp.
        dts: i64,
        /// The frame's `pts - dts`.
        pts_offset: i32,
        /// Offset of the frame header.
        offset: u64,
    },
    /// A group stream ended (FIN) before its header or in the middle of a frame.
    #[error("group stream ended at offset {offset} inside {inside}")]
    UnexpectedEnd {
        /// `"the group header"` or `"a frame"`.
        inside: &'static str,
        /// Offset of the end of the stream.
        offset: u64,
    },
}

/// Why a message could not be encoded: it would break a bound the peer enforces. Nothing is
/// written to the buffer when encoding fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string is longer than its field allows.
    #[error("{field} of {len} bytes exceeds the bound of {max}")]
    StringTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A track list is longer than [`MAX_TRACKS`](super::MAX_TRACKS).
    #[error("{count} tracks exceed the bound of {max}")]
    TooManyTracks {
        /// The number of tracks.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// The encoded body is longer than its message type allows.
    #[error("{message} body of {len} bytes exceeds the bound of {max}")]
    MessageTooLarge {
        /// The message type.
        message: &'static str,
        /// The body length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A frame payload is longer than [`MAX_FRAME`](super::MAX_FRAME).
    #[error("frame payload of {len} bytes exceeds the bound of {max}")]
    FrameTooLarge {
        /// The payload length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// `pts - dts` does not fit the wire's `i32`.
    #[error("pts {pts} - dts {dts} does not fit an i32")]
    PtsOffsetOutOfRange {
        /// The frame's decode timestamp.
        dts: i64,
        /// The frame's presentation timestamp.
        pts: i64,
    },
    /// A `TrackInfo` could not be serialized.
    #[error("track info could not be serialized: {0}")]
    TrackInfo(String),
}
