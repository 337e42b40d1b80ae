//! Every RPC kind carried by the cluster endpoint, in one place.
//!
//! Ranges: `0x01xx` Raft and membership (this crate's `raft` module), `0x02xx` and up the node
//! registry, heartbeats and the relay. A kind's number never changes meaning once released.

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
