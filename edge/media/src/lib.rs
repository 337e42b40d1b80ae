//! The streamhub media plane, used by both node binaries: an origin serves its rooms with it and
//! an edge serves the rooms it pulls.
//!
//! - [`relay`]: the QUIC relay between nodes (origins serve rooms, edges subscribe to them);
//! - [`hls`]: CMAF/LL-HLS packaging and serving; [`mjpeg`]: MJPEG fan-out;
//! - [`webrtc`]: the one UDP media socket, WHIP ingest sessions and WHEP playback;
//! - [`play`]: viewer steering and the player and publish pages; [`access`]: viewer tokens;
//! - [`metrics`]: playback metrics; [`http`]: the HTTP conventions of every node;
//! - [`node`]: the skeleton both binaries share (settings, process setup, health, metrics).

pub mod access;
pub mod drain;
pub mod hls;
pub mod http;
pub mod metrics;
pub mod mjpeg;
pub mod node;
pub mod play;
pub mod relay;
pub mod wait;
pub mod web;
pub mod webrtc;
