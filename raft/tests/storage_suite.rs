//! openraft's own storage test suite, run against the redb log store and state machine.

use std::sync::Arc;

use cookie_raft::{Cache, CacheConfig, LogStore, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};
use tempfile::TempDir;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let log = LogStore::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        let cache = Arc::new(Cache::new(CacheConfig::default()));
        let sm = StateMachine::open(
            dir.path(),
            cache,
            Arc::new(cookie_raft::Identity::new(1, 1, false)),
        )
        .map_err(|e| StorageIOError::write(&std::io::Error::other(e)))?;
        Ok((dir, log, sm))
    }
}

// A plain #[test]: the suite builds its own Tokio runtime for every case.
#[test]
fn redb_store_passes_openraft_suite() {
    if let Err(e) = Suite::test_all(RedbBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
