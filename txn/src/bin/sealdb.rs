//! The `sealdb` binary: run a node of a cluster, start a local development cluster, or use one
//! from the shell.
//!
//! ```text
//! sealdb start --config node.toml        run one node (see txn::remote::NodeConfig)
//! sealdb dev --shards 3 [--secure]        a sequencer and 3 shard processes on 127.0.0.1
//! sealdb cert DIR [--name HOST]...        a development CA, node and client certificates
//! sealdb put KEY VALUE --addr HOST:PORT   through the cluster whose sequencer is there
//! sealdb get KEY --addr HOST:PORT
//! sealdb scan START [END] --addr HOST:PORT [--limit N]
//! sealdb status --addr HOST:PORT
//! ```
//!
//! Against a cluster running TLS, the shell commands take `--certs DIR` (`ca.pem`,
//! `client.pem` and `client.key` in it, as `sealdb cert` writes them).
//!
//! Nodes log to stderr through `tracing` (`RUST_LOG`, default `info`) and stop cleanly on
//! SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use clock::Clock;
use storage::KeyRange;
use txn::ReadAt;
use txn::builtin::put_args;
use txn::remote::{
    Client, LocalProcesses, LocalSpec, NodeConfig, Tls, cluster_status, make_certificates,
    run_node, stop_signals,
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
    /// The cluster's windows, shards, safe times and lag.
    Status {
        #[command(flatten)]
        target: Target,
    },
}

/// Which cluster a shell command talks to, and how.
#[derive(clap::Args)]
struct Target {
    /// The sequencer's address.
    #[arg(long)]
    addr: String,
    /// For a cluster running TLS: a directory with ca.pem, client.pem and client.key.
    #[arg(long)]
    certs: Option<PathBuf>,
}

impl Target {
    fn tls(&self) -> Result<Option<Tls>, String> {
        self.certs.as_deref().map(|d| Tls::load_dir(d, "client")).transpose()
    }

    async fn client(&self) -> Result<Client, String> {
        let procedures = txn::builtin::registry();
        Client::connect_with(&self.addr, clock(), procedures, self.tls()?)
            .await
            .map_err(|e| self.explain(e.to_string()))
    }

    /// `error`, with a hint when a connection failed and no certificates were given: the
    /// cluster may run TLS.
    fn explain(&self, error: String) -> String {
        match &self.certs {
            None if error.contains("transport error") => format!(
                "{error} (if the cluster runs TLS, pass --certs DIR with ca.pem, client.pem \
                 and client.key)"
            ),
            _ => error,
        }
    }
}

fn main() -> ExitCode {
    txn::remote::init_logging();
    let cli = Cli::parse();
    if let Cmd::Dev { shards, dir, port, secure } = &cli.command {
        return match dev(*shards, dir, *port, *secure) {
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
            run_node(node, txn::builtin::registry()).await
        }
        Cmd::Cert { dir, names } => {
            make_certificates(&names)?.write(&dir)?;
            println!(
                "wrote ca.pem, ca.key, node.pem, node.key, client.pem, client.key in {}",
                dir.display()
            );
            println!(
                "every node's [tls]: ca = ca.pem, cert = node.pem, key = node.key; keep ca.key apart"
            );
            Ok(())
        }
        Cmd::Put { key, value, target } => {
            let client = target.client().await?;
            client
                .call("kv.put", &put_args(key.as_bytes(), value.as_bytes()))
                .await
                .map_err(|e| e.to_string())?;
            println!("OK");
            Ok(())
        }
        Cmd::Get { key, target } => {
            let client = target.client().await?;
            let ts = client.read_ts(ReadAt::Latest);
            match client.get(key.as_bytes(), ts).await.map_err(|e| e.to_string())? {
                Some(v) => println!("{}", String::from_utf8_lossy(&v)),
                None => println!("(absent)"),
            }
            Ok(())
        }
        Cmd::Scan { start, end, target, limit } => {
            let client = target.client().await?;
            let range = KeyRange { start: start.into_bytes(), end: end.map(String::into_bytes) };
            let ts = client.read_ts(ReadAt::Latest);
            for (k, v) in client.scan(&range, ts, limit).await.map_err(|e| e.to_string())? {
                println!("{}\t{}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v));
            }
            Ok(())
        }
        Cmd::Status { target } => {
            let tls = target.tls()?;
            let addr = &target.addr;
            let status = cluster_status(addr, &clock(), tls.as_ref())
                .await
                .map_err(|e| target.explain(e.to_string()))?;
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

/// Runs a sequencer and `shards` shard processes on 127.0.0.1 until Ctrl-C.
fn dev(shards: u32, dir: &Path, port: u16, secure: bool) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let tls_dir = secure.then(|| dir.join("certs"));
    if let Some(certs) = &tls_dir
        && !certs.join("ca.pem").exists()
    {
        make_certificates(&[])?.write(certs)?;
    }
    let spec = LocalSpec {
        command: vec![exe.display().to_string(), "start".into()],
        dir: dir.to_path_buf(),
        shards,
        port: Some(port),
        max_offset_ms: 1,
        window_ms: 5,
        split_keys: Vec::new(),
        tls_dir: tls_dir.clone(),
    };
    let local = LocalProcesses::spawn(&spec)?;
    let sequencer = local.sequencer.clone();
    println!("sealdb dev cluster: sequencer on {sequencer}, shards on {}", local.shards.join(", "));
    println!("configuration, data and logs in {}", dir.display());
    let certs = tls_dir.map(|d| format!(" --certs {}", d.display())).unwrap_or_default();
    println!("try:  sealdb put hello world --addr {sequencer}{certs}");
    println!("      sealdb get hello --addr {sequencer}{certs}");
    println!("      sealdb status --addr {sequencer}{certs}");
    println!("Ctrl-C stops the cluster.");
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        stop_signals()?.await;
        Ok::<(), String>(())
    })?;
    local.stop();
    println!("stopped");
    Ok(())
}
