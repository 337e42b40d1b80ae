//! Primitive fields of the relay wire format: big-endian integers and `u16`-length-prefixed
//! UTF-8 strings, read from a complete message body with bounds checks and stream offsets.

use bytes::{BufMut, BytesMut};

use super::{EncodeError, RelayError};

/// Reads fields from a complete message body; every error names the field and its stream offset.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, whose first byte sits at stream offset `base`.
    pub(crate) fn new(buf: &'a [u8], base: u64) -> Self {
        Self { buf, pos: 0, base }
    }

    /// Stream offset of the next unread byte.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], RelayError> {
        if self.remaining() < n {
            return Err(RelayError::Truncated {
                field,
                need: n,
                have: self.remaining(),
                offset: self.offset(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RelayError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    /// A `u8`.
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, RelayError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian `u16`.
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, RelayError> {
        self.array(field).map(u16::from_be_bytes)
    }

    /// A big-endian `u32`.
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, RelayError> {
        self.array(field).map(u32::from_be_bytes)
    }

    /// A big-endian `u64`.
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, RelayError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// A big-endian `i32`.
    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, RelayError> {
        self.array(field).map(i32::from_be_bytes)
    }

    /// A big-endian `i64`.
    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, RelayError> {
        self.array(field).map(i64::from_be_bytes)
    }

    /// A presence byte: 0 or 1, anything else is refused.
    pub(crate) fn flag(&mut self, field: &'static str) -> Result<bool, RelayError> {
        let offset = self.offset();
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(RelayError::InvalidValue {
                field,
                value: v.into(),
                offset,
            }),
        }
    }

    /// A `u16`-length-prefixed UTF-8 string of at most `max` bytes; the length is checked before
    /// anything is copied.
    pub(crate) fn string(&mut self, field: &'static str, max: usize) -> Result<String, RelayError> {
        let offset = self.offset();
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(RelayError::StringTooLong {
                field,
                len,
                max,
                offset,
            });
        }
        let offset = self.offset();
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| RelayError::InvalidUtf8 { field, offset })
    }

    /// Refuses bytes left after the last field of `message`.
    pub(crate) fn finish(self, message: &'static str) -> Result<(), RelayError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(RelayError::TrailingBytes {
                message,
                extra,
                offset: self.offset(),
            }),
        }
    }
}

/// Writes a `u16`-length-prefixed string of at most `max` bytes.
pub(crate) fn put_string(
    buf: &mut BytesMut,
    field: &'static str,
    s: &str,
    max: usize,
) -> Result<(), EncodeError> {
    // `max` is always below u16::MAX, so the prefix cannot overflow once the bound holds.
    let len = u16::try_from(s.len())
        .ok()
        .filter(|&l| usize::from(l) <= max)
        .ok_or(EncodeError::StringTooLong {
            field,
            len: s.len(),
            max,
        })?;
    buf.put_u16(len);
    buf.put_slice(s.as_bytes());
    Ok(())
}

/// Writes a presence byte.
pub(crate) fn put_flag(buf: &mut BytesMut, b: bool) {
    buf.put_u8(u8::from(b));
}
