//! The [`Engine`] trait: what storage needs from an ordered key-value store.

use clock::Timestamp;

use crate::Result;

/// One write in a [`RawBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawOp {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Delete(Vec<u8>),
}

/// Writes applied atomically, in order: after a crash, all of them or none are present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawBatch {
    /// The writes.
    pub ops: Vec<RawOp>,
}

impl RawBatch {
    /// Adds a put.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(RawOp::Put(key, value));
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(RawOp::Delete(key));
    }

    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
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

    /// [`Engine::write`] of a batch the caller keeps (a queue that still serves reads from
    /// it): engines that copy a batch anyway take it by reference; others get a clone.
    fn write_ref(&self, batch: &RawBatch, sync: bool) -> Result<()> {
        self.write(batch.clone(), sync)
    }

    /// Makes every completed write durable against a machine crash.
    fn flush(&self) -> Result<()>;

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
