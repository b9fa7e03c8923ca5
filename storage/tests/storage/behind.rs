//! [`WriteBehind`] with its writer held back on purpose: the engine underneath (a gate over a
//! memory engine) writes a queued batch only when the test lets it, so reads are answered
//! with a known part of the writes still queued. Every answer must be the one an engine that
//! took each write at once gives. The same with runs held ([`WriteBehind::holding`]): the gate
//! ingests keys starting with `a` or `b`, and its ingests too wait while the test holds them
//! back, so reads are answered from runs held, merged, and handed over.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::{
    Cursor, Engine, MAX_SPARE_BATCH_BYTES, MemoryEngine, RawBatch, RawOp, StorageError, WriteBehind,
};

use crate::common::seeds;

/// A memory engine whose writes wait for the test's permission.
#[derive(Default)]
struct Gate {
    inner: MemoryEngine,
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Writes allowed and not yet made.
    permits: usize,
    /// Every write goes through at once.
    open: bool,
    /// The next write fails.
    fail_next: bool,
    /// Writes made (or failed).
    written: usize,
    /// Ingests wait while this is set.
    ingest_closed: bool,
    /// Ingests made, and the entries they held.
    ingests: usize,
    ingested_entries: usize,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap()
    }

    fn release(&self, writes: usize) {
        self.lock().permits += writes;
        self.changed.notify_all();
    }

    fn open(&self) {
        self.lock().open = true;
        self.changed.notify_all();
    }

    fn fail_next(&self) {
        self.lock().fail_next = true;
    }

    fn written(&self) -> usize {
        self.lock().written
    }

    /// Holds ingests back (`true`) or lets them through.
    fn close_ingest(&self, closed: bool) {
        self.lock().ingest_closed = closed;
        self.changed.notify_all();
    }

    /// Waits until `n` writes have been made.
    fn wait_written(&self, n: usize) {
        let mut state = self.lock();
        while state.written < n {
            state = self.changed.wait(state).unwrap();
        }
    }
}

impl Engine for Gate {
    fn get(&self, key: &[u8]) -> storage::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn cursor(&self) -> Box<dyn Cursor + '_> {
        self.inner.cursor()
    }

    fn write(&self, batch: RawBatch, sync: bool) -> storage::Result<()> {
        let mut state = self.lock();
        while !state.open && state.permits == 0 {
            state = self.changed.wait(state).unwrap();
        }
        if !state.open {
            state.permits -= 1;
        }
        state.written += 1;
        let result = match std::mem::take(&mut state.fail_next) {
            true => Err(StorageError::Engine("the gate failed this write".into())),
            false => self.inner.write(batch, sync),
        };
        drop(state);
        self.changed.notify_all();
        result
    }

    fn flush(&self) -> storage::Result<()> {
        Ok(())
    }

    fn ingests(&self, key: &[u8]) -> bool {
        ingested_key(key)
    }

    fn write_uningested(&self, batch: &RawBatch) -> storage::Result<()> {
        self.write(batch.iter().filter(|op| !ingested_key(op.key())).collect(), false)
    }

    /// Checks the contract (keys it ingests, strictly increasing) and writes the entries.
    fn ingest(&self, entries: &mut dyn Iterator<Item = RawOp<'_>>) -> storage::Result<()> {
        let batch: RawBatch = entries.collect();
        let keys: Vec<&[u8]> = batch.iter().map(RawOp::key).collect();
        assert!(keys.iter().all(|k| ingested_key(k)), "ingested {batch:?}");
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "ingested out of order: {batch:?}");
        let mut state = self.lock();
        while state.ingest_closed {
            state = self.changed.wait(state).unwrap();
        }
        state.ingests += 1;
        state.ingested_entries += batch.len();
        self.inner.write(batch, false)
    }
}

/// The keys the gate ingests.
fn ingested_key(key: &[u8]) -> bool {
    matches!(key.first(), Some(b'a' | b'b'))
}

/// Opens the gate when dropped, so that a failing test's `WriteBehind` (declared before it,
/// dropped after it) can write what it holds and stop.
struct OpensOnDrop(Arc<Gate>);

impl Drop for OpensOnDrop {
    fn drop(&mut self) {
        self.0.open();
        self.0.close_ingest(false);
    }
}

fn held(depth: usize) -> (Arc<Gate>, WriteBehind) {
    holding(depth, 0)
}

/// Waits (at most 60 s) until the flush `behind` began has finished.
fn wait_flushed(behind: &WriteBehind) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !behind.flushed().unwrap() {
        assert!(std::time::Instant::now() < deadline, "the flush did not finish in 60 s");
        std::thread::yield_now();
    }
}

/// A write-behind over a gate, holding runs of up to `hold` bytes.
fn holding(depth: usize, hold: usize) -> (Arc<Gate>, WriteBehind) {
    let gate = Arc::new(Gate::default());
    let behind = WriteBehind::holding(gate.clone(), depth, hold).unwrap();
    (gate, behind)
}

fn random_key(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.random_range(1..=3)).map(|_| b"abc"[rng.random_range(0..3)]).collect()
}

fn listing(cursor: &mut dyn Cursor, from: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut entry = match from {
        Some(key) => cursor.seek(key).unwrap(),
        None => cursor.next().unwrap(),
    };
    while let Some(e) = entry {
        out.push(e);
        if out.len() >= limit {
            break;
        }
        entry = cursor.next().unwrap();
    }
    out
}

#[test]
fn queued_writes_read_as_if_written() {
    for seed in seeds(16) {
        eprintln!("write-behind seed {seed} (rerun with SEALDB_SEED={seed})");
        run(seed, 0);
    }
}

/// The same with runs held: small enough a hold that sets are handed over every few batches,
/// and large enough that runs are merged in tiers first.
#[test]
fn held_runs_read_as_if_written() {
    for seed in seeds(16) {
        for hold in [64, 4 << 10] {
            eprintln!("held runs seed {seed}, hold {hold} (rerun with SEALDB_SEED={seed})");
            run(seed, hold);
        }
    }
}

fn run(seed: u64, hold: usize) {
    const DEPTH: usize = 32;
    let mut rng = StdRng::seed_from_u64(seed);
    let plain = MemoryEngine::new();
    let (gate, behind) = holding(DEPTH, hold);
    let _opens = OpensOnDrop(gate.clone());
    let (mut queued, mut released) = (0usize, 0usize);
    // Reads whose answer the engine underneath did not have yet: the queue answered them.
    let mut answered_from_queue = 0;
    for step in 0..600 {
        let at = format!("seed {seed} step {step}");
        match rng.random_range(0..100) {
            0..40 => {
                if queued - released == DEPTH {
                    released += 1;
                    gate.release(1);
                }
                // A full queue waits for the writer, which may wait for an ingest to hand
                // runs over.
                if queued - gate.written() >= DEPTH - 1 {
                    gate.close_ingest(false);
                }
                let mut batch = RawBatch::default();
                for _ in 0..rng.random_range(0..6) {
                    let key = random_key(&mut rng);
                    match rng.random_bool(0.3) {
                        true => batch.delete(key),
                        false => batch.put(key, format!("{step}").into_bytes()),
                    }
                }
                plain.write(batch.clone(), false).unwrap();
                behind.write(batch, false).unwrap();
                queued += 1;
            }
            40..48 => {
                let n = rng.random_range(0..=queued - released);
                released += n;
                gate.release(n);
                gate.close_ingest(false);
                gate.wait_written(released);
                // Ingests held back while the test reads.
                gate.close_ingest(hold > 0 && rng.random_bool(0.7));
            }
            48..50 => {
                // A flush covers every write that returned: held runs are ingested.
                gate.release(queued - released);
                released = queued;
                gate.close_ingest(false);
                match rng.random_bool(0.5) {
                    true => behind.flush().unwrap(),
                    false => {
                        behind.begin_flush().unwrap();
                        wait_flushed(&behind);
                    }
                }
                let all = |e: &dyn Engine| listing(&mut *e.cursor(), None, usize::MAX);
                assert_eq!(all(&gate.inner), all(&plain), "{at}: flushed");
            }
            50..70 => {
                let key = random_key(&mut rng);
                let expected = plain.get(&key).unwrap();
                assert_eq!(behind.get(&key).unwrap(), expected, "{at}: get {key:?}");
                if gate.inner.get(&key).unwrap() != expected {
                    answered_from_queue += 1;
                }
            }
            70..85 => {
                let from = random_key(&mut rng);
                let limit = rng.random_range(1..20);
                let expected = listing(&mut *plain.cursor(), Some(&from), limit);
                let got = listing(&mut *behind.cursor(), Some(&from), limit);
                assert_eq!(got, expected, "{at}: from {from:?}, {limit} entries");
                if listing(&mut *gate.inner.cursor(), Some(&from), limit) != expected {
                    answered_from_queue += 1;
                }
            }
            85..95 => {
                let key = random_key(&mut rng);
                let prefix = key[..rng.random_range(0..=key.len())].to_vec();
                let expected = plain.seek_in_prefix(&key, &prefix).unwrap();
                let got = behind.seek_in_prefix(&key, &prefix).unwrap();
                assert_eq!(got, expected, "{at}: seek {key:?} in {prefix:?}");
            }
            _ => {
                let expected = listing(&mut *plain.cursor(), None, usize::MAX);
                assert_eq!(listing(&mut *behind.cursor(), None, usize::MAX), expected, "{at}");
            }
        }
    }
    assert!(answered_from_queue > 10, "seed {seed}: the queue answered {answered_from_queue}");
    // Everything written underneath, in order: the same contents as the plain engine.
    gate.open();
    gate.close_ingest(false);
    behind.drain().unwrap();
    if hold > 0 {
        assert!(gate.lock().ingests > 1, "seed {seed}: {} ingests", gate.lock().ingests);
    }
    assert_eq!(gate.written(), queued);
    let all = |e: &dyn Engine| listing(&mut *e.cursor(), None, usize::MAX);
    assert_eq!(all(&gate.inner), all(&plain), "seed {seed}");
}

/// A write the engine refuses is reported by the next write and by `settle`; the batches not
/// written stay visible, so readers never see a hole.
#[test]
fn a_failed_write_is_reported_and_what_was_queued_stays_visible() {
    let (gate, behind) = held(4);
    let _opens = OpensOnDrop(gate.clone());
    let mut batch = RawBatch::default();
    batch.put(b"k", b"1");
    gate.fail_next();
    behind.write(batch.clone(), false).unwrap();
    gate.release(1);
    let failed = behind.settle();
    assert!(matches!(&failed, Err(StorageError::Engine(why)) if why.contains("gate failed")));
    assert!(behind.write(batch, false).is_err(), "a later write is refused");
    assert!(behind.flush().is_err() && behind.checkpoint(std::path::Path::new("/x")).is_err());
    assert_eq!(behind.get(b"k").unwrap(), Some(b"1".to_vec()), "still visible");
    assert_eq!(gate.inner.get(b"k").unwrap(), None, "though not written");
}

/// At most `depth` batches wait: the next write waits until the writer has written one.
#[test]
fn a_full_queue_makes_the_next_write_wait_for_the_writer() {
    let (gate, behind) = held(2);
    let _opens = OpensOnDrop(gate.clone());
    let batch = |n: u8| {
        let mut b = RawBatch::default();
        b.put(vec![n], vec![n]);
        b
    };
    behind.write(batch(1), false).unwrap();
    behind.write(batch(2), false).unwrap();
    let (done, wrote) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            behind.write(batch(3), false).unwrap();
            done.send(()).unwrap();
        });
        assert_eq!(
            wrote.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "the third write waits while two are queued"
        );
        gate.release(1);
        wrote.recv().unwrap();
        assert_eq!(gate.written(), 1);
    });
    for n in 1..=3 {
        assert_eq!(behind.get(&[n]).unwrap(), Some(vec![n]));
    }
}

/// A synced write, like a flush, covers every write that returned before it: it waits for the
/// queue to be written first, then goes to the engine itself.
#[test]
fn a_synced_write_waits_for_what_was_queued_before_it() {
    let (gate, behind) = held(4);
    let _opens = OpensOnDrop(gate.clone());
    let mut first = RawBatch::default();
    first.put(b"a", b"1");
    first.put(b"b", b"1");
    behind.write(first, false).unwrap();
    let mut second = RawBatch::default();
    second.delete(b"b");
    behind.write(second, false).unwrap();
    let mut synced = RawBatch::default();
    synced.put(b"c", b"2");
    std::thread::scope(|s| {
        let writing = s.spawn(|| behind.write(synced, true));
        gate.release(3);
        writing.join().unwrap().unwrap();
    });
    assert_eq!(gate.written(), 3);
    let all = listing(&mut *gate.inner.cursor(), None, usize::MAX);
    assert_eq!(all, vec![(b"a".to_vec(), b"1".to_vec()), (b"c".to_vec(), b"2".to_vec())]);
}

/// A batch's writes read back as added, in order, whatever their sizes (empty keys and values
/// among them), and a batch collected from another's writes equals it.
#[test]
fn a_batch_holds_its_writes_in_order() {
    let mut batch = RawBatch::default();
    batch.put(b"k1", b"v1");
    batch.delete(b"gone");
    batch.put(b"", b"");
    batch.put(b"k1", vec![7u8; 300]);
    batch.delete(b"");
    let ops: Vec<RawOp> = batch.iter().collect();
    let long = vec![7u8; 300];
    assert_eq!(
        ops,
        [
            RawOp::Put(b"k1", b"v1"),
            RawOp::Delete(b"gone"),
            RawOp::Put(b"", b""),
            RawOp::Put(b"k1", &long),
            RawOp::Delete(b""),
        ]
    );
    assert_eq!(batch.len(), 5);
    assert_eq!(batch.get(3).value(), Some(&long[..]));
    assert_eq!(batch.get(4).key(), b"");
    assert_eq!(batch.iter().collect::<RawBatch>(), batch);
}

/// Once written, a batch's memory comes back through `spare_batch` for the next one, empty:
/// a window's batch carries only its own writes.
#[test]
fn a_written_batch_comes_back_empty_for_the_next() {
    let (gate, behind) = held(2);
    let _open = OpensOnDrop(gate.clone());
    let mut first = behind.spare_batch();
    for i in 0..100u32 {
        first.put(i.to_be_bytes(), b"first");
    }
    let room = first.byte_capacity();
    behind.write(first, false).unwrap();
    gate.release(1);
    behind.settle().unwrap();

    let mut second = behind.spare_batch();
    assert!(second.is_empty(), "the spare batch still holds {second:?}");
    assert!(second.byte_capacity() >= room, "the written batch's memory was not kept");
    second.delete(7u32.to_be_bytes());
    behind.write(second, false).unwrap();
    // Taken: the next batch is a new one until this one is written.
    assert_eq!(behind.spare_batch().byte_capacity(), 0);
    gate.release(1);
    behind.settle().unwrap();
    assert_eq!(gate.get(&7u32.to_be_bytes()).unwrap(), None);
    assert_eq!(gate.get(&8u32.to_be_bytes()).unwrap().as_deref(), Some(&b"first"[..]));
    assert_eq!(gate.written(), 2);

    // A batch larger than the bound is freed once written, not kept.
    let mut bulk = behind.spare_batch();
    assert!(bulk.byte_capacity() >= room);
    bulk.put(b"bulk", vec![0u8; MAX_SPARE_BATCH_BYTES + 1]);
    behind.write(bulk, false).unwrap();
    gate.release(1);
    behind.settle().unwrap();
    assert_eq!(behind.spare_batch().byte_capacity(), 0, "a bulk batch's memory was kept");
}

/// A synced write goes to the engine at once, and an ingest is newer than every write before
/// it: a run still holding an older write of the same key is ingested first, so the synced
/// write stays the newest.
#[test]
fn a_synced_write_of_a_held_key_stays_newer_than_the_runs() {
    let (gate, behind) = holding(4, 1 << 20);
    let _opens = OpensOnDrop(gate.clone());
    gate.open();
    let mut old = RawBatch::default();
    old.put(b"a1", b"unsynced");
    old.put(b"c1", b"unsynced");
    behind.write(old, false).unwrap();
    behind.settle().unwrap();
    assert_eq!(gate.lock().ingests, 0, "held, not yet ingested");
    let mut synced = RawBatch::default();
    synced.put(b"a1", b"synced");
    behind.write(synced, true).unwrap();
    assert_eq!(gate.lock().ingests, 1, "the run was ingested before the synced write");
    drop(behind);
    assert_eq!(gate.inner.get(b"a1").unwrap().as_deref(), Some(&b"synced"[..]));
    assert_eq!(gate.inner.get(b"c1").unwrap().as_deref(), Some(&b"unsynced"[..]));
}

/// A flush begun has finished only once the runs held when it began are ingested; runs held
/// later do not hold it back.
#[test]
fn a_flush_begun_waits_for_the_runs_held_before_it() {
    let (gate, behind) = holding(4, 1 << 20);
    let _opens = OpensOnDrop(gate.clone());
    gate.open();
    gate.close_ingest(true);
    let batch = |key: &[u8]| {
        let mut b = RawBatch::default();
        b.put(key, b"v");
        b
    };
    behind.write(batch(b"a1"), false).unwrap();
    behind.begin_flush().unwrap();
    behind.write(batch(b"b2"), false).unwrap();
    behind.settle().unwrap();
    assert!(!behind.flushed().unwrap(), "finished with its run not ingested");
    assert_eq!(behind.get(b"a1").unwrap().as_deref(), Some(&b"v"[..]), "read from the set");
    gate.close_ingest(false);
    wait_flushed(&behind);
    assert_eq!(gate.inner.get(b"a1").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(gate.inner.get(b"b2").unwrap(), None, "held after the flush began: not handed over");
    assert_eq!(behind.get(b"b2").unwrap().as_deref(), Some(&b"v"[..]));
}
