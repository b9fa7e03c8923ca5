//! Helpers shared by the transaction tests.

use std::time::Duration;

use sequencer::SealerConfig;
use storage::KeyRange;
use txn::{Options, ShardMap};

/// The range holding exactly `k`.
pub fn point(k: &[u8]) -> KeyRange {
    KeyRange::point(k)
}

/// A counter stored as decimal text; absent is zero.
pub fn num(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap())
}

/// Three shards ("a..", "b..", "c.." keys) with 2 ms windows, on RocksDB or in memory.
pub fn three_shards(in_memory: bool) -> Options {
    Options {
        shard_map: Some(ShardMap::new(vec![b"b".to_vec(), b"c".to_vec()]).unwrap()),
        sealer: SealerConfig {
            window_interval: Duration::from_millis(2),
            ..SealerConfig::default()
        },
        in_memory,
        ..Options::default()
    }
}
