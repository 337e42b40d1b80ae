//! WebSocket-MJPEG ingest for ESP32-class cameras: `GET /ingest/ws?app=&room=` upgraded to a
//! WebSocket, authenticated with a `wsk_…` key (`Authorization: Bearer`, or `?key=` for device
//! libraries that cannot set headers), one JPEG per binary message.
//!
//! [`gate`] is the sans-IO policy (validation, rate limit, timestamps, catalog); [`server`] the
//! axum handler and connection task that feed it bytes and time.

pub mod gate;
pub mod server;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

pub use server::upgrade;

/// Limits of WebSocket-MJPEG ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// Largest picture accepted; bigger ones are dropped (and counted), the connection stays.
    pub max_frame_bytes: usize,
    /// Largest WebSocket message read at all; a bigger one closes the connection (1009).
    pub max_message_bytes: usize,
    /// Pictures per second accepted (a token bucket with one second of burst); excess dropped.
    pub max_fps: u32,
    /// How often the server pings the device.
    pub ping_every: Duration,
    /// A device that sends nothing (not even a pong) for this long is closed; the room ends.
    pub idle_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 4 << 20,
            max_message_bytes: 8 << 20,
            max_fps: 30,
            ping_every: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
        }
    }
}

/// WebSocket-MJPEG ingest's limits and counters, as the handler receives them.
#[derive(Debug, Default)]
pub struct WsIngest {
    pub config: WsConfig,
    pub stats: Arc<WsStats>,
}

/// Counters of WebSocket-MJPEG ingest, exported as metrics.
#[derive(Debug, Default)]
pub struct WsStats {
    /// Devices connected (upgrades accepted).
    pub connections: AtomicU64,
    /// Upgrades refused (no key, wrong key, room busy).
    pub refused: AtomicU64,
    /// Pictures accepted into rooms.
    pub frames_in: AtomicU64,
    /// Messages dropped as invalid (text, not a JPEG, truncated, too large).
    pub frames_invalid: AtomicU64,
    /// Pictures dropped by the rate limit.
    pub frames_rate_limited: AtomicU64,
    /// Bytes of accepted pictures.
    pub bytes_in: AtomicU64,
    /// Devices closed for silence.
    pub idle_closed: AtomicU64,
}
