//! [`RaftNode`]: one voter of the control plane, its storage opened and ready to serve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, Fatal, InitializeError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio::time::Instant;

use super::leader::{self, LeaderRefusal, RouteError};
use super::log_store::SledLogStore;
use super::network::{register_raft_services, QuicNetworkFactory};
use super::prevote::{self, LeaderContact};
use super::state_machine::{SharedState, SledStateMachine};
use super::{NodeId, StorageError, StorageLease, TypeConfig};
use crate::state::{ClusterState, Command, CommandResponse};
use crate::transport::{kinds, Endpoint, RpcError};

/// How long `open` waits for a single voter to lead and catch up its state machine.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `open` waits, at most, to learn a leader in a multi-node group (never an error).
const LEADER_HINT_WAIT: Duration = Duration::from_secs(3);
/// How long `write` may take in all: finding the leader, committing, applying locally.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a membership change may take: adding a voter waits for it to catch up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `shutdown` waits for openraft's tasks to drop the storage.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Failure to open, start or stop a [`RaftNode`].
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The raft directory under the data dir could not be created.
    #[error("cannot create raft dir {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// sled could not open its database (another process may hold it).
    #[error("cannot open raft db at {path}")]
    OpenDb {
        /// The database directory.
        path: PathBuf,
        /// The underlying error.
        source: sled::Error,
    },
    /// Reading or writing the log, vote, state machine or snapshot failed.
    #[error("raft storage")]
    Storage(#[from] StorageError),
    /// The openraft configuration is invalid.
    #[error("raft config")]
    Config(#[from] openraft::ConfigError),
    /// The Raft core stopped (storage failure, panic or shutdown).
    #[error("raft core stopped")]
    Fatal(#[from] Fatal<NodeId>),
    /// The single-voter membership could not be written.
    #[error("cannot initialize raft node {node_id}")]
    Initialize {
        /// This node.
        node_id: NodeId,
        /// The underlying error.
        source: InitializeError<NodeId, BasicNode>,
    },
    /// The node did not become leader with its log applied in time.
    #[error("raft node {node_id} not ready after {waited:?}")]
    NotReady {
        /// This node.
        node_id: NodeId,
        /// How long `open` waited.
        waited: Duration,
        /// What was being waited for.
        source: WaitError,
    },
    /// The Raft core task failed while shutting down.
    #[error("raft core task failed on shutdown")]
    Shutdown(#[from] tokio::task::JoinError),
    /// Openraft's tasks still held the storage after shutdown.
    #[error("raft storage of node {node_id} still in use {waited:?} after shutdown")]
    StorageBusy {
        /// This node.
        node_id: NodeId,
        /// How long `shutdown` waited.
        waited: Duration,
    },
}

/// How a node starts when its data dir holds no Raft state yet. A node with state on disk always
/// restarts from it, whatever is asked here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first node of a new cluster: initialize as the single voter.
    Bootstrap,
    /// A node joining an existing cluster: do not initialize; wait to be added by `add_voter`
    /// (called on any member).
    Join,
}

/// Failure of [`RaftNode::write`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader could be reached before the deadline (election in progress, or no quorum).
    /// The write was not delivered to any leader.
    #[error("no raft leader reachable within {waited:?} ({last})")]
    NoLeader {
        /// How long the write kept trying.
        waited: Duration,
        /// The last reason a leader was not found.
        last: String,
    },
    /// Forwarding to the leader failed after the request may have reached it: the outcome is
    /// unknown.
    #[error("forwarding the write to leader {leader_id} at {addr} failed; outcome unknown")]
    Forward {
        /// The leader the write was sent to.
        leader_id: NodeId,
        /// Its cluster address.
        addr: String,
        /// The transport failure.
        source: RpcError,
    },
    /// The leader did not commit and apply in time. The entry may still commit: outcome unknown.
    #[error("raft write not applied within {after:?}; outcome unknown")]
    Timeout {
        /// How long the leader waited.
        after: Duration,
    },
    /// The leader committed the write (at `index`) but this node did not apply it in time, so a
    /// read here may not see it yet.
    #[error("write committed at index {index} but not applied on this node within {waited:?}")]
    NotAppliedLocally {
        /// The log index of the write.
        index: u64,
        /// How long this node waited.
        waited: Duration,
    },
    /// A membership change got in the way of the write.
    #[error("raft membership change")]
    Membership(#[from] ChangeMembershipError<NodeId>),
    /// The leader's Raft core stopped.
    #[error("leader's raft core stopped: {message}")]
    LeaderStopped {
        /// The leader's error.
        message: String,
    },
    /// This node's Raft core stopped; the node must be restarted.
    #[error("raft core stopped")]
    Fatal(#[from] Fatal<NodeId>),
    /// The leader refused the write: it names another node than the one asking.
    #[error("write refused: {message}")]
    Forbidden {
        /// Why.
        message: String,
    },
    /// The leader cannot reach a quorum (a read barrier could not be confirmed).
    #[error("no quorum: {message}")]
    NoQuorum {
        /// openraft's reason.
        message: String,
    },
}

/// Failure of [`RaftNode::add_voter`] or [`RaftNode::remove_node`].
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The node id is already a member with another address: two nodes share a name (ids derive
    /// from names), or a node moved and must be removed first.
    #[error("node {node_id} is already a member at {existing_addr}, not {requested_addr}")]
    IdCollision {
        /// The node id.
        node_id: NodeId,
        /// The address the membership has for it.
        existing_addr: String,
        /// The address asked for.
        requested_addr: String,
    },
    /// No leader could be reached before the deadline; nothing was changed.
    #[error("no raft leader reachable within {waited:?} ({last})")]
    NoLeader {
        /// How long the change kept trying.
        waited: Duration,
        /// The last reason a leader was not found.
        last: String,
    },
    /// Forwarding to the leader failed after the request may have reached it: outcome unknown.
    #[error("forwarding the membership change to leader {leader_id} at {addr} failed")]
    Forward {
        /// The leader.
        leader_id: NodeId,
        /// Its cluster address.
        addr: String,
        /// The transport failure.
        source: RpcError,
    },
    /// openraft refused the change (another change in progress, empty membership, ...).
    #[error("raft refused the membership change")]
    Refused(#[from] ChangeMembershipError<NodeId>),
    /// The change did not finish in time (a new voter still catching up?): outcome unknown.
    #[error("membership change not done within {after:?}; outcome unknown")]
    Timeout {
        /// How long it waited.
        after: Duration,
    },
    /// The leader's Raft core stopped.
    #[error("leader's raft core stopped: {message}")]
    LeaderStopped {
        /// The leader's error.
        message: String,
    },
}

impl From<RouteError> for WriteError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NoLeader { waited, last } => Self::NoLeader { waited, last },
            RouteError::Forward {
                leader_id,
                addr,
                source,
            } => Self::Forward {
                leader_id,
                addr,
                source,
            },
            RouteError::Refused(refusal) => match refusal {
                LeaderRefusal::Membership(e) => Self::Membership(e),
                LeaderRefusal::Timeout { after } => Self::Timeout { after },
                LeaderRefusal::Stopped { message } => Self::LeaderStopped { message },
                LeaderRefusal::Forbidden { message } => Self::Forbidden { message },
                LeaderRefusal::NoQuorum { message } => Self::NoQuorum { message },
                // `on_leader` retries these; they only end up here if a leader misbehaves.
                other @ (LeaderRefusal::NotLeader { .. } | LeaderRefusal::IdCollision { .. }) => {
                    Self::LeaderStopped {
                        message: other.to_string(),
                    }
                }
            },
        }
    }
}

impl From<RouteError> for MembershipError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NoLeader { waited, last } => Self::NoLeader { waited, last },
            RouteError::Forward {
                leader_id,
                addr,
                source,
            } => Self::Forward {
                leader_id,
                addr,
                source,
            },
            RouteError::Refused(refusal) => match refusal {
                LeaderRefusal::IdCollision {
                    node_id,
                    existing_addr,
                    requested_addr,
                } => Self::IdCollision {
                    node_id,
                    existing_addr,
                    requested_addr,
                },
                LeaderRefusal::Membership(e) => Self::Refused(e),
                LeaderRefusal::Timeout { after } => Self::Timeout { after },
                other @ (LeaderRefusal::Stopped { .. }
                | LeaderRefusal::NotLeader { .. }
                | LeaderRefusal::Forbidden { .. }
                | LeaderRefusal::NoQuorum { .. }) => Self::LeaderStopped {
                    message: other.to_string(),
                },
            },
        }
    }
}

/// A snapshot of a node's Raft status, for health and cluster APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node.
    pub node_id: NodeId,
    /// The current term.
    pub term: u64,
    /// The current leader, if known.
    pub leader: Option<NodeId>,
    /// Leader, follower, candidate, learner or shutdown.
    pub state: ServerState,
    /// Index of the last entry in the log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state machine.
    pub last_applied: Option<u64>,
    /// The voters of the current membership.
    pub voters: Vec<NodeId>,
    /// The learners (members that replicate but do not vote) of the current membership.
    pub learners: Vec<NodeId>,
    /// Every member's cluster address, by id.
    pub nodes: BTreeMap<NodeId, String>,
    /// Per member, the last log index the leader knows it holds; `None` when this node does not
    /// lead (or has not heard from that member yet).
    pub replication: BTreeMap<NodeId, Option<u64>>,
    /// The last log index covered by this node's current snapshot.
    pub snapshot: Option<u64>,
    /// The last log index purged from this node's log (covered by a snapshot).
    pub purged: Option<u64>,
}

/// One member of the control plane: openraft over the sled store and the cluster endpoint, with
/// local reads and writes from any member (forwarded to the leader).
pub struct RaftNode {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    state: SharedState,
    endpoint: Endpoint,
    /// Closed once every storage handle is dropped; see [`StorageLease`].
    storage_open: watch::Sender<()>,
    /// The election gate (pre-vote), stopped with the node.
    gate: AbortOnDrop,
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// The production openraft configuration (validated by `open`).
pub fn default_config() -> Config {
    Config {
        cluster_name: "streamhub".into(),
        // Failover time is bounded by these: a follower waits up to election_timeout_max (which
        // openraft also uses as the leader lease during which it refuses votes) before a new
        // leader can be elected. 100 ms heartbeats are cheap (one small QUIC stream per peer).
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        // One snapshot chunk (3 MiB by default, ~4x as JSON) must be sent and installed in time.
        install_snapshot_timeout: 5000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        ..Config::default()
    }
}

impl RaftNode {
    /// Opens the node with [`default_config`]; see [`open_with_config`](Self::open_with_config).
    pub async fn open(
        data_dir: &Path,
        node_id: NodeId,
        cluster_addr: String,
        endpoint: Endpoint,
        start: Start,
    ) -> Result<Self, RaftError> {
        Self::open_with_config(
            data_dir,
            node_id,
            cluster_addr,
            endpoint,
            start,
            default_config(),
        )
        .await
    }

    /// Opens the node's storage under `<data_dir>/raft`, starts Raft with peers reached through
    /// `endpoint`, and serves the Raft RPC kinds on it. `cluster_addr` is this node's endpoint
    /// address as peers dial it (`host:port`).
    ///
    /// Returns once the node runs:
    /// - a pristine node with [`Start::Bootstrap`], or a restarted single voter, once it leads and
    ///   has applied its whole log, so reads and writes work at once;
    /// - a pristine node with [`Start::Join`] at once (it serves nothing until added);
    /// - a restarted member of a multi-node group once it knows a leader, or after a few seconds
    ///   without one (never an error: a quorum may still be forming).
    pub async fn open_with_config(
        data_dir: &Path,
        node_id: NodeId,
        cluster_addr: String,
        endpoint: Endpoint,
        start: Start,
        config: Config,
    ) -> Result<Self, RaftError> {
        let db = open_db(&data_dir.join("raft"))?;
        let (storage_open, lease) = watch::channel(());
        let log_store = SledLogStore::open(&db)?.with_lease(StorageLease(lease.clone()));
        let state_machine = SledStateMachine::open(&db)?.with_lease(StorageLease(lease));
        drop(db);
        let state = state_machine.shared_state();

        let network = QuicNetworkFactory::new(endpoint.clone());
        let config = Arc::new(config.validate()?);
        let leader_alive_for = Duration::from_millis(config.election_timeout_min);
        let raft = Raft::new(node_id, config, network, log_store, state_machine).await?;
        let contact = Arc::new(LeaderContact::default());
        register_raft_services(&endpoint, &raft, &contact);
        prevote::register(&endpoint, &raft, contact, leader_alive_for);
        leader::register_leader_services(&endpoint, &raft, WRITE_TIMEOUT, MEMBERSHIP_TIMEOUT);
        let gate = AbortOnDrop(prevote::spawn_gate(raft.clone(), endpoint.clone(), node_id));
        let node = Self {
            node_id,
            raft,
            state,
            endpoint,
            storage_open,
            gate,
        };
        node.start(cluster_addr, start).await?;
        tracing::info!(node_id, status = ?node.status(), "raft node running");
        Ok(node)
    }

    /// Initializes, elects or waits, as [`open_with_config`](Self::open_with_config) documents.
    async fn start(&self, cluster_addr: String, start: Start) -> Result<(), RaftError> {
        let node_id = self.node_id;
        if !self.raft.is_initialized().await? {
            if start == Start::Join {
                tracing::info!(node_id, "pristine node waiting to be added to the cluster");
                return Ok(());
            }
            let members = BTreeMap::from([(node_id, BasicNode::new(cluster_addr))]);
            match self.raft.initialize(members).await {
                Ok(())
                | Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(openraft::error::RaftError::APIError(source)) => {
                    return Err(RaftError::Initialize { node_id, source })
                }
                Err(openraft::error::RaftError::Fatal(fatal)) => return Err(fatal.into()),
            }
            return self.wait_ready(OPEN_TIMEOUT).await;
        }
        let status = self.status();
        match status.nodes.get(&node_id) {
            Some(addr) if *addr != cluster_addr => tracing::warn!(
                node_id,
                member_addr = %addr,
                %cluster_addr,
                "this node's address in the membership differs from its configured address"
            ),
            _ => {}
        }
        if status.voters == [node_id] {
            // A node that led before restarts as leader by itself. One that did not (it crashed
            // mid-election) would wait out an election timeout; alone, nobody else can win.
            if status.state != ServerState::Leader {
                self.raft.trigger().elect().await?;
            }
            return self.wait_ready(OPEN_TIMEOUT).await;
        }
        let known = self
            .raft
            .wait(Some(LEADER_HINT_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        if known.is_err() {
            tracing::info!(node_id, "no leader known yet; continuing to start");
        }
        Ok(())
    }

    /// Waits until this node leads and has applied every entry in its log.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), RaftError> {
        let deadline = Instant::now() + timeout;
        let not_ready = |source| RaftError::NotReady {
            node_id: self.node_id,
            waited: timeout,
            source,
        };
        let metrics = self
            .raft
            .wait(Some(timeout))
            .state(ServerState::Leader, "raft node leads")
            .await
            .map_err(not_ready)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(metrics.last_log_index, "raft log applied")
            .await
            .map_err(not_ready)?;
        Ok(())
    }

    /// Proposes `cmd` through the leader (forwarded when another node leads) and returns the
    /// state machine's response once it is committed and applied **on this node** too, so a read
    /// here right after sees it.
    ///
    /// While no leader is known (an election), retries with backoff for up to 5 s.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let raft = &self.raft;
        let applied = leader::on_leader(
            self.node_id,
            &self.endpoint,
            kinds::CLIENT_WRITE,
            &cmd,
            deadline,
            |limit| leader::write_local(raft, cmd.clone(), limit),
        )
        .await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let waited = Instant::now();
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(applied.log_index), "read your write")
            .await
            .map_err(|_| WriteError::NotAppliedLocally {
                index: applied.log_index,
                waited: waited.elapsed(),
            })?;
        Ok(applied.response)
    }

    /// A linearizable read barrier: waits until this node has applied every entry committed
    /// before the call. On the leader that is after confirming with a quorum that it still
    /// leads; on a follower, up to the read index it asks the leader for. A read of the local
    /// replica after `Ok` sees every write acknowledged before the call, on any node.
    pub async fn barrier(&self, timeout: Duration) -> Result<(), WriteError> {
        let deadline = Instant::now() + timeout;
        let raft = &self.raft;
        let index: u64 = leader::on_leader(
            self.node_id,
            &self.endpoint,
            kinds::READ_INDEX,
            &(),
            deadline,
            |limit| leader::read_index_local(raft, limit),
        )
        .await?;
        let waited = Instant::now();
        self.raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|_| WriteError::NotAppliedLocally {
                index,
                waited: waited.elapsed(),
            })?;
        Ok(())
    }

    /// Adds node `node_id`, whose endpoint is at `cluster_addr`, as a voter: first as a learner
    /// until it has caught up, then as a voter beside the existing ones. Callable on any member
    /// (forwarded to the leader). Idempotent; refuses an id that is a member at another address.
    pub async fn add_voter(
        &self,
        node_id: NodeId,
        cluster_addr: String,
    ) -> Result<(), MembershipError> {
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        let raft = &self.raft;
        let req = leader::join_request(node_id, cluster_addr.clone());
        leader::on_leader(
            self.node_id,
            &self.endpoint,
            kinds::JOIN_CLUSTER,
            &req,
            deadline,
            |limit| leader::add_voter_local(raft, node_id, cluster_addr.clone(), limit),
        )
        .await?;
        tracing::info!(node_id, %cluster_addr, "voter added");
        Ok(())
    }

    /// Removes node `node_id` (voter or learner) from the membership. Callable on any member
    /// (forwarded to the leader); removing a non-member is a no-op.
    pub async fn remove_node(&self, node_id: NodeId) -> Result<(), MembershipError> {
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        let raft = &self.raft;
        let req = leader::leave_request(node_id);
        leader::on_leader(
            self.node_id,
            &self.endpoint,
            kinds::LEAVE_CLUSTER,
            &req,
            deadline,
            |limit| leader::remove_local(raft, node_id, limit),
        )
        .await?;
        tracing::info!(node_id, "node removed from the membership");
        Ok(())
    }

    /// Runs `f` on the local replica of the tenant state (not linearizable on a follower).
    ///
    /// A poisoned lock is read anyway: it only poisons if `ClusterState::apply` panicked, which
    /// also stops the Raft core, so writes fail loudly while reads keep serving the last state.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        f(&state.cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The cluster endpoint this node's Raft runs on, for registering more RPC kinds.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The current Raft status of this node.
    pub fn status(&self) -> RaftStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let nodes: BTreeMap<NodeId, String> = membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        let matched = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|log_id| log_id.index)
        };
        RaftStatus {
            node_id: self.node_id,
            term: m.current_term,
            leader: m.current_leader,
            state: m.state,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|id| id.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            replication: nodes.keys().map(|id| (*id, matched(id))).collect(),
            nodes,
            snapshot: m.snapshot.map(|id| id.index),
            purged: m.purged.map(|id| id.index),
        }
    }

    /// The full openraft metrics of this node.
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stops serving Raft RPCs, stops Raft and waits until its storage is closed (flushed,
    /// directory unlocked). The endpoint stays up: its owner closes it.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.gate.0.abort();
        for kind in leader::RAFT_KINDS {
            self.endpoint.unregister(kind);
        }
        self.raft.shutdown().await?;
        // The state machine worker and replication tasks outlive the core by a moment.
        tokio::time::timeout(RELEASE_TIMEOUT, self.storage_open.closed())
            .await
            .map_err(|_| RaftError::StorageBusy {
                node_id: self.node_id,
                waited: RELEASE_TIMEOUT,
            })?;
        tracing::info!(node_id = self.node_id, "raft node stopped");
        Ok(())
    }
}

fn open_db(path: &Path) -> Result<sled::Db, RaftError> {
    std::fs::create_dir_all(path).map_err(|source| RaftError::CreateDir {
        path: path.to_owned(),
        source,
    })?;
    // No periodic background flush: every write openraft relies on is flushed explicitly before
    // it is acknowledged, and the kill -9 test then proves exactly that.
    sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .open()
        .map_err(|source| RaftError::OpenDb {
            path: path.to_owned(),
            source,
        })
}
