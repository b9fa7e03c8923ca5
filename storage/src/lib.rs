//! Storage for sealdb shards: multi-version key-value data over an ordered byte engine.
//!
//! Two layers:
//!
//! - An [`Engine`] is an ordered map of bytes with atomic write batches and seekable cursors.
//!   `RocksEngine` keeps it in RocksDB (the only file in the project that uses `rocksdb`, and
//!   only with this crate's `rocksdb` feature, so that crates above can leave it out);
//!   [`MemoryEngine`] keeps it in a `BTreeMap` for tests and simulations. Both pass the same
//!   test suite, and a model test runs them side by side. [`WriteBehind`] wraps either so
//!   that unsynced writes return once queued and a thread of their own writes them, while
//!   reads see them at once.
//! - [`Mvcc`] stores *versions* of user keys on an engine: each write of a key at timestamp `t`
//!   is a new version, reads and scans at `t` see the newest version at or below `t`, and one
//!   atomic batch ([`VersionBatch`]) writes a window's versions together with the shard's
//!   applied-window watermark. Old versions are garbage-collected below a retention horizon.
//!
//! Every byte written to an engine goes through one order-preserving codec ([`keycode`]) from
//! a typed key ([`StorageKey`]), so the on-disk order is the order of the typed keys:
//!
//! ```text
//!   0x00 <meta tag>                              meta: applied-window watermark, ...
//!   0x01 <user key, escaped> <!ts, 8 bytes BE>   versions, per key newest first
//!
//!   0x01 "acct/1" !t9 -> Put("70")     a read at t >= t9 sees "70"
//!   0x01 "acct/1" !t5 -> Put("100")    a read at t5 <= t < t9 sees "100"
//!   0x01 "acct/2" !t9 -> Delete        a read at t >= t9 sees nothing
//! ```
//!
//! Invariants this crate keeps:
//!
//! - A version, once written, is never modified; only GC removes it, and only when no read at
//!   or above the horizon could see it.
//! - A [`VersionBatch`] is written whole or not at all, together with its watermark, so after
//!   a crash the watermark names exactly the last window whose writes are present.
//! - Oversize keys, values and batches are refused with a typed error before anything is
//!   written ([`Limits`], DESIGN.md section 8).
//!
//! Not here: deciding what to write (transactions, in `txn`), and durability of the log (the
//! sequencer's). Shard writes are not fsynced; after a machine crash the shard replays the
//! log from its watermark (DESIGN.md section 6).

mod behind;
mod cache;
mod engine;
mod error;
#[cfg(feature = "rocksdb")]
mod fnv;
mod key;
pub mod keycode;
mod limits;
mod memory;
mod mvcc;
mod range;
#[cfg(feature = "rocksdb")]
mod rocks;

pub use crate::behind::{
    DEFAULT_HELD_BYTES, DEFAULT_WRITE_BEHIND, INGEST_NICE, MAX_FROZEN, MAX_SPARE_BATCH_BYTES,
    MERGE_FAN_IN, WriteBehind,
};
pub use crate::cache::CacheStats;
pub use crate::engine::{Cursor, Engine, EngineMemory, RawBatch, RawOp};
pub use crate::error::StorageError;
pub use crate::key::{MetaKey, StorageKey};
pub use crate::limits::Limits;
pub use crate::memory::MemoryEngine;
pub use crate::mvcc::{
    DEFAULT_ROW_CACHE_BYTES, GcStats, Mvcc, Version, VersionBatch, VersionRows, Watermark,
};
pub use crate::range::{KeyRange, Quoted};
#[cfg(feature = "rocksdb")]
pub use crate::rocks::{
    DEFAULT_BLOCK_CACHE_BYTES, DEFAULT_BYTES_PER_SYNC, DEFAULT_L0_COMPACTION_TRIGGER,
    DEFAULT_TABLE_FILE_BYTES, MAX_APART_HINT_BYTES, RocksEngine, RocksOptions,
    open_files_allowance, open_files_limit, raise_open_files_limit,
};
pub use clock::Epoch;

/// Results of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
