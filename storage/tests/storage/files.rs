//! How many table files RocksDB keeps open ([`RocksOptions::max_open_files`]).

use std::path::Path;

use storage::{Engine, RawBatch, RocksEngine, RocksOptions};

/// Table files of the database in `dir` that this process has open, by `/proc/self/fd`.
fn open_table_files(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir) && target.extension() == Some("sst".as_ref()))
        .count()
}

/// Writes `files` table files (level 0, each flushed on its own), reads every key back, and
/// returns how many table files there are and how many are open.
fn write_and_read(max_open_files: Option<u32>, files: u32) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    // No compaction merges the flushed files while the test reads them.
    let options =
        RocksOptions { max_open_files, l0_compaction_trigger: 1000, ..Default::default() };
    let engine = RocksEngine::open_with(dir.path(), options).unwrap();
    let key = |i: u32| format!("key-{i:04}").into_bytes();
    for i in 0..files {
        let mut batch = RawBatch::default();
        batch.put(key(i), vec![i as u8; 100]);
        engine.write(batch, false).unwrap();
        engine.flush().unwrap();
    }
    for i in 0..files {
        assert_eq!(engine.get(&key(i)).unwrap(), Some(vec![i as u8; 100]), "key {i}");
    }
    let on_disk = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("sst".as_ref()))
        .count();
    (on_disk, open_table_files(dir.path()))
}

/// Regression: RocksDB kept every table file open, so a database with more table files than
/// the process may open descriptors failed its flushes and compactions and stopped taking
/// writes. Bounded, it closes and reopens files, and reads still find every key.
#[test]
fn table_files_kept_open_are_bounded() {
    let (files, open) = write_and_read(Some(20), 40);
    assert_eq!(files, 40);
    assert!(open <= 20, "{open} of {files} table files open, at most 20 allowed");
    // The measurement sees open files: unbounded, every file stays open.
    let (files, open) = write_and_read(None, 40);
    assert_eq!((files, open), (40, 40));
}

#[test]
fn the_allowance_shares_half_the_limit_on_open_files() {
    let limit = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft = limit
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    match soft.parse::<u64>() {
        Ok(soft) => {
            let one = u64::from(storage::open_files_allowance(1).unwrap());
            let four = u64::from(storage::open_files_allowance(4).unwrap());
            assert_eq!(one, (soft / 2).max(64));
            assert_eq!(four, (soft / 8).max(64));
        }
        Err(_) => assert_eq!(soft, "unlimited"),
    }
}
