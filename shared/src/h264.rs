//! H.264 bitstream helpers: the AVCDecoderConfigurationRecord and the SPS fields we need.

use bytes::Bytes;

/// Why an H.264 structure could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H264Error {
    #[error("AVCDecoderConfigurationRecord truncated at byte {at}")]
    Truncated { at: usize },
    #[error("AVCDecoderConfigurationRecord version {0}, expected 1")]
    Version(u8),
    #[error("no SPS in the decoder configuration")]
    NoSps,
    #[error("SPS could not be parsed: {0}")]
    Sps(&'static str),
}

/// A parsed AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub profile: u8,
    pub compatibility: u8,
    pub level: u8,
    /// Bytes per NALU length prefix (1, 2 or 4).
    pub nal_length_size: u8,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

impl AvcConfig {
    /// Parses a record as found in FLV/MP4 `avcC`.
    pub fn parse(b: &[u8]) -> Result<Self, H264Error> {
        let get = |i: usize| b.get(i).copied().ok_or(H264Error::Truncated { at: i });
        if get(0)? != 1 {
            return Err(H264Error::Version(get(0)?));
        }
        let profile = get(1)?;
        let compatibility = get(2)?;
        let level = get(3)?;
        let nal_length_size = (get(4)? & 0x03) + 1;
        let mut at = 5;
        let read_list = |count: usize, at: &mut usize| -> Result<Vec<Bytes>, H264Error> {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let len = u16::from_be_bytes([get(*at)?, get(*at + 1)?]) as usize;
                let start = *at + 2;
                let data = b
                    .get(start..start + len)
                    .ok_or(H264Error::Truncated { at: start })?;
                out.push(Bytes::copy_from_slice(data));
                *at = start + len;
            }
            Ok(out)
        };
        let n_sps = (get(at)? & 0x1f) as usize;
        at += 1;
        let sps = read_list(n_sps, &mut at)?;
        let n_pps = get(at)? as usize;
        at += 1;
        let pps = read_list(n_pps, &mut at)?;
        if sps.is_empty() {
            return Err(H264Error::NoSps);
        }
        Ok(Self {
            profile,
            compatibility,
            level,
            nal_length_size,
            sps,
            pps,
        })
    }

    /// The RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile, self.compatibility, self.level
        )
    }

    /// Picture size from the first SPS.
    pub fn dimensions(&self) -> Result<(u16, u16), H264Error> {
        sps_dimensions(&self.sps[0])
    }
}

/// Reads bits MSB-first from an RBSP (emulation-prevention bytes removed).
struct BitReader {
    data: Vec<u8>,
    pos: usize,
}

impl BitReader {
    fn new(nal: &[u8]) -> Self {
        // Strip emulation prevention (00 00 03 -> 00 00).
        let mut data = Vec::with_capacity(nal.len());
        let mut zeros = 0;
        for &byte in nal {
            if zeros >= 2 && byte == 3 {
                zeros = 0;
                continue;
            }
            zeros = if byte == 0 { zeros + 1 } else { 0 };
            data.push(byte);
        }
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Result<u32, H264Error> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or(H264Error::Sps("truncated"))?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(bit as u32)
    }

    fn bits(&mut self, n: u32) -> Result<u32, H264Error> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    fn ue(&mut self) -> Result<u32, H264Error> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(H264Error::Sps("exp-golomb too long"));
            }
        }
        Ok(((1u64 << zeros) - 1 + self.bits(zeros)? as u64) as u32)
    }

    fn se(&mut self) -> Result<i32, H264Error> {
        let k = self.ue()? as i64;
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) } as i32)
    }
}

fn skip_scaling_list(r: &mut BitReader, size: usize) -> Result<(), H264Error> {
    let (mut last, mut next) = (8i32, 8i32);
    for _ in 0..size {
        if next != 0 {
            next = (last + r.se()? + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Width and height (after cropping) from an SPS NAL unit (with its 1-byte header).
pub fn sps_dimensions(sps: &[u8]) -> Result<(u16, u16), H264Error> {
    let mut r = BitReader::new(sps.get(1..).ok_or(H264Error::Sps("empty"))?);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags + level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?;
        }
        r.ue()?;
        r.ue()?;
        r.bit()?;
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return Err(H264Error::Sps("too many ref frames in cycle"));
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?;
    let width_mbs = r.ue()? + 1;
    let height_map_units = r.ue()? + 1;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?;
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.bit()? == 1 {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let (crop_x, crop_y) = match chroma_format_idc {
        0 => (1, 2 - frame_mbs_only),
        1 => (2, 2 * (2 - frame_mbs_only)),
        2 => (2, 2 - frame_mbs_only),
        _ => (1, 2 - frame_mbs_only),
    };
    let w = (width_mbs * 16).saturating_sub(crop_x * (cl + cr));
    let h = ((2 - frame_mbs_only) * height_map_units * 16).saturating_sub(crop_y * (ct + cb));
    if w == 0 || h == 0 || w > 16384 || h > 16384 {
        return Err(H264Error::Sps("implausible size"));
    }
    Ok((w as u16, h as u16))
}

/// Iterates the NAL units of an AVCC (length-prefixed) access unit; stops at the first bad length.
pub fn avcc_nalus(mut data: &[u8], nal_length_size: u8) -> impl Iterator<Item = &[u8]> {
    let n = nal_length_size as usize;
    std::iter::from_fn(move || {
        if data.len() < n || n == 0 || n > 4 {
            return None;
        }
        let len = data[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        let nal = data.get(n..n + len)?;
        data = &data[n + len..];
        Some(nal)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // x264 640x360 High profile record (ffmpeg -f lavfi -i testsrc -pix_fmt yuv420p -c:v libx264).
    const AVCC_640X360: &[u8] = &[
        0x01, 0x64, 0x00, 0x1e, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40,
        0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32,
        0x0f, 0x16, 0x2d, 0x96, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xf8,
        0xf8, 0x00,
    ];

    // x264 640x360 High 4:4:4 record (chroma_format_idc 3 path of the SPS parser).
    const AVCC_444: &[u8] = &[
        0x01, 0xf4, 0x00, 0x1e, 0xff, 0xe1, 0x00, 0x1b, 0x67, 0xf4, 0x00, 0x1e, 0x91, 0x9b, 0x28,
        0x14, 0x05, 0xff, 0x13, 0x80, 0x88, 0x00, 0x00, 0x03, 0x00, 0x08, 0x00, 0x00, 0x03, 0x01,
        0x90, 0x78, 0xb1, 0x6c, 0xb0, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xc4, 0x48, 0x44, 0xff,
        0xf8, 0xf8, 0x00,
    ];

    #[test]
    fn parses_high_444_dimensions() {
        let c = AvcConfig::parse(AVCC_444).unwrap();
        assert_eq!(c.dimensions().unwrap(), (640, 360));
    }

    #[test]
    fn parses_record_and_dimensions() {
        let c = AvcConfig::parse(AVCC_640X360).unwrap();
        assert_eq!(c.profile, 0x64);
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.sps.len(), 1);
        assert_eq!(c.pps.len(), 1);
        assert_eq!(c.codec_string(), "avc1.64001e");
        assert_eq!(c.dimensions().unwrap(), (640, 360));
    }

    #[test]
    fn truncated_record_is_an_error() {
        // The record ends with the PPS; the trailing bytes are the High-profile extension.
        for n in 0..43 {
            assert!(AvcConfig::parse(&AVCC_640X360[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn splits_avcc_nalus() {
        let au = [0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x06, 0, 0, 0, 9, 1];
        let nals: Vec<&[u8]> = avcc_nalus(&au, 4).collect();
        assert_eq!(nals, vec![&[0x65, 1][..], &[0x06][..]]);
    }
}
