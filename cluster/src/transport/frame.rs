//! The RPC wire format on one bidirectional QUIC stream. Sans-IO.
//!
//! ```text
//! request:  [u16 kind][u32 len][len bytes body]            then the client finishes its side
//! response: [u8 status][u32 len][len bytes body]           then the server finishes its side
//! status:   0 ok (body = the handler's answer)
//!           1 remote error (body = JSON RemoteError)
//!           2 unknown kind (body empty)
//! ```
//!
//! All integers are big-endian. Lengths are checked against a bound before anything is allocated:
//! a request against its service's [`max_request_len`](super::RpcService::max_request_len)
//! (default [`DEFAULT_MAX_REQUEST`]), a response against [`MAX_RESPONSE`].

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of a request header.
pub const REQUEST_HEADER_LEN: usize = 6;
/// Bytes of a response header.
pub const RESPONSE_HEADER_LEN: usize = 5;
/// The default bound of a request body: control messages are small.
pub const DEFAULT_MAX_REQUEST: usize = 1 << 20;
/// The bound of request bodies that carry Raft entries or snapshot chunks.
pub const MAX_BULK_REQUEST: usize = 64 << 20;
/// The bound of any response body (the client asked for it, from an authenticated peer).
pub const MAX_RESPONSE: usize = 64 << 20;

/// The status byte of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The handler answered; the body is its answer.
    Ok,
    /// The handler (or the server) failed; the body is a JSON `RemoteError`.
    RemoteError,
    /// No service is registered for the request's kind.
    UnknownKind,
}

impl Status {
    fn to_byte(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::RemoteError => 1,
            Self::UnknownKind => 2,
        }
    }
}

/// A malformed or oversized frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared body length exceeds the bound.
    #[error("frame body of {len} bytes exceeds the bound of {max}")]
    TooLarge {
        /// The declared length.
        len: u64,
        /// The bound.
        max: usize,
    },
    /// The status byte is not one of the known values.
    #[error("unknown response status {0}")]
    BadStatus(u8),
}

/// A decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// The RPC kind.
    pub kind: u16,
    /// The body length.
    pub len: u32,
}

/// A decoded response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The status.
    pub status: Status,
    /// The body length.
    pub len: u32,
}

/// Encodes a request header (the body follows as its own write, without copying).
pub fn request_header(kind: u16, body_len: usize, max: usize) -> Result<[u8; 6], FrameError> {
    let len = checked_len(body_len as u64, max)?;
    let mut out = [0u8; REQUEST_HEADER_LEN];
    out[..2].copy_from_slice(&kind.to_be_bytes());
    out[2..].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Decodes a request header.
pub fn decode_request_header(buf: [u8; REQUEST_HEADER_LEN]) -> RequestHeader {
    RequestHeader {
        kind: u16::from_be_bytes([buf[0], buf[1]]),
        len: u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]),
    }
}

/// Encodes a whole response frame.
pub fn encode_response(status: Status, body: &[u8]) -> Result<Bytes, FrameError> {
    let len = checked_len(body.len() as u64, MAX_RESPONSE)?;
    let mut out = BytesMut::with_capacity(RESPONSE_HEADER_LEN + body.len());
    out.put_u8(status.to_byte());
    out.put_u32(len);
    out.put_slice(body);
    Ok(out.freeze())
}

/// Decodes a response header, checking the status and the length bound.
pub fn decode_response_header(
    buf: [u8; RESPONSE_HEADER_LEN],
) -> Result<ResponseHeader, FrameError> {
    let status = match buf[0] {
        0 => Status::Ok,
        1 => Status::RemoteError,
        2 => Status::UnknownKind,
        other => return Err(FrameError::BadStatus(other)),
    };
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    checked_len(u64::from(len), MAX_RESPONSE)?;
    Ok(ResponseHeader { status, len })
}

/// Checks a body length against a bound; the result fits the u32 length field.
pub fn checked_len(len: u64, max: usize) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(l) if len <= max as u64 => Ok(l),
        _ => Err(FrameError::TooLarge { len, max }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_round_trips() {
        let header = request_header(0x0102, 77, DEFAULT_MAX_REQUEST).unwrap();
        assert_eq!(header, [0x01, 0x02, 0, 0, 0, 77]);
        assert_eq!(
            decode_request_header(header),
            RequestHeader {
                kind: 0x0102,
                len: 77
            }
        );
    }

    #[test]
    fn oversized_bodies_are_refused_before_allocation() {
        assert!(matches!(
            request_header(1, DEFAULT_MAX_REQUEST + 1, DEFAULT_MAX_REQUEST),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(checked_len(u64::from(u32::MAX) + 1, usize::MAX).is_err());
        // A response header that declares 4 GiB is refused from its 5 bytes alone.
        let err = decode_response_header([0, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn response_round_trips_and_bad_status_is_refused() {
        let frame = encode_response(Status::RemoteError, b"{}").unwrap();
        let header: [u8; RESPONSE_HEADER_LEN] = frame[..RESPONSE_HEADER_LEN].try_into().unwrap();
        assert_eq!(
            decode_response_header(header).unwrap(),
            ResponseHeader {
                status: Status::RemoteError,
                len: 2
            }
        );
        assert_eq!(&frame[RESPONSE_HEADER_LEN..], b"{}");
        assert_eq!(
            decode_response_header([9, 0, 0, 0, 0]),
            Err(FrameError::BadStatus(9))
        );
    }
}
