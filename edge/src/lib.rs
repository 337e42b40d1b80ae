//! streamhub playback side: the relay from origins, HLS/LL-HLS packaging and serving, MJPEG
//! fan-out, viewer steering, and the edge node that wires them.

pub mod access;
pub mod config;
pub mod envelope;
pub mod hls;
pub mod join;
pub mod load;
pub mod metrics;
pub mod mjpeg;
pub mod node;
pub mod origins;
pub mod play;
pub mod pull;
pub mod relay;
mod wait;
pub mod webrtc;
