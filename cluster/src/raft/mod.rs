//! The Raft group that replicates the tenant state: openraft wired as storage + network + node.
//!
//! - [`log_store`]: the Raft log and vote in sled, flushed before a write is acknowledged.
//! - [`state_machine`]: the [`ClusterState`](crate::state::ClusterState) replica and its snapshots.
//! - [`network`]: Raft RPCs over the cluster QUIC [`Endpoint`](crate::transport::Endpoint).
//! - [`node`]: [`RaftNode`], the handle the rest of the process uses; writes and membership
//!   changes are routed to the leader by the private `leader` module, and a voter campaigns only
//!   when a quorum would take part (the private `prevote` module).

// openraft's `StorageError` (224 bytes) is the error type its storage traits require, and its
// `Fatal` carries it; boxing it in our helpers only to unbox it at the trait boundary adds nothing
// on paths that run once per batch, so the size lint is off for this module.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

use std::io::Cursor;

mod leader;
pub mod log_store;
pub mod network;
pub mod node;
mod prevote;
pub mod state_machine;

pub use log_store::SledLogStore;
pub use network::{QuicNetworkFactory, QuicPeer};
pub use node::{
    default_config, MembershipError, RaftError, RaftNode, RaftStatus, Start, WriteError,
};
pub use state_machine::{SledStateMachine, StateMachineData};

openraft::declare_raft_types!(
    /// The openraft type configuration of the streamhub control plane.
    pub TypeConfig:
        D = crate::state::Command,
        R = crate::state::CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The id of a Raft node (a voter of the control plane).
pub type NodeId = u64;

/// A log id of this group.
pub type LogId = openraft::LogId<NodeId>;

/// The storage error of this group.
pub type StorageError = openraft::StorageError<NodeId>;

/// A claim on the sled database held by every storage handle given to openraft.
///
/// [`RaftNode::shutdown`] waits until every lease is dropped: only then has sled flushed and
/// released the lock on the data dir, so the same process can reopen it.
#[derive(Debug, Clone)]
pub(crate) struct StorageLease(#[allow(dead_code)] tokio::sync::watch::Receiver<()>);

/// A stable Raft node id derived from a node name: FNV-1a 64 of its UTF-8 bytes.
///
/// Every process computes the same id for the same name, so the name is the only thing an operator
/// configures. Never returns 0, which openraft tooling often reads as "no node".
pub fn node_id_from_name(name: &str) -> NodeId {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = name
        .as_bytes()
        .iter()
        .fold(OFFSET_BASIS, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    if hash == 0 {
        1
    } else {
        hash
    }
}

/// Opens the sled database at `path` in a test that reopens one it just closed: sled releases
/// its file lock from a background thread after the last handle drops, so a reopen right after
/// can find the lock still held for a moment (a node process never reopens its own).
#[cfg(test)]
pub(crate) fn reopen_sled(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e)
                if std::time::Instant::now() < deadline
                    && e.to_string().contains("could not acquire lock") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("open sled: {e:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_stable_and_non_zero() {
        // Reference values of FNV-1a 64.
        assert_eq!(node_id_from_name(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(node_id_from_name("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(node_id_from_name("origin-1"), node_id_from_name("origin-1"));
        assert_ne!(node_id_from_name("origin-1"), node_id_from_name("origin-2"));
        assert_ne!(node_id_from_name("origin-1"), 0);
    }
}
