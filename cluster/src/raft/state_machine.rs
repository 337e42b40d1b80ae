//! The replicated [`ClusterState`] and its snapshots.
//!
//! The state lives in memory behind an `Arc<RwLock<..>>` shared with the node's readers. It is made
//! durable by snapshots (tree `snapshot` of the same sled `Db`) plus the log: on open the last
//! snapshot is loaded, then openraft re-applies the committed entries after it.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::log_store::{io_err, Entry};
use super::{LogId, NodeId, StorageError, StorageLease, TypeConfig};
use crate::state::{ClusterState, CommandResponse};

const SNAPSHOT_TREE: &str = "snapshot";
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";

/// Metadata of a snapshot of this group.
pub type SnapshotMetaOf = SnapshotMeta<NodeId, BasicNode>;

/// Everything the state machine holds: the cluster state and the Raft bookkeeping applied with it.
///
/// This is also the snapshot format (JSON), so a snapshot restores all three together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachineData {
    /// The replicated cluster state (named `tenants` in snapshots, as it was first called).
    #[serde(rename = "tenants")]
    pub cluster: ClusterState,
    /// The id of the last entry applied to `cluster`.
    pub last_applied: Option<LogId>,
    /// The last membership applied, with the id of its entry.
    pub last_membership: StoredMembership<NodeId, BasicNode>,
}

/// The state machine replica shared between openraft and local readers.
///
/// A `std` lock, not a tokio one: every critical section is short and synchronous (apply a batch,
/// clone for a snapshot, run a reader's closure) and is never held across `.await`.
pub type SharedState = Arc<RwLock<StateMachineData>>;

/// The Raft state machine: [`StateMachineData`] in memory, the current snapshot in sled.
///
/// Cloning is cheap and shares everything; a clone is the snapshot builder.
#[derive(Debug, Clone)]
pub struct SledStateMachine {
    state: SharedState,
    db: sled::Db,
    snapshots: sled::Tree,
    /// Serializes compare-and-write of the current snapshot between a spawned snapshot build and
    /// `install_snapshot`, so an older snapshot never replaces a newer one.
    persist: Arc<Mutex<()>>,
    _lease: Option<StorageLease>,
}

impl SledStateMachine {
    /// Opens the snapshot tree in `db` and loads the current snapshot, if any, into memory.
    pub fn open(db: &sled::Db) -> Result<Self, StorageError> {
        let snapshots = db
            .open_tree(SNAPSHOT_TREE)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        let sm = Self {
            state: SharedState::default(),
            db: db.clone(),
            snapshots,
            persist: Arc::default(),
            _lease: None,
        };
        if let Some((meta, data)) = sm.read_current()? {
            let restored = decode_snapshot(&meta, &data)?;
            tracing::info!(snapshot = %meta, "state machine restored from snapshot");
            *sm.write_state()? = restored;
        }
        Ok(sm)
    }

    /// Ties this state machine (and every snapshot builder cloned from it) to a node's shutdown.
    pub(crate) fn with_lease(mut self, lease: StorageLease) -> Self {
        self._lease = Some(lease);
        self
    }

    /// The replica, for readers that live beside openraft (the node's `read`).
    pub fn shared_state(&self) -> SharedState {
        self.state.clone()
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, StateMachineData>, StorageError> {
        self.state.read().map_err(|_| poisoned())
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, StateMachineData>, StorageError> {
        self.state.write().map_err(|_| poisoned())
    }

    /// The current snapshot as stored: its metadata and its bytes.
    fn read_current(&self) -> Result<Option<(SnapshotMetaOf, Vec<u8>)>, StorageError> {
        let read_err = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::read_snapshot(None, AnyError::error(e.to_string())).into()
        };
        let meta = self.snapshots.get(KEY_META).map_err(|e| read_err(&e))?;
        let data = self.snapshots.get(KEY_DATA).map_err(|e| read_err(&e))?;
        match (meta, data) {
            (Some(meta), Some(data)) => {
                let meta: SnapshotMetaOf =
                    serde_json::from_slice(&meta).map_err(|e| read_err(&e))?;
                Ok(Some((meta, data.to_vec())))
            }
            (None, None) => Ok(None),
            _ => Err(read_err(&"snapshot tree holds only one of meta and data")),
        }
    }

    /// Makes `meta` + `data` the current snapshot on disk, unless a newer one is already there.
    async fn persist_snapshot(
        &self,
        meta: &SnapshotMetaOf,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let write_err = |e: &dyn std::fmt::Display| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::error(e.to_string()))
                .into()
        };
        let meta_bytes = serde_json::to_vec(meta).map_err(|e| write_err(&e))?;
        {
            let _guard = self.persist.lock().map_err(|_| poisoned())?;
            if let Some((current, _)) = self.read_current()? {
                if current.last_log_id > meta.last_log_id {
                    tracing::debug!(%current, new = %meta, "keep the newer stored snapshot");
                    return Ok(());
                }
            }
            let mut batch = sled::Batch::default();
            batch.insert(KEY_META, meta_bytes);
            batch.insert(KEY_DATA, data);
            self.snapshots
                .apply_batch(batch)
                .map_err(|e| write_err(&e))?;
        }
        self.snapshots
            .flush_async()
            .await
            .map_err(|e| write_err(&e))?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SledStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_log_id, last_membership) = {
            let state = self.read_state()?;
            let data = serde_json::to_vec(&*state)
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            (data, state.last_applied, state.last_membership.clone())
        };
        // Monotonic across restarts, so two snapshots of the same log id still differ in id.
        let seq = self
            .db
            .generate_id()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.persist_snapshot(&meta, &data).await?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SledStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let state = self.read_state()?;
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.write_state()?;
        let responses = entries
            .into_iter()
            .map(|entry| {
                state.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => CommandResponse::Ok,
                    EntryPayload::Normal(cmd) => state.cluster.apply(&cmd),
                    EntryPayload::Membership(m) => {
                        state.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResponse::Ok
                    }
                }
            })
            .collect();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let restored = decode_snapshot(meta, &data)?;
        // Durable first: openraft purges the logs the snapshot covers once this returns.
        self.persist_snapshot(meta, &data).await?;
        *self.write_state()? = restored;
        tracing::info!(snapshot = %meta, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.read_current()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Decodes snapshot bytes; the metadata is authoritative for the Raft bookkeeping.
fn decode_snapshot(meta: &SnapshotMetaOf, data: &[u8]) -> Result<StateMachineData, StorageError> {
    let mut restored: StateMachineData = serde_json::from_slice(data)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    restored.last_applied = meta.last_log_id;
    restored.last_membership = meta.last_membership.clone();
    Ok(restored)
}

fn poisoned() -> StorageError {
    let msg = "state machine lock poisoned by a panic during apply";
    StorageIOError::new(
        ErrorSubject::StateMachine,
        ErrorVerb::Read,
        AnyError::error(msg),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::testing::log_id;
    use openraft::Membership;
    use streamhub_shared::AppName;

    use super::*;
    use crate::state::{App, Command};

    fn create_app(index: u64, name: &str) -> Entry {
        let app = App {
            name: AppName::new(name).expect("app name"),
            display_name: None,
            key_id: format!("ak_{name}"),
            secret: "00".into(),
            created_at_ms: index,
            signing_key: None,
            verify_key: None,
            settings: Default::default(),
            quotas: Default::default(),
            storage: None,
        };
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Command::CreateApp(app)),
        }
    }

    fn membership(index: u64) -> Entry {
        let voters = BTreeSet::from([1]);
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
        }
    }

    fn open(dir: &tempfile::TempDir) -> SledStateMachine {
        let db = crate::raft::reopen_sled(dir.path());
        SledStateMachine::open(&db).expect("open state machine")
    }

    fn app_names(sm: &SledStateMachine) -> Vec<String> {
        let state = sm.read_state().expect("read state");
        state
            .cluster
            .tenants
            .apps
            .keys()
            .map(|n| n.to_string())
            .collect()
    }

    #[tokio::test]
    async fn apply_returns_tenant_responses_and_tracks_raft_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = open(&dir);
        let blank = Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Blank,
        };
        let responses = sm
            .apply([blank, membership(2), create_app(3, "a"), create_app(4, "a")])
            .await
            .expect("apply");
        assert_eq!(
            responses[..3],
            [
                CommandResponse::Ok,
                CommandResponse::Ok,
                CommandResponse::Ok
            ]
        );
        assert!(matches!(responses[3], CommandResponse::Exists { .. }));
        let (applied, members) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(log_id(1, 1, 4)));
        assert_eq!(members.log_id(), &Some(log_id(1, 1, 2)));
        assert_eq!(app_names(&sm), ["a"]);
    }

    #[tokio::test]
    async fn snapshot_survives_reopen_and_installs_elsewhere() {
        let (leader_dir, follower_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let snapshot = {
            let mut sm = open(&leader_dir);
            sm.apply([membership(1), create_app(2, "a"), create_app(3, "b")])
                .await
                .expect("apply");
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("build")
        };
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 3)));

        let mut reopened = open(&leader_dir);
        assert_eq!(app_names(&reopened), ["a", "b"]);
        let current = reopened.get_current_snapshot().await.expect("current");
        assert_eq!(current.expect("stored snapshot").meta, snapshot.meta);

        let mut follower = open(&follower_dir);
        follower
            .apply([create_app(1, "stale")])
            .await
            .expect("apply");
        let mut incoming = follower.begin_receiving_snapshot().await.expect("begin");
        *incoming = *snapshot.snapshot.clone();
        follower
            .install_snapshot(&snapshot.meta, incoming)
            .await
            .expect("install");
        assert_eq!(
            app_names(&follower),
            ["a", "b"],
            "install replaces the state"
        );
        let (applied, members) = follower.applied_state().await.expect("applied");
        assert_eq!(applied, snapshot.meta.last_log_id);
        assert_eq!(members, snapshot.meta.last_membership);
        drop(follower);
        assert_eq!(app_names(&open(&follower_dir)), ["a", "b"]);
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = open(&dir);
        sm.apply([create_app(1, "a")]).await.expect("apply");
        let old = sm.build_snapshot().await.expect("old");
        sm.apply([create_app(2, "b")]).await.expect("apply");
        let new = sm.build_snapshot().await.expect("new");
        let old_bytes = old.snapshot.get_ref().clone();
        sm.persist_snapshot(&old.meta, &old_bytes)
            .await
            .expect("persist");
        let current = sm.get_current_snapshot().await.expect("current");
        assert_eq!(current.expect("snapshot").meta, new.meta);
    }

    #[tokio::test]
    async fn corrupt_snapshot_is_a_storage_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut sm = open(&dir);
            sm.apply([create_app(1, "a")]).await.expect("apply");
            sm.build_snapshot().await.expect("build");
            sm.snapshots
                .insert(KEY_DATA, b"{".as_slice())
                .expect("corrupt");
        }
        let db = crate::raft::reopen_sled(dir.path());
        SledStateMachine::open(&db).expect_err("corrupt snapshot");
    }
}
