//! [`Step`]: one shard's window protocol as a plain state machine (DESIGN.md section 4): it
//! takes [`Event`]s and returns [`Command`]s, and does no I/O, no waiting and no clock reads
//! of its own. The embedded [`Database`](crate::Database), the shard server and the
//! simulation in `tests/tests/sim` run this same type; they differ only in how they carry out
//! the commands (shared memory, gRPC, a seeded simulated network) and feed back the answers.
//!
//! ```text
//!   Window(e, ts, slice) ──> ReadRemote(S, at ts_{e-1}, keys)  per other participant S
//!                            PushReads(S, at ts_{e-1}, my keys S will ask for)
//!   RemoteRead(S, values) ─┐   (once every S answered: phases A and B on Snap(e-1))
//!                          ├> PushRunReads(S, what the first run read beyond them) per S
//!                          ├> ReadRemote(S, ran, what it missed) per S, and run again
//!                          │    the entries that missed (the others keep their run); or
//!                          └> PublishVerdicts(e, local, to Ps)  PullVerdicts(e, from P) per P
//!   Verdicts(e, P, theirs) ──> (once the tally is complete: phases C and D)
//!   Durable(e) ─────────────> Write(batch of e + watermark + verdicts + deferred)
//!                             Applied(e, outcomes to answer)  [RequestWindow(after e)]
//! ```
//!
//! The commands of one event are carried out in the order given; `Write` before `Applied`
//! before anything the next event asks. A shell that crashes between them loses nothing: the
//! write is one atomic batch with the watermark, and what was not written is applied again
//! from the log after a restart, to the same result.
//!
//! Invariants kept here:
//!
//! - Windows are applied in epoch order without gaps: a window at or below the watermark is a
//!   replay and changes nothing; a window past the next one is an error, never skipped.
//! - Nothing of a window is written before it is durable in the log.
//! - A multi-shard entry's final verdict is the AND of exactly its participants' local
//!   verdicts ([`Tally`]); no participant decides on its own.
//! - Remote reads are of `Snap(e-1)` only: the step asks for them at `ts_{e-1}`, and runs the
//!   window only once every participant it reads has answered (so every participant has
//!   applied `e-1`). An undeclared remote read the peers cannot answer at once is collected,
//!   asked for, and the entries whose run missed it executed again with the answers (the
//!   others read nothing that changed, so their run stands): execution is a function of the
//!   snapshot, so the run that is kept is the same on every replica and every replay.
//! - Errors are typed ([`StepError`]) and stop the shard: an I/O failure, a peer that refuses
//!   what it must answer, or a diverged participant is never turned into a verdict.
//!
//! Not here: where windows come from, how long to wait for a peer, how outcomes reach
//! clients, metrics. Those are the shells'.
//!
//! **Pushing instead of asking.** Both sides of a multi-shard entry know from the log what one
//! will ask the other for in the first round: the points the entry declared. So each step also
//! says what its peers will ask of it ([`Command::PushReads`], and the peers its verdicts are
//! for in [`Command::PublishVerdicts`]), and marks the asks a peer pushes for
//! ([`Command::ReadRemote::pushed`]). A shell over a network may send those unasked and answer
//! its own asks from what its peers sent, asking only for what did not come; the step sees the
//! same events either way.
//!
//! A read nobody declared (a row found by a scan, as TPC-C's Payment finds a customer by last
//! name) is known only by running the entry. Its owner, a participant, runs the same entry on
//! the same snapshot and reads it locally; so after the window's first run each step says
//! what it read of its own keys beyond the declared points, for each peer it shares entries
//! with ([`Command::PushRunReads`]), and marks the asks of its own misses that follow such a
//! run ([`Command::ReadRemote::ran`]): a shell waits for the peer's push instead of asking, and
//! the entries that missed run again once, not once per round of dependent reads.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use clock::Timestamp;
use sequencer::{ClientId, Entry, ShardId, TxnId};
use storage::{Epoch, KeyRange, MetaKey, Mvcc, StorageError, VersionBatch};

use crate::executor::{ExecError, Executor, SnapshotRead, Task, Validated};
use crate::outcome::Decided;
use crate::procedure::Rows;
use crate::request::{MalformedEntry, Request};
use crate::shard_map::ShardMap;
use crate::snapshot::scan_shards;
use crate::stored::{
    KeptOutcomes, chain_digest, decode_deferred, encode_deferred, encode_verdicts, stored_digest,
};
use crate::tally::{Finals, Participants, Tally, TallyError};

/// What the step may read of other shards without waiting. In one process their storage is
/// at hand (once they have applied the window before, which the shell makes sure of before it
/// answers [`Command::ReadRemote`]); over a network nothing is, and the step asks with
/// [`Command::ReadRemote`] instead.
pub trait Peers: Send + Sync {
    /// `key` of `shard` at `at`, if it can be read now.
    fn get(
        &self,
        shard: ShardId,
        key: &[u8],
        at: Timestamp,
    ) -> Option<Result<Option<Vec<u8>>, StorageError>>;

    /// Up to `limit` rows of `range` (within `shard`) at `at`, if they can be read now.
    fn scan(
        &self,
        shard: ShardId,
        range: &KeyRange,
        at: Timestamp,
        limit: usize,
    ) -> Option<Result<Rows, StorageError>>;
}

/// Peers reached over a network: nothing can be read without asking.
#[derive(Debug, Clone, Copy, Default)]
pub struct Distant;

impl Peers for Distant {
    fn get(
        &self,
        _: ShardId,
        _: &[u8],
        _: Timestamp,
    ) -> Option<Result<Option<Vec<u8>>, StorageError>> {
        None
    }

    fn scan(
        &self,
        _: ShardId,
        _: &KeyRange,
        _: Timestamp,
        _: usize,
    ) -> Option<Result<Rows, StorageError>> {
        None
    }
}

/// What happened, as the shell tells the step.
#[derive(Debug, Clone)]
pub enum Event {
    /// The shard (re)started taking windows: from the one after its watermark.
    Started,
    /// Window `epoch` at `ts` was sealed; `slice` is this shard's entries in log order. It
    /// may not be durable yet.
    Window {
        /// The window.
        epoch: Epoch,
        /// Its timestamp.
        ts: Timestamp,
        /// This shard's entries with their ids, in log order.
        slice: Vec<(TxnId, Entry)>,
    },
    /// Window `epoch` is durable in the log.
    Durable(Epoch),
    /// A peer answered a [`Command::ReadRemote`].
    RemoteRead {
        /// The window the reads are for.
        window: Epoch,
        /// The peer.
        shard: ShardId,
        /// Each point asked for, with its value.
        points: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        /// Each scan asked for (range and limit), with its rows.
        scans: Vec<((KeyRange, usize), Rows)>,
    },
    /// A participant's local verdicts of a window (all of them).
    Verdicts {
        /// The window.
        window: Epoch,
        /// The participant.
        from: ShardId,
        /// Its local verdicts.
        verdicts: Vec<(TxnId, bool)>,
    },
    /// A peer cannot be reached for good, or refused what it must answer.
    PeerFailed {
        /// The peer.
        shard: ShardId,
        /// Why.
        why: String,
    },
    /// The shard stops: a window in progress is dropped unwritten (it is applied again after
    /// a restart). The step takes nothing after it: a restart opens a new one from storage,
    /// which also holds the entries deferred to that window.
    Stop,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Read `points` and `scans` of `shard` at `at` (= `ts_{window-1}`), once `shard` has
    /// applied `window - 1`, and answer with [`Event::RemoteRead`]. With nothing to read it
    /// is only that wait.
    ReadRemote {
        /// The window that needs them.
        window: Epoch,
        /// The peer.
        shard: ShardId,
        /// The timestamp of the window before.
        at: Timestamp,
        /// Keys to read.
        points: Vec<Vec<u8>>,
        /// Ranges to scan, each with its row limit.
        scans: Vec<(KeyRange, usize)>,
        /// `shard` shares a multi-shard entry of the window with this one, so its step asks
        /// its shell to push this shard the points of its own that those entries declared
        /// ([`Command::PushReads`]), all of this ask's `points` that are on it.
        pushed: bool,
        /// An ask after the window's first run, of a peer that shares a multi-shard entry with
        /// this shard: the peer's step asks its shell to push what its own first run read
        /// beyond the declared points ([`Command::PushRunReads`]), before the window's
        /// verdicts. Running the same procedures, it likely read what this ask holds.
        ran: bool,
    },
    /// Peer `to` will ask for `points` (this shard's, declared by their shared multi-shard
    /// entries) at `at` (= `ts_{window-1}`, which this shard has applied): a shell may send
    /// them unasked. Given for every peer that shares an entry, with no points too.
    PushReads {
        /// The window that needs them.
        window: Epoch,
        /// The peer.
        to: ShardId,
        /// The timestamp of the window before.
        at: Timestamp,
        /// This shard's keys the peer will ask for.
        points: Vec<Vec<u8>>,
    },
    /// What this shard's first run of `window` read of its own keys, in the multi-shard
    /// procedures it shares with `to`, beyond the points they declared: `to` likely reads the
    /// same in its run, and asks for them ([`Command::ReadRemote::ran`]). A shell may send
    /// them unasked (their values at `at`, the scans' rows), before the window's verdicts.
    /// Given only when there is something to push.
    PushRunReads {
        /// The window.
        window: Epoch,
        /// The peer.
        to: ShardId,
        /// The timestamp of the window before.
        at: Timestamp,
        /// This shard's keys read.
        points: Vec<Vec<u8>>,
        /// The local parts of ranges scanned.
        scans: Vec<KeyRange>,
    },
    /// Make this shard's local verdicts of `window` available to its peers until it is
    /// applied (then they are stored with it).
    PublishVerdicts {
        /// The window.
        window: Epoch,
        /// This shard's local verdicts of its multi-shard entries.
        verdicts: Vec<(TxnId, bool)>,
        /// The participants that will pull them (a shell may push them instead).
        to: Vec<ShardId>,
    },
    /// Get participant `from`'s local verdicts of `window` and answer with
    /// [`Event::Verdicts`].
    PullVerdicts {
        /// The window.
        window: Epoch,
        /// The participant.
        from: ShardId,
    },
    /// Write `batch` atomically: the window's writes, its watermark, this shard's local
    /// verdicts and its deferred entries.
    Write(VersionBatch),
    /// The window is applied: answer these outcomes.
    Applied {
        /// The window.
        window: Epoch,
        /// Its timestamp.
        ts: Timestamp,
        /// Entries of the window in this shard's slice.
        entries: usize,
        /// Outcomes of the entries whose lowest participant this shard is, with client ids.
        decided: Vec<(Decided, ClientId)>,
        /// Final verdicts of the window's multi-shard entries on this shard.
        finals: Finals,
        /// Entries deferred to the next window: logged, not yet decided.
        deferred: Vec<TxnId>,
        /// The chained digest of every window applied, this one included.
        digest: u128,
    },
    /// Entries were deferred: a window after `after` must be sealed even if none is
    /// submitted.
    RequestWindow {
        /// The last window applied.
        after: Epoch,
    },
}

/// Why a shard stopped applying windows. Each stops the shard: none is a verdict.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A window arrived out of order: the log or the shell lost or repeated one.
    #[error("shard {shard} got window {got} while expecting {expected}", shard = .shard.0)]
    OutOfOrder {
        /// This shard.
        shard: ShardId,
        /// The window that came.
        got: Epoch,
        /// The window expected.
        expected: Epoch,
    },
    /// A window was reported durable that was not delivered first.
    #[error("window {0} reported durable out of turn")]
    DurableOutOfTurn(Epoch),
    /// Storage failed (I/O): the node must stop rather than guess.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// Execution failed for a reason that is not the transaction's (storage underneath).
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A participant's verdicts do not match this shard's log.
    #[error(transparent)]
    Diverged(#[from] TallyError),
    /// What this shard stored with a window cannot be read back.
    #[error("corrupt {0}")]
    Corrupt(&'static str),
    /// A peer cannot be reached for good, or refused what it must answer.
    #[error("peer shard {shard} failed: {why}", shard = .shard.0)]
    PeerFailed {
        /// The peer.
        shard: ShardId,
        /// Why.
        why: String,
    },
    /// Another shard of the same process failed, and with it the window exchange.
    #[error("another shard failed: {0}")]
    Elsewhere(String),
    /// The shard thread panicked (a bug, or a procedure that panics).
    #[error("a shard thread panicked: {0}")]
    Panicked(String),
    /// The window log ended while the shard was not closing: the sequencer stopped.
    #[error("the window log ended: the sequencer stopped")]
    LogEnded,
}

impl StepError {
    /// The error for a caught panic of a shard's thread.
    pub fn panicked(panic: &(dyn std::any::Any + Send)) -> StepError {
        StepError::Panicked(sequencer::panic_message(panic))
    }
}

/// One shard's window-by-window state.
pub struct Step {
    shard: ShardId,
    map: ShardMap,
    mvcc: Arc<Mvcc>,
    executor: Executor,
    peers: Arc<dyn Peers>,
    /// The last window applied and its timestamp.
    applied: (Epoch, Timestamp),
    /// Entries deferred to the front of the next window, with their client ids.
    deferred: Vec<(Task, ClientId)>,
    window: Option<Pending>,
    commands: VecDeque<Command>,
    /// The chained digest of the windows applied ([`chain_digest`]).
    digest: u128,
    /// Outcomes kept by client id, if this shard keeps them.
    kept: Option<KeptOutcomes>,
    /// How far back reads go, if this shard collects the garbage older than that, and the
    /// floor its horizon stays at or below ([`Step::collect_garbage`]).
    retention: Option<(Duration, GcFloor)>,
}

/// The timestamp (raw) a shard's garbage-collection horizon must stay at or below: the oldest
/// snapshot some shard may still read, replaying windows after a restart. Shared between the
/// shards of one process, raised by their shell; `u64::MAX` sets no floor.
pub type GcFloor = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// The garbage-collection horizon moves in steps of this at least (each is an fsync).
const HORIZON_STEP: Duration = Duration::from_secs(1);

/// The window in progress.
struct Pending {
    epoch: Epoch,
    ts: Timestamp,
    /// `ts_{e-1}`: what `Snap(e-1)` reads at.
    at: Timestamp,
    entries: usize,
    durable: bool,
    clients: BTreeMap<TxnId, ClientId>,
    participants: Participants,
    /// Remote reads answered so far.
    reads: RemoteReads,
    /// Peers whose answer is still awaited.
    reading: BTreeSet<ShardId>,
    /// How many times the window's entries have been run (each run with misses asks again).
    runs: u32,
    stage: Stage,
}

enum Stage {
    /// Waiting for remote reads; then phases A and B.
    Reading(Vec<Task>),
    /// Waiting for the answers to what a run missed; then phases A and B again, for the
    /// entries whose run missed.
    Rereading(Validated),
    /// Waiting for the participants' verdicts; then phases C and D.
    Tallying(Validated, Tally, Vec<(TxnId, bool)>),
    /// Decided, waiting to be durable.
    Decided(Box<Ready>),
}

/// A window decided and not yet written.
struct Ready {
    batch: VersionBatch,
    decided: Vec<(Decided, ClientId)>,
    finals: Finals,
    deferred: Vec<(Task, ClientId)>,
}

/// Remote reads of `Snap(e-1)` answered so far.
#[derive(Default)]
struct RemoteReads {
    points: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// By range (one peer's part): its first rows, and whether they are all of them.
    scans: BTreeMap<KeyRange, (Rows, bool)>,
}

impl RemoteReads {
    /// Takes the rows a peer answered for a scan of `range` with `limit`: all of the range's
    /// if fewer than `limit`. The fuller of two answers for one range is kept.
    fn add_scan(&mut self, (range, limit): (KeyRange, usize), rows: Rows) {
        let complete = rows.len() < limit;
        let kept = self.scans.entry(range).or_insert((Vec::new(), false));
        if !kept.1 && (complete || rows.len() > kept.0.len()) {
            *kept = (rows, complete);
        }
    }

    /// The first `limit` rows of `range`, if an answer holds them.
    fn scan(&self, range: &KeyRange, limit: usize) -> Option<Rows> {
        let (rows, complete) = self.scans.get(range)?;
        crate::snapshot::first_rows(rows, *complete, limit)
    }
}

impl Step {
    /// The step of `shard` over `mvcc`, resuming after its watermark with the entries it had
    /// deferred before a restart.
    pub fn open(
        executor: Executor,
        map: ShardMap,
        mvcc: Arc<Mvcc>,
        peers: Arc<dyn Peers>,
    ) -> Result<Step, StepError> {
        let stored = mvcc.meta(MetaKey::Deferred)?;
        let deferred = decode_deferred(&stored.unwrap_or_default())?;
        let applied = mvcc.applied().map_or((Epoch(0), Timestamp::ZERO), |w| (w.window, w.ts));
        Ok(Step {
            shard: executor.shard(),
            map,
            executor,
            peers,
            applied,
            deferred,
            window: None,
            commands: VecDeque::new(),
            digest: stored_digest(&mvcc)?,
            kept: None,
            retention: None,
            mvcc,
        })
    }

    /// Collects the versions no read in the last `retention` (by window timestamps) can see:
    /// each window raises the storage's horizon to its timestamp less `retention`, but never
    /// above `floor` (what a replay may still read, on this shard or from it), in steps of a
    /// second ([`Mvcc::raise_horizon`]). Reads below the horizon are refused from then on.
    pub fn collect_garbage(mut self, retention: Duration, floor: GcFloor) -> Step {
        self.retention = Some((retention, floor));
        self
    }

    /// Keeps the outcomes of the transactions whose lowest participant this shard is, by
    /// client id, for `retention` after their window (a shard server's callers may ask again
    /// after a restart; [`stored_outcome`](crate::stored_outcome) reads them).
    pub fn keep_outcomes(mut self, retention: Duration) -> Result<Step, StepError> {
        self.kept = Some(KeptOutcomes::open(&self.mvcc, retention)?);
        Ok(self)
    }

    /// The chained digest of every window applied.
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// This shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The last window applied and its timestamp.
    pub fn applied(&self) -> (Epoch, Timestamp) {
        self.applied
    }

    /// The window to take next: the one after the watermark, or the one in progress.
    pub fn next_epoch(&self) -> Epoch {
        self.applied.0.next()
    }

    /// Whether a window is in progress (taken, not yet written).
    pub fn is_busy(&self) -> bool {
        self.window.is_some()
    }

    /// The entries deferred to the next window.
    pub fn deferred(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.deferred.iter().map(|(task, _)| task.txn)
    }

    /// The next command to carry out, in order.
    pub fn next_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Every command pending, in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        self.commands.drain(..).collect()
    }

    /// Takes `event`; its commands are queued for [`Step::next_command`].
    pub fn handle(&mut self, event: Event) -> Result<(), StepError> {
        match event {
            Event::Started => {
                if !self.deferred.is_empty() {
                    self.commands.push_back(Command::RequestWindow { after: self.applied.0 });
                }
                Ok(())
            }
            Event::Window { epoch, ts, slice } => self.on_window(epoch, ts, slice),
            Event::Durable(epoch) => self.on_durable(epoch),
            Event::RemoteRead { window, shard, points, scans } => {
                let Some(w) = self.window.as_mut().filter(|w| w.epoch == window) else {
                    return Ok(()); // for a window dropped or done: a late duplicate
                };
                if !w.reading.remove(&shard) {
                    return Ok(());
                }
                w.reads.points.extend(points);
                for (asked, rows) in scans {
                    w.reads.add_scan(asked, rows);
                }
                self.advance()
            }
            Event::Verdicts { window, from, verdicts } => {
                let Some(w) = self.window.as_mut().filter(|w| w.epoch == window) else {
                    return Ok(());
                };
                let Stage::Tallying(_, tally, _) = &mut w.stage else { return Ok(()) };
                tally.record(from, &verdicts)?;
                self.advance()
            }
            Event::PeerFailed { shard, why } => Err(StepError::PeerFailed { shard, why }),
            Event::Stop => {
                self.window = None;
                self.commands.clear();
                Ok(())
            }
        }
    }

    fn on_window(
        &mut self,
        epoch: Epoch,
        ts: Timestamp,
        slice: Vec<(TxnId, Entry)>,
    ) -> Result<(), StepError> {
        if epoch <= self.applied.0 {
            return Ok(()); // a replay of a window already applied
        }
        let expected = self.window.as_ref().map_or(self.next_epoch(), |w| w.epoch.next());
        if epoch != expected || self.window.is_some() {
            return Err(StepError::OutOfOrder { shard: self.shard, got: epoch, expected });
        }
        let mut clients = BTreeMap::new();
        let mut tasks = Vec::with_capacity(self.deferred.len() + slice.len());
        for (task, client) in std::mem::take(&mut self.deferred) {
            clients.insert(task.txn, client);
            tasks.push(task);
        }
        let entries = slice.len();
        for (txn, mut entry) in slice {
            clients.insert(txn, entry.client_id);
            let participants = std::mem::take(&mut entry.participants);
            tasks.push(Task { txn, deferred: false, request: decoded(entry), participants });
        }
        let participants: Participants =
            tasks.iter().map(|t| (t.txn, t.participants.clone())).collect();
        let at = self.applied.1;
        let (reads, pushes) = self.remote_points(&tasks);
        for (to, points) in pushes {
            let points = points.into_iter().collect();
            self.commands.push_back(Command::PushReads { window: epoch, to, at, points });
        }
        let reading: BTreeSet<ShardId> = reads.keys().copied().collect();
        for (shard, (points, pushed)) in reads {
            self.commands.push_back(Command::ReadRemote {
                window: epoch,
                shard,
                at,
                points: points.into_iter().collect(),
                scans: Vec::new(),
                pushed,
                ran: false,
            });
        }
        self.window = Some(Pending {
            epoch,
            ts,
            at,
            entries,
            durable: false,
            clients,
            participants,
            reads: RemoteReads::default(),
            reading,
            runs: 0,
            stage: Stage::Reading(tasks),
        });
        self.advance()
    }

    /// What the first round of remote reads asks for, and what peers ask of this shard.
    ///
    /// Asks: for every other participant of a multi-shard entry, the keys on it that entries
    /// declared as points: they will (or may) read them, so they are asked for together. A
    /// participant with none is still asked, for the wait: its `Snap(e-1)` must exist. Each
    /// ask says whether its peer pushes (it shares an entry with this shard; an entry may
    /// declare a point on a shard it does not name as a participant, which pushes nothing).
    ///
    /// Pushes: for every other participant, this shard's keys that their shared entries
    /// declared as points: exactly what that participant's asks of this shard hold, worked
    /// out the same way from the same entries on its side.
    fn remote_points(&self, tasks: &[Task]) -> (Asks, BTreeMap<ShardId, BTreeSet<Vec<u8>>>) {
        let mut asks: Asks = BTreeMap::new();
        let mut pushes: BTreeMap<ShardId, BTreeSet<Vec<u8>>> = BTreeMap::new();
        let limits = self.mvcc.limits();
        for task in tasks.iter().filter(|t| t.participants.len() > 1) {
            let others = || task.participants.iter().filter(|p| **p != self.shard);
            for p in others() {
                asks.entry(*p).or_default().1 = true;
                pushes.entry(*p).or_default();
            }
            let Ok(Request::Procedure { ranges, .. }) = task.request.as_deref() else { continue };
            for key in ranges.iter().filter_map(KeyRange::as_point) {
                // A key over the limit is never read: the entry aborts before it runs.
                if limits.check_key(key).is_err() {
                    continue;
                }
                match self.map.shard_of(key) {
                    owner if owner == self.shard => {
                        for p in others() {
                            pushes.entry(*p).or_default().insert(key.to_vec());
                        }
                    }
                    owner => {
                        asks.entry(owner).or_default().0.insert(key.to_vec());
                    }
                }
            }
        }
        // An ask of a peer that shares no entry with this shard: it pushes nothing.
        (asks, pushes)
    }

    fn on_durable(&mut self, epoch: Epoch) -> Result<(), StepError> {
        if epoch <= self.applied.0 {
            return Ok(());
        }
        match self.window.as_mut() {
            Some(w) if w.epoch == epoch => {
                w.durable = true;
                self.advance()
            }
            _ => Err(StepError::DurableOutOfTurn(epoch)),
        }
    }

    /// Moves the window in progress as far as what it has allows.
    fn advance(&mut self) -> Result<(), StepError> {
        while let Some(mut w) = self.window.take() {
            match self.progress(&mut w)? {
                Moved::Waiting => {
                    self.window = Some(w);
                    return Ok(());
                }
                Moved::On => self.window = Some(w),
                Moved::Applied => return Ok(()),
            }
        }
        Ok(())
    }

    /// One stage of window `w`, if it has what that stage needs.
    fn progress(&mut self, w: &mut Pending) -> Result<Moved, StepError> {
        match &mut w.stage {
            Stage::Reading(_) | Stage::Rereading(_) if !w.reading.is_empty() => Ok(Moved::Waiting),
            Stage::Reading(_) | Stage::Rereading(_) => {
                let stage = std::mem::replace(&mut w.stage, Stage::Reading(Vec::new()));
                let snapshot = Snap::new(self, w);
                let validated = match stage {
                    Stage::Reading(tasks) => {
                        self.executor.execute(w.epoch, w.ts, tasks, &snapshot)?
                    }
                    Stage::Rereading(before) => self.executor.execute_again(before, &snapshot)?,
                    _ => unreachable!("matched above"),
                };
                let misses = snapshot.misses.into_inner();
                w.runs += 1;
                let first_run = w.runs == 1;
                if first_run {
                    for (to, reads) in validated.shared_reads() {
                        self.commands.push_back(Command::PushRunReads {
                            window: w.epoch,
                            to,
                            at: w.at,
                            points: reads.points.into_iter().collect(),
                            scans: reads.scans.into_iter().collect(),
                        });
                    }
                }
                if !misses.is_empty() {
                    // Reads no peer could answer at once: ask, and run again with them.
                    let sharing = |shard: ShardId| {
                        w.participants
                            .values()
                            .any(|p| p.contains(&shard) && p.contains(&self.shard))
                    };
                    for (shard, (points, scans)) in misses {
                        w.reading.insert(shard);
                        self.commands.push_back(Command::ReadRemote {
                            window: w.epoch,
                            shard,
                            at: w.at,
                            points: points.into_iter().collect(),
                            scans: scans.into_iter().collect(),
                            pushed: false,
                            ran: first_run && sharing(shard),
                        });
                    }
                    w.stage = Stage::Rereading(validated);
                    return Ok(Moved::Waiting);
                }
                let local = validated.local_verdicts();
                let tally = Tally::new(w.epoch, self.shard, &local, &w.participants);
                if !local.is_empty() {
                    let verdicts = local.clone();
                    let waiting = tally.waiting_for();
                    let to = waiting.iter().copied().collect();
                    let window = w.epoch;
                    self.commands.push_back(Command::PublishVerdicts { window, verdicts, to });
                    for from in waiting {
                        self.commands.push_back(Command::PullVerdicts { window, from });
                    }
                }
                w.stage = Stage::Tallying(validated, tally, local);
                Ok(Moved::On)
            }
            Stage::Tallying(_, tally, _) if !tally.is_complete() => Ok(Moved::Waiting),
            Stage::Tallying(..) => {
                let Stage::Tallying(validated, tally, local) =
                    std::mem::replace(&mut w.stage, Stage::Reading(Vec::new()))
                else {
                    unreachable!("matched above");
                };
                let finals = tally.finals().expect("a complete tally has finals");
                let result = self.executor.finish(validated, &finals, &Snap::new(self, w))?;
                let mut batch = result.batch;
                if !local.is_empty() {
                    batch.put_meta(MetaKey::Verdicts(w.epoch), encode_verdicts(&local));
                }
                let deferred: Vec<(Task, ClientId)> = result
                    .deferred
                    .into_iter()
                    .map(|t| {
                        let client = w.clients[&t.txn];
                        (t, client)
                    })
                    .collect();
                // Stored even when empty: the previous window's must not linger.
                batch.put_meta(MetaKey::Deferred, encode_deferred(&deferred));
                // Sized for every outcome: collected through the filter, it grew by
                // doubling, copying each window's outcomes several times.
                let mut decided = Vec::with_capacity(result.outcomes.len());
                decided.extend(
                    result
                        .outcomes
                        .into_iter()
                        .filter(|d| {
                            w.participants.get(&d.txn).and_then(|p| p.first()) == Some(&self.shard)
                        })
                        .map(|d| {
                            let client = w.clients[&d.txn];
                            (d, client)
                        }),
                );
                w.stage = Stage::Decided(Box::new(Ready { batch, decided, finals, deferred }));
                Ok(Moved::On)
            }
            Stage::Decided(_) if !w.durable => Ok(Moved::Waiting),
            Stage::Decided(_) => {
                let Stage::Decided(ready) =
                    std::mem::replace(&mut w.stage, Stage::Reading(Vec::new()))
                else {
                    unreachable!("matched above");
                };
                let Ready { mut batch, decided, finals, deferred } = *ready;
                if let Some(kept) = &mut self.kept {
                    kept.record(&self.mvcc, &mut batch, &decided)?;
                }
                self.digest = chain_digest(self.digest, &batch);
                batch.put_meta(MetaKey::Digest, self.digest.to_le_bytes().to_vec());
                if let Some((retention, floor)) = &self.retention {
                    let floor =
                        Timestamp::from_u64(floor.load(std::sync::atomic::Ordering::SeqCst));
                    let horizon = w.ts.saturating_sub(*retention).min(floor);
                    if horizon.saturating_sub(HORIZON_STEP) >= self.mvcc.horizon() {
                        self.mvcc.raise_horizon(horizon)?;
                    }
                }
                self.commands.push_back(Command::Write(batch));
                self.commands.push_back(Command::Applied {
                    window: w.epoch,
                    ts: w.ts,
                    entries: w.entries,
                    decided,
                    finals,
                    deferred: deferred.iter().map(|(t, _)| t.txn).collect(),
                    digest: self.digest,
                });
                if !deferred.is_empty() {
                    self.commands.push_back(Command::RequestWindow { after: w.epoch });
                }
                self.applied = (w.epoch, w.ts);
                self.deferred = deferred;
                Ok(Moved::Applied)
            }
        }
    }
}

/// How far [`Step::progress`] moved a window.
enum Moved {
    /// It waits for an event.
    Waiting,
    /// It moved to its next stage.
    On,
    /// It is applied (its commands are queued).
    Applied,
}

/// An entry's request: the one its maker kept ([`Entry::decoded`]: the embedded database's
/// callers built it, on threads of their own), else its payload decoded here. Debug builds
/// check the two agree, as replay (which decodes) needs them to.
fn decoded(entry: Entry) -> Result<Arc<Request>, MalformedEntry> {
    match entry.decoded.and_then(|d| d.downcast::<Request>().ok()) {
        Some(request) => {
            debug_assert_eq!(
                Request::decode_shared(entry.payload).as_ref(),
                Ok(&*request),
                "an entry's kept request differs from its payload's"
            );
            Ok(request)
        }
        None => Request::decode_shared(entry.payload).map(Arc::new),
    }
}

/// The first round's asks, by peer: the points, and whether the peer pushes them.
type Asks = BTreeMap<ShardId, (BTreeSet<Vec<u8>>, bool)>;

/// Reads no peer could answer at once, by peer: points and scans.
type Misses = BTreeMap<ShardId, (BTreeSet<Vec<u8>>, BTreeSet<(KeyRange, usize)>)>;

/// `Snap(e-1)` as the step sees it: this shard's keys from its storage; other shards' from
/// the answers to [`Command::ReadRemote`], else from [`Peers`] if they can answer at once,
/// else recorded as a miss (and read as absent: a run with misses is thrown away).
struct Snap<'a> {
    shard: ShardId,
    map: &'a ShardMap,
    mvcc: &'a Mvcc,
    peers: &'a dyn Peers,
    reads: &'a RemoteReads,
    at: Timestamp,
    misses: RefCell<Misses>,
    /// Reads missed so far (counting repeats).
    missed: Cell<usize>,
}

impl<'a> Snap<'a> {
    fn new(step: &'a Step, w: &'a Pending) -> Snap<'a> {
        Snap {
            shard: step.shard,
            map: &step.map,
            mvcc: &step.mvcc,
            peers: &*step.peers,
            reads: &w.reads,
            at: w.at,
            misses: RefCell::default(),
            missed: Cell::new(0),
        }
    }
}

impl SnapshotRead for Snap<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let owner = self.map.shard_of(key);
        if owner == self.shard {
            return Ok(self.mvcc.get(key, self.at)?.map(|v| v.value));
        }
        if let Some(value) = self.reads.points.get(key) {
            return Ok(value.clone());
        }
        if let Some(read) = self.peers.get(owner, key, self.at) {
            return read;
        }
        self.misses.borrow_mut().entry(owner).or_default().0.insert(key.to_vec());
        self.missed.set(self.missed.get() + 1);
        Ok(None)
    }

    fn prefetch(&self, keys: &[&[u8]]) {
        let local = keys.iter().filter(|key| self.map.shard_of(key) == self.shard);
        self.mvcc.prefetch(local.copied());
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, StorageError> {
        scan_shards(self.map, range, limit, |shard, part, left| {
            if shard == self.shard {
                let found = self.mvcc.scan(part, self.at, left)?;
                return Ok(found.into_iter().map(|(k, v)| (k, v.value)).collect());
            }
            if let Some(rows) = self.reads.scan(part, left) {
                return Ok(rows);
            }
            let asked = (part.clone(), left);
            if let Some(read) = self.peers.scan(shard, part, self.at, left) {
                return read;
            }
            self.misses.borrow_mut().entry(shard).or_default().1.insert(asked);
            self.missed.set(self.missed.get() + 1);
            Ok(Vec::new())
        })
    }

    fn first_change(
        &self,
        range: &KeyRange,
        after: Timestamp,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        // Validation reads only this shard's part of what a transaction read.
        let part = self.map.clip(range, self.shard);
        self.mvcc.first_change(&part, after, self.at)
    }

    fn misses(&self) -> usize {
        self.missed.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &[u8]) -> Request {
        Request::Procedure {
            name: "put".into(),
            args: key.to_vec(),
            ranges: vec![KeyRange::point(key)],
        }
    }

    /// An entry's kept request is taken as it is (no payload decoded); without one, or with
    /// something else kept, the payload is decoded; a payload that does not decode is
    /// malformed, as before.
    #[test]
    fn a_kept_request_is_taken_else_the_payload_is_decoded() {
        let entry =
            |r: &Request| Entry::new(ClientId(1), vec![ShardId(0)], r.clone().into_payload());
        let kept = Arc::new(request(b"k"));
        let got = decoded(entry(&kept).with_decoded(kept.clone())).unwrap();
        assert!(Arc::ptr_eq(&got, &kept), "the kept request was not taken");

        let got = decoded(entry(&request(b"j"))).unwrap();
        assert_eq!(*got, request(b"j"));
        let other: Arc<dyn std::any::Any + Send + Sync> = Arc::new(7u32);
        assert_eq!(*decoded(entry(&request(b"j")).with_decoded(other)).unwrap(), request(b"j"));

        let garbage = Entry::new(ClientId(1), vec![ShardId(0)], Arc::from(&b"\xff\xff"[..]));
        assert!(decoded(garbage).is_err());
    }

    /// Debug builds check a kept request against the payload's.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "kept request differs")]
    fn a_kept_request_that_is_not_the_payloads_is_caught_in_debug_builds() {
        let entry = Entry::new(ClientId(1), vec![ShardId(0)], request(b"k").into_payload());
        let _ = decoded(entry.with_decoded(Arc::new(request(b"j"))));
    }
}
