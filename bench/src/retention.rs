//! Garbage collection under list-append: an embedded database on RocksDB with a short
//! retention, list-append clients in interactive transactions, snapshots held while they age
//! past the horizon, and compactions every 10 s (a quarter of a shorter run) so that the GC
//! filter runs throughout.
//!
//! Checked at the end:
//!
//! - `adya`: the history is strictly serializable;
//! - every committed append is in its key's final list once, no failed one is, and each list
//!   is in commit-timestamp order;
//! - the model: a held snapshot at `ts` that answered a read of key `k` saw exactly the
//!   appends to `k` committed at or below `ts` (the final list filtered by commit timestamp),
//!   and answered while `ts` was at or above the shard's GC horizon;
//! - a read refused with `OutsideRetention` had its timestamp below the shard's horizon by
//!   the time it was refused.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::tests::history::{Completion, Mop, Recorder, Workload, check};
use clock::Timestamp;
use embedded::{Database, Options as DbOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use txn::builtin::{decode_list, encode_list, list_key};
use txn::{ReadAt, TxnError};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the clients run.
    pub duration: Duration,
    /// The database's retention (the GC horizon trails the newest window by this much).
    pub retention: Duration,
    /// List-append client threads.
    pub clients: u32,
    /// Keys (lists).
    pub keys: u64,
    /// Each client's pause between transactions.
    pub think: Duration,
    /// Random seed.
    pub seed: u64,
    /// Database directory; a temporary one if `None`.
    pub dir: Option<PathBuf>,
}

/// What it found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always "retention".
    pub workload: &'static str,
    /// Seconds the clients ran.
    pub seconds: f64,
    /// The retention, in seconds.
    pub retention_s: f64,
    /// Transactions committed, and failed validation.
    pub committed: u64,
    /// Transactions that failed validation (recorded as failed).
    pub conflicts: u64,
    /// Reads of held snapshots.
    pub snapshot_reads: u64,
    /// Of those, answered (and checked against the model).
    pub answered: u64,
    /// Of those, refused below the horizon.
    pub refused: u64,
    /// Snapshots refused when opened (older than the retention by then).
    pub refused_at_open: u64,
    /// Full compactions run meanwhile.
    pub compactions: u64,
    /// How far the GC horizon trailed the clock at the end, in seconds (shard of key 0).
    pub horizon_lag_s: f64,
    /// Bytes of RocksDB files at the end.
    pub disk_bytes: u64,
    /// Operations in the history `adya` checked.
    pub history_ops: u64,
    /// `adya`'s verdict on strict serializability.
    pub adya_valid: bool,
    /// Seconds `adya` took.
    pub adya_s: f64,
    /// Every check passed.
    pub consistent: bool,
    /// What failed, if anything (the first few).
    pub failures: Vec<String>,
    /// The seed.
    pub seed: u64,
}

/// A checked snapshot read: key, timestamp, and the list's length and hash.
struct Seen {
    key: u64,
    ts: Timestamp,
    len: usize,
    hash: u64,
}

fn list_hash(list: &[u64]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    list.hash(&mut h);
    h.finish()
}

/// What the threads share.
struct Shared {
    db: Database,
    history: Recorder,
    stop: AtomicBool,
    next_value: AtomicU64,
    committed: AtomicU64,
    conflicts: AtomicU64,
    /// Committed appends: value, key, commit timestamp.
    appends: Mutex<Vec<(u64, u64, Timestamp)>>,
    failures: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, why: String) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() < 20 {
            failures.push(why);
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Runs the workload, printing progress to stderr. An error is an I/O failure or a database
/// error no client should see; failed checks are in the report.
pub fn run(opts: &Options) -> Result<Report, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = opts.dir.clone().unwrap_or_else(|| temp.path().join("db"));
    let options = DbOptions {
        in_memory: false,
        retention: opts.retention,
        // Shards flush (and so let the horizon rise) every second.
        flush_interval: Duration::from_secs(1),
        ..DbOptions::default()
    };
    let db = Database::open(&dir, options).map_err(|e| e.to_string())?;
    let shared = Shared {
        db,
        history: Recorder::new(),
        stop: AtomicBool::new(false),
        next_value: AtomicU64::new(1),
        committed: AtomicU64::new(0),
        conflicts: AtomicU64::new(0),
        appends: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
    };
    let started = Instant::now();
    let end = started + opts.duration;
    let compactions = AtomicU64::new(0);
    let (seen, refused_at_open, refused) = std::thread::scope(|s| {
        for process in 0..u64::from(opts.clients) {
            let shared = &shared;
            s.spawn(move || client(shared, opts, process, end));
        }
        let reader = s.spawn(|| read_held_snapshots(&shared, opts, end));
        s.spawn(|| {
            // Every 10 s (a quarter of a shorter run), while the clients run.
            let every = (opts.duration / 4).min(Duration::from_secs(10));
            let mut next = Instant::now() + every;
            while !shared.stop.load(Ordering::SeqCst) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() < next {
                    continue;
                }
                next += every;
                if let Err(e) = shared.db.compact() {
                    shared.fail(format!("compacting: {e}"));
                }
                compactions.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut last = Instant::now();
        while Instant::now() < end && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(30) {
                last = Instant::now();
                let lag = horizon_lag(&shared.db);
                eprintln!(
                    "{:>5.0} s  committed {:>9}  conflicts {:>7}  horizon {lag:.1} s behind",
                    started.elapsed().as_secs_f64(),
                    shared.committed.load(Ordering::Relaxed),
                    shared.conflicts.load(Ordering::Relaxed),
                );
            }
        }
        shared.stop.store(true, Ordering::SeqCst);
        reader.join().unwrap_or_else(|_| (Vec::new(), 0, 0))
    });
    let seconds = started.elapsed().as_secs_f64();
    let horizon_lag_s = horizon_lag(&shared.db);
    let disk_bytes = crate::tpcc::disk_usage(&dir);
    eprintln!("checking {} snapshot reads and the history", seen.len());
    check_model(&shared, opts, &seen)?;
    let text = shared.history.to_jsonl();
    let history_ops = text.lines().count() as u64 / 2;
    let checking = Instant::now();
    let verdict = check(&text, Workload::ListAppend, "strict-serializable")?;
    let adya_s = checking.elapsed().as_secs_f64();
    let adya_valid = verdict.valid == Some(true);
    if !adya_valid {
        let path = std::env::temp_dir().join(format!("sealdb-retention-{}.jsonl", opts.seed));
        let _ = std::fs::write(&path, &text);
        shared.fail(format!("adya: {verdict:?} (history in {})", path.display()));
    }
    let failures = shared.failures.into_inner().unwrap_or_else(|e| e.into_inner());
    shared.db.close().map_err(|e| e.to_string())?;
    Ok(Report {
        workload: "retention",
        seconds,
        retention_s: opts.retention.as_secs_f64(),
        committed: shared.committed.into_inner(),
        conflicts: shared.conflicts.into_inner(),
        snapshot_reads: (seen.len() as u64) + refused,
        answered: seen.len() as u64,
        refused,
        refused_at_open,
        compactions: compactions.into_inner(),
        horizon_lag_s,
        disk_bytes,
        history_ops,
        adya_valid,
        adya_s,
        consistent: failures.is_empty(),
        failures,
        seed: opts.seed,
    })
}

fn horizon_lag(db: &Database) -> f64 {
    let now = db.clock().physical_now();
    now.duration_since(db.gc_horizon(&list_key(0))).as_secs_f64()
}

/// One list-append client: transactions of one to four reads and appends, each recorded.
fn client(shared: &Shared, opts: &Options, process: u64, end: Instant) {
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(1000) + process);
    while !shared.stop.load(Ordering::SeqCst) && Instant::now() < end {
        std::thread::sleep(opts.think);
        let ops: Vec<Mop> = (0..rng.random_range(1..5))
            .map(|_| {
                let k = rng.random_range(0..opts.keys);
                match rng.random_bool(0.5) {
                    true => Mop::Read(k, None),
                    false => Mop::Append(k, shared.next_value.fetch_add(1, Ordering::SeqCst)),
                }
            })
            .collect();
        shared.history.invoke(process, &ops);
        match transact(&shared.db, &ops) {
            Ok((done, ts)) => {
                shared.history.complete(process, Completion::Ok, &done);
                shared.committed.fetch_add(1, Ordering::Relaxed);
                let mut appends = shared.appends.lock().unwrap_or_else(|e| e.into_inner());
                for m in &ops {
                    if let Mop::Append(k, v) = m {
                        appends.push((*v, *k, ts));
                    }
                }
            }
            Err(TxnError::Conflict { .. }) => {
                shared.history.complete(process, Completion::Fail, &ops);
                shared.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.history.complete(process, Completion::Info, &ops);
                shared.fail(format!("client {process}: {e}"));
                return;
            }
        }
    }
}

/// One transaction of `ops`: what it read, and its commit timestamp.
fn transact(db: &Database, ops: &[Mop]) -> Result<(Vec<Mop>, Timestamp), TxnError> {
    let mut tx = db.begin()?;
    let mut done = Vec::with_capacity(ops.len());
    let list = |v: Option<Vec<u8>>| {
        decode_list(v.as_deref()).map_err(|e| TxnError::Storage(format!("a list: {e}")))
    };
    for m in ops {
        match m {
            Mop::Read(k, _) => done.push(Mop::Read(*k, Some(list(tx.get(&list_key(*k))?)?))),
            Mop::Append(k, v) => {
                let mut l = list(tx.get(&list_key(*k))?)?;
                l.push(*v);
                tx.put(&list_key(*k), &encode_list(&l))?;
                done.push(m.clone());
            }
        }
    }
    Ok((done, tx.commit()?))
}

/// Holds up to 32 snapshots at timestamps within the retention, and reads a random key of a
/// random one every 2 ms until each is refused. Returns the answered reads, the snapshots
/// refused when opened, and the reads refused.
fn read_held_snapshots(shared: &Shared, opts: &Options, end: Instant) -> (Vec<Seen>, u64, u64) {
    let db = &shared.db;
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut held = Vec::new();
    let (mut seen, mut refused_at_open, mut refused) = (Vec::new(), 0u64, 0u64);
    let retention_ms = opts.retention.as_millis().max(1) as u64;
    while !shared.stop.load(Ordering::SeqCst) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
        if held.len() < 32 {
            let back = Duration::from_millis(rng.random_range(0..retention_ms));
            let ts = db.clock().now().saturating_sub(back);
            match db.snapshot(ReadAt::At(ts)) {
                Ok(snapshot) => held.push(snapshot),
                Err(TxnError::OutsideRetention { .. }) => refused_at_open += 1,
                Err(e) => {
                    shared.fail(format!("opening a snapshot at {ts}: {e}"));
                    break;
                }
            }
            continue;
        }
        let i = rng.random_range(0..held.len());
        let k = rng.random_range(0..opts.keys);
        let key = list_key(k);
        let ts = held[i].ts();
        let before = db.gc_horizon(&key);
        let read = held[i].get(&key);
        let after = db.gc_horizon(&key);
        match read {
            Ok(value) => {
                if ts < before {
                    shared.fail(format!(
                        "key {k} read at {ts} answered though the horizon was {before} before"
                    ));
                }
                match decode_list(value.as_deref()) {
                    Ok(list) => {
                        seen.push(Seen { key: k, ts, len: list.len(), hash: list_hash(&list) })
                    }
                    Err(e) => shared.fail(format!("key {k} at {ts}: {e}")),
                }
            }
            Err(TxnError::OutsideRetention { .. }) => {
                if ts >= after {
                    shared.fail(format!(
                        "key {k} read at {ts} refused though the horizon was {after} after"
                    ));
                }
                refused += 1;
                held.swap_remove(i);
            }
            Err(e) => {
                shared.fail(format!("key {k} read at {ts}: {e}"));
                break;
            }
        }
    }
    (seen, refused_at_open, refused)
}

/// Each answered snapshot read against the model: the final list of its key (values with
/// their commit timestamps) filtered to the values committed at or below the read's timestamp.
fn model_failures(finals: &BTreeMap<u64, Vec<(u64, Timestamp)>>, seen: &[Seen]) -> Vec<String> {
    let mut failures = Vec::new();
    for s in seen {
        let list = finals.get(&s.key).map(Vec::as_slice).unwrap_or_default();
        let expected: Vec<u64> =
            list.iter().filter(|(_, ts)| *ts <= s.ts).map(|(v, _)| *v).collect();
        if expected.len() != s.len || list_hash(&expected) != s.hash {
            failures.push(format!(
                "key {} at {}: read {} values, the model has {} (ending {:?})",
                s.key,
                s.ts,
                s.len,
                expected.len(),
                &expected[expected.len().saturating_sub(4)..]
            ));
        }
    }
    failures
}

/// The final lists against the committed appends, and every answered snapshot read against
/// the final list filtered by commit timestamp.
fn check_model(shared: &Shared, opts: &Options, seen: &[Seen]) -> Result<(), String> {
    let db = &shared.db;
    let appends = shared.appends.lock().unwrap_or_else(|e| e.into_inner());
    let committed: HashMap<u64, (u64, Timestamp)> =
        appends.iter().map(|(v, k, ts)| (*v, (*k, *ts))).collect();
    let latest = db.snapshot(ReadAt::Latest).map_err(|e| e.to_string())?;
    let mut finals: BTreeMap<u64, Vec<(u64, Timestamp)>> = BTreeMap::new();
    for k in 0..opts.keys {
        let value = latest.get(&list_key(k)).map_err(|e| e.to_string())?;
        let list = decode_list(value.as_deref()).map_err(|e| e.to_string())?;
        let mut with_ts = Vec::with_capacity(list.len());
        for v in list {
            match committed.get(&v) {
                Some((key, ts)) if *key == k => with_ts.push((v, *ts)),
                _ => shared.fail(format!("list {k} holds {v}, not a committed append to it")),
            }
        }
        if with_ts.windows(2).any(|w| w[0].1 > w[1].1) {
            shared.fail(format!("list {k} is not in commit-timestamp order"));
        }
        finals.insert(k, with_ts);
    }
    let present: usize = finals.values().map(Vec::len).sum();
    if present != committed.len() {
        shared.fail(format!("{} committed appends, {present} in the final lists", committed.len()));
    }
    for why in model_failures(&finals, seen) {
        shared.fail(why);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(key: u64, ts: u64, list: &[u64]) -> Seen {
        Seen { key, ts: Timestamp::from_u64(ts), len: list.len(), hash: list_hash(list) }
    }

    #[test]
    fn the_model_takes_exactly_the_appends_committed_at_or_below_the_read() {
        let t = Timestamp::from_u64;
        let finals = BTreeMap::from([(7, vec![(1, t(10)), (2, t(20)), (3, t(30))])]);
        let right =
            [seen(7, 5, &[]), seen(7, 10, &[1]), seen(7, 29, &[1, 2]), seen(7, 99, &[1, 2, 3])];
        assert!(model_failures(&finals, &right).is_empty());
        // A stale read, a read from the future, a reordered one, an unknown key's values.
        for wrong in
            [seen(7, 20, &[1]), seen(7, 15, &[1, 2]), seen(7, 30, &[2, 1, 3]), seen(8, 1, &[1])]
        {
            assert_eq!(model_failures(&finals, &[wrong]).len(), 1);
        }
    }
}
