//! The window executor: how one shard applies one sealed window (DESIGN.md section 4).
//!
//! Plain code: no threads, no I/O of its own, no clock. The caller supplies the window's
//! entries for this shard, a reader of the snapshot the previous window left (`Snap(e-1)`,
//! local and remote keys), and, between the two phases, the final verdicts of multi-shard
//! entries from the verdict exchange.
//!
//! ```text
//!   execute (A, B)                       exchange            finish (C, D)
//!   every entry runs on Snap(e-1)  -->   local verdicts  --> committed writes in id order,
//!   read/write sets; verdict per         of multi-shard      then single-shard losers re-run
//!   entry from the reservations          entries, ANDed      in id order on the new state;
//!                                                            multi-shard losers deferred
//! ```
//!
//! **A. Snapshot execution.** Every entry runs against `Snap(e-1)`. A procedure records the keys
//! it read, the ranges it scanned and its writes; touching a key outside its declared ranges
//! aborts it. An interactive transaction brings its sets and fails here if a key or range it
//! read has a version in `Snap(e-1)` newer than its `read_ts`.
//!
//! **B. Verdicts.** In id order: entry `i` loses on this shard if a lower id that won here
//! writes a key `i` writes (write-after-write) or a key or range `i` reads (read-after-write).
//! DESIGN.md counts every lower writer; one that lost here can commit nowhere in this window,
//! so its writes are left out (README, "Departures from DESIGN.md"). An entry that aborted in
//! A writes nothing but still needs its reads fresh for the abort to be final. A multi-shard
//! entry commits iff every participant's local verdict is commit.
//!
//! Adds to counters ([`Context::add`], not in DESIGN.md) are writes that read nothing: a
//! lower winner's add to a key makes a later read of it lose, and a later put or delete of
//! it, but a later add loses only to a lower put or delete of the key. So any number of a
//! window's entries may add to one counter and all commit.
//!
//! **C. Apply.** Committed writes (local keys only) go into one [`VersionBatch`] at the window's
//! timestamp, in id order, each add on the counter the lower winners left. The caller writes
//! it atomically with the watermark.
//!
//! **D. Fallback.** Interactive losers get [`Outcome::Conflict`]. Single-shard procedures that
//! lost are re-executed one by one in id order against the state so far (the snapshot plus
//! this window's writes) and their writes join the batch. Multi-shard procedures that lost
//! are deferred to the front of the next window, identically on every participant.
//!
//! **The plan for single-shard procedures** ([`Plan`]). DESIGN.md runs them in phase A like
//! every other entry ([`Plan::Snapshot`]). Under contention (TPC-C: every New-Order reads and
//! writes its district row) nearly all of them lose in B and run twice.
//! The default, [`Plan::Serial`], skips them in A and B and runs each once in D, in id order,
//! where a loser would have run: the serial order keeps its documented shape (validated
//! entries, then single-shard procedures in id order), nothing they write makes a validated
//! entry lose (they come after all of them), and there is nothing of theirs to validate.
//! A shard runs a window on one thread, so phase A gave them no parallelism to lose. Both plans
//! are functions of the log alone; every replica of a shard must use the same one.
//!
//! Ids: entries deferred from the previous window come first (among themselves in their
//! original id order), then this window's entries in log order. Determinism: the result is a
//! function of the inputs alone; maps are ordered (the window's pending writes are a hash table,
//! read only by key or in key order); storage errors are returned, never turned into a
//! verdict.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use clock::Timestamp;
use indexmap::IndexMap;
use sequencer::{ShardId, TxnId};
use storage::{Epoch, KeyRange, Limits, StorageError, VersionBatch};

use crate::outcome::{AbortReason, Decided, Outcome, Phase, SerialPosition};
use crate::procedure::{
    COUNTER_BYTES, Context, ProcError, Registry, Rows, add_by_reading, counter,
};
use crate::request::{InteractiveCommit, MalformedEntry, Request};
use crate::shard_map::ShardMap;
use crate::snapshot::scan_over;

/// Reads of the state at one fixed timestamp, for any key of the cluster.
pub trait SnapshotRead {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Up to `limit` keys of `range` with values, in order.
    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, StorageError>;
    /// The first key of `range` written after `after` (up to the snapshot's timestamp).
    fn first_change(
        &self,
        range: &KeyRange,
        after: Timestamp,
    ) -> Result<Option<Vec<u8>>, StorageError>;
    /// A hint that `keys` are about to be read: a snapshot may bring what it holds of them
    /// closer (the shards' [`storage::Mvcc::prefetch`]). Changes nothing any read returns.
    fn prefetch(&self, _keys: &[&[u8]]) {}
    /// How many reads so far it could not answer yet (read as absent, and recorded to be
    /// asked for). An entry whose run missed a read is run again once the answers are in
    /// ([`Executor::execute_again`]); a snapshot that answers everything returns 0.
    fn misses(&self) -> usize {
        0
    }
}

/// One entry of a window, as the executor takes it.
#[derive(Debug, Clone)]
pub struct Task {
    /// Its id in the log (for a deferred entry, the id it was first logged with).
    pub txn: TxnId,
    /// True if it was deferred from the previous window.
    pub deferred: bool,
    /// Its participant shards.
    pub participants: Vec<ShardId>,
    /// The decoded request, or why it could not be decoded.
    pub request: Result<Arc<Request>, MalformedEntry>,
}

impl Task {
    fn order(&self) -> (u8, u64, u32) {
        (u8::from(!self.deferred), self.txn.epoch.0, self.txn.index)
    }

    fn multi_shard(&self) -> bool {
        self.participants.len() > 1
    }
}

/// A storage failure while executing: the shard must stop, not guess.
#[derive(Debug, thiserror::Error)]
#[error("window execution failed: {0}")]
pub struct ExecError(pub String);

impl From<StorageError> for ExecError {
    fn from(e: StorageError) -> ExecError {
        ExecError(e.to_string())
    }
}

/// What running an entry on the snapshot produced.
#[derive(Debug, Clone)]
enum Ran {
    Output(Vec<u8>),
    Aborted(AbortReason),
    /// Interactive validation against the snapshot failed on this key.
    Stale(Vec<u8>),
    /// Not run on the snapshot: a single-shard procedure the [`Plan::Serial`] plan runs once,
    /// in phase D.
    Later,
}

/// How a shard runs its single-shard procedures. Every replica of a shard must use the same
/// plan (the verdicts of the window's other entries depend on it); the cluster's shard
/// servers all use [`Plan::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plan {
    /// DESIGN.md section 4 as written: on `Snap(e-1)` with every other entry, validated,
    /// and run again in phase D if they lost. Under contention most lose and run twice.
    Snapshot,
    /// Once each, in id order, in phase D, on the state the window's validated entries left
    /// (as H-Store and VoltDB run a partition's transactions): nothing to validate, nothing
    /// run twice, and no other entry loses to them. Their place in the serial order is the
    /// same as a fallback's: after the validated entries.
    #[default]
    Serial,
}

#[derive(Debug)]
struct Executed {
    task: Task,
    /// Local keys read and local parts of ranges scanned.
    reads: Vec<Vec<u8>>,
    scans: Vec<KeyRange>,
    /// Every write (all shards); only local ones are applied here.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Every add to a counter it did not read (all shards; keys not in `writes`), summed by
    /// key ([`Context::add`]). Kept if the run aborted after them: it found counters there,
    /// which a lower put or delete may have changed.
    adds: BTreeMap<Vec<u8>, i64>,
    ran: Ran,
    /// This shard's verdict.
    local_commit: bool,
    /// A key behind a lost verdict, for the conflict error.
    conflict_key: Option<Vec<u8>>,
    /// The run missed a read the snapshot could not answer yet: its result is not kept.
    missed: bool,
}

/// Executes windows for one shard.
#[derive(Debug, Clone)]
pub struct Executor {
    shard: ShardId,
    map: ShardMap,
    registry: Registry,
    limits: Limits,
    plan: Plan,
}

/// A window after phases A and B, waiting for the final verdicts of its multi-shard entries.
#[derive(Debug)]
pub struct Validated {
    epoch: Epoch,
    ts: Timestamp,
    shard: ShardId,
    entries: Vec<Executed>,
}

/// This shard's keys and the local parts of ranges a run read ([`Validated::shared_reads`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReads {
    /// Keys read.
    pub points: BTreeSet<Vec<u8>>,
    /// Local parts of ranges scanned.
    pub scans: BTreeSet<KeyRange>,
}

/// The result of a window on one shard.
#[derive(Debug)]
pub struct WindowResult {
    /// The writes to apply atomically with the watermark.
    pub batch: VersionBatch,
    /// Every entry's outcome, except deferred ones: validated entries in id order, then
    /// fallbacks (or serially run procedures) in id order.
    pub outcomes: Vec<Decided>,
    /// Multi-shard procedures that lost, for the front of the next window.
    pub deferred: Vec<Task>,
}

impl Executor {
    /// An executor for `shard`.
    pub fn new(shard: ShardId, map: ShardMap, registry: Registry, limits: Limits) -> Executor {
        Executor { shard, map, registry, limits, plan: Plan::default() }
    }

    /// The executor with single-shard procedures run as `plan` says.
    pub fn with_plan(self, plan: Plan) -> Executor {
        Executor { plan, ..self }
    }

    /// The shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    fn is_local(&self, key: &[u8]) -> bool {
        self.map.shard_of(key) == self.shard
    }

    /// Phases A and B: runs `tasks` (in execution order) against `snapshot` and computes this
    /// shard's verdicts.
    pub fn execute(
        &self,
        epoch: Epoch,
        ts: Timestamp,
        tasks: Vec<Task>,
        snapshot: &dyn SnapshotRead,
    ) -> Result<Validated, ExecError> {
        debug_assert!(tasks.windows(2).all(|w| w[0].order() < w[1].order()), "tasks out of order");
        let mut entries = Vec::with_capacity(tasks.len());
        for task in tasks {
            entries.push(self.run_on_snapshot(task, ts, snapshot)?);
        }
        Ok(self.validate(epoch, ts, entries))
    }

    /// Phases A and B again, after a run that missed reads ([`SnapshotRead::misses`]), on a
    /// snapshot that now answers them: the entries whose run missed are run again; the others
    /// keep their run, which read only what was answered then and is answered the same now
    /// (a run is a function of what it reads). Verdicts are computed afresh.
    pub fn execute_again(
        &self,
        before: Validated,
        snapshot: &dyn SnapshotRead,
    ) -> Result<Validated, ExecError> {
        let Validated { epoch, ts, entries: before, .. } = before;
        let mut entries = Vec::with_capacity(before.len());
        for e in before {
            entries.push(match e.missed {
                true => self.run_on_snapshot(e.task, ts, snapshot)?,
                false => e,
            });
        }
        Ok(self.validate(epoch, ts, entries))
    }

    /// Phase B: this shard's verdict on each entry run in phase A, in id order. Only the
    /// writes of lower entries that won here count against an entry: one that lost here
    /// cannot commit in this window (a multi-shard entry's final verdict is the AND of its
    /// participants'), so nothing it would have written is in any state a later entry's
    /// position sees. A lower entry that won here counts whatever its final verdict: that
    /// is not known yet, and counting it only ever makes an entry lose.
    fn validate(&self, epoch: Epoch, ts: Timestamp, mut entries: Vec<Executed>) -> Validated {
        // B. The local keys written (put, deleted or added to) by the entries that won here
        // so far, and of those the keys put or deleted.
        let mut written: BTreeSet<&[u8]> = BTreeSet::new();
        let mut replaced: BTreeSet<&[u8]> = BTreeSet::new();
        let mut verdicts = Vec::with_capacity(entries.len());
        for e in &entries {
            if matches!(e.ran, Ran::Later) {
                // Runs after every validated entry: it neither loses nor makes others lose.
                verdicts.push(None);
                continue;
            }
            // `written` holds local keys only. An add conflicts only with a lower put or
            // delete: adds commute, and it read nothing a lower add changed.
            let waw = e
                .writes
                .keys()
                .find(|k| written.contains(k.as_slice()))
                .or_else(|| e.adds.keys().find(|k| replaced.contains(k.as_slice())));
            let raw =
                e.reads.iter().find(|k| written.contains(k.as_slice())).cloned().or_else(|| {
                    e.scans.iter().find_map(|r| {
                        written.range::<[u8], _>(range_bounds(r)).next().map(|k| k.to_vec())
                    })
                });
            let conflict = match (&e.ran, waw, raw) {
                (Ran::Stale(k), _, _) => Some(k.clone()),
                (_, Some(k), _) => Some(k.clone()),
                (_, _, Some(k)) => Some(k),
                _ => None,
            };
            if conflict.is_none() {
                for k in e.writes.keys().filter(|k| self.is_local(k)) {
                    replaced.insert(k.as_slice());
                    written.insert(k.as_slice());
                }
                if matches!(e.ran, Ran::Output(_)) {
                    written.extend(e.adds.keys().filter(|k| self.is_local(k)).map(Vec::as_slice));
                }
            }
            verdicts.push(conflict);
        }
        for (e, conflict) in entries.iter_mut().zip(verdicts) {
            e.local_commit = conflict.is_none() && !matches!(e.ran, Ran::Later);
            e.conflict_key = conflict;
        }
        Validated { epoch, ts, shard: self.shard, entries }
    }

    /// Phase A for one entry.
    fn run_on_snapshot(
        &self,
        task: Task,
        ts: Timestamp,
        snapshot: &dyn SnapshotRead,
    ) -> Result<Executed, ExecError> {
        let mut e = Executed {
            reads: Vec::new(),
            scans: Vec::new(),
            writes: BTreeMap::new(),
            adds: BTreeMap::new(),
            ran: Ran::Output(Vec::new()),
            local_commit: false,
            conflict_key: None,
            missed: false,
            task,
        };
        let misses = snapshot.misses();
        if !self.runs_on_snapshot(&e.task) {
            e.ran = Ran::Later;
            return Ok(e);
        }
        if let Ok(request) = &e.task.request
            && let Err(reason) = request.check(&self.limits)
        {
            // Logged by a node that did not check it: refused here, before any read, alike
            // on every participant.
            e.ran = Ran::Aborted(reason);
            return Ok(e);
        }
        match e.task.request.as_deref() {
            Err(why) => e.ran = Ran::Aborted(AbortReason::Malformed(why.to_string())),
            Ok(Request::Procedure { name, args, ranges }) => {
                snapshot.prefetch(&declared_points(ranges));
                let mut ctx = ProcContext::new(ranges, snapshot, None, ts, self.limits, true);
                e.ran = self.run_procedure(name, args, &mut ctx)?;
                if matches!(e.ran, Ran::Output(_)) {
                    e.writes = ctx.writes;
                }
                // Kept even if it aborted: an abort after an add is right only if the value
                // added to is still a counter where the entry stands (see `validate`).
                e.adds = ctx.adds;
                e.reads = ctx.reads.into_iter().filter(|k| self.is_local(k)).collect();
                e.scans = self.clip_scans(&ctx.scans);
            }
            Ok(Request::Interactive(commit)) => {
                e.ran = self.validate_interactive(commit, snapshot)?;
                e.reads = commit.reads.iter().filter(|k| self.is_local(k)).cloned().collect();
                e.scans = self.clip_scans(&commit.scans);
                e.writes = commit.writes.iter().cloned().collect();
                let writes = e.writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
                if let Some(reason) = self.check_write_limits(writes, &e.adds) {
                    e.ran = Ran::Aborted(reason);
                    e.writes.clear();
                }
            }
        }
        e.missed = snapshot.misses() != misses;
        Ok(e)
    }

    /// Whether phase A runs `task` on the snapshot (else phase D runs it, serially).
    fn runs_on_snapshot(&self, task: &Task) -> bool {
        self.plan != Plan::Serial
            || task.multi_shard()
            || !matches!(task.request.as_deref(), Ok(Request::Procedure { .. }))
    }

    fn clip_scans(&self, scans: &[KeyRange]) -> Vec<KeyRange> {
        scans.iter().map(|r| self.map.clip(r, self.shard)).filter(|r| !r.is_empty()).collect()
    }

    fn run_procedure(
        &self,
        name: &str,
        args: &[u8],
        ctx: &mut ProcContext<'_>,
    ) -> Result<Ran, ExecError> {
        let Some(procedure) = self.registry.get(name) else {
            return Ok(Ran::Aborted(AbortReason::UnknownProcedure(name.to_string())));
        };
        Ok(match procedure.run(ctx, args) {
            Ok(output) => match self.check_write_limits(ctx.written(), &ctx.adds) {
                Some(reason) => Ran::Aborted(reason),
                None => Ran::Output(output),
            },
            Err(e) => Ran::Aborted(e.into_abort().map_err(ExecError)?),
        })
    }

    /// Whether the transaction's writes (each add a counter's worth) together exceed the
    /// batch limit.
    fn check_write_limits<'w>(
        &self,
        writes: impl Iterator<Item = (&'w [u8], Option<&'w [u8]>)>,
        adds: &'w BTreeMap<Vec<u8>, i64>,
    ) -> Option<AbortReason> {
        const A_COUNTER: [u8; COUNTER_BYTES] = [0; COUNTER_BYTES];
        let adds = adds.keys().map(|k| (k.as_slice(), Some(&A_COUNTER[..])));
        let all = writes.chain(adds);
        self.limits.check_writes(all).err().map(|e| AbortReason::TooLarge(e.to_string()))
    }

    /// Phase A for an interactive transaction: nothing it read (on this shard) may have
    /// changed between its snapshot and `Snap(e-1)`.
    fn validate_interactive(
        &self,
        commit: &InteractiveCommit,
        snapshot: &dyn SnapshotRead,
    ) -> Result<Ran, ExecError> {
        for key in commit.reads.iter().filter(|k| self.is_local(k)) {
            if snapshot.first_change(&KeyRange::point(key), commit.read_ts)?.is_some() {
                return Ok(Ran::Stale(key.clone()));
            }
        }
        for range in self.clip_scans(&commit.scans) {
            if let Some(key) = snapshot.first_change(&range, commit.read_ts)? {
                return Ok(Ran::Stale(key));
            }
        }
        Ok(Ran::Output(Vec::new()))
    }

    /// Phases C and D, given the final verdicts of this window's multi-shard entries (the AND
    /// of every participant's local verdict). `snapshot` is the same one `execute` read.
    pub fn finish(
        &self,
        validated: Validated,
        final_verdicts: &BTreeMap<TxnId, bool>,
        snapshot: &dyn SnapshotRead,
    ) -> Result<WindowResult, ExecError> {
        let Validated { epoch, ts, entries, .. } = validated;
        let mut state = WindowState::default();
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut fallbacks = Vec::new();
        let mut deferred = Vec::new();
        let at = |phase, task: &Task| Some(SerialPosition { epoch, phase, order: task.order() });
        let decided = |txn, outcome, position| Decided { txn, outcome, position };

        // C. Winners, in id order.
        for e in entries {
            let commit = if e.task.multi_shard() {
                *final_verdicts.get(&e.task.txn).ok_or_else(|| {
                    ExecError(format!("no final verdict for multi-shard entry {}", e.task.txn))
                })?
            } else {
                e.local_commit
            };
            let txn = e.task.txn;
            match (commit, e.ran) {
                (true, Ran::Output(output)) => {
                    for (k, v) in e.writes.into_iter().filter(|(k, _)| self.is_local(k)) {
                        state.insert(k, v);
                    }
                    // Added to what the lower winners left. None of them put or deleted the
                    // key (that would have made this entry lose), so it holds the counter
                    // phase A checked in `Snap(e-1)`, plus their adds.
                    for (k, delta) in e.adds.into_iter().filter(|(k, _)| self.is_local(k)) {
                        let base = match state.get(&k) {
                            Some(v) => v.clone(),
                            None => snapshot.get(&k)?,
                        };
                        let base = counter(&k, base.as_deref()).map_err(|why| {
                            ExecError(format!("entry {txn} validated an add that fails: {why}"))
                        })?;
                        state.insert(k, Some(base.wrapping_add(delta).to_le_bytes().to_vec()));
                    }
                    let position = at(Phase::Validated, &e.task);
                    outcomes.push(decided(txn, Outcome::Committed { ts, output }, position));
                }
                (true, Ran::Aborted(reason)) => {
                    let position =
                        if reason.follows_reads() { at(Phase::Validated, &e.task) } else { None };
                    outcomes.push(decided(txn, Outcome::Aborted(reason), position));
                }
                (true, Ran::Stale(_)) => unreachable!("a stale read never wins a local verdict"),
                (true, Ran::Later) => unreachable!("an entry run later has no verdict yet"),
                (false, ran) => match (e.task.request.as_deref(), ran) {
                    // Refused for size on every shard alike: retrying cannot help.
                    (Ok(Request::Interactive(_)), Ran::Aborted(reason)) => {
                        outcomes.push(decided(txn, Outcome::Aborted(reason), None));
                    }
                    (Ok(Request::Interactive(_)), _) => {
                        let key = e.conflict_key.clone();
                        outcomes.push(decided(txn, Outcome::Conflict { key }, None));
                    }
                    _ if e.task.multi_shard() => deferred.push(e.task),
                    (_, ran) => fallbacks.push((e.task, matches!(ran, Ran::Later))),
                },
            }
        }

        // D. Single-shard losers (or, with the serial plan, every single-shard procedure), one
        // by one on the state so far.
        for (task, first_run) in fallbacks {
            let Ok(request @ Request::Procedure { name, args, ranges }) = task.request.as_deref()
            else {
                unreachable!("only procedures fall back");
            };
            snapshot.prefetch(&declared_points(ranges));
            let phase = if first_run { Phase::Serial } else { Phase::Fallback };
            // A loser passed this check in phase A; an entry first run here has not had it.
            let checked = if first_run { request.check(&self.limits) } else { Ok(()) };
            let ran = match checked {
                Err(reason) => Ran::Aborted(reason),
                Ok(()) => {
                    // It writes into the state as it runs; an abort puts the state back.
                    let mut ctx = ProcContext::new(
                        ranges,
                        snapshot,
                        Some(&mut state),
                        ts,
                        self.limits,
                        false,
                    );
                    let ran = self.run_procedure(name, args, &mut ctx)?;
                    if !matches!(ran, Ran::Output(_)) {
                        ctx.roll_back();
                    }
                    ran
                }
            };
            let position = match (&ran, phase) {
                // As for an entry refused in phase A: its reads played no part.
                (Ran::Aborted(reason), Phase::Serial) if !reason.follows_reads() => None,
                _ => at(phase, &task),
            };
            let outcome = match ran {
                Ran::Output(output) => Outcome::Committed { ts, output },
                Ran::Aborted(reason) => Outcome::Aborted(reason),
                Ran::Stale(_) | Ran::Later => unreachable!("procedures run here are never stale"),
            };
            outcomes.push(decided(task.txn, outcome, position));
        }

        let batch = VersionBatch::with_writes(epoch, ts, state.into_ordered());
        for task in &mut deferred {
            task.deferred = true;
        }
        Ok(WindowResult { batch, outcomes, deferred })
    }
}

impl Validated {
    /// This shard's local verdicts of the window's multi-shard entries, for the exchange.
    pub fn local_verdicts(&self) -> Vec<(TxnId, bool)> {
        self.entries
            .iter()
            .filter(|e| e.task.multi_shard())
            .map(|e| (e.task.txn, e.local_commit))
            .collect()
    }

    /// The window.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// By peer: what this shard's run of the procedures it shares with that peer read of its
    /// own keys beyond the points they declared (those the peer had pushed to it already,
    /// [`crate::Command::PushReads`]): the keys, and the local parts of the ranges scanned.
    /// The peer, running the same procedures, is likely to read them too.
    pub fn shared_reads(&self) -> BTreeMap<ShardId, RunReads> {
        let mut by_peer: BTreeMap<ShardId, (RunReads, BTreeSet<&[u8]>)> = BTreeMap::new();
        for e in self.entries.iter().filter(|e| e.task.multi_shard()) {
            let Ok(Request::Procedure { ranges, .. }) = e.task.request.as_deref() else { continue };
            for p in e.task.participants.iter().filter(|p| **p != self.shard) {
                let (reads, declared) = by_peer.entry(*p).or_default();
                declared.extend(ranges.iter().filter_map(KeyRange::as_point));
                reads.points.extend(e.reads.iter().cloned());
                reads.scans.extend(e.scans.iter().cloned());
            }
        }
        by_peer
            .into_iter()
            .map(|(p, (mut reads, declared))| {
                reads.points.retain(|k| !declared.contains(k.as_slice()));
                (p, reads)
            })
            .filter(|(_, reads)| !reads.points.is_empty() || !reads.scans.is_empty())
            .collect()
    }
}

/// The keys a procedure declared as points, which it is likely to read: a hint for
/// [`SnapshotRead::prefetch`], just before it runs (earlier, on this project's machine, what
/// was fetched had left the processor's caches again by the time it was read).
fn declared_points(ranges: &[KeyRange]) -> Vec<&[u8]> {
    ranges.iter().filter_map(KeyRange::as_point).collect()
}

fn range_bounds(r: &KeyRange) -> (std::ops::Bound<&[u8]>, std::ops::Bound<&[u8]>) {
    use std::ops::Bound;
    let end = match &r.end {
        Some(e) => Bound::Excluded(e.as_slice()),
        None => Bound::Unbounded,
    };
    (Bound::Included(r.start.as_slice()), end)
}

/// The window's pending writes in phases C and D (the winners', then each procedure run
/// serially), which later procedures read: a hash table of the values, with their keys'
/// order made only when something reads in it (a procedure's scan; the window's batch at the
/// end, which holds them in key order). A window writes a few thousand keys, each written
/// once or a few times and mostly never read back in order (TPC-C's new-order-payment mix
/// scans nothing); an ordered tree paid a search of a score of keys, each behind a pointer,
/// for every insert (7% of the shard thread in the README's profile, and as much again for
/// the batch's own tree, now built at once), where placing the keys once is a sort of small
/// fixed-size records. The table's hasher is seeded per process (as
/// the row cache's), so a client cannot choose keys that collide; the order is the keys'
/// alone, so the batch, and the digest over it, are as before.
#[derive(Default)]
struct WindowState {
    /// Each key written and its last value, in the order first written.
    values: IndexMap<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>,
    /// The first `order.len()` entries of `values` in key order: their positions, each with
    /// its key's first bytes ([`sort_prefix`]), which decide most comparisons.
    order: RefCell<Vec<(u128, usize)>>,
}

/// A procedure's run in phase D: what it changed in the [`WindowState`], so that an abort
/// can undo it. It writes in place, rather than into a buffer of its own merged in when it
/// commits: a New-Order writes two dozen keys and reads some back, and each went into an
/// ordered buffer and then into the state (15% of the shard thread in the README's profile,
/// twenty-fourth session).
struct Run {
    /// How many entries the state held when the run began: those after are keys it added.
    from: usize,
    /// The values of earlier keys it replaced, each with its position, in the order replaced.
    replaced: Vec<(usize, Option<Vec<u8>>)>,
}

/// Up to this many entries not yet in the order are read past one by one by a scan; more
/// are placed first.
const UNPLACED_SCANNED: usize = 32;

/// A key's first 16 bytes as a big-endian number, zero-padded: two keys whose numbers differ
/// compare as the numbers do (where they are equal, the keys themselves decide).
fn sort_prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(bytes)
}

impl WindowState {
    fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.values.get(key)
    }

    fn insert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        // A key written before keeps its place (and its place in the order).
        self.values.insert(key, value);
    }

    /// Begins a procedure's run in phase D, which writes into the state as it goes
    /// ([`WindowState::write`]).
    fn begin(&self) -> Run {
        Run { from: self.values.len(), replaced: Vec::new() }
    }

    /// A write of `run`: the key's value replaced in place (for a key the state held before
    /// the run, the value replaced kept in `run`, for [`WindowState::roll_back`]) or the key
    /// added at the end; a key already in the state is not copied again.
    fn write(&mut self, run: &mut Run, key: &[u8], value: Option<Vec<u8>>) {
        match self.values.get_full_mut(key) {
            Some((at, _, v)) => {
                let earlier = std::mem::replace(v, value);
                if at < run.from {
                    run.replaced.push((at, earlier));
                }
            }
            None => {
                self.values.insert(key.to_vec(), value);
            }
        }
    }

    /// The keys `run` wrote, each once, with their values now.
    fn written<'s>(&'s self, run: &Run) -> impl Iterator<Item = (&'s [u8], Option<&'s [u8]>)> {
        let mut earlier: Vec<usize> = run.replaced.iter().map(|(at, _)| *at).collect();
        earlier.sort_unstable();
        earlier.dedup();
        earlier.into_iter().chain(run.from..self.values.len()).map(|at| {
            let (k, v) = self.values.get_index(at).expect("an entry of the state");
            (k.as_slice(), v.as_deref())
        })
    }

    /// Undoes `run`'s writes: the values it replaced back (in reverse, so a key replaced
    /// twice gets the first one), the keys it added gone, and gone from the order too if a
    /// scan had placed them.
    fn roll_back(&mut self, run: Run) {
        for (at, earlier) in run.replaced.into_iter().rev() {
            *self.values.get_index_mut(at).expect("an entry of the state").1 = earlier;
        }
        self.values.truncate(run.from);
        self.order.get_mut().retain(|&(_, at)| at < run.from);
    }

    fn key(&self, at: usize) -> &[u8] {
        self.values.get_index(at).map_or(&[], |(k, _)| k.as_slice())
    }

    /// How an entry of the order compares with a key and its prefix.
    fn compare(&self, entry: &(u128, usize), prefix: u128, key: &[u8]) -> std::cmp::Ordering {
        entry.0.cmp(&prefix).then_with(|| self.key(entry.1).cmp(key))
    }

    /// Puts the entries written since the last call into the order.
    fn place(&self) {
        let mut order = self.order.borrow_mut();
        let placed = order.len();
        if placed == self.values.len() {
            return;
        }
        let mut new: Vec<(u128, usize)> =
            (placed..self.values.len()).map(|at| (sort_prefix(self.key(at)), at)).collect();
        new.sort_unstable_by(|a, b| self.compare(a, b.0, self.key(b.1)));
        if placed == 0 {
            *order = new;
            return;
        }
        // Each new entry is searched for in what is left of the old order (both in key
        // order), and the old entries before it copied over.
        let old = std::mem::take(&mut *order);
        let mut merged = Vec::with_capacity(old.len() + new.len());
        let mut rest = old.as_slice();
        for entry in new {
            let key = self.key(entry.1);
            let at = rest.partition_point(|o| self.compare(o, entry.0, key).is_lt());
            merged.extend_from_slice(&rest[..at]);
            merged.push(entry);
            rest = &rest[at..];
        }
        merged.extend_from_slice(rest);
        *order = merged;
    }

    /// The entries in `range`, in key order.
    fn range(&self, range: &KeyRange) -> Vec<(&[u8], &Option<Vec<u8>>)> {
        if self.values.len() - self.order.borrow().len() > UNPLACED_SCANNED {
            self.place();
        }
        let order = self.order.borrow();
        let within_end = |key: &[u8]| range.end.as_deref().is_none_or(|end| key < end);
        let entry = |at: usize| self.values.get_index(at).map(|(k, v)| (k.as_slice(), v));
        let prefix = sort_prefix(&range.start);
        let first = order.partition_point(|o| self.compare(o, prefix, &range.start).is_lt());
        let mut found: Vec<(&[u8], &Option<Vec<u8>>)> = order[first..]
            .iter()
            .filter_map(|o| entry(o.1))
            .take_while(|(k, _)| within_end(k))
            .collect();
        let unplaced = (order.len()..self.values.len()).filter_map(entry);
        let before = found.len();
        found.extend(unplaced.filter(|(k, _)| range.contains(k)));
        if found.len() > before {
            found.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        found
    }

    /// Every entry, in key order.
    fn into_ordered(self) -> impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)> {
        self.place();
        let order = self.order.into_inner();
        let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = self.values.into_iter().collect();
        order.into_iter().map(move |(_, at)| std::mem::take(&mut entries[at]))
    }
}

/// A procedure's declared ranges, and the question asked of them on every access: is a key,
/// or a whole range, inside one of them? A few ranges are checked one by one, borrowed as they
/// are; a call that declares many (thousands of list-append keys) gets an index once, so each
/// check is a binary search rather than a pass over every range.
pub(crate) struct Declared<'a> {
    ranges: &'a [KeyRange],
    /// With many ranges: them sorted by start, each with the greatest end among it and those
    /// before it.
    index: Option<Vec<DeclaredStart<'a>>>,
}

/// A declared range's start in [`Declared`]'s index.
struct DeclaredStart<'a> {
    /// `start`'s [`sort_prefix`]: most comparisons end on it, without reading the key.
    prefix: u128,
    start: &'a [u8],
    /// The greatest end of this range and those before it (`None`: unbounded).
    reach: Option<&'a [u8]>,
}

/// Above this many declared ranges, [`Declared`] builds its index.
const DECLARED_SCAN: usize = 16;

impl<'a> Declared<'a> {
    pub(crate) fn new(ranges: &'a [KeyRange]) -> Declared<'a> {
        if ranges.len() <= DECLARED_SCAN {
            return Declared { ranges, index: None };
        }
        let mut index: Vec<DeclaredStart<'a>> = ranges
            .iter()
            .map(|r| DeclaredStart {
                prefix: sort_prefix(&r.start),
                start: &r.start,
                reach: r.end.as_deref(),
            })
            .collect();
        // Calls made by `procedure_request` declare their ranges sorted already.
        index.sort_by(|a, b| (a.prefix, a.start).cmp(&(b.prefix, b.start)));
        // Each range's own end becomes the greatest so far.
        let mut greatest: Option<Option<&[u8]>> = None;
        for d in &mut index {
            let g = match greatest {
                None => d.reach,
                Some(None) => None,
                Some(Some(g)) => d.reach.map(|e| e.max(g)),
            };
            greatest = Some(g);
            d.reach = g;
        }
        Declared { ranges, index: Some(index) }
    }

    /// How many indexed ranges start at or before `key` (whose prefix is `prefix`).
    fn starting_by(index: &[DeclaredStart<'_>], prefix: u128, key: &[u8]) -> usize {
        index.partition_point(|d| d.prefix < prefix || (d.prefix == prefix && d.start <= key))
    }

    /// Whether some declared range starting at or before `start` ends at or after `end`
    /// (`None`: unbounded), i.e. holds every key of `[start, end)`.
    fn holds(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        let reaches = |declared_end: Option<&[u8]>| match (declared_end, end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(d), Some(e)) => e <= d,
        };
        match &self.index {
            None => {
                self.ranges.iter().any(|r| r.start.as_slice() <= start && reaches(r.end.as_deref()))
            }
            Some(index) => {
                let at = Self::starting_by(index, sort_prefix(start), start);
                at.checked_sub(1).is_some_and(|i| reaches(index[i].reach))
            }
        }
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match &self.index {
            None => self.ranges.iter().any(|r| r.contains(key)),
            // `holds(key, key + [0])` (the point range of `key`), without building its end:
            // `key + [0] <= end` exactly when `key < end`.
            Some(index) => {
                let at = Self::starting_by(index, sort_prefix(key), key);
                at.checked_sub(1).is_some_and(|i| index[i].reach.is_none_or(|end| key < end))
            }
        }
    }

    /// Whether every key of `range` is in one declared range.
    pub(crate) fn covers(&self, range: &KeyRange) -> bool {
        self.holds(&range.start, range.end.as_deref())
    }
}

/// The context a procedure runs against: declared ranges enforced, reads recorded, writes
/// buffered (phase A) or made in the window's state so far (phase D, undone if the run
/// aborts), reads served from those, then the snapshot.
struct ProcContext<'a> {
    declared: Declared<'a>,
    snapshot: &'a dyn SnapshotRead,
    /// Phase D: the window's state, which the run reads and writes, and what it changed there.
    window_state: Option<(&'a mut WindowState, Run)>,
    now: Timestamp,
    limits: Limits,
    /// Whether to record reads and scans (for validation; phase D does not validate).
    record: bool,
    reads: Vec<Vec<u8>>,
    scans: Vec<KeyRange>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Adds to counters it has not read, summed by key (phase A only; never a key of
    /// `writes`).
    adds: BTreeMap<Vec<u8>, i64>,
}

impl<'a> ProcContext<'a> {
    fn new(
        declared: &'a [KeyRange],
        snapshot: &'a dyn SnapshotRead,
        window_state: Option<&'a mut WindowState>,
        now: Timestamp,
        limits: Limits,
        record: bool,
    ) -> ProcContext<'a> {
        ProcContext {
            declared: Declared::new(declared),
            snapshot,
            window_state: window_state.map(|state| {
                let run = state.begin();
                (state, run)
            }),
            now,
            limits,
            record,
            reads: Vec::new(),
            scans: Vec::new(),
            writes: BTreeMap::new(),
            adds: BTreeMap::new(),
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), ProcError> {
        self.limits.check_key(key).map_err(|e| ProcError::TooLarge(e.to_string()))?;
        if !self.declared.contains(key) {
            return Err(ProcError::OutsideDeclaredRanges { key: key.to_vec() });
        }
        Ok(())
    }

    /// Turns the procedure's adds to `key`, about to be read, into a write of their sum on
    /// the snapshot's counter.
    fn read_adds(&mut self, key: &[u8]) -> Result<(), ProcError> {
        if let Some(delta) = self.adds.remove(key) {
            let base = self.snapshot.get(key).map_err(storage)?;
            let sum = counter(key, base.as_deref())?.wrapping_add(delta);
            self.write(key, Some(sum.to_le_bytes().to_vec()));
        }
        Ok(())
    }

    /// The pending value of `key`: in this procedure's writes (phase A) or the window's state
    /// (phase D, its writes among them).
    fn pending(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        match &self.window_state {
            Some((state, _)) => state.get(key).cloned(),
            None => self.writes.get(key).cloned(),
        }
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        match &mut self.window_state {
            Some((state, run)) => state.write(run, key, value),
            None => {
                self.writes.insert(key.to_vec(), value);
            }
        }
    }

    /// Every key the procedure wrote, once, with its value.
    fn written(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        let buffered = self.writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
        buffered.chain(self.window_state.iter().flat_map(|(state, run)| state.written(run)))
    }

    /// Undoes the run's writes to the window's state (phase D), for a run that aborted.
    fn roll_back(&mut self) {
        if let Some((state, run)) = self.window_state.take() {
            state.roll_back(run);
        }
    }
}

fn storage(e: StorageError) -> ProcError {
    ProcError::Storage(e.to_string())
}

impl Context for ProcContext<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ProcError> {
        self.check_key(key)?;
        if self.record {
            self.reads.push(key.to_vec());
        }
        self.read_adds(key)?;
        match self.pending(key) {
            Some(v) => Ok(v),
            None => self.snapshot.get(key).map_err(storage),
        }
    }

    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Rows, ProcError> {
        // Checked here, alike on every participant, so that no storage or peer is ever asked
        // for a range it would refuse.
        self.limits.check_range(range).map_err(|e| ProcError::TooLarge(e.to_string()))?;
        if !self.declared.covers(range) {
            return Err(ProcError::OutsideDeclaredRanges { key: range.start.clone() });
        }
        if self.record {
            self.scans.push(range.clone());
        }
        let added: Vec<Vec<u8>> =
            self.adds.range::<[u8], _>(range_bounds(range)).map(|(k, _)| k.clone()).collect();
        for key in added {
            self.read_adds(&key)?;
        }
        // Pending writes in the range: the window's state (phase D, own writes among them)
        // and own writes (phase A).
        let mut pending: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        if let Some((state, _)) = &self.window_state {
            let in_range = state.range(range);
            pending.extend(in_range.into_iter().map(|(k, v)| (k.to_vec(), v.clone())));
        }
        pending.extend(
            self.writes.range::<[u8], _>(range_bounds(range)).map(|(k, v)| (k.clone(), v.clone())),
        );
        scan_over(self.snapshot, range, limit, pending).map_err(storage)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ProcError> {
        self.check_key(key)?;
        self.limits.check_value(key, value).map_err(|e| ProcError::TooLarge(e.to_string()))?;
        self.adds.remove(key);
        self.write(key, Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), ProcError> {
        self.check_key(key)?;
        self.adds.remove(key);
        self.write(key, None);
        Ok(())
    }

    /// In phase A, on a key the procedure has not written: recorded as an add, not as a read
    /// and a write (see [`Context::add`]). The snapshot's value must be a counter, alike on
    /// every participant; if it is not, the procedure aborts with the key recorded as read,
    /// so that the abort stands only if no lower entry of the window changed the key. Its
    /// adds apply in phase C, on what the lower winners left: none of them put or deleted
    /// the key, or this entry would have lost. In phase D it reads and writes.
    fn add(&mut self, key: &[u8], delta: i64) -> Result<(), ProcError> {
        self.check_key(key)?;
        if self.window_state.is_some() || self.writes.contains_key(key) {
            return add_by_reading(self, key, delta);
        }
        if !self.adds.contains_key(key) {
            let value = self.snapshot.get(key).map_err(storage)?;
            if let Err(why) = counter(key, value.as_deref()) {
                if self.record {
                    self.reads.push(key.to_vec());
                }
                return Err(why);
            }
        }
        let sum = self.adds.entry(key.to_vec()).or_insert(0);
        *sum = sum.wrapping_add(delta);
        Ok(())
    }

    fn now(&self) -> Timestamp {
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index many declared ranges get answers as the range-by-range check does, for
    /// overlapping, nested, unbounded and point ranges alike, declared in any order (seeded,
    /// exhaustive over a small key space).
    #[test]
    fn declared_ranges_answer_the_same_indexed_or_not() {
        // Short keys (`[a]` and `[a, 0]` tie on their 16-byte prefixes), and long ones sharing
        // their first 16 bytes.
        let keys: Vec<Vec<u8>> = (0..=4u8)
            .flat_map(|a| std::iter::once(vec![a]).chain((0..=4u8).map(move |b| vec![a, b])))
            .chain([Vec::new(), vec![2; 16]])
            .chain((0..=2u8).map(|b| [vec![2; 16], vec![b]].concat()))
            .collect();
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for round in 0..200 {
            let ranges: Vec<KeyRange> = (0..DECLARED_SCAN + 1 + next(20))
                .map(|_| {
                    let start = keys[next(keys.len())].clone();
                    match next(4) {
                        0 => KeyRange::point(&start),
                        1 => KeyRange::from(start),
                        _ => KeyRange { start, end: Some(keys[next(keys.len())].clone()) },
                    }
                })
                .collect();
            let indexed = Declared::new(&ranges);
            assert!(indexed.index.is_some());
            let plain = Declared { ranges: &ranges, index: None };
            for key in &keys {
                assert_eq!(indexed.contains(key), plain.contains(key), "round {round}: {key:?}");
                for end in &keys {
                    let range = KeyRange { start: key.clone(), end: Some(end.clone()) };
                    assert_eq!(indexed.covers(&range), plain.covers(&range), "round {round}");
                }
                let open = KeyRange::from(key.clone());
                assert_eq!(indexed.covers(&open), plain.covers(&open), "round {round}");
            }
        }
    }

    /// The window state answers as an ordered map given the same writes would: each key's
    /// last value (deletions among them) or nothing, the entries of a range in key order
    /// (with few and with many entries not yet placed in the order), and at the end every
    /// entry in key order; a phase D run's writes, kept or rolled back, and the keys it wrote.
    /// Keys that tie on their first 16 bytes are among them. Seeded; the seed is printed.
    #[test]
    fn the_window_state_answers_as_an_ordered_map_would() {
        use rand::{Rng, SeedableRng};
        for seed in 0..3u64 {
            eprintln!("seed {seed}");
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut state = WindowState::default();
            let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            // Short keys, and long ones sharing their first 16 bytes or all but the last
            // (where the prefixes tie and the keys decide), from a small alphabet so that
            // keys repeat and ranges hold some.
            let key = |rng: &mut rand::rngs::StdRng| -> Vec<u8> {
                let mut k: Vec<u8> = match rng.random_range(0..3) {
                    0 => Vec::new(),
                    1 => vec![7; 15],
                    _ => vec![7; 16],
                };
                k.extend(
                    (0..rng.random_range(0..4)).map(|_| [0, 1, 7, 255][rng.random_range(0..4)]),
                );
                k
            };
            for step in 0..20_000 {
                match rng.random_range(0..10) {
                    0..5 => {
                        let (k, v) =
                            (key(&mut rng), rng.random_bool(0.8).then(|| vec![step as u8]));
                        state.insert(k.clone(), v.clone());
                        model.insert(k, v);
                    }
                    5 => {
                        // A run: writes (some of keys it wrote already), its new keys
                        // placed in the order now and then (as a scan would); then kept,
                        // or rolled back to the state before it.
                        let mut run = state.begin();
                        let before = model.clone();
                        let mut wrote: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
                        for i in 0..rng.random_range(0..40u8) {
                            let (k, v) = (key(&mut rng), rng.random_bool(0.8).then(|| vec![i]));
                            state.write(&mut run, &k, v.clone());
                            model.insert(k.clone(), v.clone());
                            wrote.insert(k, v);
                            if rng.random_bool(0.1) {
                                state.place();
                            }
                        }
                        let mut written: Vec<(Vec<u8>, Option<Vec<u8>>)> = state
                            .written(&run)
                            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                            .collect();
                        written.sort();
                        assert_eq!(written, wrote.into_iter().collect::<Vec<_>>(), "step {step}");
                        if rng.random_bool(0.5) {
                            state.roll_back(run);
                            model = before;
                        }
                    }
                    6..9 => {
                        let k = key(&mut rng);
                        assert_eq!(state.get(&k), model.get(&k), "{k:?} at step {step}");
                    }
                    _ => {
                        let (a, b) = (key(&mut rng), key(&mut rng));
                        let range = match rng.random_bool(0.2) {
                            true => KeyRange { start: a.min(b), end: None },
                            false => {
                                KeyRange { start: a.clone().min(b.clone()), end: Some(a.max(b)) }
                            }
                        };
                        let got: Vec<(Vec<u8>, Option<Vec<u8>>)> = state
                            .range(&range)
                            .into_iter()
                            .map(|(k, v)| (k.to_vec(), v.clone()))
                            .collect();
                        let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = model
                            .iter()
                            .filter(|(k, _)| range.contains(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        assert_eq!(got, want, "{range:?} at step {step}");
                    }
                }
            }
            assert!(model.len() > 100, "keys repeat, but not all: {}", model.len());
            let ordered: Vec<(Vec<u8>, Option<Vec<u8>>)> = state.into_ordered().collect();
            assert_eq!(ordered, model.into_iter().collect::<Vec<_>>());
        }
    }
}
