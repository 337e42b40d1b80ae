//! Added for streamhub (not in upstream srt-tokio 0.4.4): datagrams are parsed without ever
//! panicking.
//!
//! srt-protocol 0.4.4's packet parser panics on some datagrams a stranger can send: a handshake
//! carrying a congestion, filter, group or reject extension (`unimplemented!`), an empty stream
//! id or group extension, an empty SRT control packet of those kinds (reads past the end). The
//! listener parses every datagram of the port in its one task, so one such datagram ended the
//! listener and every connection on it. The listener's handshake state machine panics too on a
//! key-material *response* sent by a caller (`hsv5.rs`): `listener/state.rs` runs each of its
//! steps under `catch_unwind` and drops the input that panicked.
//!
//! [`parse_datagram`] first screens for those shapes (refused as parse errors, which the
//! listener counts and ignores), then parses under `catch_unwind`, so a panic not known here
//! costs one datagram, not the port.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use srt_protocol::packet::{Packet, PacketParseError};

static SCREENED: AtomicU64 = AtomicU64::new(0);
static CAUGHT: AtomicU64 = AtomicU64::new(0);

/// Datagrams refused by the screen since the process started.
pub fn screened_datagrams() -> u64 {
    SCREENED.load(Relaxed)
}

/// Datagrams whose parsing panicked (and were dropped) since the process started: shapes the
/// screen does not know yet.
pub fn caught_panics() -> u64 {
    CAUGHT.load(Relaxed)
}

/// Counts one caught panic (the listener's state machine, see `listener/state.rs`).
pub(crate) fn count_caught() {
    CAUGHT.fetch_add(1, Relaxed);
}

const HEADER: usize = 16;
/// Handshake body: 8 words and a 16-byte peer address.
const HANDSHAKE: usize = 8 * 4 + 16;
const INDUCTION: i32 = 1;
/// Handshake extension blocks the parser takes: HSREQ/HSRSP, KMREQ/KMRSP, stream id.
const HANDSHAKE_EXTENSIONS: std::ops::RangeInclusive<u16> = 1..=4;
const STREAM_ID: u16 = 5;

/// Parses one datagram as srt-protocol does, refusing (as a parse error) what would make it
/// panic.
pub fn parse_datagram(data: &[u8], is_ipv6: bool) -> Result<Packet, PacketParseError> {
    if let Err(e) = screen(data) {
        SCREENED.fetch_add(1, Relaxed);
        return Err(e);
    }
    match catch_unwind(AssertUnwindSafe(|| {
        Packet::parse(&mut Cursor::new(data), is_ipv6)
    })) {
        Ok(parsed) => parsed,
        Err(_) => {
            count_caught();
            Err(PacketParseError::BadSrtExtensionMessage)
        }
    }
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Refuses the datagram shapes known to panic srt-protocol 0.4.4's parser or listener.
fn screen(data: &[u8]) -> Result<(), PacketParseError> {
    if data.len() < HEADER {
        return Err(PacketParseError::NotEnoughData);
    }
    if data[0] & 0x80 == 0 {
        return Ok(()); // data packet: a fixed header, then payload
    }
    let body = &data[HEADER..];
    match u16_at(data, 0) & 0x7fff {
        0 => screen_handshake(body),
        // SRT control: the extension kind sits in the reserved half-word; the string kinds
        // (stream id, congestion, filter) and the group read at least one word.
        0x7fff => match u16_at(data, 2) {
            5..=8 if body.len() < 4 => Err(PacketParseError::NotEnoughData),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn screen_handshake(body: &[u8]) -> Result<(), PacketParseError> {
    if body.len() < HANDSHAKE {
        return Ok(()); // the parser refuses it itself
    }
    let version = u32_at(body, 0);
    let shake_type = u32_at(body, 20) as i32;
    if version != 5 || shake_type == INDUCTION {
        return Ok(()); // no extension blocks are read
    }
    let mut rest = &body[HANDSHAKE..];
    while rest.len() > 4 {
        let kind = u16_at(rest, 0);
        let len = usize::from(u16_at(rest, 2)) * 4;
        rest = &rest[4..];
        if rest.len() < len {
            return Ok(()); // the parser refuses it itself
        }
        match kind {
            k if HANDSHAKE_EXTENSIONS.contains(&k) => {}
            STREAM_ID if len >= 4 => {}
            STREAM_ID => return Err(PacketParseError::NotEnoughData),
            other => return Err(PacketParseError::UnsupportedSrtExtensionType(other)),
        }
        rest = &rest[len..];
    }
    Ok(())
}
