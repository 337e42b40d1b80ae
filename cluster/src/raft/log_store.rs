//! The Raft log and vote on sled.
//!
//! Two trees of one sled `Db`: `logs` (key = big-endian index, so sled's byte order is log order;
//! value = the JSON of the entry) and `meta` (vote, committed, last purged log id). Every write
//! openraft relies on for safety (appended entries, the vote, truncation, purge) is flushed to
//! disk before it is acknowledged, so an acknowledged write survives `kill -9`.

use std::error::Error;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{LogId, NodeId, StorageError, StorageLease, TypeConfig};

/// A log entry of this group.
pub type Entry = openraft::Entry<TypeConfig>;

const LOGS_TREE: &str = "logs";
const META_TREE: &str = "meta";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// The Raft log storage: entries, vote, committed and last purged log id in sled.
///
/// Cloning is cheap (sled trees are reference counted); the clone is the [`RaftLogReader`] that
/// replication tasks read with. Openraft serializes the writes, so there is no lock here.
#[derive(Debug, Clone)]
pub struct SledLogStore {
    logs: sled::Tree,
    meta: sled::Tree,
    _lease: Option<StorageLease>,
}

impl SledLogStore {
    /// Opens (or creates) the log trees in `db`.
    ///
    /// Also finishes a purge that was interrupted by a crash: entries at or below the last purged
    /// index are removed (the purge marker is written before the entries are deleted).
    pub fn open(db: &sled::Db) -> Result<Self, StorageError> {
        let logs = db
            .open_tree(LOGS_TREE)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let meta = db
            .open_tree(META_TREE)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        let store = Self {
            logs,
            meta,
            _lease: None,
        };
        if let Some(purged) = store.last_purged()? {
            store.remove_up_to(purged.index)?;
        }
        Ok(store)
    }

    /// Ties this store (and every reader cloned from it) to a node's shutdown.
    pub(crate) fn with_lease(mut self, lease: StorageLease) -> Self {
        self._lease = Some(lease);
        self
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(KEY_LAST_PURGED, ErrorSubject::Logs)
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let bytes = self.meta.get(key);
        let Some(bytes) = bytes.map_err(|e| io_err(subject.clone(), ErrorVerb::Read, &e))? else {
            return Ok(None);
        };
        let value =
            serde_json::from_slice(&bytes).map_err(|e| io_err(subject, ErrorVerb::Read, &e))?;
        Ok(Some(value))
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, &e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io_err(subject, ErrorVerb::Write, &e))?;
        Ok(())
    }

    /// Writes entries to the `logs` tree in one atomic batch, without flushing.
    fn insert_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    /// Removes the entries in `range` (by index) in one atomic batch, without flushing.
    fn remove_range(&self, range: impl RangeBounds<u64>) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        let Some(iter) = self.range(range) else {
            return Ok(());
        };
        for kv in iter.keys() {
            batch.remove(kv.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    fn remove_up_to(&self, index: u64) -> Result<(), StorageError> {
        self.remove_range(..=index)
    }

    /// The sled iterator over `range`, or `None` when the range is empty.
    fn range(&self, range: impl RangeBounds<u64>) -> Option<sled::Iter> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        // `None` = up to the last entry.
        let end = match range.end_bound() {
            Bound::Included(&i) => i.checked_add(1),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        match end {
            Some(end) if start >= end => None,
            Some(end) => Some(self.logs.range(start.to_be_bytes()..end.to_be_bytes())),
            None => Some(self.logs.range(start.to_be_bytes()..)),
        }
    }

    /// The last entry in the `logs` tree, if any.
    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        match self
            .logs
            .last()
            .map_err(|e| StorageIOError::read_logs(&e))?
        {
            Some((key, value)) => decode_entry(&key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Flushes every tree of the database to disk (sled flushes the whole page cache).
    async fn flush(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        self.logs
            .flush_async()
            .await
            .map_err(|e| io_err(subject, ErrorVerb::Write, &e))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some(iter) = self.range(range) else {
            return Ok(Vec::new());
        };
        iter.map(|kv| {
            let (key, value) = kv.map_err(|e| StorageIOError::read_logs(&e))?;
            decode_entry(&key, &value)
        })
        .collect()
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_entry = self.last_entry()?.map(|e| e.log_id);
        // An interrupted purge can leave entries below the marker; the marker wins.
        let last_log_id = std::cmp::max(last_entry, last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote, ErrorSubject::Vote)?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    /// Not flushed on its own: losing it only means re-learning the commit index from the leader
    /// (or, alone, by committing a fresh entry); the next flush persists it.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(KEY_COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.insert_entries(entries)?;
        // Acknowledge only what is on disk: this is the durability of every Raft write.
        match self.flush(ErrorSubject::Logs).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncate raft log");
        self.remove_range(log_id.index..)?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge raft log");
        // Marker first: a crash between the two steps leaves stale entries that `open` removes,
        // never a log whose first entry is unexplained.
        self.write_meta(KEY_LAST_PURGED, &log_id, ErrorSubject::Logs)?;
        self.remove_up_to(log_id.index)?;
        self.flush(ErrorSubject::Logs).await
    }
}

/// Decodes one `logs` record, checking that the key matches the entry's index.
fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StorageError> {
    let index = <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|e| StorageIOError::read_logs(&e))?;
    let entry: Entry =
        serde_json::from_slice(value).map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
    if entry.log_id.index != index {
        let msg = format!("log key {index} holds entry {}", entry.log_id);
        return Err(StorageIOError::read_log_at_index(index, AnyError::error(msg)).into());
    }
    Ok(entry)
}

/// A storage error about `subject`, keeping `e` as its source.
pub(super) fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &(impl Error + 'static),
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    use super::*;
    use crate::state::Command;

    fn entry(term: u64, index: u64) -> Entry {
        let cmd = Command::DeleteApiKey {
            id: format!("k{index}"),
        };
        Entry {
            log_id: log_id(term, 1, index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    fn open(dir: &tempfile::TempDir) -> SledLogStore {
        let db = crate::raft::reopen_sled(dir.path());
        SledLogStore::open(&db).expect("open log store")
    }

    async fn indexes(store: &mut SledLogStore) -> Vec<u64> {
        let entries = store.try_get_log_entries(..).await.expect("read logs");
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn entries_vote_and_committed_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = open(&dir);
            store
                .blocking_append((1..=5).map(|i| entry(1, i)))
                .await
                .expect("append");
            store.save_vote(&Vote::new(3, 1)).await.expect("vote");
            store
                .save_committed(Some(log_id(1, 1, 4)))
                .await
                .expect("committed");
        }
        let mut store = open(&dir);
        assert_eq!(indexes(&mut store).await, vec![1, 2, 3, 4, 5]);
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 5)));
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(
            store.read_vote().await.expect("vote"),
            Some(Vote::new(3, 1))
        );
        assert_eq!(
            store.read_committed().await.expect("committed"),
            Some(log_id(1, 1, 4))
        );
        let got = store.try_get_log_entries(2..4).await.expect("range");
        assert_eq!(got, vec![entry(1, 2), entry(1, 3)]);
    }

    #[tokio::test]
    async fn truncate_and_purge_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = open(&dir);
            store
                .blocking_append((1..=10).map(|i| entry(1, i)))
                .await
                .expect("append");
            store.truncate(log_id(1, 1, 8)).await.expect("truncate");
            store.purge(log_id(1, 1, 3)).await.expect("purge");
            // A new leader's entries replace the truncated ones.
            store
                .blocking_append([entry(2, 8)])
                .await
                .expect("append after truncate");
        }
        let mut store = open(&dir);
        assert_eq!(indexes(&mut store).await, vec![4, 5, 6, 7, 8]);
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 1, 8)));
    }

    #[tokio::test]
    async fn purging_everything_keeps_the_last_log_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = open(&dir);
            store
                .blocking_append((1..=3).map(|i| entry(1, i)))
                .await
                .expect("append");
            store.purge(log_id(1, 1, 3)).await.expect("purge");
        }
        let mut store = open(&dir);
        assert!(indexes(&mut store).await.is_empty());
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 3)));
    }

    #[tokio::test]
    async fn open_finishes_an_interrupted_purge() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = open(&dir);
            store
                .blocking_append((1..=5).map(|i| entry(1, i)))
                .await
                .expect("append");
            // The marker is written, then the process dies before the entries are removed.
            store
                .write_meta(KEY_LAST_PURGED, &log_id(1, 1, 2), ErrorSubject::Logs)
                .expect("marker");
            store.flush(ErrorSubject::Logs).await.expect("flush");
        }
        let mut store = open(&dir);
        assert_eq!(indexes(&mut store).await, vec![3, 4, 5]);
    }

    #[tokio::test]
    async fn corrupt_entry_is_a_storage_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = open(&dir);
        store
            .logs
            .insert(7u64.to_be_bytes(), b"not json".as_slice())
            .expect("insert");
        store
            .try_get_log_entries(..)
            .await
            .expect_err("corrupt entry");
        store.get_log_state().await.expect_err("corrupt last entry");
        store
            .logs
            .insert(b"short".as_slice(), b"{}".as_slice())
            .expect("insert");
        store.try_get_log_entries(..).await.expect_err("bad key");
    }
}
