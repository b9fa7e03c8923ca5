//! The `sealdb` binary: run a node of a cluster, start a local development cluster, or use one
//! from the shell.
//!
//! ```text
//! sealdb start --config node.toml        run one node (see node::NodeConfig)
//! sealdb dev --shards 3 [--secure]        a sequencer and 3 shard processes on 127.0.0.1
//! sealdb dev --sequencers 3 --shards 3    the same with a sequencer group of 3 (raft)
//! sealdb dev --sequencers 3 --shards 3 --replicas 2   and two replicas of each shard
//! sealdb cert DIR [--name HOST]...        a development CA, node and client certificates
//! sealdb put KEY VALUE --addr HOST:PORT   through the cluster whose sequencer is there
//! sealdb get KEY --addr HOST:PORT
//! sealdb scan START [END] --addr HOST:PORT [--limit N]
//! sealdb status --addr HOST:PORT
//! sealdb txn-status CLIENT_ID --addr HOST:PORT
//! sealdb backup --to DIR --addr HOST:PORT  a copy of the cluster (node::backup)
//! sealdb restore --from DIR --config node.toml   a node's data from a backup, before it starts
//! ```
//!
//! Against a cluster running TLS, the shell commands take `--certs DIR` (`ca.pem`,
//! `client.pem` and `client.key` in it, as `sealdb cert` writes them); `backup` needs the
//! node certificate (`node.pem`, `node.key`) from there.
//!
//! Nodes log to stderr through `tracing` (`RUST_LOG`, default `info`) and stop cleanly on
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use node::shell::{self, Target};
use node::{NodeConfig, init_logging, stop_signals};
use tokio::net::TcpListener;

// mimalloc for Rust and, through its `override` feature, for RocksDB's C++ allocations
// (`node::allocator`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sealdb", version, about = "sealdb: a Calvin-style transactional layer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one node from its configuration file.
    Start {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Starts a sequencer and N shard processes on 127.0.0.1, until Ctrl-C.
    Dev {
        /// Sequencer processes: 1, or 3 for a group that survives losing one.
        #[arg(long, default_value_t = 1)]
        sequencers: u32,
        /// Shards.
        #[arg(long, default_value_t = 3)]
        shards: u32,
        /// Replicas of each shard (processes), each applying the log on its own.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// Where the nodes keep their configuration, data and logs.
        #[arg(long, default_value = "sealdb-dev")]
        dir: PathBuf,
        /// The sequencer's port; shards take the ports after it.
        #[arg(long, default_value_t = 7100)]
        port: u16,
        /// Run TLS on every hop, with certificates made in DIR/certs (`sealdb cert`).
        #[arg(long)]
        secure: bool,
    },
    /// Makes a development CA and a node and a client certificate in DIR.
    Cert {
        dir: PathBuf,
        /// A host name or address nodes are reached at, besides localhost and 127.0.0.1.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Writes a key.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Reads a key (the latest value).
    Get {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Lists keys from START up to END (exclusive; the end of the key space if absent).
    Scan {
        start: String,
        end: Option<String>,
        #[command(flatten)]
        target: Target,
        /// At most this many keys.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The cluster's windows, shard replicas, safe times, digests and lag.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// What became of the transaction submitted under a client id (32 hex digits).
    TxnStatus {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Copies the running cluster into DIR (not existing, or empty): every shard's newest
    /// checkpoint and the log after the oldest, so that a restore holds every transaction
    /// acknowledged before the backup began.
    Backup {
        /// Where the backup goes.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Writes one node's data from a backup, before the node first starts (run it for every
    /// node of the new cluster, then start them).
    Restore {
        /// The backup.
        #[arg(long)]
        from: PathBuf,
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    node::allocator::keep_huge_pages();
    node::allocator::collect_rarely();
    // A shard holds a descriptor for each table file it has open (`storage::RocksOptions`).
    let open_files = storage::raise_open_files_limit();
    init_logging();
    tracing::debug!(?open_files, "limit on open files");
    let cli = Cli::parse();
    if let Cmd::Dev { sequencers, shards, replicas, dir, port, secure } = &cli.command {
        return exit(shell::dev(*sequencers, *shards, *replicas, dir, *port, *secure));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return exit(Err(format!("starting the runtime: {e}"))),
    };
    exit(runtime.block_on(run(cli.command)))
}

/// Says under which transparent-huge-page mode the node runs ([`node::allocator`]).
fn log_huge_pages() {
    match node::allocator::transparent_huge_pages().as_deref() {
        Some("never") => tracing::warn!(
            "transparent huge pages are off (never): RocksDB's caches and memtables run on 4 KiB \
             pages, slower than the README's figures (measured under madvise)"
        ),
        Some(mode) => tracing::info!(mode, "transparent huge pages"),
        None => tracing::info!("transparent huge pages: the kernel does not say"),
    }
}

fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sealdb: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Cmd) -> Result<(), String> {
    match command {
        Cmd::Start { config } => {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let config =
                NodeConfig::parse(&text).map_err(|e| format!("{}: {e}", config.display()))?;
            let listener = TcpListener::bind(config.listen)
                .await
                .map_err(|e| format!("listening on {}: {e}", config.listen))?;
            let shutdown = stop_signals().map_err(|e| e.to_string())?;
            log_huge_pages();
            let registry = txn::builtin::registry();
            node::run(config, listener, registry, shutdown).await.map_err(|e| e.to_string())
        }
        Cmd::Cert { dir, names } => shell::cert(&dir, &names),
        Cmd::Put { key, value, target } => shell::put(&target, &key, &value).await,
        Cmd::Get { key, target } => shell::get(&target, &key).await,
        Cmd::Scan { start, end, target, limit } => shell::scan(&target, start, end, limit).await,
        Cmd::Status { target } => shell::status(&target).await,
        Cmd::TxnStatus { id, target } => shell::txn_status(&target, &id).await,
        Cmd::Backup { to, target } => {
            // Both calls a backup makes are node-only: it presents the node certificate.
            let tls = target.certs.as_deref().map(|d| client::Tls::load_dir(d, "node"));
            let tls = tls.transpose().map_err(|e| e.to_string())?;
            let clock = clock::Clock::system(std::time::Duration::from_millis(5));
            let manifest = node::backup::backup(&target.addr, &to, &clock, tls.as_ref())
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "backed up {} shards and windows {} to {} into {}",
                manifest.shards.len(),
                manifest.log.0,
                manifest.log.1,
                to.display()
            );
            Ok(())
        }
        Cmd::Restore { from, config } => {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let config =
                NodeConfig::parse(&text).map_err(|e| format!("{}: {e}", config.display()))?;
            let said = node::backup::restore(&from, &config).map_err(|e| e.to_string())?;
            println!("{said}");
            Ok(())
        }
        Cmd::Dev { .. } => unreachable!("handled before the runtime starts"),
    }
}
