//! The node registry as its readers use it: whether a node is up, and which node a viewer should
//! be sent to.
//!
//! The records themselves (name, role, region, URLs, load, last heartbeat) are replicated in
//! [`crate::state::registry`]; this module holds the plain, clock-free rules read on top of them,
//! each in one place.

pub mod steering;

use std::time::Duration;

pub use steering::{client_region, Choice, Reason, SteeringPolicy};

use crate::state::NodeRecord;

/// How often every node heartbeats: its load reaches the registry, and an origin's room leases
/// are renewed (the leader commits every beat it got in one entry per period). Short enough
/// that a dead origin's rooms move within a few seconds (see `state::placement::DEAD_AFTER_MS`).
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// A node whose last heartbeat is this old (or older) is down: shown `down`, not steered to.
pub const NODE_TTL_MS: u64 = 10_000;

/// Whether `node` is up at `now_ms`: its last heartbeat is less than `ttl_ms` old. A heartbeat
/// exactly `ttl_ms` old has expired, as a placement lease does; one stamped after `now_ms`
/// (another origin's clock runs ahead) counts as fresh.
pub fn is_up_within(node: &NodeRecord, now_ms: u64, ttl_ms: u64) -> bool {
    now_ms.saturating_sub(node.last_heartbeat_ms) < ttl_ms
}

/// A random nonzero number of this process, sent with its heartbeats
/// ([`crate::state::Heartbeat::boot`]): a beat of another process than the one drained ends the
/// node's drain.
pub fn process_boot() -> u64 {
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| rand::random::<u64>().max(1))
}

/// [`is_up_within`] the registry's [`NODE_TTL_MS`].
pub fn is_up(node: &NodeRecord, now_ms: u64) -> bool {
    is_up_within(node, now_ms, NODE_TTL_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeLoad, NodeRole};

    #[test]
    fn a_node_is_down_from_exactly_the_ttl_on() {
        let node = NodeRecord {
            name: "o".into(),
            id: 1,
            role: NodeRole::Origin,
            region: "eu".into(),
            http_url: "http://o".into(),
            rtmp_url: None,
            cluster_addr: "o:4433".into(),
            version: "0".into(),
            load: NodeLoad::default(),
            registered_at_ms: 0,
            last_heartbeat_ms: 50_000,
            cert_fingerprint: None,
            draining_since_ms: None,
            boot: 0,
            draining_boot: 0,
        };
        assert!(is_up(&node, 50_000 + NODE_TTL_MS - 1));
        assert!(!is_up(&node, 50_000 + NODE_TTL_MS), "the boundary is down");
        assert!(
            is_up(&node, 40_000),
            "a heartbeat from a clock ahead is fresh"
        );
    }
}
