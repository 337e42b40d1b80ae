//! [`RaftNode`]: one voter of the control plane, its storage opened and ready to serve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, InitializeError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio::time::Instant;

use super::log_store::SledLogStore;
use super::network::NoPeers;
use super::state_machine::{SharedState, SledStateMachine};
use super::{NodeId, StorageError, StorageLease, TypeConfig};
use crate::state::{Command, CommandResponse, TenantState};

/// How long `open` waits for the node to lead and catch up its state machine.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `write` waits for its entry to be committed and applied.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Failure of [`RaftNode::write`].
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This node is not the leader; send the write to `leader_id` (unknown during an election).
    #[error("not the leader; forward to {leader_id:?} at {leader_addr:?}")]
    ForwardToLeader {
        /// The current leader, if known.
        leader_id: Option<NodeId>,
        /// The current leader's address, if known.
        leader_addr: Option<String>,
    },
    /// No result in time. The entry may still commit: the outcome is unknown.
    #[error("raft write not applied within {after:?}; outcome unknown")]
    Timeout {
        /// How long the write waited.
        after: Duration,
    },
    /// A membership change got in the way of the write.
    #[error("raft membership change")]
    Membership(#[from] ChangeMembershipError<NodeId>),
    /// The Raft core stopped; the node must be restarted.
    #[error("raft core stopped")]
    Fatal(#[from] Fatal<NodeId>),
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
}

/// One voter of the control plane: openraft over the sled store, with local reads.
pub struct RaftNode {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    state: SharedState,
    /// Closed once every storage handle is dropped; see [`StorageLease`].
    storage_open: watch::Sender<()>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl RaftNode {
    /// Opens the node's storage under `<data_dir>/raft` and starts Raft.
    ///
    /// A pristine node initializes itself as the single voter `{node_id}` reachable at `addr`.
    /// Returns once the node leads and has applied its whole log, so reads and writes work.
    pub async fn open(data_dir: &Path, node_id: NodeId, addr: String) -> Result<Self, RaftError> {
        let db = open_db(&data_dir.join("raft"))?;
        let (storage_open, lease) = watch::channel(());
        let log_store = SledLogStore::open(&db)?.with_lease(StorageLease(lease.clone()));
        let state_machine = SledStateMachine::open(&db)?.with_lease(StorageLease(lease));
        drop(db);
        let state = state_machine.shared_state();

        let config = Arc::new(raft_config()?);
        let raft = Raft::new(node_id, config, NoPeers, log_store, state_machine).await?;
        let node = Self {
            node_id,
            raft,
            state,
            storage_open,
        };
        node.initialize(addr).await?;
        node.wait_ready(OPEN_TIMEOUT).await?;
        tracing::info!(node_id, status = ?node.status(), "raft node ready");
        Ok(node)
    }

    /// Writes the single-voter membership on a pristine node; on a restart, elects at once.
    async fn initialize(&self, addr: String) -> Result<(), RaftError> {
        let node_id = self.node_id;
        if !self.raft.is_initialized().await? {
            let members = BTreeMap::from([(node_id, BasicNode::new(addr))]);
            return match self.raft.initialize(members).await {
                Ok(())
                | Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    Ok(())
                }
                Err(openraft::error::RaftError::APIError(source)) => {
                    Err(RaftError::Initialize { node_id, source })
                }
                Err(openraft::error::RaftError::Fatal(fatal)) => Err(fatal.into()),
            };
        }
        // A node that led before restarts as leader by itself. One that did not (it crashed
        // mid-election) would wait out an election timeout; alone, nobody else can win, so elect.
        let status = self.status();
        if status.state != ServerState::Leader && status.voters == [node_id] {
            self.raft.trigger().elect().await?;
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

    /// Proposes `cmd` and returns the state machine's response once it is committed and applied.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        use openraft::error::RaftError as OpenraftError;
        let result = tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(cmd)).await;
        match result {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(OpenraftError::APIError(ClientWriteError::ForwardToLeader(to)))) => {
                Err(WriteError::ForwardToLeader {
                    leader_id: to.leader_id,
                    leader_addr: to.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(OpenraftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(e.into())
            }
            Ok(Err(OpenraftError::Fatal(fatal))) => Err(fatal.into()),
            Err(_elapsed) => Err(WriteError::Timeout {
                after: WRITE_TIMEOUT,
            }),
        }
    }

    /// Runs `f` on the local replica of the tenant state (not linearizable on a follower).
    ///
    /// A poisoned lock is read anyway: it only poisons if `TenantState::apply` panicked, which
    /// also stops the Raft core, so writes fail loudly while reads keep serving the last state.
    pub fn read<T>(&self, f: impl FnOnce(&TenantState) -> T) -> T {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        f(&state.tenants)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The current Raft status of this node.
    pub fn status(&self) -> RaftStatus {
        let m = self.metrics();
        RaftStatus {
            node_id: self.node_id,
            term: m.current_term,
            leader: m.current_leader,
            state: m.state,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|id| id.index),
            voters: m.membership_config.voter_ids().collect(),
        }
    }

    /// The full openraft metrics of this node.
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The openraft handle, for the transport that feeds it peers' RPCs.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stops Raft and waits until its storage is closed (flushed, directory unlocked).
    pub async fn shutdown(&self) -> Result<(), RaftError> {
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

fn raft_config() -> Result<Config, openraft::ConfigError> {
    Config {
        cluster_name: "streamhub".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        ..Config::default()
    }
    .validate()
}
