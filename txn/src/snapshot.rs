//! [`ShardsAt`]: a [`SnapshotRead`] over the MVCC storage of every shard at one timestamp.

use std::collections::BTreeMap;
use std::sync::Arc;

use clock::Timestamp;
use sequencer::ShardId;
use storage::{KeyRange, Mvcc, StorageError};

use crate::executor::SnapshotRead;
use crate::procedure::Rows;
use crate::shard_map::ShardMap;

/// The state of the whole key space at `at`, reading each key from the shard that owns it.
/// Every shard must have applied every window up to `at` (the caller waits for that).
#[derive(Clone)]
pub struct ShardsAt<'a> {
    /// Storage of shard `i` at index `i`.
    pub shards: &'a [Arc<Mvcc>],
    /// Which shard owns which keys.
    pub map: &'a ShardMap,
    /// The timestamp read at.
    pub at: Timestamp,
}

/// One shard's state at `at`, for keys that shard owns: what a shard server's read-only call
/// reads ([`crate::call_read_only`]). The shard must have applied every window up to `at`.
#[derive(Clone, Copy)]
pub struct ShardAt<'a> {
    /// The shard's storage.
    pub mvcc: &'a Mvcc,
    /// The timestamp read at.
    pub at: Timestamp,
}

impl SnapshotRead for ShardAt<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.mvcc.get(key, self.at)?.map(|v| v.value))
    }

    fn prefetch(&self, keys: &[&[u8]]) {
        self.mvcc.prefetch(keys.iter().copied());
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, StorageError> {
        let found = self.mvcc.scan(range, self.at, limit)?;
        Ok(found.into_iter().map(|(k, v)| (k, v.value)).collect())
    }

    fn first_change(
        &self,
        range: &KeyRange,
        after: Timestamp,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.mvcc.first_change(range, after, self.at)
    }
}

/// Up to `limit` rows of `range`, in key order: each shard's part of it in turn, read by
/// `scan_part(shard, part, rows still wanted)`.
pub fn scan_shards(
    map: &ShardMap,
    range: &KeyRange,
    limit: usize,
    mut scan_part: impl FnMut(ShardId, &KeyRange, usize) -> Result<Rows, StorageError>,
) -> Result<Rows, StorageError> {
    let mut rows = Vec::new();
    for shard in map.shards_of(range) {
        let part = map.clip(range, shard);
        rows.extend(scan_part(shard, &part, limit - rows.len())?);
        if rows.len() >= limit {
            break;
        }
    }
    Ok(rows)
}

impl ShardsAt<'_> {
    /// Shard `shard` at the same timestamp.
    fn shard(&self, shard: ShardId) -> ShardAt<'_> {
        ShardAt { mvcc: &self.shards[shard.0 as usize], at: self.at }
    }
}

impl SnapshotRead for ShardsAt<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.shard(self.map.shard_of(key)).get(key)
    }

    fn prefetch(&self, keys: &[&[u8]]) {
        for (i, shard) in self.shards.iter().enumerate() {
            let own = keys.iter().filter(|key| self.map.shard_of(key).0 as usize == i);
            shard.prefetch(own.copied());
        }
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, StorageError> {
        scan_shards(self.map, range, limit, |shard, part, left| self.shard(shard).scan(part, left))
    }

    fn first_change(
        &self,
        range: &KeyRange,
        after: Timestamp,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        for shard in self.map.shards_of(range) {
            let part = self.map.clip(range, shard);
            if let Some(key) = self.shard(shard).first_change(&part, after)? {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }
}

/// Scans `range` of `snapshot` with `pending` writes (`None` deletes) laid over it: the first
/// `limit` rows of the merged state.
pub fn scan_over(
    snapshot: &dyn SnapshotRead,
    range: &KeyRange,
    limit: usize,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Result<Rows, StorageError> {
    let rows = snapshot.scan(range, rows_needed(limit, &pending))?;
    Ok(overlay(rows, pending, limit))
}

/// How many snapshot rows a scan with `pending` writes needs for `limit` merged rows: each
/// pending deletion hides at most one snapshot row.
pub fn rows_needed(limit: usize, pending: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> usize {
    limit.saturating_add(pending.values().filter(|v| v.is_none()).count())
}

/// What a scan of a range with `limit` reads, from a read of the same range that returned
/// `rows` (its first ones, or all of them if `complete`): their first `limit`, if they hold
/// them.
pub fn first_rows(rows: &Rows, complete: bool, limit: usize) -> Option<Rows> {
    (complete || rows.len() >= limit).then(|| rows.iter().take(limit).cloned().collect())
}

/// The first `limit` rows of `rows` (in key order) with `pending` writes laid over them.
pub fn overlay(rows: Rows, pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>, limit: usize) -> Rows {
    let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = rows.into_iter().collect();
    for (k, v) in pending {
        match v {
            Some(v) => rows.insert(k, v),
            None => rows.remove(&k),
        };
    }
    rows.into_iter().take(limit).collect()
}
