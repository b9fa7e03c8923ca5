//! [`ShardMap`]: which shard owns which keys (DESIGN.md section 7).

use sequencer::ShardId;
use storage::KeyRange;

/// Range partitioning of the key space by split keys: with splits `[s1, s2]`, shard 0 owns
/// keys below `s1`, shard 1 owns `[s1, s2)`, shard 2 owns `s2` and above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    splits: Vec<Vec<u8>>,
}

/// Split keys that do not partition the key space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard map: split keys must be non-empty and strictly increasing ({0})")]
pub struct InvalidShardMap(pub String);

impl ShardMap {
    /// A map from split keys, which must be non-empty and strictly increasing.
    pub fn new(splits: Vec<Vec<u8>>) -> Result<ShardMap, InvalidShardMap> {
        if let Some(i) = splits.iter().position(|s| s.is_empty()) {
            return Err(InvalidShardMap(format!("split {i} is empty")));
        }
        if let Some(i) = splits.windows(2).position(|w| w[0] >= w[1]) {
            return Err(InvalidShardMap(format!("split {} is not above split {i}", i + 1)));
        }
        Ok(ShardMap { splits })
    }

    /// The split keys.
    pub fn splits(&self) -> &[Vec<u8>] {
        &self.splits
    }

    /// One shard owning everything.
    pub fn single() -> ShardMap {
        ShardMap { splits: Vec::new() }
    }

    /// `n` shards splitting the first key byte evenly.
    pub fn uniform(n: u32) -> ShardMap {
        let n = n.clamp(1, 256);
        let splits = (1..n).map(|i| vec![(i * 256 / n) as u8]).collect();
        ShardMap { splits }
    }

    /// Number of shards.
    pub fn len(&self) -> u32 {
        self.splits.len() as u32 + 1
    }

    /// Always false: a map has at least one shard.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Every shard.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> {
        (0..self.len()).map(ShardId)
    }

    /// The shard owning `key`.
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        ShardId(self.splits.partition_point(|s| s.as_slice() <= key) as u32)
    }

    /// The keys `shard` owns.
    pub fn range_of(&self, shard: ShardId) -> KeyRange {
        let i = shard.0 as usize;
        let start = if i == 0 { Vec::new() } else { self.splits[i - 1].clone() };
        KeyRange { start, end: self.splits.get(i).cloned() }
    }

    /// The shards owning some key of `range`, in order.
    pub fn shards_of(&self, range: &KeyRange) -> Vec<ShardId> {
        self.shards_in(range).collect()
    }

    /// [`ShardMap::shards_of`] without collecting them: consecutive shards, none for an
    /// empty range.
    pub fn shards_in(&self, range: &KeyRange) -> impl Iterator<Item = ShardId> + use<> {
        let span = (!range.is_empty()).then(|| {
            let first = self.shard_of(&range.start).0;
            let last = match &range.end {
                // The last key below `end` belongs to the shard of `end`, unless `end` is a
                // split.
                Some(end) => {
                    let s = self.shard_of(end).0;
                    if s > 0 && self.splits[s as usize - 1] == *end { s - 1 } else { s }
                }
                None => self.len() - 1,
            };
            first..=last.max(first)
        });
        span.into_iter().flatten().map(ShardId)
    }

    /// `range` cut down to the keys `shard` owns.
    pub fn clip(&self, range: &KeyRange, shard: ShardId) -> KeyRange {
        let own = self.range_of(shard);
        let start = range.start.clone().max(own.start);
        let end = match (&range.end, own.end) {
            (Some(a), Some(b)) => Some(a.clone().min(b)),
            (Some(a), None) => Some(a.clone()),
            (None, b) => b,
        };
        KeyRange { start, end }
    }
}
