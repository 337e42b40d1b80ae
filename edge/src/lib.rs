//! streamhub playback side: HLS packaging (CMAF) and serving.

pub mod hls;
