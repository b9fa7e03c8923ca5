//! The embedded database, through the same `Store` code as the cluster.

use std::sync::Arc;
use std::time::Duration;

use sequencer::SealerConfig;
use txn::ShardMap;
use txn::builtin::ListAppend;

use crate::run_list_append;
use embedded::{Database, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_list_append_histories_are_strictly_serializable() {
    let seed = std::env::var("SEALDB_SEED").map_or(7, |s| s.parse().unwrap());
    eprintln!("list-append seed {seed} (rerun with SEALDB_SEED={seed})");
    let options = Options {
        shard_map: Some(ShardMap::uniform(3)),
        sealer: SealerConfig {
            window_interval: Duration::from_millis(2),
            ..SealerConfig::default()
        },
        ..Options::in_memory()
    }
    .procedure(Arc::new(ListAppend));
    let db = Arc::new(Database::open("unused", options).unwrap());
    run_list_append(db, "list-append", seed).await;
}
