//! [`Mvcc`]: versioned user keys on an [`Engine`].
//!
//! Each write of a user key at timestamp `t` adds a version `(key, t)`; nothing is overwritten.
//! A read at `t` sees, for each key, the newest version at or below `t` (or nothing, if that
//! version is a deletion). Because versions of a key sort newest first (the timestamp is
//! stored inverted), "newest at or below `t`" is the first entry at or after `(key, t)`:
//!
//! ```text
//!   seek (k, t=7) ->  (k, 9)  (k, 7)  (k, 4)  (k2, 8) ...
//!                             ^ first entry >= (k, 7) in engine order: the answer
//! ```
//!
//! Windows write at strictly increasing timestamps, and a shard only serves reads at or below
//! its applied watermark's timestamp (its safe time), so a read at `t` is repeatable: nothing is
//! ever added at or below `t` afterwards. That is what makes reads at a timestamp snapshot
//! reads without engine snapshots or locks.
//!
//! One [`VersionBatch`] carries all of a window's writes at the window's timestamp together
//! with the new watermark, written in one atomic engine batch: after a crash, the watermark says
//! exactly which windows are present.
//!
//! Point reads go through a row cache of each key's newest version (`cache.rs`), which every
//! apply writes through; scans read the engine.
//!
//! Garbage collection removes versions no read at or above a horizon can see: everything
//! below the newest version at or below the horizon ([`Mvcc::raise_horizon`]). The horizon is
//! stored (fsynced) before any version goes, and every read below it is refused with
//! [`StorageError::BelowHorizon`], checked after the read, so no read ever returns a partly
//! collected answer. RocksDB drops the versions as it compacts; on other engines
//! [`Mvcc::gc`] deletes them (and the version at the horizon too, if it is a deletion).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clock::Timestamp;

use crate::cache::{CacheStats, Newest, RowCache};
use crate::engine::{Engine, RawBatch};
use crate::key::{MetaKey, StorageKey};
use crate::limits::Limits;
use crate::range::KeyRange;
use crate::{Result, StorageError};
use clock::Epoch;

/// A version key's bytes beyond its user key's: tag, terminator, timestamp.
const VERSION_KEY_BYTES: usize = 11;
const TOMBSTONE: u8 = 0x00;
const VALUE: u8 = 0x01;
/// Deletions per engine batch when collecting garbage.
const GC_BATCH: usize = 1024;

/// A visible version of a key: its value and the timestamp it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// When it was written.
    pub ts: Timestamp,
    /// The value.
    pub value: Vec<u8>,
}

/// The last window a shard applied, and that window's timestamp (the shard's safe time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The window.
    pub window: Epoch,
    /// Its timestamp: every version the shard holds is at or below it.
    pub ts: Timestamp,
}

/// What one [`Mvcc::gc`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Versions looked at.
    pub versions_seen: u64,
    /// Versions removed.
    pub versions_removed: u64,
}

/// The writes of one window on one shard, all at the window's timestamp. Writing a key twice
/// keeps the last write, as applying the window's transactions in order would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionBatch {
    window: Epoch,
    ts: Timestamp,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bookkeeping written in the same atomic batch (not versioned, not size-limited).
    meta: BTreeMap<MetaKey, Option<Vec<u8>>>,
}

impl VersionBatch {
    /// An empty batch for `window`, writing at `ts`.
    pub fn new(window: Epoch, ts: Timestamp) -> VersionBatch {
        VersionBatch { window, ts, writes: BTreeMap::new(), meta: BTreeMap::new() }
    }

    /// A batch for `window`, writing at `ts` each of `writes` (`None`: a delete; of a key
    /// given twice, the later): built at once, which for writes already in key order (as a
    /// window's executor gives them) costs a pass rather than a search of the batch a key.
    pub fn with_writes(
        window: Epoch,
        ts: Timestamp,
        writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> VersionBatch {
        VersionBatch { window, ts, writes: writes.into_iter().collect(), meta: BTreeMap::new() }
    }

    /// Also writes the bookkeeping record `key` (not the watermark, which the batch sets).
    pub fn put_meta(&mut self, key: MetaKey, value: Vec<u8>) {
        assert_ne!(key, MetaKey::AppliedWindow, "the watermark is the batch's own");
        self.meta.insert(key, Some(value));
    }

    /// Removes bookkeeping record `key` in the same atomic batch.
    pub fn delete_meta(&mut self, key: MetaKey) {
        assert_ne!(key, MetaKey::AppliedWindow, "the watermark is the batch's own");
        self.meta.insert(key, None);
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }

    /// The window.
    pub fn window(&self) -> Epoch {
        self.window
    }

    /// The timestamp the versions are written at.
    pub fn ts(&self) -> Timestamp {
        self.ts
    }

    /// The writes, in key order (`None` is a deletion).
    pub fn writes(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// Number of keys written.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether no key is written (the watermark still moves).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// Bytes of newest versions a shard keeps in memory by default ([`Mvcc::open_with_cache`]).
pub const DEFAULT_ROW_CACHE_BYTES: usize = 128 << 20;

/// Keys with the versions read, in key order: what a scan returns.
pub type VersionRows = Vec<(Vec<u8>, Version)>;

/// Multi-version storage for one shard.
pub struct Mvcc {
    engine: Arc<dyn Engine>,
    limits: Limits,
    /// The watermark as last written; the lock also serialises [`Mvcc::apply`].
    applied: Mutex<Option<Watermark>>,
    /// The watermark's timestamp, for readers that must not wait for an apply's lock.
    applied_ts: AtomicU64,
    /// The watermark's timestamp when the last flush was begun ([`Mvcc::begin_flush`]).
    flush_began_ts: AtomicU64,
    /// The greatest watermark timestamp a finished flush made durable (or found on opening):
    /// every window up to it is durable. With an engine that syncs out of order
    /// ([`Engine::syncs_out_of_order`]), the horizon is raised above it only after a flush
    /// (see [`Mvcc::raise_horizon`]).
    durable_ts: AtomicU64,
    /// Newest versions of recently used keys.
    cache: RowCache,
    /// Reads below this timestamp are refused: versions they would see may be gone.
    horizon: AtomicU64,
    /// Serialises raising the horizon.
    raising: Mutex<()>,
    /// Told when this `Mvcc` has been dropped, engine and all ([`Mvcc::released`]). Declared
    /// last: fields are dropped in order, so these go once the engine is closed.
    released: Mutex<Vec<std::sync::mpsc::Sender<()>>>,
}

impl std::fmt::Debug for Mvcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mvcc").field("applied", &self.applied()).finish_non_exhaustive()
    }
}

impl Mvcc {
    /// Opens MVCC storage on `engine`, reading back the watermark it holds, with a row cache
    /// of [`DEFAULT_ROW_CACHE_BYTES`].
    pub fn open(engine: Arc<dyn Engine>, limits: Limits) -> Result<Mvcc> {
        Mvcc::open_with_cache(engine, limits, DEFAULT_ROW_CACHE_BYTES)
    }

    /// [`Mvcc::open`] with a row cache of about `cache_bytes` (0: none): the newest versions
    /// of recently used keys, which serve point reads at or above them (see `cache.rs`).
    pub fn open_with_cache(
        engine: Arc<dyn Engine>,
        limits: Limits,
        cache_bytes: usize,
    ) -> Result<Mvcc> {
        let applied = match engine.get(&StorageKey::Meta(MetaKey::AppliedWindow).encode())? {
            None => None,
            Some(bytes) => Some(decode_watermark(&bytes)?),
        };
        let horizon = match engine.get(&StorageKey::Meta(MetaKey::GcHorizon).encode())? {
            None => Timestamp::ZERO,
            Some(bytes) => decode_timestamp(&bytes)?,
        };
        if horizon > Timestamp::ZERO {
            engine.set_gc_horizon(horizon);
        }
        Ok(Mvcc {
            horizon: AtomicU64::new(horizon.as_u64()),
            raising: Mutex::new(()),
            engine,
            limits,
            applied: Mutex::new(applied),
            applied_ts: AtomicU64::new(applied.map_or(0, |w| w.ts.as_u64())),
            flush_began_ts: AtomicU64::new(applied.map_or(0, |w| w.ts.as_u64())),
            // What was found on opening is durable.
            durable_ts: AtomicU64::new(applied.map_or(0, |w| w.ts.as_u64())),
            cache: RowCache::new(cache_bytes),
            released: Mutex::new(Vec::new()),
        })
    }

    /// A receiver that disconnects once this `Mvcc` has been dropped and its engine with it
    /// (unless something else holds the engine): for reopening the same directory in the same
    /// process, which RocksDB refuses while the old handle is open. Waiting for the last `Arc`
    /// to go is not enough: its count reaches zero before the drop, and so the close, runs.
    pub fn released(&self) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.released.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// The limits writes are checked against.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The last window applied, or `None` before the first.
    pub fn applied(&self) -> Option<Watermark> {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A bookkeeping record written with a batch.
    pub fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>> {
        self.engine.get(&StorageKey::Meta(key).encode())
    }

    /// Every `MetaKey::OutcomesOf` record, by epoch: which windows' outcomes are still kept.
    pub fn outcome_windows(&self) -> Result<Vec<(Epoch, Vec<u8>)>> {
        let start = StorageKey::Meta(MetaKey::OutcomesOf(Epoch(0))).encode();
        let prefix = &start[..2];
        let mut cursor = self.engine.cursor();
        let mut entry = cursor.seek(&start)?;
        let mut out = Vec::new();
        while let Some((key, value)) = entry {
            if !key.starts_with(prefix) {
                break;
            }
            let epoch = StorageKey::decode_outcomes_of(&key)
                .map_err(|e| StorageError::Corrupt(format!("an outcome index key: {e}")))?;
            out.push((epoch, value));
            entry = cursor.next()?;
        }
        Ok(out)
    }

    /// About how many versions (and metadata entries) the storage holds, if the engine can
    /// tell cheaply ([`Engine::estimated_entries`]).
    pub fn estimated_versions(&self) -> Option<u64> {
        self.engine.estimated_entries()
    }

    /// The garbage-collection horizon: reads below it are refused.
    pub fn horizon(&self) -> Timestamp {
        Timestamp::from_u64(self.horizon.load(Ordering::SeqCst))
    }

    /// Raises the garbage-collection horizon to `to` (no higher than the watermark's
    /// timestamp), storing it durably first; from then on reads below it are refused and the
    /// engine may drop the versions only they could see. Returns false if the horizon was
    /// already there.
    ///
    /// The durable horizon must never pass the durable watermark: a process killed reopens
    /// at that watermark and replays the windows after it, reading at its timestamp. The
    /// synced write of the horizon makes every write before it durable, except on an engine
    /// that syncs out of order (runs held, [`Engine::syncs_out_of_order`]): there, if the
    /// last flush that finished is older than `to`, everything applied is flushed first (a
    /// shard's periodic flushes make that rare: its retention is longer than their interval).
    pub fn raise_horizon(&self, to: Timestamp) -> Result<bool> {
        let _raising = self.raising.lock().unwrap_or_else(|e| e.into_inner());
        let to = to.min(Timestamp::from_u64(self.applied_ts.load(Ordering::SeqCst)));
        if to <= self.horizon() {
            return Ok(false);
        }
        if self.engine.syncs_out_of_order() && to.as_u64() > self.durable_ts.load(Ordering::SeqCst)
        {
            self.flush()?;
        }
        let mut raw = RawBatch::default();
        raw.put(StorageKey::Meta(MetaKey::GcHorizon).encode(), to.as_u64().to_be_bytes());
        self.engine.write(raw, true)?;
        self.horizon.store(to.as_u64(), Ordering::SeqCst);
        self.engine.set_gc_horizon(to);
        Ok(true)
    }

    /// `Ok` if reads at `at` are not below the horizon; called after a read, so one that
    /// raced with the horizon's rise is refused rather than answered from a partial state.
    fn readable(&self, at: Timestamp) -> Result<()> {
        let horizon = self.horizon();
        match at < horizon {
            true => Err(StorageError::BelowHorizon { ts: at, horizon }),
            false => Ok(()),
        }
    }

    /// What the row cache has done since the storage was opened.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The memory the engine underneath holds (the row cache's is in [`Mvcc::cache_stats`]).
    pub fn engine_memory(&self) -> crate::EngineMemory {
        self.engine.memory()
    }

    /// The value of `key` as of `at`: its newest version at or below `at`, unless that
    /// version is a deletion.
    pub fn get(&self, key: &[u8], at: Timestamp) -> Result<Option<Version>> {
        self.check_key(key)?;
        let newest = match self.cache.get(key, at) {
            Some(newest) => newest,
            None => {
                // The ticket before the watermark: a batch applied after it voids the ticket.
                let ticket = self.cache.ticket();
                let current = at.as_u64() >= self.applied_ts.load(Ordering::SeqCst);
                let newest = match self.newest_version(key, at)? {
                    Some((ts, value)) => Newest::Version(ts, value),
                    None => Newest::Nothing,
                };
                if let Some(ticket) = ticket.filter(|_| current) {
                    self.cache.fill(ticket, key, newest.clone());
                }
                newest
            }
        };
        self.readable(at)?;
        Ok(match newest {
            Newest::Version(ts, Some(value)) => Some(Version { ts, value }),
            _ => None,
        })
    }

    /// Checks the row cache's own structure (tests): an error says what is broken. A broken
    /// table could only miss, never answer wrongly, so reads alone would not show it.
    #[doc(hidden)]
    pub fn check_row_cache(&self) -> std::result::Result<(), String> {
        self.cache.check()
    }

    /// Brings the row cache's entries of `keys` into the processor's caches, so that reads of
    /// them soon after do not wait for memory one after the other. Changes nothing a read or
    /// the cache's eviction sees: a hint, for a caller about to read many keys it knows.
    pub fn prefetch<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        self.cache.prefetch(keys);
    }

    /// The timestamp of the newest write of `key` at or below `at`, deletions included. A
    /// transaction that read `key` at some earlier timestamp uses this to see if it changed.
    pub fn last_write(&self, key: &[u8], at: Timestamp) -> Result<Option<Timestamp>> {
        self.check_key(key)?;
        let newest = self.newest_version(key, at)?;
        self.readable(at)?;
        Ok(newest.map(|(ts, _)| ts))
    }

    /// The newest version of `key` at or below `at`, deletions included. The caller has
    /// checked the key.
    fn newest_version(
        &self,
        key: &[u8],
        at: Timestamp,
    ) -> Result<Option<(Timestamp, Option<Vec<u8>>)>> {
        let prefix = StorageKey::version_prefix(key);
        let seek = StorageKey::Version { key, ts: at }.encode();
        match self.engine.seek_in_prefix(&seek, &prefix)? {
            Some((k, v)) => {
                let (_, ts) = decode_version_key(&k)?;
                Ok(Some((ts, decode_value(&v)?)))
            }
            _ => Ok(None),
        }
    }

    /// Up to `limit` keys in `range` with their values as of `at`, in key order. Deleted keys
    /// are skipped and do not count towards the limit.
    pub fn scan(&self, range: &KeyRange, at: Timestamp, limit: usize) -> Result<VersionRows> {
        Ok(self.scan_bounded(range, at, limit, usize::MAX)?.0)
    }

    /// [`Mvcc::scan`], stopping also once the rows hold `max_bytes` of keys and values (the
    /// row that crosses it included, so at least one row is returned if there is one). The
    /// flag is true if it stopped for `limit` or `max_bytes`: there may be more rows.
    pub fn scan_bounded(
        &self,
        range: &KeyRange,
        at: Timestamp,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(VersionRows, bool)> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok((out, true));
        }
        let (mut bytes, mut stopped) = (0usize, false);
        self.walk_visible(range, at, |key, ts, value| {
            if let Some(value) = decode_value(value)? {
                bytes = bytes.saturating_add(key.len() + value.len());
                out.push((key, Version { ts, value }));
            }
            stopped = out.len() >= limit || bytes >= max_bytes;
            Ok(if stopped { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })?;
        self.readable(at)?;
        Ok((out, stopped))
    }

    /// The first key of `range` with a version written in `(after, upto]`, deletions
    /// included: what an optimistic transaction that read `range` at `after` missed.
    pub fn first_change(
        &self,
        range: &KeyRange,
        after: Timestamp,
        upto: Timestamp,
    ) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        if after < upto {
            self.walk_visible(range, upto, |key, ts, _| {
                Ok(if ts > after {
                    found = Some(key);
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })?;
        }
        // Only versions shadowed at or below `upto` go, so `after` may be below the horizon.
        self.readable(upto)?;
        Ok(found)
    }

    /// Calls `visit` with each key of `range` and its newest version at or below `at`
    /// (deletions included, as stored), in key order, until it breaks.
    fn walk_visible(
        &self,
        range: &KeyRange,
        at: Timestamp,
        mut visit: impl FnMut(Vec<u8>, Timestamp, &[u8]) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let upper = match &range.end {
            Some(end) => StorageKey::version_prefix(end),
            None => StorageKey::versions_end(),
        };
        let lower = StorageKey::version_prefix(&range.start);
        let mut cursor = self.engine.cursor_within(&lower, Some(&upper));
        let mut entry = cursor.seek(&lower)?;
        while let Some((k, v)) = entry {
            if k >= upper {
                break;
            }
            let (key, ts) = decode_version_key(&k)?;
            if ts > at {
                // Too new: jump to this key's newest version at or below `at`.
                entry = cursor.seek(&StorageKey::Version { key: &key, ts: at }.encode())?;
                continue;
            }
            let after_key = StorageKey::after_versions(&key);
            if visit(key, ts, &v)?.is_break() {
                break;
            }
            // The rest of this key's versions sort before `after_key`. Most keys have one
            // version: the next entry is then the next key's, and a step costs far less
            // than a seek (in RocksDB, one on every memtable and level).
            entry = match cursor.next()? {
                Some((k, _)) if k < after_key => cursor.seek(&after_key)?,
                next => next,
            };
        }
        Ok(())
    }

    /// Writes `batch` and moves the watermark to its window, atomically. Refuses, writing
    /// nothing, a batch over the limits or for a window not after the watermark.
    pub fn apply(&self, batch: &VersionBatch) -> Result<()> {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = *applied
            && batch.window <= current.window
        {
            return Err(StorageError::WindowOutOfOrder {
                window: batch.window,
                applied: current.window,
            });
        }
        // Each key and value; not the total: a window's batch holds many transactions, each
        // checked on its own (a window refused here could never be applied, on any replica).
        self.limits.check_each(batch.writes())?;

        // Room for the versions' keys and values (about: escapes can make a key longer),
        // then the bookkeeping, in one buffer.
        let bytes: usize = batch
            .writes()
            .map(|(key, value)| key.len() + VERSION_KEY_BYTES + 1 + value.map_or(0, <[u8]>::len))
            .sum();
        let mut raw = self.engine.spare_batch();
        raw.reserve(batch.writes.len() + batch.meta.len() + 1, bytes + 256);
        for (key, value) in batch.writes() {
            raw.put_with(
                |out| StorageKey::Version { key, ts: batch.ts }.encode_onto(out),
                |out| encode_value_onto(value, out),
            );
        }
        for (key, value) in &batch.meta {
            match value {
                Some(value) => raw.put(StorageKey::Meta(*key).encode(), value.clone()),
                None => raw.delete(StorageKey::Meta(*key).encode()),
            }
        }
        let watermark = Watermark { window: batch.window, ts: batch.ts };
        raw.put(StorageKey::Meta(MetaKey::AppliedWindow).encode(), encode_watermark(watermark));
        // The write-through below looks up each key; most were read to make the batch, but
        // possibly long enough ago to have left the processor's caches.
        self.cache.prefetch(batch.writes().map(|(key, _)| key));
        self.cache.begin_apply();
        let written = self.engine.write(raw, false);
        if written.is_ok() {
            for (key, value) in batch.writes() {
                self.cache.write_through(key, batch.ts, value);
            }
            self.applied_ts.store(batch.ts.as_u64(), Ordering::SeqCst);
            *applied = Some(watermark);
        }
        self.cache.end_apply();
        written
    }

    /// Raises the horizon to `horizon` ([`Mvcc::raise_horizon`]) and removes, now, every
    /// version that no read at or above it can see: one pass over every version, for engines
    /// that do not collect as they compact (and to see the effect at once).
    pub fn gc(&self, horizon: Timestamp) -> Result<GcStats> {
        self.raise_horizon(horizon)?;
        let horizon = self.horizon();
        let mut stats = GcStats::default();
        let mut doomed = RawBatch::default();
        let mut cursor = self.engine.cursor();
        let end = StorageKey::versions_end();
        // The key being walked, and whether its newest version at or below the horizon (the
        // one reads at the horizon see) has been passed.
        let mut current: Option<Vec<u8>> = None;
        let mut horizon_version_seen = false;
        let mut entry = cursor.seek(&StorageKey::versions_start())?;
        while let Some((k, v)) = entry {
            if k >= end {
                break;
            }
            stats.versions_seen += 1;
            let (key, ts) = decode_version_key(&k)?;
            if current.as_deref() != Some(key.as_slice()) {
                current = Some(key);
                horizon_version_seen = false;
            }
            if ts > horizon {
                // Visible to reads between the horizon and now: keep.
            } else if !horizon_version_seen {
                horizon_version_seen = true;
                // What reads at the horizon see. A deletion reads the same as no version.
                if decode_value(&v)?.is_none() {
                    doomed.delete(k);
                }
            } else {
                doomed.delete(k);
            }
            if doomed.len() >= GC_BATCH {
                stats.versions_removed += doomed.len() as u64;
                self.engine.write(std::mem::take(&mut doomed), false)?;
            }
            entry = cursor.next()?;
        }
        stats.versions_removed += doomed.len() as u64;
        if !doomed.is_empty() {
            self.engine.write(doomed, false)?;
        }
        Ok(stats)
    }

    /// Makes everything applied so far durable against a machine crash.
    pub fn flush(&self) -> Result<()> {
        let applied_ts = self.applied_ts.load(Ordering::SeqCst);
        self.engine.flush()?;
        self.durable_ts.fetch_max(applied_ts, Ordering::SeqCst);
        Ok(())
    }

    /// Starts [`Mvcc::flush`] in the background ([`Engine::begin_flush`]).
    pub fn begin_flush(&self) -> Result<()> {
        // Taken before the flush begins: every window applied by then is in it.
        let applied_ts = self.applied_ts.load(Ordering::SeqCst);
        self.engine.begin_flush()?;
        self.flush_began_ts.store(applied_ts, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the flushes begun have finished ([`Engine::flushed`]).
    pub fn flushed(&self) -> Result<bool> {
        let began = self.flush_began_ts.load(Ordering::SeqCst);
        let flushed = self.engine.flushed()?;
        if flushed {
            self.durable_ts.fetch_max(began, Ordering::SeqCst);
        }
        Ok(flushed)
    }

    /// Writes a consistent copy of this shard's storage to `dir` (which must not exist) at a
    /// window boundary, and returns the watermark it holds: no window is applied meanwhile.
    pub fn checkpoint(&self, dir: &std::path::Path) -> Result<Option<Watermark>> {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        self.engine.checkpoint(dir)?;
        Ok(*applied)
    }

    /// Compacts the engine's storage ([`Engine::compact`]); what reads see is unchanged.
    pub fn compact(&self) -> Result<()> {
        self.engine.compact()
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        self.limits.check_key(key)
    }
}

fn decode_version_key(k: &[u8]) -> Result<(Vec<u8>, Timestamp)> {
    StorageKey::decode_version(k).map_err(|e| StorageError::Corrupt(format!("{e} in {k:02x?}")))
}

fn encode_value_onto(value: Option<&[u8]>, out: &mut Vec<u8>) {
    match value {
        None => out.push(TOMBSTONE),
        Some(v) => {
            out.push(VALUE);
            out.extend_from_slice(v);
        }
    }
}

fn decode_value(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    match bytes.split_first() {
        Some((&TOMBSTONE, [])) => Ok(None),
        Some((&VALUE, v)) => Ok(Some(v.to_vec())),
        _ => Err(StorageError::Corrupt(format!("bad version value {bytes:02x?}"))),
    }
}

fn encode_watermark(w: Watermark) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&w.window.0.to_be_bytes());
    out.extend_from_slice(&w.ts.as_u64().to_be_bytes());
    out
}

fn decode_timestamp(bytes: &[u8]) -> Result<Timestamp> {
    let ts: [u8; 8] =
        bytes.try_into().map_err(|_| StorageError::Corrupt(format!("bad horizon {bytes:02x?}")))?;
    Ok(Timestamp::from_u64(u64::from_be_bytes(ts)))
}

fn decode_watermark(bytes: &[u8]) -> Result<Watermark> {
    let corrupt = || StorageError::Corrupt(format!("bad watermark {bytes:02x?}"));
    let (window, ts) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let ts: [u8; 8] = ts.try_into().map_err(|_| corrupt())?;
    Ok(Watermark {
        window: Epoch(u64::from_be_bytes(*window)),
        ts: Timestamp::from_u64(u64::from_be_bytes(ts)),
    })
}
