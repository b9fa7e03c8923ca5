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
    /// The last window of the backup the group was restored from (0: it started empty).
    base: u64,
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
    /// Applies a committed proposal, or refuses one from a member with another base (see
    /// [`Proposal`]): the group's members do not hold the same windows.
    fn apply(&mut self, proposal: &Proposal, dedup_windows: usize) -> Result<Sealed, String> {
        if proposal.base != self.base {
            let base = |b: u64| match b {
                0 => "started empty".to_string(),
                b => format!("was restored up to window {b}"),
            };
            return Err(format!(
                "a proposal from a member that {} while this one {}: every member of a group \
                 must be restored from the same backup",
                base(proposal.base),
                base(self.base)
            ));
        }
        Ok(self.apply_same_base(proposal, dedup_windows))
    }

    fn apply_same_base(&mut self, proposal: &Proposal, dedup_windows: usize) -> Sealed {
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

    /// The last window of the backup the group was restored from (0: it started empty).
    pub fn base(&self) -> u64 {
        self.state.read().unwrap_or_else(|e| e.into_inner()).base
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

    /// Writes into `dir`, which holds no state yet, the state of a group restored from
    /// `windows` (consecutive, the windows of a backup's log copy, at least one): it goes on
    /// after the last, which is its base. Every member of the group must be seeded from the
    /// same windows (a member with another base refuses the others' proposals).
    pub fn seed(
        dir: impl AsRef<Path>,
        windows: &[Window],
        dedup_windows: usize,
    ) -> std::io::Result<()> {
        let dir = dir.as_ref();
        let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no window to restore from",
            ));
        };
        if dir.join("snapshot").exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} holds a group's state already", dir.display()),
            ));
        }
        std::fs::create_dir_all(dir)?;
        let base = last.epoch.0;
        let mut state =
            State { base, last_epoch: first.epoch.0.saturating_sub(1), ..State::default() };
        for w in windows {
            let proposal = Proposal::new(base, w.ts, &w.entries);
            let sealed = state.apply_same_base(&proposal, dedup_windows);
            if (sealed.epoch, sealed.ts) != (Some(w.epoch.0), w.ts.as_u64()) {
                return Err(invalid(format!(
                    "window {} at {} does not follow the ones before it",
                    w.epoch, w.ts
                )));
            }
        }
        let data = postcard::to_stdvec(&state).map_err(invalid)?;
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: format!("restored-{base}"),
        };
        write_snapshot(dir, &StoredSnapshot { meta, data })
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
                let response = match &entry.payload {
                    EntryPayload::Blank => Sealed::default(),
                    EntryPayload::Normal(proposal) => {
                        s.apply(proposal, self.dedup_windows).map_err(|why| {
                            tracing::error!("{why}; this member stops");
                            io_error(invalid(why))
                        })?
                    }
                    EntryPayload::Membership(m) => {
                        s.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Sealed::default()
                    }
                };
                s.last_applied = Some(entry.log_id);
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
        Proposal { base: 0, ts, entries: vec![entry], tick: false, truncate_below: None }
    }

    /// A group seeded from a backup's windows holds them and goes on after the last; a
    /// proposal from a member with another base (restored from other windows, or not at all)
    /// is refused and changes nothing.
    #[test]
    fn a_seeded_state_goes_on_after_its_windows_and_refuses_another_base() {
        let dir = tempfile::tempdir().unwrap();
        let windows: Vec<Window> = (5..=7u64)
            .map(|e| Window {
                epoch: Epoch(e),
                ts: Timestamp::from_u64(e * 100),
                entries: vec![(&window(0, u128::from(e)).entries[0]).into()],
            })
            .collect();
        StateMachine::seed(dir.path(), &windows, 100).unwrap();
        assert!(StateMachine::seed(dir.path(), &windows, 100).is_err(), "seeded once");
        let machine = StateMachine::open(dir.path(), 100).unwrap();
        let view = machine.view();
        assert_eq!(view.base(), 7);
        assert_eq!((view.first(), view.last()), (Epoch(5), (Epoch(7), Timestamp::from_u64(700))));
        assert_eq!(view.window(Epoch(6)), Some(windows[1].clone()));
        let mut state = machine.read().clone();
        let refused = state.apply(&window(800, 8), 100).unwrap_err();
        assert!(
            refused.contains("started empty") && refused.contains("up to window 7"),
            "{refused}"
        );
        assert_eq!(state.last_epoch, 7, "nothing changed");
        let next = Proposal { base: 7, ..window(800, 8) };
        assert_eq!(state.apply(&next, 100).unwrap().epoch, Some(8));
        // Client ids of the restored windows are still deduplicated.
        let again = Proposal { base: 7, ..window(900, 6) };
        assert!(state.apply(&again, 100).unwrap().receipts[0].duplicate);
    }

    #[test]
    fn a_truncation_drops_the_windows_below_it_and_nothing_else() {
        let mut state = State::default();
        for i in 1..=5u64 {
            assert_eq!(state.apply(&window(i * 10, u128::from(i)), 100).unwrap().epoch, Some(i));
        }
        let truncated = state.apply(&Proposal::truncate_below(0, Epoch(3)), 100).unwrap();
        assert_eq!((truncated.epoch, truncated.ts), (None, 50), "no window, no new timestamp");
        assert_eq!(state.windows.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
        // Deduplication is not affected: window 1's client id is still known.
        assert!(state.apply(&window(60, 1), 100).unwrap().receipts[0].duplicate);
        // Never past the next window to commit, and never back.
        state.apply(&Proposal::truncate_below(0, Epoch(99)), 100).unwrap();
        assert!(state.windows.is_empty());
        state.apply(&Proposal::truncate_below(0, Epoch(2)), 100).unwrap();
        assert_eq!(state.apply(&window(70, 7), 100).unwrap().epoch, Some(6));
        assert_eq!(state.windows.keys().copied().collect::<Vec<_>>(), vec![6]);
    }
}
