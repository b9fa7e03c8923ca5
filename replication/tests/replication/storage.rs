//! The log store and state machine against openraft's storage contract, and the log file.

use openraft::storage::RaftLogStorage;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError, StorageIOError,
};
use replication::{LogStore, NodeId, Proposal, StateMachine, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let io = |e: std::io::Error| StorageError::from(StorageIOError::write(&e));
        let log = LogStore::open(dir.path().join("log")).map_err(io)?;
        let sm = StateMachine::open(dir.path().join("sm"), 1000).map_err(io)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn the_stores_keep_openraft_s_storage_contract() {
    Suite::test_all(Builder).unwrap();
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal {
            base: 0,
            ts: index,
            entries: Vec::new(),
            tick: false,
            truncate_below: None,
        }),
    }
}

/// Appends through the store's API and waits until it reports them flushed.
async fn append(store: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    openraft::storage::RaftLogStorageExt::blocking_append(store, entries).await.unwrap();
}

async fn indexes(store: &mut LogStore) -> Vec<u64> {
    store.try_get_log_entries(0..).await.unwrap().iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn entries_truncations_purges_and_the_vote_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    append(&mut store, (1..=6).map(|i| entry(1, i)).collect()).await;
    store.truncate(LogId::new(CommittedLeaderId::new(1, 1), 5)).await.unwrap();
    append(&mut store, vec![entry(2, 5)]).await;
    store.purge(LogId::new(CommittedLeaderId::new(1, 1), 2)).await.unwrap();
    let vote = openraft::Vote::new(2, 3);
    store.save_vote(&vote).await.unwrap();
    drop(store);

    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut store).await, [3, 4, 5]);
    let fifth = store.try_get_log_entries(5..6).await.unwrap();
    assert_eq!(fifth[0].log_id.leader_id.term, 2, "the entry appended after the truncation");
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
}

/// A crash in the middle of an append leaves part of a record: it was never reported
/// flushed, so it is cut off and the log goes on from the record before.
#[tokio::test]
async fn a_torn_last_record_is_cut_off_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    append(&mut store, (1..=3).map(|i| entry(1, i)).collect()).await;
    drop(store);
    let path = dir.path().join("raft.log");
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);

    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut store).await, [1, 2]);
    append(&mut store, vec![entry(1, 3)]).await;
    drop(store);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut store).await, [1, 2, 3]);
}

#[tokio::test]
async fn a_bad_record_before_good_ones_is_corruption_and_opening_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    append(&mut store, (1..=3).map(|i| entry(1, i)).collect()).await;
    drop(store);
    let path = dir.path().join("raft.log");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff; // inside the first record's body
    std::fs::write(&path, bytes).unwrap();
    assert!(LogStore::open(dir.path()).is_err());
}

/// Regression: `committed` was written in place, so SIGKILL in the middle left half of it, and
/// the member could not start again ("Hit the end of buffer") — with one member down for good,
/// the next leader kill left the group without a quorum. It is only a hint: a file that does
/// not read is no committed id.
#[tokio::test]
async fn a_torn_committed_hint_does_not_keep_a_member_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    append(&mut store, (1..=2).map(|i| entry(1, i)).collect()).await;
    let committed = Some(LogId::new(CommittedLeaderId::new(1, 1), 2));
    store.save_committed(committed).await.unwrap();
    drop(store);
    assert!(!dir.path().join("committed.tmp").exists(), "replaced whole, through a rename");
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), committed);
    drop(store);
    std::fs::write(dir.path().join("committed"), [1u8]).unwrap(); // half of a log id
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), None);
    assert_eq!(indexes(&mut store).await, [1, 2]);
}
