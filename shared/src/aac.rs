//! AAC AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1), the parts a packager needs.

/// Why an AudioSpecificConfig was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AacError {
    #[error("AudioSpecificConfig shorter than 2 bytes")]
    Truncated,
    #[error("sampling frequency index {0} is reserved")]
    Frequency(u8),
}

/// The fields of an AudioSpecificConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    pub object_type: u8,
    pub sample_rate: u32,
    pub channels: u8,
}

const RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

impl AudioSpecificConfig {
    /// Parses the first bytes of an ASC (no explicit-frequency or extended object types).
    pub fn parse(b: &[u8]) -> Result<Self, AacError> {
        if b.len() < 2 {
            return Err(AacError::Truncated);
        }
        let object_type = b[0] >> 3;
        let freq_index = ((b[0] & 0x07) << 1) | (b[1] >> 7);
        let channels = (b[1] >> 3) & 0x0f;
        let sample_rate = *RATES
            .get(freq_index as usize)
            .ok_or(AacError::Frequency(freq_index))?;
        Ok(Self {
            object_type,
            sample_rate,
            channels,
        })
    }

    /// The RFC 6381 codec string, e.g. `mp4a.40.2`.
    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lc_44100_stereo() {
        let c = AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!(c.object_type, 2);
        assert_eq!(c.sample_rate, 44100);
        assert_eq!(c.channels, 2);
        assert_eq!(c.codec_string(), "mp4a.40.2");
    }

    #[test]
    fn refuses_short_and_reserved() {
        assert_eq!(
            AudioSpecificConfig::parse(&[0x12]),
            Err(AacError::Truncated)
        );
        assert_eq!(
            AudioSpecificConfig::parse(&[0x17, 0x90]),
            Err(AacError::Frequency(15))
        );
    }
}
