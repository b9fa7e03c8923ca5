//! What interactive transactions share, embedded or remote (DESIGN.md section 3): where a
//! read-only transaction reads ([`ReadAt`]), the buffer of an optimistic transaction's reads
//! and writes that becomes its commit ([`Buffer`]), and the retry policy of the `transact`
//! helpers ([`Retry`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clock::Timestamp;
use storage::KeyRange;

use crate::error::TxnError;
use crate::outcome::Outcome;
use crate::request::{InteractiveCommit, Request};

/// Which state a read-only transaction reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// Everything acknowledged before the call: waits until every shard's safe time reaches
    /// the current time (linearizable). The embedded database reads at the shards' safe time
    /// instead, without waiting, when that already holds every commit it has returned.
    Latest,
    /// The state at a past timestamp within the retention window.
    At(Timestamp),
    /// The state this long ago (waits only if the shards are further behind than that).
    BoundedStaleness(Duration),
}

/// How `transact` helpers retry: conflicts only, up to 64 attempts, with a back-off from
/// 0.2 ms doubling to 20 ms.
pub struct Retry {
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
    pub fn after(&mut self, e: TxnError) -> Result<Duration, TxnError> {
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
pub struct Buffer {
    /// The snapshot it reads at.
    pub read_ts: Timestamp,
    reads: BTreeSet<Vec<u8>>,
    scans: Vec<KeyRange>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Buffer {
    /// An empty buffer reading at `read_ts`.
    pub fn new(read_ts: Timestamp) -> Buffer {
        Buffer { read_ts, reads: BTreeSet::new(), scans: Vec::new(), writes: BTreeMap::new() }
    }

    /// This transaction's own write of `key`, if any; otherwise notes the read.
    pub fn read(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.writes.get(key) {
            return Some(v.clone());
        }
        self.reads.insert(key.to_vec());
        None
    }

    /// Notes a scan of `range`; returns this transaction's writes in it.
    pub fn scan(&mut self, range: &KeyRange) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.scans.push(range.clone());
        self.writes
            .iter()
            .filter(|(k, _)| range.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Buffers a write (`None` deletes).
    pub fn write(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.writes.insert(key.to_vec(), value.map(<[u8]>::to_vec));
    }

    /// The commit's log entry, or `None` if it needs none: it neither read nor wrote
    /// anything, or it wrote nothing and `complete` says its snapshot holds every commit
    /// returned to a caller before it began. Such a transaction commits at `read_ts`, where
    /// all its reads were made: one complete snapshot, so strictly serializable there without
    /// a window. A read-only transaction whose snapshot may miss one is validated in a window
    /// like any commit.
    pub fn into_request(self, complete: bool) -> Option<Request> {
        let read_nothing = self.reads.is_empty() && self.scans.is_empty();
        if self.writes.is_empty() && (complete || read_nothing) {
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
pub fn commit_ts(outcome: Outcome) -> Result<Timestamp, TxnError> {
    match outcome {
        Outcome::Committed { ts, .. } => Ok(ts),
        Outcome::Conflict { key } => Err(TxnError::Conflict { key }),
        Outcome::Aborted(reason) => Err(TxnError::Aborted(reason)),
    }
}
