//! Operations that only the leader can run (writes, membership changes), run locally when this
//! node leads and forwarded over the cluster endpoint otherwise.
//!
//! The leader answers a forwarded request with `Result<T, LeaderRefusal>` in an `ok` frame, so a
//! refusal keeps its structure across the wire; transport failures stay [`RpcError`]s.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::network::{decode, encode, resolve};
use super::{NodeId, TypeConfig};
use crate::state::{Command, CommandResponse};
use crate::transport::{kinds, service_fn, Endpoint, RpcError};

/// The first pause before retrying when no leader is known or it is unreachable.
const RETRY_MIN: Duration = Duration::from_millis(50);
/// The longest pause between retries.
const RETRY_MAX: Duration = Duration::from_millis(500);
/// How long to keep looking for a reachable leader (an election takes about one timeout).
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for one forwarded client write. A commit on a healthy group takes milliseconds; a
/// leader that died keeps its (silent) connection open until QUIC's idle timeout, and waiting that
/// out would stall every write routed to it for seconds after the failover.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(1);

/// A write applied by the leader: the state machine's response and the entry's log index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AppliedWrite {
    pub(crate) response: CommandResponse,
    pub(crate) log_index: u64,
}

/// Body of `JOIN_CLUSTER`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JoinRequest {
    node_id: NodeId,
    addr: String,
}

/// Body of `LEAVE_CLUSTER`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaveRequest {
    node_id: NodeId,
}

/// Why the (supposed) leader did not run an operation.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum LeaderRefusal {
    /// Not the leader (any more); the leader it knows of, if any.
    #[error("not the leader; leader is {leader_id:?} at {leader_addr:?}")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The node id is already a member with another address.
    #[error("node {node_id} is already a member at {existing_addr}, not {requested_addr}")]
    IdCollision {
        node_id: NodeId,
        existing_addr: String,
        requested_addr: String,
    },
    /// openraft refused the membership change.
    #[error("membership change refused")]
    Membership(#[from] ChangeMembershipError<NodeId>),
    /// The leader did not finish in time; the outcome is unknown.
    #[error("leader did not finish within {after:?}")]
    Timeout { after: Duration },
    /// The leader's Raft core stopped.
    #[error("leader's raft core stopped: {message}")]
    Stopped { message: String },
    /// The caller may not make this write (an origin writing for another node).
    #[error("refused: {message}")]
    Forbidden { message: String },
    /// The leader could not confirm it still leads: no quorum answered.
    #[error("the leader cannot reach a quorum: {message}")]
    NoQuorum { message: String },
}

impl LeaderRefusal {
    fn from_raft(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(to)) => Self::NotLeader {
                leader_id: to.leader_id,
                leader_addr: to.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => e.into(),
            RaftError::Fatal(fatal) => Self::Stopped {
                message: fatal.to_string(),
            },
        }
    }
}

impl LeaderRefusal {
    fn from_check(e: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to)) => Self::NotLeader {
                leader_id: to.leader_id,
                leader_addr: to.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)) => Self::NoQuorum {
                message: e.to_string(),
            },
            RaftError::Fatal(fatal) => Self::Stopped {
                message: fatal.to_string(),
            },
        }
    }
}

/// Why a leader-routed operation failed.
#[derive(Debug)]
pub(crate) enum RouteError {
    /// The leader refused it.
    Refused(LeaderRefusal),
    /// No reachable leader before the deadline.
    NoLeader { waited: Duration, last: String },
    /// The request reached (maybe) the leader but the exchange failed: outcome unknown.
    Forward {
        leader_id: NodeId,
        addr: String,
        source: RpcError,
    },
}

/// Runs `f` with at most `limit`, as a refusal on timeout.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, LeaderRefusal>>,
) -> Result<T, LeaderRefusal> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or(Err(LeaderRefusal::Timeout { after: limit }))
}

/// Proposes `cmd` on this node, which must lead.
pub(crate) async fn write_local(
    raft: &Raft<TypeConfig>,
    cmd: Command,
    limit: Duration,
) -> Result<AppliedWrite, LeaderRefusal> {
    bounded(limit, async {
        let written = raft
            .client_write(cmd)
            .await
            .map_err(LeaderRefusal::from_raft)?;
        Ok(AppliedWrite {
            response: written.data,
            log_index: written.log_id.index,
        })
    })
    .await
}

/// The index a linearizable read must wait for, on this node, which must lead: confirmed with a
/// quorum that it still leads (openraft's `ensure_linearizable`).
pub(crate) async fn read_index_local(
    raft: &Raft<TypeConfig>,
    limit: Duration,
) -> Result<u64, LeaderRefusal> {
    bounded(limit, async {
        let log_id = raft
            .ensure_linearizable()
            .await
            .map_err(LeaderRefusal::from_check)?;
        Ok(log_id.map_or(0, |l| l.index))
    })
    .await
}

/// The refusal of a node that does not lead, naming the leader it knows of.
fn not_leader(raft: &Raft<TypeConfig>) -> Option<LeaderRefusal> {
    let m = raft.metrics().borrow().clone();
    if m.state == ServerState::Leader {
        return None;
    }
    let leader_addr = m
        .current_leader
        .and_then(|id| m.membership_config.membership().get_node(&id).cloned())
        .map(|n| n.addr);
    Some(LeaderRefusal::NotLeader {
        leader_id: m.current_leader,
        leader_addr,
    })
}

/// The membership as this node sees it, which must lead.
fn membership_here(
    raft: &Raft<TypeConfig>,
) -> Result<std::sync::Arc<openraft::StoredMembership<NodeId, BasicNode>>, LeaderRefusal> {
    if let Some(refusal) = not_leader(raft) {
        return Err(refusal);
    }
    Ok(raft.metrics().borrow().membership_config.clone())
}

/// Adds `node_id` at `addr` as a voter on this node, which must lead: first as a learner until it
/// has caught up, then as a voter. Idempotent for the same address.
pub(crate) async fn add_voter_local(
    raft: &Raft<TypeConfig>,
    node_id: NodeId,
    addr: String,
    limit: Duration,
) -> Result<(), LeaderRefusal> {
    let config = membership_here(raft)?;
    let membership = config.membership();
    if let Some(existing) = membership.get_node(&node_id) {
        if existing.addr != addr {
            return Err(LeaderRefusal::IdCollision {
                node_id,
                existing_addr: existing.addr.clone(),
                requested_addr: addr,
            });
        }
        if membership.voter_ids().any(|id| id == node_id) {
            return Ok(());
        }
    }
    bounded(limit, async {
        raft.add_learner(node_id, BasicNode::new(addr), true)
            .await
            .map_err(LeaderRefusal::from_raft)?;
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
            .await
            .map_err(LeaderRefusal::from_raft)?;
        Ok(())
    })
    .await
}

/// Removes `node_id` (voter or learner) from the membership on this node, which must lead.
pub(crate) async fn remove_local(
    raft: &Raft<TypeConfig>,
    node_id: NodeId,
    limit: Duration,
) -> Result<(), LeaderRefusal> {
    let config = membership_here(raft)?;
    let membership = config.membership();
    let ids = BTreeSet::from([node_id]);
    let change = if membership.voter_ids().any(|id| id == node_id) {
        // `retain = false`: the removed voter is not kept as a learner.
        ChangeMembers::RemoveVoters(ids)
    } else if membership.get_node(&node_id).is_some() {
        ChangeMembers::RemoveNodes(ids)
    } else {
        return Ok(());
    };
    bounded(limit, async {
        raft.change_membership(change, false)
            .await
            .map_err(LeaderRefusal::from_raft)?;
        Ok(())
    })
    .await
}

/// Runs `local` on this node, or, when another node leads, sends `req` as `kind` to it; retries
/// with backoff while no leader is known or it is unreachable, for up to [`LEADER_WAIT`] and
/// never past `deadline` (which also bounds the operation itself).
pub(crate) async fn on_leader<Req, Resp, F, Fut>(
    node_id: NodeId,
    endpoint: &Endpoint,
    kind: u16,
    req: &Req,
    deadline: Instant,
    local: F,
) -> Result<Resp, RouteError>
where
    Req: Serialize,
    Resp: DeserializeOwned,
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, LeaderRefusal>>,
{
    let started = Instant::now();
    let mut pause = RETRY_MIN;
    let mut last;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match local(remaining).await {
            Ok(resp) => return Ok(resp),
            Err(LeaderRefusal::NotLeader {
                leader_id: Some(leader_id),
                leader_addr: Some(addr),
            }) if leader_id != node_id => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let timeout = if kind == kinds::CLIENT_WRITE {
                    remaining.min(FORWARD_TIMEOUT)
                } else {
                    remaining
                };
                match forward(endpoint, &addr, kind, req, timeout).await {
                    Ok(Ok(resp)) => return Ok(resp),
                    Ok(Err(refusal @ LeaderRefusal::NotLeader { .. })) => {
                        last = refusal.to_string();
                    }
                    Ok(Err(refusal)) => return Err(RouteError::Refused(refusal)),
                    // Not delivered: safe to retry, the leader may be changing.
                    Err(e @ RpcError::Unreachable { .. }) => last = e.to_string(),
                    Err(source) => {
                        return Err(RouteError::Forward {
                            leader_id,
                            addr,
                            source,
                        })
                    }
                }
            }
            Err(refusal @ LeaderRefusal::NotLeader { .. }) => last = refusal.to_string(),
            Err(refusal) => return Err(RouteError::Refused(refusal)),
        }
        if Instant::now() + pause >= deadline || started.elapsed() + pause >= LEADER_WAIT {
            return Err(RouteError::NoLeader {
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Sends one leader-routed request to the node at `addr`.
async fn forward<Req: Serialize, Resp: DeserializeOwned>(
    endpoint: &Endpoint,
    addr: &str,
    kind: u16,
    req: &Req,
    timeout: Duration,
) -> Result<Result<Resp, LeaderRefusal>, RpcError> {
    let Some(sock) = resolve(addr).await else {
        return Err(RpcError::Unreachable {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: format!("cannot resolve leader address {addr:?}"),
        });
    };
    let body = serde_json::to_vec(req).map_err(|e| RpcError::network(sock, e))?;
    let answer = endpoint
        .request(sock, kind, Bytes::from(body), timeout)
        .await?;
    serde_json::from_slice(&answer)
        .map_err(|e| RpcError::network(sock, format!("malformed leader answer: {e}")))
}

/// Serves the leader side of forwarded writes and membership changes for `raft`.
pub(crate) fn register_leader_services(
    endpoint: &Endpoint,
    raft: &Raft<TypeConfig>,
    write_limit: Duration,
    membership_limit: Duration,
) {
    let r = raft.clone();
    endpoint.register(
        kinds::CLIENT_WRITE,
        service_fn(move |peer, body| {
            let raft = r.clone();
            async move {
                let cmd: Command = decode(&body)?;
                // A write that speaks for a node (heartbeats, room claims) comes from that node.
                if let Some(other) = cmd.nodes_named().into_iter().find(|n| *n != peer.name) {
                    tracing::warn!(from = %peer.name, %other, "refused a write made for another node");
                    let refusal: Result<AppliedWrite, _> = Err(LeaderRefusal::Forbidden {
                        message: format!("{} may not write for node {other}", peer.name),
                    });
                    return encode(&refusal);
                }
                encode(&write_local(&raft, cmd, write_limit).await)
            }
        }),
    );
    let r = raft.clone();
    endpoint.register(
        kinds::READ_INDEX,
        service_fn(move |_peer, _body| {
            let raft = r.clone();
            async move { encode(&read_index_local(&raft, write_limit).await) }
        }),
    );
    let r = raft.clone();
    endpoint.register(
        kinds::JOIN_CLUSTER,
        service_fn(move |peer, body| {
            let raft = r.clone();
            async move {
                let req: JoinRequest = decode(&body)?;
                tracing::info!(node_id = req.node_id, addr = %req.addr, from = %peer.name, "join request");
                encode(&add_voter_local(&raft, req.node_id, req.addr, membership_limit).await)
            }
        }),
    );
    let r = raft.clone();
    endpoint.register(
        kinds::LEAVE_CLUSTER,
        service_fn(move |peer, body| {
            let raft = r.clone();
            async move {
                let req: LeaveRequest = decode(&body)?;
                tracing::info!(node_id = req.node_id, from = %peer.name, "leave request");
                encode(&remove_local(&raft, req.node_id, membership_limit).await)
            }
        }),
    );
}

/// The forwarded form of [`add_voter_local`].
pub(crate) fn join_request(node_id: NodeId, addr: String) -> impl Serialize {
    JoinRequest { node_id, addr }
}

/// The forwarded form of [`remove_local`].
pub(crate) fn leave_request(node_id: NodeId) -> impl Serialize {
    LeaveRequest { node_id }
}

/// Every kind this module and [`super::network`] register, for unregistering on shutdown.
pub(crate) const RAFT_KINDS: [u16; 8] = [
    kinds::RAFT_APPEND,
    kinds::RAFT_VOTE,
    kinds::RAFT_SNAPSHOT,
    kinds::CLIENT_WRITE,
    kinds::JOIN_CLUSTER,
    kinds::LEAVE_CLUSTER,
    kinds::READ_INDEX,
    kinds::RAFT_PRE_VOTE,
];
