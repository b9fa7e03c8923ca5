//! [`RocksEngine`]: the [`Engine`] on RocksDB. The only file in sealdb that uses `rocksdb`.
//!
//! One column family, default comparator (bytewise, which is what the key codec sorts for),
//! LZ4 for compression. Writes go through RocksDB's WAL; whether they are fsynced is the
//! caller's choice per batch (shards do not fsync: the sequencer's log is the source of truth,
//! DESIGN.md section 6).

use std::path::{Path, PathBuf};

use rocksdb::{DB, DBCompressionType, DBRawIterator, Options, WriteBatch, WriteOptions};

use crate::engine::{Cursor, Engine, RawBatch, RawOp};
use crate::{Result, StorageError};

/// An engine stored in a RocksDB database directory.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
}

impl RocksEngine {
    /// Opens the database at `path`, creating it if missing.
    pub fn open(path: impl AsRef<Path>) -> Result<RocksEngine> {
        let path = path.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        let db = DB::open(&opts, &path).map_err(|e| engine_error(&path, e))?;
        Ok(RocksEngine { db, path })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine").field("path", &self.path).finish()
    }
}

fn engine_error(path: &Path, e: rocksdb::Error) -> StorageError {
    StorageError::Engine(format!("rocksdb at {}: {e}", path.display()))
}

impl Engine for RocksEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| engine_error(&self.path, e))
    }

    fn cursor(&self) -> Box<dyn Cursor + '_> {
        Box::new(RocksCursor { iter: self.db.raw_iterator(), started: false, path: &self.path })
    }

    fn write(&self, batch: RawBatch, sync: bool) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                RawOp::Put(k, v) => wb.put(k, v),
                RawOp::Delete(k) => wb.delete(k),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(wb, &opts).map_err(|e| engine_error(&self.path, e))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| engine_error(&self.path, e))?;
        self.db.flush_wal(true).map_err(|e| engine_error(&self.path, e))
    }
}

struct RocksCursor<'a> {
    iter: DBRawIterator<'a>,
    started: bool,
    path: &'a Path,
}

impl RocksCursor<'_> {
    fn current(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match self.iter.item() {
            Some((k, v)) => Ok(Some((k.to_vec(), v.to_vec()))),
            None => self.iter.status().map(|()| None).map_err(|e| engine_error(self.path, e)),
        }
    }
}

impl Cursor for RocksCursor<'_> {
    fn seek(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.started = true;
        self.iter.seek(key);
        self.current()
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if !self.started {
            self.started = true;
            self.iter.seek_to_first();
        } else if self.iter.valid() {
            self.iter.next();
        } else {
            return Ok(None);
        }
        self.current()
    }
}
