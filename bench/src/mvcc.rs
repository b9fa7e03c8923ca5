//! The MVCC storage workload: a shard's write and read path on RocksDB, checked against a
//! model.
//!
//! 1. Apply `windows` batches of `writes` random puts and deletes over `keys` keys, each at a
//!    fresh timestamp from the HLC, with the watermark: what a shard does per window.
//! 2. Reopen the database and check the watermark and every key's value at a sample of past
//!    windows and at the last one against the model.
//! 3. Time random point reads and full scans at the last window.
//! 4. Collect garbage below the middle window and check the last window's answers again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clock::{Clock, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use storage::{Epoch, KeyRange, Limits, Mvcc, RocksEngine, VersionBatch};

use crate::report::{Latencies, Latency};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Windows to apply.
    pub windows: u64,
    /// Writes per window.
    pub writes: u64,
    /// Size of the key space.
    pub keys: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Random seed.
    pub seed: u64,
    /// Database directory; a temporary one if `None`.
    pub dir: Option<PathBuf>,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always "mvcc".
    pub workload: &'static str,
    /// Windows applied.
    pub windows: u64,
    /// Writes per window.
    pub writes_per_window: u64,
    /// Key space size.
    pub keys: u64,
    /// Windows applied per second.
    pub windows_per_s: f64,
    /// Versions written per second.
    pub writes_per_s: f64,
    /// Point read latency at the latest timestamp.
    pub get: Latency,
    /// Keys returned per second by full scans.
    pub scan_keys_per_s: f64,
    /// Versions removed by garbage collection.
    pub gc_removed: u64,
    /// Seconds garbage collection took.
    pub gc_s: f64,
    /// Reads checked against the model.
    pub checked_reads: u64,
    /// True if every check passed.
    pub consistent: bool,
    /// The seed.
    pub seed: u64,
}

type Model = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Runs the workload, printing progress to stderr. An error is a failed check or I/O failure.
pub fn run(opts: &Options) -> Result<Report, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = opts.dir.clone().unwrap_or_else(|| temp.path().join("mvcc"));
    let open = || -> Result<Mvcc, String> {
        let engine = RocksEngine::open(&dir).map_err(|e| e.to_string())?;
        Mvcc::open(Arc::new(engine), Limits::default()).map_err(|e| e.to_string())
    };
    let mvcc = open()?;
    let first = mvcc.applied().map_or(1, |w| w.window.0 + 1);
    let clock = Clock::system(Duration::ZERO);
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let key = |i: u64| format!("key/{i:010}").into_bytes();

    // 1. Apply, keeping the model's state after a sample of windows for step 2.
    let mut model = Model::new();
    let mut snapshots: Vec<(Timestamp, Model)> = Vec::new();
    let sample_every = (opts.windows / 8).max(1);
    let started = Instant::now();
    let mut last_ts = Timestamp::ZERO;
    for (n, e) in (first..first + opts.windows).enumerate() {
        let ts = clock.now();
        let mut batch = VersionBatch::new(Epoch(e), ts);
        for _ in 0..opts.writes {
            let k = key(rng.random_range(0..opts.keys));
            if rng.random_bool(0.05) {
                batch.delete(k);
            } else {
                let mut v = vec![0u8; opts.value_bytes];
                rng.fill(&mut v[..]);
                batch.put(k, v);
            }
        }
        for (k, v) in batch.writes() {
            model.insert(k.to_vec(), v.map(<[u8]>::to_vec));
        }
        mvcc.apply(&batch).map_err(|err| format!("apply window {e}: {err}"))?;
        last_ts = ts;
        let n = n as u64 + 1;
        if n.is_multiple_of(sample_every) {
            snapshots.push((ts, model.clone()));
            eprintln!("  applied {n}/{} windows", opts.windows);
        }
    }
    let apply_s = started.elapsed().as_secs_f64();
    drop(mvcc);

    // 2. Reopen and check.
    let mvcc = open()?;
    let applied = mvcc.applied().ok_or("no watermark after reopen")?;
    if applied.window != Epoch(first + opts.windows - 1) || applied.ts != last_ts {
        return Err(format!("watermark after reopen is {applied:?}"));
    }
    let mut checked = 0;
    for (ts, state) in &snapshots {
        checked += check(&mvcc, state, *ts)?;
    }

    // 3. Time reads and scans.
    let mut samples = Latencies::default();
    for _ in 0..10_000 {
        let k = key(rng.random_range(0..opts.keys));
        let t = Instant::now();
        let got = mvcc.get(&k, last_ts).map_err(|e| e.to_string())?;
        samples.record(t.elapsed());
        if got.map(|v| v.value) != model.get(&k).cloned().flatten() {
            return Err(format!("get {:?} disagrees with the model", String::from_utf8_lossy(&k)));
        }
        checked += 1;
    }
    let t = Instant::now();
    let rows = mvcc.scan(&KeyRange::all(), last_ts, usize::MAX).map_err(|e| e.to_string())?;
    let scan_s = t.elapsed().as_secs_f64();
    let live = model.values().filter(|v| v.is_some()).count();
    if rows.len() != live {
        return Err(format!("scan found {} keys, the model {live}", rows.len()));
    }

    // 4. Garbage-collect below the middle sample and check the latest answers again.
    let horizon = snapshots.get(snapshots.len() / 2).map_or(Timestamp::ZERO, |s| s.0);
    let t = Instant::now();
    let gc = mvcc.gc(horizon).map_err(|e| e.to_string())?;
    let gc_s = t.elapsed().as_secs_f64();
    for (ts, state) in snapshots.iter().filter(|(ts, _)| *ts >= horizon) {
        checked += check(&mvcc, state, *ts)?;
    }
    // Reads below the horizon are refused, not answered from what collection left.
    let key = model.keys().next().cloned().unwrap_or_default();
    for (ts, _) in snapshots.iter().filter(|(ts, _)| *ts < mvcc.horizon()) {
        match mvcc.get(&key, *ts) {
            Err(storage::StorageError::BelowHorizon { .. }) => checked += 1,
            other => return Err(format!("a read at {ts:?}, below the horizon: {other:?}")),
        }
    }

    let writes = opts.windows * opts.writes;
    Ok(Report {
        workload: "mvcc",
        windows: opts.windows,
        writes_per_window: opts.writes,
        keys: opts.keys,
        windows_per_s: opts.windows as f64 / apply_s,
        writes_per_s: writes as f64 / apply_s,
        get: samples.summary(),
        scan_keys_per_s: rows.len() as f64 / scan_s.max(1e-9),
        gc_removed: gc.versions_removed,
        gc_s,
        checked_reads: checked,
        consistent: true,
        seed: opts.seed,
    })
}

/// Checks every key of `state` read at `ts`; returns how many reads it made.
fn check(mvcc: &Mvcc, state: &Model, ts: Timestamp) -> Result<u64, String> {
    for (k, expected) in state {
        let got = mvcc.get(k, ts).map_err(|e| e.to_string())?.map(|v| v.value);
        if &got != expected {
            return Err(format!(
                "read of {:?} at {ts} disagrees with the model",
                String::from_utf8_lossy(k)
            ));
        }
    }
    Ok(state.len() as u64)
}
