//! streamhub playback side: the relay from origins, HLS/LL-HLS packaging and serving, MJPEG
//! fan-out, and the edge node that wires them.

pub mod hls;
pub mod relay;
