//! The window executor against a serial oracle (DESIGN.md section 4).
//!
//! Random windows of procedures and interactive transactions over a small, hot key space on
//! three shards run through the executor exactly as shards would (snapshot execution,
//! verdict exchange, finish, atomic apply, deferral). Then a plain serial execution replays
//! every decided transaction in the serial order the executor reported, and must agree with
//! it on everything: each procedure's output (which lists what it read), each committed
//! interactive transaction's reads, each user abort, and the final state.
//!
//! Seeded; `SEALDB_SEED=N` reruns one seed, and a failure names its seed.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use clock::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sequencer::{ShardId, TxnId};
use storage::{Epoch, KeyRange, Limits, MemoryEngine, Mvcc, StorageError};
use tests::kv::{num, point};
use txn::{
    AbortReason, Context, Decided, Executor, InteractiveCommit, Outcome, Plan, ProcError,
    Procedure, Registry, Request, Rows, SerialPosition, ShardMap, ShardsAt, SnapshotRead, Task,
    Validated,
};

const SHARDS: u32 = 3;
const KEYS_PER_SHARD: u32 = 5;

fn key(shard: u32, i: u32) -> Vec<u8> {
    format!("k{shard}/{i}").into_bytes()
}

fn map() -> ShardMap {
    ShardMap::new(vec![b"k1".to_vec(), b"k2".to_vec()]).unwrap()
}

fn encode_keys(keys: &[Vec<u8>]) -> Vec<u8> {
    keys.iter()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

fn decode_keys(args: &[u8]) -> Vec<Vec<u8>> {
    String::from_utf8(args.to_vec()).unwrap().split(',').map(|s| s.as_bytes().to_vec()).collect()
}

/// Reads its keys, aborts if their sum is 3 mod 7, else adds 1 plus the sum to each.
/// Returns the values it read, so the oracle can compare reads.
struct ReadModifyWrite;

impl Procedure for ReadModifyWrite {
    fn name(&self) -> &str {
        "rmw"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(decode_keys(args).iter().map(|k| point(k)).collect())
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let keys = decode_keys(args);
        let mut seen = Vec::new();
        for k in &keys {
            seen.push(num(ctx.get(k)?));
        }
        let sum: u64 = seen.iter().sum();
        if sum % 7 == 3 {
            return Err(ProcError::abort(format!("unlucky sum {sum}")));
        }
        for (k, v) in keys.iter().zip(&seen) {
            ctx.put(k, (v + 1 + sum % 5).to_string().as_bytes())?;
        }
        Ok(format!("{seen:?}").into_bytes())
    }
}

/// Scans one shard's keys and writes their sum to that shard's key 0, deleting key 1 when the
/// sum is even. Returns the rows it saw.
struct ScanSum;

impl Procedure for ScanSum {
    fn name(&self) -> &str {
        "scan_sum"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![KeyRange::prefix(args)])
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let rows = ctx.scan(&KeyRange::prefix(args), 100)?;
        let sum: u64 = rows.iter().map(|(_, v)| num(Some(v.clone()))).sum();
        let mut target = args.to_vec();
        target.push(b'0');
        ctx.put(&target, sum.to_string().as_bytes())?;
        if sum.is_multiple_of(2) {
            let mut other = args.to_vec();
            other.push(b'1');
            ctx.delete(&other)?;
        }
        Ok(format!("{rows:?}").into_bytes())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(ReadModifyWrite));
    r.register(Arc::new(ScanSum));
    r.register(Arc::new(LongScan));
    r.register(Arc::new(Count));
    r
}

/// Shard `shard`'s counter `i` (outside the `k{shard}/` keys the other procedures read as
/// decimal text).
fn counter_key(shard: u32, i: u32) -> Vec<u8> {
    format!("k{shard}c{i}").into_bytes()
}

/// Runs `op key delta` steps separated by `;`: `a` adds `delta` to the counter at `key`
/// (aborting, as "not a counter", if it holds anything else), `r` reads the key, `p` puts a
/// value that is not a counter, `d` deletes. Returns what it read.
struct Count;

impl Count {
    fn steps(args: &[u8]) -> Vec<(char, Vec<u8>, i64)> {
        let args = String::from_utf8(args.to_vec()).unwrap();
        args.split(';')
            .map(|step| {
                let mut parts = step.split(' ');
                let op = parts.next().unwrap().chars().next().unwrap();
                let key = parts.next().unwrap().as_bytes().to_vec();
                (op, key, parts.next().unwrap().parse().unwrap())
            })
            .collect()
    }

    fn call(steps: &[(char, Vec<u8>, i64)]) -> Request {
        let text: Vec<String> = steps
            .iter()
            .map(|(op, k, d)| format!("{op} {} {d}", String::from_utf8_lossy(k)))
            .collect();
        let args = text.join(";").into_bytes();
        let ranges = Count.ranges(&args).unwrap();
        Request::Procedure { name: "count".into(), args, ranges }
    }
}

impl Procedure for Count {
    fn name(&self) -> &str {
        "count"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(Count::steps(args).iter().map(|(_, k, _)| point(k)).collect())
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let mut seen = Vec::new();
        for (op, key, delta) in Count::steps(args) {
            match op {
                'a' => match ctx.add(&key, delta) {
                    Err(ProcError::Abort(_)) => {
                        return Err(ProcError::abort(format!(
                            "not a counter: {}",
                            String::from_utf8_lossy(&key)
                        )));
                    }
                    other => other?,
                },
                'r' => seen.push(match ctx.get(&key)? {
                    None => "-".to_string(),
                    Some(v) if v.len() == 8 => {
                        i64::from_le_bytes(v.try_into().unwrap()).to_string()
                    }
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                }),
                'p' => ctx.put(&key, b"junk")?,
                _ => ctx.delete(&key)?,
            }
        }
        Ok(seen.join(",").into_bytes())
    }
}

/// Declares shard 0's key 0 and everything from shard 1's keys on, and scans a range inside
/// that whose start is a key over the limit.
struct LongScan;

impl Procedure for LongScan {
    fn name(&self) -> &str {
        "long_scan"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![point(&key(0, 0)), KeyRange::from(key(1, 0))])
    }
    fn run(&self, ctx: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        let start = [key(1, 0), vec![b'x'; 20 * 1024]].concat();
        ctx.scan(&KeyRange::from(start), 10)?;
        ctx.put(&key(0, 0), b"1")?;
        Ok(Vec::new())
    }
}

/// A serial execution context over a plain map.
struct Serial<'a> {
    state: &'a mut BTreeMap<Vec<u8>, Vec<u8>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    now: Timestamp,
}

impl Context for Serial<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ProcError> {
        Ok(match self.writes.get(key) {
            Some(v) => v.clone(),
            None => self.state.get(key).cloned(),
        })
    }
    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Rows, ProcError> {
        let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = self
            .state
            .iter()
            .filter(|(k, _)| range.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in self.writes.iter().filter(|(k, _)| range.contains(k)) {
            match v {
                Some(v) => rows.insert(k.clone(), v.clone()),
                None => rows.remove(k),
            };
        }
        Ok(rows.into_iter().take(limit).collect())
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ProcError> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<(), ProcError> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }
    fn now(&self) -> Timestamp {
        self.now
    }
    /// A read and a write, as in any serial execution.
    fn add(&mut self, key: &[u8], delta: i64) -> Result<(), ProcError> {
        let n = match self.get(key)? {
            None => 0,
            Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                Ok(bytes) => i64::from_le_bytes(bytes),
                Err(_) => return Err(ProcError::abort("not a counter")),
            },
        };
        self.put(key, &n.wrapping_add(delta).to_le_bytes())
    }
}

fn window_ts(e: u64) -> Timestamp {
    Timestamp::from_u64(e * 16)
}

/// What the test submitted, by id.
enum Submitted {
    Procedure {
        name: String,
        args: Vec<u8>,
    },
    /// An interactive transaction and the values it read and the rows it scanned at its
    /// snapshot.
    Interactive {
        reads: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        scans: Vec<(KeyRange, Rows)>,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
}

/// A snapshot as a shard over a network sees it before its asks are answered: `shard` reads
/// its own keys and the other shards' answered ones; a read of another shard's key in
/// `unanswered` (or a scan of a range holding one) is missed, read as absent and counted.
/// Records every key read and range scanned.
struct Missing<'a> {
    inner: &'a ShardsAt<'a>,
    shard: ShardId,
    unanswered: BTreeSet<Vec<u8>>,
    missed: Cell<usize>,
    read: RefCell<Vec<Vec<u8>>>,
}

impl<'a> Missing<'a> {
    fn new(inner: &'a ShardsAt<'a>, shard: ShardId, unanswered: BTreeSet<Vec<u8>>) -> Self {
        Missing { inner, shard, unanswered, missed: Cell::new(0), read: RefCell::default() }
    }

    fn remote_unanswered(&self, key: &[u8]) -> bool {
        self.inner.map.shard_of(key) != self.shard && self.unanswered.contains(key)
    }
}

impl SnapshotRead for Missing<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.read.borrow_mut().push(key.to_vec());
        if self.remote_unanswered(key) {
            self.missed.set(self.missed.get() + 1);
            return Ok(None);
        }
        self.inner.get(key)
    }
    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, StorageError> {
        self.read.borrow_mut().push(range.start.clone());
        if self.unanswered.iter().any(|k| range.contains(k) && self.remote_unanswered(k)) {
            self.missed.set(self.missed.get() + 1);
            return Ok(Vec::new());
        }
        self.inner.scan(range, limit)
    }
    fn first_change(
        &self,
        range: &KeyRange,
        after: Timestamp,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.first_change(range, after)
    }
    fn misses(&self) -> usize {
        self.missed.get()
    }
}

struct Cluster {
    engines: Vec<MemoryEngine>,
    map: ShardMap,
    shards: Vec<Arc<Mvcc>>,
    executors: Vec<Executor>,
    deferred: Vec<Vec<Task>>,
    epoch: u64,
    /// If set, each shard's first run of a window misses some other shards' keys, and the
    /// entries that missed run again with fewer unanswered until none is (as over a network).
    misses: Option<StdRng>,
    /// Runs again after misses.
    runs_again: u64,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with_plan(Plan::default())
    }

    fn with_plan(plan: Plan) -> Cluster {
        let map = map();
        let engines: Vec<MemoryEngine> = (0..SHARDS).map(|_| MemoryEngine::new()).collect();
        let shards = engines
            .iter()
            .map(|e| Arc::new(Mvcc::open(Arc::new(e.clone()), Limits::default()).unwrap()))
            .collect();
        let executors = map
            .shards()
            .map(|s| Executor::new(s, map.clone(), registry(), Limits::default()).with_plan(plan))
            .collect();
        Cluster {
            engines,
            map,
            shards,
            executors,
            deferred: vec![Vec::new(); SHARDS as usize],
            epoch: 0,
            misses: None,
            runs_again: 0,
        }
    }

    /// Reads answered in rounds, chosen by `seed` (see [`Cluster::misses`]).
    fn with_misses(self, seed: u64) -> Cluster {
        Cluster { misses: Some(StdRng::seed_from_u64(seed)), ..self }
    }

    /// Phases A and B of window `e` on `executor`'s shard, in one run or, with `misses`,
    /// as many as it takes (counted in `runs_again`).
    fn execute(
        executor: &Executor,
        (misses, runs_again): (&mut Option<StdRng>, &mut u64),
        (e, ts): (Epoch, Timestamp),
        tasks: Vec<Task>,
        snapshot: &ShardsAt<'_>,
    ) -> Validated {
        let shard = executor.shard();
        let Some(rng) = misses else {
            return executor.execute(e, ts, tasks, snapshot).unwrap();
        };
        let mut unanswered: BTreeSet<Vec<u8>> = (0..SHARDS)
            .flat_map(|s| (0..KEYS_PER_SHARD).map(move |i| key(s, i)))
            .filter(|_| rng.random_bool(0.3))
            .collect();
        let missing = Missing::new(snapshot, shard, unanswered.clone());
        let mut validated = executor.execute(e, ts, tasks, &missing).unwrap();
        let mut missed = missing.missed.get();
        while missed > 0 {
            unanswered.retain(|_| rng.random_bool(0.5));
            let missing = Missing::new(snapshot, shard, unanswered.clone());
            validated = executor.execute_again(validated, &missing).unwrap();
            missed = missing.missed.get();
            *runs_again += 1;
        }
        validated
    }

    fn snapshot(&self, at: Timestamp) -> ShardsAt<'_> {
        ShardsAt { shards: &self.shards, map: &self.map, at }
    }

    /// Runs one window through every shard; returns every shard's decisions.
    fn run_window(&mut self, entries: &[(TxnId, Request)]) -> Vec<Vec<Decided>> {
        self.epoch += 1;
        let (e, ts, prev) = (Epoch(self.epoch), window_ts(self.epoch), window_ts(self.epoch - 1));
        let snapshot = ShardsAt { shards: &self.shards, map: &self.map, at: prev };
        let mut validated = Vec::new();
        for s in self.map.shards() {
            let mut tasks = std::mem::take(&mut self.deferred[s.0 as usize]);
            for (txn, request) in entries {
                let participants: BTreeSet<ShardId> =
                    request.ranges().iter().flat_map(|r| self.map.shards_of(r)).collect();
                if participants.contains(&s) {
                    let participants = participants.into_iter().collect();
                    // Through the log encoding, as a shard receives it.
                    let request = Request::decode(&request.clone().into_payload()).map(Arc::new);
                    tasks.push(Task { txn: *txn, deferred: false, participants, request });
                }
            }
            let misses = (&mut self.misses, &mut self.runs_again);
            let executor = &self.executors[s.0 as usize];
            validated.push(Cluster::execute(executor, misses, (e, ts), tasks, &snapshot));
        }
        // The verdict exchange: a multi-shard entry commits iff every participant says so.
        let mut finals: BTreeMap<TxnId, bool> = BTreeMap::new();
        for v in &validated {
            for (txn, commit) in v.local_verdicts() {
                *finals.entry(txn).or_insert(true) &= commit;
            }
        }
        let mut decided = Vec::new();
        for (s, v) in validated.into_iter().enumerate() {
            let result = self.executors[s].finish(v, &finals, &snapshot).unwrap();
            decided.push(result.outcomes);
            self.deferred[s] = result.deferred;
            // Apply after every shard has read Snap(e-1): MVCC keeps it readable anyway.
            self.shards[s].apply(&result.batch).unwrap();
        }
        decided
    }
}

fn random_key(rng: &mut StdRng) -> Vec<u8> {
    key(rng.random_range(0..SHARDS), rng.random_range(0..KEYS_PER_SHARD))
}

#[test]
fn every_window_equals_a_serial_execution_in_the_documented_order() {
    for plan in [Plan::Snapshot, Plan::Serial] {
        let seeds: Vec<u64> = match std::env::var("SEALDB_SEED") {
            Ok(s) => vec![s.parse().unwrap()],
            Err(_) => (0..60).collect(),
        };
        let mut paths = Paths::default();
        let all_seeds = seeds.len() > 1;
        for seed in seeds {
            eprintln!("serial oracle, {plan:?} plan, seed {seed} (rerun with SEALDB_SEED={seed})");
            check_seed(seed, plan, &mut paths);
        }
        eprintln!("{plan:?} plan: paths exercised: {paths:?}");
        if all_seeds {
            // Otherwise the test could pass without exercising what it is about.
            assert!(paths.deferred > 0 && paths.conflicts > 0, "{plan:?}: {paths:?}");
            assert!(paths.user_aborts > 0 && paths.validated > 0, "{plan:?}: {paths:?}");
            assert!(paths.runs_again > 0, "{plan:?}: {paths:?}");
            assert!(paths.counts > 0 && paths.not_counters > 0, "{plan:?}: {paths:?}");
            match plan {
                Plan::Snapshot => assert!(paths.fallbacks > 0 && paths.serial == 0, "{paths:?}"),
                Plan::Serial => assert!(paths.serial > 0 && paths.fallbacks == 0, "{paths:?}"),
            }
        }
    }
}

/// How often each path of the algorithm was taken.
#[derive(Debug, Default)]
struct Paths {
    validated: u64,
    fallbacks: u64,
    serial: u64,
    deferred: u64,
    conflicts: u64,
    user_aborts: u64,
    runs_again: u64,
    /// `count` calls committed, and aborted for adding to a value that is not a counter.
    counts: u64,
    not_counters: u64,
}

fn check_seed(seed: u64, plan: Plan, paths: &mut Paths) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::with_plan(plan);
    if seed % 2 == 1 {
        // Odd seeds answer remote reads in rounds, as a shard over a network does.
        cluster = cluster.with_misses(seed);
    }
    let mut submitted: BTreeMap<TxnId, Submitted> = BTreeMap::new();
    let mut decisions: BTreeMap<TxnId, (Outcome, Option<SerialPosition>)> = BTreeMap::new();
    let windows = 25;
    for w in 0..windows + 10 {
        // The last windows only drain deferred entries.
        let count = if w < windows { rng.random_range(0..12) } else { 0 };
        let entries = random_window(&mut rng, &cluster, count, &mut submitted);
        for shard_decisions in cluster.run_window(&entries) {
            for d in shard_decisions {
                // Every participant must reach the same decision. (Which key a conflict names is
                // a hint from the shard that saw it.)
                let outcome = match d.outcome {
                    Outcome::Conflict { .. } => Outcome::Conflict { key: None },
                    other => other,
                };
                let entry = (outcome, d.position);
                if let Some(previous) = decisions.insert(d.txn, entry.clone()) {
                    assert_eq!(previous, entry, "seed {seed}: participants disagree on {}", d.txn);
                }
            }
        }
    }
    assert!(cluster.deferred.iter().all(Vec::is_empty), "seed {seed}: deferred entries never ran");
    paths.runs_again += cluster.runs_again;
    assert_eq!(decisions.len(), submitted.len(), "seed {seed}: every transaction is decided once");

    // The serial replay, in the reported order.
    let mut serial: Vec<(SerialPosition, TxnId, Outcome)> = decisions
        .iter()
        .filter_map(|(txn, (outcome, position))| position.map(|p| (p, *txn, outcome.clone())))
        .collect();
    serial.sort_by_key(|(position, txn, _)| (*position, *txn));
    for (txn, (outcome, _)) in &decisions {
        if matches!(&submitted[txn], Submitted::Procedure { name, .. } if name == "count") {
            match outcome {
                Outcome::Committed { .. } => paths.counts += 1,
                Outcome::Aborted(AbortReason::User(why)) if why.starts_with("not a counter") => {
                    paths.not_counters += 1
                }
                _ => {}
            }
        }
    }
    for (outcome, position) in decisions.values() {
        match (outcome, position) {
            (Outcome::Conflict { .. }, _) => paths.conflicts += 1,
            (Outcome::Aborted(txn::AbortReason::User(_)), _) => paths.user_aborts += 1,
            (Outcome::Committed { .. }, Some(p)) if p.phase == txn::Phase::Fallback => {
                paths.fallbacks += 1
            }
            (Outcome::Committed { .. }, Some(p)) if p.phase == txn::Phase::Serial => {
                paths.serial += 1
            }
            (Outcome::Committed { .. }, Some(p)) if p.order.0 == 0 => paths.deferred += 1,
            (Outcome::Committed { .. }, _) => paths.validated += 1,
            _ => {}
        }
    }
    let mut state: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut committed = 0;
    for (position, txn, outcome) in &serial {
        let now = window_ts(position.epoch.0);
        match &submitted[txn] {
            Submitted::Procedure { name, args } => {
                let procedure = registry().get(name).unwrap().clone();
                let mut ctx = Serial { state: &mut state, writes: BTreeMap::new(), now };
                let result = procedure.run(&mut ctx, args);
                let writes = std::mem::take(&mut ctx.writes);
                match (result, outcome) {
                    (Ok(output), Outcome::Committed { output: got, ts }) => {
                        assert_eq!(*ts, now, "seed {seed}: {txn} committed at the wrong timestamp");
                        assert_eq!(
                            String::from_utf8_lossy(got),
                            String::from_utf8_lossy(&output),
                            "seed {seed}: {txn} at {position:?} read differently than the serial order"
                        );
                        apply(&mut state, writes);
                        committed += 1;
                    }
                    (Err(ProcError::Abort(reason)), Outcome::Aborted(got)) => {
                        assert_eq!(
                            got,
                            &txn::AbortReason::User(reason),
                            "seed {seed}: {txn} at {position:?} aborted for another reason than \
                             in the serial order"
                        );
                    }
                    (serial_result, engine) => panic!(
                        "seed {seed}: {txn} at {position:?}: serial execution gave {serial_result:?}, the engine {engine:?}"
                    ),
                }
            }
            Submitted::Interactive { reads, scans, writes } => {
                assert!(matches!(outcome, Outcome::Committed { .. }), "seed {seed}: {txn}");
                for (range, rows) in scans {
                    let now: Rows = state
                        .iter()
                        .filter(|(k, _)| range.contains(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    assert_eq!(
                        &now, rows,
                        "seed {seed}: interactive {txn} at {position:?} committed although its \
                         scan of {range:?} is stale (a phantom)"
                    );
                }
                for (k, v) in reads {
                    assert_eq!(
                        state.get(k),
                        v.as_ref(),
                        "seed {seed}: interactive {txn} at {position:?} committed although its read of {} is stale",
                        String::from_utf8_lossy(k)
                    );
                }
                apply(&mut state, writes.iter().cloned().collect());
                committed += 1;
            }
        }
    }
    assert!(committed > 0, "seed {seed}: nothing committed");

    // The final state, read from the shards, equals the serial one.
    let last = window_ts(cluster.epoch);
    let rows = cluster.snapshot(last).scan(&KeyRange::all(), usize::MAX).unwrap();
    let got: BTreeMap<Vec<u8>, Vec<u8>> = rows.into_iter().collect();
    assert_eq!(got, state, "seed {seed}: final state differs from the serial execution");
}

fn apply(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
    for (k, v) in writes {
        match v {
            Some(v) => state.insert(k, v),
            None => state.remove(&k),
        };
    }
}

/// A call of [`ReadModifyWrite`] on `keys`.
fn rmw(keys: &[Vec<u8>]) -> Request {
    let args = encode_keys(keys);
    let ranges = ReadModifyWrite.ranges(&args).unwrap();
    Request::Procedure { name: "rmw".into(), args, ranges }
}

/// `count` random entries for the next window of `cluster`, recorded in `submitted`.
fn random_window(
    rng: &mut StdRng,
    cluster: &Cluster,
    count: u32,
    submitted: &mut BTreeMap<TxnId, Submitted>,
) -> Vec<(TxnId, Request)> {
    let epoch = Epoch(cluster.epoch + 1);
    let mut entries = Vec::new();
    for index in 0..count {
        let txn = TxnId { epoch, index };
        let request = match rng.random_range(0..12) {
            0..5 => {
                let keys: Vec<Vec<u8>> =
                    (0..rng.random_range(1..4)).map(|_| random_key(rng)).collect();
                let keys: Vec<Vec<u8>> =
                    keys.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
                let args = encode_keys(&keys);
                submitted
                    .insert(txn, Submitted::Procedure { name: "rmw".into(), args: args.clone() });
                Request::Procedure {
                    name: "rmw".into(),
                    args: args.clone(),
                    ranges: ReadModifyWrite.ranges(&args).unwrap(),
                }
            }
            10.. => {
                // Mostly adds, to two counters a shard: many entries of a window add to one.
                let steps: Vec<(char, Vec<u8>, i64)> = (0..rng.random_range(1..5))
                    .map(|_| {
                        let op = match rng.random_range(0..20) {
                            0..12 => 'a',
                            12..16 => 'r',
                            16 => 'p',
                            _ => 'd',
                        };
                        let key = counter_key(rng.random_range(0..SHARDS), rng.random_range(0..2));
                        (op, key, rng.random_range(-50..50))
                    })
                    .collect();
                let call = Count::call(&steps);
                let Request::Procedure { args, .. } = &call else { unreachable!() };
                submitted
                    .insert(txn, Submitted::Procedure { name: "count".into(), args: args.clone() });
                call
            }
            5..7 => {
                let args = format!("k{}/", rng.random_range(0..SHARDS)).into_bytes();
                submitted.insert(
                    txn,
                    Submitted::Procedure { name: "scan_sum".into(), args: args.clone() },
                );
                Request::Procedure {
                    name: "scan_sum".into(),
                    args: args.clone(),
                    ranges: ScanSum.ranges(&args).unwrap(),
                }
            }
            _ => {
                // An interactive transaction reading at a possibly stale snapshot, which may
                // fall between two windows' timestamps; it may scan a shard's keys, and may
                // write what it read, other keys, or nothing.
                let back = rng.random_range(1..4).min(epoch.0);
                let read_ts = Timestamp::from_u64(
                    window_ts(epoch.0 - back).as_u64() + rng.random_range(0..16),
                );
                let snap = cluster.snapshot(read_ts);
                let mut reads = BTreeMap::new();
                for _ in 0..rng.random_range(0..4) {
                    let k = random_key(rng);
                    reads.insert(k.clone(), snap.get(&k).unwrap());
                }
                let mut scans = Vec::new();
                if reads.is_empty() || rng.random_bool(0.3) {
                    let range =
                        KeyRange::prefix(format!("k{}/", rng.random_range(0..SHARDS)).as_bytes());
                    scans.push((range.clone(), snap.scan(&range, usize::MAX).unwrap()));
                }
                let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = match rng.random_range(0..4) {
                    // Write what it read (a read-modify-write).
                    0 | 1 => reads
                        .iter()
                        .map(|(k, v)| {
                            (k.clone(), Some((num(v.clone()) + 10).to_string().into_bytes()))
                        })
                        .collect(),
                    // Read some keys, write another.
                    2 => vec![(random_key(rng), Some(format!("{}", reads.len()).into_bytes()))],
                    // Read only.
                    _ => Vec::new(),
                };
                if rng.random_bool(0.3) {
                    writes.push((random_key(rng), None));
                }
                let writes: Vec<_> =
                    writes.into_iter().collect::<BTreeMap<_, _>>().into_iter().collect();
                let commit = InteractiveCommit {
                    read_ts,
                    reads: reads.keys().cloned().collect(),
                    scans: scans.iter().map(|(r, _)| r.clone()).collect(),
                    writes: writes.clone(),
                };
                submitted.insert(txn, Submitted::Interactive { reads, scans, writes });
                Request::Interactive(commit)
            }
        };
        entries.push((txn, request));
    }
    entries
}

#[test]
fn applying_the_same_windows_twice_gives_byte_identical_shards() {
    for plan in [Plan::Snapshot, Plan::Serial] {
        applying_the_same_windows_twice_gives_byte_identical_shards_with(plan);
    }
}

fn applying_the_same_windows_twice_gives_byte_identical_shards_with(plan: Plan) {
    let seed = std::env::var("SEALDB_SEED").map_or(42, |s| s.parse().unwrap());
    eprintln!("determinism, {plan:?} plan, seed {seed} (rerun with SEALDB_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut first = Cluster::with_plan(plan);
    let mut log = Vec::new();
    let mut submitted = BTreeMap::new();
    for w in 0..30 {
        let entries = random_window(&mut rng, &first, if w < 25 { 10 } else { 0 }, &mut submitted);
        first.run_window(&entries);
        log.push(entries);
    }
    // The replay answers remote reads in rounds, as a shard over a network sees them.
    let mut second = Cluster::with_plan(plan).with_misses(seed);
    for entries in &log {
        second.run_window(entries);
    }
    for (a, b) in first.engines.iter().zip(&second.engines) {
        let dump = |e: &MemoryEngine| {
            let mut cursor = storage::Engine::cursor(e);
            std::iter::from_fn(|| cursor.next().unwrap()).collect::<Vec<_>>()
        };
        let (a, b) = (dump(a), dump(b));
        assert!(!a.is_empty());
        assert_eq!(a, b, "seed {seed}: a replay produced different bytes");
    }
}

/// A run that missed remote reads runs again only the entries that missed: the others keep
/// their run (they read nothing that changed), and the result is the one a run with every
/// read answered gives.
#[test]
fn a_run_again_after_misses_runs_only_the_entries_that_missed() {
    let cluster = Cluster::new();
    let txn = |index| TxnId { epoch: Epoch(1), index };
    let requests = [
        (txn(0), rmw(&[key(0, 0), key(1, 0)])),
        (txn(1), rmw(&[key(0, 1), key(1, 1)])),
        (txn(2), rmw(&[key(0, 0), key(1, 2)])),
    ];
    let tasks = || {
        let participants = vec![ShardId(0), ShardId(1)];
        let task = |(txn, request): &(TxnId, Request)| {
            let (txn, participants) = (*txn, participants.clone());
            Task { txn, deferred: false, participants, request: Ok(Arc::new(request.clone())) }
        };
        requests.iter().map(task).collect::<Vec<_>>()
    };
    let (e, ts) = (Epoch(1), window_ts(1));
    let snapshot = cluster.snapshot(window_ts(0));
    let executor = &cluster.executors[0];

    let first = Missing::new(&snapshot, ShardId(0), BTreeSet::from([key(1, 0), key(1, 2)]));
    let validated = executor.execute(e, ts, tasks(), &first).unwrap();
    assert_eq!(first.missed.get(), 2);
    let again = Missing::new(&snapshot, ShardId(0), BTreeSet::new());
    let validated = executor.execute_again(validated, &again).unwrap();
    assert_eq!(again.missed.get(), 0);
    assert_eq!(
        again.read.take(),
        [key(0, 0), key(1, 0), key(0, 0), key(1, 2)],
        "only the entries that missed ran again"
    );

    let whole = executor.execute(e, ts, tasks(), &snapshot).unwrap();
    assert_eq!(validated.local_verdicts(), whole.local_verdicts());
    // Entry 2 writes key(0, 0) after entry 0 does: it loses here, whichever run it kept.
    assert_eq!(whole.local_verdicts(), [(txn(0), true), (txn(1), true), (txn(2), false)]);
    let finals: BTreeMap<TxnId, bool> = whole.local_verdicts().into_iter().collect();
    let kept = executor.finish(validated, &finals, &snapshot).unwrap();
    let fresh = executor.finish(whole, &finals, &snapshot).unwrap();
    assert_eq!(kept.outcomes, fresh.outcomes);
    assert_eq!(format!("{:?}", kept.batch), format!("{:?}", fresh.batch));
}

/// Regression: a procedure could scan, inside its declared ranges, a range whose bound is a
/// key over the limit. A peer shard refuses such a read, and the reading shard stopped on the
/// refusal (every replica would). The context refuses it first: the entry aborts, alike on
/// every participant, and nothing is read.
#[test]
fn a_scan_with_a_bound_over_the_key_limit_aborts_on_every_participant() {
    let mut cluster = Cluster::new();
    let call = Request::Procedure {
        name: "long_scan".into(),
        args: Vec::new(),
        ranges: LongScan.ranges(b"").unwrap(),
    };
    let decided = cluster.run_window(&[(TxnId { epoch: Epoch(1), index: 0 }, call)]);
    let outcomes: Vec<&Outcome> = decided.iter().flatten().map(|d| &d.outcome).collect();
    assert_eq!(outcomes.len(), SHARDS as usize, "every shard is a participant: {outcomes:?}");
    for outcome in outcomes {
        assert!(matches!(outcome, Outcome::Aborted(AbortReason::TooLarge(_))), "{outcome:?}");
    }
    assert_eq!(cluster.shards[0].get(&key(0, 0), Timestamp::MAX).unwrap(), None);
}

/// Only lower entries that won on a shard count against an entry there: entry 1 loses to
/// entry 0 on shard 0 (both write `k0/0`), so its write of `k0/1` is never applied in this
/// window, and entry 2, which writes `k0/1` after it, commits instead of being deferred
/// behind it. Entry 1 is deferred and commits in the next window.
#[test]
fn a_lower_entry_that_lost_here_does_not_make_a_later_one_lose() {
    let mut cluster = Cluster::new();
    let txn = |index| TxnId { epoch: Epoch(1), index };
    let first = cluster.run_window(&[
        (txn(0), rmw(&[key(0, 0), key(1, 0)])),
        (txn(1), rmw(&[key(0, 0), key(0, 1), key(1, 1)])),
        (txn(2), rmw(&[key(0, 1), key(1, 2)])),
    ]);
    let committed = |decided: &[Vec<Decided>]| -> BTreeSet<TxnId> {
        let all = decided.iter().flatten();
        all.filter(|d| matches!(d.outcome, Outcome::Committed { .. })).map(|d| d.txn).collect()
    };
    assert_eq!(committed(&first), BTreeSet::from([txn(0), txn(2)]));
    let deferred: Vec<TxnId> = cluster.deferred[0].iter().map(|t| t.txn).collect();
    assert_eq!(deferred, [txn(1)]);
    let second = cluster.run_window(&[]);
    assert_eq!(committed(&second), BTreeSet::from([txn(1)]));
    // In that order: entries 0 and 2 set k0/0 and k0/1 to 1 (window 1); entry 1 then reads
    // 1, 1 and 0 (sum 2) and adds 1 + 2 to each (window 2).
    let value =
        |k: Vec<u8>| num(cluster.shards[0].get(&k, Timestamp::MAX).unwrap().map(|v| v.value));
    assert_eq!((value(key(0, 0)), value(key(0, 1))), (4, 4));
}

/// Adds to one counter do not conflict: five multi-shard entries adding to `k0c0` (and each
/// to `k1c0`) all commit in their window, where five that read the counter first commit one
/// a window. A lower put of a counter makes an add lose, and the add then aborts in the next
/// window, since the value is no longer a counter.
#[test]
fn adds_to_one_counter_commit_together_and_lose_only_to_a_put() {
    let mut cluster = Cluster::new();
    let txn = |epoch, index| TxnId { epoch: Epoch(epoch), index };
    let committed = |decided: &[Vec<Decided>]| -> BTreeSet<TxnId> {
        let all = decided.iter().flatten();
        all.filter(|d| matches!(d.outcome, Outcome::Committed { .. })).map(|d| d.txn).collect()
    };
    let counter = |cluster: &Cluster, s: u32| {
        let v = cluster.shards[s as usize].get(&counter_key(s, 0), Timestamp::MAX).unwrap();
        i64::from_le_bytes(v.unwrap().value.try_into().unwrap())
    };
    let add = |n: i64| Count::call(&[('a', counter_key(0, 0), n), ('a', counter_key(1, 0), 1)]);
    let adds: Vec<(TxnId, Request)> = (0..5).map(|i| (txn(1, i), add(i64::from(i) + 1))).collect();
    assert_eq!(committed(&cluster.run_window(&adds)).len(), 5, "every add commits");
    assert!(cluster.deferred.iter().all(Vec::is_empty));
    assert_eq!((counter(&cluster, 0), counter(&cluster, 1)), (15, 5));

    // Reading first: each reads what a lower one wrote, so one commits a window.
    let read_add = |n: i64| {
        let k = counter_key(0, 0);
        Count::call(&[('r', k.clone(), 0), ('a', k, n), ('a', counter_key(1, 0), 1)])
    };
    let reads: Vec<(TxnId, Request)> = (0..3).map(|i| (txn(2, i), read_add(1))).collect();
    let mut windows = vec![committed(&cluster.run_window(&reads)).len()];
    while cluster.deferred.iter().any(|d| !d.is_empty()) {
        windows.push(committed(&cluster.run_window(&[])).len());
    }
    assert_eq!(windows, [1, 1, 1]);
    assert_eq!((counter(&cluster, 0), counter(&cluster, 1)), (18, 8));

    // A put, then an add: the add loses, and next window finds no counter.
    let e = cluster.epoch + 1;
    let put = Count::call(&[('p', counter_key(0, 0), 0), ('a', counter_key(1, 0), 1)]);
    let first = cluster.run_window(&[(txn(e, 0), put), (txn(e, 1), add(1))]);
    assert_eq!(committed(&first), BTreeSet::from([txn(e, 0)]));
    let second = cluster.run_window(&[]);
    let outcomes: Vec<&Outcome> = second.iter().flatten().map(|d| &d.outcome).collect();
    assert_eq!(outcomes.len(), 2, "both participants decide it: {outcomes:?}");
    for outcome in outcomes {
        let expected = AbortReason::User("not a counter: k0c0".into());
        assert_eq!(outcome, &Outcome::Aborted(expected));
    }
}
