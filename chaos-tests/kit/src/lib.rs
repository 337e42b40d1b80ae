//! The one test kit of the workspace, used by every crate's integration tests, the chaos
//! scenarios and the benchmarks. It knows the product only from the outside: it runs the real
//! binaries ([`binary`], [`node`], [`single`]) and drives them with real clients ([`api`],
//! [`publisher`] (ffmpeg), [`hls`] (HTTP + ffprobe), [`camera`] (WebSocket-MJPEG, RTSP),
//! [`whep`] (a WebRTC viewer on the `rtc` crate)), [`audio`] (AAC made by ffmpeg), [`s3`] (a real
//! S3 server, `s3s-fs`).
//!
//! Tests wait with [`poll`] (never a bare sleep), take ports from [`ports`] (never two alike,
//! across the test processes of one machine), and state what they need with [`require`]: a test
//! whose feature cannot run here fails under CI instead of passing without having run.

pub mod api;
pub mod audio;
pub mod binary;
pub mod camera;
pub mod encoder;
pub mod hls;
pub mod node;
pub mod poll;
pub mod ports;
pub mod prom;
pub mod publisher;
pub mod require;
pub mod s3;
pub mod single;
pub mod timeline;
pub mod webhook;
pub mod whep;

pub use api::{Api, Reply};
pub use node::{Join, Node, NodeConfig, Role};
pub use poll::poll;
pub use publisher::Publisher;
pub use require::require;
pub use single::Origin;
pub use timeline::Timeline;

/// Admin login given to every node the kit starts (`ADMIN_USER`/`ADMIN_PASS`).
pub const ADMIN_USER: &str = "admin";
/// Admin password given to every node the kit starts.
pub const ADMIN_PASS: &str = "chaos-password-1";
