//! [`WriteBehind`]: an engine whose unsynced writes return once queued, written to the engine
//! underneath by a thread of its own, in order, while every read sees them at once.
//!
//! A shard applies a window in two parts: executing it, then writing its batch into RocksDB
//! (the memtable insert, 15 to 26% of a shard thread's time in the README's measurements).
//! The next window's execution needs only to *read* what the last one wrote. With the write
//! queued here, the shard thread goes on to the next window while another thread inserts the
//! batch, so the two parts of consecutive windows run on two cores:
//!
//! ```text
//!   shard thread:  execute e | execute e+1 | execute e+2 ...
//!   writer:                  | write e     | write e+1   ...
//!   reads:         the engine underneath, overlaid by the batches queued (newest wins)
//! ```
//!
//! What callers see is the engine after every write that returned: a read checks the queued
//! batches (newest first) before the engine, and a cursor merges the two. A batch leaves the
//! queue only after the engine holds it, so no read ever falls between the two. A batch is
//! visible whole or not at all, as in the engine.
//!
//! Bounds and order: at most `depth` batches wait; a write beyond that waits for the writer.
//! Synced writes, flushes, checkpoints and compactions first wait until the queue is empty
//! ([`WriteBehind::settle`]), so each covers every write that returned before it. The writer
//! writes each batch as it was given (unsynced).
//!
//! Failure: a write the engine refuses (I/O) is reported by the next write, settle, flush or
//! checkpoint, and nothing more is written; the batches not written stay visible to reads,
//! so readers never see a hole. The caller stops (a shard does, and replays from the log the
//! windows its storage lacks).
//!
//! # Runs held instead of written ([`WriteBehind::holding`])
//!
//! Inserting a window's writes into RocksDB's memtable, a skiplist, costs a search per key
//! (most of the writer thread's time in the README's profiles), only for a flush to write
//! the memtable out in key order later. A batch here is already sorted for reads. So for the
//! keys the engine takes as table files ([`Engine::ingests`]: every key of a RocksDB engine,
//! in both its families), the writer writes only the rest (none there) and keeps those keys'
//! writes as a sorted run; runs are merged,
//! [`MERGE_FAN_IN`] of one tier into one of the next, so a read checks a few runs, not one a
//! window; and once the runs hold `hold` bytes (or at a flush) they are handed over as one
//! set, which a thread of its own (`sealdb-ingest`, at nice [`INGEST_NICE`], as RocksDB's
//! flushes) merges into table files and ingests ([`Engine::ingest`]):
//!
//! ```text
//!   queued (written by the writer, newest wins) -> held runs (merged in tiers) -> a set
//!   handed over -> ingested as one table file: each is read until the next holds it
//! ```
//!
//! Reads see the queue, the runs held and the sets handed over, newest first, over the
//! engine. Crash order: [`Engine::ingest`] makes every write before it durable first, so the
//! engine's other keys are always at least as new as the ingested ones; the keys held are
//! lost by a crash, and replay writes them again (a shard replays the windows after its
//! storage's watermark, which is itself a key held). [`Engine::flushed`] is true once every
//! set handed over by the last [`Engine::begin_flush`] is ingested. A synced write of a key
//! held first waits until everything held is ingested (an ingest is newer than any write
//! before it, and would hide the synced one).
//!
//! Bounds: at most `hold` bytes held and [`MAX_FROZEN`] sets handed over; the writer waits
//! for the ingest thread beyond that.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use clock::Timestamp;

use crate::engine::{Cursor, Engine, EngineMemory, RawBatch, RawOp};
use crate::{Result, StorageError};

/// The default depth of a [`WriteBehind`] queue for a shard's windows: one batch being written
/// while the next is queued keeps the writer busy; more only hold more memory.
pub const DEFAULT_WRITE_BEHIND: usize = 2;

/// The largest batch (bytes of keys and values it has room for) a [`WriteBehind`] keeps for
/// the next one once written ([`Engine::spare_batch`]): a window's batch is kept, a bulk
/// load's is freed rather than held for good.
pub const MAX_SPARE_BATCH_BYTES: usize = 8 << 20;

/// The default bytes of runs a [`WriteBehind::holding`] holds before it hands them over as
/// one table file: RocksDB's memtable size.
pub const DEFAULT_HELD_BYTES: usize = 64 << 20;

/// Held runs of one tier merged into one run of the next: a read checks fewer than this many
/// runs of each tier.
pub const MERGE_FAN_IN: usize = 8;

/// Sets of runs handed over and not yet ingested, at most: one being ingested, one waiting.
pub const MAX_FROZEN: usize = 2;

/// The nice value of a [`WriteBehind`]'s ingest thread (Linux): the lowest, as RocksDB's
/// flush and compaction threads (`RocksOptions::low_priority_background`).
pub const INGEST_NICE: i32 = 19;

/// An engine whose unsynced writes are written behind, by a thread of their own (see the
/// module's documentation).
pub struct WriteBehind {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    ingester: Option<JoinHandle<()>>,
}

struct Shared {
    engine: Arc<dyn Engine>,
    depth: usize,
    /// Bytes of runs held before they are handed over; 0 holds none.
    hold: usize,
    state: Mutex<State>,
    /// Signalled when a batch is queued or written, runs are merged, handed over or
    /// ingested, a thread fails, or the threads are asked to stop.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Batches not yet written, oldest first; the front one may be being written.
    queued: VecDeque<Arc<Queued>>,
    /// Written batches' writes to keys the engine ingests, as runs, oldest first.
    held: Vec<Held>,
    /// Bytes of keys and values in `held`.
    held_bytes: usize,
    /// Sets of runs handed over, oldest first (each set's runs oldest first); the front one
    /// may be being ingested.
    frozen: VecDeque<Arc<Vec<Arc<Queued>>>>,
    /// Bytes of keys and values in `frozen`.
    frozen_bytes: usize,
    /// Sets handed over, and ingested, so far.
    sets_frozen: u64,
    sets_ingested: u64,
    /// The sets a flush waits for: `sets_frozen` at the last [`Engine::begin_flush`].
    flush_through: u64,
    /// Why the writer or the ingester stopped, if a write or an ingest failed.
    failed: Option<String>,
    stopping: bool,
    /// Set once the writer has stopped: the ingester hands over what is held, ingests it
    /// and stops.
    writer_done: bool,
    /// The last batch written that no reader held any more, emptied: the memory of the next
    /// one ([`Engine::spare_batch`]).
    spare: Option<RawBatch>,
}

/// A run held, and its tier: a written batch's is 0, a merge of runs of tier `t` is `t + 1`.
struct Held {
    run: Arc<Queued>,
    tier: u32,
}

impl State {
    /// The queued batches, newest first, then, if `runs`, the runs held and handed over
    /// ([`State::runs`]): a read of a key the engine does not ingest needs only the batches.
    fn newest_first_of(&self, runs: bool) -> impl Iterator<Item = &Arc<Queued>> {
        self.queued.iter().rev().chain(self.runs().take_while(move |_| runs))
    }

    /// The runs held, then the sets handed over, newest first.
    fn runs(&self) -> impl Iterator<Item = &Arc<Queued>> {
        let held = self.held.iter().rev().map(|h| &h.run);
        held.chain(self.frozen.iter().rev().flat_map(|set| set.iter().rev()))
    }

    /// The batches, and if `runs` the runs, with a key from `start` up to `end` (`None`: no
    /// end), oldest first, taken: what a read of those keys overlays.
    fn oldest_first_within(
        &self,
        runs: bool,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Vec<Arc<Queued>> {
        let within = |q: &&Arc<Queued>| {
            let pos = q.lower_bound(start);
            pos < q.len() && end.is_none_or(|end| q.key(pos) < end)
        };
        let mut all: Vec<Arc<Queued>> =
            self.newest_first_of(runs).filter(within).cloned().collect();
        all.reverse();
        all
    }

    /// Hands the runs held over as one set.
    fn freeze(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let runs = std::mem::take(&mut self.held).into_iter().map(|h| h.run).collect();
        self.frozen.push_back(Arc::new(runs));
        self.frozen_bytes += std::mem::take(&mut self.held_bytes);
        self.sets_frozen += 1;
    }

    /// Where the oldest [`MERGE_FAN_IN`] consecutive held runs of one tier begin, if any.
    /// Tiers never rise from older runs to newer, so a group's ends have the same tier only
    /// if all of it has.
    fn mergeable(&self) -> Option<usize> {
        let last = self.held.len().checked_sub(MERGE_FAN_IN)?;
        (0..=last).find(|&i| self.held[i].tier == self.held[i + MERGE_FAN_IN - 1].tier)
    }
}

/// A batch waiting to be written, or a run held, with its writes sorted by key for reads.
struct Queued {
    raw: RawBatch,
    /// Indices of `raw`'s writes in key order, one per key: its last write in the batch.
    sorted: Vec<usize>,
    /// A run's filter of its keys' version prefixes; a queued batch has none.
    filter: Option<Filter>,
}

/// A Bloom filter of the version prefixes (a key without its timestamp; the whole key for
/// other keys) of a run's keys, about 10 to 20 bits and 3 probes a key (1-2% false
/// positives): a point read skips the runs without its key rather than searching each of up
/// to [`MERGE_FAN_IN`] runs a tier. Blocked: a key's probes all fall in one cache line of
/// bits, so a read that misses every run (a key not written lately) costs one miss in memory
/// a run, not three; and every filter hashes alike, so a read hashes its prefix once
/// ([`Probe`]) for all the runs it checks.
struct Filter {
    blocks: Vec<Block>,
}

/// One cache line of a filter's bits.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Block([u64; 8]);

/// A version prefix's hash, as every [`Filter`] probes it.
#[derive(Clone, Copy)]
struct Probe(u64);

impl Probe {
    /// The same for every filter, so a prefix is hashed once a read.
    const HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0);

    fn of(prefix: &[u8]) -> Probe {
        use std::hash::BuildHasher;
        Probe(Probe::HASHER.hash_one(prefix))
    }
}

impl Filter {
    const BLOCK_BITS: usize = 512;

    fn new<'a>(keys: impl ExactSizeIterator<Item = &'a [u8]>) -> Filter {
        let blocks = (keys.len() * 10).div_ceil(Self::BLOCK_BITS).max(1).next_power_of_two();
        let mut filter = Filter { blocks: vec![Block::default(); blocks] };
        for key in keys {
            let (block, bits) = filter.place(Probe::of(filter_prefix(key)));
            for bit in bits {
                filter.blocks[block].0[bit / 64] |= 1 << (bit % 64);
            }
        }
        filter
    }

    /// Whether the run may have a key whose version prefix's probe is `probe`.
    fn may_hold(&self, probe: Probe) -> bool {
        let (block, bits) = self.place(probe);
        let words = &self.blocks[block].0;
        bits.iter().all(|&bit| words[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// The block `probe` falls in (from the hash's low bits) and its three bits there (from
    /// three 9-bit pieces of its high half).
    fn place(&self, probe: Probe) -> (usize, [usize; 3]) {
        let block = probe.0 as usize & (self.blocks.len() - 1);
        let high = (probe.0 >> 32) as usize;
        (block, [high & 511, (high >> 9) & 511, (high >> 18) & 511])
    }
}

/// What a run's filter holds for `key`: its version prefix, or the whole key if it is not a
/// version key.
fn filter_prefix(key: &[u8]) -> &[u8] {
    crate::StorageKey::version_prefix_of(key).unwrap_or(key)
}

impl Queued {
    fn new(raw: RawBatch) -> Queued {
        let key = |i: usize| raw.get(i).key();
        let mut order: Vec<usize> = (0..raw.len()).collect();
        // Stable: equal keys keep their order, so the last of each run is the last write.
        order.sort_by(|&a, &b| key(a).cmp(key(b)));
        let mut sorted: Vec<usize> = Vec::with_capacity(order.len());
        for i in order {
            match sorted.last_mut() {
                Some(last) if key(*last) == key(i) => *last = i,
                _ => sorted.push(i),
            }
        }
        Queued { raw, sorted, filter: None }
    }

    /// A run of `ops`, which are in strictly increasing key order.
    fn of_sorted<'a>(ops: impl Iterator<Item = RawOp<'a>>, reserve: (usize, usize)) -> Queued {
        let mut raw = RawBatch::default();
        raw.reserve(reserve.0, reserve.1);
        raw.extend(ops);
        let sorted = (0..raw.len()).collect();
        let filter = Some(Filter::new(raw.iter().map(RawOp::key)));
        Queued { raw, sorted, filter }
    }

    /// Whether the batch or run may write a key whose version prefix's probe is `probe`.
    fn may_hold(&self, probe: Probe) -> bool {
        self.filter.as_ref().is_none_or(|f| f.may_hold(probe))
    }

    /// The run of this batch's writes to keys `engine` ingests, if it has any.
    fn ingested_run(&self, engine: &dyn Engine) -> Option<Queued> {
        let ops = (0..self.len()).map(|pos| self.op(pos)).filter(|op| engine.ingests(op.key()));
        let run = Queued::of_sorted(ops, (self.len(), self.raw.byte_len()));
        (!run.raw.is_empty()).then_some(run)
    }

    /// The merge of `runs` (oldest first): each key once, from the newest run writing it.
    fn merged(runs: &[Arc<Queued>]) -> Queued {
        let ops = runs.iter().map(|r| r.len()).sum();
        let bytes = runs.iter().map(|r| r.raw.byte_len()).sum();
        Queued::of_sorted(MergeRuns::new(runs), (ops, bytes))
    }

    fn len(&self) -> usize {
        self.sorted.len()
    }

    fn op(&self, pos: usize) -> RawOp<'_> {
        self.raw.get(self.sorted[pos])
    }

    fn key(&self, pos: usize) -> &[u8] {
        self.op(pos).key()
    }

    /// The value written at `pos`; `None` for a delete.
    fn value(&self, pos: usize) -> Option<&[u8]> {
        self.op(pos).value()
    }

    /// The position of the first key at or after `key`.
    fn lower_bound(&self, key: &[u8]) -> usize {
        self.sorted.partition_point(|&i| self.raw.get(i).key() < key)
    }

    /// What the batch writes at exactly `key`, if anything (`Some(None)`: a delete).
    fn find(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        let pos = self.lower_bound(key);
        (pos < self.len() && self.key(pos) == key).then(|| self.value(pos))
    }
}

/// The writes of runs (oldest first) in key order, each key once, from the newest run that
/// writes it; deletes included (older writes may lie below the runs).
struct MergeRuns<'a> {
    runs: &'a [Arc<Queued>],
    /// Each run's next position.
    next: Vec<usize>,
    /// Each run's next key with the run, smallest key first and, among equal keys, the
    /// newest run first.
    heads: BinaryHeap<Reverse<(&'a [u8], Reverse<usize>)>>,
}

impl<'a> MergeRuns<'a> {
    fn new(runs: &'a [Arc<Queued>]) -> MergeRuns<'a> {
        let mut merge = MergeRuns {
            runs,
            next: vec![0; runs.len()],
            heads: BinaryHeap::with_capacity(runs.len()),
        };
        for run in 0..runs.len() {
            merge.push_head(run);
        }
        merge
    }

    fn push_head(&mut self, run: usize) {
        let runs: &'a [Arc<Queued>] = self.runs;
        if self.next[run] < runs[run].len() {
            self.heads.push(Reverse((runs[run].key(self.next[run]), Reverse(run))));
        }
    }
}

impl<'a> Iterator for MergeRuns<'a> {
    type Item = RawOp<'a>;

    fn next(&mut self) -> Option<RawOp<'a>> {
        let runs: &'a [Arc<Queued>] = self.runs;
        let Reverse((key, Reverse(newest))) = self.heads.pop()?;
        let op = runs[newest].op(self.next[newest]);
        self.next[newest] += 1;
        self.push_head(newest);
        // The same key in older runs: shadowed.
        while let Some(Reverse((k, Reverse(older)))) = self.heads.peek()
            && *k == key
        {
            let older = *older;
            self.heads.pop();
            self.next[older] += 1;
            self.push_head(older);
        }
        Some(op)
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn(name: &str, shared: &Arc<Shared>, run: fn(&Shared)) -> Result<JoinHandle<()>> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run(&shared))
        .map_err(|e| StorageError::Engine(format!("cannot start a thread ({name}): {e}")))
}

impl WriteBehind {
    /// Writes behind into `engine`, with at most `depth` (at least 1) batches waiting.
    pub fn new(engine: Arc<dyn Engine>, depth: usize) -> Result<WriteBehind> {
        WriteBehind::holding(engine, depth, 0)
    }

    /// [`WriteBehind::new`], holding the writes to keys `engine` ingests as sorted runs, up to
    /// `hold` bytes, and handing them over as one table file (see the module's
    /// documentation); 0 holds none.
    pub fn holding(engine: Arc<dyn Engine>, depth: usize, hold: usize) -> Result<WriteBehind> {
        let shared = Arc::new(Shared {
            engine,
            depth: depth.max(1),
            hold,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let writer = Some(spawn("sealdb-write-behind", &shared, Shared::write_queued)?);
        let ingester = match hold {
            0 => None,
            _ => Some(spawn("sealdb-ingest", &shared, Shared::ingest_held)?),
        };
        Ok(WriteBehind { shared, writer, ingester })
    }

    /// `engine` with its writes behind a queue of `depth` batches and `hold` bytes of runs
    /// held ([`WriteBehind::holding`]), or `engine` itself for a depth of 0.
    pub fn over(engine: Arc<dyn Engine>, depth: usize, hold: usize) -> Result<Arc<dyn Engine>> {
        Ok(match depth {
            0 => engine,
            depth => Arc::new(WriteBehind::holding(engine, depth, hold)?),
        })
    }

    /// Waits until every batch queued is in the engine underneath (its keys held as runs,
    /// if they are).
    pub fn settle(&self) -> Result<()> {
        let state = lock(&self.shared.state);
        self.shared.wait_for(state, |s| s.queued.is_empty()).map(drop)
    }

    /// Waits until every batch queued, and every run held, is in the engine underneath.
    pub fn drain(&self) -> Result<()> {
        self.settle()?;
        let state = self.shared.freeze_held(lock(&self.shared.state))?;
        let through = state.sets_frozen;
        self.shared.wait_for(state, |s| s.sets_ingested >= through).map(drop)
    }

    /// The queued batches and runs held over the engine's cursor that `cursor` makes, for
    /// reads of keys from `start` up to `end` (`None`: no end): those with no key there are
    /// left out.
    fn merged<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
        cursor: impl FnOnce(&'a dyn Engine) -> Box<dyn Cursor + 'a>,
    ) -> Box<dyn Cursor + 'a> {
        let runs = self.shared.hold > 0 && self.shared.engine.ingests_within(start, end);
        // The queue first: a batch that leaves it meanwhile is in the engine's cursor.
        let queued = lock(&self.shared.state).oldest_first_within(runs, start, end);
        let engine = cursor(&*self.shared.engine);
        if queued.is_empty() {
            return engine;
        }
        Box::new(Merged::new(engine, queued, end))
    }

    /// Whether a run held, or handed over and not yet ingested, writes a key of `batch`.
    fn holds_any(&self, batch: &RawBatch) -> bool {
        let state = lock(&self.shared.state);
        let runs: Vec<&Arc<Queued>> = state.runs().collect();
        !runs.is_empty()
            && batch.iter().any(|op| {
                self.shared.engine.ingests(op.key())
                    && runs.iter().any(|r| r.find(op.key()).is_some())
            })
    }
}

fn written_behind(why: &str) -> StorageError {
    StorageError::Engine(format!("a write queued behind failed: {why}"))
}

/// Sets the calling thread's nice value to `nice` if that lowers its priority (Linux: nice is
/// per thread). Refused (another system, or a policy), the thread runs as it was: a lower
/// priority only yields the core sooner.
fn lower_own_priority(nice: i32) {
    use rustix::process::{getpriority_process, setpriority_process};
    if getpriority_process(None).is_ok_and(|now| now < nice) {
        let _ = setpriority_process(None, nice);
    }
}

impl Shared {
    /// The writer thread: writes the queued batches in order (holding the runs of the keys
    /// the engine ingests, if it holds any) until asked to stop with none left, or until a
    /// write fails.
    fn write_queued(&self) {
        loop {
            let next = {
                let mut state = lock(&self.state);
                loop {
                    if state.failed.is_some() {
                        return;
                    }
                    if let Some(front) = state.queued.front() {
                        break front.clone();
                    }
                    if state.stopping {
                        return;
                    }
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            let (written, run) = match self.hold {
                0 => (self.engine.write_ref(&next.raw, false), None),
                _ => (self.engine.write_uningested(&next.raw), next.ingested_run(&*self.engine)),
            };
            drop(next);
            let mut state = lock(&self.state);
            match written {
                Ok(()) => {
                    // Held before the batch leaves the queue: no read falls between.
                    if let Some(run) = run {
                        state.held_bytes += run.raw.byte_len();
                        state.held.push(Held { run: Arc::new(run), tier: 0 });
                    }
                    // Kept for the next batch unless a reader (a cursor) still holds it,
                    // or it is too large to hold on to.
                    let done = state.queued.pop_front().and_then(Arc::into_inner);
                    if let Some(Queued { mut raw, .. }) = done
                        && raw.byte_capacity() <= MAX_SPARE_BATCH_BYTES
                    {
                        raw.clear();
                        state.spare = Some(raw);
                    }
                    if self.hold > 0 && state.held_bytes >= self.hold {
                        self.changed.notify_all();
                        state = match self.freeze_held(state) {
                            Ok(state) => state,
                            Err(_) => return,
                        };
                    }
                }
                Err(e) => state.failed = Some(e.to_string()),
            }
            let failed = state.failed.is_some();
            drop(state);
            self.changed.notify_all();
            if failed {
                return;
            }
        }
    }

    /// Waits until `ready` holds, or fails if a write or an ingest failed.
    fn wait_for<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        ready: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'a, State>> {
        loop {
            if let Some(why) = &state.failed {
                return Err(written_behind(why));
            }
            if ready(&state) {
                return Ok(state);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Hands the runs held over as one set, once fewer than [`MAX_FROZEN`] wait.
    fn freeze_held<'a>(&'a self, state: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        let mut state =
            self.wait_for(state, |s| s.held.is_empty() || s.frozen.len() < MAX_FROZEN)?;
        state.freeze();
        self.changed.notify_all();
        Ok(state)
    }

    /// The ingest thread: ingests each set handed over, in order, and meanwhile merges held
    /// runs of one tier; once the writer has stopped, hands over and ingests what is held,
    /// then stops. Stops at the first failure.
    fn ingest_held(&self) {
        lower_own_priority(INGEST_NICE);
        enum Job {
            Ingest(Arc<Vec<Arc<Queued>>>),
            Merge(usize, Vec<Arc<Queued>>, u32),
        }
        loop {
            let job = {
                let mut state = lock(&self.state);
                loop {
                    if state.failed.is_some() {
                        return;
                    }
                    if let Some(set) = state.frozen.front() {
                        break Job::Ingest(set.clone());
                    }
                    if let Some(at) = state.mergeable() {
                        let group = &state.held[at..at + MERGE_FAN_IN];
                        let runs = group.iter().map(|h| h.run.clone()).collect();
                        break Job::Merge(at, runs, group[0].tier);
                    }
                    if state.writer_done {
                        if state.held.is_empty() {
                            return;
                        }
                        state.freeze();
                        continue;
                    }
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            match job {
                Job::Ingest(set) => {
                    let ingested = self.engine.ingest(&mut MergeRuns::new(&set));
                    let mut state = lock(&self.state);
                    match ingested {
                        Ok(()) => {
                            state.frozen.pop_front();
                            state.frozen_bytes -=
                                set.iter().map(|r| r.raw.byte_len()).sum::<usize>();
                            state.sets_ingested += 1;
                        }
                        Err(e) => state.failed = Some(e.to_string()),
                    }
                }
                Job::Merge(at, runs, tier) => {
                    let merged = Queued::merged(&runs);
                    let mut state = lock(&self.state);
                    // Handed over meanwhile (the writer froze them): the merge is not needed.
                    let same = state.held.get(at..at + MERGE_FAN_IN).is_some_and(|group| {
                        group.iter().zip(&runs).all(|(h, r)| Arc::ptr_eq(&h.run, r))
                    });
                    if same {
                        let before: usize = runs.iter().map(|r| r.raw.byte_len()).sum();
                        state.held_bytes = state.held_bytes - before + merged.raw.byte_len();
                        let merged = Held { run: Arc::new(merged), tier: tier + 1 };
                        state.held.splice(at..at + MERGE_FAN_IN, [merged]);
                    }
                }
            }
            self.changed.notify_all();
        }
    }
}

impl Drop for WriteBehind {
    /// Writes what is queued, ingests what is held, then stops the threads.
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.changed.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        lock(&self.shared.state).writer_done = true;
        self.shared.changed.notify_all();
        if let Some(ingester) = self.ingester.take() {
            let _ = ingester.join();
        }
    }
}

impl Engine for WriteBehind {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        {
            let runs = self.shared.hold > 0 && self.shared.engine.ingests(key);
            let probe = Probe::of(filter_prefix(key));
            let state = lock(&self.shared.state);
            let mut held = state.newest_first_of(runs).filter(|q| q.may_hold(probe));
            if let Some(found) = held.find_map(|q| q.find(key)) {
                return Ok(found.map(<[u8]>::to_vec));
            }
        }
        // Not queued or held now: either never written, or written into the engine before
        // it left the queue (or was ingested before its run was let go).
        self.shared.engine.get(key)
    }

    fn cursor(&self) -> Box<dyn Cursor + '_> {
        self.merged(&[], None, |engine| engine.cursor())
    }

    /// The queue's entries past `end` are exact, the engine's may be any past it: the
    /// smallest of them is below `end` only if the queue's is, and then it is the right one.
    fn cursor_within(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Cursor + '_> {
        self.merged(start, end, |engine| engine.cursor_within(start, end))
    }

    /// The engine's answer (on its filters), unless a batch or run writes in the prefix from
    /// `key` on; then the smallest such key of theirs and the engine's, from the newest that
    /// writes it, stepping past keys they delete.
    fn seek_in_prefix(&self, key: &[u8], prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let first_in_prefix = |q: &Queued, from: &[u8]| {
            let pos = q.lower_bound(from);
            (pos < q.len() && q.key(pos).starts_with(prefix)).then_some(pos)
        };
        let runs = self.shared.hold > 0 && self.shared.engine.ingests(key);
        // The filters hold version prefixes: they answer for a seek within one key's versions
        // (a version prefix starts no other key but that key's versions).
        let filtered = crate::StorageKey::version_prefix_of(key) == Some(prefix);
        // The sources with a key in the prefix from `key` on, oldest first, each with where
        // its first such key is: searched once, under the lock, and used below.
        let probe = filtered.then(|| Probe::of(prefix));
        let (sources, mut firsts): (Vec<Arc<Queued>>, Vec<Option<usize>>) = {
            let state = lock(&self.shared.state);
            let touching = state.newest_first_of(runs).filter_map(|q| {
                let held = probe.is_none_or(|probe| q.may_hold(probe));
                let pos = held.then(|| first_in_prefix(q, key))?;
                pos.map(|pos| (q.clone(), Some(pos)))
            });
            let mut sources: Vec<(Arc<Queued>, Option<usize>)> = touching.collect();
            sources.reverse();
            sources.into_iter().unzip()
        };
        if sources.is_empty() {
            // Nothing queued or held in the prefix from `key` on; the engine may use its
            // filters.
            return self.shared.engine.seek_in_prefix(key, prefix);
        }
        // Keys in the prefix lie together, `key` among them: the first at or after `key` in
        // any source is the first at or after it overall, or there is none.
        let mut from = key.to_vec();
        loop {
            let below = self.shared.engine.seek_in_prefix(&from, prefix)?;
            let mut smallest = below.as_ref().map(|(k, _)| k.as_slice());
            for (q, first) in sources.iter().zip(&firsts) {
                if let Some(pos) = *first
                    && smallest.is_none_or(|s| q.key(pos) < s)
                {
                    smallest = Some(q.key(pos));
                }
            }
            let Some(found) = smallest.map(<[u8]>::to_vec) else { return Ok(None) };
            // A source holding `found` has it first from `from` on (nothing in any source
            // lies between): the newest such source's write is the one that counts.
            let newest = sources.iter().zip(&firsts).rev().find_map(|(q, first)| {
                first.filter(|&pos| q.key(pos) == found).map(|pos| q.value(pos))
            });
            match newest {
                Some(Some(value)) => return Ok(Some((found, value.to_vec()))),
                // Deleted: the next key.
                Some(None) => {
                    from = found;
                    from.push(0);
                    for (q, first) in sources.iter().zip(&mut firsts) {
                        *first = first_in_prefix(q, &from);
                    }
                }
                None => return Ok(below),
            }
        }
    }

    fn write(&self, batch: RawBatch, sync: bool) -> Result<()> {
        if sync {
            self.settle()?;
            if self.shared.hold > 0 && self.holds_any(&batch) {
                // Ingested later, a run would be newer than this write.
                self.drain()?;
            }
            return self.shared.engine.write(batch, true);
        }
        let queued = Arc::new(Queued::new(batch));
        let depth = self.shared.depth;
        let mut state =
            self.shared.wait_for(lock(&self.shared.state), |s| s.queued.len() < depth)?;
        state.queued.push_back(queued);
        drop(state);
        self.shared.changed.notify_all();
        Ok(())
    }

    fn spare_batch(&self) -> RawBatch {
        lock(&self.shared.state).spare.take().unwrap_or_default()
    }

    fn flush(&self) -> Result<()> {
        self.drain()?;
        self.shared.engine.flush()
    }

    fn syncs_out_of_order(&self) -> bool {
        self.shared.hold > 0
    }

    /// Hands the runs held over for ingest (waiting only if [`MAX_FROZEN`] sets wait
    /// already) and begins the engine's flush.
    fn begin_flush(&self) -> Result<()> {
        self.settle()?;
        if self.shared.hold > 0 {
            let mut state = self.shared.freeze_held(lock(&self.shared.state))?;
            state.flush_through = state.sets_frozen;
        }
        self.shared.engine.begin_flush()
    }

    fn flushed(&self) -> Result<bool> {
        {
            let state = lock(&self.shared.state);
            if let Some(why) = &state.failed {
                return Err(written_behind(why));
            }
            if state.sets_ingested < state.flush_through {
                return Ok(false);
            }
        }
        self.shared.engine.flushed()
    }

    fn compact(&self) -> Result<()> {
        self.drain()?;
        self.shared.engine.compact()
    }

    fn set_gc_horizon(&self, horizon: Timestamp) {
        self.shared.engine.set_gc_horizon(horizon);
    }

    /// The engine's, with the runs held and handed over counted as memtables.
    fn memory(&self) -> EngineMemory {
        let held = {
            let state = lock(&self.shared.state);
            (state.held_bytes + state.frozen_bytes) as u64
        };
        let mut memory = self.shared.engine.memory();
        memory.memtables += held;
        memory
    }

    /// The engine's, with the entries of the runs held and handed over.
    fn estimated_entries(&self) -> Option<u64> {
        let held: usize = {
            let state = lock(&self.shared.state);
            state.runs().map(|r| r.len()).sum()
        };
        Some(self.shared.engine.estimated_entries()? + held as u64)
    }

    fn checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        self.drain()?;
        self.shared.engine.checkpoint(dir)
    }
}

/// The engine's cursor overlaid by a snapshot of the queued batches and runs: in key order,
/// each key once, its value from the newest batch that writes it, else from the engine; keys a
/// batch deletes are skipped. With an `end`, batches are not read at or past it (the
/// engine's cursor may still return such keys; the caller stops at `end`).
struct Merged<'a> {
    engine: Box<dyn Cursor + 'a>,
    end: Option<Vec<u8>>,
    /// The engine cursor's entry, once positioned.
    below: Option<(Vec<u8>, Vec<u8>)>,
    /// The batches, oldest first, each with the position of its next key.
    queued: Vec<(Arc<Queued>, usize)>,
    started: bool,
    /// The key last returned; `None` once the end is reached.
    last: Option<Vec<u8>>,
}

impl<'a> Merged<'a> {
    fn new(
        engine: Box<dyn Cursor + 'a>,
        queued: Vec<Arc<Queued>>,
        end: Option<&[u8]>,
    ) -> Merged<'a> {
        let queued = queued.into_iter().map(|q| (q, 0)).collect();
        let end = end.map(<[u8]>::to_vec);
        Merged { engine, end, below: None, queued, started: false, last: None }
    }

    /// The key `q` is at, if it has one left below `end`.
    fn head<'q>(&self, q: &'q Queued, pos: usize) -> Option<&'q [u8]> {
        let key = (pos < q.len()).then(|| q.key(pos))?;
        self.end.as_deref().is_none_or(|end| key < end).then_some(key)
    }

    /// Moves every source whose entry is at `key` past it.
    fn step_past(&mut self, key: &[u8]) -> Result<()> {
        if self.below.as_ref().is_some_and(|(k, _)| k.as_slice() == key) {
            self.below = self.engine.next()?;
        }
        for (q, pos) in &mut self.queued {
            if *pos < q.len() && q.key(*pos) == key {
                *pos += 1;
            }
        }
        Ok(())
    }

    /// The smallest key the sources are at, and its value; skips deleted keys.
    fn emit(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            let mut smallest: Option<&[u8]> = self.below.as_ref().map(|(k, _)| k.as_slice());
            for (q, pos) in &self.queued {
                if let Some(head) = self.head(q, *pos)
                    && smallest.is_none_or(|s| head < s)
                {
                    smallest = Some(head);
                }
            }
            let Some(key) = smallest.map(<[u8]>::to_vec) else {
                self.last = None;
                return Ok(None);
            };
            let newest = self
                .queued
                .iter()
                .rev()
                .find(|(q, pos)| *pos < q.len() && q.key(*pos) == key.as_slice())
                .map(|(q, pos)| q.value(*pos).map(<[u8]>::to_vec));
            let value = match newest {
                Some(written) => written,
                None => self.below.as_ref().map(|(_, v)| v.clone()),
            };
            match value {
                Some(value) => {
                    self.last = Some(key.clone());
                    return Ok(Some((key, value)));
                }
                None => self.step_past(&key)?,
            }
        }
    }
}

impl Cursor for Merged<'_> {
    fn seek(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.started = true;
        self.below = self.engine.seek(key)?;
        for (q, pos) in &mut self.queued {
            *pos = q.lower_bound(key);
        }
        self.emit()
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if !self.started {
            return self.seek(&[]);
        }
        let Some(last) = self.last.take() else { return Ok(None) };
        self.step_past(&last)?;
        self.emit()
    }
}
