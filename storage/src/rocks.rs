//! [`RocksEngine`]: the [`Engine`] on RocksDB. The only file in sealdb that uses `rocksdb`.
//!
//! One column family, default comparator (bytewise, which is what the key codec sorts for),
//! LZ4 for compression, a 256 MiB block cache, and Bloom filters over version prefixes (a
//! version key without its timestamp) so that a point read skips files holding no version of
//! its key. A second column family, if asked for ([`RocksOptions::apart`]), holds the versions
//! of user keys under given prefixes: rows that are appended and seldom read back (an order
//! history) grow there, while the rest keeps files, levels and compactions of a size that
//! does not grow with them:
//!
//! ```text
//!   default                 meta keys, every version not under a prefix kept apart
//!   sealdb.apart.<hash>     versions under the prefixes; <hash> names the prefix list, so a
//!                           database opened with another list is refused, not misread
//! ```
//!
//! Point reads ([`Engine::seek_in_prefix`]), and scans of a range that lies in one family
//! ([`Engine::cursor_within`]), run on iterators kept between reads, a few per family and
//! kind, each refreshed before it is used (`KeptIterator`): building one costs more than the
//! seek itself, and a refresh that finds the same memtables and files only moves its read to
//! the newest write (and one that finds them changed, by a flush or compaction RocksDB began on
//! its own, rebuilds itself). Kept iterators are let go at each flush the engine is asked
//! for, so an idle engine's hold no switched memtable or replaced file for long. A scan over
//! both families builds its iterators, as it reads both at one snapshot.
//!
//! Both families flush together (RocksDB's atomic flush), so what a crash leaves of
//! unsynced writes is, as with one family, a prefix of the batches written; a cursor reads
//! both at one snapshot. Writes go through RocksDB's WAL; whether they are fsynced is the
//! caller's choice per batch (shards do not fsync: the sequencer's log is the source of truth,
//! DESIGN.md section 6).
//!
//! Both families can also take a sorted run as table files ([`Engine::ingest`]: written with
//! `SstFileWriter`, one a family, moved into the database by `ingest_external_file`), so that
//! a [`WriteBehind`](crate::WriteBehind) holding a shard's runs skips the memtables; the
//! write-ahead log (synced writes only, then) is synced first, and the family kept apart is
//! ingested before the default one, so it is never older than what the default one holds.
//!
//! Garbage collection happens as RocksDB compacts: a compaction filter ([`GcFilter`]) drops
//! each version that a newer version of the same key at or below the horizon shadows. Within
//! one compaction, keys arrive in order and a key's versions newest first, so the filter keeps
//! the first version at or below the horizon it meets and drops the older ones:
//!
//! ```text
//!   horizon 50:   (k, 90) keep   (k, 40) keep: what reads at 50..90 see   (k, 30) drop
//! ```
//!
//! A compaction that does not see a key's newest versions (they are in newer files) only
//! keeps more than it must. Deletions at the horizon are kept (an older version may be in a
//! file this compaction does not read); RocksDB turns a dropped key into a deletion marker,
//! so no older copy resurfaces. Iterators read the files they started with, so a read under
//! way is not affected.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use clock::Timestamp;
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB,
    DBCompressionType, DBRawIterator, DEFAULT_COLUMN_FAMILY_NAME, Env, FlushOptions,
    IngestExternalFileOptions, Options, ReadOptions, SliceTransform, Snapshot, SstFileWriter,
    WriteBatch, WriteOptions,
};

use crate::engine::{Cursor, Engine, EngineMemory, RawBatch, RawOp};
use crate::key::StorageKey;
use crate::range::KeyRange;
use crate::{Result, StorageError};

/// Each shard's block cache by default: the hot part of a TPC-C warehouse and its indexes.
/// A database that grows past it reads more blocks from the page cache (the README's soak).
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 256 << 20;

fn version_prefix(key: &[u8]) -> &[u8] {
    StorageKey::version_prefix_of(key).unwrap_or(key)
}

fn has_version_prefix(key: &[u8]) -> bool {
    StorageKey::version_prefix_of(key).is_some()
}

/// An engine stored in a RocksDB database directory.
pub struct RocksEngine {
    db: Arc<DB>,
    /// Iterators kept between reads: by [`Kept`] (point reads, scans), then one pool for
    /// each column family (the default one, then the one kept apart).
    kept: [[Mutex<Vec<KeptIterator>>; 2]; 2],
    path: PathBuf,
    /// Which keys the second column family holds, if there is one.
    apart: Option<Apart>,
    /// The garbage-collection horizon compactions use.
    horizon: Arc<AtomicU64>,
    /// Whether unsynced writes go through RocksDB's write-ahead log.
    wal: bool,
    /// The default family's options, which the table files it ingests are written with, for
    /// both families (the family kept apart differs only in its memtable's insert hint).
    main_options: Options,
    /// Table files written for ingest so far: each one's name.
    ingests: AtomicU64,
}

/// How to open a [`RocksEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksOptions {
    /// Bytes of the block cache (default [`DEFAULT_BLOCK_CACHE_BYTES`]).
    pub block_cache_bytes: usize,
    /// Whether writes not asked to be synced go through RocksDB's write-ahead log (default
    /// true). Without it they live in memory until a flush: a process that dies loses them,
    /// and the caller must be able to redo them (sealdb's shards replay them from the window
    /// log, which holds every window after the last flush). Synced writes always use it.
    pub wal: bool,
    /// Table files (flushes, compactions) are written back to disk every this many bytes as
    /// they are written, not all at once when each is finished (default
    /// [`DEFAULT_BYTES_PER_SYNC`]; 0 leaves it to the kernel). A file's worth of dirty pages
    /// written back at once may queue the window log's `fdatasync`s behind it; 1 MiB measured
    /// no better on the README's machine.
    pub bytes_per_sync: u64,
    /// At most this many bytes a second of flush and compaction writes (default none).
    pub background_bytes_per_sec: Option<u64>,
    /// Flushed files in level 0 that start a compaction into the level below (default
    /// [`DEFAULT_L0_COMPACTION_TRIGGER`], RocksDB's). Each flushed file spans every table,
    /// so each such compaction rewrites the whole level below: more files at once rewrite it
    /// less often, and leave more files for a read to check.
    pub l0_compaction_trigger: u32,
    /// Compactions cut their output into table files of about this many bytes (default
    /// [`DEFAULT_TABLE_FILE_BYTES`]). A compaction into a level rewrites every file there whose
    /// key range its input overlaps, so where rows are appended at many places (one district's
    /// new orders after its old ones, the next district's after its own), a file spanning two
    /// such places drags the old rows between them into each compaction.
    pub table_file_bytes: u64,
    /// Table files RocksDB keeps open at once (default [`open_files_allowance`]`(1)`); `None`
    /// keeps every one open. A database holds one descriptor for each table file it has open;
    /// past the process's limit on open files, RocksDB's flushes and compactions fail and the
    /// engine stops taking writes. Below this bound RocksDB closes the least recently used
    /// table files and opens them again when read.
    pub max_open_files: Option<u32>,
    /// User-key prefixes whose versions live in a column family of their own (default none):
    /// tables that grow by appends and are seldom read back, such as an order history. Their
    /// growth then adds no files or levels to reads of the rest, and their compactions do not
    /// rewrite it (the README's soak Y: throughput no longer falls as they grow). A database
    /// must be opened with the prefixes it was created with; another list (or none) is
    /// refused at open.
    pub apart: Vec<Vec<u8>>,
    /// Inserts into the family kept apart start from where the last insert under the same
    /// first this-many bytes of its engine key went (RocksDB's memtable insert hint; 0, the
    /// default: every insert searches its memtable from the top). Rows appended in key order
    /// under such a prefix (TPC-C's orders and order lines, one district's after another's)
    /// then each cost a step instead of a search: choose the length of
    /// [`StorageKey::versions_under`](crate::StorageKey::versions_under) of the prefix rows are
    /// appended under. At most [`MAX_APART_HINT_BYTES`]. Only a speed-up: what is stored and
    /// read is the same with any value. Unused where a holder ingests the writes as runs
    /// ([`Engine::ingest`]): they skip the memtable.
    pub apart_hint_bytes: usize,
    /// Whether RocksDB's flush and compaction threads run at the lowest CPU priority (nice
    /// 19; default true), so that on a busy machine they take the time a shard's thread
    /// leaves idle instead of preempting it: each window waits on that thread, while a flush
    /// or compaction may fall behind for a while (RocksDB slows writes if it falls far
    /// behind). The threads are RocksDB's process-wide pools: once one engine in a process
    /// has lowered them they stay low, for every engine in it.
    pub low_priority_background: bool,
}

/// The most [`RocksOptions::apart_hint_bytes`] takes.
pub const MAX_APART_HINT_BYTES: usize = 256;

/// How many table files each of `engines` engines in this process may keep open: half the
/// process's limit on open files (its soft `RLIMIT_NOFILE`, as it is now) shared among them,
/// leaving the other half to logs, sockets and the rest; at least 64. `None` (no bound) if the
/// process has no limit.
pub fn open_files_allowance(engines: usize) -> Option<u32> {
    let limit = open_files_limit()?;
    let share = limit / 2 / engines.max(1) as u64;
    Some(u32::try_from(share).unwrap_or(u32::MAX).max(64))
}

/// How many files this process may open: its soft `RLIMIT_NOFILE` as it is now; `None` if
/// unlimited.
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raises this process's soft limit on open files to its hard limit (at most 2^20, the
/// kernel's usual ceiling), as servers do at start, and returns the soft limit then in force.
/// A database of small table files on a machine with the common default of 1024 would
/// otherwise close and reopen table files as it reads them.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let wanted = now.maximum.unwrap_or(1 << 20).min(1 << 20);
    if now.current.is_some_and(|current| current < wanted) {
        let raised = rustix::process::Rlimit { current: Some(wanted), maximum: now.maximum };
        // Refused (a container's policy, say): the limit stays as it was, and the allowance
        // of open table files follows it.
        let _ = setrlimit(Resource::Nofile, raised);
    }
    open_files_limit()
}

/// The default [`RocksOptions::table_file_bytes`]: 64 MiB, RocksDB's.
pub const DEFAULT_TABLE_FILE_BYTES: u64 = 64 << 20;

/// The default [`RocksOptions::l0_compaction_trigger`]: 4, RocksDB's.
pub const DEFAULT_L0_COMPACTION_TRIGGER: u32 = 4;

/// The default [`RocksOptions::bytes_per_sync`]: 0, RocksDB's own (1 MiB, as its tuning guide
/// suggests, was no better in the README's measurements).
pub const DEFAULT_BYTES_PER_SYNC: u64 = 0;

impl Default for RocksOptions {
    fn default() -> RocksOptions {
        RocksOptions {
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            wal: true,
            bytes_per_sync: DEFAULT_BYTES_PER_SYNC,
            background_bytes_per_sec: None,
            l0_compaction_trigger: DEFAULT_L0_COMPACTION_TRIGGER,
            table_file_bytes: DEFAULT_TABLE_FILE_BYTES,
            max_open_files: open_files_allowance(1),
            apart: Vec::new(),
            apart_hint_bytes: 0,
            low_priority_background: true,
        }
    }
}

/// The keys of the second column family: the encodings under which the versions of the user
/// keys under [`RocksOptions::apart`] lie, sorted, none a prefix of another.
struct Apart {
    starts: Vec<Vec<u8>>,
    /// For each start, the first key after every key that begins with it (`None`: no key
    /// follows them).
    ends: Vec<Option<Vec<u8>>>,
    family: String,
}

/// Column families kept apart are named `sealdb.apart.<hash of their prefix list>`.
const APART_FAMILY: &str = "sealdb.apart.";

impl Apart {
    fn new(prefixes: &[Vec<u8>]) -> Option<Apart> {
        let mut starts: Vec<Vec<u8>> =
            prefixes.iter().map(|p| StorageKey::versions_under(p)).collect();
        starts.sort();
        starts.dedup();
        // A prefix under another adds nothing; dropped, the rest are prefix-free, so the
        // last start at or below a key is the only one it can begin with.
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(starts.len());
        for start in starts {
            if !kept.last().is_some_and(|k| start.starts_with(k)) {
                kept.push(start);
            }
        }
        if kept.is_empty() {
            return None;
        }
        let family = format!("{APART_FAMILY}{:016x}", fnv1a(&kept));
        let ends = kept.iter().map(|start| KeyRange::prefix(start).end).collect();
        Some(Apart { starts: kept, ends, family })
    }

    /// Whether `key` belongs to the family kept apart.
    fn holds(&self, key: &[u8]) -> bool {
        matches!(self.ahead(key), Ahead::Here(_))
    }

    /// Which family holds `key`, and where the keys of the other one at or after it begin.
    fn ahead(&self, key: &[u8]) -> Ahead<'_> {
        let at = self.starts.partition_point(|s| s.as_slice() <= key);
        if at > 0 && key.starts_with(&self.starts[at - 1]) {
            return Ahead::Here(self.ends[at - 1].as_deref());
        }
        match self.starts.get(at) {
            Some(start) => Ahead::From(start),
            None => Ahead::Nowhere,
        }
    }
}

/// Which family holds a key, and where the other one's keys at or after it begin
/// ([`Apart::ahead`]).
enum Ahead<'s> {
    /// The family kept apart holds the key; the default family's keys at or after it begin at
    /// this end of its prefix (`None`: there are none).
    Here(Option<&'s [u8]>),
    /// The default family holds it; the keys kept apart at or after it begin at this start.
    From(&'s [u8]),
    /// The default family holds it, and no key at or after it is kept apart.
    Nowhere,
}

/// The 64-bit FNV-1a hash of `starts`, each preceded by its length: a stable name for a list.
fn fnv1a(starts: &[Vec<u8>]) -> u64 {
    starts.iter().fold(crate::fnv::START, |hash, start| {
        let hash = crate::fnv::extend(hash, &(start.len() as u64).to_be_bytes());
        crate::fnv::extend(hash, start)
    })
}

const GC_FILTER: &CStr = c"sealdb.gc";

/// Makes a [`GcFilter`] for each compaction, at the horizon of the time.
struct GcFilterFactory {
    horizon: Arc<AtomicU64>,
}

impl CompactionFilterFactory for GcFilterFactory {
    type Filter = GcFilter;

    fn create(&mut self, _: CompactionFilterContext) -> GcFilter {
        let horizon = Timestamp::from_u64(self.horizon.load(Ordering::SeqCst));
        GcFilter { horizon, key: Vec::new(), horizon_version_seen: false }
    }

    fn name(&self) -> &CStr {
        GC_FILTER
    }
}

/// Drops versions no read at or above `horizon` sees (see the module's documentation).
struct GcFilter {
    horizon: Timestamp,
    /// The version prefix of the key being passed.
    key: Vec<u8>,
    /// Whether its newest version at or below the horizon has been passed.
    horizon_version_seen: bool,
}

impl CompactionFilter for GcFilter {
    fn filter(&mut self, _level: u32, key: &[u8], _value: &[u8]) -> Decision {
        let Some((prefix, ts)) = StorageKey::split_version(key) else { return Decision::Keep };
        if prefix != self.key.as_slice() {
            self.key.clear();
            self.key.extend_from_slice(prefix);
            self.horizon_version_seen = false;
        }
        if ts > self.horizon {
            Decision::Keep
        } else if !self.horizon_version_seen {
            self.horizon_version_seen = true;
            Decision::Keep
        } else {
            Decision::Remove
        }
    }

    fn name(&self) -> &CStr {
        GC_FILTER
    }
}

impl RocksEngine {
    /// Opens the database at `path`, creating it if missing, with a block cache of
    /// [`DEFAULT_BLOCK_CACHE_BYTES`].
    pub fn open(path: impl AsRef<Path>) -> Result<RocksEngine> {
        RocksEngine::open_with(path, RocksOptions::default())
    }

    /// [`RocksEngine::open`] as `options` say.
    pub fn open_with(path: impl AsRef<Path>, options: RocksOptions) -> Result<RocksEngine> {
        let path = path.as_ref().to_path_buf();
        let apart = Apart::new(&options.apart);
        let horizon = Arc::new(AtomicU64::new(0));
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut opts = family_options(&options, &cache, &horizon);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        if options.low_priority_background {
            // The default environment: its thread pools are the process's. Each thread
            // lowers itself before its next job.
            let mut env = Env::new().map_err(|e| engine_error(&path, e))?;
            env.lower_thread_pool_cpu_priority();
            env.lower_high_priority_thread_pool_cpu_priority();
            opts.set_env(&env);
        }
        opts.set_bytes_per_sync(options.bytes_per_sync);
        if let Some(rate) = options.background_bytes_per_sec {
            // Refilled every 100 ms; flushes go before compactions.
            opts.set_ratelimiter(i64::try_from(rate).unwrap_or(i64::MAX), 100_000, 10);
        }
        if let Some(n) = options.max_open_files {
            // RocksDB takes at least 20 and reserves 10 for itself. Its cache of open tables
            // is split into shards (64 by default), each keeping at least one file however
            // small its share: fewer shards, each with room for 16 or more, keep the bound.
            let n = n.clamp(20, i32::MAX as u32);
            let tables = n - 10;
            opts.set_max_open_files(n as i32);
            opts.set_table_cache_num_shard_bits((tables / 16).max(1).ilog2().min(6) as i32);
        } else {
            opts.set_max_open_files(-1);
        }
        let main_options = opts.clone();
        let mut families =
            vec![ColumnFamilyDescriptor::new(DEFAULT_COLUMN_FAMILY_NAME, opts.clone())];
        if let Some(apart) = &apart {
            // Both families' memtables flush as one, so a crash without the WAL leaves a
            // prefix of the batches in both or neither.
            opts.set_atomic_flush(true);
            let mut family = family_options(&options, &cache, &horizon);
            if options.apart_hint_bytes > 0 {
                // Not in RocksDB's C API; its options-string parser sets it on a copy.
                let hint = options.apart_hint_bytes.min(MAX_APART_HINT_BYTES);
                let setting = format!("memtable_insert_with_hint_prefix_extractor=capped:{hint}");
                family =
                    family.get_options_from_string(setting).map_err(|e| engine_error(&path, e))?;
            }
            families.push(ColumnFamilyDescriptor::new(apart.family.clone(), family));
        }
        check_families(&path, &opts, apart.as_ref())?;
        let db =
            DB::open_cf_descriptors(&opts, &path, families).map_err(|e| engine_error(&path, e))?;
        // Only once open: RocksDB's lock keeps another process's ingests from being removed.
        remove_unfinished_ingests(&path)?;
        Ok(RocksEngine {
            db: Arc::new(db),
            kept: Default::default(),
            path,
            apart,
            horizon,
            wal: options.wal,
            main_options,
            ingests: AtomicU64::new(0),
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The options of one column family: compaction, filters, table format, the GC filter at
/// `horizon`, blocks cached in `cache` (one for every family).
fn family_options(options: &RocksOptions, cache: &Cache, horizon: &Arc<AtomicU64>) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    // Writes slow down and stop at RocksDB's usual distances above the trigger (20 and
    // 36 files for 4), so a larger trigger does not stall them sooner.
    let trigger = options.l0_compaction_trigger.clamp(1, 1 << 10) as i32;
    opts.set_level_zero_file_num_compaction_trigger(trigger);
    opts.set_level_zero_slowdown_writes_trigger(trigger + 16);
    opts.set_level_zero_stop_writes_trigger(trigger + 32);
    opts.set_target_file_size_base(options.table_file_bytes.clamp(1 << 20, 1 << 30));
    // Point reads of a key's newest version seek within the key's versions: a Bloom filter
    // over version prefixes (the key without its timestamp), in SST files and memtables,
    // lets such a seek skip every file that holds no version of the key. Scans still see
    // the whole order (`total_order_seek` in `cursor`).
    opts.set_prefix_extractor(SliceTransform::create(
        "sealdb.version-prefix",
        version_prefix,
        Some(has_version_prefix),
    ));
    opts.set_memtable_prefix_bloom_ratio(0.05);
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(false);
    table.set_block_cache(cache);
    // A 64 MiB table file has about 1 MiB of index and 2 MiB of filter. Whole, each file
    // a compaction writes costs a reader 3 MiB of reads and checksums before its first
    // lookup, and they crowd the cache as the database grows (the README's soak).
    // Partitioned into 4 KiB blocks under a small pinned top level, a lookup reads the
    // partitions it needs, cached like data blocks and evicted last.
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    opts.set_compaction_filter_factory(GcFilterFactory { horizon: horizon.clone() });
    opts
}

/// Table files being written for ingest ([`Engine::ingest`]) are named this, then a number,
/// in the database directory; RocksDB moves each into its own files as it ingests it.
const INGEST_FILE: &str = "sealdb-ingest-";

/// Removes what a process that stopped while writing a table file for ingest left of it:
/// nothing in it was ingested.
fn remove_unfinished_ingests(path: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::Engine(format!("{}: {e}", path.display()))),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(INGEST_FILE) {
            std::fs::remove_file(entry.path())
                .map_err(|e| StorageError::Engine(format!("{}: {e}", entry.path().display())))?;
        }
    }
    Ok(())
}

/// Refuses to open an existing database at `path` whose second column family is not the one
/// `apart` names (or that has one when `apart` is `None`, or none when it is not): its versions
/// would be looked for in the wrong family.
fn check_families(path: &Path, opts: &Options, apart: Option<&Apart>) -> Result<()> {
    if !path.join("CURRENT").exists() {
        return Ok(());
    }
    let names = DB::list_cf(opts, path).map_err(|e| engine_error(path, e))?;
    let found = names.iter().find(|n| n.starts_with(APART_FAMILY));
    let wanted = apart.map(|a| &a.family);
    if found == wanted {
        return Ok(());
    }
    let describe = |name: Option<&String>| match name {
        Some(name) => format!("with keys kept apart in column family {name}"),
        None => "with every key in one column family".to_string(),
    };
    Err(StorageError::Engine(format!(
        "rocksdb at {}: it was made {}, but these options ask for one {}; open it with the \
         prefixes kept apart (`apart`) it was made with",
        path.display(),
        describe(found),
        describe(wanted)
    )))
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine").field("path", &self.path).finish()
    }
}

fn engine_error(path: &Path, e: rocksdb::Error) -> StorageError {
    StorageError::Engine(format!("rocksdb at {}: {e}", path.display()))
}

impl RocksEngine {
    /// The column family kept apart, if `key` belongs to it; `None` for the default one,
    /// which the calls without a family name reach without looking it up.
    fn apart_family(&self, key: &[u8]) -> Option<&ColumnFamily> {
        match &self.apart {
            Some(apart) if apart.holds(key) => Some(self.handle(&apart.family)),
            _ => None,
        }
    }

    fn handle(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("the engine opened its column families")
    }

    /// Every column family: the default one, then the one kept apart if any.
    fn families(&self) -> Vec<&ColumnFamily> {
        let mut families = vec![self.handle(DEFAULT_COLUMN_FAMILY_NAME)];
        families.extend(self.apart.as_ref().map(|apart| self.handle(&apart.family)));
        families
    }

    /// The sum over the column families of the integer property `name`.
    fn property_sum(&self, name: &str) -> Result<u64> {
        let mut sum = 0;
        for family in self.families() {
            let value = self.db.property_int_value_cf(family, name).map_err(|e| self.error(e))?;
            sum += value.unwrap_or(0);
        }
        Ok(sum)
    }

    fn error(&self, e: rocksdb::Error) -> StorageError {
        engine_error(&self.path, e)
    }

    /// Writes `batch`, each key into its family.
    fn write_ops(&self, batch: &RawBatch, sync: bool) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch.iter() {
            let family = self.apart_family(op.key());
            match (op, family) {
                (RawOp::Put(k, v), Some(family)) => wb.put_cf(family, k, v),
                (RawOp::Put(k, v), None) => wb.put(k, v),
                (RawOp::Delete(k), Some(family)) => wb.delete_cf(family, k),
                (RawOp::Delete(k), None) => wb.delete(k),
            }
        }
        if wb.is_empty() {
            return Ok(());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        opts.disable_wal(!sync && !self.wal);
        self.db.write_opt(wb, &opts).map_err(|e| self.error(e))
    }

    fn flush_families(&self, wait: bool) -> Result<()> {
        let mut opts = FlushOptions::default();
        opts.set_wait(wait);
        self.db.flush_cfs_opt(&self.families(), &opts).map_err(|e| self.error(e))?;
        // Kept iterators hold the memtables and files they were last refreshed on: let
        // those go once flushed (the next read builds a new one).
        for pool in self.kept.iter().flatten() {
            std::mem::take(&mut *pool.lock().unwrap_or_else(PoisonError::into_inner));
        }
        Ok(())
    }

    /// An iterator of `kind` over the family kept apart (`apart`) or the default one:
    /// reused if one is kept, and then refreshed to see every write completed before.
    fn kept_iterator(&self, kind: Kept, apart: bool) -> Result<KeptIterator> {
        let kept = self.kept[kind as usize][usize::from(apart)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(mut iter) = kept {
            iter.with_dependent_mut(|_, iter| iter.refresh()).map_err(|e| self.error(e))?;
            return Ok(iter);
        }
        let family = match (apart, &self.apart) {
            (true, Some(kept_apart)) => Some(kept_apart.family.as_str()),
            _ => None,
        };
        Ok(KeptIterator::new(Arc::clone(&self.db), |db| {
            let mut read = ReadOptions::default();
            match kind {
                Kept::PointRead => read.set_prefix_same_as_start(true),
                Kept::Scan => read.set_total_order_seek(true),
            }
            match family {
                Some(name) => db.raw_iterator_cf_opt(
                    db.cf_handle(name).expect("the engine opened its column families"),
                    read,
                ),
                None => db.raw_iterator_opt(read),
            }
        }))
    }

    /// Keeps `iter` for the next read of its kind, unless enough are kept already.
    fn keep(&self, kind: Kept, apart: bool, iter: KeptIterator) {
        let mut kept = self.kept[kind as usize][usize::from(apart)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT_ITERATORS {
            kept.push(iter);
        }
    }

    /// Which one family holds every key from `start` up to `end` (true: the one kept apart),
    /// if one does.
    fn family_of_range(&self, start: &[u8], end: Option<&[u8]>) -> Option<bool> {
        let Some(apart) = &self.apart else { return Some(false) };
        let (held_apart, other_from) = match apart.ahead(start) {
            Ahead::Here(main_from) => (true, main_from),
            Ahead::From(apart_from) => (false, Some(apart_from)),
            Ahead::Nowhere => (false, None),
        };
        match (other_from, end) {
            (None, _) => Some(held_apart),
            (Some(from), Some(end)) if end <= from => Some(held_apart),
            _ => None,
        }
    }
}

/// A table file being written for [`Engine::ingest`] into one family: created at its first
/// entry, so a family with none gets no file.
struct IngestFile<'e> {
    writer: Option<(SstFileWriter<'e>, PathBuf)>,
}

impl<'e> IngestFile<'e> {
    fn new() -> IngestFile<'e> {
        IngestFile { writer: None }
    }

    fn add(&mut self, engine: &'e RocksEngine, op: RawOp<'_>) -> Result<()> {
        if self.writer.is_none() {
            let n = engine.ingests.fetch_add(1, Ordering::SeqCst);
            let file = engine.path.join(format!("{INGEST_FILE}{n}"));
            let writer = SstFileWriter::create(&engine.main_options);
            writer.open(&file).map_err(|e| engine.error(e))?;
            self.writer = Some((writer, file));
        }
        let (writer, _) = self.writer.as_mut().expect("opened");
        match op {
            RawOp::Put(k, v) => writer.put(k, v),
            RawOp::Delete(k) => writer.delete(k),
        }
        .map_err(|e| engine.error(e))
    }

    fn finish(self, engine: &RocksEngine, family: &ColumnFamily) -> Result<()> {
        let Some((mut writer, file)) = self.writer else { return Ok(()) };
        writer.finish().map_err(|e| engine.error(e))?;
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        let ingested = engine.db.ingest_external_file_cf_opts(family, &opts, vec![&file]);
        // RocksDB removes the file once it has linked it into its own; one left by a failed
        // ingest goes now, or at the next open if it cannot.
        let _ = std::fs::remove_file(&file);
        ingested.map_err(|e| engine.error(e))
    }
}

/// Iterators kept per column family and kind: about as many as threads read at once.
const KEPT_ITERATORS: usize = 4;

/// What a kept iterator is for; each kind reads with its own options.
#[derive(Debug, Clone, Copy)]
enum Kept {
    /// Point reads: seeks within one key's versions, which the prefix filters serve.
    PointRead = 0,
    /// Scans: seeks and steps across keys, in total order.
    Scan = 1,
}

self_cell::self_cell!(
    /// A RocksDB iterator together with the database it reads, so that it can be kept
    /// between reads. Building an iterator (`NewInternalIterator`: one child per memtable and
    /// level) costs more than most seeks on it; refreshing a kept one, when no memtable was
    /// switched and no compaction finished since, only moves its sequence number to the
    /// newest write (RocksDB's `ArenaWrappedDBIter::Refresh`). A read after a refresh sees
    /// exactly what one on a new iterator would: every write completed before it.
    struct KeptIterator {
        owner: Arc<DB>,
        #[covariant]
        dependent: DBRawIterator,
    }
);

impl Engine for RocksEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = match self.apart_family(key) {
            Some(family) => self.db.get_cf(family, key),
            None => self.db.get(key),
        };
        value.map_err(|e| self.error(e))
    }

    fn cursor(&self) -> Box<dyn Cursor + '_> {
        let Some(apart) = &self.apart else {
            let mut read = ReadOptions::default();
            read.set_total_order_seek(true);
            let iter = self.db.raw_iterator_opt(read);
            return Box::new(RocksCursor { iter, started: false, path: &self.path });
        };
        // One snapshot for both families, so a batch written meanwhile is seen in both or
        // in neither.
        let snapshot = self.db.snapshot();
        let [main, kept_apart] = [DEFAULT_COLUMN_FAMILY_NAME, apart.family.as_str()].map(|name| {
            let mut read = ReadOptions::default();
            read.set_total_order_seek(true);
            read.set_snapshot(&snapshot);
            let iter = self.db.raw_iterator_cf_opt(self.handle(name), read);
            Side::new(RocksCursor { iter, started: false, path: &self.path })
        });
        Box::new(Both { apart, main, kept_apart, started: false, _snapshot: snapshot })
    }

    /// On a kept iterator, refreshed (`KeptIterator`), if the range lies in one family.
    fn cursor_within(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Cursor + '_> {
        match self.family_of_range(start, end) {
            Some(apart) => Box::new(KeptCursor { engine: self, apart, iter: None, started: false }),
            None => self.cursor(),
        }
    }

    /// On a kept iterator, refreshed (`KeptIterator`).
    fn seek_in_prefix(&self, key: &[u8], prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let apart = self.apart.as_ref().is_some_and(|a| a.holds(key));
        let mut iter = self.kept_iterator(Kept::PointRead, apart)?;
        let found = iter.with_dependent_mut(|_, iter| {
            iter.seek(key);
            entry_at(iter, &self.path)
        })?;
        self.keep(Kept::PointRead, apart, iter);
        Ok(found.filter(|(k, _)| k.starts_with(prefix)))
    }

    fn write(&self, batch: RawBatch, sync: bool) -> Result<()> {
        self.write_ref(&batch, sync)
    }

    /// RocksDB copies each key and value into its own batch: a reference is enough.
    fn write_ref(&self, batch: &RawBatch, sync: bool) -> Result<()> {
        self.write_ops(batch, sync)
    }

    /// Every key: each family's table files can be written whole, in key order, and
    /// ingested, with no memtable insert.
    fn ingests(&self, key: &[u8]) -> bool {
        let _ = key;
        true
    }

    fn write_uningested(&self, batch: &RawBatch) -> Result<()> {
        let _ = batch;
        Ok(())
    }

    /// Syncs the write-ahead log (or, without one, flushes the memtables), writes `entries`
    /// into a table file a column family and ingests each: its entries are newer than every
    /// write before, and it goes into the lowest level it overlaps nothing in (level 0 for a
    /// window's keys, which span the tables). RocksDB's C API ingests into one family at a
    /// time, so the two files are two steps: the family kept apart first, then the default
    /// family, which holds the watermark. A crash between them leaves the family kept apart
    /// ahead of the watermark, never behind it (README, Departures).
    fn ingest(&self, entries: &mut dyn Iterator<Item = RawOp<'_>>) -> Result<()> {
        match self.wal {
            true => self.db.flush_wal(true).map_err(|e| self.error(e))?,
            false => self.flush_families(true)?,
        }
        // One table file a family; the family kept apart first, so that a crash between the
        // two leaves it ahead of the watermark (which the default family holds), never behind.
        let mut main = IngestFile::new();
        let mut apart = IngestFile::new();
        // Keys come in order: the family found for one holds every key up to where the
        // other's next begin (`region`: kept apart or not, and up to which key).
        let mut region: Option<(bool, Option<&[u8]>)> = None;
        for op in entries {
            let key = op.key();
            if region.is_none_or(|(_, until)| until.is_some_and(|until| key >= until)) {
                region = Some(match self.apart.as_ref().map(|a| a.ahead(key)) {
                    Some(Ahead::Here(main_from)) => (true, main_from),
                    Some(Ahead::From(apart_from)) => (false, Some(apart_from)),
                    Some(Ahead::Nowhere) | None => (false, None),
                });
            }
            let (kept_apart, _) = region.expect("set above");
            match kept_apart {
                true => apart.add(self, op)?,
                false => main.add(self, op)?,
            }
        }
        if let Some(family) = &self.apart {
            apart.finish(self, self.handle(&family.family))?;
        }
        main.finish(self, self.handle(DEFAULT_COLUMN_FAMILY_NAME))
    }

    fn flush(&self) -> Result<()> {
        self.flush_families(true)?;
        self.db.flush_wal(true).map_err(|e| self.error(e))
    }

    /// Switches the memtables (every completed write is in them or older ones) and leaves
    /// their flush to RocksDB's flush thread. Waits only if one more memtable would stall
    /// writes (one is being flushed already), as long as that flush takes.
    fn begin_flush(&self) -> Result<()> {
        self.flush_families(false)
    }

    /// True once no switched memtable is left unflushed: memtables are flushed in order, and
    /// a memtable switched after the one waited for (it filled) only makes this later.
    fn flushed(&self) -> Result<bool> {
        Ok(self.property_sum("rocksdb.num-immutable-mem-table")? == 0)
    }

    /// Flushes the memtables and compacts every level into the last: one sorted run per
    /// column family, with no compaction left pending to compete with the writes that follow.
    fn compact(&self) -> Result<()> {
        self.flush_families(true)?;
        for family in self.families() {
            self.db.compact_range_cf::<&[u8], &[u8]>(family, None, None);
        }
        Ok(())
    }

    fn set_gc_horizon(&self, horizon: Timestamp) {
        self.horizon.fetch_max(horizon.as_u64(), Ordering::SeqCst);
    }

    fn estimated_entries(&self) -> Option<u64> {
        self.property_sum("rocksdb.estimate-num-keys").ok()
    }

    fn memory(&self) -> EngineMemory {
        let sum = |name: &str| self.property_sum(name).unwrap_or(0);
        EngineMemory {
            memtables: sum("rocksdb.size-all-mem-tables"),
            table_readers: sum("rocksdb.estimate-table-readers-mem"),
            // One cache for every family.
            block_cache: self
                .db
                .property_int_value("rocksdb.block-cache-usage")
                .ok()
                .flatten()
                .unwrap_or(0),
        }
    }

    /// A RocksDB checkpoint: the memtables flushed, the SST files hard-linked (copied across
    /// file systems), a consistent point of the database that opens as one.
    fn checkpoint(&self, dir: &Path) -> Result<()> {
        let checkpoint =
            rocksdb::checkpoint::Checkpoint::new(&*self.db).map_err(|e| self.error(e))?;
        checkpoint.create_checkpoint(dir).map_err(|e| engine_error(dir, e))
    }
}

/// A cursor over both column families at one snapshot: each key is in one of them, so the
/// smaller of the two current entries comes next. A seek positions the family holding its key
/// and leaves the other until the first reaches the first key the other could hold: a scan
/// within one table reads one family.
struct Both<'a> {
    apart: &'a Apart,
    /// The default family's cursor.
    main: Side<'a>,
    kept_apart: Side<'a>,
    started: bool,
    /// Dropped after the iterators that read at it.
    _snapshot: Snapshot<'a>,
}

/// One family's cursor in [`Both`], and the entry it is at.
struct Side<'a> {
    cursor: RocksCursor<'a>,
    current: Option<(Vec<u8>, Vec<u8>)>,
    /// Set while this side has not been sought since the last seek: its keys at or after
    /// that seek's key begin at the bound (`None`: it has none), so it is sought there once
    /// the other side reaches it.
    unsought: Option<Option<&'a [u8]>>,
}

impl<'a> Side<'a> {
    fn new(cursor: RocksCursor<'a>) -> Side<'a> {
        Side { cursor, current: None, unsought: None }
    }

    /// Seeks this side at its bound if it waits for one and `other` has reached it.
    fn catch_up(&mut self, other: &Side<'_>) -> Result<()> {
        if let Some(Some(bound)) = self.unsought
            && other.current.as_ref().is_none_or(|(k, _)| k.as_slice() >= bound)
        {
            self.unsought = None;
            self.current = self.cursor.seek(bound)?;
        }
        Ok(())
    }
}

impl Both<'_> {
    /// The smaller current entry, taken; its side moves on.
    fn take_smaller(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.main.catch_up(&self.kept_apart)?;
        self.kept_apart.catch_up(&self.main)?;
        let main_first = match (&self.main.current, &self.kept_apart.current) {
            (None, None) => return Ok(None),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((a, _)), Some((b, _))) => a < b,
        };
        let side = if main_first { &mut self.main } else { &mut self.kept_apart };
        let taken = side.current.take();
        side.current = side.cursor.next()?;
        Ok(taken)
    }
}

impl Cursor for Both<'_> {
    fn seek(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.started = true;
        let apart = self.apart;
        let (now, later, bound) = match apart.ahead(key) {
            Ahead::Here(end) => (&mut self.kept_apart, &mut self.main, end),
            Ahead::From(start) => (&mut self.main, &mut self.kept_apart, Some(start)),
            Ahead::Nowhere => (&mut self.main, &mut self.kept_apart, None),
        };
        now.unsought = None;
        now.current = now.cursor.seek(key)?;
        later.unsought = Some(bound);
        later.current = None;
        self.take_smaller()
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if !self.started {
            return self.seek(&[]);
        }
        self.take_smaller()
    }
}

/// A cursor on a kept scan iterator of one family ([`Engine::cursor_within`]), taken and
/// refreshed at its first move and kept again when the cursor is dropped.
struct KeptCursor<'a> {
    engine: &'a RocksEngine,
    apart: bool,
    iter: Option<KeptIterator>,
    started: bool,
}

impl KeptCursor<'_> {
    /// Runs `step` on the iterator, taking one first if this cursor has none yet.
    fn step(
        &mut self,
        step: impl FnOnce(&mut DBRawIterator<'_>, &Path) -> Result<Option<(Vec<u8>, Vec<u8>)>>,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let engine = self.engine;
        let iter = match &mut self.iter {
            Some(iter) => iter,
            empty => empty.insert(engine.kept_iterator(Kept::Scan, self.apart)?),
        };
        iter.with_dependent_mut(|_, iter| step(iter, &engine.path))
    }
}

impl Cursor for KeptCursor<'_> {
    fn seek(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.started = true;
        self.step(|iter, path| {
            iter.seek(key);
            entry_at(iter, path)
        })
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let started = std::mem::replace(&mut self.started, true);
        self.step(|iter, path| step_forward(iter, started, path))
    }
}

impl Drop for KeptCursor<'_> {
    fn drop(&mut self) {
        // An iterator that stopped on an error is not kept: the next scan builds a new one.
        if let Some(iter) = self.iter.take()
            && iter.borrow_dependent().status().is_ok()
        {
            self.engine.keep(Kept::Scan, self.apart, iter);
        }
    }
}

struct RocksCursor<'a> {
    iter: DBRawIterator<'a>,
    started: bool,
    path: &'a Path,
}

impl RocksCursor<'_> {
    fn current(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        entry_at(&self.iter, self.path)
    }
}

/// Moves `iter` to the entry after the one it is at (to its first, if it was not `started`)
/// and returns it; `None` past its end.
fn step_forward(
    iter: &mut DBRawIterator<'_>,
    started: bool,
    path: &Path,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    if !started {
        iter.seek_to_first();
    } else if iter.valid() {
        iter.next();
    } else {
        return Ok(None);
    }
    entry_at(iter, path)
}

/// The entry `iter` is at, copied; `None` past its end (or its prefix), unless it stopped on
/// an error.
fn entry_at(iter: &DBRawIterator<'_>, path: &Path) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    match iter.item() {
        Some((k, v)) => Ok(Some((k.to_vec(), v.to_vec()))),
        None => iter.status().map(|()| None).map_err(|e| engine_error(path, e)),
    }
}

impl Cursor for RocksCursor<'_> {
    fn seek(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.started = true;
        self.iter.seek(key);
        self.current()
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let started = std::mem::replace(&mut self.started, true);
        step_forward(&mut self.iter, started, self.path)
    }
}
