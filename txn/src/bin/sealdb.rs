//! The `sealdb` binary: run a node of a cluster, start a local development cluster, or use one
//! from the shell.
//!
//! ```text
//! sealdb start --config node.toml        run one node (see txn::remote::NodeConfig)
//! sealdb dev --shards 3                   a sequencer and 3 shard processes on 127.0.0.1
//! sealdb put KEY VALUE --addr HOST:PORT   through the cluster whose sequencer is there
//! sealdb get KEY --addr HOST:PORT
//! sealdb scan START [END] --addr HOST:PORT [--limit N]
//! sealdb status --addr HOST:PORT
//! ```
//!
//! Nodes log to stderr through `tracing` (`RUST_LOG`, default `info`) and stop cleanly on
//! SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use clock::{Clock, SystemClock};
use storage::{KeyRange, Limits};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use txn::ReadAt;
use txn::builtin::put_args;
use txn::remote::{
    Client, NodeConfig, Role, SequencerNode, ShardConfig, ShardNode, cluster_status,
};

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
        /// Shard processes.
        #[arg(long, default_value_t = 3)]
        shards: u32,
        /// Where the nodes keep their configuration, data and logs.
        #[arg(long, default_value = "sealdb-dev")]
        dir: PathBuf,
        /// The sequencer's port; shards take the ports after it.
        #[arg(long, default_value_t = 7100)]
        port: u16,
    },
    /// Writes a key.
    Put {
        key: String,
        value: String,
        /// The sequencer's address.
        #[arg(long)]
        addr: String,
    },
    /// Reads a key (the latest value).
    Get {
        key: String,
        /// The sequencer's address.
        #[arg(long)]
        addr: String,
    },
    /// Lists keys from START up to END (exclusive; the end of the key space if absent).
    Scan {
        start: String,
        end: Option<String>,
        /// The sequencer's address.
        #[arg(long)]
        addr: String,
        /// At most this many keys.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The cluster's windows, shards, safe times and lag.
    Status {
        /// The sequencer's address.
        #[arg(long)]
        addr: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Cmd::Dev { shards, dir, port } = &cli.command {
        return match dev(*shards, dir, *port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&format!("starting the runtime: {e}")),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("sealdb: {message}");
    ExitCode::FAILURE
}

fn clock() -> Arc<Clock> {
    // Shell commands are clients: an unpersisted clock with the default bound.
    Arc::new(Clock::system(std::time::Duration::from_millis(5)))
}

async fn run(command: Cmd) -> Result<(), String> {
    match command {
        Cmd::Start { config } => {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let node =
                NodeConfig::parse(&text).map_err(|e| format!("{}: {e}", config.display()))?;
            start(node).await
        }
        Cmd::Put { key, value, addr } => {
            let client = Client::connect(&addr, clock()).await.map_err(|e| e.to_string())?;
            client
                .call("kv.put", &put_args(key.as_bytes(), value.as_bytes()))
                .await
                .map_err(|e| e.to_string())?;
            println!("OK");
            Ok(())
        }
        Cmd::Get { key, addr } => {
            let client = Client::connect(&addr, clock()).await.map_err(|e| e.to_string())?;
            let ts = client.read_ts(ReadAt::Latest);
            match client.get(key.as_bytes(), ts).await.map_err(|e| e.to_string())? {
                Some(v) => println!("{}", String::from_utf8_lossy(&v)),
                None => println!("(absent)"),
            }
            Ok(())
        }
        Cmd::Scan { start, end, addr, limit } => {
            let client = Client::connect(&addr, clock()).await.map_err(|e| e.to_string())?;
            let range = KeyRange { start: start.into_bytes(), end: end.map(String::into_bytes) };
            let ts = client.read_ts(ReadAt::Latest);
            for (k, v) in client.scan(&range, ts, limit).await.map_err(|e| e.to_string())? {
                println!("{}\t{}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v));
            }
            Ok(())
        }
        Cmd::Status { addr } => {
            let status = cluster_status(&addr, &clock()).await.map_err(|e| e.to_string())?;
            let sealed = clock::Timestamp::from_u64(status.sealed_ts);
            println!("sequencer {addr}: last window {} at {sealed}", status.sealed_epoch);
            for s in &status.shards {
                let safe = clock::Timestamp::from_u64(s.safe_ts);
                let lag = status.sealed_epoch.saturating_sub(s.applied_epoch);
                println!(
                    "shard {} at {}: applied window {} (lag {lag}), safe time {safe}",
                    s.shard, status.shard_addrs[s.shard as usize], s.applied_epoch
                );
            }
            for u in &status.unreachable {
                println!("unreachable: {u}");
            }
            Ok(())
        }
        Cmd::Dev { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// Runs a node until SIGINT or SIGTERM.
async fn start(config: NodeConfig) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    let clock =
        Clock::open(config.data_dir.join("clock"), Arc::new(SystemClock), config.max_offset)
            .map_err(|e| e.to_string())?;
    let clock = Arc::new(clock);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let stop = async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    };
    match config.role {
        Role::Sequencer => {
            let node = SequencerNode::start(
                &config.data_dir.join("log"),
                config.listen,
                clock,
                config.sealer,
                config.layout,
            )
            .await?;
            println!("sequencer listening on {}", node.addr());
            let why = stop.await;
            tracing::info!(signal = why, "stopping");
            node.shutdown().await
        }
        Role::Shard => {
            let shard = config.shard.expect("validated: a shard node has a shard");
            let listener = TcpListener::bind(config.listen)
                .await
                .map_err(|e| format!("listening on {}: {e}", config.listen))?;
            let shard_config = ShardConfig {
                shard,
                map: config.layout.map.clone(),
                dir: Some(config.data_dir.join("rocksdb")),
                sequencer: config.sequencer.clone(),
                peers: config.layout.shards.clone(),
                procedures: txn::builtin::registry(),
                limits: Limits::default(),
                retention: std::time::Duration::from_secs(60),
            };
            let node = ShardNode::start(shard_config, listener, clock).await?;
            println!("shard {} listening on {}", shard.0, node.addr());
            let why = stop.await;
            tracing::info!(signal = why, "stopping");
            node.shutdown().await;
            Ok(())
        }
    }
}

/// Writes a node's configuration for the development cluster.
fn dev_config(
    dir: &Path,
    name: &str,
    role: &str,
    listen: &str,
    shard: Option<u32>,
    cluster: &str,
) -> Result<PathBuf, String> {
    let data = dir.join(name);
    let shard = shard.map(|s| format!("shard = {s}\n")).unwrap_or_default();
    let text = format!(
        "role = \"{role}\"\nlisten = \"{listen}\"\ndata_dir = {:?}\n{shard}max_offset_ms = 1\n\n{cluster}",
        data.display().to_string()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Runs a sequencer and `shards` shard processes on 127.0.0.1 until Ctrl-C.
fn dev(shards: u32, dir: &Path, port: u16) -> Result<(), String> {
    if shards == 0 || u32::from(port) + shards > 65535 {
        return Err(format!("--shards {shards} from port {port}: out of range"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| e.to_string())?;
    let sequencer = format!("127.0.0.1:{port}");
    let addrs: Vec<String> =
        (1..=shards).map(|i| format!("127.0.0.1:{}", u32::from(port) + i)).collect();
    let cluster = format!(
        "[cluster]\nsequencer = \"{sequencer}\"\nshards = [{}]\n",
        addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
    );
    let mut configs = vec![dev_config(&dir, "sequencer", "sequencer", &sequencer, None, &cluster)?];
    for (i, addr) in addrs.iter().enumerate() {
        configs.push(dev_config(
            &dir,
            &format!("shard-{i}"),
            "shard",
            addr,
            Some(i as u32),
            &cluster,
        )?);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children: Vec<Child> = Vec::new();
    for config in &configs {
        let log = config.with_extension("log");
        let log = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&exe)
            .arg("start")
            .arg("--config")
            .arg(config)
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        children.push(child);
    }
    println!("sealdb dev cluster: sequencer on {sequencer}, shards on {}", addrs.join(", "));
    println!("configuration, data and logs in {}", dir.display());
    println!("try:  sealdb put hello world --addr {sequencer}");
    println!("      sealdb get hello --addr {sequencer}");
    println!("      sealdb status --addr {sequencer}");
    println!("Ctrl-C stops the cluster.");
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        Ok::<(), String>(())
    })?;
    // Shards first, then the sequencer, each with SIGTERM: a clean stop.
    for child in children.iter_mut().rev() {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        let _ = child.wait();
    }
    println!("stopped");
    Ok(())
}
