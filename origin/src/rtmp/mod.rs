//! RTMP ingest: publishers push to `rtmp://host:1935/live/<streamKey>` and become rooms.
//!
//! The protocol core is sans-IO and tested without sockets: [`session`] (handshake, RTMP
//! messages, ingest policy, deadlines), [`flv`] (tag bodies) and [`tracks`] (tags to the media
//! model). [`serve`] is the tokio driver that moves bytes and time into them and pushes frames to
//! the room through the [`IngestBackend`].

pub mod chunks;
pub mod flv;
mod server;
pub mod session;
pub mod tracks;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use server::{serve, Ingest};

/// What the RTMP server asks of the node when a publisher presents a stream key (the node's
/// [`Admission`](crate::admission::Admission)).
pub trait IngestBackend: Send + Sync + 'static {
    /// Resolves the key and claims the room (a Raft write in a cluster, hence async); Err
    /// refuses the publish with a reason.
    fn start_publish(
        &self,
        stream_key: String,
        remote: std::net::SocketAddr,
    ) -> futures::future::BoxFuture<'_, Result<crate::rooms::Publisher, crate::admission::Refusal>>;
}

/// Ingest connections (RTMP, RTMPS, SRT) one address may hold open by default: room for a
/// studio's encoders behind one NAT, far from the node's bound.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 32;

/// Limits of the RTMP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpConfig {
    /// Concurrent connections (RTMP and RTMPS together); connections over the bound are closed
    /// at once.
    pub max_connections: usize,
    /// Concurrent connections from one address; more are closed at once.
    pub max_per_address: usize,
    /// Time allowed for the RTMP handshake.
    pub handshake_timeout: Duration,
    /// A publisher that sends no media for this long (or does not start publishing within it
    /// after the handshake) is closed.
    pub idle_timeout: Duration,
    /// Largest accepted audio or video message; a larger one closes the connection.
    pub max_frame_bytes: usize,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_per_address: DEFAULT_MAX_PER_ADDRESS,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_frame_bytes: 8 << 20,
        }
    }
}

impl RtmpConfig {
    /// The per-connection limits handed to each [`session::RtmpSession`].
    pub fn session_config(&self) -> session::SessionConfig {
        session::SessionConfig {
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            max_frame_bytes: self.max_frame_bytes,
        }
    }
}

/// Counters of the RTMP listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct RtmpStats {
    /// TCP connections accepted (including those then refused for the connection bound).
    pub connections_total: AtomicU64,
    /// Connections closed at once because `max_connections` (or `max_per_address` from their
    /// address) were open.
    pub connections_refused: AtomicU64,
    /// Connections that sent a bad handshake or did not finish it in time.
    pub handshake_failures: AtomicU64,
    /// Publish attempts refused: unknown key, busy room, wrong app, play request, no key.
    pub publish_refused: AtomicU64,
    /// Bytes read from RTMP peers.
    pub bytes_in: AtomicU64,
}
