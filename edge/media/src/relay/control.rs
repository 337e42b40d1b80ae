//! Reading and writing relay control messages on QUIC streams: the async glue around the sans-IO
//! [`ControlDecoder`] of `shared::relay`.

use bytes::BytesMut;
use streamhub_shared::relay::{ControlDecoder, ControlMessage, EncodeError, RelayError};

/// Bytes read from a control stream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Why a control message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The peer sent bytes that are not a valid message.
    #[error("malformed control message: {0}")]
    Relay(#[from] RelayError),
    /// The stream failed.
    #[error("control stream: {0}")]
    Stream(String),
    /// The stream ended inside a message.
    #[error("control stream ended inside a message")]
    Truncated,
    /// The message could not be encoded.
    #[error("cannot encode control message: {0}")]
    Encode(#[from] EncodeError),
}

/// The next message of the stream, or `None` once it ended cleanly between messages. Reads at
/// most one chunk past the message; the decoder bounds every message before it is buffered.
pub async fn read_message(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    decoder: &mut ControlDecoder,
) -> Result<Option<ControlMessage>, ControlError> {
    loop {
        if let Some(msg) = decoder.decode(buf)? {
            return Ok(Some(msg));
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) if buf.is_empty() => return Ok(None),
            Ok(None) => return Err(ControlError::Truncated),
            Err(e) => return Err(ControlError::Stream(e.to_string())),
        }
    }
}

/// Writes one message.
pub async fn write_message(
    send: &mut quinn::SendStream,
    msg: &ControlMessage,
) -> Result<(), ControlError> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf)?;
    send.write_all(&buf)
        .await
        .map_err(|e| ControlError::Stream(e.to_string()))
}
