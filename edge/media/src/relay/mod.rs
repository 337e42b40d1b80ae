//! The origin -> edge track relay over QUIC (wire format in `shared::relay`).
//!
//! - [`serve`]: the side that holds rooms answers subscriptions and sends one stream per group.
//! - [`subscribe`]: the side that wants a room subscribes once and feeds a local `RoomMedia`.
//! - [`reorder`]: puts a subscription's group streams back in order (sans-IO).

pub mod control;
pub mod reorder;
pub mod serve;
pub mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

pub use serve::{RelayServer, RelaySource};
pub use subscribe::{RelayClient, SubscribeError, Subscription};

/// Counters of both sides of the relay, exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Subscriptions accepted (serving side).
    pub subscribes: AtomicU64,
    /// Subscriptions being served now.
    pub served: AtomicU64,
    /// Groups sent completely.
    pub groups_sent: AtomicU64,
    /// Groups reset because a subscriber fell behind.
    pub groups_dropped: AtomicU64,
    /// Relay bytes sent (headers and payloads).
    pub bytes_out: AtomicU64,
    /// Malformed control messages or group streams received (both sides).
    pub malformed: AtomicU64,
    /// Subscriptions opened (subscribing side).
    pub subscribed: AtomicU64,
    /// Subscriptions open now (subscribing side).
    pub active: AtomicU64,
    /// Relay bytes received.
    pub bytes_in: AtomicU64,
    /// Group streams received.
    pub groups_received: AtomicU64,
    /// Groups given up on by the reorderer (lost, reset or stuck).
    pub groups_lost: AtomicU64,
    /// Keyframe requests received from subscribers (serving side).
    pub keyframe_requests: AtomicU64,
    /// Keyframe requests sent to origins for local viewers (subscribing side).
    pub keyframe_requests_sent: AtomicU64,
    /// Group streams for no known subscription (stopped at once).
    pub unknown_streams: AtomicU64,
    /// Bytes sent per subscribing peer: a std Mutex held for one map lookup.
    per_peer: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

/// Peers tracked by name in [`RelayStats::per_peer_bytes`]; more share one counter.
const MAX_TRACKED_PEERS: usize = 1024;

impl RelayStats {
    /// The byte counter of `peer` (shared by every subscription of that peer).
    pub fn peer_counter(&self, peer: &str) -> Arc<AtomicU64> {
        let mut map = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(peer) {
            return c.clone();
        }
        let key = if map.len() < MAX_TRACKED_PEERS {
            peer
        } else {
            "other"
        };
        map.entry(key.to_string()).or_default().clone()
    }

    /// Bytes sent to each subscribing peer so far.
    pub fn per_peer_bytes(&self) -> Vec<(String, u64)> {
        let map = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, u64)> = map
            .iter()
            .map(|(k, v)| (k.clone(), v.load(std::sync::atomic::Ordering::Relaxed)))
            .collect();
        out.sort();
        out
    }
}
