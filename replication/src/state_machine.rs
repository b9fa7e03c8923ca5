//! [`StateMachine`]: what every sequencer node derives from the committed raft log: the epoch
//! counter, the last window timestamp, the deduplication ids and the committed windows.
//!
//! ```text
//!   committed entry: Proposal { ts: 907, entries: [a, b, a'] }   (a' resubmits a's client id)
//!   state before:    last epoch 41 at ts 910, ids {x: (40, 3)}
//!   apply:           a, b are new; a' is a duplicate of a (same window)
//!                    -> window 42 at ts 911 (907 is not above 910) holding [a, b]
//!                    -> receipts: a (42, 0), b (42, 1), a' (42, 0, duplicate)
//! ```
//!
//! Applying is a function of the state and the entry alone, so every node of the group holds
//! the same windows with the same epochs. The state is in memory and in snapshots on disk
//! (`DIR/snapshot`, replaced atomically); after a restart openraft applies the committed
//! entries after the snapshot again.
//!
//! Bounded: committed windows are dropped below a logged truncation (`Proposal::truncate_below`,
//! proposed by the leader once every shard replica has checkpointed past them), so snapshots
//! stop growing; deduplication ids are kept for `dedup_windows` windows.

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use clock::{Epoch, Timestamp};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use sequencer::Window;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::types::{NodeId, Proposal, ProposedEntry, Receipt, Sealed, TypeConfig};

/// The replicated state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    last_epoch: u64,
    last_ts: u64,
    /// Client id to where it was logged, for the last `dedup_windows` windows.
    ids: BTreeMap<u128, Receipt>,
    /// The client ids of each recent window, oldest first, to forget them in order.
    recent: VecDeque<Vec<u128>>,
    /// Committed windows by epoch: their timestamp and entries.
    windows: BTreeMap<u64, (u64, Vec<ProposedEntry>)>,
}

impl State {
    /// Applies a committed proposal.
    fn apply(&mut self, proposal: &Proposal, dedup_windows: usize) -> Sealed {
        if let Some(below) = proposal.truncate_below {
            // Never past the last window: the next one to commit stays deliverable.
            let below = below.min(self.last_epoch + 1);
            self.windows = self.windows.split_off(&below);
            return Sealed { epoch: None, ts: self.last_ts, receipts: Vec::new() };
        }
        if proposal.tick {
            // Later windows are stamped above it; a tick below the last changes nothing.
            self.last_ts = self.last_ts.max(proposal.ts);
            return Sealed { epoch: None, ts: self.last_ts, receipts: Vec::new() };
        }
        let epoch = self.last_epoch + 1;
        let ts = proposal.ts.max(Timestamp::from_u64(self.last_ts).next().as_u64());
        let mut kept: Vec<ProposedEntry> = Vec::new();
        let mut receipts = Vec::with_capacity(proposal.entries.len());
        let mut new_ids = Vec::new();
        for entry in &proposal.entries {
            if let Some(first) = self.ids.get(&entry.client_id) {
                receipts.push(Receipt { duplicate: true, ..*first });
                continue;
            }
            let receipt = Receipt { epoch, index: kept.len() as u32, ts, duplicate: false };
            self.ids.insert(entry.client_id, receipt);
            new_ids.push(entry.client_id);
            receipts.push(receipt);
            kept.push(entry.clone());
        }
        // A proposal of nothing is a window asked for (entries deferred to it); a proposal
        // of duplicates only makes none.
        if kept.is_empty() && !proposal.entries.is_empty() {
            return Sealed { epoch: None, ts: self.last_ts, receipts };
        }
        self.last_epoch = epoch;
        self.last_ts = ts;
        self.windows.insert(epoch, (ts, kept));
        self.recent.push_back(new_ids);
        while self.recent.len() > dedup_windows {
            for id in self.recent.pop_front().unwrap_or_default() {
                self.ids.remove(&id);
            }
        }
        Sealed { epoch: Some(epoch), ts, receipts }
    }
}

/// A read-only view of the committed windows, for serving subscriptions on any node.
#[derive(Clone)]
pub struct StateView {
    state: Arc<RwLock<State>>,
    changed: watch::Receiver<u64>,
}

impl StateView {
    /// The last committed window's epoch, and the timestamp every later window is stamped
    /// above (its own, or a later tick's).
    pub fn last(&self) -> (Epoch, Timestamp) {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        (Epoch(s.last_epoch), Timestamp::from_u64(s.last_ts))
    }

    /// Resolves once anything more is applied (a window or a tick), or the machine is gone.
    pub async fn changed(&mut self) {
        let _ = self.changed.changed().await;
    }

    /// The first committed window this node still holds (the ones before were truncated), or
    /// the next to commit if it holds none.
    pub fn first(&self) -> Epoch {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        Epoch(s.windows.keys().next().copied().unwrap_or(s.last_epoch + 1))
    }

    /// Committed window `epoch`, if this node has it.
    pub fn window(&self, epoch: Epoch) -> Option<Window> {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        s.windows.get(&epoch.0).map(|(ts, entries)| Window {
            epoch,
            ts: Timestamp::from_u64(*ts),
            entries: entries.iter().map(sequencer::Entry::from).collect(),
        })
    }

    /// Resolves once a window after `epoch` is committed (or the machine is gone).
    pub async fn wait_past(&mut self, epoch: Epoch) {
        while self.last().0 <= epoch {
            if self.changed.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The sequencer group's state machine on one node.
pub struct StateMachine {
    dir: PathBuf,
    state: Arc<RwLock<State>>,
    changed: watch::Sender<u64>,
    dedup_windows: usize,
}

/// Builds a snapshot of the state at the time it was taken.
pub struct SnapshotBuilder {
    dir: PathBuf,
    state: State,
}

fn io_error(e: std::io::Error) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// A snapshot on disk: its metadata and the encoded state.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

fn write_snapshot(dir: &Path, stored: &StoredSnapshot) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = postcard::to_stdvec(stored).map_err(invalid)?;
    let tmp = dir.join("snapshot.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join("snapshot"))?;
    std::fs::File::open(dir)?.sync_all()
}

impl StateMachine {
    /// Opens the state machine in `dir`, from its last snapshot if there is one.
    /// Deduplication ids are kept for `dedup_windows` windows.
    pub fn open(dir: impl AsRef<Path>, dedup_windows: usize) -> std::io::Result<StateMachine> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let state = match std::fs::read(dir.join("snapshot")) {
            Ok(bytes) => {
                let stored: StoredSnapshot = postcard::from_bytes(&bytes).map_err(invalid)?;
                postcard::from_bytes(&stored.data).map_err(invalid)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e),
        };
        let epoch = state.last_epoch;
        Ok(StateMachine {
            dir,
            state: Arc::new(RwLock::new(state)),
            changed: watch::Sender::new(epoch),
            dedup_windows,
        })
    }

    /// A view of the committed windows that stays current.
    pub fn view(&self) -> StateView {
        StateView { state: self.state.clone(), changed: self.changed.subscribe() }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = postcard::to_stdvec(&self.state).map_err(|e| io_error(invalid(e)))?;
        let last = self.state.last_applied;
        let snapshot_id = match last {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.state.last_epoch),
            None => format!("none-{}", self.state.last_epoch),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.state.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        write_snapshot(&self.dir, &stored).map_err(io_error)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let s = self.read();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Sealed>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        {
            let mut s = self.write();
            for entry in entries {
                s.last_applied = Some(entry.log_id);
                let response = match &entry.payload {
                    EntryPayload::Blank => Sealed::default(),
                    EntryPayload::Normal(proposal) => s.apply(proposal, self.dedup_windows),
                    EntryPayload::Membership(m) => {
                        s.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Sealed::default()
                    }
                };
                responses.push(response);
            }
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { dir: self.dir.clone(), state: self.read().clone() }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state: State = postcard::from_bytes(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &invalid(e)))
        })?;
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        write_snapshot(&self.dir, &stored).map_err(io_error)?;
        *self.write() = state;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // The newest snapshot is the one on disk (a build writes it there).
        match std::fs::read(self.dir.join("snapshot")) {
            Ok(bytes) => {
                let stored: StoredSnapshot =
                    postcard::from_bytes(&bytes).map_err(|e| io_error(invalid(e)))?;
                Ok(Some(Snapshot {
                    meta: stored.meta,
                    snapshot: Box::new(Cursor::new(stored.data)),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(ts: u64, client_id: u128) -> Proposal {
        let entry = ProposedEntry { client_id, participants: vec![0], payload: vec![1] };
        Proposal { ts, entries: vec![entry], tick: false, truncate_below: None }
    }

    #[test]
    fn a_truncation_drops_the_windows_below_it_and_nothing_else() {
        let mut state = State::default();
        for i in 1..=5u64 {
            assert_eq!(state.apply(&window(i * 10, u128::from(i)), 100).epoch, Some(i));
        }
        let truncated = state.apply(&Proposal::truncate_below(Epoch(3)), 100);
        assert_eq!((truncated.epoch, truncated.ts), (None, 50), "no window, no new timestamp");
        assert_eq!(state.windows.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
        // Deduplication is not affected: window 1's client id is still known.
        assert!(state.apply(&window(60, 1), 100).receipts[0].duplicate);
        // Never past the next window to commit, and never back.
        state.apply(&Proposal::truncate_below(Epoch(99)), 100);
        assert!(state.windows.is_empty());
        state.apply(&Proposal::truncate_below(Epoch(2)), 100);
        assert_eq!(state.apply(&window(70, 7), 100).epoch, Some(6));
        assert_eq!(state.windows.keys().copied().collect::<Vec<_>>(), vec![6]);
    }
}
