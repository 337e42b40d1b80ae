//! A node's drain: it leaves steering, refuses new WebRTC viewers and tells its players to move
//! (WHEP sessions end, which the player page and the SDK notice within a second; HLS answers
//! carry [`DRAINING_HEADER`]), while it keeps serving what is asked of it until it stops.
//!
//! Two causes, kept apart so that each can end on its own: the cluster (an operator's
//! `POST /api/v1/cluster/nodes/:name/drain`, learned from heartbeat answers and the registry)
//! and the node's own SIGTERM (told to the cluster in its heartbeats).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The response header a draining node adds to what it serves (its value: the node's name).
pub const DRAINING_HEADER: &str = "x-streamhub-draining";

/// Whether this node drains; cheap to clone and to read on every request.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<Flags>);

#[derive(Debug, Default)]
struct Flags {
    by_cluster: AtomicBool,
    by_signal: AtomicBool,
}

impl Draining {
    /// Whether the node drains, for either cause.
    pub fn is_on(&self) -> bool {
        self.0.by_cluster.load(Ordering::Relaxed) || self.0.by_signal.load(Ordering::Relaxed)
    }

    /// Whether the node drains because it got SIGTERM (said in its heartbeats).
    pub fn by_signal(&self) -> bool {
        self.0.by_signal.load(Ordering::Relaxed)
    }

    /// Records what the cluster says; true if the node just began draining.
    pub fn set_by_cluster(&self, on: bool) -> bool {
        let before = self.is_on();
        self.0.by_cluster.store(on, Ordering::Relaxed);
        !before && self.is_on()
    }

    /// The node got SIGTERM; true if it just began draining.
    pub fn set_by_signal(&self) -> bool {
        let before = self.is_on();
        self.0.by_signal.store(true, Ordering::Relaxed);
        !before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_cause_drains_and_each_ends_on_its_own() {
        let d = Draining::default();
        assert!(!d.is_on());
        assert!(d.set_by_cluster(true), "began");
        assert!(!d.set_by_cluster(true), "already on");
        assert!(!d.set_by_cluster(false) && !d.is_on(), "undrained");
        assert!(d.set_by_signal() && d.by_signal());
        // The cluster ending its drain does not end the node's own.
        assert!(!d.set_by_cluster(false));
        assert!(d.is_on());
    }
}
