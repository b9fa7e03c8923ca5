//! The `bench` command: parses flags, runs a workload, prints and optionally saves its report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

// Allocation-heavy paths (windows, batches, outcomes) run faster on mimalloc than on glibc's
// allocator, and with the `override` feature RocksDB's allocations (block cache, memtables)
// go to it too: no glibc fragmentation as the block cache churns, and its arenas are on
// transparent huge pages, kept whole by `node::allocator` (fewer TLB misses). A server
// embedding sealdb would do the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "sealdb benchmark harness")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

/// Flags every workload takes.
#[derive(clap::Args)]
struct RunArgs {
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Database directory (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Running sealdb as a cluster (tpcc with its default backend; micro with procedures).
#[derive(clap::Args)]
struct ClusterArgs {
    /// Run over the network against a cluster: the sequencer's address of an empty cluster
    /// started with `bench node`, or `local:N` to start a sequencer and N shard processes
    /// here first (TPC-C spreads warehouses evenly over them).
    #[arg(long)]
    cluster: Option<String>,
    /// With `--cluster local:N`: the nodes' max clock offset in ms; commit-wait lasts about
    /// this long.
    #[arg(long, default_value_t = 1)]
    max_offset_ms: u64,
    /// With `--cluster local:N`: TLS with client certificates on every hop.
    #[arg(long)]
    secure: bool,
    /// With `--cluster local:N`: sequencer processes; 3 runs the log on a raft group.
    #[arg(long, default_value_t = 1)]
    sequencers: u32,
    /// With `--cluster local:N`: processes per shard, each applying the log on its own.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// With `--replicas N`: kill this many replicas of every shard as soon as they start
    /// (to measure a cluster running with replicas lost).
    #[arg(long, default_value_t = 0)]
    replicas_down: u32,
}

impl ClusterArgs {
    /// The cluster asked for, if any.
    fn target(&self) -> Result<Option<bench::ClusterTarget>, String> {
        self.cluster
            .as_deref()
            .map(|c| {
                let (seq, replicas, down) = (self.sequencers, self.replicas, self.replicas_down);
                bench::ClusterTarget::parse(c, self.max_offset_ms, self.secure, seq, replicas, down)
            })
            .transpose()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Plan {
    Serial,
    Snapshot,
}

impl From<Plan> for txn::Plan {
    fn from(plan: Plan) -> txn::Plan {
        match plan {
            Plan::Serial => txn::Plan::Serial,
            Plan::Snapshot => txn::Plan::Snapshot,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Sealdb,
    Postgres,
}

#[derive(Subcommand)]
enum Workload {
    /// The TPC-C-like benchmark (the main job): load, run a transaction mix, check consistency.
    Tpcc {
        /// Warehouses.
        #[arg(long, default_value_t = 4)]
        warehouses: u32,
        /// Concurrent clients (client i's home warehouse is i mod W + 1). A list (`8,64,256`)
        /// runs each level in turn, each on a freshly loaded database, and ends with a row per
        /// level.
        #[arg(long, value_delimiter = ',', default_value = "8")]
        clients: Vec<u32>,
        /// Seconds to run after loading.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Seconds the clients run before the measurement starts (TPC-C's ramp-up: caches
        /// fill; nothing of it is counted).
        #[arg(long, default_value_t = 0)]
        warmup: u64,
        /// The transaction mix.
        #[arg(long, value_enum, default_value = "standard")]
        mix: bench::tpcc::Mix,
        /// Items (and stock rows per warehouse); fewer than the standard 100,000 is for quick
        /// runs only and marks the report as scaled.
        #[arg(long, default_value_t = 100_000)]
        scale_items: u32,
        /// Customers (and initial orders) per district; fewer than the standard 3,000 marks
        /// the report as scaled.
        #[arg(long, default_value_t = 3_000)]
        scale_customers: u32,
        /// Shards of the embedded database (default: one per two cores, at least one, at most
        /// one per warehouse).
        #[arg(long)]
        shards: Option<u32>,
        /// The database to run on: sealdb embedded, or PostgreSQL for comparison.
        #[arg(long, value_enum, default_value = "sealdb")]
        backend: Backend,
        /// PostgreSQL's URL (with --backend postgres), e.g. the one `bench/postgres.sh start`
        /// prints. The benchmark creates its tables in the schema `tpcc`.
        #[arg(long)]
        pg_url: Option<String>,
        /// Drop an existing `tpcc` schema in PostgreSQL instead of refusing to run.
        #[arg(long)]
        pg_replace: bool,
        /// Seconds between progress rows (throughput, disk use, resident memory).
        #[arg(long, default_value_t = 5)]
        report_every: u64,
        /// Back the embedded database up this many seconds into the run (clients going on),
        /// then restore the backup and check it: the consistency conditions, and every
        /// New-Order acknowledged before the backup present.
        #[arg(long)]
        backup_after: Option<u64>,
        /// The embedded database's retention in seconds: reads at a timestamp go back this
        /// far, and older versions are collected.
        #[arg(long, default_value_t = 60)]
        retention: u64,
        /// Each shard's RocksDB block cache in MiB (embedded, and a `--cluster local:N` the
        /// benchmark starts).
        #[arg(long, default_value_t = (storage::DEFAULT_BLOCK_CACHE_BYTES >> 20) as u64)]
        block_cache_mib: u64,
        /// The row cache in MiB over all shards: the embedded database's, or split over the
        /// shards of a `--cluster local:N` the benchmark starts.
        #[arg(long, default_value_t = (bench::tpcc::ROW_CACHE_BYTES >> 20) as u64)]
        row_cache_mib: u64,
        /// How the embedded database's shards run single-shard procedures: once each,
        /// serially after the window's validated entries, or on the snapshot with the others
        /// and again if they lose validation.
        #[arg(long, value_enum, default_value = "serial")]
        plan: Plan,
        /// Shards write without RocksDB's write-ahead log (embedded): the window log alone
        /// makes them durable, and a restart replays it from each shard's last flush.
        #[arg(long)]
        no_rocksdb_wal: bool,
        /// Each shard's RocksDB writes its table files back every this many KiB as it
        /// writes them (embedded; 0: when the kernel chooses).
        #[arg(long, default_value_t = storage::DEFAULT_BYTES_PER_SYNC >> 10)]
        rocksdb_bytes_per_sync_kib: u64,
        /// Each shard's RocksDB flushes and compactions write at most this many MiB a
        /// second (embedded; default: no limit).
        #[arg(long)]
        rocksdb_background_mib: Option<u64>,
        /// Level-0 files of each shard's RocksDB that start a compaction (embedded).
        #[arg(long, default_value_t = storage::DEFAULT_L0_COMPACTION_TRIGGER)]
        rocksdb_l0_trigger: u32,
        /// Each shard's RocksDB cuts compactions' output into table files of about this many
        /// MiB (embedded, and a `--cluster local:N` the benchmark starts; the database's own
        /// default is RocksDB's 64).
        #[arg(long, default_value_t = bench::tpcc::TABLE_FILE_BYTES >> 20)]
        rocksdb_file_mib: u64,
        /// Windows each shard may have applied and not yet written into RocksDB, written by
        /// a thread of their own while the shard goes on (embedded; 0: on the shard's thread).
        #[arg(long, default_value_t = storage::DEFAULT_WRITE_BEHIND)]
        write_behind: usize,
        /// MiB of each shard's writes to RocksDB's main column family held as sorted runs
        /// and ingested as one table file, instead of inserted into its memtable (embedded;
        /// 0: inserted).
        #[arg(long, default_value_t = storage::DEFAULT_HELD_BYTES >> 20)]
        held_run_mib: usize,
        /// Keep every table in one RocksDB column family (embedded). By default the tables
        /// New-Order and Payment append to are kept in one of their own, so that their
        /// growth does not slow reads of the rest.
        #[arg(long)]
        rocksdb_one_family: bool,
        /// Run each shard's RocksDB flushes and compactions at normal CPU priority
        /// (embedded). By default they run at the lowest, and take what the shard threads
        /// leave idle.
        #[arg(long)]
        rocksdb_normal_priority: bool,
        /// Lets the embedded database's shard threads share the CPUs with its other threads
        /// and the clients'. By default each shard thread has a CPU of its own when there
        /// are more CPUs than shards (`embedded::Options::own_cores`), and the clients keep
        /// off those CPUs.
        #[arg(long)]
        shared_cores: bool,
        /// How the embedded database's clients run: tasks on one thread calling its async API
        /// (async), or one thread each making blocking calls (threads).
        #[arg(long, value_enum, default_value = "async")]
        driver: bench::Driver,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Runs one cluster node with the benchmark's procedures registered (as `sealdb start`
    /// does with the built-in ones), for `micro --cluster`.
    Node {
        /// The node's TOML configuration (see `sealdb start`).
        #[arg(long)]
        config: PathBuf,
    },
    /// The transaction engine on an embedded database: closed-loop clients for a duration.
    Micro {
        /// The transaction type.
        #[arg(long, value_enum, default_value = "increment")]
        workload: bench::micro::Workload,
        /// How clients run: tasks on one thread (async, embedded or cluster) or one thread
        /// each making blocking calls (threads, embedded only).
        #[arg(long, value_enum, default_value = "async")]
        driver: bench::Driver,
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: u32,
        /// Seconds to run.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Size of the key space.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Shards (default: one per core).
        #[arg(long)]
        shards: Option<u32>,
        /// Seal a window early while fewer than this many are unapplied (default 2; 0 seals
        /// on the 5 ms interval only).
        #[arg(long)]
        seal_ahead: Option<u64>,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// A sequencer group's failover: kill its leader again and again under load, and time
    /// each until the next commit.
    Failover {
        /// Sequencer group size.
        #[arg(long, default_value_t = 3)]
        sequencers: u32,
        /// Shard processes.
        #[arg(long, default_value_t = 3)]
        shards: u32,
        /// Leader kills.
        #[arg(long, default_value_t = 10)]
        kills: u32,
        /// Clients incrementing counters meanwhile.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Where the nodes keep their data (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The group's heartbeat in ms (default: the nodes' default, 100).
        #[arg(long)]
        heartbeat_ms: Option<u64>,
        /// The group's election timeout in ms (default: the nodes' default, 500).
        #[arg(long)]
        election_timeout_ms: Option<u64>,
    },
    /// Faults (kill -9, SIGSTOP, clock offsets, partitions) injected into a cluster of 3 sequencers and
    /// 3 shards x 2 replicas under list-append and bank clients; then the history checked.
    Jepsen {
        /// How long the clients run, in seconds.
        #[arg(long, default_value_t = 120)]
        time: u64,
        /// The faults to draw from, comma-separated: kill, kill-leader, pause, clock,
        /// partition (partition only in a private network namespace: use ./dev jepsen).
        #[arg(long, default_value = "kill,pause,clock")]
        nemesis: String,
        /// Seconds between faults (a range, drawn from).
        #[arg(long, default_value = "10-20")]
        interval: String,
        /// Seconds a fault lasts (a range, drawn from).
        #[arg(long, default_value = "2-6")]
        fault: String,
        /// The schedule's and clients' seed (default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// The nodes' max clock offset in ms (the clock nemesis offsets by 0.5, 1 and 2 times).
        #[arg(long, default_value_t = 50)]
        max_offset_ms: u64,
        /// Where the nodes' data and logs and the report (report.json, report.html,
        /// history.jsonl) go.
        #[arg(long, default_value = "jepsen-report")]
        dir: PathBuf,
    },
    /// Garbage collection under list-append: an embedded database with a short retention,
    /// snapshots held until refused, compactions every 10 s; checked by adya and a model.
    Retention {
        /// Seconds the clients run.
        #[arg(long, default_value_t = 600)]
        duration: u64,
        /// The retention in seconds.
        #[arg(long, default_value_t = 5)]
        retention: u64,
        /// List-append client threads.
        #[arg(long, default_value_t = 4)]
        clients: u32,
        /// Keys (lists).
        #[arg(long, default_value_t = 2_000)]
        keys: u64,
        /// Each client's pause between transactions, in ms. `adya` holds the whole history in
        /// memory: 10 minutes at 2 ms (850,000 transactions here) peaked at 20 GB.
        #[arg(long, default_value_t = 10)]
        think_ms: u64,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Storage alone on RocksDB: apply windows, read back at timestamps, scan, GC, check.
    Mvcc {
        /// Windows to apply.
        #[arg(long, default_value_t = 2_000)]
        windows: u64,
        /// Writes per window.
        #[arg(long, default_value_t = 200)]
        writes: u64,
        /// Size of the key space.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        #[command(flatten)]
        run: RunArgs,
    },
}

fn main() -> ExitCode {
    node::allocator::keep_huge_pages();
    node::allocator::collect_rarely();
    // As `sealdb` does: shards keep their table files open (`storage::RocksOptions`).
    storage::raise_open_files_limit();
    let workload = Cli::parse().workload;
    // Warnings and errors on stderr: a database that stops says why there (a shard's
    // "shard stopped" and its cause) while its callers hear only that it stopped. Nodes and
    // the fault suite log at `info` themselves.
    if !matches!(workload, Workload::Node { .. } | Workload::Jepsen { .. }) {
        node::init_logging_from("warn");
    }
    match workload {
        Workload::Tpcc {
            warehouses,
            clients,
            duration,
            warmup,
            mix,
            scale_items,
            scale_customers,
            shards,
            backend,
            pg_url,
            pg_replace,
            report_every,
            retention,
            block_cache_mib,
            row_cache_mib,
            plan,
            no_rocksdb_wal,
            rocksdb_bytes_per_sync_kib,
            rocksdb_background_mib,
            rocksdb_l0_trigger,
            write_behind,
            held_run_mib,
            rocksdb_one_family,
            rocksdb_normal_priority,
            shared_cores,
            driver,
            rocksdb_file_mib,
            backup_after,
            cluster,
            run: RunArgs { seed, dir, json },
        } => {
            if !(1..=1024).contains(&rocksdb_l0_trigger) {
                return usage_error("--rocksdb-l0-trigger must be 1 to 1024");
            }
            if !(1..=1 << 20).contains(&block_cache_mib) || row_cache_mib > 1 << 20 {
                return usage_error(
                    "--block-cache-mib must be 1 to 1048576, --row-cache-mib at most that",
                );
            }
            if !(1..=1024).contains(&rocksdb_file_mib) {
                return usage_error("--rocksdb-file-mib must be 1 to 1024");
            }
            if held_run_mib > 1024 {
                return usage_error("--held-run-mib must be at most 1024");
            }
            if rocksdb_background_mib == Some(0) {
                return usage_error("--rocksdb-background-mib must be at least 1");
            }
            if warehouses == 0 || clients.contains(&0) || duration == 0 || shards == Some(0) {
                return usage_error(
                    "--warehouses, --clients, --duration and --shards must be at least 1",
                );
            }
            if clients.len() > 16 || clients.iter().any(|&c| c > 4_096) {
                return usage_error("--clients takes at most 16 levels of at most 4096 clients");
            }
            if scale_items < 1 || !(10..=3_000).contains(&scale_customers) || scale_items > 100_000
            {
                return usage_error(
                    "--scale-items must be 1..=100000 and --scale-customers 10..=3000",
                );
            }
            let population =
                bench::tpcc::random::Population { items: scale_items, customers: scale_customers };
            let scaled = if population.is_scaled() { " (SCALED population)" } else { "" };
            let target = match cluster.target() {
                Ok(t) => t,
                Err(e) => return usage_error(&e),
            };
            let storage_flags = block_cache_mib
                != (storage::DEFAULT_BLOCK_CACHE_BYTES >> 20) as u64
                || row_cache_mib != (bench::tpcc::ROW_CACHE_BYTES >> 20) as u64
                || rocksdb_file_mib != bench::tpcc::TABLE_FILE_BYTES >> 20;
            match (backend, &pg_url) {
                (Backend::Sealdb, None)
                    if target.is_some() && (dir.is_some() || shards.is_some()) =>
                {
                    return usage_error("--dir and --shards are for the embedded database");
                }
                // A running cluster's nodes have the caches and files of their own configuration.
                (Backend::Sealdb, None)
                    if matches!(target, Some(bench::ClusterTarget::Addr(_))) && storage_flags =>
                {
                    return usage_error(
                        "--block-cache-mib, --row-cache-mib and --rocksdb-file-mib are for the \
                         embedded database or a --cluster local:N the benchmark starts; a \
                         running cluster's nodes take them from their configuration",
                    );
                }
                (Backend::Postgres, _) if target.is_some() => {
                    return usage_error("--cluster is for --backend sealdb");
                }
                _ if (plan != Plan::Serial
                    || no_rocksdb_wal
                    || rocksdb_background_mib.is_some()
                    || rocksdb_l0_trigger != storage::DEFAULT_L0_COMPACTION_TRIGGER
                    || rocksdb_one_family
                    || rocksdb_normal_priority
                    || shared_cores
                    || driver == bench::Driver::Threads
                    || write_behind != storage::DEFAULT_WRITE_BEHIND
                    || held_run_mib != storage::DEFAULT_HELD_BYTES >> 20)
                    && (target.is_some() || pg_url.is_some()) =>
                {
                    return usage_error(
                        "--plan, --no-rocksdb-wal, --write-behind, --held-run-mib, --driver \
                         threads, --shared-cores and \
                         --rocksdb-* options other than --rocksdb-file-mib are for the embedded \
                         database",
                    );
                }
                _ if rocksdb_file_mib != bench::tpcc::TABLE_FILE_BYTES >> 20
                    && pg_url.is_some() =>
                {
                    return usage_error("--rocksdb-file-mib is for sealdb");
                }
                (Backend::Postgres, Some(_)) if dir.is_some() || shards.is_some() => {
                    return usage_error(
                        "--dir and --shards are for sealdb, not --backend postgres",
                    );
                }
                (Backend::Postgres, None) => {
                    return usage_error(
                        "--backend postgres needs --pg-url (bench/postgres.sh start prints one)",
                    );
                }
                (Backend::Sealdb, Some(_)) => {
                    return usage_error("--pg-url is for --backend postgres");
                }
                _ => {}
            }
            // Clients as OS threads (`--driver threads`; the cluster's are tasks, and
            // PostgreSQL runs take few): many of them are better off without huge pages
            // (`node::allocator`).
            if matches!(backend, Backend::Sealdb)
                && target.is_none()
                && driver == bench::Driver::Threads
            {
                let threads = clients.iter().copied().max().unwrap_or(0);
                node::allocator::fit_huge_pages_to(threads as usize);
            }
            let sweep = clients.len() > 1;
            let mut reports = Vec::new();
            for (level, &clients) in clients.iter().enumerate() {
                let opts = bench::tpcc::TpccOptions {
                    warehouses,
                    clients,
                    duration: std::time::Duration::from_secs(duration),
                    mix,
                    population,
                    seed,
                    report_every: std::time::Duration::from_secs(report_every),
                    backup_after: backup_after.map(std::time::Duration::from_secs),
                    warmup: std::time::Duration::from_secs(warmup),
                };
                let result = match (backend, &pg_url) {
                    (Backend::Sealdb, None) if target.is_some() => {
                        let c = cluster.cluster.as_deref().unwrap_or_default();
                        eprintln!(
                            "tpcc: sealdb cluster {c}, {warehouses} warehouse(s), {clients} clients, {mix:?} mix, {duration} s{scaled}"
                        );
                        bench::tpcc::cluster::run_cluster(
                            &opts,
                            target.as_ref().expect("checked"),
                            usize::try_from(row_cache_mib << 20).unwrap_or(usize::MAX),
                            usize::try_from(block_cache_mib << 20).unwrap_or(usize::MAX),
                            rocksdb_file_mib << 20,
                        )
                    }
                    (Backend::Postgres, Some(url)) => {
                        eprintln!(
                            "tpcc: PostgreSQL at {url}, {warehouses} warehouse(s), {clients} clients, {mix:?} mix, {duration} s{scaled}"
                        );
                        // Each level after the first replaces the schema the one before made.
                        bench::tpcc::run_postgres(&opts, url, pg_replace || level > 0)
                    }
                    _ => {
                        eprintln!(
                            "tpcc: sealdb embedded, {warehouses} warehouse(s), {clients} clients, {mix:?} mix, {duration} s{scaled}"
                        );
                        let embedded = bench::tpcc::Embedded {
                            // A sweep loads each level into a directory of its own.
                            dir: match &dir {
                                Some(d) if sweep => Some(d.join(format!("clients-{clients}"))),
                                d => d.clone(),
                            },
                            shards,
                            retention: std::time::Duration::from_secs(retention),
                            block_cache_bytes: usize::try_from(block_cache_mib << 20)
                                .unwrap_or(usize::MAX),
                            row_cache_bytes: usize::try_from(row_cache_mib << 20)
                                .unwrap_or(usize::MAX),
                            plan: plan.into(),
                            rocksdb_wal: !no_rocksdb_wal,
                            rocksdb_bytes_per_sync: rocksdb_bytes_per_sync_kib << 10,
                            rocksdb_background_bytes_per_sec: rocksdb_background_mib
                                .map(|m| m << 20),
                            rocksdb_l0_compaction_trigger: rocksdb_l0_trigger,
                            rocksdb_table_file_bytes: rocksdb_file_mib << 20,
                            write_behind,
                            held_run_bytes: held_run_mib << 20,
                            appended_apart: !rocksdb_one_family,
                            rocksdb_low_priority_background: !rocksdb_normal_priority,
                            own_cores: !shared_cores,
                            driver,
                        };
                        bench::tpcc::run_sealdb(&opts, &embedded)
                    }
                };
                match result {
                    Ok(report) => {
                        print_tpcc(&report);
                        reports.push(report);
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            // Each level's report is printed; a sweep adds its summary and saves the list.
            match reports.pop() {
                Some(only) if reports.is_empty() => finish(Ok(only), json, |r| r.consistency),
                last => {
                    reports.extend(last);
                    finish(Ok(reports), json, |reports| {
                        print_tpcc_sweep(reports);
                        reports.iter().all(|r| r.consistency)
                    })
                }
            }
        }
        Workload::Micro {
            workload,
            driver,
            clients,
            duration,
            keys,
            shards,
            seal_ahead,
            cluster,
            run: RunArgs { seed, dir, json },
        } => {
            if clients == 0 || duration == 0 || keys < 2 || shards == Some(0) {
                return usage_error(
                    "--clients, --duration and --shards must be at least 1, --keys at least 2",
                );
            }
            let duration = std::time::Duration::from_secs(duration);
            let opts = bench::micro::MicroOptions {
                workload,
                driver,
                clients,
                duration,
                keys,
                shards,
                dir,
                seed,
                seal_ahead,
            };
            let target = match cluster.target() {
                Ok(t) => t,
                Err(e) => return usage_error(&e),
            };
            if target.is_some() && (shards.is_some() || seal_ahead.is_some()) {
                return usage_error("--shards and --seal-ahead are for the embedded database");
            }
            if target.is_some() && driver == bench::Driver::Threads {
                return usage_error("--driver threads is for the embedded database");
            }
            eprintln!(
                "micro: {workload:?}, {clients} clients ({driver:?}), {keys} keys, {} s{}",
                duration.as_secs(),
                cluster.cluster.as_deref().map(|c| format!(", cluster {c}")).unwrap_or_default()
            );
            if target.is_none() && driver == bench::Driver::Threads {
                node::allocator::fit_huge_pages_to(clients as usize);
            }
            let result = match &target {
                None => bench::micro::run(&opts),
                Some(t) => bench::micro::run_cluster(&opts, t),
            };
            let rate = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.4}"));
            finish(result, json, |r| {
                println!("throughput_tps      {:>10.0}", r.throughput_tps);
                println!("p50_ms              {:>10.3}", r.p50_ms);
                println!("p99_ms              {:>10.3}", r.p99_ms);
                println!("conflict_rate       {:>10}", rate(r.conflict_rate));
                println!("fallback_rate       {:>10}", rate(r.fallback_rate));
                println!("mean_window_entries {:>10.1}", r.mean_window_entries);
                println!(
                    "committed           {:>10}  shards {}  consistent: {}",
                    r.committed, r.shards, r.consistent
                );
                r.consistent
            })
        }
        Workload::Node { config } => {
            let node = std::fs::read_to_string(&config)
                .map_err(|e| e.to_string())
                .and_then(|text| node::NodeConfig::parse(&text).map_err(|e| e.to_string()));
            let node = match node {
                Ok(n) => n,
                Err(e) => return usage_error(&format!("{}: {e}", config.display())),
            };
            node::init_logging();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => return usage_error(&e.to_string()),
            };
            let serve = async {
                let listener = tokio::net::TcpListener::bind(node.listen)
                    .await
                    .map_err(|e| node::NodeError::io(format!("listening on {}", node.listen), e))?;
                node::run(node, listener, bench::node_procedures(), node::stop_signals()?).await
            };
            match runtime.block_on(serve) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Workload::Jepsen { time, nemesis, interval, fault, seed, max_offset_ms, dir } => {
            let range = |flag: &str, text: &str| -> Result<(Duration, Duration), String> {
                let (lo, hi) = text.split_once('-').unwrap_or((text, text));
                let lo: f64 =
                    lo.trim().parse().map_err(|_| format!("--{flag} {text:?}: N-M seconds"))?;
                let hi: f64 =
                    hi.trim().parse().map_err(|_| format!("--{flag} {text:?}: N-M seconds"))?;
                if !(0.0..=3600.0).contains(&lo) || hi < lo || hi > 3600.0 {
                    return Err(format!("--{flag} {text:?}: N-M seconds, N <= M <= 3600"));
                }
                Ok((Duration::from_secs_f64(lo), Duration::from_secs_f64(hi)))
            };
            let parsed = (|| {
                Ok::<_, String>(bench::jepsen::JepsenOptions {
                    time: Duration::from_secs(time),
                    nemeses: bench::jepsen::Nemesis::parse_list(&nemesis)?,
                    interval: range("interval", &interval)?,
                    fault: range("fault", &fault)?,
                    seed: seed.unwrap_or_else(|| rand::random::<u64>() % 1_000_000),
                    max_offset_ms,
                    command: None,
                    dir: Some(dir.clone()),
                })
            })();
            let opts = match parsed {
                Ok(o) if time > 0 && (1..=10_000).contains(&max_offset_ms) => o,
                Ok(_) => return usage_error("--time: 1 or more; --max-offset-ms: 1 to 10000"),
                Err(e) => return usage_error(&e),
            };
            if let Err(e) = std::fs::create_dir_all(&dir) {
                return usage_error(&format!("{}: {e}", dir.display()));
            }
            // The clients' warnings (calls failing over, giving up) go to stderr.
            node::init_logging();
            match bench::jepsen::run(&opts) {
                Ok(r) => {
                    println!(
                        "jepsen seed {}: {}",
                        r.seed,
                        if r.valid { "valid" } else { "INVALID" }
                    );
                    for c in &r.checks {
                        println!(
                            "  {:4} {}: {}",
                            if c.ok { "ok" } else { "FAIL" },
                            c.name,
                            c.detail
                        );
                    }
                    println!("  faults: {}; calls: {:?}", r.faults.len(), r.totals);
                    if r.valid { ExitCode::SUCCESS } else { ExitCode::FAILURE }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Workload::Failover {
            sequencers,
            shards,
            kills,
            clients,
            dir,
            json,
            heartbeat_ms,
            election_timeout_ms,
        } => {
            if sequencers < 3 || sequencers.is_multiple_of(2) || shards == 0 || kills == 0 {
                return usage_error(
                    "--sequencers: an odd number from 3; --shards, --kills: 1 or more",
                );
            }
            let group_timing = match (heartbeat_ms, election_timeout_ms) {
                (None, None) => None,
                (h, e) => Some((h.unwrap_or(100), e.unwrap_or(500))),
            };
            let opts = bench::failover::FailoverOptions {
                sequencers,
                shards,
                kills,
                clients,
                dir,
                group_timing,
            };
            println!(
                "failover: {sequencers} sequencers, {shards} shards, {kills} leader kills, {clients} clients"
            );
            match bench::failover::run(&opts) {
                Ok(r) => {
                    let each: Vec<String> =
                        r.failovers_ms.iter().map(|ms| format!("{ms:.0}")).collect();
                    println!("failover_ms         {}", each.join(" "));
                    println!("median_ms           {:>10.0}", r.median_ms);
                    println!("max_ms              {:>10.0}", r.max_ms);
                    println!(
                        "committed           {:>10}  consistent: {}",
                        r.committed, r.consistent
                    );
                    if let Some(path) = json
                        && let Err(e) = bench::report::write_json(&path, &r)
                    {
                        eprintln!("error: writing {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                    if r.consistent { ExitCode::SUCCESS } else { ExitCode::FAILURE }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Workload::Retention {
            duration,
            retention,
            clients,
            keys,
            think_ms,
            run: RunArgs { seed, dir, json },
        } => {
            if duration == 0 || retention == 0 || clients == 0 || keys == 0 {
                return usage_error(
                    "--duration, --retention, --clients and --keys must be at least 1",
                );
            }
            let opts = bench::retention::Options {
                duration: Duration::from_secs(duration),
                retention: Duration::from_secs(retention),
                clients,
                keys,
                think: Duration::from_millis(think_ms),
                seed,
                dir,
            };
            eprintln!(
                "retention: {clients} list-append clients over {keys} keys for {duration} s, \
                 retention {retention} s (seed {seed})"
            );
            finish(bench::retention::run(&opts), json, |r| {
                println!(
                    "committed          {:>12}  ({:.0}/s)",
                    r.committed,
                    r.committed as f64 / r.seconds
                );
                println!("conflicts          {:>12}", r.conflicts);
                println!(
                    "snapshot reads     {:>12}  answered {}  refused below the horizon {}",
                    r.snapshot_reads, r.answered, r.refused
                );
                println!("compactions        {:>12}", r.compactions);
                println!("horizon lag        {:>12.1} s", r.horizon_lag_s);
                println!("disk               {:>12.1} MiB", r.disk_bytes as f64 / (1 << 20) as f64);
                println!(
                    "adya               {:>12}  ({} ops, {:.1} s)",
                    if r.adya_valid { "valid" } else { "INVALID" },
                    r.history_ops,
                    r.adya_s
                );
                for f in &r.failures {
                    println!("FAILED: {f}");
                }
                println!("consistent: {}", r.consistent);
                r.consistent
            })
        }
        Workload::Mvcc { windows, writes, keys, value_bytes, run: RunArgs { seed, dir, json } } => {
            if windows == 0 || writes == 0 || keys == 0 {
                return usage_error("--windows, --writes and --keys must be at least 1");
            }
            let opts = bench::mvcc::Options { windows, writes, keys, value_bytes, seed, dir };
            eprintln!("mvcc: {windows} windows x {writes} writes over {keys} keys (seed {seed})");
            finish(bench::mvcc::run(&opts), json, |report| {
                println!("windows/s          {:>12.0}", report.windows_per_s);
                println!("writes/s           {:>12.0}", report.writes_per_s);
                println!(
                    "get latency ms     p50 {:.4}  p95 {:.4}  p99 {:.4}",
                    report.get.p50_ms, report.get.p95_ms, report.get.p99_ms
                );
                println!("scan keys/s        {:>12.0}", report.scan_keys_per_s);
                println!("gc removed         {:>12} in {:.2} s", report.gc_removed, report.gc_s);
                println!(
                    "checked reads      {:>12}  consistent: {}",
                    report.checked_reads, report.consistent
                );
                report.consistent
            })
        }
    }
}

/// Reports bad flags: the message on stderr, exit code 2, nothing run.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// Prints a report with `print` (which says whether its checks passed), saves it as JSON if
/// asked, and turns the outcome into the exit code: failure if the run failed, the checks
/// failed or the report could not be written.
fn finish<R: serde::Serialize>(
    result: Result<R, String>,
    json: Option<PathBuf>,
    print: impl FnOnce(&R) -> bool,
) -> ExitCode {
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let passed = print(&report);
    if let Some(path) = json
        && let Err(e) = bench::report::write_json(&path, &report)
    {
        eprintln!("error: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A client sweep's summary: a row per level, and which level committed the most.
fn print_tpcc_sweep(reports: &[bench::tpcc::Report]) {
    println!();
    println!(
        "{:>8} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "clients", "txn/s", "tpmC", "NO p50 ms", "NO p99 ms", "re-executed", "consistency"
    );
    for r in reports {
        let new_order = r.latency_ms.get("new_order");
        let reexecuted = r.engine.map_or("-".to_string(), |e| format!("{:.1}%", e.reexecuted_pct));
        println!(
            "{:>8} {:>10.0} {:>10.0} {:>12.2} {:>12.2} {:>12} {:>12}",
            r.clients,
            r.throughput_tps,
            r.tpmc,
            new_order.map_or(f64::NAN, |l| l.p50),
            new_order.map_or(f64::NAN, |l| l.p99),
            reexecuted,
            if r.consistency { "passed" } else { "FAILED" },
        );
    }
    if let Some(best) = reports.iter().max_by(|a, b| a.throughput_tps.total_cmp(&b.throughput_tps))
    {
        println!("best: {} clients, {:.0} txn/s", best.clients, best.throughput_tps);
    }
}

fn print_tpcc(r: &bench::tpcc::Report) {
    println!(
        "backend {}  warehouses {}  clients {}  mix {:?}  {:.1} s  (load {:.1} s){}",
        r.backend,
        r.warehouses,
        r.clients,
        r.mix,
        r.duration_s,
        r.load_s,
        if r.scaled { "  SCALED population" } else { "" }
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}",
        "transaction", "count", "p50 ms", "p95 ms", "p99 ms"
    );
    for (name, l) in &r.latency_ms {
        println!("{name:<14} {:>9} {:>9.2} {:>9.2} {:>9.2}", l.count, l.p50, l.p95, l.p99);
    }
    println!("tpmC            {:>12.0}", r.tpmc);
    println!("throughput_tps  {:>12.0}", r.throughput_tps);
    println!("rollbacks       {:>12}", r.rollbacks);
    println!("retries         {:>12}", r.retries);
    if r.consistency {
        println!("consistency     passed (conditions 1-4)");
    } else {
        println!("consistency     FAILED");
        for f in &r.consistency_failures {
            println!("  {f}");
        }
    }
}
