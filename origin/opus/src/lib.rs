//! The reference Opus codec (libopus, vendored and compiled by `build.rs`) behind a small safe
//! API: an encoder and a decoder of interleaved `f32` PCM.

use std::ffi::{c_char, c_int, CStr};
use std::ptr::NonNull;

mod ffi {
    use std::ffi::{c_char, c_int, c_uchar};

    /// `OpusEncoder` (opaque).
    #[repr(C)]
    pub struct OpusEncoder {
        _private: [u8; 0],
    }

    /// `OpusDecoder` (opaque).
    #[repr(C)]
    pub struct OpusDecoder {
        _private: [u8; 0],
    }

    pub const OPUS_SET_BITRATE_REQUEST: c_int = 4002;

    extern "C" {
        pub fn opus_encoder_create(
            fs: i32,
            channels: c_int,
            application: c_int,
            error: *mut c_int,
        ) -> *mut OpusEncoder;
        pub fn opus_encoder_destroy(st: *mut OpusEncoder);
        pub fn opus_encoder_ctl(st: *mut OpusEncoder, request: c_int, ...) -> c_int;
        pub fn opus_encode_float(
            st: *mut OpusEncoder,
            pcm: *const f32,
            frame_size: c_int,
            data: *mut c_uchar,
            max_data_bytes: i32,
        ) -> i32;
        pub fn opus_decoder_create(fs: i32, channels: c_int, error: *mut c_int)
            -> *mut OpusDecoder;
        pub fn opus_decoder_destroy(st: *mut OpusDecoder);
        pub fn opus_decode_float(
            st: *mut OpusDecoder,
            data: *const c_uchar,
            len: i32,
            pcm: *mut f32,
            frame_size: c_int,
            decode_fec: c_int,
        ) -> c_int;
        pub fn opus_strerror(error: c_int) -> *const c_char;
        pub fn opus_get_version_string() -> *const c_char;
    }
}

/// A libopus error code with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {message} ({code})")]
pub struct Error {
    /// What was being done.
    pub what: &'static str,
    /// The libopus error code (negative).
    pub code: i32,
    /// `opus_strerror` of the code.
    pub message: String,
}

impl Error {
    fn new(what: &'static str, code: c_int) -> Self {
        // SAFETY: opus_strerror returns a pointer to a static NUL-terminated string for any code.
        let message = unsafe { CStr::from_ptr(ffi::opus_strerror(code)) }
            .to_string_lossy()
            .into_owned();
        Self {
            what,
            code,
            message,
        }
    }
}

/// Mono or stereo (what an Opus stream of a WebRTC room carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    Mono = 1,
    Stereo = 2,
}

impl Channels {
    /// 1 or 2.
    pub fn count(self) -> usize {
        self as usize
    }
}

/// The encoder's tuning (`OPUS_APPLICATION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Application {
    /// Speech.
    Voip = 2048,
    /// Music and mixed content: the best quality for a given bitrate.
    Audio = 2049,
    /// The lowest delay, no speech mode.
    LowDelay = 2051,
}

/// The libopus version string (`libopus 1.6.1`).
pub fn version() -> &'static str {
    // SAFETY: a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::opus_get_version_string() as *const c_char) }
        .to_str()
        .unwrap_or("libopus")
}

/// An Opus encoder of interleaved `f32` PCM.
#[derive(Debug)]
pub struct Encoder {
    st: NonNull<ffi::OpusEncoder>,
    channels: Channels,
}

// SAFETY: an OpusEncoder is plain memory owned by this value; libopus keeps no thread-local or
// shared state for it, and every call takes `&mut self`.
unsafe impl Send for Encoder {}

impl Encoder {
    /// An encoder at `rate` Hz (8000, 12000, 16000, 24000 or 48000).
    pub fn new(rate: u32, channels: Channels, application: Application) -> Result<Self, Error> {
        let mut err: c_int = 0;
        // SAFETY: plain values in, an owned pointer (or null with `err` set) out.
        let st = unsafe {
            ffi::opus_encoder_create(
                rate as i32,
                channels as c_int,
                application as c_int,
                &mut err,
            )
        };
        match NonNull::new(st) {
            Some(st) if err == 0 => Ok(Self { st, channels }),
            _ => Err(Error::new("creating the encoder", err)),
        }
    }

    /// The target bitrate in bits per second.
    pub fn set_bitrate(&mut self, bits_per_second: i32) -> Result<(), Error> {
        // SAFETY: OPUS_SET_BITRATE takes one opus_int32 argument.
        let r = unsafe {
            ffi::opus_encoder_ctl(
                self.st.as_ptr(),
                ffi::OPUS_SET_BITRATE_REQUEST,
                bits_per_second,
            )
        };
        if r < 0 {
            return Err(Error::new("setting the bitrate", r));
        }
        Ok(())
    }

    /// Encodes one frame (`pcm.len()` is the frame's samples per channel times the channels:
    /// 2.5, 5, 10, 20, 40 or 60 ms) into `out`; the packet's length.
    pub fn encode_float(&mut self, pcm: &[f32], out: &mut [u8]) -> Result<usize, Error> {
        let frame = pcm.len() / self.channels.count();
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: `pcm` holds `frame * channels` samples and `out` `max` bytes, as passed.
        let n = unsafe {
            ffi::opus_encode_float(
                self.st.as_ptr(),
                pcm.as_ptr(),
                frame as c_int,
                out.as_mut_ptr(),
                max,
            )
        };
        if n < 0 {
            return Err(Error::new("encoding", n));
        }
        Ok(n as usize)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create, destroyed once.
        unsafe { ffi::opus_encoder_destroy(self.st.as_ptr()) }
    }
}

/// An Opus decoder to interleaved `f32` PCM.
#[derive(Debug)]
pub struct Decoder {
    st: NonNull<ffi::OpusDecoder>,
    channels: Channels,
}

// SAFETY: as for `Encoder`.
unsafe impl Send for Decoder {}

impl Decoder {
    /// A decoder producing `rate` Hz PCM of `channels`.
    pub fn new(rate: u32, channels: Channels) -> Result<Self, Error> {
        let mut err: c_int = 0;
        // SAFETY: plain values in, an owned pointer (or null with `err` set) out.
        let st = unsafe { ffi::opus_decoder_create(rate as i32, channels as c_int, &mut err) };
        match NonNull::new(st) {
            Some(st) if err == 0 => Ok(Self { st, channels }),
            _ => Err(Error::new("creating the decoder", err)),
        }
    }

    /// Decodes one packet into `out` (room for the frame's samples per channel times the
    /// channels); the samples per channel decoded. `fec` decodes the packet's forward error
    /// correction data instead.
    pub fn decode_float(
        &mut self,
        packet: &[u8],
        out: &mut [f32],
        fec: bool,
    ) -> Result<usize, Error> {
        let frame = out.len() / self.channels.count();
        let len = i32::try_from(packet.len()).map_err(|_| Error::new("decoding", -1))?;
        // SAFETY: `packet` holds `len` bytes and `out` room for `frame * channels` samples.
        let n = unsafe {
            ffi::opus_decode_float(
                self.st.as_ptr(),
                packet.as_ptr(),
                len,
                out.as_mut_ptr(),
                frame as c_int,
                c_int::from(fec),
            )
        };
        if n < 0 {
            return Err(Error::new("decoding", n));
        }
        Ok(n as usize)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create, destroyed once.
        unsafe { ffi::opus_decoder_destroy(self.st.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_survives_an_encode_decode_round_trip() {
        assert!(version().starts_with("libopus 1.6"), "{}", version());
        let mut enc = Encoder::new(48_000, Channels::Stereo, Application::Audio).unwrap();
        enc.set_bitrate(96_000).unwrap();
        let mut dec = Decoder::new(48_000, Channels::Stereo).unwrap();
        let tone = |i: usize| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48_000.0).sin();
        let (mut signal, mut noise) = (0f64, 0f64);
        let mut packet = [0u8; 1500];
        let mut out = vec![0f32; 960 * 2];
        for frame in 0..50 {
            let pcm: Vec<f32> = (0..960)
                .flat_map(|i| {
                    let s = 0.5 * tone(frame * 960 + i);
                    [s, s]
                })
                .collect();
            let n = enc.encode_float(&pcm, &mut packet).unwrap();
            assert!(n > 10 && n < 1500);
            assert_eq!(
                dec.decode_float(&packet[..n], &mut out, false).unwrap(),
                960
            );
            // The codec's delay (312 samples at 48 kHz) is compared against the input it delays.
            if frame >= 10 {
                let delayed: Vec<f32> = (0..960)
                    .map(|i| 0.5 * tone(frame * 960 + i - 312))
                    .collect();
                for (i, want) in delayed.iter().enumerate() {
                    let got = out[2 * i];
                    signal += f64::from(want * want);
                    noise += f64::from((got - want) * (got - want));
                }
            }
        }
        let snr = 10.0 * (signal / noise).log10();
        assert!(snr > 20.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn bad_arguments_are_errors_not_crashes() {
        assert!(Encoder::new(44_100, Channels::Mono, Application::Audio).is_err());
        let mut dec = Decoder::new(48_000, Channels::Mono).unwrap();
        let mut out = vec![0f32; 960];
        // A packet whose TOC asks for more samples than `out` holds.
        assert!(dec
            .decode_float(&[0xff, 0xff, 0xff], &mut out, false)
            .is_err());
    }
}
