//! openraft's own storage test suite against the sled log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};
use streamhub_cluster::raft::{SledLogStore, SledStateMachine, TypeConfig};
use tempfile::TempDir;

/// A fresh sled database in its own temp dir per test; the dir is the guard.
struct FreshSledStore;

impl StoreBuilder<TypeConfig, SledLogStore, SledStateMachine, TempDir> for FreshSledStore {
    async fn build(&self) -> Result<(TempDir, SledLogStore, SledStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let db = sled::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        let log_store = SledLogStore::open(&db)?;
        let state_machine = SledStateMachine::open(&db)?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn sled_store_passes_the_openraft_suite() -> anyhow::Result<()> {
    Suite::test_all(FreshSledStore)?;
    Ok(())
}
