//! The [`Engine`] trait: what storage needs from an ordered key-value store.

use clock::Timestamp;

use crate::Result;

/// One write in a [`RawBatch`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOp<'a> {
    /// Set the key to the value.
    Put(&'a [u8], &'a [u8]),
    /// Remove the key.
    Delete(&'a [u8]),
}

impl<'a> RawOp<'a> {
    /// The key written.
    pub fn key(self) -> &'a [u8] {
        match self {
            RawOp::Put(key, _) | RawOp::Delete(key) => key,
        }
    }

    /// The value put; `None` for a delete.
    pub fn value(self) -> Option<&'a [u8]> {
        match self {
            RawOp::Put(_, value) => Some(value),
            RawOp::Delete(_) => None,
        }
    }
}

/// Writes applied atomically, in order: after a crash, all of them or none are present.
///
/// Every key and value lies in one buffer, one after another, so a window's batch is a few
/// allocations, not two a write: a shard builds its batches on its own thread and a
/// write-behind thread drops them, and with two allocations a write, allocation was 15% of
/// the shard thread's profile (10% with one buffer; the README's figures).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RawBatch {
    /// The keys and values, in the order written.
    bytes: Vec<u8>,
    /// Where each write's key and value end in `bytes` (each begins where the one before it
    /// ended); a delete's value is empty.
    ops: Vec<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    key_end: usize,
    value_end: usize,
    put: bool,
}

impl RawBatch {
    /// Adds a put.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.put_with(
            |b| b.extend_from_slice(key.as_ref()),
            |b| b.extend_from_slice(value.as_ref()),
        );
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.bytes.extend_from_slice(key.as_ref());
        let end = self.bytes.len();
        self.ops.push(Span { key_end: end, value_end: end, put: false });
    }

    /// Adds a put whose key, then value, `key` and `value` append to the batch's buffer (they
    /// must only append).
    pub(crate) fn put_with(
        &mut self,
        key: impl FnOnce(&mut Vec<u8>),
        value: impl FnOnce(&mut Vec<u8>),
    ) {
        key(&mut self.bytes);
        let key_end = self.bytes.len();
        value(&mut self.bytes);
        let value_end = self.bytes.len();
        self.ops.push(Span { key_end, value_end, put: true });
    }

    /// Write `i`, in the order written.
    ///
    /// # Panics
    ///
    /// If the batch has `i` writes or fewer.
    pub fn get(&self, i: usize) -> RawOp<'_> {
        let start = match i {
            0 => 0,
            _ => self.ops[i - 1].value_end,
        };
        let span = self.ops[i];
        let key = &self.bytes[start..span.key_end];
        match span.put {
            true => RawOp::Put(key, &self.bytes[span.key_end..span.value_end]),
            false => RawOp::Delete(key),
        }
    }

    /// The writes, in the order written.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RawOp<'_>> + '_ {
        (0..self.ops.len()).map(|i| self.get(i))
    }

    /// Makes room for `ops` more writes of `bytes` more bytes of keys and values.
    pub fn reserve(&mut self, ops: usize, bytes: usize) {
        self.ops.reserve(ops);
        self.bytes.reserve(bytes);
    }

    /// Bytes of keys and values the batch holds.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes of keys and values the batch has room for without allocating.
    pub fn byte_capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Removes every write, keeping the memory for the next ones.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.bytes.clear();
    }

    /// How many writes the batch holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl<'a> Extend<RawOp<'a>> for RawBatch {
    fn extend<I: IntoIterator<Item = RawOp<'a>>>(&mut self, ops: I) {
        for op in ops {
            match op {
                RawOp::Put(key, value) => self.put(key, value),
                RawOp::Delete(key) => self.delete(key),
            }
        }
    }
}

impl<'a> FromIterator<RawOp<'a>> for RawBatch {
    fn from_iter<I: IntoIterator<Item = RawOp<'a>>>(ops: I) -> RawBatch {
        let mut batch = RawBatch::default();
        batch.extend(ops);
        batch
    }
}

impl std::fmt::Debug for RawBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Bytes of memory an engine holds, by what for ([`Engine::memory`]); zero where it cannot
/// tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineMemory {
    /// Write buffers (RocksDB's memtables), active and waiting to be flushed.
    pub memtables: u64,
    /// Open table files' readers outside the block cache (their index and filter blocks
    /// when those are not cached).
    pub table_readers: u64,
    /// The block cache's use (data, index and filter blocks).
    pub block_cache: u64,
}

impl std::ops::Add for EngineMemory {
    type Output = EngineMemory;

    fn add(self, other: EngineMemory) -> EngineMemory {
        EngineMemory {
            memtables: self.memtables + other.memtables,
            table_readers: self.table_readers + other.table_readers,
            block_cache: self.block_cache + other.block_cache,
        }
    }
}

/// An ordered map from bytes to bytes with atomic batches. Keys compare as byte strings.
///
/// Determinism contract: for the same sequence of `write`s, every implementation holds the
/// same keys and values and returns them in the same order; nothing here depends on time,
/// randomness or thread scheduling. The one exception is garbage: an engine told a horizon
/// ([`Engine::set_gc_horizon`]) may drop, when it likes, versions that no read at or above
/// the horizon can see. An error is an infrastructure failure, never a different
/// answer: callers stop rather than continue on one replica with a different state.
pub trait Engine: Send + Sync + 'static {
    /// The value at exactly `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// A cursor for forward iteration. It sees at least every write completed before it was
    /// created; whether it sees later ones is unspecified.
    fn cursor(&self) -> Box<dyn Cursor + '_>;

    /// A cursor for reading the keys from `start` up to `end` (`None`: no end): each seek
    /// to a key in those bounds, and each step from an entry in them, returns what
    /// [`Engine::cursor`]'s would if that is below `end`, and otherwise some entry at or
    /// after `end`, or none. What the bounds tell lets an engine read fewer of its parts
    /// (RocksDB: one column family, on a kept iterator).
    fn cursor_within(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Cursor + '_> {
        let _ = (start, end);
        self.cursor()
    }

    /// The first entry at or after `key`, if its key starts with `prefix`: one version lookup.
    /// `prefix` is `StorageKey::version_prefix` of the user key `key` is a version of, which
    /// lets an engine skip files without that key (RocksDB's prefix Bloom filters).
    fn seek_in_prefix(&self, key: &[u8], prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.cursor().seek(key)?.filter(|(k, _)| k.starts_with(prefix)))
    }

    /// Applies `batch` atomically. With `sync`, the batch is durable against a machine crash
    /// when this returns; without, against a process crash at most, and not even that for a
    /// RocksDB engine opened without its write-ahead log (`RocksOptions::wal`) until the
    /// next [`Engine::flush`].
    fn write(&self, batch: RawBatch, sync: bool) -> Result<()>;

    /// An empty batch to fill for a next write: where the engine keeps the memory of batches
    /// it has written (a [`WriteBehind`](crate::WriteBehind) does), one of those, so that a
    /// shard's windows do not each allocate, and fault in, a buffer of their own. By default
    /// a new one.
    fn spare_batch(&self) -> RawBatch {
        RawBatch::default()
    }

    /// [`Engine::write`] of a batch the caller keeps (a queue that still serves reads from
    /// it): engines that copy a batch anyway take it by reference; others get a clone.
    fn write_ref(&self, batch: &RawBatch, sync: bool) -> Result<()> {
        self.write(batch.clone(), sync)
    }

    /// Whether the engine can take `key`'s writes as sorted runs ([`Engine::ingest`]) from a
    /// holder that keeps them meanwhile (a [`WriteBehind`](crate::WriteBehind) with runs held),
    /// instead of as writes. By default none. The versions of one user key are all ingested
    /// or none ([`Engine::seek_in_prefix`] looks for them in one place).
    fn ingests(&self, key: &[u8]) -> bool {
        let _ = key;
        false
    }

    /// Whether the engine may ingest ([`Engine::ingests`]) a key from `start` up to `end`
    /// (`None`: no end); by default, yes.
    fn ingests_within(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        let _ = (start, end);
        true
    }

    /// [`Engine::write_ref`], unsynced, of `batch`'s writes to keys the engine does not take
    /// by ingest ([`Engine::ingests`]): the holder keeps the rest for [`Engine::ingest`].
    fn write_uningested(&self, batch: &RawBatch) -> Result<()> {
        self.write_ref(batch, false)
    }

    /// Makes every write completed before the call durable against a machine crash, then
    /// applies `entries` (keys the engine [`Engine::ingests`], strictly increasing; a `Delete`
    /// removes its key) atomically and durably, as a write after all of those (atomically
    /// within each column family: a RocksDB engine ingests its two one after the other, in
    /// the order its doc gives). Engines that ingest nothing refuse.
    fn ingest(&self, entries: &mut dyn Iterator<Item = RawOp<'_>>) -> Result<()> {
        let _ = entries;
        Err(crate::StorageError::Engine("this engine takes no sorted runs".into()))
    }

    /// Makes every completed write durable against a machine crash.
    fn flush(&self) -> Result<()>;

    /// Whether a synced write can be durable while writes completed before it are not yet
    /// (a [`WriteBehind`](crate::WriteBehind) holding runs: they become durable when
    /// ingested). Then only a finished flush ([`Engine::flushed`]) says what is durable. By
    /// default no: a synced write makes every write before it durable.
    fn syncs_out_of_order(&self) -> bool {
        false
    }

    /// Starts [`Engine::flush`] without waiting for it: every write completed before the call
    /// is durable once [`Engine::flushed`] says so. Engines that cannot flush in the
    /// background flush here.
    fn begin_flush(&self) -> Result<()> {
        self.flush()
    }

    /// Whether every flush begun ([`Engine::begin_flush`]) has finished.
    fn flushed(&self) -> Result<bool> {
        Ok(true)
    }

    /// Rewrites what is stored into the engine's most compact form for reading, as after a
    /// bulk load; the contents stay the same. Takes time and I/O in proportion to the data.
    /// Engines with nothing to compact do nothing.
    fn compact(&self) -> Result<()> {
        Ok(())
    }

    /// Versions that no read at or above `horizon` sees may go: each user key's versions
    /// below its newest one at or below `horizon`. The caller has made `horizon` durable and
    /// refuses reads below it. RocksDB drops them as it compacts; engines that do nothing
    /// here keep everything until [`crate::Mvcc::gc`] deletes them.
    fn set_gc_horizon(&self, horizon: Timestamp) {
        let _ = horizon;
    }

    /// The memory the engine holds outside the caller's reach, if it can tell cheaply.
    fn memory(&self) -> EngineMemory {
        EngineMemory::default()
    }

    /// About how many entries (versions and metadata) the engine holds, if it can tell
    /// cheaply: RocksDB's own estimate, which counts a version until compaction drops it.
    fn estimated_entries(&self) -> Option<u64> {
        None
    }

    /// Writes a consistent copy of what is stored (as of one point: every completed write
    /// or none of a batch) to `dir`, which must not exist, durably. Engines that keep nothing
    /// on disk refuse.
    fn checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        Err(crate::StorageError::Engine(format!(
            "this engine keeps nothing on disk to copy to {}",
            dir.display()
        )))
    }
}

/// Forward iteration over an [`Engine`].
pub trait Cursor {
    /// Moves to the first entry whose key is `>= key` and returns it.
    fn seek(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>>;

    /// Moves to the entry after the current one and returns it. Before any `seek`, returns
    /// the first entry.
    fn next(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
}
