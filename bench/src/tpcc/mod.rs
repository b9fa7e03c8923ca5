//! The TPC-C-like benchmark: schema, loader, the five transactions, a driver, and the
//! consistency checks, on an embedded sealdb database (and on PostgreSQL for comparison).
//!
//! Departures from the specification, all on the side of a simpler harness: no terminals,
//! keying or think times (each client runs its next transaction at once); Delivery runs as
//! one ordinary transaction instead of a queued one; ITEM is copied per warehouse (read-only,
//! so no transaction can tell); smaller populations are allowed for quick runs and marked in
//! the report; `tpmc` counts committed New-Orders only (rolled-back ones are in `rollbacks`).

pub mod check;
pub mod cluster;
pub mod postgres;
pub mod random;
pub mod schema;
pub mod txns;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use txn::{AbortReason, ReadAt, ShardMap, TxnError};

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::Latencies;
use embedded::{Database, Options};
use random::{DISTRICTS, Population};
use txns::{
    CustomerRef, Delivery, Line, Load, LoadPart, NewOrder, OrderStatus, Payment, StockLevel,
};

/// The transaction mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// 45% New-Order, 43% Payment, 4% each of Order-Status, Delivery and Stock-Level.
    Standard,
    /// New-Order only.
    NewOrder,
    /// Half New-Order, half Payment (as Calvin's and Aria's papers report).
    NewOrderPayment,
}

/// The five transaction types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// New-Order.
    NewOrder,
    /// Payment.
    Payment,
    /// Order-Status.
    OrderStatus,
    /// Delivery.
    Delivery,
    /// Stock-Level.
    StockLevel,
}

impl Kind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NewOrder => "new_order",
            Kind::Payment => "payment",
            Kind::OrderStatus => "order_status",
            Kind::Delivery => "delivery",
            Kind::StockLevel => "stock_level",
        }
    }
}

/// One transaction's inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Txn {
    /// New-Order.
    NewOrder(NewOrder),
    /// Payment.
    Payment(Payment),
    /// Order-Status.
    OrderStatus(OrderStatus),
    /// Delivery.
    Delivery(Delivery),
    /// Stock-Level.
    StockLevel(StockLevel),
}

impl Txn {
    /// Its type.
    pub fn kind(&self) -> Kind {
        match self {
            Txn::NewOrder(_) => Kind::NewOrder,
            Txn::Payment(_) => Kind::Payment,
            Txn::OrderStatus(_) => Kind::OrderStatus,
            Txn::Delivery(_) => Kind::Delivery,
            Txn::StockLevel(_) => Kind::StockLevel,
        }
    }
}

/// How a transaction ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Committed (or, read-only, completed).
    Committed,
    /// New-Order's deliberate rollback on an unused item.
    RolledBack,
}

/// Generates transactions for one client, as clause 2 and 5.2.3 describe.
pub struct Generator {
    rng: StdRng,
    /// The client's home warehouse.
    pub w: u32,
    warehouses: u32,
    pop: Population,
    mix: Mix,
    client: u64,
    payments: u64,
}

impl Generator {
    /// A generator for client `client` with home warehouse `w`.
    pub fn new(
        seed: u64,
        client: u32,
        w: u32,
        warehouses: u32,
        pop: Population,
        mix: Mix,
    ) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed.wrapping_mul(1_000_003) ^ u64::from(client)),
            w,
            warehouses,
            pop,
            mix,
            client: u64::from(client),
            payments: 0,
        }
    }

    fn other_warehouse(&mut self) -> u32 {
        if self.warehouses == 1 {
            return self.w;
        }
        let o = self.rng.random_range(1..self.warehouses);
        if o >= self.w { o + 1 } else { o }
    }

    fn customer(&mut self) -> CustomerRef {
        if self.rng.random_range(1..=100) <= 60 {
            CustomerRef::Last(random::run_last_name(&mut self.rng, self.pop))
        } else {
            CustomerRef::Id(random::customer_id(&mut self.rng, self.pop))
        }
    }

    /// The next transaction.
    pub fn next_txn(&mut self) -> Txn {
        let x = self.rng.random_range(1..=100);
        let kind = match self.mix {
            Mix::NewOrder => Kind::NewOrder,
            Mix::NewOrderPayment if x <= 50 => Kind::NewOrder,
            Mix::NewOrderPayment => Kind::Payment,
            Mix::Standard => match x {
                1..=45 => Kind::NewOrder,
                46..=88 => Kind::Payment,
                89..=92 => Kind::OrderStatus,
                93..=96 => Kind::Delivery,
                _ => Kind::StockLevel,
            },
        };
        let (w, rng) = (self.w, &mut self.rng);
        let d = rng.random_range(1..=DISTRICTS);
        match kind {
            Kind::NewOrder => {
                let c = random::customer_id(rng, self.pop);
                let n = rng.random_range(5..=15);
                let rollback = rng.random_range(1..=100) == 1;
                let mut lines = Vec::with_capacity(n);
                for k in 0..n {
                    let i_id = if rollback && k == n - 1 {
                        self.pop.items + 1 // unused: the order rolls back
                    } else {
                        random::item_id(&mut self.rng, self.pop)
                    };
                    let remote = self.rng.random_range(1..=100) == 1;
                    let supply_w = if remote { self.other_warehouse() } else { w };
                    let quantity = self.rng.random_range(1..=10);
                    lines.push(Line { i_id, supply_w, quantity });
                }
                Txn::NewOrder(NewOrder { w, d, c, lines })
            }
            Kind::Payment => {
                let remote = rng.random_range(1..=100) > 85;
                let (c_w, c_d) = if remote {
                    let c_d = self.rng.random_range(1..=DISTRICTS);
                    (self.other_warehouse(), c_d)
                } else {
                    (w, d)
                };
                let customer = self.customer();
                let amount = self.rng.random_range(100..=500_000);
                self.payments += 1;
                let h_id = self.client << 40 | self.payments;
                Txn::Payment(Payment { w, d, c_w, c_d, customer, amount, h_id })
            }
            Kind::OrderStatus => Txn::OrderStatus(OrderStatus { w, d, customer: self.customer() }),
            Kind::Delivery => Txn::Delivery(Delivery { w, carrier: rng.random_range(1..=10) }),
            Kind::StockLevel => {
                Txn::StockLevel(StockLevel { w, d, threshold: rng.random_range(10..=20) })
            }
        }
    }
}

/// A database the driver can run transactions on.
pub trait Backend: Send + Sync {
    /// "sealdb" or "postgres".
    fn name(&self) -> &'static str;
    /// Runs `txn` to completion, retrying what the backend calls retryable and counting the
    /// retries in `retries`.
    fn execute(&self, txn: &Txn, retries: &mut u64) -> Result<Done, String>;
    /// The consistency conditions' failures, read at one snapshot.
    fn check(&self, warehouses: u32) -> Result<Vec<String>, String>;
    /// Loads the initial population of `warehouses` into an empty database, printing
    /// progress to stderr. The same `seed` loads the same rows on every backend.
    fn load(&self, warehouses: u32, pop: Population, seed: u64) -> Result<(), String>;
    /// Bytes the database holds on disk, if this process can see them.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }
    /// What the embedded engine has done so far, if this process runs one.
    fn engine_stats(&self) -> Option<embedded::Stats> {
        None
    }
    /// Writes a consistent backup of the database to `to`, while clients run.
    fn backup(&self, to: &std::path::Path) -> Result<(), String> {
        Err(format!("{} has no backup here (to {})", self.name(), to.display()))
    }
    /// Its clients as futures on a runtime, if it has them ([`Tasks`]); otherwise each client
    /// is a thread calling [`Backend::execute`].
    fn tasks(&self) -> Option<&dyn Tasks> {
        None
    }
    /// Called on each thread that runs clients, before they start: the embedded database
    /// keeps it off its shards' CPUs, if it reserved any.
    fn enter_client_thread(&self) {}
}

/// A backend whose clients run as futures on one runtime, not each on a thread that blocks on
/// every call. A client over the network waits on every round trip, and a thread blocking on
/// it is put to sleep and woken each time: for sealdb's cluster client, that was about a
/// third of its process's CPU.
pub trait Tasks: Sync {
    /// The runtime the clients run on.
    fn handle(&self) -> &tokio::runtime::Handle;
    /// Runs `txn` to completion as [`Backend::execute`] does; the future ends with the
    /// retries it counted.
    fn execute(&self, txn: Txn) -> Execution<'_>;
}

/// A transaction run as a future: how it ended, and the retries it took.
pub type Execution<'a> = Pin<Box<dyn Future<Output = (Result<Done, String>, u64)> + 'a>>;

/// Bytes of the files under `dir`, recursively (0 for what cannot be read).
pub fn disk_usage(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// This process's resident memory in bytes (Linux), if known.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// sealdb, embedded.
pub struct Sealdb {
    /// The database.
    pub db: Database,
    /// Its directory (none in memory).
    dir: Option<PathBuf>,
    /// The runtime whose timers the clients' futures use, if they run as tasks
    /// ([`crate::Driver::Async`]).
    runtime: Option<tokio::runtime::Runtime>,
}

/// The benchmark's procedures: the loader, the three read-write transactions, and the two
/// read-only ones (called on a snapshot).
fn procedure_list() -> [Arc<dyn txn::Procedure>; 6] {
    [
        Arc::new(txns::LoadProc),
        Arc::new(txns::NewOrderProc),
        Arc::new(txns::PaymentProc),
        Arc::new(txns::DeliveryProc),
        Arc::new(txns::ORDER_STATUS),
        Arc::new(txns::STOCK_LEVEL),
    ]
}

/// The procedures the benchmark registers.
pub fn procedures(options: Options) -> Options {
    procedure_list().into_iter().fold(options, Options::procedure)
}

/// The benchmark's procedures, for a cluster node (`bench node`) or client.
pub fn procedures_registry() -> txn::Registry {
    let mut registry = txn::Registry::new();
    for p in procedure_list() {
        registry.register(p);
    }
    registry
}

/// A shard map that keeps each warehouse whole, spreading `warehouses` over `shards`.
pub fn shard_map(warehouses: u32, shards: u32) -> ShardMap {
    let shards = shards.clamp(1, warehouses.max(1));
    let splits =
        (1..shards).map(|k| schema::warehouse_start(1 + k * warehouses / shards)).collect();
    ShardMap::new(splits).expect("warehouse starts are increasing")
}

/// Row cache for the whole embedded database, split evenly over its shards: the 2 GiB of
/// `shared_buffers` that `bench/postgres.sh` gives PostgreSQL, so both keep the same memory
/// for rows. By row sizes, a warehouse's stock, items and customers come to roughly 90 MiB
/// with the cache's overhead; the database's default (128 MiB per shard) evicted them from
/// two warehouses a shard, and New-Order read RocksDB on each miss.
pub const ROW_CACHE_BYTES: usize = 2 << 30;

/// Table files of each shard's RocksDB for the benchmark: 8 MiB, not RocksDB's 64. New orders
/// are appended after each district's old ones, and a compaction into the last level rewrites
/// every file its input's key range overlaps; in two head-to-head runs (README, "Smaller table
/// files") the benchmark committed 7% and 14% more with 8 MiB files, more in every minute. The
/// database keeps RocksDB's default, since a large database would hold eight times the files,
/// and past the bound on open table files ([`storage::RocksOptions::max_open_files`]) a read
/// of a closed one opens it again.
pub const TABLE_FILE_BYTES: u64 = 8 << 20;

impl Sealdb {
    /// Opens an embedded database in `dir` (or in memory) for `warehouses`, with a row cache of
    /// [`ROW_CACHE_BYTES`] over all shards.
    pub fn open(
        dir: Option<&std::path::Path>,
        warehouses: u32,
        shards: u32,
    ) -> Result<Sealdb, String> {
        Sealdb::open_with(dir, warehouses, shards, &Embedded::default())
    }

    /// [`Sealdb::open`] with `embedded`'s retention, caches, plan and WAL choice.
    pub fn open_with(
        dir: Option<&std::path::Path>,
        warehouses: u32,
        shards: u32,
        embedded: &Embedded,
    ) -> Result<Sealdb, String> {
        let mut options = procedures(Options {
            retention: embedded.retention,
            block_cache_bytes: embedded.block_cache_bytes,
            plan: embedded.plan,
            rocksdb_wal: embedded.rocksdb_wal,
            rocksdb_bytes_per_sync: embedded.rocksdb_bytes_per_sync,
            rocksdb_background_bytes_per_sec: embedded.rocksdb_background_bytes_per_sec,
            rocksdb_l0_compaction_trigger: embedded.rocksdb_l0_compaction_trigger,
            rocksdb_table_file_bytes: embedded.rocksdb_table_file_bytes,
            write_behind: embedded.write_behind,
            held_run_bytes: embedded.held_run_bytes,
            rocksdb_apart: match embedded.appended_apart {
                true => schema::appended_prefixes(warehouses),
                false => Vec::new(),
            },
            rocksdb_apart_hint_bytes: schema::appended_hint_bytes(),
            rocksdb_low_priority_background: embedded.rocksdb_low_priority_background,
            own_cores: embedded.own_cores,
            ..Options::default()
        });
        let map = shard_map(warehouses, shards);
        options.row_cache_bytes = embedded.row_cache_bytes / map.len() as usize;
        options.shard_map = Some(map);
        let db = match dir {
            Some(dir) => Database::open(dir, options),
            None => Database::open("unused", Options { in_memory: true, ..options }),
        }
        .map_err(|e| e.to_string())?;
        // The clients' futures run on the thread that drives them (`Handle::block_on`); the
        // runtime's one worker keeps the timers.
        let runtime = match embedded.driver {
            crate::Driver::Async => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("bench-timers")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting the clients' runtime: {e}"))?,
            ),
            crate::Driver::Threads => None,
        };
        Ok(Sealdb { db, dir: dir.map(std::path::Path::to_path_buf), runtime })
    }

    fn call(&self, name: &str, args: &[u8], retries: &mut u64) -> Result<Done, String> {
        call_until_done(name, retries, || self.db.call(name, args))
    }

    /// Runs `f` on a `Latest` snapshot.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&mut embedded::Snapshot<'_>) -> Result<T, txn::ProcError>,
    ) -> Result<T, String> {
        let mut snap = self.db.snapshot(ReadAt::Latest).map_err(|e| e.to_string())?;
        f(&mut snap).map_err(|e| e.to_string())
    }

    /// [`Sealdb::read`] for clients that are futures on one thread: a `Latest` snapshot waits
    /// until the shards have applied every window up to now (about a window), and it waits
    /// as a future, not holding the thread every other client runs on.
    async fn read_async<T>(
        &self,
        f: impl FnOnce(&mut embedded::Snapshot<'_>) -> Result<T, txn::ProcError>,
    ) -> Result<T, String> {
        let snap = txn::Store::snapshot(&self.db, ReadAt::Latest).await;
        let mut snap = snap.map_err(|e| e.to_string())?;
        f(&mut snap).map_err(|e| e.to_string())
    }
}

/// The sealdb procedure that runs `txn` and its arguments, or the read-only transaction it
/// is (reads at one timestamp, no procedure).
pub(crate) fn procedure(txn: &Txn) -> Result<(&'static str, Vec<u8>), ReadOnly> {
    match txn {
        Txn::NewOrder(t) => Ok(("tpcc.new_order", schema::encode(t))),
        Txn::Payment(t) => Ok(("tpcc.payment", schema::encode(t))),
        Txn::Delivery(t) => Ok(("tpcc.delivery", schema::encode(t))),
        Txn::OrderStatus(t) => Err(ReadOnly::OrderStatus(t.clone())),
        Txn::StockLevel(t) => Err(ReadOnly::StockLevel(t.clone())),
    }
}

/// A read-only transaction: Order-Status or Stock-Level.
pub(crate) enum ReadOnly {
    OrderStatus(OrderStatus),
    StockLevel(StockLevel),
}

impl ReadOnly {
    /// Its read-only procedure's name and arguments ([`txns::ReadOnlyProc`]).
    pub(crate) fn call(&self) -> (&'static str, Vec<u8>) {
        match self {
            ReadOnly::OrderStatus(t) => (txns::ORDER_STATUS.name, schema::encode(t)),
            ReadOnly::StockLevel(t) => (txns::STOCK_LEVEL.name, schema::encode(t)),
        }
    }

    /// Runs it on `r` (reads at one timestamp).
    pub(crate) fn run(&self, r: &mut impl txns::Reader) -> Result<Done, txn::ProcError> {
        match self {
            ReadOnly::OrderStatus(t) => txns::order_status(r, t),
            ReadOnly::StockLevel(t) => txns::stock_level(r, t),
        }
        .map(|_| Done::Committed)
    }
}

/// Runs a sealdb procedure call (`call`) until it is done: committed, or rolled back on
/// purpose; retryable failures are retried and counted in `retries`.
pub(crate) fn call_until_done(
    name: &str,
    retries: &mut u64,
    mut call: impl FnMut() -> Result<Vec<u8>, TxnError>,
) -> Result<Done, String> {
    loop {
        if let Some(done) = settle(name, call(), retries) {
            return done;
        }
    }
}

/// [`call_until_done`] for callers that wait as futures.
pub(crate) async fn call_until_done_async<F: Future<Output = Result<Vec<u8>, TxnError>>>(
    name: &str,
    retries: &mut u64,
    mut call: impl FnMut() -> F,
) -> Result<Done, String> {
    loop {
        if let Some(done) = settle(name, call().await, retries) {
            return done;
        }
    }
}

/// What one attempt of procedure `name` came to: done (committed, or rolled back on purpose),
/// failed, or `None` to try again (retryable; counted in `retries`).
pub(crate) fn settle(
    name: &str,
    attempt: Result<Vec<u8>, TxnError>,
    retries: &mut u64,
) -> Option<Result<Done, String>> {
    match attempt {
        Ok(_) => Some(Ok(Done::Committed)),
        Err(TxnError::Aborted(AbortReason::User(m))) if m == txns::ROLLBACK => {
            Some(Ok(Done::RolledBack))
        }
        Err(e) if e.is_retryable() => {
            *retries += 1;
            None
        }
        Err(e) => Some(Err(format!("{name}: {e}"))),
    }
}

/// Runs `load` on every part with `workers` threads, printing progress to stderr; stops at
/// the first error.
pub fn run_parts(
    parts: &[Load],
    workers: usize,
    load: impl Fn(&Load) -> Result<(), String> + Sync,
) -> Result<(), String> {
    let next = AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(part) = parts.get(i) else { return };
                    if let Err(e) = load(part) {
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        next.store(parts.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
        // A progress bar on a terminal; plain lines every 2 s otherwise (a CI log).
        let bar = ProgressBar::new(parts.len() as u64).with_style(
            ProgressStyle::with_template(
                "  loading {bar:40} {pos}/{len} slices, {elapsed}, about {eta} left",
            )
            .expect("a valid template"),
        );
        let mut last = Instant::now();
        while next.load(Ordering::Relaxed) < parts.len() {
            std::thread::sleep(Duration::from_millis(100));
            let done = next.load(Ordering::Relaxed).min(parts.len());
            bar.set_position(done as u64);
            if bar.is_hidden() && last.elapsed() >= Duration::from_secs(2) {
                last = Instant::now();
                eprintln!(
                    "  loading: {:>3}% ({done}/{} slices, {:.0} s)",
                    done * 100 / parts.len(),
                    parts.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        bar.finish_and_clear();
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(format!("loading: {e}")),
        None => Ok(()),
    }
}

impl Backend for Sealdb {
    fn name(&self) -> &'static str {
        "sealdb"
    }

    fn execute(&self, txn: &Txn, retries: &mut u64) -> Result<Done, String> {
        match procedure(txn) {
            Ok((name, args)) => self.call(name, &args, retries),
            Err(read_only) => self.read(|s| read_only.run(s)),
        }
    }

    fn check(&self, warehouses: u32) -> Result<Vec<String>, String> {
        self.read(|s| check::check(s, warehouses))
    }

    fn load(&self, warehouses: u32, pop: Population, seed: u64) -> Result<(), String> {
        let exists =
            self.db.snapshot(ReadAt::Latest).and_then(|s| s.get(&schema::warehouse_key(1)));
        if exists.map_err(|e| e.to_string())?.is_some() {
            return Err("the database already holds TPC-C data: use an empty directory".into());
        }
        let parts = load_parts(warehouses, pop, seed);
        // Loader calls are small transactions: many in flight fill the windows.
        run_parts(&parts, 16, |part| {
            self.call("tpcc.load", &schema::encode(part), &mut 0).map(|_| ())
        })?;
        // As PostgreSQL's load ends with VACUUM ANALYZE and a checkpoint: the run then starts
        // on settled storage, not behind the compactions the load left pending.
        eprintln!("  compacting storage");
        self.db.compact().map_err(|e| format!("compacting after the load: {e}"))
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.dir.as_deref().map(disk_usage)
    }

    fn engine_stats(&self) -> Option<embedded::Stats> {
        Some(self.db.stats())
    }

    fn backup(&self, to: &std::path::Path) -> Result<(), String> {
        self.db.backup(to).map(|_| ()).map_err(|e| e.to_string())
    }

    fn tasks(&self) -> Option<&dyn Tasks> {
        self.runtime.is_some().then_some(self as &dyn Tasks)
    }

    fn enter_client_thread(&self) {
        self.db.keep_off_shard_cpus();
    }
}

/// A client waiting for its outcome is a future woken by the shard's answer, not a thread
/// put to sleep and woken by the kernel.
impl Tasks for Sealdb {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("tasks() offers these only with a runtime").handle()
    }

    fn execute(&self, txn: Txn) -> Execution<'_> {
        Box::pin(async move {
            let mut retries = 0;
            let done = match procedure(&txn) {
                Ok((name, args)) => {
                    call_until_done_async(name, &mut retries, || self.db.call_async(name, &args))
                        .await
                }
                // Once the snapshot is safe, its reads are the shards' storage: inline.
                Err(read_only) => self.read_async(|s| read_only.run(s)).await,
            };
            (done, retries)
        })
    }
}

/// Every loader call for the population, small enough to keep each transaction well under a
/// megabyte.
pub fn load_parts(warehouses: u32, pop: Population, seed: u64) -> Vec<Load> {
    let mut parts = Vec::new();
    let chunks = |n: u32, size: u32| {
        (1..=n).step_by(size as usize).map(move |from| (from, (from + size).min(n + 1)))
    };
    for w in 1..=warehouses {
        let load = |part| Load { w, part, items: pop.items, customers: pop.customers, seed };
        parts.push(load(LoadPart::Warehouse));
        for (from, to) in chunks(pop.items, 2_000) {
            parts.push(load(LoadPart::Items { from, to }));
        }
        for (from, to) in chunks(pop.items, 1_000) {
            parts.push(load(LoadPart::Stock { from, to }));
        }
        for d in 1..=DISTRICTS {
            for (from, to) in chunks(pop.customers, 500) {
                parts.push(load(LoadPart::Customers { d, from, to }));
            }
            for (from, to) in chunks(pop.customers, 500) {
                parts.push(load(LoadPart::Orders { d, from, to }));
            }
        }
    }
    parts
}

/// What to run.
#[derive(Debug, Clone)]
pub struct TpccOptions {
    /// Warehouses.
    pub warehouses: u32,
    /// Concurrent clients, each with a home warehouse (client i: warehouse i mod W + 1).
    pub clients: u32,
    /// How long to run after loading.
    pub duration: Duration,
    /// The transaction mix.
    pub mix: Mix,
    /// The population per warehouse.
    pub population: Population,
    /// Random seed.
    pub seed: u64,
    /// A progress row (throughput, disk, memory) this often.
    pub report_every: Duration,
    /// Back the database up this long into the run, to a directory next to it, while the
    /// clients go on; the run then restores it and checks it.
    pub backup_after: Option<Duration>,
    /// How long the clients run before the measurement starts (TPC-C's ramp-up): caches
    /// fill, and nothing of it is counted.
    pub warmup: Duration,
}

/// A backup taken during a run, and what its restored copy held.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupCheck {
    /// Seconds into the run it began.
    pub at_s: f64,
    /// Seconds it took.
    pub took_s: f64,
    /// New-Orders acknowledged as committed before it began.
    pub acked_new_orders: u64,
    /// New-Orders in the restored copy (sum over districts of D_NEXT_O_ID - 1 less the loaded
    /// orders): at least `acked_new_orders`.
    pub restored_new_orders: u64,
    /// What the consistency conditions found wrong in the restored copy (empty if nothing).
    pub restored_failures: Vec<String>,
}

/// One progress row of a run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Interval {
    /// Seconds since the clients started, at the row's end.
    pub end_s: f64,
    /// Transactions completed per second in the interval.
    pub tps: f64,
    /// Bytes of the database on disk at its end, if known.
    pub disk_bytes: Option<u64>,
    /// The process's resident memory at its end, if known.
    pub rss_bytes: Option<u64>,
    /// The mean time of the interval's log appends (write and fsync) in milliseconds, if
    /// this process makes them: what every transaction waits for.
    pub log_append_ms: Option<f64>,
    /// What the embedded engine's memory holds at its end (sealdb embedded only).
    pub held: Option<Held>,
    /// What the embedded engine did in the interval (sealdb embedded only).
    pub engine: Option<EngineWork>,
}

/// Bytes of memory an embedded sealdb holds in its caches and write buffers, all shards.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Held {
    /// The row caches (each key's newest version).
    pub row_cache: u64,
    /// RocksDB's block caches.
    pub block_cache: u64,
    /// RocksDB's memtables.
    pub memtables: u64,
    /// RocksDB's table readers outside the block cache.
    pub table_readers: u64,
}

impl Held {
    fn of(stats: &embedded::Stats) -> Held {
        let e = stats.engine_memory;
        Held {
            row_cache: stats.row_cache_bytes,
            block_cache: e.block_cache,
            memtables: e.memtables,
            table_readers: e.table_readers,
        }
    }
}

/// Latency percentiles of one transaction type, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TypeLatency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Transactions measured.
    pub count: usize,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "sealdb" or "postgres".
    pub backend: String,
    /// Warehouses.
    pub warehouses: u32,
    /// Clients.
    pub clients: u32,
    /// Seconds measured.
    pub duration_s: f64,
    /// The mix.
    pub mix: Mix,
    /// Committed New-Orders per minute.
    pub tpmc: f64,
    /// Completed transactions of all types per second (rollbacks included).
    pub throughput_tps: f64,
    /// Per transaction type.
    pub latency_ms: BTreeMap<String, TypeLatency>,
    /// New-Orders rolled back on an unused item.
    pub rollbacks: u64,
    /// Retries after retryable failures (serialization failures, conflicts).
    pub retries: u64,
    /// True only if every consistency condition held after the run.
    pub consistency: bool,
    /// What failed, if anything.
    pub consistency_failures: Vec<String>,
    /// The population per warehouse.
    pub population: Population,
    /// True if the population is smaller than the specification's.
    pub scaled: bool,
    /// Seconds the load took.
    pub load_s: f64,
    /// Throughput, disk and memory per interval.
    pub intervals: Vec<Interval>,
    /// The backup taken during the run, if one was asked for.
    pub backup: Option<BackupCheck>,
    /// What the embedded engine did during the run (sealdb embedded only).
    pub engine: Option<EngineWork>,
}

/// What an embedded sealdb's engine did during a run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct EngineWork {
    /// Windows applied.
    pub windows: u64,
    /// Log entries per window, on average.
    pub entries_per_window: f64,
    /// Single-shard procedures executed a second time after losing validation.
    pub reexecuted: u64,
    /// Those as a share of the entries, in percent.
    pub reexecuted_pct: f64,
    /// Single-shard procedures committed by their one serial run (the serial plan).
    pub serial: u64,
    /// Transactions aborted.
    pub aborts: u64,
    /// Shares of the shard threads' time, in percent: waiting for a window, for its log
    /// append, for another shard; writing to storage; working (executing, reading).
    pub shard_time_pct: ShardTimePct,
    /// Microseconds of shard thread working or writing per log entry: the cost of a
    /// transaction to the shards (on two cores, with time a runnable thread waits for one).
    pub shard_us_per_entry: f64,
    /// Point reads the shards' row caches answered, in percent of their point reads.
    pub row_cache_hit_pct: f64,
    /// Written rows the shards' full row caches refused, per log entry: a cache full of rows
    /// written and not read takes new ones only now and then.
    pub row_cache_refused_per_entry: f64,
}

/// [`embedded::ShardTime`] as shares of the shard threads' time, in percent.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ShardTimePct {
    /// No window to work on.
    pub awaiting_window: f64,
    /// A window executed, its log append not finished.
    pub awaiting_durable: f64,
    /// Another shard's apply of the window before, or its verdicts.
    pub awaiting_peer: f64,
    /// Writing batches to storage.
    pub writing: f64,
    /// Executing windows, reading storage, answering callers.
    pub working: f64,
}

impl EngineWork {
    /// What the engine did between two of its [`embedded::Stats`].
    fn between(before: &embedded::Stats, after: &embedded::Stats) -> EngineWork {
        let entries = after.entries - before.entries;
        let windows = (after.windows - before.windows).max(1);
        let fallbacks = after.fallbacks - before.fallbacks;
        let (t0, t1) = (before.shard_time, after.shard_time);
        let parts = [
            t1.awaiting_window - t0.awaiting_window,
            t1.awaiting_durable - t0.awaiting_durable,
            t1.awaiting_peer - t0.awaiting_peer,
            t1.writing - t0.writing,
            t1.working - t0.working,
        ];
        let total = parts.iter().sum::<u64>().max(1) as f64;
        let busy = parts[3] + parts[4];
        let [awaiting_window, awaiting_durable, awaiting_peer, writing, working] =
            parts.map(|p| p as f64 * 100.0 / total);
        EngineWork {
            windows,
            entries_per_window: entries as f64 / windows as f64,
            reexecuted: fallbacks,
            reexecuted_pct: fallbacks as f64 * 100.0 / entries.max(1) as f64,
            serial: after.serial - before.serial,
            aborts: after.aborts - before.aborts,
            shard_time_pct: ShardTimePct {
                awaiting_window,
                awaiting_durable,
                awaiting_peer,
                writing,
                working,
            },
            shard_us_per_entry: busy as f64 / entries.max(1) as f64,
            row_cache_hit_pct: {
                let hits = after.row_cache_hits - before.row_cache_hits;
                let misses = after.row_cache_misses - before.row_cache_misses;
                hits as f64 * 100.0 / (hits + misses).max(1) as f64
            },
            row_cache_refused_per_entry: (after.row_cache_writes_refused
                - before.row_cache_writes_refused) as f64
                / entries.max(1) as f64,
        }
    }
}

/// What the clients share while they run.
#[derive(Default)]
struct Running {
    /// Set when the run is over, or a client failed: every client stops.
    stop: AtomicBool,
    /// Transactions completed and counted.
    completed: AtomicU64,
    /// New-Orders acknowledged and counted.
    new_orders: AtomicU64,
    /// The warm-up is over: transactions that begin now are counted.
    measuring: AtomicBool,
}

/// One client's samples by kind, rollbacks and retries.
type ClientResult = Result<(BTreeMap<Kind, Latencies>, u64, u64), String>;

/// One client: runs the transactions `generator` makes with `execute` until `running.stop`,
/// recording those that began once the warm-up was over.
async fn client<F>(
    mut generator: Generator,
    running: &Running,
    mut execute: impl FnMut(Txn) -> F,
) -> ClientResult
where
    F: Future<Output = (Result<Done, String>, u64)>,
{
    let mut samples = BTreeMap::<Kind, Latencies>::new();
    let (mut rollbacks, mut retries) = (0, 0);
    while !running.stop.load(Ordering::Relaxed) {
        let txn = generator.next_txn();
        let kind = txn.kind();
        // Counted only if it began once the warm-up was over.
        let counted = running.measuring.load(Ordering::SeqCst);
        let t = Instant::now();
        let (done, tried) = execute(txn).await;
        match done {
            Ok(Done::Committed) if kind == Kind::NewOrder && counted => {
                running.new_orders.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Done::Committed) => {}
            Ok(Done::RolledBack) => rollbacks += u64::from(counted),
            Err(e) => {
                running.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        if counted {
            retries += tried;
            samples.entry(kind).or_default().record(t.elapsed());
            running.completed.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok((samples, rollbacks, retries))
}

/// Runs the clients against a loaded `backend`, then the consistency checks.
pub fn drive(backend: &dyn Backend, opts: &TpccOptions, load_s: f64) -> Result<Report, String> {
    let running =
        Running { measuring: AtomicBool::new(opts.warmup.is_zero()), ..Default::default() };
    let Running { stop, completed, new_orders, measuring } = &running;
    let intervals = std::sync::Mutex::new(Vec::new());
    // The backup's start, the New-Orders acknowledged then, and its seconds (or why it failed).
    type Taken = (f64, u64, Result<f64, String>);
    let (results, backup_taken, (started, engine_before)) = std::thread::scope(|s| {
        let mut backup = None;
        let generator = |c: u32| {
            let w = c % opts.warehouses + 1;
            Generator::new(opts.seed, c, w, opts.warehouses, opts.population, opts.mix)
        };
        let running = &running;
        // Each thread's clients' results.
        let clients: Vec<std::thread::ScopedJoinHandle<'_, Vec<ClientResult>>> = match backend
            .tasks()
        {
            Some(tasks) => vec![s.spawn(move || {
                backend.enter_client_thread();
                let clients = (0..opts.clients)
                    .map(|c| client(generator(c), running, |txn| tasks.execute(txn)));
                tasks.handle().block_on(futures::future::join_all(clients))
            })],
            None => (0..opts.clients)
                .map(|c| {
                    s.spawn(move || {
                        backend.enter_client_thread();
                        let execute = |txn: Txn| {
                            let mut tried = 0;
                            let done = backend.execute(&txn, &mut tried);
                            std::future::ready((done, tried))
                        };
                        vec![futures::executor::block_on(client(generator(c), running, execute))]
                    })
                })
                .collect(),
        };
        if !opts.warmup.is_zero() {
            eprintln!("  warming up for {} s (not measured)", opts.warmup.as_secs());
            let warm = Instant::now();
            while warm.elapsed() < opts.warmup && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(
                    opts.warmup.saturating_sub(warm.elapsed()).min(Duration::from_millis(100)),
                );
            }
            measuring.store(true, Ordering::SeqCst);
        }
        let engine_before = backend.engine_stats();
        let started = Instant::now();
        let every = opts.report_every.max(Duration::from_secs(1));
        let (mut report_at, mut reported) = (every, 0);
        let mut engine_then = engine_before;
        while started.elapsed() < opts.duration && !stop.load(Ordering::Relaxed) {
            let left = opts.duration.saturating_sub(started.elapsed());
            std::thread::sleep(left.min(Duration::from_millis(100)));
            if started.elapsed() >= report_at {
                let done = completed.load(Ordering::Relaxed);
                let engine = backend.engine_stats();
                let log_append_ms = match (&engine_then, &engine) {
                    (Some(s0), Some(s1)) if s1.log_appends > s0.log_appends => Some(
                        (s1.log_append_micros - s0.log_append_micros) as f64
                            / 1e3
                            / (s1.log_appends - s0.log_appends) as f64,
                    ),
                    _ => None,
                };
                let work = match (&engine_then, &engine) {
                    (Some(s0), Some(s1)) => Some(EngineWork::between(s0, s1)),
                    _ => None,
                };
                engine_then = engine;
                let row = Interval {
                    end_s: report_at.as_secs_f64(),
                    tps: (done - reported) as f64 / every.as_secs_f64(),
                    disk_bytes: backend.disk_bytes(),
                    rss_bytes: resident_bytes(),
                    log_append_ms,
                    held: engine.as_ref().map(Held::of),
                    engine: work,
                };
                let mib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{}", b >> 20));
                let held = row.held.map_or(String::new(), |h| {
                    format!(
                        " (row caches {}, block caches {}, memtables {}, table readers {})",
                        h.row_cache >> 20,
                        h.block_cache >> 20,
                        h.memtables >> 20,
                        h.table_readers >> 20
                    )
                });
                let append =
                    log_append_ms.map_or(String::new(), |ms| format!(", log append {ms:.3} ms"));
                let shards = work.map_or(String::new(), |w| {
                    let t = w.shard_time_pct;
                    format!(
                        "; shards {:.0} µs a transaction, {:.0}% working, {:.0}% writing, \
                         {:.0}% waiting for each other; row caches answered {:.1}% of reads, \
                         refused {:.2} written rows a transaction",
                        w.shard_us_per_entry,
                        t.working,
                        t.writing,
                        t.awaiting_peer,
                        w.row_cache_hit_pct,
                        w.row_cache_refused_per_entry
                    )
                });
                eprintln!(
                    "  {:>5} s: {done} transactions ({:.0}/s in the last {} s), disk {} MiB, \
                     resident {} MiB{held}{append}{shards}",
                    report_at.as_secs(),
                    row.tps,
                    every.as_secs(),
                    mib(row.disk_bytes),
                    mib(row.rss_bytes),
                );
                intervals.lock().unwrap_or_else(|e| e.into_inner()).push(row);
                (report_at, reported) = (report_at + every, done);
            }
            if let Some(after) = opts.backup_after
                && backup.is_none()
                && started.elapsed() >= after
            {
                let acked = new_orders.load(Ordering::SeqCst);
                let at = started.elapsed().as_secs_f64();
                eprintln!(
                    "  {at:.0} s: backing up to {} ({acked} New-Orders acknowledged)",
                    backup_dir(opts).display()
                );
                let job = s.spawn(move || {
                    let t = Instant::now();
                    backend.backup(&backup_dir(opts)).map(|()| t.elapsed().as_secs_f64())
                });
                backup = Some((at, acked, job));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let taken: Option<Taken> =
            backup.map(|(at, acked, job): (f64, u64, std::thread::ScopedJoinHandle<'_, _>)| {
                (at, acked, job.join().unwrap_or_else(|_| Err("the backup panicked".into())))
            });
        let results: Vec<ClientResult> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap_or_else(|_| vec![Err("a client panicked".into())]))
            .collect();
        (results, taken, (started, engine_before))
    });
    let engine =
        engine_before.zip(backend.engine_stats()).map(|(b, a)| EngineWork::between(&b, &a));
    let elapsed = started.elapsed().as_secs_f64();
    let backup = match backup_taken {
        Some((at_s, acked_new_orders, took)) => Some(BackupCheck {
            at_s,
            took_s: took?,
            acked_new_orders,
            restored_new_orders: 0,
            restored_failures: Vec::new(),
        }),
        None => None,
    };
    let (mut by_kind, mut rollbacks, mut retries) = (BTreeMap::<Kind, Latencies>::new(), 0, 0);
    for r in results {
        let (samples, rb, rt) = r?;
        rollbacks += rb;
        retries += rt;
        for (kind, latencies) in samples {
            by_kind.entry(kind).or_default().merge(&latencies);
        }
    }
    let total = by_kind.values().map(Latencies::count).sum::<u64>() as usize;
    let new_orders = by_kind.get(&Kind::NewOrder).map_or(0, Latencies::count) - rollbacks;
    let latency_ms = by_kind
        .iter()
        .map(|(kind, samples)| {
            let count = samples.count() as usize;
            let l = samples.summary();
            (
                kind.name().to_string(),
                TypeLatency { p50: l.p50_ms, p95: l.p95_ms, p99: l.p99_ms, count },
            )
        })
        .collect();
    eprintln!("  checking consistency");
    let failures = backend.check(opts.warehouses)?;
    Ok(Report {
        backend: backend.name().into(),
        warehouses: opts.warehouses,
        clients: opts.clients,
        duration_s: elapsed,
        mix: opts.mix,
        tpmc: new_orders as f64 * 60.0 / elapsed,
        throughput_tps: total as f64 / elapsed,
        latency_ms,
        rollbacks,
        retries,
        consistency: failures.is_empty(),
        consistency_failures: failures,
        population: opts.population,
        scaled: opts.population.is_scaled(),
        load_s,
        intervals: intervals.into_inner().unwrap_or_else(|e| e.into_inner()),
        backup,
        engine,
    })
}

/// Where a run's backup goes: next to the database directory.
fn backup_dir(opts: &TpccOptions) -> PathBuf {
    std::env::temp_dir().join(format!("sealdb-tpcc-backup-{}-{}", std::process::id(), opts.seed))
}

/// Restores the run's backup into a new directory, opens it as the run opened its database
/// (the same column families), and fills in what it holds.
fn check_backup(
    opts: &TpccOptions,
    shards: u32,
    embedded: &Embedded,
    check: &mut BackupCheck,
) -> Result<(), String> {
    let from = backup_dir(opts);
    let to = from.with_extension("restored");
    let result = (|| {
        embedded::restore(&from, &to).map_err(|e| e.to_string())?;
        let restored = Sealdb::open_with(Some(&to), opts.warehouses, shards, embedded)?;
        let (_, districts) = restored.read(|s| check::facts(s, opts.warehouses))?;
        let loaded = u64::from(opts.population.customers);
        check.restored_new_orders =
            districts.iter().map(|d| u64::from(d.next_o_id) - 1 - loaded).sum();
        check.restored_failures = restored.check(opts.warehouses)?;
        restored.db.close().map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir_all(&from);
    let _ = std::fs::remove_dir_all(&to);
    result
}

/// How to open the embedded database the benchmark runs on.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// Its directory (default: a temporary one, removed afterwards).
    pub dir: Option<PathBuf>,
    /// Shards (default: [`default_shards`]).
    pub shards: Option<u32>,
    /// How far back reads at a timestamp go; older versions are collected.
    pub retention: Duration,
    /// Each shard's RocksDB block cache.
    pub block_cache_bytes: usize,
    /// The row cache over all shards (default [`ROW_CACHE_BYTES`]).
    pub row_cache_bytes: usize,
    /// How shards run single-shard procedures.
    pub plan: txn::Plan,
    /// Whether shards write through RocksDB's write-ahead log.
    pub rocksdb_wal: bool,
    /// Each shard's RocksDB writes table files back every this many bytes (0: the kernel
    /// chooses).
    pub rocksdb_bytes_per_sync: u64,
    /// At most this many bytes a second of each shard's flush and compaction writes.
    pub rocksdb_background_bytes_per_sec: Option<u64>,
    /// Level-0 files of each shard's RocksDB that start a compaction.
    pub rocksdb_l0_compaction_trigger: u32,
    /// Each shard's RocksDB cuts compactions' output into files of about this many bytes.
    pub rocksdb_table_file_bytes: u64,
    /// Windows each shard may have applied and not yet written into its storage.
    pub write_behind: usize,
    /// Bytes of each shard's main-family writes held as sorted runs and ingested.
    pub held_run_bytes: usize,
    /// Whether each shard's RocksDB keeps the appended tables in a column family of their
    /// own ([`schema::appended_prefixes`]).
    pub appended_apart: bool,
    /// Whether each shard's RocksDB flushes and compacts at the lowest CPU priority.
    pub rocksdb_low_priority_background: bool,
    /// Whether each shard thread has a CPU of its own, the clients' threads keeping off it
    /// (default true; [`embedded::Options::own_cores`]).
    pub own_cores: bool,
    /// How the clients run: tasks on one thread (default), or a thread each.
    pub driver: crate::Driver,
}

impl Default for Embedded {
    fn default() -> Embedded {
        let defaults = Options::default();
        Embedded {
            dir: None,
            shards: None,
            retention: defaults.retention,
            block_cache_bytes: defaults.block_cache_bytes,
            row_cache_bytes: ROW_CACHE_BYTES,
            plan: defaults.plan,
            rocksdb_wal: defaults.rocksdb_wal,
            rocksdb_bytes_per_sync: defaults.rocksdb_bytes_per_sync,
            rocksdb_background_bytes_per_sec: defaults.rocksdb_background_bytes_per_sec,
            rocksdb_l0_compaction_trigger: defaults.rocksdb_l0_compaction_trigger,
            rocksdb_table_file_bytes: TABLE_FILE_BYTES,
            write_behind: defaults.write_behind,
            held_run_bytes: defaults.held_run_bytes,
            appended_apart: true,
            rocksdb_low_priority_background: defaults.rocksdb_low_priority_background,
            own_cores: true,
            driver: crate::Driver::Async,
        }
    }
}

/// The embedded database's shards when not told: one per two cores. Each shard keeps two
/// threads busy, the one applying its windows and the one writing them into RocksDB
/// (write-behind), beside the sequencer's and the clients'; on the README's two cores one
/// shard committed more than two at every level measured (Figures, 2026-12-04).
pub fn default_shards() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    (cores / 2).max(1)
}

/// Loads and runs the benchmark on an embedded sealdb as `embedded` says.
pub fn run_sealdb(opts: &TpccOptions, embedded: &Embedded) -> Result<Report, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = embedded.dir.clone().unwrap_or_else(|| temp.path().join("tpcc"));
    let shards = embedded.shards.unwrap_or_else(default_shards);
    let backend = Sealdb::open_with(Some(&dir), opts.warehouses, shards, embedded)?;
    let off = if node::allocator::huge_pages_disabled() {
        let most = node::allocator::MAX_HUGE_PAGE_THREADS;
        format!(" (off for this process: more than {most} client threads)")
    } else {
        String::new()
    };
    let cores = match backend.db.shard_cpus() {
        Some(cpus) => format!("shard threads on CPUs {cpus:?}, the clients on the others"),
        None if embedded.own_cores => {
            "shard threads share the CPUs (no more CPUs than shards)".into()
        }
        None => "shard threads share the CPUs (--shared-cores)".into(),
    };
    eprintln!(
        "  database in {}; transparent huge pages: {}{off}; {cores}",
        dir.display(),
        node::allocator::transparent_huge_pages().as_deref().unwrap_or("unknown")
    );
    let load_s = load(&backend, opts)?;
    let mut report = drive(&backend, opts, load_s)?;
    if let Some(work) = &report.engine {
        let t = &work.shard_time_pct;
        eprintln!(
            "  engine: {} windows, {:.1} entries per window, {} single-shard procedures \
             re-executed after losing validation ({:.1}% of entries), {} run once serially, {} \
             aborts\n  shard threads: {:.1}% working, {:.1}% writing, waiting {:.1}% for a \
             window, {:.1}% for its log append, {:.1}% for the other shards; {:.0} µs working \
             or writing a transaction; row caches answered {:.1}% of point reads",
            work.windows,
            work.entries_per_window,
            work.reexecuted,
            work.reexecuted_pct,
            work.serial,
            work.aborts,
            t.working,
            t.writing,
            t.awaiting_window,
            t.awaiting_durable,
            t.awaiting_peer,
            work.shard_us_per_entry,
            work.row_cache_hit_pct,
        );
    }
    if let Some(hw) = backend.db.clock().high_water_stats() {
        eprintln!(
            "  clock: {} high-water bounds written, {} waited for by a caller",
            hw.writes, hw.waited
        );
    }
    backend.db.close().map_err(|e| e.to_string())?;
    if let Some(check) = &mut report.backup {
        check_backup(opts, shards, embedded, check)?;
        eprintln!(
            "  backup at {:.0} s took {:.1} s; restored: {} New-Orders ({} acknowledged before \
             it), consistency {}",
            check.at_s,
            check.took_s,
            check.restored_new_orders,
            check.acked_new_orders,
            match check.restored_failures.is_empty() {
                true => "passed".to_string(),
                false => format!("FAILED: {:?}", check.restored_failures),
            }
        );
    }
    Ok(report)
}

/// Loads and runs the benchmark on PostgreSQL at `url`, in the schema `tpcc` (an existing one
/// is refused unless `replace`).
pub fn run_postgres(opts: &TpccOptions, url: &str, replace: bool) -> Result<Report, String> {
    let backend = postgres::Postgres::create(url, "tpcc", replace)?;
    let load_s = load(&backend, opts)?;
    drive(&backend, opts, load_s)
}

/// Loads `backend`, returning the seconds it took.
pub(crate) fn load(backend: &dyn Backend, opts: &TpccOptions) -> Result<f64, String> {
    eprintln!("  loading {} warehouse(s) into {}", opts.warehouses, backend.name());
    let started = Instant::now();
    backend.load(opts.warehouses, opts.population, opts.seed)?;
    let load_s = started.elapsed().as_secs_f64();
    eprintln!("  loaded in {load_s:.1} s; running {} s", opts.duration.as_secs());
    Ok(load_s)
}
