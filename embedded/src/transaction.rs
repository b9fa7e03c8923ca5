//! Read-only [`Snapshot`]s and optimistic interactive [`Transaction`]s of the embedded
//! database (DESIGN.md section 3).

use std::sync::atomic::Ordering;

use clock::Timestamp;
use storage::KeyRange;
use txn::{
    Buffer, ReadAt, Retry, Rows, ShardsAt, SnapshotRead, Store, StoreSnapshot, StoreTransaction,
    TxnError, commit_ts, scan_over,
};

use crate::database::Database;

/// How many keys [`Snapshot::get_many`] prefetches at once (about what a procedure declares).
const PREFETCH_BATCH: usize = 64;

/// A consistent read-only view of the whole database at one timestamp. Never conflicts.
pub struct Snapshot<'a> {
    db: &'a Database,
    ts: Timestamp,
}

impl Snapshot<'_> {
    /// The timestamp read at.
    pub fn ts(&self) -> Timestamp {
        self.ts
    }

    fn view(&self) -> ShardsAt<'_> {
        ShardsAt { shards: &self.db.inner.shards, map: &self.db.inner.map, at: self.ts }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        check_key(self.db, key)?;
        self.view().get(key).map_err(storage_error)
    }

    /// The values of `keys`, in their order: what [`Snapshot::get`] gives for each. The
    /// shards' row caches are touched for a batch of them first, so their memory misses
    /// overlap instead of coming one read at a time.
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, TxnError> {
        let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        for key in &keys {
            check_key(self.db, key)?;
        }
        let view = self.view();
        let mut values = Vec::with_capacity(keys.len());
        // A prefetch holds the cache stripes it touches, which the shards' threads wait
        // for: a batch at a time keeps that hold short however many keys are asked for.
        for batch in keys.chunks(PREFETCH_BATCH) {
            view.prefetch(batch);
            for key in batch {
                values.push(view.get(key).map_err(storage_error)?);
            }
        }
        Ok(values)
    }

    /// Up to `limit` keys of `range` with values, in key order.
    pub fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, TxnError> {
        self.view().scan(range, limit).map_err(storage_error)
    }

    /// Runs registered procedure `name` with `args` read-only on this snapshot: its reads at
    /// the snapshot's timestamp, within the ranges it declares, with no window and no
    /// validation ([`txn::call_read_only`]). A write aborts it ([`TxnError::Aborted`]) and
    /// changes nothing.
    pub fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, TxnError> {
        let (procedure, ranges) = txn::declared_ranges(&self.db.inner.registry, name, args)?;
        let limits = &self.db.inner.limits;
        txn::call_read_only(procedure.as_ref(), args, &ranges, &self.view(), self.ts, limits)
    }
}

fn storage_error(e: storage::StorageError) -> TxnError {
    TxnError::from_storage(e)
}

fn check_key(db: &Database, key: &[u8]) -> Result<(), TxnError> {
    db.inner.limits.check_key(key).map_err(storage_error)
}

impl Database {
    /// A read-only snapshot.
    pub fn snapshot(&self, at: ReadAt) -> Result<Snapshot<'_>, TxnError> {
        let ts = self.snapshot_ts(at)?;
        self.wait_safe(ts)?;
        Ok(Snapshot { db: self, ts })
    }

    /// The timestamp a snapshot at `at` reads at, once the shards are safe there.
    fn snapshot_ts(&self, at: ReadAt) -> Result<Timestamp, TxnError> {
        self.check_running()?;
        // A clock that cannot persist its bound fails the call, not the caller's thread (the
        // sequencer stops on it too, failing the database).
        let now = self.clock().try_now().map_err(|e| TxnError::Storage(e.to_string()))?;
        match at {
            ReadAt::Latest => {
                // Every commit returned so far is at or below `returned`: once every shard is
                // safe there, the newest state they have all applied holds each of them, and
                // is read at once instead of waiting for `now` (README, Departures). Read
                // before the safe time, as `begin` does.
                let returned = Timestamp::from_u64(self.inner.returned_ts.load(Ordering::SeqCst));
                let safe = self.safe_ts();
                Ok(if safe >= returned { safe } else { now })
            }
            ReadAt::At(ts) => {
                let oldest = now.saturating_sub(self.inner.retention);
                match ts < oldest {
                    true => Err(TxnError::OutsideRetention { ts, oldest }),
                    false => Ok(ts),
                }
            }
            ReadAt::BoundedStaleness(d) => Ok(now.saturating_sub(d)),
        }
    }

    /// Starts an optimistic transaction reading at the newest state every shard has applied.
    /// Most callers want [`Database::transact`], which also retries.
    pub fn begin(&self) -> Result<Transaction<'_>, TxnError> {
        self.check_running()?;
        // Read before the safe time: a commit returned by then is at or below it.
        let returned = Timestamp::from_u64(self.inner.returned_ts.load(Ordering::SeqCst));
        let read_ts = self.safe_ts();
        Ok(Transaction { db: self, buffer: Buffer::new(read_ts), complete: read_ts >= returned })
    }

    /// Runs `body` in a transaction and commits it, retrying on conflicts with back-off (up to
    /// 64 attempts) in the style of FoundationDB's `db.run`. `body` may run several times, so it
    /// should have no effects outside the transaction.
    pub fn transact<T>(
        &self,
        mut body: impl FnMut(&mut Transaction<'_>) -> Result<T, TxnError>,
    ) -> Result<T, TxnError> {
        let mut retry = Retry::default();
        loop {
            let mut tx = self.begin()?;
            let result = body(&mut tx).and_then(|value| tx.commit().map(|_| value));
            match result.map_err(|e| retry.after(e)) {
                Err(Ok(wait)) => std::thread::sleep(wait),
                Err(Err(e)) => return Err(e),
                Ok(value) => return Ok(value),
            }
        }
    }
}

/// An optimistic read-write transaction: reads at a snapshot, buffers writes, and is
/// validated in the window its commit lands in. Dropping it without commit discards it.
pub struct Transaction<'a> {
    db: &'a Database,
    buffer: Buffer,
    /// Whether its snapshot holds every commit returned to a caller before it began.
    complete: bool,
}

impl Transaction<'_> {
    /// The snapshot timestamp reads use.
    pub fn read_ts(&self) -> Timestamp {
        self.buffer.read_ts
    }

    fn view(&self) -> ShardsAt<'_> {
        ShardsAt { shards: &self.db.inner.shards, map: &self.db.inner.map, at: self.buffer.read_ts }
    }

    /// The value of `key`: this transaction's own write if any, else the snapshot's.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        check_key(self.db, key)?;
        if let Some(own) = self.buffer.read(key) {
            return Ok(own);
        }
        self.view().get(key).map_err(storage_error)
    }

    /// Up to `limit` keys of `range` with values, own writes included.
    pub fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Rows, TxnError> {
        let pending = self.buffer.scan(range);
        scan_over(&self.view(), range, limit, pending).map_err(storage_error)
    }

    /// Sets `key` to `value` when the transaction commits.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxnError> {
        check_key(self.db, key)?;
        self.db.inner.limits.check_value(key, value).map_err(storage_error)?;
        self.buffer.write(key, Some(value));
        Ok(())
    }

    /// Deletes `key` when the transaction commits.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), TxnError> {
        check_key(self.db, key)?;
        self.buffer.write(key, None);
        Ok(())
    }

    /// Submits the transaction and waits for its outcome. Returns the commit timestamp, or the
    /// read timestamp for a transaction that wrote nothing and read a snapshot holding every
    /// commit returned before it began (it commits there, without a window).
    pub fn commit(self) -> Result<Timestamp, TxnError> {
        let read_ts = self.buffer.read_ts;
        match self.buffer.into_request(self.complete) {
            None => Ok(read_ts),
            Some(request) => commit_ts(self.db.submit(request)?),
        }
    }
}

impl Store for Database {
    type Snapshot<'a> = Snapshot<'a>;
    type Transaction<'a> = Transaction<'a>;

    async fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, TxnError> {
        self.call_async(name, args).await
    }

    async fn snapshot(&self, at: ReadAt) -> Result<Snapshot<'_>, TxnError> {
        let ts = self.snapshot_ts(at)?;
        self.wait_safe_async(ts).await?;
        Ok(Snapshot { db: self, ts })
    }

    fn begin(&self) -> Result<Transaction<'_>, TxnError> {
        Database::begin(self)
    }
}

impl StoreSnapshot for Snapshot<'_> {
    fn ts(&self) -> Timestamp {
        self.ts
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        Snapshot::get(self, key)
    }

    async fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, TxnError> {
        Snapshot::scan(self, range, limit)
    }
}

impl StoreTransaction for Transaction<'_> {
    fn read_ts(&self) -> Timestamp {
        self.buffer.read_ts
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        Transaction::get(self, key)
    }

    async fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Rows, TxnError> {
        Transaction::scan(self, range, limit)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxnError> {
        Transaction::put(self, key, value)
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), TxnError> {
        Transaction::delete(self, key)
    }

    async fn commit(self) -> Result<Timestamp, TxnError> {
        let read_ts = self.buffer.read_ts;
        match self.buffer.into_request(self.complete) {
            None => Ok(read_ts),
            Some(request) => commit_ts(self.db.submit_async(request).await?),
        }
    }
}
