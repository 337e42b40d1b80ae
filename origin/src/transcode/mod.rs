//! AAC to Opus for the WebRTC viewers of AAC rooms (RTMP, RTSP).
//!
//! Browsers take Opus over WebRTC, not AAC. The origin decodes a room's AAC once (symphonia's
//! AAC-LC decoder), resamples it to 48 kHz (band-limited, `resample`), encodes 20 ms Opus
//! packets (libopus) and publishes them as an extra track of the same room, so every edge only
//! forwards. HLS keeps the AAC track.
//!
//! Sans-IO: [`AudioTranscode`] turns catalogs and frames into catalogs and frames; the ingest
//! task calls it inline (a few hundred microseconds of CPU per 20 ms of audio).

use bytes::Bytes;
use streamhub_opus::{Application, Channels, Encoder};
use streamhub_shared::media::{CodecConfig, Frame, TrackId, TrackInfo};
use symphonia_codec_aac::AacDecoder;
use symphonia_core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia_core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia_core::packet::PacketRef;
use symphonia_core::units::{Duration, Timestamp};

mod resample;

use resample::Resampler;

/// Track id of the transcoded Opus track (ingests use 0 for video and 1 for AAC).
pub const OPUS_TRACK: TrackId = 2;
/// Opus runs on a 48 kHz clock.
pub const OPUS_RATE: u32 = 48_000;
/// Samples per channel in one 20 ms Opus packet.
const OPUS_FRAME: usize = 960;
/// Largest Opus packet we let the encoder write (RFC 6716 allows 1275 bytes per frame).
const MAX_PACKET: usize = 1500;
/// Samples per channel in one AAC-LC access unit.
const AAC_FRAME: i64 = 1024;

/// Why a room's AAC cannot be transcoded (the room keeps its AAC track, WebRTC gets no audio).
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("AAC decoder refused the configuration: {0}")]
    Decoder(String),
    #[error("Opus encoder: {0}")]
    Encoder(#[from] streamhub_opus::Error),
}

/// Keeps a room's catalog and frames in step with its transcoded Opus track: the ingest hands
/// every catalog and frame through it.
#[derive(Debug, Default)]
pub struct AudioTranscode {
    /// The AAC track being transcoded and its configuration.
    source: Option<TrackInfo>,
    transcoder: Option<AacToOpus>,
}

impl AudioTranscode {
    /// The catalog to publish for `tracks`: the same, plus an Opus track when it has an AAC
    /// track the decoder takes (AAC-LC, mono or stereo). A room that already has Opus, or an
    /// AAC it cannot decode (HE-AAC, 5.1), is published as it is.
    pub fn catalog(&mut self, mut tracks: Vec<TrackInfo>) -> Vec<TrackInfo> {
        let has_opus = tracks
            .iter()
            .any(|t| matches!(t.codec, CodecConfig::Opus { .. }) || t.id == OPUS_TRACK);
        let aac = tracks
            .iter()
            .find(|t| matches!(t.codec, CodecConfig::Aac { .. }))
            .filter(|_| !has_opus)
            .cloned();
        if aac != self.source {
            self.transcoder = aac.as_ref().and_then(|t| {
                let CodecConfig::Aac {
                    asc,
                    sample_rate,
                    channels,
                } = &t.codec
                else {
                    return None;
                };
                AacToOpus::new(asc, *sample_rate, *channels)
                    .inspect(|_| tracing::info!("transcoding the room's AAC to Opus for WebRTC"))
                    .inspect_err(|error| {
                        tracing::warn!(%error, "AAC not transcoded: WebRTC viewers get no audio")
                    })
                    .ok()
            });
            self.source = aac;
        }
        if let Some(t) = self.transcoder.as_ref() {
            tracks.push(t.track_info());
        }
        tracks
    }

    /// Appends the Opus frames that `frame` (if it is the transcoded AAC track's) completes.
    pub fn frame(&mut self, frame: &Frame, out: &mut Vec<Frame>) {
        let (Some(source), Some(t)) = (self.source.as_ref(), self.transcoder.as_mut()) else {
            return;
        };
        if frame.track != source.id {
            return;
        }
        let before = t.decode_errors;
        if let Err(error) = t.push(frame, out) {
            tracing::warn!(%error, "Opus encoding failed: WebRTC viewers lose the room's audio");
            self.transcoder = None;
            return;
        }
        // Undecodable AAC becomes silence for WebRTC viewers: say so, without a line a frame.
        let after = t.decode_errors;
        if after > before && (after == 1 || after.is_power_of_two()) {
            tracing::warn!(
                undecodable = after,
                "the room's AAC frames do not decode: WebRTC viewers hear silence for them"
            );
        }
    }

    /// AAC frames of the current source that failed to decode (each became silence).
    pub fn decode_errors(&self) -> u64 {
        self.transcoder.as_ref().map_or(0, |t| t.decode_errors)
    }
}

/// Decodes one AAC track and encodes it to Opus.
pub struct AacToOpus {
    decoder: AacDecoder,
    encoder: Encoder,
    /// Channels in and out (1 or 2).
    channels: usize,
    resampler: Resampler,
    /// The AAC track's rate (its timescale).
    in_rate: u32,
    /// 48 kHz interleaved samples waiting to fill an Opus frame.
    pcm: Vec<f32>,
    /// Timestamp (48 kHz) of `pcm[0]`.
    pcm_pts: i64,
    /// The dts the next AAC frame has if the stream is continuous.
    next_in: Option<i64>,
    decoded: Vec<f32>,
    resampled: Vec<f32>,
    packet: Vec<u8>,
    /// AAC frames that failed to decode (each one is 21 ms of silence for WebRTC viewers).
    pub decode_errors: u64,
}

impl std::fmt::Debug for AacToOpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AacToOpus")
            .field("channels", &self.channels)
            .field("in_rate", &self.in_rate)
            .finish_non_exhaustive()
    }
}

impl AacToOpus {
    /// A transcoder for the AAC track described by `asc` (AudioSpecificConfig).
    pub fn new(asc: &[u8], sample_rate: u32, channels: u8) -> Result<Self, TranscodeError> {
        let mut params = AudioCodecParameters::new();
        params
            .for_codec(CODEC_ID_AAC)
            .with_extra_data(asc.to_vec().into_boxed_slice());
        let decoder = AacDecoder::try_new(&params, &AudioDecoderOptions::default())
            .map_err(|e| TranscodeError::Decoder(e.to_string()))?;
        if sample_rate == 0 {
            return Err(TranscodeError::Decoder("sample rate 0".into()));
        }
        let channels = usize::from(channels.clamp(1, 2));
        let (layout, bitrate) = if channels == 1 {
            (Channels::Mono, 48_000)
        } else {
            (Channels::Stereo, 96_000)
        };
        let mut encoder = Encoder::new(OPUS_RATE, layout, Application::Audio)?;
        encoder.set_bitrate(bitrate)?;
        Ok(Self {
            decoder,
            encoder,
            channels,
            resampler: Resampler::new(sample_rate, OPUS_RATE, channels),
            in_rate: sample_rate,
            pcm: Vec::with_capacity(4 * OPUS_FRAME * channels),
            pcm_pts: 0,
            next_in: None,
            decoded: Vec::new(),
            resampled: Vec::new(),
            packet: vec![0; MAX_PACKET],
            decode_errors: 0,
        })
    }

    /// The Opus track this transcoder publishes.
    pub fn track_info(&self) -> TrackInfo {
        TrackInfo {
            id: OPUS_TRACK,
            timescale: OPUS_RATE,
            codec: CodecConfig::Opus {
                channels: self.channels as u8,
            },
        }
    }

    /// Transcodes one AAC access unit (`dts` in the AAC track's timescale); appends the Opus
    /// packets it completes to `out`.
    pub fn push(&mut self, frame: &Frame, out: &mut Vec<Frame>) -> Result<(), TranscodeError> {
        let gap = self.next_in.map(|n| frame.dts - n);
        match gap {
            Some(0) => {}
            // A short gap (an RTSP camera's lost RTP packet): silence keeps the Opus timeline
            // on the AAC one.
            Some(g) if g > 0 && g <= i64::from(self.in_rate) / 10 => {
                self.decoded.clear();
                self.decoded.resize(g as usize * self.channels, 0.0);
                self.resample_into_pcm();
            }
            // The start, a jump, a long gap or a step back: restart the 48 kHz timeline here.
            _ => {
                self.pcm.clear();
                self.resampler.reset();
                self.pcm_pts = frame.dts * i64::from(OPUS_RATE) / i64::from(self.in_rate);
            }
        }
        self.next_in = Some(frame.dts + AAC_FRAME);
        let packet = PacketRef::new(
            0,
            Timestamp::new(frame.dts),
            Duration::new(AAC_FRAME as u64),
            &frame.data,
        );
        let decoded = match self.decoder.decode_ref(&packet) {
            Ok(buf) => {
                let channels = buf.spec().channels().count();
                buf.copy_to_vec_interleaved(&mut self.decoded);
                remix(&mut self.decoded, channels, self.channels)
            }
            Err(_) => false,
        };
        if !decoded {
            // Keep the timeline: a lost frame becomes silence.
            self.decode_errors += 1;
            self.decoded.clear();
            self.decoded.resize(AAC_FRAME as usize * self.channels, 0.0);
        }
        self.resample_into_pcm();
        let step = OPUS_FRAME * self.channels;
        let mut start = 0;
        while self.pcm.len() - start >= step {
            let n = self
                .encoder
                .encode_float(&self.pcm[start..start + step], &mut self.packet)?;
            out.push(Frame {
                track: OPUS_TRACK,
                group: 0,
                dts: self.pcm_pts,
                pts: self.pcm_pts,
                keyframe: true,
                data: Bytes::copy_from_slice(&self.packet[..n]),
            });
            self.pcm_pts += OPUS_FRAME as i64;
            start += step;
        }
        self.pcm.drain(..start);
        Ok(())
    }
}

impl AacToOpus {
    /// `decoded` (at the AAC rate) onto the end of the 48 kHz `pcm`.
    fn resample_into_pcm(&mut self) {
        self.resampled.clear();
        self.resampler.process(&self.decoded, &mut self.resampled);
        self.pcm.extend_from_slice(&self.resampled);
    }
}

/// Turns interleaved `from`-channel audio into `to` channels (1 or 2) in place: mono is
/// duplicated, stereo averaged. False for a layout it cannot map (the frame is dropped).
fn remix(samples: &mut Vec<f32>, from: usize, to: usize) -> bool {
    match (from, to) {
        _ if from == to => true,
        (1, 2) => {
            let mono = std::mem::take(samples);
            samples.extend(mono.iter().flat_map(|s| [*s, *s]));
            true
        }
        (2, 1) => {
            let stereo = std::mem::take(samples);
            samples.extend(stereo.chunks_exact(2).map(|c| (c[0] + c[1]) / 2.0));
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remix_maps_mono_and_stereo() {
        let mut v = vec![0.5, -0.5];
        assert!(remix(&mut v, 1, 2));
        assert_eq!(v, vec![0.5, 0.5, -0.5, -0.5]);
        let mut v = vec![1.0, 0.0, 0.5, 0.5];
        assert!(remix(&mut v, 2, 1));
        assert_eq!(v, vec![0.5, 0.5]);
        assert!(!remix(&mut v, 6, 2));
    }

    #[test]
    fn refuses_configs_the_decoder_cannot_take() {
        // HE-AAC (object type 5, SBR) and a truncated config.
        assert!(AacToOpus::new(&[0x2b, 0x92, 0x08, 0x00], 24_000, 2).is_err());
        assert!(AacToOpus::new(&[0x11], 48_000, 2).is_err());
    }
}
