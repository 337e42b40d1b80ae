//! The streamhub origin: ingest, the REST API and tenant state, wired into one node.

pub mod api;
pub mod bootstrap;
pub mod config;
pub mod credentials;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod rooms;
pub mod rtmp;
pub mod rtsp;
pub mod transcode;
pub mod whip;
pub mod wsmjpeg;
