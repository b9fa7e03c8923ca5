//! The micro-benchmark: closed-loop clients running one small transaction type as fast as
//! they can against an embedded database or a cluster, for a fixed duration. Each client has
//! one transaction outstanding at a time. Clients are tasks on one tokio thread (`--driver
//! async`, the default), written once against `txn::Store` for both targets, or OS threads
//! making the embedded database's blocking calls (`--driver threads`).
//!
//! Keys are `u64` indexes scrambled by a bijection, so their first byte (what the default
//! shard map splits on) is uniform and random keys spread evenly over the shards; two random
//! keys are usually on two shards. After the run, the workload's invariant is checked: the
//! sum of all counters equals the number of committed increments, or all balances sum to zero
//! after transfers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clock::Clock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use storage::KeyRange;
use txn::{
    Context, ProcError, Procedure, ReadAt, Registry, ShardMap, Store, StoreTransaction, TxnError,
};

use crate::report::{Latencies, SharedLatencies};
use crate::{ClusterTarget, RunningCluster};
use embedded::{Database, Options};

/// Which transaction the clients run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Procedure: add one to a random key.
    Increment,
    /// Procedure: move one unit between two random keys.
    Transfer,
    /// Interactive transaction: the same transfer.
    Interactive,
}

pub use crate::Driver;

/// What to run.
#[derive(Debug, Clone)]
pub struct MicroOptions {
    /// The transaction type.
    pub workload: Workload,
    /// How clients are run.
    pub driver: Driver,
    /// Concurrent clients.
    pub clients: u32,
    /// How long to run.
    pub duration: Duration,
    /// Size of the key space.
    pub keys: u64,
    /// Shards (default: one per core).
    pub shards: Option<u32>,
    /// Database directory (default: a temporary one).
    pub dir: Option<PathBuf>,
    /// Random seed.
    pub seed: u64,
    /// Overrides the sealer's `seal_ahead` (0: seal on the interval only).
    pub seal_ahead: Option<u64>,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The transaction type.
    pub workload: Workload,
    /// How clients were run.
    pub driver: Driver,
    /// Concurrent clients.
    pub clients: u32,
    /// Seconds measured.
    pub duration_s: f64,
    /// Key space size.
    pub keys: u64,
    /// Shards.
    pub shards: u32,
    /// Committed transactions per second.
    pub throughput_tps: f64,
    /// Median commit latency (ms), retries included.
    pub p50_ms: f64,
    /// 99th percentile commit latency (ms).
    pub p99_ms: f64,
    /// Interactive commits that failed validation, per log entry (`null` against a cluster,
    /// whose shards do not report it yet).
    pub conflict_rate: Option<f64>,
    /// Procedures committed by re-execution after losing validation, per log entry (`null`
    /// against a cluster).
    pub fallback_rate: Option<f64>,
    /// Log entries per window (against a cluster: committed calls per logged window).
    pub mean_window_entries: f64,
    /// Where it ran: `embedded`, or the cluster's sequencer address.
    pub target: String,
    /// The cluster's `max_offset` in ms when it started the cluster itself (commit-wait lasts
    /// about this long), else `null`.
    pub max_offset_ms: Option<u64>,
    /// Transactions committed.
    pub committed: u64,
    /// True if the workload's invariant held afterwards.
    pub consistent: bool,
}

pub(crate) fn key(i: u64) -> Vec<u8> {
    // Multiplication by an odd constant is a bijection on u64 that spreads the high byte.
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes().to_vec()
}

pub(crate) fn num(v: Option<Vec<u8>>) -> i64 {
    v.map_or(0, |v| i64::from_le_bytes(v.try_into().unwrap_or_default()))
}

fn indexes(args: &[u8]) -> Vec<u64> {
    args.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

pub(crate) fn args(ix: &[u64]) -> Vec<u8> {
    ix.iter().flat_map(|i| i.to_le_bytes()).collect()
}

/// The keys named by the arguments, for the procedures' declared ranges.
fn key_ranges(a: &[u8]) -> Vec<KeyRange> {
    indexes(a).iter().map(|&i| KeyRange::point(&key(i))).collect()
}

/// `increment i`: key i += 1.
struct Increment;

impl Procedure for Increment {
    fn name(&self) -> &str {
        "increment"
    }
    fn ranges(&self, a: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(key_ranges(a))
    }
    fn run(&self, ctx: &mut dyn Context, a: &[u8]) -> Result<Vec<u8>, ProcError> {
        let k = key(indexes(a)[0]);
        let v = num(ctx.get(&k)?);
        ctx.put(&k, &(v + 1).to_le_bytes())?;
        Ok(Vec::new())
    }
}

/// `transfer i j`: key i -= 1, key j += 1.
struct Transfer;

impl Procedure for Transfer {
    fn name(&self) -> &str {
        "transfer"
    }
    fn ranges(&self, a: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(key_ranges(a))
    }
    fn run(&self, ctx: &mut dyn Context, a: &[u8]) -> Result<Vec<u8>, ProcError> {
        let ix = indexes(a);
        let (from, to) = (key(ix[0]), key(ix[1]));
        let (a, b) = (num(ctx.get(&from)?), num(ctx.get(&to)?));
        ctx.put(&from, &(a - 1).to_le_bytes())?;
        ctx.put(&to, &(b + 1).to_le_bytes())?;
        Ok(Vec::new())
    }
}

fn client_rng(opts: &MicroOptions, client: u32) -> StdRng {
    StdRng::seed_from_u64(opts.seed * 10_000 + u64::from(client))
}

/// Two distinct random keys.
fn two_keys(rng: &mut StdRng, keys: u64) -> (u64, u64) {
    let (i, j) = (rng.random_range(0..keys), rng.random_range(0..keys));
    (i, if j == i { (i + 1) % keys } else { j })
}

/// The procedures a cluster node must register for the micro-benchmark (with the built-in
/// ones): `bench node` runs nodes with them.
pub fn procedures() -> Registry {
    let mut registry = txn::builtin::registry();
    registry.register(Arc::new(Increment));
    registry.register(Arc::new(Transfer));
    registry
}

/// Runs the benchmark's procedure workloads against a cluster, through the network.
pub fn run_cluster(opts: &MicroOptions, target: &ClusterTarget) -> Result<Report, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = opts.dir.clone().unwrap_or_else(|| temp.path().join("cluster"));
    let cluster = target.start(dir, ShardMap::uniform, |_| None)?;
    // The client's share of the cores, as TPC-C's: one thread beside a local cluster of four
    // nodes on two cores. Two threads made 121,000-140,000 txn/s at 2,048 and 4,096 clients
    // where one made 127,000-156,000 (six pairs of runs alternating; README, Figures).
    let runtime = match cluster.client_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            cluster.stop();
            return Err(e);
        }
    };
    let result = runtime.block_on(drive_cluster(opts, &cluster));
    cluster.stop();
    result
}

async fn drive_cluster(opts: &MicroOptions, cluster: &RunningCluster) -> Result<Report, String> {
    let (addr, tls) = (cluster.addr.as_str(), cluster.tls.clone());
    let max_offset = Duration::from_millis(cluster.max_offset_ms.unwrap_or(5));
    let clock = Arc::new(Clock::system(max_offset));
    // Wait for every shard to answer (a local cluster is still starting).
    let (client, first_epoch) = crate::connect_when_ready(addr, clock.clone(), tls).await?;
    let client = Arc::new(client);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let latencies = SharedLatencies::default();
    let mut tasks = spawn_clients(client.clone(), stop.clone(), opts, &latencies);
    let step = Duration::from_secs(5).min(opts.duration);
    while started.elapsed() < opts.duration {
        tokio::time::sleep(step.min(opts.duration.saturating_sub(started.elapsed()))).await;
        eprintln!("  {:>5.1} s", started.elapsed().as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(client) = tasks.join_next().await {
        client.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    let latencies = latencies.take();
    let elapsed = started.elapsed().as_secs_f64();
    let windows = client::cluster_status(addr, &clock, cluster.tls.as_ref())
        .await
        .map_err(|e| e.to_string())?
        .sealed_epoch
        - first_epoch;
    // The invariant, read at one timestamp.
    let ts = client.read_ts(ReadAt::Latest);
    let rows = client.scan(&KeyRange::all(), ts, usize::MAX).await.map_err(|e| e.to_string())?;
    let sum: i64 = rows.iter().map(|(_, v)| num(Some(v.clone()))).sum();
    let committed = latencies.count();
    let consistent = match opts.workload {
        // A cluster started before this run may hold earlier increments.
        Workload::Increment => sum >= committed as i64,
        Workload::Transfer | Workload::Interactive => sum == 0,
    };
    let latency = latencies.summary();
    Ok(Report {
        workload: opts.workload,
        driver: Driver::Async,
        clients: opts.clients,
        duration_s: elapsed,
        keys: opts.keys,
        shards: client.shard_map().len(),
        throughput_tps: committed as f64 / elapsed,
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        conflict_rate: None,
        fallback_rate: None,
        mean_window_entries: if windows == 0 { 0.0 } else { committed as f64 / windows as f64 },
        committed,
        consistent,
        target: addr.to_string(),
        max_offset_ms: cluster.max_offset_ms,
    })
}

/// Starts `opts.clients` closed-loop clients of the workload as tasks on the current runtime,
/// against the embedded database or a cluster alike, recording into `latencies`; each ends
/// once `stop` is set.
fn spawn_clients<S: Store + 'static>(
    store: Arc<S>,
    stop: Arc<AtomicBool>,
    opts: &MicroOptions,
    latencies: &SharedLatencies,
) -> tokio::task::JoinSet<Result<(), TxnError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..opts.clients {
        let (store, stop, opts) = (store.clone(), stop.clone(), opts.clone());
        let mut latencies = latencies.recorder();
        tasks.spawn(async move {
            let mut rng = client_rng(&opts, c);
            while !stop.load(Ordering::Relaxed) {
                let (i, j) = two_keys(&mut rng, opts.keys);
                let t = Instant::now();
                match opts.workload {
                    Workload::Increment => store.call("increment", &args(&[i])).await.map(drop)?,
                    Workload::Transfer => store.call("transfer", &args(&[i, j])).await.map(drop)?,
                    Workload::Interactive => interactive_transfer(&*store, i, j).await?,
                }
                latencies.record(t.elapsed());
            }
            Ok(())
        });
    }
    tasks
}

/// The transfer as an interactive transaction, retried on conflicts.
async fn interactive_transfer<S: Store>(store: &S, i: u64, j: u64) -> Result<(), TxnError> {
    store
        .transact(|mut tx| async move {
            let (a, b) = (num(tx.get(&key(i)).await?), num(tx.get(&key(j)).await?));
            tx.put(&key(i), &(a - 1).to_le_bytes())?;
            tx.put(&key(j), &(b + 1).to_le_bytes())?;
            Ok((tx, ()))
        })
        .await
}

/// Runs every client as a task on one tokio thread; the handle yields all their latencies.
fn spawn_async_clients(
    db: Arc<Database>,
    stop: Arc<AtomicBool>,
    opts: MicroOptions,
) -> Result<JoinHandle<Result<Latencies, TxnError>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        runtime.block_on(async {
            let latencies = SharedLatencies::default();
            let mut tasks = spawn_clients(db, stop, &opts, &latencies);
            while let Some(client) = tasks.join_next().await {
                client.expect("a client task panicked")?;
            }
            Ok(latencies.take())
        })
    }))
}

/// Runs the benchmark, printing progress to stderr.
pub fn run(opts: &MicroOptions) -> Result<Report, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = opts.dir.clone().unwrap_or_else(|| temp.path().join("micro"));
    let mut options =
        Options::default().procedure(Arc::new(Increment)).procedure(Arc::new(Transfer));
    if let Some(shards) = opts.shards {
        options.shards = shards;
    }
    if let Some(ahead) = opts.seal_ahead {
        options.sealer.seal_ahead = (ahead > 0).then_some(ahead);
    }
    let shards = options.shards;
    let db = Arc::new(Database::open(&dir, options).map_err(|e| e.to_string())?);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients = match opts.driver {
        Driver::Async => vec![spawn_async_clients(db.clone(), stop.clone(), opts.clone())?],
        Driver::Threads => (0..opts.clients)
            .map(|c| {
                let (db, stop, opts) = (db.clone(), stop.clone(), opts.clone());
                std::thread::spawn(move || -> Result<Latencies, TxnError> {
                    let mut rng = client_rng(&opts, c);
                    let mut latencies = Latencies::default();
                    while !stop.load(Ordering::Relaxed) {
                        let (i, j) = two_keys(&mut rng, opts.keys);
                        let t = Instant::now();
                        match opts.workload {
                            Workload::Increment => db.call("increment", &args(&[i])).map(drop)?,
                            Workload::Transfer => db.call("transfer", &args(&[i, j])).map(drop)?,
                            Workload::Interactive => db.transact(|tx| {
                                let (a, b) = (num(tx.get(&key(i))?), num(tx.get(&key(j))?));
                                tx.put(&key(i), &(a - 1).to_le_bytes())?;
                                tx.put(&key(j), &(b + 1).to_le_bytes())
                            })?,
                        }
                        latencies.record(t.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect(),
    };
    let step = Duration::from_secs(5).min(opts.duration);
    while started.elapsed() < opts.duration {
        std::thread::sleep(step.min(opts.duration.saturating_sub(started.elapsed())));
        let s = db.stats();
        eprintln!(
            "  {:>5.1} s: {} committed, {} windows",
            started.elapsed().as_secs_f64(),
            s.committed,
            s.windows
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Latencies::default();
    for c in clients {
        latencies.merge(&c.join().map_err(|_| "a client panicked")?.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = db.stats();

    // The invariant, read at one snapshot.
    let snap = db.snapshot(ReadAt::Latest).map_err(|e| e.to_string())?;
    let rows = snap.scan(&KeyRange::all(), usize::MAX).map_err(|e| e.to_string())?;
    let sum: i64 = rows.iter().map(|(_, v)| num(Some(v.clone()))).sum();
    let consistent = match opts.workload {
        Workload::Increment => sum == stats.committed as i64,
        Workload::Transfer | Workload::Interactive => sum == 0,
    };
    let latency = latencies.summary();
    let per_entry = |n: u64| if stats.entries == 0 { 0.0 } else { n as f64 / stats.entries as f64 };
    Ok(Report {
        workload: opts.workload,
        driver: opts.driver,
        clients: opts.clients,
        duration_s: elapsed,
        keys: opts.keys,
        shards,
        throughput_tps: latencies.count() as f64 / elapsed,
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        conflict_rate: Some(per_entry(stats.conflicts)),
        fallback_rate: Some(per_entry(stats.fallbacks)),
        target: "embedded".into(),
        max_offset_ms: None,
        mean_window_entries: if stats.windows == 0 {
            0.0
        } else {
            stats.entries as f64 / stats.windows as f64
        },
        committed: stats.committed,
        consistent,
    })
}
