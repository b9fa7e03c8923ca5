//! Crash atomicity on RocksDB: a process applying window batches is killed with SIGKILL at
//! random moments. After every kill, each batch must be wholly present or wholly absent, and
//! the watermark must name the last batch that is present.
//!
//! The bug this guards against: writing a window's versions and its watermark as separate
//! writes. A kill between them leaves versions of a window the shard thinks it has not
//! applied; replaying it would then apply it twice, or a reader would see half a window.
//!
//! The child is this same test binary running the ignored test `crash::child`, told where to
//! write by an environment variable. Batch `e` is a pure function of `e`, so the parent can
//! recompute what every window wrote.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clock::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::{Epoch, Limits, Mvcc, RocksEngine, RocksOptions, VersionBatch, WriteBehind};

use crate::common::{seeds, ts};

const DIR_VAR: &str = "SEALDB_CRASH_CHILD_DIR";
/// Set (to anything) when the child keeps [`APART_KEYS`] in a column family of their own.
const APART_VAR: &str = "SEALDB_CRASH_CHILD_APART";
/// Set (to anything) when the child holds the default family's writes as runs
/// ([`WriteBehind::holding`], [`CHILD_HELD_BYTES`] of them) and ingests them.
const HELD_VAR: &str = "SEALDB_CRASH_CHILD_HELD";
const CHILD_HELD_BYTES: usize = 16 << 10;
/// Prefixes of some of the keys, for the runs that keep them apart: a window writes on both
/// sides.
const APART_KEYS: &[&[u8]] = &[b"key-00", b"key-03"];
const KEYS: u64 = 64;
const ROUNDS: usize = 40;
/// What the child prints once the database is open (the test harness prefixes its own text).
const READY: &str = "crash-child-ready";
/// What the flush child prints once its flush is over and the windows after it are applied.
const FLUSHED: &str = "crash-child-flushed";
/// Windows the flush child applies before its flush, and after it.
const BEFORE_FLUSH: u64 = 100;
const AFTER_FLUSH: u64 = 100;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:03}").into_bytes()
}

/// What window `e` writes: a few keys, some deleted, values naming the window.
fn batch_for(e: u64) -> VersionBatch {
    let mut rng = StdRng::seed_from_u64(e);
    let mut batch = VersionBatch::new(Epoch(e), ts(e));
    for _ in 0..rng.random_range(1..24) {
        let k = key(rng.random_range(0..KEYS));
        if rng.random_bool(0.1) {
            batch.delete(k);
        } else {
            batch.put(k, format!("window {e}").into_bytes());
        }
    }
    batch
}

/// The engine's options: as [`APART_VAR`] says in a child, as `apart` says in the parent.
fn options(apart: bool) -> RocksOptions {
    let apart = match apart {
        true => APART_KEYS.iter().map(|p| p.to_vec()).collect(),
        false => Vec::new(),
    };
    RocksOptions { apart, ..Default::default() }
}

fn child_apart() -> bool {
    std::env::var_os(APART_VAR).is_some()
}

fn open(dir: &std::path::Path, apart: bool) -> Mvcc {
    let engine = RocksEngine::open_with(dir, options(apart)).unwrap();
    Mvcc::open(Arc::new(engine), Limits::default()).unwrap()
}

#[test]
#[ignore = "child process of rocksdb_batches_survive_sigkill_whole_or_not_at_all"]
fn child() {
    let dir = std::env::var(DIR_VAR).expect("run by the crash test");
    let mvcc = match std::env::var_os(HELD_VAR) {
        None => open(std::path::Path::new(&dir), child_apart()),
        Some(_) => {
            let engine = Arc::new(RocksEngine::open_with(&dir, options(true)).unwrap());
            let held = WriteBehind::holding(engine, 2, CHILD_HELD_BYTES).unwrap();
            Mvcc::open(Arc::new(held), Limits::default()).unwrap()
        }
    };
    let mut e = mvcc.applied().map_or(0, |w| w.window.0);
    println!("{READY}");
    loop {
        e += 1;
        mvcc.apply(&batch_for(e)).unwrap();
    }
}

#[test]
#[ignore = "child process of the_gc_horizon_never_passes_the_watermark_across_sigkill"]
fn horizon_child() {
    let dir = std::env::var(DIR_VAR).expect("run by the crash test");
    let engine = Arc::new(RocksEngine::open_with(&dir, options(true)).unwrap());
    let held = WriteBehind::holding(engine, 2, CHILD_HELD_BYTES).unwrap();
    let mvcc = Mvcc::open(Arc::new(held), Limits::default()).unwrap();
    let mut e = mvcc.applied().map_or(0, |w| w.window.0);
    println!("{READY}");
    loop {
        e += 1;
        mvcc.apply(&batch_for(e)).unwrap();
        // As a shard does: flushes begun now and then and asked after each window, the
        // horizon raised after each window (here as high as it may go).
        if e.is_multiple_of(8) {
            mvcc.begin_flush().unwrap();
        }
        mvcc.flushed().unwrap();
        mvcc.raise_horizon(ts(e)).unwrap();
    }
}

/// With runs held, the GC horizon (a synced write) is never durable above the watermark: a
/// process killed reopens with its horizon at or below the watermark's time, where its replay
/// reads. (It had been: the horizon synced through the log while the windows before it were
/// still held as runs, lost in the kill; a replica then stopped on a read below its horizon.)
#[test]
fn the_gc_horizon_never_passes_the_watermark_across_sigkill() {
    let seed = seeds(1)[0];
    eprintln!("horizon crash test seed {seed} (rerun with SEALDB_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut raised = 0;
    for round in 0..ROUNDS / 2 {
        kill_mid_stream("crash::horizon_child", &db, true, true, &mut rng, round);
        let mvcc = open(&db, true);
        let watermark = mvcc.applied().map_or(Timestamp::ZERO, |w| w.ts);
        let horizon = mvcc.horizon();
        assert!(
            horizon <= watermark,
            "round {round}: horizon {horizon:?} above the watermark's time {watermark:?}"
        );
        raised += usize::from(horizon > Timestamp::ZERO);
    }
    assert!(raised > 0, "the horizon was never raised: the test did not exercise it");
}

#[test]
#[ignore = "child process of a_finished_background_flush_survives_sigkill_without_a_wal"]
fn flush_child() {
    let dir = std::env::var(DIR_VAR).expect("run by the crash test");
    let engine =
        RocksEngine::open_with(&dir, RocksOptions { wal: false, ..options(child_apart()) });
    let mvcc = Mvcc::open(Arc::new(engine.unwrap()), Limits::default()).unwrap();
    for e in 1..=BEFORE_FLUSH {
        mvcc.apply(&batch_for(e)).unwrap();
    }
    mvcc.begin_flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mvcc.flushed().unwrap() {
        assert!(Instant::now() < deadline, "the flush begun did not finish in 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    for e in BEFORE_FLUSH + 1..=BEFORE_FLUSH + AFTER_FLUSH {
        mvcc.apply(&batch_for(e)).unwrap();
    }
    println!("{FLUSHED}");
    std::thread::sleep(Duration::from_secs(600));
}

/// Runs the ignored test `name` of this binary as a child writing to `db` (keeping
/// [`APART_KEYS`] apart if `apart`), and its output.
fn spawn_child(
    name: &str,
    db: &std::path::Path,
    apart: bool,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    spawn_child_with(name, db, apart, false)
}

/// [`spawn_child`], holding runs ([`HELD_VAR`]) if `held`.
fn spawn_child_with(
    name: &str,
    db: &std::path::Path,
    apart: bool,
    held: bool,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if apart {
        command.env(APART_VAR, "1");
    }
    if held {
        command.env(HELD_VAR, "1");
    }
    let mut child = command
        .args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Runs child `name` ([`spawn_child_with`]) until it has opened the database, then SIGKILLs
/// it somewhere in the middle of its stream of applies.
fn kill_mid_stream(
    name: &str,
    db: &std::path::Path,
    apart: bool,
    held: bool,
    rng: &mut StdRng,
    round: usize,
) {
    let (mut child, mut lines) = spawn_child_with(name, db, apart, held);
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains(READY))),
        "round {round}: child never opened the database"
    );
    std::thread::sleep(Duration::from_millis(rng.random_range(5..80)));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
}

/// Without RocksDB's write-ahead log, writes live in memory until a flush: a flush begun in
/// the background ([`Mvcc::begin_flush`]) and reported finished ([`Mvcc::flushed`]) holds
/// every window applied before it through a SIGKILL, and the windows applied after it are
/// gone (which shows the log was off and nothing else flushed them).
#[test]
fn a_finished_background_flush_survives_sigkill_without_a_wal() {
    background_flush_survives_sigkill(false);
}

/// The same with some keys in a column family of their own: the two families flush as one.
#[test]
fn a_finished_background_flush_of_both_families_survives_sigkill_without_a_wal() {
    background_flush_survives_sigkill(true);
}

/// Runs the child `name` on `db` until it prints `marker`, then kills it with SIGKILL; whether
/// it printed it.
fn kill_child_after(name: &str, db: &std::path::Path, apart: bool, marker: &str) -> bool {
    let (mut child, mut lines) = spawn_child(name, db, apart);
    let printed = lines.any(|l| l.is_ok_and(|l| l.contains(marker)));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    printed
}

fn background_flush_survives_sigkill(apart: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let flushed = kill_child_after("crash::flush_child", &db, apart, FLUSHED);
    assert!(flushed, "the child did not finish its flush");
    let mvcc = open(&db, apart);
    assert_eq!(
        mvcc.applied().map(|w| w.window),
        Some(Epoch(BEFORE_FLUSH)),
        "the windows before the flush, and none after, survive the kill"
    );
    check_windows_whole(&mvcc, 0, BEFORE_FLUSH, &mut BTreeMap::new(), 0, false);
}

/// Windows the fill child applies: each writes every key with a value of [`FILL_VALUE_BYTES`],
/// about 2 MiB a window, so that the default family's 64 MiB memtable fills and RocksDB
/// flushes on its own while the family kept apart, given a third of each window, has not
/// filled.
const FILL_WINDOWS: u64 = 80;
const FILL_VALUE_BYTES: usize = 32 << 10;
const FILLED: &str = "crash-child-filled";

fn fill_value(e: u64) -> Vec<u8> {
    let mut value = format!("window {e} ").into_bytes();
    value.resize(FILL_VALUE_BYTES, b'.');
    value
}

#[test]
#[ignore = "child process of a_flush_rocksdb_starts_on_its_own_takes_both_families"]
fn fill_child() {
    let dir = std::env::var(DIR_VAR).expect("run by the crash test");
    let engine = RocksEngine::open_with(&dir, RocksOptions { wal: false, ..options(true) });
    let mvcc = Mvcc::open(Arc::new(engine.unwrap()), Limits::default()).unwrap();
    for e in 1..=FILL_WINDOWS {
        let mut batch = VersionBatch::new(Epoch(e), ts(e));
        for k in 0..KEYS {
            batch.put(key(k), fill_value(e));
        }
        mvcc.apply(&batch).unwrap();
    }
    // The flush RocksDB started finishes (if it started none, nothing will have survived).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mvcc.flushed().unwrap() {
        assert!(Instant::now() < deadline, "RocksDB's flush did not finish in 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("{FILLED}");
    std::thread::sleep(Duration::from_secs(600));
}

/// Without the WAL, what survives a SIGKILL is what RocksDB flushed, and it flushes on its own
/// when a memtable fills. Both families flush then (atomic flush): were only the full one
/// flushed, the watermark in it would name windows whose other half, in the family kept apart,
/// died with the process.
#[test]
fn a_flush_rocksdb_starts_on_its_own_takes_both_families() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let filled = kill_child_after("crash::fill_child", &db, true, FILLED);
    assert!(filled, "the child did not apply its windows");
    let mvcc = open(&db, true);
    let Some(watermark) = mvcc.applied().map(|w| w.window.0) else {
        panic!("nothing survived: RocksDB never flushed, so the test did not exercise a flush")
    };
    assert!(watermark < FILL_WINDOWS, "the last windows were not lost: the WAL was on?");
    for k in 0..KEYS {
        let read = mvcc.get(&key(k), ts(watermark)).unwrap().map(|v| v.value);
        assert_eq!(read, Some(fill_value(watermark)), "key {k} at watermark {watermark}");
    }
}

#[test]
fn rocksdb_batches_survive_sigkill_whole_or_not_at_all() {
    batches_survive_sigkill(false);
}

/// The same with some keys in a column family of their own: a batch writes both families.
#[test]
fn rocksdb_batches_across_families_survive_sigkill_whole_or_not_at_all() {
    batches_survive_sigkill(true);
}

/// With the writes held as runs and ingested as table files, one a family, the family kept
/// apart first: what survives is, in the default family (which holds the watermark), the
/// windows up to the last ingest, each whole; the family kept apart, ingested just before,
/// may hold windows after the watermark (a kill between the two ingests), each as that window
/// wrote it, which replay writes again the same.
#[test]
fn held_runs_survive_sigkill_as_whole_windows_up_to_the_watermark() {
    batches_survive_sigkill_with(true, true);
}

fn batches_survive_sigkill(apart: bool) {
    batches_survive_sigkill_with(apart, false);
}

fn batches_survive_sigkill_with(apart: bool, held: bool) {
    let seed = seeds(1)[0];
    eprintln!("crash test seed {seed} (rerun with SEALDB_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    // What the windows checked so far wrote, and the last window checked.
    let mut state: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut last_watermark = 0;
    // Keys kept apart found with versions above the watermark, over the rounds.
    let mut ahead = 0;
    for round in 0..ROUNDS {
        kill_mid_stream("crash::child", &db, apart, held, &mut rng, round);
        let mvcc = open(&db, apart);
        let watermark = mvcc.applied().map_or(0, |w| w.window.0);
        assert!(watermark >= last_watermark, "round {round}: watermark went back");
        if held {
            ahead += check_apart_ahead(&mvcc, watermark, round);
        }
        check_windows_whole(&mvcc, last_watermark, watermark, &mut state, round, held);
        last_watermark = watermark;
    }
    assert!(
        last_watermark > ROUNDS as u64,
        "the children applied only {last_watermark} windows: the test did not exercise crashes"
    );
    if held {
        eprintln!("{ahead} keys kept apart were found ahead of the watermark over {ROUNDS} rounds");
        assert!(ahead > 0, "no kill fell between a window's write and its runs' ingest");
    }
}

/// The versions above the watermark, which only keys kept apart may have: each is what a
/// window after the watermark wrote (a version stamped `ts(e)` holds window `e`'s write).
/// Returns how many keys have one.
fn check_apart_ahead(mvcc: &Mvcc, watermark: u64, round: usize) -> usize {
    let mut ahead = 0;
    for i in 0..KEYS {
        let k = key(i);
        let Some(newest) = mvcc.last_write(&k, Timestamp::MAX).unwrap() else { continue };
        if newest <= ts(watermark) {
            continue;
        }
        let name = String::from_utf8_lossy(&k).into_owned();
        assert!(
            APART_KEYS.iter().any(|p| k.starts_with(p)),
            "round {round}: {name}, in the default family, has a version at {newest:?}, above \
             watermark {watermark}"
        );
        let e = newest.as_u64() / ts(1).as_u64();
        assert_eq!(newest, ts(e), "round {round}: {name} at {newest:?}");
        let batch = batch_for(e);
        let wrote = batch.writes().find(|(w, _)| *w == k.as_slice()).map(|(_, v)| v);
        let read = mvcc.get(&k, newest).unwrap().map(|v| v.value);
        assert_eq!(wrote, Some(read.as_deref()), "round {round}: {name} at window {e}");
        ahead += 1;
    }
    ahead
}

/// Windows `from + 1 ..= watermark` are wholly present (earlier ones were checked in earlier
/// rounds and are in `state`), and nothing after the watermark is (`apart_ahead`: nothing
/// read at the watermark; [`check_apart_ahead`] checks what is above it).
fn check_windows_whole(
    mvcc: &Mvcc,
    from: u64,
    watermark: u64,
    state: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    round: usize,
    apart_ahead: bool,
) {
    if watermark > 0 {
        assert_eq!(mvcc.applied().unwrap().ts, ts(watermark), "round {round}");
    }
    let name = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    for e in from + 1..=watermark {
        for (k, v) in batch_for(e).writes() {
            // Present: each write of window e is what a read at ts(e) sees, stamped ts(e).
            assert_eq!(
                mvcc.last_write(k, ts(e)).unwrap(),
                Some(ts(e)),
                "round {round}: window {e} (watermark {watermark}) lost its write of {}",
                name(k)
            );
            let got = mvcc.get(k, ts(e)).unwrap().map(|v| v.value);
            assert_eq!(got.as_deref(), v, "round {round}: window {e} key {}", name(k));
            state.insert(k.to_vec(), v.map(<[u8]>::to_vec));
        }
    }
    // Absent: no version anywhere above the watermark's timestamp.
    for i in 0..KEYS {
        let k = key(i);
        let read_at = match apart_ahead {
            true => ts(watermark),
            false => Timestamp::MAX,
        };
        let newest = mvcc.last_write(&k, read_at).unwrap();
        assert!(
            newest <= Some(ts(watermark)),
            "round {round}: {} has a version at {newest:?}, above watermark {watermark}",
            name(&k)
        );
        let got = mvcc.get(&k, read_at).unwrap().map(|v| v.value);
        assert_eq!(
            got,
            state.get(&k).cloned().flatten(),
            "round {round}: final state of {}",
            name(&k)
        );
    }
}
