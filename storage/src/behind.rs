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

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use clock::Timestamp;

use crate::engine::{Cursor, Engine, EngineMemory, RawBatch};
use crate::{Result, StorageError};

/// The default depth of a [`WriteBehind`] queue for a shard's windows: one batch being written
/// while the next is queued keeps the writer busy; more only hold more memory.
pub const DEFAULT_WRITE_BEHIND: usize = 2;

/// The largest batch (bytes of keys and values it has room for) a [`WriteBehind`] keeps for
/// the next one once written ([`Engine::spare_batch`]): a window's batch is kept, a bulk
/// load's is freed rather than held for good.
pub const MAX_SPARE_BATCH_BYTES: usize = 8 << 20;

/// An engine whose unsynced writes are written behind, by a thread of their own (see the
/// module's documentation).
pub struct WriteBehind {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

struct Shared {
    engine: Arc<dyn Engine>,
    depth: usize,
    state: Mutex<State>,
    /// Signalled when a batch is queued, written, or the writer fails or is asked to stop.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Batches not yet written, oldest first; the front one may be being written.
    queued: VecDeque<Arc<Queued>>,
    /// Why the writer stopped, if a write failed.
    failed: Option<String>,
    stopping: bool,
    /// The last batch written that no reader held any more, emptied: the memory of the next
    /// one ([`Engine::spare_batch`]).
    spare: Option<RawBatch>,
}

/// A batch waiting to be written, with its writes sorted by key for reads.
struct Queued {
    raw: RawBatch,
    /// Indices of `raw`'s writes in key order, one per key: its last write in the batch.
    sorted: Vec<usize>,
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
        Queued { raw, sorted }
    }

    fn len(&self) -> usize {
        self.sorted.len()
    }

    fn key(&self, pos: usize) -> &[u8] {
        self.raw.get(self.sorted[pos]).key()
    }

    /// The value written at `pos`; `None` for a delete.
    fn value(&self, pos: usize) -> Option<&[u8]> {
        self.raw.get(self.sorted[pos]).value()
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

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WriteBehind {
    /// Writes behind into `engine`, with at most `depth` (at least 1) batches waiting.
    pub fn new(engine: Arc<dyn Engine>, depth: usize) -> Result<WriteBehind> {
        let shared = Arc::new(Shared {
            engine,
            depth: depth.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sealdb-write-behind".into())
                .spawn(move || shared.write_queued())
                .map_err(|e| StorageError::Engine(format!("cannot start a writer thread: {e}")))?
        };
        Ok(WriteBehind { shared, writer: Some(writer) })
    }

    /// `engine` with its writes behind a queue of `depth` batches, or `engine` itself for a
    /// depth of 0.
    pub fn over(engine: Arc<dyn Engine>, depth: usize) -> Result<Arc<dyn Engine>> {
        Ok(match depth {
            0 => engine,
            depth => Arc::new(WriteBehind::new(engine, depth)?),
        })
    }

    /// Waits until every batch queued is in the engine underneath.
    pub fn settle(&self) -> Result<()> {
        let mut state = lock(&self.shared.state);
        loop {
            if let Some(why) = &state.failed {
                return Err(written_behind(why));
            }
            if state.queued.is_empty() {
                return Ok(());
            }
            state = self.shared.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The batches queued, oldest first, if any.
    fn queued(&self) -> Vec<Arc<Queued>> {
        lock(&self.shared.state).queued.iter().cloned().collect()
    }

    /// The queued batches over the engine's cursor that `cursor` makes.
    fn merged<'a>(
        &'a self,
        cursor: impl FnOnce(&'a dyn Engine) -> Box<dyn Cursor + 'a>,
    ) -> Box<dyn Cursor + 'a> {
        // The queue first: a batch that leaves it meanwhile is in the engine's cursor.
        let queued = self.queued();
        let engine = cursor(&*self.shared.engine);
        if queued.is_empty() {
            return engine;
        }
        Box::new(Merged::new(engine, queued))
    }
}

fn written_behind(why: &str) -> StorageError {
    StorageError::Engine(format!("a write queued behind failed: {why}"))
}

impl Shared {
    /// The writer thread: writes the queued batches in order until asked to stop with none
    /// left, or until a write fails.
    fn write_queued(&self) {
        loop {
            let next = {
                let mut state = lock(&self.state);
                loop {
                    if let Some(front) = state.queued.front() {
                        break front.clone();
                    }
                    if state.stopping {
                        return;
                    }
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            let written = self.engine.write_ref(&next.raw, false);
            drop(next);
            let mut state = lock(&self.state);
            match written {
                Ok(()) => {
                    // Kept for the next batch unless a reader (a cursor) still holds it,
                    // or it is too large to hold on to.
                    let done = state.queued.pop_front().and_then(Arc::into_inner);
                    if let Some(Queued { mut raw, .. }) = done
                        && raw.byte_capacity() <= MAX_SPARE_BATCH_BYTES
                    {
                        raw.clear();
                        state.spare = Some(raw);
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
}

impl Drop for WriteBehind {
    /// Writes what is queued, then stops the writer.
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.changed.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Engine for WriteBehind {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        {
            let state = lock(&self.shared.state);
            if let Some(found) = state.queued.iter().rev().find_map(|q| q.find(key)) {
                return Ok(found.map(<[u8]>::to_vec));
            }
        }
        // Not queued now: either never written, or written into the engine before it left
        // the queue.
        self.shared.engine.get(key)
    }

    fn cursor(&self) -> Box<dyn Cursor + '_> {
        self.merged(|engine| engine.cursor())
    }

    /// The queue's entries past `end` are exact, the engine's may be any past it: the
    /// smallest of them is below `end` only if the queue's is, and then it is the right one.
    fn cursor_within(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Cursor + '_> {
        self.merged(|engine| engine.cursor_within(start, end))
    }

    fn seek_in_prefix(&self, key: &[u8], prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let queued = {
            let state = lock(&self.shared.state);
            let touches = state.queued.iter().any(|q| {
                let pos = q.lower_bound(key);
                pos < q.len() && q.key(pos).starts_with(prefix)
            });
            if !touches {
                drop(state);
                // Nothing queued in the prefix from `key` on; the engine may use its filters.
                return self.shared.engine.seek_in_prefix(key, prefix);
            }
            state.queued.iter().cloned().collect()
        };
        let mut merged = Merged::new(self.shared.engine.cursor(), queued);
        Ok(merged.seek(key)?.filter(|(k, _)| k.starts_with(prefix)))
    }

    fn write(&self, batch: RawBatch, sync: bool) -> Result<()> {
        if sync {
            self.settle()?;
            return self.shared.engine.write(batch, true);
        }
        let queued = Arc::new(Queued::new(batch));
        let mut state = lock(&self.shared.state);
        loop {
            if let Some(why) = &state.failed {
                return Err(written_behind(why));
            }
            if state.queued.len() < self.shared.depth {
                break;
            }
            state = self.shared.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.queued.push_back(queued);
        drop(state);
        self.shared.changed.notify_all();
        Ok(())
    }

    fn spare_batch(&self) -> RawBatch {
        lock(&self.shared.state).spare.take().unwrap_or_default()
    }

    fn flush(&self) -> Result<()> {
        self.settle()?;
        self.shared.engine.flush()
    }

    fn begin_flush(&self) -> Result<()> {
        self.settle()?;
        self.shared.engine.begin_flush()
    }

    fn flushed(&self) -> Result<bool> {
        self.shared.engine.flushed()
    }

    fn compact(&self) -> Result<()> {
        self.settle()?;
        self.shared.engine.compact()
    }

    fn set_gc_horizon(&self, horizon: Timestamp) {
        self.shared.engine.set_gc_horizon(horizon);
    }

    fn memory(&self) -> EngineMemory {
        self.shared.engine.memory()
    }

    fn estimated_entries(&self) -> Option<u64> {
        self.shared.engine.estimated_entries()
    }

    fn checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        self.settle()?;
        self.shared.engine.checkpoint(dir)
    }
}

/// The engine's cursor overlaid by a snapshot of the queued batches: in key order, each key
/// once, its value from the newest batch that writes it, else from the engine; keys a batch
/// deletes are skipped.
struct Merged<'a> {
    engine: Box<dyn Cursor + 'a>,
    /// The engine cursor's entry, once positioned.
    below: Option<(Vec<u8>, Vec<u8>)>,
    /// The batches, oldest first, each with the position of its next key.
    queued: Vec<(Arc<Queued>, usize)>,
    started: bool,
    /// The key last returned; `None` once the end is reached.
    last: Option<Vec<u8>>,
}

impl<'a> Merged<'a> {
    fn new(engine: Box<dyn Cursor + 'a>, queued: Vec<Arc<Queued>>) -> Merged<'a> {
        let queued = queued.into_iter().map(|q| (q, 0)).collect();
        Merged { engine, below: None, queued, started: false, last: None }
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
                if *pos < q.len() && smallest.is_none_or(|s| q.key(*pos) < s) {
                    smallest = Some(q.key(*pos));
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
