//! Read-only [`Snapshot`]s and optimistic interactive [`Transaction`]s (DESIGN.md section 3).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clock::Timestamp;
use storage::KeyRange;

use crate::database::Database;
use crate::error::TxnError;
use crate::executor::SnapshotRead;
use crate::outcome::Outcome;
use crate::procedure::Rows;
use crate::request::{InteractiveCommit, Request};
use crate::snapshot::{ShardsAt, scan_over};
use crate::store::{Store, StoreSnapshot, StoreTransaction};

/// Which state a read-only transaction reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// Everything acknowledged before the call: waits until every shard's safe time reaches
    /// the current time (linearizable).
    Latest,
    /// The state at a past timestamp within the retention window.
    At(Timestamp),
    /// The state this long ago (waits only if the shards are further behind than that).
    BoundedStaleness(Duration),
}

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

    /// Up to `limit` keys of `range` with values, in key order.
    pub fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, TxnError> {
        self.view().scan(range, limit).map_err(storage_error)
    }
}

fn storage_error(e: storage::StorageError) -> TxnError {
    match e {
        storage::StorageError::KeyTooLarge { .. }
        | storage::StorageError::ValueTooLarge { .. }
        | storage::StorageError::BatchTooLarge { .. } => TxnError::TooLarge(e.to_string()),
        other => TxnError::Storage(other.to_string()),
    }
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
        let now = self.clock().now();
        match at {
            ReadAt::Latest => Ok(now),
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
        Ok(Transaction { db: self, buffer: Buffer::new(self.safe_ts()) })
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

/// How `transact` helpers retry: conflicts only, up to 64 attempts, with a back-off from
/// 0.2 ms doubling to 20 ms.
pub(crate) struct Retry {
    attempt: u32,
    backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { attempt: 0, backoff: Duration::from_micros(200) }
    }
}

impl Retry {
    /// After an attempt failed with `e`: how long to wait before the next, or `e` to return.
    pub(crate) fn after(&mut self, e: TxnError) -> Result<Duration, TxnError> {
        self.attempt += 1;
        if !e.is_retryable() || self.attempt >= 64 {
            return Err(e);
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(20));
        Ok(wait)
    }
}

/// What an optimistic transaction read and will write, embedded or remote.
pub(crate) struct Buffer {
    pub(crate) read_ts: Timestamp,
    reads: BTreeSet<Vec<u8>>,
    scans: Vec<KeyRange>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Buffer {
    pub(crate) fn new(read_ts: Timestamp) -> Buffer {
        Buffer { read_ts, reads: BTreeSet::new(), scans: Vec::new(), writes: BTreeMap::new() }
    }

    /// This transaction's own write of `key`, if any; otherwise notes the read.
    pub(crate) fn read(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.writes.get(key) {
            return Some(v.clone());
        }
        self.reads.insert(key.to_vec());
        None
    }

    /// Notes a scan of `range`; returns this transaction's writes in it.
    pub(crate) fn scan(&mut self, range: &KeyRange) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.scans.push(range.clone());
        self.writes
            .iter()
            .filter(|(k, _)| range.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Buffers a write (`None` deletes).
    pub(crate) fn write(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.writes.insert(key.to_vec(), value.map(<[u8]>::to_vec));
    }

    /// The commit's log entry, or `None` if it neither read nor wrote anything.
    pub(crate) fn into_request(self) -> Option<Request> {
        if self.reads.is_empty() && self.scans.is_empty() && self.writes.is_empty() {
            return None;
        }
        Some(Request::Interactive(InteractiveCommit {
            read_ts: self.read_ts,
            reads: self.reads.into_iter().collect(),
            scans: self.scans,
            writes: self.writes.into_iter().collect(),
        }))
    }
}

/// A commit's timestamp, or why it did not commit.
pub(crate) fn commit_ts(outcome: Outcome) -> Result<Timestamp, TxnError> {
    match outcome {
        Outcome::Committed { ts, .. } => Ok(ts),
        Outcome::Conflict { key } => Err(TxnError::Conflict { key }),
        Outcome::Aborted(reason) => Err(TxnError::Aborted(reason)),
    }
}

/// An optimistic read-write transaction: reads at a snapshot, buffers writes, and is
/// validated in the window its commit lands in. Dropping it without commit discards it.
pub struct Transaction<'a> {
    db: &'a Database,
    buffer: Buffer,
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
    /// read timestamp for a transaction that neither read nor wrote anything.
    pub fn commit(self) -> Result<Timestamp, TxnError> {
        let read_ts = self.buffer.read_ts;
        match self.buffer.into_request() {
            None => Ok(read_ts),
            Some(request) => commit_ts(self.db.submit(&request)?),
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
        match self.buffer.into_request() {
            None => Ok(read_ts),
            Some(request) => commit_ts(self.db.submit_async(&request).await?),
        }
    }
}
