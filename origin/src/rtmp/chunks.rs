//! A chunk-header watcher that runs ahead of rml_rtmp's deserializer and refuses a message by
//! its *declared* length, before any of its bytes are buffered.
//!
//! rml_rtmp reserves room for a whole message as soon as its first chunk arrives, and holds a
//! whole chunk in its input buffer until it is complete; with the chunk size a peer may set (up
//! to 2 GiB), one unauthenticated connection could make the node buffer 16 MiB per message.
//! [`ChunkWatch`] follows the same chunk stream (formats 0–3, chunk stream ids of 1–3 bytes,
//! extended timestamps, `SetChunkSize`) byte for byte, keeping only headers, and fails on the
//! first header that declares more than the caller's bound. It mirrors rml_rtmp's reading
//! (including its single in-progress message), so that both agree on where chunks start.

use std::collections::HashMap;

/// Chunk size before the peer sets one (RTMP spec).
const INITIAL_CHUNK_SIZE: usize = 128;
/// A 3-byte timestamp field of this value means a 4-byte extended timestamp follows.
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;
/// Message type of `SetChunkSize`.
const SET_CHUNK_SIZE: u8 = 1;
/// Largest chunk size rml_rtmp accepts.
const MAX_CHUNK_SIZE: usize = 0x7FFF_FFFF;

/// Why the watcher stopped the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a message declares {len} bytes, more than the {max} allowed here")]
    TooLarge { len: usize, max: usize },
    #[error("chunk on stream {csid} continues no earlier chunk")]
    NoPreviousChunk { csid: u32 },
    #[error("chunk continues a message past its declared length")]
    Overrun,
    #[error("invalid chunk size {0}")]
    BadChunkSize(u32),
}

/// What the previous chunk on a chunk stream said (formats 1–3 inherit it).
#[derive(Debug, Clone, Copy, Default)]
struct Header {
    message_length: u32,
    type_id: u8,
    timestamp_field: u32,
}

#[derive(Debug)]
enum Stage {
    /// Collecting a chunk's basic and message header (at most 18 bytes).
    Header,
    /// Skipping `left` payload bytes of the current chunk.
    Payload { left: usize },
}

/// Follows an RTMP chunk stream (after the handshake) and checks each declared message length.
#[derive(Debug)]
pub struct ChunkWatch {
    chunk_size: usize,
    previous: HashMap<u32, Header>,
    stage: Stage,
    header: Vec<u8>,
    current: (u32, Header),
    /// Bytes received of the message in progress (one at a time, as rml_rtmp reads them).
    progress: usize,
    /// The first bytes of a `SetChunkSize` message being received.
    set_chunk_size: Vec<u8>,
}

impl Default for ChunkWatch {
    fn default() -> Self {
        Self {
            chunk_size: INITIAL_CHUNK_SIZE,
            previous: HashMap::new(),
            stage: Stage::Header,
            header: Vec::with_capacity(18),
            current: (0, Header::default()),
            progress: 0,
            set_chunk_size: Vec::with_capacity(4),
        }
    }
}

impl ChunkWatch {
    /// Follows `bytes`; fails if any message header in them declares more than `max` bytes.
    /// After an error the watcher must not be fed again (the connection is closed).
    pub fn feed(&mut self, mut bytes: &[u8], max: usize) -> Result<(), ChunkError> {
        while !bytes.is_empty() {
            match self.stage {
                Stage::Header => {
                    let need = self.header_len();
                    let take = need
                        .saturating_sub(self.header.len())
                        .min(bytes.len())
                        .max(1);
                    self.header.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.header.len() >= self.header_len() {
                        self.parse_header(max)?;
                    }
                }
                Stage::Payload { left } => {
                    let take = left.min(bytes.len());
                    if self.current.1.type_id == SET_CHUNK_SIZE && self.set_chunk_size.len() < 4 {
                        let want = (4 - self.set_chunk_size.len()).min(take);
                        self.set_chunk_size.extend_from_slice(&bytes[..want]);
                    }
                    bytes = &bytes[take..];
                    self.stage = Stage::Payload { left: left - take };
                    if left == take {
                        self.end_chunk()?;
                    }
                }
            }
        }
        // A chunk with an empty payload ends as soon as its header is read.
        if let Stage::Payload { left: 0 } = self.stage {
            self.end_chunk()?;
        }
        Ok(())
    }

    /// The chunk size the peer has set.
    #[cfg(test)]
    fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Header bytes needed for the chunk whose first bytes are in `self.header`, as far as
    /// they are known (grows as the basic header and the timestamp field arrive).
    fn header_len(&self) -> usize {
        let Some(&first) = self.header.first() else {
            return 1;
        };
        let basic = match first & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        let message = match first >> 6 {
            0 => 11,
            1 => 7,
            2 => 3,
            _ => 0,
        };
        let mut len = basic + message;
        if self.header.len() < len {
            return len;
        }
        let timestamp_field = if first >> 6 == 3 {
            match self.previous.get(&self.csid(basic)) {
                Some(h) => h.timestamp_field,
                None => return len, // reported by parse_header
            }
        } else {
            read_u24(&self.header[basic..basic + 3])
        };
        if timestamp_field >= EXTENDED_TIMESTAMP {
            len += 4;
        }
        len
    }

    fn csid(&self, basic: usize) -> u32 {
        let h = &self.header;
        match basic {
            2 => u32::from(h[1]) + 64,
            3 => u32::from(h[2]) * 256 + u32::from(h[1]) + 64,
            _ => u32::from(h[0] & 0x3f),
        }
    }

    fn parse_header(&mut self, max: usize) -> Result<(), ChunkError> {
        let first = self.header[0];
        let basic = match first & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        let csid = self.csid(basic);
        let fmt = first >> 6;
        let mut header = if fmt == 0 {
            Header::default()
        } else {
            *self
                .previous
                .get(&csid)
                .ok_or(ChunkError::NoPreviousChunk { csid })?
        };
        let rest = &self.header[basic..];
        if fmt <= 2 {
            header.timestamp_field = read_u24(&rest[0..3]);
        }
        if fmt <= 1 {
            header.message_length = read_u24(&rest[3..6]);
            header.type_id = rest[6];
        }
        let length = header.message_length as usize;
        if length > max {
            return Err(ChunkError::TooLarge { len: length, max });
        }
        if self.progress > length {
            return Err(ChunkError::Overrun);
        }
        // As rml_rtmp reads it: a message longer than a chunk comes in chunk-size pieces.
        let chunk = if length > self.chunk_size {
            (length - self.progress).min(self.chunk_size)
        } else {
            length
        };
        self.header.clear();
        self.current = (csid, header);
        self.stage = Stage::Payload { left: chunk };
        Ok(())
    }

    fn end_chunk(&mut self) -> Result<(), ChunkError> {
        let (csid, header) = self.current;
        let Stage::Payload { .. } = self.stage else {
            return Ok(());
        };
        let chunk = if header.message_length as usize > self.chunk_size {
            (header.message_length as usize - self.progress).min(self.chunk_size)
        } else {
            header.message_length as usize
        };
        self.progress += chunk;
        if self.progress == header.message_length as usize {
            self.progress = 0;
            if header.type_id == SET_CHUNK_SIZE && self.set_chunk_size.len() == 4 {
                let size =
                    u32::from_be_bytes(self.set_chunk_size[..4].try_into().unwrap_or([0; 4]));
                if size as usize > MAX_CHUNK_SIZE || size == 0 {
                    return Err(ChunkError::BadChunkSize(size));
                }
                self.chunk_size = size as usize;
            }
            self.set_chunk_size.clear();
        }
        self.previous.insert(csid, header);
        self.stage = Stage::Header;
        Ok(())
    }
}

fn read_u24(b: &[u8]) -> u32 {
    u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
    use rml_rtmp::messages::MessagePayload;
    use rml_rtmp::time::RtmpTimestamp;

    fn message(type_id: u8, len: usize, ts: u32, stream: u32) -> MessagePayload {
        let mut m = MessagePayload::new();
        m.type_id = type_id;
        m.timestamp = RtmpTimestamp::new(ts);
        m.message_stream_id = stream;
        m.data = Bytes::from(vec![0x5a; len]);
        m
    }

    /// One step of a generated stream: a message, or a chunk-size change.
    #[derive(Debug, Clone)]
    enum Step {
        Message {
            type_id: u8,
            len: usize,
            ts: u32,
            stream: u32,
            uncompressed: bool,
        },
        ChunkSize(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (8u8..=20, 1usize..3000, prop_oneof![0u32..5000, 0xFF_FFF0u32..0x100_0100], 0u32..3, any::<bool>())
                .prop_map(|(type_id, len, ts, stream, uncompressed)| Step::Message { type_id, len, ts, stream, uncompressed }),
            1 => (1u32..5000).prop_map(Step::ChunkSize),
        ]
    }

    /// Serializes `steps` as rml_rtmp's own client writes them.
    fn serialize(steps: &[Step]) -> (Vec<u8>, usize) {
        let mut ser = ChunkSerializer::new();
        let mut out = Vec::new();
        let mut chunk_size = INITIAL_CHUNK_SIZE;
        for s in steps {
            let packet = match s {
                Step::Message {
                    type_id,
                    len,
                    ts,
                    stream,
                    uncompressed,
                } => ser
                    .serialize(&message(*type_id, *len, *ts, *stream), *uncompressed, false)
                    .unwrap(),
                Step::ChunkSize(size) => {
                    chunk_size = *size as usize;
                    ser.set_max_chunk_size(*size, RtmpTimestamp::new(0))
                        .unwrap()
                }
            };
            out.extend_from_slice(&packet.bytes);
        }
        (out, chunk_size)
    }

    proptest! {
        /// Whatever a real serializer writes, split anywhere, the watcher follows it to the end
        /// (same chunk size as rml_rtmp's deserializer) and refuses only what is over the bound.
        #[test]
        fn follows_what_rml_rtmp_writes(
            steps in proptest::collection::vec(step(), 1..40),
            splits in proptest::collection::vec(1usize..700, 1..50),
        ) {
            let (bytes, chunk_size) = serialize(&steps);
            let mut watch = ChunkWatch::default();
            let mut de = ChunkDeserializer::new();
            let mut rest = &bytes[..];
            let mut messages = 0;
            for cut in splits.iter().cycle() {
                if rest.is_empty() { break; }
                let n = (*cut).min(rest.len());
                watch.feed(&rest[..n], 3000).unwrap();
                let mut input = &rest[..n];
                while let Some(m) = de.get_next_message(input).unwrap() {
                    if m.type_id == SET_CHUNK_SIZE {
                        let size = u32::from_be_bytes(m.data[..4].try_into().unwrap());
                        de.set_max_chunk_size(size as usize).unwrap();
                    }
                    messages += 1;
                    input = &[];
                }
                rest = &rest[n..];
            }
            prop_assert_eq!(messages, steps.len());
            prop_assert_eq!(watch.chunk_size(), chunk_size);
            prop_assert!(matches!(watch.stage, Stage::Header) && watch.header.is_empty());
            let biggest = steps.iter().map(|s| match s {
                Step::Message { len, .. } => *len,
                Step::ChunkSize(_) => 4,
            }).max().unwrap();
            let mut strict = ChunkWatch::default();
            let refused = strict.feed(&bytes, biggest.saturating_sub(1));
            let refused_ok = biggest == 0 || matches!(refused, Err(ChunkError::TooLarge { .. }));
            prop_assert!(refused_ok, "{:?}", refused);
        }

        /// Arbitrary bytes never panic the watcher.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = ChunkWatch::default().feed(&bytes, 1 << 20);
        }
    }

    #[test]
    fn a_16_mib_declaration_is_refused_from_its_header_alone() {
        let mut ser = ChunkSerializer::new();
        let big = ser
            .serialize(&message(9, 16 * 1024 * 1024 - 1, 0, 1), true, false)
            .unwrap();
        let mut watch = ChunkWatch::default();
        // The 12 header bytes are enough; none of the payload has been seen.
        assert_eq!(
            watch.feed(&big.bytes[..12], 64 * 1024),
            Err(ChunkError::TooLarge {
                len: 16 * 1024 * 1024 - 1,
                max: 64 * 1024
            })
        );
    }

    #[test]
    fn a_continuation_without_a_start_is_refused() {
        assert_eq!(
            ChunkWatch::default().feed(&[0xc3], 1024),
            Err(ChunkError::NoPreviousChunk { csid: 3 })
        );
    }
}
