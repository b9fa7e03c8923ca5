//! RocksDB's flush and compaction threads at the lowest CPU priority
//! ([`RocksOptions::low_priority_background`]), and a write-behind's ingest thread
//! ([`storage::INGEST_NICE`]).

use std::sync::Arc;

use storage::{Engine, INGEST_NICE, RawBatch, RocksEngine, RocksOptions, WriteBehind};

/// The nice value of each of this process's threads whose name starts with `prefix`.
fn nice_of_threads(prefix: &str) -> Vec<i64> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let task = task.ok()?.path();
            let name = std::fs::read_to_string(task.join("comm")).ok()?;
            if !name.starts_with(prefix) {
                return None;
            }
            // Fields after the parenthesised name: state is the first; nice the 17th.
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 2..];
            after_name.split(' ').nth(16)?.parse().ok()
        })
        .collect()
}

/// A flush runs on RocksDB's high-priority pool, a compaction on its low-priority one; each
/// thread lowers itself before its next job, so after both, each pool has a thread at nice
/// 19. Every engine in this binary opens with the default, so only the lowered state is
/// asserted: nothing would have lowered the threads had the option done nothing.
#[test]
fn flushes_and_compactions_run_at_the_lowest_priority() {
    let dir = tempfile::tempdir().unwrap();
    let options = RocksOptions { l0_compaction_trigger: 1000, ..Default::default() };
    assert!(options.low_priority_background, "the default");
    let engine = RocksEngine::open_with(dir.path(), options).unwrap();
    for round in 0..2u8 {
        let mut batch = RawBatch::default();
        for i in 0..100u8 {
            batch.put([b'k', i], [round; 64]);
        }
        engine.write(batch, false).unwrap();
        engine.flush().unwrap();
    }
    engine.compact().unwrap();
    assert_eq!(engine.get(b"k\x07").unwrap(), Some(vec![1; 64]));
    for pool in ["rocksdb:high", "rocksdb:low"] {
        let nice = nice_of_threads(pool);
        assert!(nice.contains(&19), "threads {pool}*: nice {nice:?}, expected one at 19");
    }
}

/// A write-behind holding runs ingests them on a thread that lowers itself to
/// [`INGEST_NICE`] before its first job: once a set has been ingested, it has. (Other tests'
/// ingest threads may be found too; without the lowering none is at 19.)
#[test]
fn the_ingest_thread_runs_at_the_lowest_priority() {
    assert_eq!(INGEST_NICE, 19);
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(RocksEngine::open_with(dir.path(), RocksOptions::default()).unwrap());
    let behind = WriteBehind::holding(engine.clone(), 2, 1 << 20).unwrap();
    let mut batch = RawBatch::default();
    batch.put(b"k", b"v");
    behind.write(batch, false).unwrap();
    behind.drain().unwrap();
    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v"[..]), "ingested");
    let nice = nice_of_threads("sealdb-ingest");
    assert!(nice.contains(&19), "threads sealdb-ingest*: nice {nice:?}, expected one at 19");
}
