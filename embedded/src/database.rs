//! [`Database`]: sealdb in one process: the sequencer and N shards on threads (DESIGN.md
//! section 9, embedded).
//!
//! ```text
//!   call / commit ──> sequencer thread ──(durable windows, ticks)──> shard thread 0 ─┐
//!        ^                                                          shard thread 1 ─┼─> RocksDB
//!        └────────── outcome (from the entry's lowest participant) ─ shard thread N ─┘
//! ```
//!
//! Each shard thread applies every window in epoch order with the [`Executor`]: it waits until
//! every shard has applied the previous window (so `Snap(e-1)` is readable everywhere), runs
//! phases A and B, exchanges local verdicts of multi-shard entries on a shared board, finishes,
//! and writes the window's batch together with its watermark, its local verdicts and its
//! deferred entries. Shards take each window as soon as it is sealed and execute it while the
//! sequencer fsyncs it; the write waits until the window is durable, so nothing of a window
//! the log lost is ever stored or answered. The batch is queued for a writer thread of the
//! shard's own ([`storage::WriteBehind`], [`Options::write_behind`]): reads see it at once, and
//! the shard thread goes on to the next window while RocksDB takes it. After a crash, each
//! shard resumes from its watermark (the last batch its RocksDB took): the sequencer replays
//! the log from there, deferred entries come back from storage, and a participant that had
//! already applied a window answers the exchange from its stored verdicts.
//!
//! A caller registers for its entry's outcome by client id before submitting, so an outcome
//! can never arrive unobserved; the entry's lowest participant delivers it after the apply.
//! Committed outcomes are acknowledged after commit-wait (`max_offset`, zero by default in
//! one process).
//!
//! Procedures are registered in [`Options`] before opening, not afterwards: replay after a
//! restart must find every procedure the log names.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clock::{Clock, SystemClock, Timestamp};
use sequencer::{
    ClientId, Delivery, Feedback, SealerConfig, Sequencer, SequencerError, ShardId, TxnId,
};
use storage::{
    Engine, Epoch, KeyRange, Limits, MemoryEngine, Mvcc, RocksEngine, RocksOptions, StorageError,
    WriteBehind,
};
use tokio::sync::oneshot;

use txn::{
    Command, Event, Executor, Outcome, OutcomeCounters, Peers, Plan, Procedure, Registry, Request,
    Rows, ShardMap, Step, StepError, TxnError, participants, procedure_request, refused,
    stored_verdicts,
};

use crate::cores::CorePlan;

/// How to open a [`Database`].
#[derive(Clone)]
pub struct Options {
    /// Number of shards when no `shard_map` is given (default: one per core).
    pub shards: u32,
    /// Which shard owns which keys (default: [`ShardMap::uniform`] over `shards`).
    pub shard_map: Option<ShardMap>,
    /// When windows are sealed. Deduplication is off whatever `dedup_windows` says: the
    /// database submits each call once, under an id of its own, so remembering ids would
    /// only cost memory and time (and keep the log's windows for as long).
    pub sealer: SealerConfig,
    /// Maximum clock offset; commit-wait lasts about this long (default 0 in one process).
    pub max_offset: Duration,
    /// Size limits.
    pub limits: Limits,
    /// How far back reads at a timestamp may go (default 60 s).
    pub retention: Duration,
    /// Bytes of each shard's row cache: the newest versions of recently used keys, which
    /// serve most reads of window execution (default 128 MiB; 0 turns it off).
    pub row_cache_bytes: usize,
    /// Bytes of each shard's RocksDB block cache (default 256 MiB). Index and filter blocks
    /// are partitioned, so a lookup caches only the parts it needs: in the README's
    /// 30-minute soak, 256 MiB a shard kept the last third's throughput as the database grew
    /// to 3.7 GB.
    pub block_cache_bytes: usize,
    /// Keep shard data in memory (tests); the log still goes to a temporary directory.
    pub in_memory: bool,
    /// How often each shard flushes its storage, after which the log's segments below what
    /// every shard flushed are deleted (default 30 s).
    pub flush_interval: Duration,
    /// The procedures `call` can run.
    pub procedures: Registry,
    /// How shards run single-shard procedures (default [`Plan::Serial`]: once each, in id
    /// order, after the window's validated entries).
    pub plan: Plan,
    /// Whether shards write through RocksDB's write-ahead log (default true). The window
    /// log is durable before anything is applied, so it can serve alone, as Calvin's does:
    /// without RocksDB's, a shard killed reopens at its last flush (at most `flush_interval`
    /// old) and replays the windows after it from the log, which keeps them.
    pub rocksdb_wal: bool,
    /// Each shard's RocksDB writes its table files back every this many bytes (default
    /// [`storage::DEFAULT_BYTES_PER_SYNC`]; 0: when the kernel chooses).
    pub rocksdb_bytes_per_sync: u64,
    /// At most this many bytes a second of each shard's flush and compaction writes (default
    /// none).
    pub rocksdb_background_bytes_per_sec: Option<u64>,
    /// Level-0 files of each shard's RocksDB that start a compaction (default
    /// [`storage::DEFAULT_L0_COMPACTION_TRIGGER`]; see
    /// [`storage::RocksOptions::l0_compaction_trigger`]).
    pub rocksdb_l0_compaction_trigger: u32,
    /// Each shard's RocksDB cuts compactions' output into table files of about this many
    /// bytes (default [`storage::DEFAULT_TABLE_FILE_BYTES`]; see
    /// [`storage::RocksOptions::table_file_bytes`]).
    pub rocksdb_table_file_bytes: u64,
    /// Windows each shard may have applied and not yet written into its storage engine
    /// (default [`storage::DEFAULT_WRITE_BEHIND`]; 0 writes each on the shard's thread). A
    /// thread per shard writes them in order ([`storage::WriteBehind`]) while the shard thread
    /// goes on to the next window, whose reads see them at once. A process killed meanwhile
    /// loses them from the engine only: the shard reopens at its last written window and
    /// replays the rest from the log, which keeps every window after the last flush.
    pub write_behind: usize,
    /// Bytes of each shard's writes to RocksDB's main column family held as sorted runs
    /// and ingested as one table file, instead of inserted into its memtable (default
    /// [`storage::DEFAULT_HELD_BYTES`]; 0 inserts them; see [`storage::WriteBehind::holding`]).
    /// Needs `write_behind` above 0. A process killed loses what is held from the engine
    /// only, as with `write_behind`: the shard replays it from the log.
    pub held_run_bytes: usize,
    /// User-key prefixes whose versions each shard's RocksDB keeps in a column family of
    /// their own (default none; see [`storage::RocksOptions::apart`]): tables that grow by
    /// appends and are seldom read back. A database must be reopened with the same list.
    pub rocksdb_apart: Vec<Vec<u8>>,
    /// Inserts into that column family start from the last insert under the same first
    /// this-many engine-key bytes (default 0: off; see
    /// [`storage::RocksOptions::apart_hint_bytes`]). Any value stores and reads the same.
    pub rocksdb_apart_hint_bytes: usize,
    /// Whether RocksDB's flush and compaction threads run at the lowest CPU priority (default
    /// true; see [`storage::RocksOptions::low_priority_background`]): on a machine with no
    /// core to spare they take what the shard threads leave idle instead of preempting them.
    /// Process-wide once lowered.
    pub rocksdb_low_priority_background: bool,
    /// Whether each shard thread runs on a CPU of its own (Linux; default false). If the
    /// opening thread may use more CPUs than there are shards, each shard thread is moved to
    /// one of the last of them, and the database's other threads (the sequencer, the
    /// answering thread, each shard's write-behind and ingest threads) run on the others;
    /// RocksDB's background threads, at the lowest priority, may run on all of them. So
    /// nothing of the database's preempts a shard thread, while the time it leaves idle is
    /// still used. With as many shards as CPUs (the default shard count) it does nothing.
    /// The application's threads stay where they are: [`Database::keep_off_shard_cpus`]
    /// moves one. Off by default: two databases in one process would pin their shards to
    /// the same CPUs (README, Figures, "A core for the shard thread").
    pub own_cores: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            shard_map: None,
            sealer: SealerConfig::default(),
            max_offset: Duration::ZERO,
            limits: Limits::default(),
            retention: Duration::from_secs(60),
            row_cache_bytes: storage::DEFAULT_ROW_CACHE_BYTES,
            block_cache_bytes: storage::DEFAULT_BLOCK_CACHE_BYTES,
            in_memory: false,
            flush_interval: FLUSH_EVERY,
            procedures: Registry::new(),
            plan: Plan::default(),
            rocksdb_wal: true,
            rocksdb_bytes_per_sync: storage::DEFAULT_BYTES_PER_SYNC,
            rocksdb_background_bytes_per_sec: None,
            rocksdb_l0_compaction_trigger: storage::DEFAULT_L0_COMPACTION_TRIGGER,
            rocksdb_table_file_bytes: storage::DEFAULT_TABLE_FILE_BYTES,
            write_behind: storage::DEFAULT_WRITE_BEHIND,
            held_run_bytes: storage::DEFAULT_HELD_BYTES,
            rocksdb_apart: Vec::new(),
            rocksdb_apart_hint_bytes: 0,
            rocksdb_low_priority_background: true,
            own_cores: false,
        }
    }
}

impl Options {
    /// Defaults, with shard data in memory.
    pub fn in_memory() -> Options {
        Options { in_memory: true, ..Options::default() }
    }

    /// Adds a procedure.
    pub fn procedure(mut self, procedure: Arc<dyn Procedure>) -> Options {
        self.procedures.register(procedure);
        self
    }
}

/// Per-shard progress, for waits on `Snap(e-1)` and safe time.
#[derive(Debug, Clone, Copy)]
struct Progress {
    applied: Epoch,
    /// Every window at or below this timestamp is applied.
    safe: Timestamp,
    /// Every window up to this one is durable in the shard's storage (flushed), and its
    /// timestamp.
    durable: Epoch,
    durable_ts: Timestamp,
}

/// Each shard makes its storage durable this often by default, so the log can be truncated
/// below ([`Options::flush_interval`]).
const FLUSH_EVERY: Duration = Duration::from_secs(30);

/// The shards' local verdicts of multi-shard entries, by window and shard: where the shards
/// of one process exchange them (a shard server pulls them from its peers instead).
#[derive(Default)]
struct Board {
    posted: BTreeMap<(Epoch, ShardId), Vec<(TxnId, bool)>>,
}

pub(crate) struct Inner {
    pub(crate) clock: Arc<Clock>,
    pub(crate) map: ShardMap,
    pub(crate) registry: Registry,
    pub(crate) limits: Limits,
    pub(crate) retention: Duration,
    /// How often each shard flushes its storage ([`Options::flush_interval`]).
    flush_interval: Duration,
    pub(crate) shards: Vec<Arc<Mvcc>>,
    progress: Mutex<Vec<Progress>>,
    progress_changed: Condvar,
    /// Backups under way: the log is not truncated meanwhile, nor the GC floor raised.
    backups: AtomicU64,
    /// The timestamp of the oldest window a shard flushed: after a crash, no shard replays
    /// from below it, so no shard's GC horizon may pass it (a replay reads every shard at its
    /// window's snapshot).
    gc_floor: txn::GcFloor,
    /// The same, for async waiters.
    progress_notify: tokio::sync::Notify,
    board: Mutex<Board>,
    board_changed: Condvar,
    waiters: Waiters,
    /// Set when the database starts closing: the log's end is then expected.
    closing: AtomicBool,
    stopping: AtomicBool,
    failure: Mutex<Option<String>>,
    client_salt: u64,
    next_client: AtomicU64,
    /// The newest commit timestamp returned to a caller, and at least the clock's time at
    /// open (above every commit an earlier run returned). A transaction or `Latest` snapshot
    /// that begins when every shard is safe at or above it sees every commit returned before
    /// it began.
    pub(crate) returned_ts: AtomicU64,
    stats: StatCounters,
}

/// Counters behind [`Stats`].
#[derive(Default)]
struct StatCounters {
    windows: AtomicU64,
    entries: AtomicU64,
    outcomes: OutcomeCounters,
    /// Nanoseconds of the shard threads, all shards together, by what they spent them on.
    shard_nanos: [AtomicU64; ShardTime::PARTS],
}

/// Where the shard threads' time went since the database was opened, in microseconds summed
/// over the shards: what makes a window wait, when they are not working.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardTime {
    /// Waiting for the next window, none in progress.
    pub awaiting_window: u64,
    /// Waiting with a window executed for its log append (write and fsync) to finish.
    pub awaiting_durable: u64,
    /// Waiting for another shard: to apply the window before (remote reads of `Snap(e-1)`)
    /// or to post its local verdicts of this window.
    pub awaiting_peer: u64,
    /// Writing windows' batches to storage (and flushing it).
    pub writing: u64,
    /// Everything else: executing windows, reading storage, answering callers.
    pub working: u64,
}

impl ShardTime {
    const PARTS: usize = 5;

    fn from_nanos(nanos: &[AtomicU64; ShardTime::PARTS]) -> ShardTime {
        let [awaiting_window, awaiting_durable, awaiting_peer, writing, working] =
            std::array::from_fn(|i| nanos[i].load(Ordering::Relaxed) / 1_000);
        ShardTime { awaiting_window, awaiting_durable, awaiting_peer, writing, working }
    }
}

/// Indexes of [`StatCounters::shard_nanos`], in [`ShardTime`]'s order.
#[derive(Clone, Copy)]
enum Spent {
    AwaitingWindow,
    AwaitingDurable,
    AwaitingPeer,
    Writing,
}

/// What the database has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Windows applied.
    pub windows: u64,
    /// Log entries in them.
    pub entries: u64,
    /// Transactions committed.
    pub committed: u64,
    /// Of those, single-shard procedures committed by re-execution after losing validation.
    pub fallbacks: u64,
    /// Of those, single-shard procedures committed by their one serial run.
    pub serial: u64,
    /// Interactive transactions that failed validation.
    pub conflicts: u64,
    /// Transactions aborted.
    pub aborts: u64,
    /// The first window the log still holds (the ones before were truncated once every
    /// shard had flushed them).
    pub log_first: Epoch,
    /// Bytes of the log's files.
    pub log_bytes: u64,
    /// Windows the log appended.
    pub log_appends: u64,
    /// Microseconds those appends took (write and fsync).
    pub log_append_micros: u64,
    /// Where the shard threads' time went.
    pub shard_time: ShardTime,
    /// Bytes the shards' row caches hold now.
    pub row_cache_bytes: u64,
    /// Point reads the shards' row caches answered, and reads they sent to the engine.
    pub row_cache_hits: u64,
    /// See `row_cache_hits`.
    pub row_cache_misses: u64,
    /// Written rows the shards' full row caches did not take, since too few of those they took
    /// lately were read ([`storage::CacheStats::writes_refused`]).
    pub row_cache_writes_refused: u64,
    /// Memory the shards' storage engines hold now.
    pub engine_memory: storage::EngineMemory,
}

impl Inner {
    /// Wakes everyone waiting on shards' progress, threads and tasks.
    fn progress_moved(&self) {
        self.progress_changed.notify_all();
        self.progress_notify.notify_waiters();
    }

    /// Waits until `done` holds for the shards' progress, asking `running` between waits
    /// whether to give up.
    fn wait_progress<E>(
        &self,
        done: impl Fn(&[Progress]) -> bool,
        running: impl Fn() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut progress = lock(&self.progress);
        while !done(&progress) {
            running()?;
            progress = self
                .progress_changed
                .wait_timeout(progress, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }
}

/// Who waits for which entry's outcome, in stripes so 64 clients do not queue on one lock.
/// A sender gets the outcome, or why the entry was never logged; dropped unanswered, it means
/// the outcome is unknown.
struct Waiters([Mutex<HashMap<ClientId, WaiterSender>>; 16]);

/// What a waiter gets: the outcome, or why the entry was never logged.
type Reply = Result<Outcome, TxnError>;
type WaiterSender = oneshot::Sender<Reply>;

impl Default for Waiters {
    fn default() -> Waiters {
        Waiters(std::array::from_fn(|_| Mutex::new(HashMap::new())))
    }
}

/// What a shard thread hands the answering thread ([`answer`]).
enum Answer {
    /// Outcomes of a window's entries, for their callers.
    Outcomes(Vec<(ClientId, Outcome)>),
    /// The database failed: every caller still waiting learns so, once every outcome handed
    /// over before this is delivered.
    Fail,
}

/// The answering thread: delivers outcomes to their callers in the order the shards hand them
/// over, until every shard thread has stopped. Waking a caller is a system call, after which
/// the woken thread often takes the core it was woken from; done on the shard threads, each
/// window paid for one per entry (a tenth of a shard thread's time under TPC-C), and the
/// shard thread, which every caller waits for, was the one set aside.
fn answer(inner: &Inner, answers: Receiver<Answer>) {
    for answer in answers {
        match answer {
            Answer::Outcomes(outcomes) => deliver(inner, outcomes),
            Answer::Fail => inner.waiters.clear(),
        }
    }
}

/// Gives each caller still waiting its outcome.
fn deliver(inner: &Inner, outcomes: Vec<(ClientId, Outcome)>) {
    for (client, outcome) in outcomes {
        if let Some(tx) = inner.waiters.remove(client) {
            let _ = tx.send(Ok(outcome));
        }
    }
}

impl Waiters {
    fn stripe(&self, client: ClientId) -> MutexGuard<'_, HashMap<ClientId, WaiterSender>> {
        lock(&self.0[client.0 as usize % self.0.len()])
    }

    fn insert(&self, client: ClientId, tx: WaiterSender) {
        self.stripe(client).insert(client, tx);
    }

    fn remove(&self, client: ClientId) -> Option<WaiterSender> {
        self.stripe(client).remove(&client)
    }

    fn clear(&self) {
        for stripe in &self.0 {
            lock(stripe).clear();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An embedded sealdb database.
pub struct Database {
    pub(crate) inner: Arc<Inner>,
    sequencer: Option<Sequencer>,
    /// The shard threads, then the answering thread ([`answer`]), which ends after them.
    threads: Vec<JoinHandle<()>>,
    /// The database directory.
    path: std::path::PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// The shard threads' CPUs and the others', if [`Options::own_cores`] reserved them.
    cores: Option<CorePlan>,
}

/// What [`Database::backup`] wrote (and [`restore`] found): a database directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// Each shard's watermark in the copy: the last window it had applied.
    pub shards: Vec<Epoch>,
    /// The first window of the copied log (at most one after the oldest watermark).
    pub log_first: Epoch,
}

/// The manifest a backup directory holds, last written: a directory without it is not a
/// whole backup.
const MANIFEST: &str = "BACKUP";

impl Backup {
    fn encode(&self) -> String {
        let shards: Vec<String> = self.shards.iter().map(|e| e.0.to_string()).collect();
        format!("sealdb backup\nshards {}\nlog_first {}\n", shards.join(","), self.log_first.0)
    }

    fn decode(text: &str) -> Option<Backup> {
        let mut lines = text.lines();
        (lines.next()? == "sealdb backup").then_some(())?;
        let shards = lines.next()?.strip_prefix("shards ")?;
        let shards = shards.split(',').map(|e| e.parse().ok().map(Epoch)).collect::<Option<_>>()?;
        let log_first = Epoch(lines.next()?.strip_prefix("log_first ")?.parse().ok()?);
        Some(Backup { shards, log_first })
    }
}

fn io(what: &Path) -> impl Fn(std::io::Error) -> TxnError + '_ {
    move |e| TxnError::Storage(format!("{}: {e}", what.display()))
}

/// Fsyncs the file or directory `path`.
fn sync(path: &Path) -> Result<(), TxnError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

/// Copies the files of `from` into `to` (created), recursively, each synced.
fn copy_tree(from: &Path, to: &Path) -> Result<(), TxnError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(io(from))?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).map_err(io(&target))?;
            sync(&target)?;
        }
    }
    sync(to)
}

/// Makes `to` (which must not exist) a copy of the backup in `from`, ready to open with
/// [`Database::open`] and the options the backed-up database had (its shard map above all).
/// Refuses a directory that is not a whole backup. Returns what the backup holds.
pub fn restore(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<Backup, TxnError> {
    let (from, to) = (from.as_ref(), to.as_ref());
    let manifest = std::fs::read_to_string(from.join(MANIFEST)).map_err(io(from))?;
    let backup = Backup::decode(&manifest).ok_or_else(|| {
        TxnError::Storage(format!(
            "{}: not a sealdb backup (its {MANIFEST} does not read)",
            from.display()
        ))
    })?;
    if to.exists() {
        return Err(TxnError::Storage(format!(
            "{}: exists; restore into a new directory",
            to.display()
        )));
    }
    copy_tree(from, to)?;
    Ok(backup)
}

impl Database {
    /// Opens (or creates) the database in `path` and recovers whatever it holds.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Database, TxnError> {
        let temp = if options.in_memory {
            Some(tempfile::tempdir().map_err(|e| TxnError::Storage(e.to_string()))?)
        } else {
            None
        };
        let path = temp.as_ref().map_or(path.as_ref(), |t| t.path()).to_path_buf();
        std::fs::create_dir_all(&path)
            .map_err(|e| TxnError::Storage(format!("{}: {e}", path.display())))?;
        let map = options.shard_map.clone().unwrap_or_else(|| ShardMap::uniform(options.shards));
        let storage = |e: storage::StorageError| TxnError::Storage(e.to_string());

        let clock = Clock::open(path.join("clock"), Arc::new(SystemClock), options.max_offset)
            .map_err(|e| TxnError::Storage(e.to_string()))?;
        let clock = Arc::new(clock);
        let cores = match options.own_cores {
            true => CorePlan::new(map.len() as usize),
            false => None,
        };
        if options.own_cores && cores.is_none() {
            tracing::warn!(
                shards = map.len(),
                "own_cores: this thread may not use more CPUs than there are shards; the shard \
                 threads share them with the others"
            );
        }
        let mut engines = Vec::new();
        for s in map.shards() {
            let engine: Arc<dyn Engine> = if options.in_memory {
                Arc::new(MemoryEngine::new())
            } else {
                let dir = path.join(format!("shard-{}", s.0));
                let rocks = RocksOptions {
                    block_cache_bytes: options.block_cache_bytes,
                    wal: options.rocksdb_wal,
                    bytes_per_sync: options.rocksdb_bytes_per_sync,
                    background_bytes_per_sec: options.rocksdb_background_bytes_per_sec,
                    l0_compaction_trigger: options.rocksdb_l0_compaction_trigger,
                    table_file_bytes: options.rocksdb_table_file_bytes,
                    max_open_files: storage::open_files_allowance(map.len() as usize),
                    apart: options.rocksdb_apart.clone(),
                    apart_hint_bytes: options.rocksdb_apart_hint_bytes,
                    low_priority_background: options.rocksdb_low_priority_background,
                };
                Arc::new(RocksEngine::open_with(dir, rocks).map_err(storage)?)
            };
            engines.push(engine);
        }
        // Threads started from here on keep off the shards' CPUs (a shard's moves to its own
        // when it starts); RocksDB's background threads, started by the first open above,
        // may use every CPU.
        let narrowed = cores.as_ref().map(CorePlan::narrow);
        let mut shards = Vec::new();
        for engine in engines {
            let engine = WriteBehind::over(engine, options.write_behind, options.held_run_bytes);
            let engine = engine.map_err(storage)?;
            let mvcc = Mvcc::open_with_cache(engine, options.limits, options.row_cache_bytes);
            shards.push(Arc::new(mvcc.map_err(storage)?));
        }
        let progress = shards
            .iter()
            .map(|m| {
                let w = m.applied();
                Progress {
                    applied: w.map_or(Epoch(0), |w| w.window),
                    safe: w.map_or(Timestamp::ZERO, |w| w.ts),
                    // Not known durable until this run flushes it.
                    durable: Epoch(0),
                    durable_ts: Timestamp::ZERO,
                }
            })
            .collect();
        let sealer = SealerConfig { dedup_windows: 0, ..options.sealer };
        let (sequencer, _) =
            Sequencer::start(path.join("log"), clock.clone(), sealer).map_err(sequencer_error)?;
        // Commits the last run returned are below the clock's start (it starts above every
        // timestamp it gave before), so reads wait for a window of this run: until then the
        // shards may not have replayed them.
        let started = clock.try_now().map_err(|e| TxnError::Storage(e.to_string()))?.as_u64();
        let inner = Arc::new(Inner {
            clock,
            map: map.clone(),
            registry: options.procedures.clone(),
            limits: options.limits,
            retention: options.retention,
            flush_interval: options.flush_interval,
            shards,
            progress: Mutex::new(progress),
            progress_changed: Condvar::new(),
            backups: AtomicU64::new(0),
            gc_floor: Arc::new(AtomicU64::new(0)),
            progress_notify: tokio::sync::Notify::new(),
            board: Mutex::new(Board::default()),
            board_changed: Condvar::new(),
            waiters: Waiters::default(),
            closing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            failure: Mutex::new(None),
            client_salt: RandomState::new().hash_one(std::process::id()),
            next_client: AtomicU64::new(0),
            returned_ts: AtomicU64::new(started),
            stats: StatCounters::default(),
        });
        let mut threads = Vec::new();
        let (answers, answered) = std::sync::mpsc::channel();
        for s in map.shards() {
            let executor =
                Executor::new(s, map.clone(), options.procedures.clone(), options.limits)
                    .with_plan(options.plan);
            let peers = Arc::new(Local(inner.shards.clone()));
            let step = Step::open(executor, map.clone(), inner.shards[s.0 as usize].clone(), peers)
                .map_err(|e| TxnError::Storage(e.to_string()))?
                .collect_garbage(options.retention, inner.gc_floor.clone());
            let from = step.next_epoch();
            // Each shard executes a window while it is fsynced, and writes it once durable.
            let deliveries = sequencer.subscribe_ahead(from);
            let feedback = sequencer.feedback().ok_or(TxnError::ShuttingDown)?;
            let inner = inner.clone();
            let answers = answers.clone();
            let cores = cores.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sealdb-shard-{}", s.0))
                .spawn(move || {
                    if let Some(cores) = cores
                        && !cores.pin_shard(s.0 as usize)
                    {
                        tracing::warn!(shard = s.0, "own_cores: could not move to its CPU");
                    }
                    let shard_loop = ShardLoop {
                        inner: inner.clone(),
                        answers: answers.clone(),
                        shard: s,
                        step,
                        window_entries: 0,
                        feedback,
                        flushed_at: Instant::now(),
                        flush_pending: None,
                        inside: 0,
                    };
                    // A panic (a bug, or a procedure that panics) fails the database like any
                    // error: otherwise the other shards and every caller would wait forever.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        shard_loop.run(deliveries)
                    }));
                    if let Err(e) = run.unwrap_or_else(|panic| Err(StepError::panicked(&*panic))) {
                        tracing::error!(shard = s.0, error = %e, "shard stopped");
                        *lock(&inner.failure) = Some(e.to_string());
                        inner.stopping.store(true, Ordering::SeqCst);
                        inner.progress_moved();
                        inner.board_changed.notify_all();
                        if answers.send(Answer::Fail).is_err() {
                            inner.waiters.clear();
                        }
                    }
                })
                .map_err(|e| TxnError::Storage(e.to_string()))?;
            threads.push(thread);
        }
        // The shard threads hold the only senders: the answering thread ends after them.
        drop(answers);
        let answering = inner.clone();
        let thread = std::thread::Builder::new()
            .name("sealdb-answer".into())
            .spawn(move || answer(&answering, answered))
            .map_err(|e| TxnError::Storage(e.to_string()))?;
        threads.push(thread);
        drop(narrowed);
        Ok(Database { inner, sequencer: Some(sequencer), threads, path, _temp: temp, cores })
    }

    /// The CPU each shard thread runs on, by shard, if [`Options::own_cores`] reserved them.
    pub fn shard_cpus(&self) -> Option<Vec<usize>> {
        let cores = self.cores.as_ref()?;
        self.inner.map.shards().map(|s| cores.shard_cpu(s.0 as usize)).collect()
    }

    /// Moves the calling thread off the CPUs [`Options::own_cores`] reserved for the shard
    /// threads, for good (threads it starts after inherit that); an application calls it on
    /// the threads that call the database most, so that they do not preempt a shard thread
    /// either. False if no CPUs are reserved or the system refused.
    pub fn keep_off_shard_cpus(&self) -> bool {
        self.cores.as_ref().is_some_and(CorePlan::keep_off)
    }

    /// The shard map.
    pub fn shard_map(&self) -> &ShardMap {
        &self.inner.map
    }

    /// Writes a consistent copy of the database to `to` (which must not exist) while
    /// transactions go on: a checkpoint of every shard at a window boundary, then the log from
    /// below the oldest of them, the clock's high-water mark, and last a manifest. The copy is
    /// a database directory: opened (after [`restore`], or as it is), each shard replays the
    /// copied log from its own watermark, so it holds every transaction acknowledged before
    /// the backup began (and perhaps some after). The log is not truncated while it runs. An
    /// in-memory database has nothing on disk to copy and is refused.
    pub fn backup(&self, to: impl AsRef<Path>) -> Result<Backup, TxnError> {
        let to = to.as_ref();
        self.check_running()?;
        if to.exists() {
            return Err(TxnError::Storage(format!(
                "{}: exists; back up into a new directory",
                to.display()
            )));
        }
        let sequencer = self.sequencer.as_ref().ok_or(TxnError::ShuttingDown)?;
        let _holding = HoldTruncation::new(&self.inner);
        std::fs::create_dir_all(to).map_err(io(to))?;
        let mut shards = Vec::new();
        for (i, mvcc) in self.inner.shards.iter().enumerate() {
            let watermark = mvcc
                .checkpoint(&to.join(format!("shard-{i}")))
                .map_err(|e| TxnError::Storage(e.to_string()))?;
            shards.push(watermark.map_or(Epoch(0), |w| w.window));
        }
        let log_first = sequencer.log_reader().copy_to(&to.join("log")).map_err(sequencer_error)?;
        let oldest = shards.iter().min().copied().unwrap_or(Epoch(0));
        if log_first > oldest.next() {
            // Truncated before the hold took effect: the copy could not be replayed.
            return Err(TxnError::Storage(format!(
                "the log was truncated to {log_first} during the backup, past shard watermark \
                 {oldest}: back up again"
            )));
        }
        // The clock's high-water mark (a file): timestamps keep rising after a restore.
        let (clock, clock_copy) = (self.path.join("clock"), to.join("clock"));
        std::fs::copy(&clock, &clock_copy).map_err(io(&clock))?;
        sync(&clock_copy)?;
        let backup = Backup { shards, log_first };
        let manifest = to.join(MANIFEST);
        std::fs::write(&manifest, backup.encode()).map_err(io(&manifest))?;
        sync(&manifest)?;
        sync(to)?;
        Ok(backup)
    }

    /// Counts of windows, entries and outcomes since opening, and the log's extent.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let log = self.sequencer.as_ref().map(Sequencer::stats).unwrap_or_default();
        let cache = (self.inner.shards.iter().map(|m| m.cache_stats()))
            .fold(storage::CacheStats::default(), |a, b| a + b);
        Stats {
            log_first: log.log_first,
            log_bytes: log.log_bytes,
            log_appends: log.windows,
            log_append_micros: (log.append_seconds * 1e6) as u64,
            windows: get(&c.windows),
            entries: get(&c.entries),
            committed: get(&c.outcomes.committed),
            fallbacks: get(&c.outcomes.fallbacks),
            serial: get(&c.outcomes.serial),
            conflicts: get(&c.outcomes.conflicts),
            aborts: get(&c.outcomes.aborts),
            shard_time: ShardTime::from_nanos(&c.shard_nanos),
            row_cache_bytes: cache.bytes,
            row_cache_hits: cache.hits,
            row_cache_misses: cache.misses,
            row_cache_writes_refused: cache.writes_refused,
            engine_memory: self
                .inner
                .shards
                .iter()
                .map(|m| m.engine_memory())
                .fold(storage::EngineMemory::default(), |a, b| a + b),
        }
    }

    /// The garbage-collection horizon of the shard holding `key`: reads of it below this
    /// timestamp are refused ([`TxnError::OutsideRetention`]). It only rises.
    pub fn gc_horizon(&self, key: &[u8]) -> Timestamp {
        self.inner.shards[self.inner.map.shard_of(key).0 as usize].horizon()
    }

    /// Compacts every shard's storage (one thread per shard), as after a bulk load: later
    /// reads search fewer files, and no compaction of the loaded data is left to compete with
    /// later writes. Transactions keep running meanwhile; what they see is unchanged.
    pub fn compact(&self) -> Result<(), TxnError> {
        std::thread::scope(|s| {
            let shards: Vec<_> =
                self.inner.shards.iter().map(|mvcc| s.spawn(|| mvcc.compact())).collect();
            for shard in shards {
                let compacted =
                    shard.join().map_err(|_| TxnError::Storage("compaction panicked".into()))?;
                compacted.map_err(|e| TxnError::Storage(e.to_string()))?;
            }
            Ok(())
        })
    }

    /// The database's clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Calls the registered procedure `name` with `args`; returns its output once committed.
    /// Blocks the calling thread; inside an async runtime, use [`Database::call_async`].
    pub fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, TxnError> {
        Outcome::into_output(self.submit(self.procedure_request(name, args)?)?)
    }

    /// [`Database::call`] for async callers: waits without holding a thread, so many
    /// concurrent callers cost tasks, not threads.
    pub async fn call_async(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, TxnError> {
        Outcome::into_output(self.submit_async(self.procedure_request(name, args)?).await?)
    }

    fn procedure_request(&self, name: &str, args: &[u8]) -> Result<Request, TxnError> {
        procedure_request(&self.inner.registry, name, args)
    }

    /// Logs `request`, waits for its outcome and for commit-wait.
    pub(crate) fn submit(&self, request: Request) -> Result<Outcome, TxnError> {
        let outcome =
            self.start(request)?.blocking_recv().map_err(|_| TxnError::OutcomeUnknown)??;
        if let Some(ts) = self.commit_wait_for(&outcome) {
            self.inner.clock.commit_wait(ts);
        }
        self.returning(&outcome);
        Ok(outcome)
    }

    /// [`Database::submit`] for async callers.
    pub(crate) async fn submit_async(&self, request: Request) -> Result<Outcome, TxnError> {
        let outcome = self.start(request)?.await.map_err(|_| TxnError::OutcomeUnknown)??;
        if let Some(ts) = self.commit_wait_for(&outcome) {
            while let Some(left) = self.inner.clock.commit_wait_remaining(ts) {
                tokio::time::sleep(left).await;
            }
        }
        self.returning(&outcome);
        Ok(outcome)
    }

    /// Notes a commit about to be returned to its caller ([`Inner::returned_ts`]).
    fn returning(&self, outcome: &Outcome) {
        if let Outcome::Committed { ts, .. } = outcome {
            self.inner.returned_ts.fetch_max(ts.as_u64(), Ordering::SeqCst);
        }
    }

    /// Registers for `request`'s outcome and submits it. The receiver gets the outcome, or why
    /// the entry was never logged; if it is dropped unanswered, the outcome is unknown.
    fn start(&self, request: Request) -> Result<oneshot::Receiver<Reply>, TxnError> {
        self.check_running()?;
        request.check(&self.inner.limits).map_err(refused)?;
        let participants = participants(&self.inner.map, &request)?;
        let client = ClientId(
            (u128::from(self.inner.client_salt) << 64)
                | u128::from(self.inner.next_client.fetch_add(1, Ordering::Relaxed)),
        );
        let sequencer = self.sequencer.as_ref().ok_or(TxnError::ShuttingDown)?;
        let (tx, rx) = oneshot::channel();
        self.inner.waiters.insert(client, tx);
        // A procedure call goes with its payload, so the shard thread need not decode it.
        let entry = request.into_entry(client, participants);
        // One wake-up per transaction: the receipt matters only if the entry was not logged.
        let inner = self.inner.clone();
        sequencer.submit_then(
            entry,
            Box::new(move |receipt| {
                if let Err(e) = receipt
                    && let Some(tx) = inner.waiters.remove(client)
                {
                    let _ = tx.send(Err(sequencer_error(e)));
                }
            }),
        );
        Ok(rx)
    }

    /// The timestamp to commit-wait for, if any. Commit-wait makes every clock in the cluster
    /// pass `ts`. With a zero offset there is one clock, this one, and its HLC is already past
    /// `ts` (it stamped the window), so every later timestamp is above it; waiting for the
    /// wall clock would only add the lead the clock may carry after a restart (up to one
    /// high-water lease per restart).
    fn commit_wait_for(&self, outcome: &Outcome) -> Option<Timestamp> {
        match outcome {
            Outcome::Committed { ts, .. } if !self.inner.clock.max_offset().is_zero() => Some(*ts),
            _ => None,
        }
    }

    pub(crate) fn check_running(&self) -> Result<(), TxnError> {
        // The sequencer's own failure first: it is recorded before any caller hears of it,
        // while the shards notice it only once its thread has ended (and then say only that
        // the log ended). Asked in between, a call would be queued to a sequencer that never
        // answers it, and its caller told the outcome is unknown.
        if let Some(e) = self.sequencer.as_ref().and_then(Sequencer::failure) {
            return Err(TxnError::Storage(e));
        }
        if let Some(e) = lock(&self.inner.failure).clone() {
            return Err(TxnError::Storage(e));
        }
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err(TxnError::ShuttingDown);
        }
        Ok(())
    }

    /// Waits until every shard has applied every window at or below `ts`.
    pub(crate) fn wait_safe(&self, ts: Timestamp) -> Result<(), TxnError> {
        self.inner.wait_progress(|p| p.iter().all(|p| p.safe >= ts), || self.check_running())
    }

    /// [`Database::wait_safe`] for async callers: waits on a notification, not a thread.
    pub(crate) async fn wait_safe_async(&self, ts: Timestamp) -> Result<(), TxnError> {
        loop {
            let changed = self.inner.progress_notify.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the check, so a change after it is not missed.
            changed.as_mut().enable();
            if lock(&self.inner.progress).iter().all(|p| p.safe >= ts) {
                return Ok(());
            }
            self.check_running()?;
            let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
        }
    }

    /// The highest timestamp every shard has fully applied.
    pub(crate) fn safe_ts(&self) -> Timestamp {
        lock(&self.inner.progress).iter().map(|p| p.safe).min().unwrap_or(Timestamp::ZERO)
    }

    /// Seals and applies what was submitted, stops every thread and flushes storage.
    pub fn close(mut self) -> Result<(), TxnError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), TxnError> {
        let Some(sequencer) = self.sequencer.take() else { return Ok(()) };
        self.inner.closing.store(true, Ordering::SeqCst);
        let sealed = sequencer.shutdown().map_err(sequencer_error);
        // Shards apply everything delivered, then see the channel close.
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.waiters.clear();
        for mvcc in &self.inner.shards {
            mvcc.flush().map_err(|e| TxnError::Storage(e.to_string()))?;
        }
        sealed?;
        match lock(&self.inner.failure).clone() {
            Some(e) => Err(TxnError::Storage(e)),
            None => Ok(()),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "closing the database");
        }
    }
}

fn sequencer_error(e: SequencerError) -> TxnError {
    match e {
        SequencerError::ShuttingDown => TxnError::ShuttingDown,
        SequencerError::EntryTooLarge { bytes, max } => TxnError::TooLarge(format!(
            "transaction of {bytes} bytes exceeds the window cap of {max}"
        )),
        other => TxnError::Storage(other.to_string()),
    }
}

/// The embedded shell of one shard's [`Step`]: windows from the sequencer's channel, remote
/// reads straight from the other shards' storage once they have applied the window before,
/// verdicts through the shared board.
struct ShardLoop {
    inner: Arc<Inner>,
    /// To the answering thread ([`answer`]).
    answers: std::sync::mpsc::Sender<Answer>,
    shard: ShardId,
    step: Step,
    /// Entries of the window in progress, all shards' (for [`Stats::entries`]).
    window_entries: usize,
    /// Deferred entries run at the front of the next window; this makes sure there is one.
    /// Also told when every shard has applied a window, so the next may be sealed early,
    /// and when every shard has made a window durable, so the log may drop older ones.
    feedback: Feedback,
    /// When this shard last began flushing its storage.
    flushed_at: Instant,
    /// The window and timestamp of the flush begun and not yet finished.
    flush_pending: Option<(Epoch, Timestamp)>,
    /// Nanoseconds of the event being handled spent waiting for peers or writing.
    inside: u64,
}

impl ShardLoop {
    fn run(mut self, deliveries: Receiver<Delivery>) -> Result<(), StepError> {
        self.step.handle(Event::Started)?;
        self.perform()?;
        loop {
            let waiting = match self.step.is_busy() {
                true => Spent::AwaitingDurable,
                false => Spent::AwaitingWindow,
            };
            let since = Instant::now();
            let delivery = deliveries.recv_timeout(Duration::from_millis(100));
            self.spent(waiting, since);
            let event = match delivery {
                Ok(Delivery::Window(w)) => {
                    self.window_entries = w.entries.len();
                    Event::Window {
                        epoch: w.epoch,
                        ts: w.ts,
                        slice: w.slice(self.shard).map(|(t, e)| (t, e.clone())).collect(),
                    }
                }
                Ok(Delivery::Durable(e)) => Event::Durable(e),
                Ok(Delivery::Tick(ts)) => {
                    self.set_progress(None, ts);
                    self.confirm_flush()?;
                    continue;
                }
                Err(RecvTimeoutError::Timeout) if self.inner.failed() => return Ok(()),
                Err(RecvTimeoutError::Timeout) => {
                    self.confirm_flush()?;
                    continue;
                }
                // The sequencer stopped on its own (its log or clock failed): the windows it
                // sealed and did not report durable will never be, so their callers must hear.
                Err(RecvTimeoutError::Disconnected)
                    if !self.inner.closing.load(Ordering::SeqCst) =>
                {
                    return Err(StepError::LogEnded);
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let since = Instant::now();
            self.step.handle(event)?;
            self.perform()?;
            // Working: what the waits and writes inside did not take.
            let nanos = since.elapsed().as_nanos() as u64;
            let elsewhere = std::mem::take(&mut self.inside);
            let working = &self.inner.stats.shard_nanos[ShardTime::PARTS - 1];
            working.fetch_add(nanos.saturating_sub(elsewhere), Ordering::Relaxed);
        }
    }

    /// Counts the time since `since` as spent on `what`.
    fn spent(&mut self, what: Spent, since: Instant) {
        let nanos = since.elapsed().as_nanos() as u64;
        self.inner.stats.shard_nanos[what as usize].fetch_add(nanos, Ordering::Relaxed);
        if !matches!(what, Spent::AwaitingWindow | Spent::AwaitingDurable) {
            self.inside += nanos;
        }
    }

    /// Carries out the step's commands, feeding back what they answer, until none is left.
    fn perform(&mut self) -> Result<(), StepError> {
        while let Some(command) = self.step.next_command() {
            match command {
                Command::ReadRemote { window, shard, at, points, scans, .. } => {
                    let since = Instant::now();
                    self.inner.wait_applied(shard, Epoch(window.0 - 1))?;
                    self.spent(Spent::AwaitingPeer, since);
                    let mvcc = &self.inner.shards[shard.0 as usize];
                    let points = points
                        .into_iter()
                        .map(|key| Ok((key.clone(), mvcc.get(&key, at)?.map(|v| v.value))))
                        .collect::<Result<_, StorageError>>()?;
                    let scans = scans
                        .into_iter()
                        .map(|(range, limit)| {
                            let rows = mvcc.scan(&range, at, limit)?;
                            Ok((
                                (range, limit),
                                rows.into_iter().map(|(k, v)| (k, v.value)).collect(),
                            ))
                        })
                        .collect::<Result<_, StorageError>>()?;
                    self.step.handle(Event::RemoteRead { window, shard, points, scans })?;
                }
                Command::PublishVerdicts { window, verdicts, .. } => {
                    self.inner.post_verdicts(window, self.shard, verdicts);
                }
                // The shards share memory: a peer reads what it needs when it needs it.
                Command::PushReads { .. } | Command::PushRunReads { .. } => {}
                Command::PullVerdicts { window, from } => {
                    let since = Instant::now();
                    let verdicts = self.inner.pull_verdicts(window, from)?;
                    self.spent(Spent::AwaitingPeer, since);
                    self.step.handle(Event::Verdicts { window, from, verdicts })?;
                }
                Command::Write(batch) => {
                    let since = Instant::now();
                    self.inner.shards[self.shard.0 as usize].apply(&batch)?;
                    self.spent(Spent::Writing, since);
                }
                Command::Applied { window, ts, decided, .. } => {
                    // Counted before the progress is published: whoever sees the window
                    // applied (a `Latest` snapshot) sees it counted.
                    if self.shard == ShardId(0) {
                        let stats = &self.inner.stats;
                        stats.windows.fetch_add(1, Ordering::Relaxed);
                        stats.entries.fetch_add(self.window_entries as u64, Ordering::Relaxed);
                    }
                    self.set_progress(Some(window), ts);
                    self.confirm_flush()?;
                    if self.flush_pending.is_none()
                        && self.flushed_at.elapsed() >= self.inner.flush_interval
                    {
                        // RocksDB's flush thread writes the memtable holding this window out;
                        // the window is durable once it has (`confirm_flush`), and meanwhile
                        // this thread goes on with the next windows.
                        self.flushed_at = Instant::now();
                        self.inner.shards[self.shard.0 as usize].begin_flush()?;
                        self.spent(Spent::Writing, self.flushed_at);
                        self.flush_pending = Some((window, ts));
                        self.confirm_flush()?;
                    }
                    let stats = &self.inner.stats;
                    let mut outcomes = Vec::with_capacity(decided.len());
                    for (decided, client) in decided {
                        stats.outcomes.count(&decided);
                        outcomes.push((client, decided.outcome));
                    }
                    if !outcomes.is_empty()
                        && let Err(unsent) = self.answers.send(Answer::Outcomes(outcomes))
                    {
                        // The answering thread is gone (it panicked): answer here.
                        if let Answer::Outcomes(outcomes) = unsent.0 {
                            deliver(&self.inner, outcomes);
                        }
                    }
                }
                Command::RequestWindow { .. } => self.feedback.request_window(),
            }
        }
        Ok(())
    }

    /// Records the flush begun as durable once the storage has finished it.
    fn confirm_flush(&mut self) -> Result<(), StepError> {
        if let Some((window, ts)) = self.flush_pending
            && self.inner.shards[self.shard.0 as usize].flushed()?
        {
            self.flush_pending = None;
            self.set_durable(window, ts);
        }
        Ok(())
    }

    /// This shard's storage holds every window up to `epoch` durably; once every shard's
    /// does, the log may drop them (not while a backup copies it).
    /// Its timestamp `ts` may become the GC floor. A backup under way freezes both: the
    /// copies of its shards must replay from their checkpoints.
    fn set_durable(&self, epoch: Epoch, ts: Timestamp) {
        let mut progress = lock(&self.inner.progress);
        if self.inner.backups.load(Ordering::SeqCst) > 0 {
            return;
        }
        let me = &mut progress[self.shard.0 as usize];
        (me.durable, me.durable_ts) = (epoch, ts);
        let all = progress.iter().map(|p| p.durable).min().unwrap_or(epoch);
        let floor = progress.iter().map(|p| p.durable_ts).min().unwrap_or(ts);
        if all > Epoch(0) {
            self.feedback.durable(all);
            self.inner.gc_floor.fetch_max(floor.as_u64(), Ordering::SeqCst);
        }
    }

    fn set_progress(&self, applied: Option<Epoch>, safe: Timestamp) {
        let mut progress = lock(&self.inner.progress);
        let me = self.shard.0 as usize;
        if let Some(e) = applied {
            progress[me].applied = e;
            // The last shard to apply window e lets the sequencer seal the next one early.
            if progress.iter().all(|p| p.applied >= e) {
                self.feedback.applied(e);
            }
        }
        progress[me].safe = progress[me].safe.max(safe);
        self.inner.progress_moved();
    }
}

/// Holds the log's truncation while it lives (a backup copying the log).
struct HoldTruncation<'a>(&'a Inner);

impl HoldTruncation<'_> {
    fn new(inner: &Inner) -> HoldTruncation<'_> {
        // Under the progress lock: no shard is half-way through recording a flush.
        let _progress = lock(&inner.progress);
        inner.backups.fetch_add(1, Ordering::SeqCst);
        HoldTruncation(inner)
    }
}

impl Drop for HoldTruncation<'_> {
    fn drop(&mut self) {
        self.0.backups.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The other shards of this process, read directly: [`Command::ReadRemote`] is answered only
/// once the shard read has applied the window before, so its `Snap(e-1)` is there.
struct Local(Vec<Arc<Mvcc>>);

impl Peers for Local {
    fn get(
        &self,
        shard: ShardId,
        key: &[u8],
        at: Timestamp,
    ) -> Option<Result<Option<Vec<u8>>, StorageError>> {
        Some(self.0[shard.0 as usize].get(key, at).map(|v| v.map(|v| v.value)))
    }

    fn scan(
        &self,
        shard: ShardId,
        range: &KeyRange,
        at: Timestamp,
        limit: usize,
    ) -> Option<Result<Rows, StorageError>> {
        let rows = self.0[shard.0 as usize].scan(range, at, limit);
        Some(rows.map(|rows| rows.into_iter().map(|(k, v)| (k, v.value)).collect()))
    }
}

impl Inner {
    fn failed(&self) -> bool {
        lock(&self.failure).is_some()
    }

    fn elsewhere(&self) -> Result<(), StepError> {
        match lock(&self.failure).clone() {
            Some(why) => Err(StepError::Elsewhere(why)),
            None => Ok(()),
        }
    }

    /// Waits until `shard` has applied window `epoch`.
    fn wait_applied(&self, shard: ShardId, epoch: Epoch) -> Result<(), StepError> {
        self.wait_progress(|p| p[shard.0 as usize].applied >= epoch, || self.elsewhere())
    }

    /// Posts `shard`'s local verdicts of window `e` on the board.
    fn post_verdicts(&self, e: Epoch, shard: ShardId, verdicts: Vec<(TxnId, bool)>) {
        let mut board = lock(&self.board);
        // Windows every shard has applied are finished with. (A participant that had applied
        // a window before a restart answers from storage.)
        let oldest = lock(&self.progress).iter().map(|p| p.applied).min().unwrap_or_default();
        board.posted.retain(|(epoch, _), _| *epoch > oldest);
        board.posted.insert((e, shard), verdicts);
        self.board_changed.notify_all();
    }

    /// Waits for `from`'s local verdicts of window `e`: posted on the board, or stored once
    /// it has applied the window (before a restart).
    fn pull_verdicts(&self, e: Epoch, from: ShardId) -> Result<Vec<(TxnId, bool)>, StepError> {
        let mut board = lock(&self.board);
        loop {
            if let Some(posted) = board.posted.get(&(e, from)) {
                return Ok(posted.clone());
            }
            if lock(&self.progress)[from.0 as usize].applied >= e {
                return stored_verdicts(&self.shards[from.0 as usize], e);
            }
            self.elsewhere()?;
            board = self
                .board_changed
                .wait_timeout(board, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
