//! A RocksDB engine keeping some keys apart ([`RocksOptions::apart`]): where the keys go, what
//! a cursor within bounds reads (on one family or both), and
//! what happens when a database is opened with a list it was not made with. The suite, the
//! model test and the crash tests run on such an engine too (`Kind::RocksApart`).

use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::{Epoch, Limits, Mvcc, RocksEngine, RocksOptions, StorageKey, VersionBatch};

use crate::common::{APART, apart, seeds, ts};

fn open(dir: &Path, apart: Vec<Vec<u8>>) -> storage::Result<Mvcc> {
    let engine = RocksEngine::open_with(dir, RocksOptions { apart, ..Default::default() })?;
    Mvcc::open(Arc::new(engine), Limits::default())
}

/// Keys on both sides of the prefixes' edges: under them, beside them, between them.
const KEYS: &[&[u8]] = &[
    b"",
    b"\0",
    b"\0\0",
    b"\x01",
    b"\x01\x01",
    b"\x01\x01z",
    b"a",
    b"a\0",
    b"ab",
    b"abc",
    b"b",
    b"b\xfe",
    b"b\xff",
    b"b\xff\0",
    b"c",
    b"ca",
    b"d",
];

fn under_apart(key: &[u8]) -> bool {
    APART.iter().any(|p| key.starts_with(p))
}

/// Every key's versions are in the family its prefix says, and nothing else is there: read
/// with RocksDB itself, each family on its own.
#[test]
fn keys_under_the_prefixes_live_in_their_own_family() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let mvcc = open(&db, apart()).unwrap();
        let mut batch = VersionBatch::new(Epoch(1), ts(1));
        for key in KEYS {
            batch.put(key.to_vec(), b"v".to_vec());
        }
        mvcc.apply(&batch).unwrap();
        let mut batch = VersionBatch::new(Epoch(2), ts(2));
        batch.delete(b"abc".to_vec());
        batch.delete(b"d".to_vec());
        mvcc.apply(&batch).unwrap();
    }
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &db).unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    let raw = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), &db, &names, false)
        .unwrap();
    for name in &names {
        let kept_apart = name != rocksdb::DEFAULT_COLUMN_FAMILY_NAME;
        let family = raw.cf_handle(name).unwrap();
        let mut versions = Vec::new();
        for item in raw.iterator_cf(family, rocksdb::IteratorMode::Start) {
            let (key, _) = item.unwrap();
            match StorageKey::decode_version(&key) {
                Ok((user_key, _)) => versions.push(user_key),
                Err(_) => assert!(!kept_apart, "a meta key in {name}: {key:?}"),
            }
        }
        let expected: Vec<Vec<u8>> = KEYS
            .iter()
            .filter(|k| under_apart(k) == kept_apart)
            .flat_map(|k| match *k {
                // Written, then deleted: two versions.
                b"abc" | b"d" => vec![k.to_vec(), k.to_vec()],
                _ => vec![k.to_vec()],
            })
            .collect();
        assert_eq!(versions, expected, "the versions in {name}");
    }
}

/// The insert hint reaches RocksDB: the family kept apart has it, at the length asked for
/// (capped at the most), and the default family none.
#[test]
fn the_insert_hint_is_set_on_the_family_kept_apart_only() {
    for (asked, set) in [(16, 16), (100_000, storage::MAX_APART_HINT_BYTES)] {
        let dir = tempfile::tempdir().unwrap();
        let options =
            RocksOptions { apart: apart(), apart_hint_bytes: asked, ..Default::default() };
        drop(RocksEngine::open_with(dir.path(), options).unwrap());
        let options_file = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("OPTIONS-"))
            .max()
            .unwrap();
        let text = std::fs::read_to_string(options_file).unwrap();
        let hints: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("memtable_insert_with_hint_prefix_extractor="))
            .collect();
        assert_eq!(hints, ["nullptr".to_string(), format!("rocksdb.CappedPrefix.{set}")]);
    }
}

/// A database made with one list of prefixes is refused when opened with another, or with
/// none, and one made with none when opened with some; the refusal changes nothing.
#[test]
fn a_database_opened_with_other_prefixes_is_refused_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let made_apart = dir.path().join("apart");
    let made_whole = dir.path().join("whole");
    for (db, list) in [(&made_apart, apart()), (&made_whole, Vec::new())] {
        let mvcc = open(db, list).unwrap();
        let mut batch = VersionBatch::new(Epoch(1), ts(1));
        batch.put(b"abc".to_vec(), b"1".to_vec());
        batch.put(b"b".to_vec(), b"2".to_vec());
        mvcc.apply(&batch).unwrap();
    }
    let other = vec![b"a".to_vec()];
    for (db, list) in [(&made_apart, Vec::new()), (&made_apart, other), (&made_whole, apart())] {
        let refused = open(db, list.clone()).err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("kept apart")),
            "{} opened with {list:?}: {refused:?}",
            db.display()
        );
    }
    for (db, list) in [(&made_apart, apart()), (&made_whole, Vec::new())] {
        let mvcc = open(db, list).unwrap();
        assert_eq!(mvcc.applied().map(|w| w.window), Some(Epoch(1)));
        assert_eq!(mvcc.get(b"abc", ts(1)).unwrap().unwrap().value, b"1");
        assert_eq!(mvcc.get(b"b", ts(1)).unwrap().unwrap().value, b"2");
    }
    // The same prefixes in another order, repeated, or with one under another name the same
    // family.
    let mut shuffled = apart();
    shuffled.reverse();
    shuffled.push(b"abz".to_vec());
    shuffled.push(b"a".to_vec());
    assert!(open(&made_apart, shuffled).is_ok());
}

/// A cursor within bounds ([`storage::Engine::cursor_within`]) reads, below its end, what a
/// whole cursor reads: with the keys kept apart and without, bounds inside one family and
/// across both, and writes and flushes between reads (a kept iterator must see them).
#[test]
fn a_cursor_within_bounds_reads_below_its_end_what_a_whole_cursor_reads() {
    for seed in seeds(4) {
        eprintln!("cursor_within seed {seed} (rerun with SEALDB_SEED={seed})");
        let mut rng = StdRng::seed_from_u64(seed);
        for list in [apart(), Vec::new()] {
            let dir = tempfile::tempdir().unwrap();
            let mvcc = open(&dir.path().join("db"), list.clone()).unwrap();
            for window in 1..=30u64 {
                let mut batch = VersionBatch::new(Epoch(window), ts(window));
                for _ in 0..rng.random_range(1..6) {
                    let key = KEYS[rng.random_range(0..KEYS.len())].to_vec();
                    match rng.random_bool(0.2) {
                        true => batch.delete(key),
                        false => batch.put(key, format!("{window}").into_bytes()),
                    }
                }
                mvcc.apply(&batch).unwrap();
                if window % 7 == 3 {
                    mvcc.engine().flush().unwrap();
                }
                let start = StorageKey::version_prefix(KEYS[rng.random_range(0..KEYS.len())]);
                let end = rng
                    .random_bool(0.8)
                    .then(|| StorageKey::version_prefix(KEYS[rng.random_range(0..KEYS.len())]));
                let below = |k: &[u8]| end.as_deref().is_none_or(|e| k < e);
                // Every seek a scan makes lies in the bounds: the key bounds themselves, and
                // each key's versions.
                let seeks = KEYS
                    .iter()
                    .flat_map(|k| [StorageKey::version_prefix(k), StorageKey::after_versions(k)])
                    .chain([start.clone()])
                    .filter(|k| *k >= start && below(k));
                for seek in seeks {
                    let read = |mut cursor: Box<dyn storage::Cursor + '_>| {
                        let mut read = Vec::new();
                        let mut entry = cursor.seek(&seek).unwrap();
                        while let Some((k, v)) = entry.filter(|(k, _)| below(k)) {
                            read.push((k, v));
                            entry = cursor.next().unwrap();
                        }
                        read
                    };
                    let engine = mvcc.engine();
                    assert_eq!(
                        read(engine.cursor_within(&start, end.as_deref())),
                        read(engine.cursor()),
                        "seed {seed}, kept apart {list:?}, window {window}: within {start:02x?} \
                         .. {end:02x?}, seek {seek:02x?}"
                    );
                }
            }
        }
    }
}
