//! What the AAC -> Opus transcoder of an AAC room costs the origin, per second of audio: 44.1 kHz
//! stereo (decode, band-limited resampling to 48 kHz, Opus encode) side by side with the same
//! tone at 48 kHz (no resampling) as the baseline, in one process. Reported as CPU milliseconds
//! per second of audio (per cent of one core for one room) and the ratio, best of 5 runs.
//!
//! ```sh
//! cargo bench -p streamhub-origin --bench transcode
//! ```

use std::time::Instant;

use streamhub_origin::transcode::AudioTranscode;
use streamhub_shared::media::{CodecConfig, Frame, TrackInfo};
use streamhub_testkit::audio::{aac_tone, Aac};

const SECONDS: u32 = 30;

/// CPU time (ms) to transcode the whole track, best of 5.
fn best_ms(aac: &Aac) -> f64 {
    (0..5)
        .map(|_| {
            let mut t = AudioTranscode::default();
            t.catalog(vec![TrackInfo {
                id: 1,
                timescale: aac.rate,
                codec: CodecConfig::Aac {
                    asc: aac.asc.clone().into(),
                    sample_rate: aac.rate,
                    channels: aac.channels,
                },
            }]);
            let mut out = Vec::new();
            let started = Instant::now();
            for (i, data) in aac.frames.iter().enumerate() {
                let dts = i as i64 * 1024;
                let frame = Frame {
                    track: 1,
                    group: 0,
                    dts,
                    pts: dts,
                    keyframe: true,
                    data: data.clone(),
                };
                t.frame(&frame, &mut out);
                out.clear();
            }
            started.elapsed().as_secs_f64() * 1000.0
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let resampled = aac_tone(1000, 44_100, 2, SECONDS);
    let baseline = aac_tone(1000, 48_000, 2, SECONDS);
    let (r, b) = (best_ms(&resampled), best_ms(&baseline));
    let per_sec = |ms: f64| ms / f64::from(SECONDS);
    println!(
        "transcode 44.1 kHz stereo (with resampling): {:.2} ms CPU per s of audio ({:.2} % of a core)",
        per_sec(r),
        per_sec(r) / 10.0
    );
    println!(
        "transcode 48 kHz stereo (baseline, no resampling): {:.2} ms CPU per s of audio ({:.2} % of a core)",
        per_sec(b),
        per_sec(b) / 10.0
    );
    println!(
        "resampling costs {:.2} ms per s of audio; ratio {:.2}",
        per_sec(r - b),
        r / b
    );
}
