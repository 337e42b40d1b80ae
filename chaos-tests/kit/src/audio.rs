//! Real encoder output for the audio tests and benchmarks: ffmpeg encodes a tone to AAC-LC.

use std::process::Command;

use bytes::Bytes;

/// One AAC track as ffmpeg wrote it: its AudioSpecificConfig and raw access units.
#[derive(Debug, Clone)]
pub struct Aac {
    pub asc: Vec<u8>,
    pub rate: u32,
    pub channels: u8,
    pub frames: Vec<Bytes>,
}

/// Encodes `seconds` of a sine at `freq` Hz to AAC-LC (ADTS) with ffmpeg and splits the frames.
pub fn aac_tone(freq: u32, rate: u32, channels: u8, seconds: u32) -> Aac {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tone.aac");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!("sine=frequency={freq}:sample_rate={rate}"))
        .args(["-t", &seconds.to_string(), "-ac", &channels.to_string()])
        .args(["-c:a", "aac", "-b:a", "128k", "-f", "adts"])
        .arg(&path)
        .status()
        .expect("ffmpeg (installed by .ci/run)");
    assert!(status.success(), "ffmpeg made no AAC");
    let data = std::fs::read(&path).expect("the AAC file");
    let mut frames = Vec::new();
    let mut asc = Vec::new();
    let mut at = 0;
    while at + 7 <= data.len() {
        let h = &data[at..at + 7];
        assert_eq!((h[0], h[1] & 0xf0), (0xff, 0xf0), "ADTS sync at {at}");
        let protection_absent = h[1] & 1 == 1;
        let object_type = (h[2] >> 6) + 1;
        let freq_index = (h[2] >> 2) & 0x0f;
        let chan = ((h[2] & 1) << 2) | (h[3] >> 6);
        let len = (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
        let head = if protection_absent { 7 } else { 9 };
        asc = vec![
            (object_type << 3) | (freq_index >> 1),
            ((freq_index & 1) << 7) | (chan << 3),
        ];
        frames.push(Bytes::copy_from_slice(&data[at + head..at + len]));
        at += len;
    }
    Aac {
        asc,
        rate,
        channels,
        frames,
    }
}
