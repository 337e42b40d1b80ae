//! Band-limited resampling of decoded audio to Opus's 48 kHz, for any chunk size: a windowed-sinc
//! resampler (rubato's `SincFixedIn`) fed fixed chunks from a carry buffer.
//!
//! A linear interpolator (what this replaced) has no low-pass: downsampling 88.2 or 96 kHz
//! aliases, and upsampling 44.1 kHz leaves images above 22 kHz. The sinc filter cuts below the
//! lower Nyquist frequency. rubato starts its filter centred on input sample 0 (half the filter
//! before it, in zeros), so output sample 0 is input sample 0 and the caller's timeline needs no
//! shift (a test pins this with an impulse). 48 kHz input passes through untouched.

use rubato::{
    calculate_cutoff, Resampler as _, SincFixedIn, SincInterpolationParameters,
    SincInterpolationType, WindowFunction,
};

/// Input frames per resampler call: one AAC-LC access unit, so steady input never waits.
const CHUNK: usize = 1024;
/// Taps of the sinc filter: a cut-off close to the lower Nyquist frequency at modest CPU.
const SINC_LEN: usize = 128;

/// Resamples interleaved `f32` audio from one rate to another.
pub struct Resampler {
    inner: Option<Sinc>,
    channels: usize,
}

/// The sinc resampler with its planar buffers.
struct Sinc {
    resampler: SincFixedIn<f32>,
    /// Input frames waiting for a whole chunk, per channel.
    pending: Vec<Vec<f32>>,
    input: Vec<Vec<f32>>,
    output: Vec<Vec<f32>>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("channels", &self.channels)
            .field("passthrough", &self.inner.is_none())
            .finish()
    }
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz of `channels` interleaved channels.
    pub fn new(from: u32, to: u32, channels: usize) -> Self {
        let channels = channels.max(1);
        let inner = (from != to && from > 0).then(|| {
            let window = WindowFunction::BlackmanHarris2;
            let params = SincInterpolationParameters {
                sinc_len: SINC_LEN,
                f_cutoff: calculate_cutoff(SINC_LEN, window),
                oversampling_factor: 128,
                interpolation: SincInterpolationType::Linear,
                window,
            };
            let ratio = f64::from(to) / f64::from(from);
            let resampler = SincFixedIn::new(ratio, 1.0, params, CHUNK, channels)
                .expect("a positive ratio, a chunk and channels are valid");
            Sinc {
                input: resampler.input_buffer_allocate(true),
                output: resampler.output_buffer_allocate(true),
                resampler,
                pending: vec![Vec::with_capacity(2 * CHUNK); channels],
            }
        });
        Self { inner, channels }
    }

    /// Forgets the past: the next input starts a new timeline (a jump or a gap in the source).
    pub fn reset(&mut self) {
        if let Some(s) = self.inner.as_mut() {
            s.resampler.reset();
            s.pending.iter_mut().for_each(Vec::clear);
        }
    }

    /// Appends `input` (interleaved) resampled to `out` (interleaved). Up to a chunk of input
    /// may be held until the next call.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        let ch = self.channels;
        let Some(s) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return;
        };
        for frame in input.chunks_exact(ch) {
            for (c, sample) in frame.iter().enumerate() {
                s.pending[c].push(*sample);
            }
        }
        while s.pending[0].len() >= s.resampler.input_frames_next() {
            let n = s.resampler.input_frames_next();
            for (buf, pending) in s.input.iter_mut().zip(s.pending.iter_mut()) {
                buf.clear();
                buf.extend(pending.drain(..n));
            }
            let Ok((_, written)) = s
                .resampler
                .process_into_buffer(&s.input, &mut s.output, None)
            else {
                // Buffers are sized by rubato itself; nothing else can fail.
                return;
            };
            for i in 0..written {
                out.extend(s.output.iter().map(|c| c[i]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, frames: usize, channels: usize) -> Vec<f32> {
        (0..frames)
            .flat_map(|i| {
                let v = (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin();
                std::iter::repeat_n(0.5 * v as f32, channels)
            })
            .collect()
    }

    /// Feeds `input` in chunks of the sizes in `sizes` (cycled).
    fn feed(r: &mut Resampler, input: &[f32], channels: usize, sizes: &[usize]) -> Vec<f32> {
        let mut out = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at >= input.len() {
                break;
            }
            let end = (at + size * channels).min(input.len());
            r.process(&input[at..end], &mut out);
            at = end;
        }
        out
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_timeline_in_any_chunk_sizes() {
        let input = sine(1000.0, 44_100, 44_100, 2);
        let mut r = Resampler::new(44_100, 48_000, 2);
        let out = feed(&mut r, &input, 2, &[1024, 17, 1500, 1024, 333]);
        // Everything but the last (held) chunk came out: 48 kHz frames for 44.1 kHz ones.
        let frames = out.len() / 2;
        assert!(
            (48_000 - 2 * 1115..=48_000).contains(&frames),
            "{frames} frames"
        );
        // Sample k is the tone at time k / 48 kHz: no delay.
        let want = sine(1000.0, 48_000, frames, 2);
        let (mut signal, mut noise) = (0f64, 0f64);
        for (got, want) in out.iter().zip(&want).skip(2 * 512) {
            signal += f64::from(want * want);
            noise += f64::from((got - want) * (got - want));
        }
        let snr = 10.0 * (signal / noise).log10();
        assert!(snr > 30.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn an_impulse_comes_out_at_its_time() {
        let mut input = vec![0f32; 44_100];
        input[2000] = 1.0;
        let mut r = Resampler::new(44_100, 48_000, 1);
        let out = feed(&mut r, &input, 1, &[1024]);
        let peak = out
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap();
        // 2000 / 44.1 kHz = 2176.9 / 48 kHz.
        assert!((2176..=2178).contains(&peak), "peak at {peak}");
    }

    #[test]
    fn what_is_above_the_output_band_is_cut_not_folded() {
        // 30 kHz at 96 kHz: above 48 kHz's Nyquist frequency. A linear interpolator folds it
        // to 18 kHz; the sinc filter leaves almost nothing.
        let input = sine(30_000.0, 96_000, 96_000, 1);
        let mut r = Resampler::new(96_000, 48_000, 1);
        let out = feed(&mut r, &input, 1, &[1024]);
        let energy = out.iter().skip(512).map(|s| s * s).sum::<f32>() / out.len() as f32;
        assert!(energy < 1e-5, "folded energy {energy}");
    }

    #[test]
    fn the_same_rate_passes_through_and_reset_starts_a_new_timeline() {
        let mut same = Resampler::new(48_000, 48_000, 2);
        let mut out = Vec::new();
        same.process(&[0.25, -0.25], &mut out);
        assert_eq!(out, [0.25, -0.25]);
        let input = sine(440.0, 44_100, 4096, 1);
        let mut r = Resampler::new(44_100, 48_000, 1);
        let first = feed(&mut r, &input, 1, &[1024]);
        r.reset();
        let again = feed(&mut r, &input, 1, &[1024]);
        assert_eq!(
            first, again,
            "after a reset the same input gives the same output"
        );
    }
}
