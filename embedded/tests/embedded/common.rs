//! Helpers shared by the embedded database's tests.

use std::time::Duration;

use embedded::Options;
use sequencer::SealerConfig;
use txn::ShardMap;

pub use tests::kv::{num, point};

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
