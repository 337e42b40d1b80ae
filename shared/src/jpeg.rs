//! JPEG checks for camera ingest: a picture must start with SOI, end with EOI, and carry a frame
//! header (SOF) with its dimensions before its scan. Sans-IO, bounded, never panics on input.

/// Why bytes are not an acceptable JPEG picture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error("empty picture")]
    Empty,
    #[error("{len} bytes exceed the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("does not start with the JPEG SOI marker (FF D8)")]
    NoSoi,
    #[error("does not end with the JPEG EOI marker (FF D9): truncated?")]
    NoEoi,
    #[error("segment at offset {offset} runs past the end")]
    Truncated { offset: usize },
    #[error("byte {byte:#04x} at offset {offset} where a marker was expected")]
    NotAMarker { offset: usize, byte: u8 },
    #[error("no frame header (SOF) before the scan")]
    NoFrameHeader,
    #[error("frame header says {width}x{height}")]
    BadDimensions { width: u16, height: u16 },
}

/// What the frame header says about a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegInfo {
    pub width: u16,
    pub height: u16,
    /// SOF2: progressive (browsers show it; some decoders do not).
    pub progressive: bool,
}

/// Checks `data` is a complete JPEG of at most `max` bytes and reads its dimensions. Walks the
/// marker segments up to the first scan (SOS); the entropy-coded data is not decoded.
pub fn parse(data: &[u8], max: usize) -> Result<JpegInfo, JpegError> {
    if data.is_empty() {
        return Err(JpegError::Empty);
    }
    if data.len() > max {
        return Err(JpegError::TooLarge {
            len: data.len(),
            max,
        });
    }
    if !data.starts_with(&[0xff, 0xd8]) {
        return Err(JpegError::NoSoi);
    }
    if !data.ends_with(&[0xff, 0xd9]) {
        return Err(JpegError::NoEoi);
    }
    let mut at = 2;
    let mut info = None;
    loop {
        // Markers may be preceded by fill bytes (FF FF ...).
        let Some(&byte) = data.get(at) else {
            return Err(JpegError::Truncated { offset: at });
        };
        if byte != 0xff {
            return Err(JpegError::NotAMarker { offset: at, byte });
        }
        while data.get(at) == Some(&0xff) {
            at += 1;
        }
        let Some(&marker) = data.get(at) else {
            return Err(JpegError::Truncated { offset: at });
        };
        at += 1;
        match marker {
            // Standalone markers: no length.
            0x01 | 0xd0..=0xd7 => continue,
            0xd9 => return Err(JpegError::NoFrameHeader),
            _ => {}
        }
        let len = match data.get(at..at + 2) {
            Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
            None => return Err(JpegError::Truncated { offset: at }),
        };
        if len < 2 || at + len > data.len() {
            return Err(JpegError::Truncated { offset: at });
        }
        let segment = &data[at + 2..at + len];
        if matches!(marker, 0xc0..=0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf) {
            if segment.len() < 5 {
                return Err(JpegError::Truncated { offset: at });
            }
            let height = u16::from_be_bytes([segment[1], segment[2]]);
            let width = u16::from_be_bytes([segment[3], segment[4]]);
            if width == 0 || height == 0 {
                return Err(JpegError::BadDimensions { width, height });
            }
            info = Some(JpegInfo {
                width,
                height,
                progressive: marker == 0xc2,
            });
        }
        if marker == 0xda {
            return info.ok_or(JpegError::NoFrameHeader);
        }
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formed JPEG skeleton: SOI, APP0, SOF0 (w x h), SOS, data, EOI.
    pub(crate) fn skeleton(width: u16, height: u16) -> Vec<u8> {
        let mut v = vec![0xff, 0xd8];
        v.extend([0xff, 0xe0, 0x00, 0x04, b'J', b'F']);
        v.extend([0xff, 0xc0, 0x00, 0x0b, 0x08]);
        v.extend(height.to_be_bytes());
        v.extend(width.to_be_bytes());
        v.extend([0x01, 0x01, 0x11, 0x00]);
        v.extend([0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3f, 0x00]);
        v.extend([0x12, 0x34, 0xff, 0x00, 0x56]);
        v.extend([0xff, 0xd9]);
        v
    }

    #[test]
    fn reads_dimensions() {
        let info = parse(&skeleton(640, 480), 1 << 20).unwrap();
        assert_eq!(
            (info.width, info.height, info.progressive),
            (640, 480, false)
        );
    }

    #[test]
    fn refuses_what_is_not_a_whole_jpeg() {
        let good = skeleton(64, 48);
        assert_eq!(parse(&[], 100), Err(JpegError::Empty));
        assert_eq!(parse(b"hello", 100), Err(JpegError::NoSoi));
        assert_eq!(parse(&good[..good.len() - 3], 100), Err(JpegError::NoEoi));
        assert!(matches!(parse(&good, 10), Err(JpegError::TooLarge { .. })));
        let mut no_sof = vec![0xff, 0xd8, 0xff, 0xda, 0x00, 0x02];
        no_sof.extend([0xff, 0xd9]);
        assert_eq!(parse(&no_sof, 100), Err(JpegError::NoFrameHeader));
        let mut zero = good.clone();
        zero[13] = 0;
        zero[14] = 0;
        assert!(matches!(
            parse(&zero, 100),
            Err(JpegError::BadDimensions { .. })
        ));
        // a length pointing past the end
        let mut long = good.clone();
        long[4] = 0x7f;
        assert!(matches!(
            parse(&long, 1000),
            Err(JpegError::Truncated { .. })
        ));
    }

    #[test]
    fn never_panics_on_garbage() {
        let good = skeleton(320, 240);
        let mut x = 0x9e37_79b9_u32;
        for n in 0..20_000 {
            let mut v = good.clone();
            for _ in 0..=(n % 4) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % v.len();
                v[i] = (x >> 8) as u8;
            }
            v.truncate(v.len() - (x as usize % 3));
            let _ = parse(&v, 1 << 20);
        }
    }
}
