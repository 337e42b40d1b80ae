//! Every RPC kind carried by the cluster endpoint, in one place.
//!
//! Ranges: `0x01xx` Raft and membership (this crate's `raft` module), `0x02xx` and up the node
//! registry, heartbeats and the relay. A kind's number never changes meaning once released.
//!
//! Every kind declares who may call it ([`callers`]); the endpoint refuses the rest before
//! reading the request.

/// Raft `AppendEntries` (JSON `AppendEntriesRequest` -> `Result<AppendEntriesResponse, RaftError>`).
pub const RAFT_APPEND: u16 = 0x0101;
/// Raft `RequestVote` (JSON `VoteRequest` -> `Result<VoteResponse, RaftError>`).
pub const RAFT_VOTE: u16 = 0x0102;
/// Raft `InstallSnapshot`, one chunk per request (JSON `InstallSnapshotRequest`).
pub const RAFT_SNAPSHOT: u16 = 0x0103;
/// A client write forwarded by a follower to the leader (JSON `Command` -> response + log index).
pub const CLIENT_WRITE: u16 = 0x0104;
/// Add a node as a voter, forwarded to the leader.
pub const JOIN_CLUSTER: u16 = 0x0105;
/// Remove a node from the membership, forwarded to the leader.
pub const LEAVE_CLUSTER: u16 = 0x0106;
/// The leader's view of the cluster (JSON), asked by followers for `GET /cluster`.
pub const CLUSTER_STATUS: u16 = 0x0201;
/// A node's heartbeat (JSON `Heartbeat`), sent to any origin; non-leaders forward it to the
/// leader, which batches them into one Raft entry.
pub const HEARTBEAT: u16 = 0x0202;
/// What an edge needs of the tenant state (JSON `StateQuery` -> `StateAnswer`): room placement,
/// app signing keys, the node registry. Answered from the origin's replica.
pub const STATE_QUERY: u16 = 0x0203;
/// A relay control stream (a stream kind, see `Endpoint::open_stream`): the edge subscribes to a
/// room's tracks, the origin answers on it and opens one unidirectional stream per group.
pub const RELAY: u16 = 0x0301;
/// Origins only: the cluster key that seals the secrets in the replicated state (JSON
/// `{"key": <base64>}`), asked by an origin that just joined.
pub const CLUSTER_KEY: u16 = 0x0107;
/// Origins only: the leader's read index (JSON `u64`, after confirming it still leads), so a
/// follower can wait until it has applied that far before answering a read that must be fresh.
pub const READ_INDEX: u16 = 0x0108;
/// Origins only: a voter asks whether the answering voter hears from a live leader before it
/// may campaign (JSON `null` -> `{"leaderAlive": bool}`; see `raft::prevote`).
pub const RAFT_PRE_VOTE: u16 = 0x0109;

/// The role a cluster certificate grants, from its subject OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerRole {
    /// A Raft voter: holds the state and the cluster key.
    Origin,
    /// A viewer-facing node: subscribes to media and reads what serving viewers needs.
    Edge,
}

impl PeerRole {
    /// The role named by a certificate's OU; `None` for anything else (such a certificate is
    /// refused by the endpoint).
    pub fn from_ou(ou: Option<&str>) -> Option<Self> {
        match ou {
            Some("origin") => Some(Self::Origin),
            Some("edge") => Some(Self::Edge),
            _ => None,
        }
    }

    /// The OU spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::Edge => "edge",
        }
    }
}

/// Who may call a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// Origins only: writes, membership, Raft, the cluster key, status.
    Origins,
    /// Origins and edges.
    AnyNode,
}

impl Callers {
    /// Whether a peer of `role` may call.
    pub fn admit(self, role: PeerRole) -> bool {
        matches!(
            (self, role),
            (Self::AnyNode, _) | (Self::Origins, PeerRole::Origin)
        )
    }
}

/// Who may call each kind. What an edge needs is listed; every other kind, including kinds
/// not listed in this module, is for origins only.
pub const fn callers(kind: u16) -> Callers {
    match kind {
        // An edge heartbeats for itself (the service checks the name), asks for placement, app
        // verification keys and the registry, and subscribes to media.
        HEARTBEAT | STATE_QUERY | RELAY => Callers::AnyNode,
        _ => Callers::Origins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_reach_only_what_serving_viewers_needs() {
        let edge_may: Vec<u16> = [
            RAFT_APPEND,
            RAFT_VOTE,
            RAFT_SNAPSHOT,
            CLIENT_WRITE,
            JOIN_CLUSTER,
            LEAVE_CLUSTER,
            CLUSTER_KEY,
            READ_INDEX,
            RAFT_PRE_VOTE,
            CLUSTER_STATUS,
            HEARTBEAT,
            STATE_QUERY,
            RELAY,
            0x7777,
        ]
        .into_iter()
        .filter(|k| callers(*k).admit(PeerRole::Edge))
        .collect();
        assert_eq!(edge_may, vec![HEARTBEAT, STATE_QUERY, RELAY]);
        assert!(callers(CLIENT_WRITE).admit(PeerRole::Origin));
        assert_eq!(PeerRole::from_ou(Some("edge")), Some(PeerRole::Edge));
        assert_eq!(PeerRole::from_ou(Some("admin")), None);
        assert_eq!(PeerRole::from_ou(None), None);
    }
}
