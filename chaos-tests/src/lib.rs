//! Multi-process cluster harness: runs real `streamhub-origin` and `streamhub-edge` processes on
//! loopback ports, each
//! with its own data dir and log file, and lets a test kill, stop, restart and wipe them while it
//! drives the cluster through its public API and with ffmpeg.
//!
//! Every test takes a seed ([`seed::chaos_seed`], replay with `CHAOS_SEED=<n>`), and a
//! [`cluster::Cluster`] records a fault timeline; when a test panics, the cluster prints the seed,
//! the timeline and the last log lines of every node, and keeps the data dirs for inspection.

pub mod api;
pub mod binary;
pub mod camera;
pub mod cluster;
pub mod hls;
pub mod net;
pub mod netns;
pub mod node;
pub mod poll;
pub mod ports;
pub mod publisher;
pub mod scenarios;
pub mod seed;
pub mod timeline;

pub use api::{Api, Reply};
pub use cluster::Cluster;
pub use node::{Join, Node, NodeConfig, Role};
pub use poll::poll;
pub use publisher::Publisher;
pub use seed::chaos_seed;
pub use timeline::Timeline;

/// Admin login given to every node (`ADMIN_USER`/`ADMIN_PASS`).
pub const ADMIN_USER: &str = "admin";
/// Admin password given to every node.
pub const ADMIN_PASS: &str = "chaos-password-1";
