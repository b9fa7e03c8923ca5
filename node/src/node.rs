//! Running one node from its configuration until SIGINT or SIGTERM, and starting a whole
//! cluster of node processes on 127.0.0.1 ([`LocalProcesses`], for `sealdb dev`, the
//! benchmark's `--cluster local:N` and the fault tests).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clock::{Clock, SystemClock};
use storage::Limits;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::{NodeConfig, NodeError, Role, SequencerNode, ShardConfig, ShardNode};
use txn::Registry;

/// Sends a node's logs to stderr through `tracing`, filtered by `RUST_LOG` (default `info`),
/// in colour on a terminal only.
pub fn init_logging() {
    init_logging_from("info");
}

/// [`init_logging`] at `level` (`info`, `warn`, ...) unless `RUST_LOG` says otherwise.
pub fn init_logging_from(level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Installs handlers for SIGINT and SIGTERM now; the future resolves, to the signal's name,
/// when the first of them arrives. Call within a tokio runtime.
pub fn stop_signals() -> Result<impl Future<Output = &'static str>, NodeError> {
    let handler = |e| NodeError::io("installing a signal handler", e);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(handler)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(handler)?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

/// Runs the node `config` describes, serving on `listener`, until `shutdown` resolves (then
/// it stops cleanly) or the node fails (then it returns why). Exits the process on a panic.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    procedures: Registry,
    shutdown: impl Future<Output = &'static str>,
) -> Result<(), NodeError> {
    exit_on_panic();
    std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::at(&config.data_dir, e))?;
    // One node per data directory: two would write over each other's log, storage and clock.
    let _lock = ::sequencer::lock_dir(&config.data_dir)?;
    let clock =
        Clock::open(config.data_dir.join("clock"), Arc::new(SystemClock), config.max_offset)?;
    let clock = Arc::new(clock);
    match config.role {
        Role::Sequencer => {
            let dir = config.data_dir.join("log");
            let node = match config.group {
                None => {
                    let (sealer, layout, tls) = (config.sealer, config.layout, config.tls);
                    SequencerNode::start(&dir, listener, clock, sealer, layout, tls).await?
                }
                Some(group) => {
                    let (sealer, layout, tls) = (config.sealer, config.layout, config.tls);
                    SequencerNode::start_group(&dir, listener, clock, sealer, layout, tls, group)
                        .await?
                }
            };
            println!("sequencer listening on {}", node.addr());
            metrics(config.metrics_listen, node.metrics_source()).await?;
            let failed = until_stopped_or_failed(shutdown, node.failed()).await;
            let stopped = node.shutdown().await;
            match failed {
                None => stopped,
                Some(why) => Err(NodeError::Stopped(format!("the sequencer stopped: {why}"))),
            }
        }
        Role::Shard => {
            let shard =
                config.shard.ok_or(NodeError::Config("a shard node needs its shard".into()))?;
            let shard_config = ShardConfig {
                shard,
                replica: config.replica,
                map: config.layout.map.clone(),
                dir: Some(config.data_dir.join("rocksdb")),
                sequencer: config.sequencer.clone(),
                peers: config.layout.shards.clone(),
                procedures,
                limits: Limits::default(),
                retention: config.retention,
                replay_allowance: config.replay_allowance,
                flush_interval: config.flush_interval,
                row_cache_bytes: config.row_cache_bytes,
                block_cache_bytes: config.block_cache_bytes,
                table_file_bytes: config.table_file_bytes,
                write_behind: config.write_behind,
                held_run_bytes: config.held_run_bytes,
                checkpoint_transfer_bytes_per_s: config.checkpoint_transfer_bytes_per_s,
                apart: config.apart.clone(),
                apart_hint_bytes: config.apart_hint_bytes,
                tls: config.tls,
            };
            // The metrics server outlives a shard started again (below): it asks the current one.
            let current: Arc<std::sync::Mutex<Option<MetricsSource>>> = Arc::default();
            let source = current.clone();
            let source: MetricsSource = Arc::new(move || {
                let f = source.lock().unwrap_or_else(|e| e.into_inner()).clone();
                f.map(|f| f()).unwrap_or_default()
            });
            let mut listener = Some(listener);
            let mut addr = None;
            tokio::pin!(shutdown);
            loop {
                let listener = match (listener.take(), addr) {
                    (Some(listener), _) => listener,
                    (None, Some(addr)) => TcpListener::bind(addr)
                        .await
                        .map_err(|e| NodeError::io(format!("listening again on {addr}"), e))?,
                    (None, None) => unreachable!("the first start has the listener"),
                };
                let node = ShardNode::start(shard_config.clone(), listener, clock.clone()).await?;
                *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(node.metrics_source());
                if addr.is_none() {
                    println!("shard {} listening on {}", shard.0, node.addr());
                    metrics(config.metrics_listen, source.clone()).await?;
                }
                addr = Some(node.addr());
                let failed = until_stopped_or_failed(shutdown.as_mut(), node.failed()).await;
                let catch_up = node.needs_catch_up();
                *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let Some(why) = failed else {
                    node.shutdown().await;
                    return Ok(());
                };
                // A replica left behind by the log's truncation (partitioned or paused longer
                // than the sequencer waits for absent replicas), or further behind its peers
                // than they keep versions for, starts again, as a restart would: from a
                // fellow's checkpoint. Its storage must be closed first.
                let stopped = || NodeError::Stopped(format!("shard {} stopped: {why}", shard.0));
                if !catch_up {
                    node.shutdown().await;
                    return Err(stopped());
                }
                if !node.shutdown_released(RELEASE_PATIENCE).await {
                    return Err(stopped());
                }
                tracing::warn!(shard = shard.0, replica = config.replica, "{why}: starting again");
            }
        }
    }
}

type MetricsSource = Arc<dyn Fn() -> Vec<super::Metric> + Send + Sync>;

/// How long a shard that stopped to catch up waits for its storage to be let go before it
/// starts again; past it the process exits instead (a restart catches up the same way).
const RELEASE_PATIENCE: Duration = Duration::from_secs(10);

/// Runs until a stop signal (`None`) or until the node cannot go on (`Some(why)`): then the
/// process exits with an error instead of lingering up and doing nothing.
async fn until_stopped_or_failed(
    stop: impl Future<Output = &'static str>,
    failed: impl Future<Output = String>,
) -> Option<String> {
    tokio::select! {
        why = stop => {
            tracing::info!(signal = why, "stopping");
            None
        }
        why = failed => Some(why),
    }
}

/// Makes any panic end the process (status 70) once it is reported. A panic in a node is a
/// bug or a failure it cannot go on from (the clock's high-water mark could not be written,
/// out of file descriptors): a node with a dead apply thread must not stay up applying
/// nothing. What was acknowledged is durable in the log; a restart replays the rest.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(%info, "a node thread panicked; exiting");
        std::process::exit(70);
    }));
}

/// Serves `source`'s metrics on `listen`, if given, for as long as the runtime runs.
async fn metrics(
    listen: Option<std::net::SocketAddr>,
    source: MetricsSource,
) -> Result<(), NodeError> {
    if let Some(addr) = listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| NodeError::io(format!("metrics_listen {addr}"), e))?;
        tracing::info!(%addr, "metrics at /metrics");
        tokio::spawn(super::serve_metrics(listener, source));
    }
    Ok(())
}

/// How to start a local cluster of node processes.
#[derive(Debug, Clone)]
pub struct LocalSpec {
    /// The program and the arguments before `--config FILE` that run one node, e.g. the
    /// `sealdb` binary and `start`.
    pub command: Vec<String>,
    /// Where configurations, data and logs go.
    pub dir: PathBuf,
    /// Sequencer processes: 1, or a group of 3 (or any odd number) replicating the log.
    pub sequencers: u32,
    /// Shards.
    pub shards: u32,
    /// Replicas (processes) of each shard.
    pub replicas: u32,
    /// The first sequencer's port, the other nodes on the ports after it; `None` picks free
    /// ports.
    pub port: Option<u16>,
    /// The clocks' bound (commit-wait lasts about this long).
    pub max_offset_ms: u64,
    /// The sequencer's window interval.
    pub window_ms: u64,
    /// The shard map's split keys (one fewer than shards); empty splits the first key byte
    /// evenly.
    pub split_keys: Vec<Vec<u8>>,
    /// A sequencer group's heartbeat and election timeout in ms (`[group]`); `None` keeps
    /// the defaults.
    pub group_timing: Option<(u64, u64)>,
    /// Run node `i` as user and group `base + i`, owning its data directory, so that fault
    /// tests can tell the nodes' traffic apart (iptables' owner match); needs root. `None`
    /// runs them as this process's user.
    pub run_as: Option<u32>,
    /// A directory of certificates from [`make_certificates`](super::make_certificates): the
    /// nodes run TLS with `node.pem` and `node.key`. `None` runs without TLS.
    pub tls_dir: Option<PathBuf>,
    /// How the log is reclaimed; `None` keeps the defaults.
    pub reclamation: Option<Reclamation>,
    /// Each shard's caches and table file size; `None` keeps the defaults.
    pub storage_mib: Option<StorageMib>,
    /// Threads of each node's async runtime (tokio's `TOKIO_WORKER_THREADS`); `None` leaves
    /// the default, one per core. Nodes sharing one machine may take a share of its cores
    /// each ([`LocalSpec::cores_each`]).
    pub worker_threads: Option<usize>,
}

impl LocalSpec {
    /// This machine's cores shared out among `nodes` processes, at least one each.
    pub fn cores_each(nodes: u32) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / nodes.max(1) as usize).max(1)
    }
}

/// A shard's storage settings in a [`LocalSpec`], as its configuration file takes them.
#[derive(Debug, Clone)]
pub struct StorageMib {
    /// `row_cache_mib`.
    pub row_cache: u64,
    /// `block_cache_mib`.
    pub block_cache: u64,
    /// `table_file_mib`.
    pub table_file: u64,
    /// `apart_hex`: key prefixes kept in a column family of their own.
    pub apart: Vec<Vec<u8>>,
    /// `apart_hint_bytes`.
    pub apart_hint_bytes: usize,
}

/// Settings of log reclamation for a [`LocalSpec`] (tests make them small, so that the log is
/// truncated while they run).
#[derive(Debug, Clone, Copy)]
pub struct Reclamation {
    /// How often shards checkpoint and report (`flush_interval_ms`).
    pub flush_interval_ms: u64,
    /// The log's segment size (`[window] log_segment_bytes`).
    pub log_segment_bytes: u64,
    /// When the sequencer stops counting a silent replica (`absent_replica_ms`).
    pub absent_replica_ms: u64,
    /// How long client ids are deduplicated (`[window] dedup_retention_ms`): the log keeps
    /// at least this long of windows.
    pub dedup_retention_ms: u64,
    /// How far back shards' reads at a timestamp go (`retention_ms`).
    pub retention_ms: u64,
    /// How much longer shards keep versions for replicas replaying behind their peers
    /// (`replay_allowance_ms`).
    pub replay_allowance_ms: u64,
    /// MiB a second a shard replica sends to a fellow catching up from its checkpoint
    /// (`checkpoint_transfer_mib_per_s`; 0: unlimited).
    pub transfer_mib_per_s: u64,
}

impl Default for Reclamation {
    /// The defaults of a node's configuration file.
    fn default() -> Reclamation {
        let sealer = ::sequencer::SealerConfig::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Reclamation {
            flush_interval_ms: crate::config::DEFAULT_FLUSH_INTERVAL_MS,
            log_segment_bytes: sealer.log_segment_bytes,
            absent_replica_ms: ms(sealer.absent_replica),
            dedup_retention_ms: ms(sealer.dedup_retention),
            retention_ms: crate::config::DEFAULT_RETENTION_MS,
            replay_allowance_ms: crate::config::DEFAULT_REPLAY_ALLOWANCE_MS,
            transfer_mib_per_s: 0,
        }
    }
}

/// A running local cluster: sequencer processes (one, or a group) and shard processes on
/// 127.0.0.1; node `i` is sequencer `i` below [`LocalProcesses::sequencers`], then the shards'
/// replicas, shard by shard ([`LocalProcesses::shard_node`]).
/// Dropping it kills them; [`LocalProcesses::stop`] stops them cleanly.
pub struct LocalProcesses {
    /// The sequencer's address, or a group's members' (comma-separated), as clients take it.
    pub sequencer: String,
    /// How many sequencer processes come first among the nodes.
    pub sequencers: usize,
    /// The shards' addresses: each shard's replicas, comma-separated.
    pub shards: Vec<String>,
    /// Replicas of each shard.
    pub replicas: usize,
    nodes: Vec<(PathBuf, Option<Child>)>,
    /// Where each node listens.
    addrs: Vec<String>,
    run_as: Option<u32>,
    command: Vec<String>,
    worker_threads: Option<usize>,
}

/// `bytes` as hex digits, two per byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `count` distinct free ports: each is held bound until all are found, since a port let go
/// at once may be handed out again by the next bind (a local cluster was once configured with
/// one port twice).
fn free_ports(count: u32) -> Result<Vec<u16>, NodeError> {
    let port = |e| NodeError::io("finding a free port", e);
    let held = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(port))
        .collect::<Result<Vec<_>, _>>()?;
    held.iter().map(|l| Ok(l.local_addr().map_err(port)?.port())).collect()
}

impl LocalProcesses {
    fn not_running(&self, i: usize) -> NodeError {
        NodeError::Process { name: format!("node {i}"), why: "not running".into() }
    }

    /// Writes the nodes' configurations under `spec.dir` and starts them.
    pub fn spawn(spec: &LocalSpec) -> Result<LocalProcesses, NodeError> {
        let mut local = LocalProcesses::configure(spec)?;
        for i in 0..local.nodes.len() {
            local.start(i)?;
        }
        Ok(local)
    }

    /// Writes the nodes' configurations under `spec.dir`, starting none (to restore their data
    /// from a backup first, say): [`LocalProcesses::start`] starts each.
    pub fn configure(spec: &LocalSpec) -> Result<LocalProcesses, NodeError> {
        if spec.shards == 0 || spec.sequencers == 0 || spec.replicas == 0 || spec.command.is_empty()
        {
            return Err(NodeError::Config(
                "a local cluster needs a command, a sequencer and at least one shard replica"
                    .into(),
            ));
        }
        std::fs::create_dir_all(&spec.dir).map_err(|e| NodeError::at(&spec.dir, e))?;
        let dir = spec.dir.canonicalize().map_err(|e| NodeError::at(&spec.dir, e))?;
        let count = spec.sequencers + spec.shards * spec.replicas;
        let ports: Vec<u16> = match spec.port {
            Some(p) if u32::from(p) + count <= 65536 => (0..count).map(|i| p + i as u16).collect(),
            Some(p) => {
                let why = format!("{count} nodes from port {p}: out of range");
                return Err(NodeError::Config(why));
            }
            None => free_ports(count)?,
        };
        let addr = |p: &u16| format!("127.0.0.1:{p}");
        let n = spec.sequencers as usize;
        let sequencers: Vec<String> = ports[..n].iter().map(addr).collect();
        let replicas = spec.replicas as usize;
        let nodes: Vec<String> = ports[n..].iter().map(addr).collect();
        let shards: Vec<Vec<String>> = nodes.chunks(replicas).map(<[String]>::to_vec).collect();
        let quoted = |items: Vec<String>| {
            items.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
        };
        let shard_list = match replicas {
            1 => quoted(nodes.clone()),
            _ => shards
                .iter()
                .map(|r| format!("[{}]", quoted(r.clone())))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let splits = match spec.split_keys.is_empty() {
            true => String::new(),
            false => format!(
                "split_keys_hex = [{}]\n",
                quoted(spec.split_keys.iter().map(|k| hex(k)).collect())
            ),
        };
        let tls = match &spec.tls_dir {
            None => String::new(),
            Some(d) => {
                let d = d.canonicalize().map_err(|e| NodeError::at(d, e))?;
                let file = |name: &str| d.join(name).display().to_string();
                format!(
                    "\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                    file("ca.pem"),
                    file("node.pem"),
                    file("node.key")
                )
            }
        };
        let sequencer_line = match n {
            1 => format!("sequencer = \"{}\"", sequencers[0]),
            _ => format!("sequencers = [{}]", quoted(sequencers.clone())),
        };
        let caches = spec
            .storage_mib
            .as_ref()
            .map(|m| {
                let apart = m.apart.iter().map(|p| hex(p));
                format!(
                    "row_cache_mib = {}\nblock_cache_mib = {}\ntable_file_mib = {}\n\
                     apart_hex = [{}]\napart_hint_bytes = {}\n",
                    m.row_cache,
                    m.block_cache,
                    m.table_file,
                    quoted(apart.collect()),
                    m.apart_hint_bytes
                )
            })
            .unwrap_or_default();
        let (tuning, segments) = match spec.reclamation {
            None => (String::new(), String::new()),
            Some(r) => (
                format!(
                    "flush_interval_ms = {}\nabsent_replica_ms = {}\nretention_ms = {}\n\
                     replay_allowance_ms = {}\ncheckpoint_transfer_mib_per_s = {}\n",
                    r.flush_interval_ms,
                    r.absent_replica_ms,
                    r.retention_ms,
                    r.replay_allowance_ms,
                    r.transfer_mib_per_s
                ),
                format!(
                    "log_segment_bytes = {}\ndedup_retention_ms = {}\n",
                    r.log_segment_bytes, r.dedup_retention_ms
                ),
            ),
        };
        let cluster = format!(
            "[cluster]\n{sequencer_line}\nshards = [{}]\n{splits}\n[window]\n\
             interval_ms = {}\n{segments}{tls}",
            shard_list, spec.window_ms
        );
        let mut configs = Vec::new();
        let mut addrs = Vec::new();
        let roles = sequencers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let name =
                    if n == 1 { "sequencer".to_string() } else { format!("sequencer-{}", i + 1) };
                (name, "sequencer", a, None, (n > 1).then_some(i + 1))
            })
            .chain(nodes.iter().enumerate().map(|(i, a)| {
                let (s, r) = (i / replicas, i % replicas);
                let name = match replicas {
                    1 => format!("shard-{s}"),
                    _ => format!("shard-{s}-{r}"),
                };
                (name, "shard", a, Some((s, r)), None)
            }));
        for (name, role, listen, shard, group) in roles {
            let shard = shard
                .map(|(s, r)| match replicas {
                    1 => format!("shard = {s}\n"),
                    _ => format!("shard = {s}\nreplica = {r}\n"),
                })
                .unwrap_or_default();
            let timing = spec
                .group_timing
                .map(|(h, e)| format!("heartbeat_ms = {h}\nelection_timeout_ms = {e}\n"))
                .unwrap_or_default();
            let group =
                group.map(|id| format!("\n[group]\nid = {id}\n{timing}")).unwrap_or_default();
            let data_dir = dir.join(&name);
            if let Some(base) = spec.run_as {
                let uid = base + configs.len() as u32;
                std::fs::create_dir_all(&data_dir).map_err(|e| NodeError::at(&data_dir, e))?;
                std::os::unix::fs::chown(&data_dir, Some(uid), Some(uid))
                    .map_err(|e| NodeError::at(&data_dir, e))?;
            }
            let data = data_dir.display().to_string();
            let text = format!(
                "role = \"{role}\"\nlisten = \"{listen}\"\ndata_dir = {data:?}\n{shard}\
                 max_offset_ms = {}\n{tuning}{caches}\n{cluster}{group}",
                spec.max_offset_ms
            );
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(&config, text).map_err(|e| NodeError::at(&config, e))?;
            configs.push((config, None));
            addrs.push(listen.to_string());
        }
        let sequencer = sequencers.join(",");
        let command = spec.command.clone();
        let shards = shards.iter().map(|r| r.join(",")).collect();
        let local = LocalProcesses {
            sequencer,
            sequencers: n,
            shards,
            replicas,
            nodes: configs,
            addrs,
            run_as: spec.run_as,
            command,
            worker_threads: spec.worker_threads,
        };
        Ok(local)
    }

    /// The node index of replica `replica` of shard `shard`.
    pub fn shard_node(&self, shard: usize, replica: usize) -> usize {
        self.sequencers + shard * self.replicas + replica
    }

    /// Node `i`'s configuration file (0 is the sequencer, 1 + s shard s).
    pub fn config(&self, i: usize) -> &Path {
        &self.nodes[i].0
    }

    /// Starts node `i` (0 is the sequencer, 1 + s shard s); its output goes to a `.log` file
    /// next to its configuration.
    pub fn start(&mut self, i: usize) -> Result<(), NodeError> {
        self.start_with_env(i, &[])
    }

    /// [`LocalProcesses::start`] with more environment variables for the process (for
    /// example libfaketime's `LD_PRELOAD` and `FAKETIME`, to run it with its clock offset).
    pub fn start_with_env(&mut self, i: usize, env: &[(&str, &str)]) -> Result<(), NodeError> {
        let (config, child) = &mut self.nodes[i];
        if child.is_some() {
            let name = config.display().to_string();
            return Err(NodeError::Process { name, why: "running already".into() });
        }
        let log_path = config.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| NodeError::at(&log_path, e))?;
        let (program, args) = self.command.split_first().expect("checked non-empty");
        let mut command = Command::new(program);
        if let Some(n) = self.worker_threads {
            command.env("TOKIO_WORKER_THREADS", n.to_string());
        }
        if let Some(uid) = self.run_as.map(|base| base + i as u32) {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, uid);
        }
        let spawned = command
            .args(args)
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&*config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| NodeError::io(format!("starting {program}"), e))?;
        *child = Some(spawned);
        Ok(())
    }

    /// Where node `i` listens.
    pub fn addr(&self, i: usize) -> &str {
        &self.addrs[i]
    }

    /// The user node `i` runs as, with [`LocalSpec::run_as`].
    pub fn uid(&self, i: usize) -> Option<u32> {
        self.run_as.map(|base| base + i as u32)
    }

    /// How many nodes (sequencers, then shard replicas).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none (never, once spawned).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether node `i` is running (started and not killed or stopped since).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].1.is_some()
    }

    /// Kills node `i` with SIGKILL, as a crash would.
    pub fn kill(&mut self, i: usize) -> Result<(), NodeError> {
        let mut child = self.nodes[i].1.take().ok_or_else(|| self.not_running(i))?;
        child.kill().map_err(|e| NodeError::io(format!("killing node {i}"), e))?;
        child.wait().map_err(|e| NodeError::io(format!("waiting for node {i}"), e))?;
        Ok(())
    }

    /// Sends node `i` `signal` (`STOP` pauses it, `CONT` resumes it): a node that stalls
    /// without dying, as under a long GC pause or a frozen VM.
    pub fn signal(&self, i: usize, signal: &str) -> Result<(), NodeError> {
        let child = self.nodes[i].1.as_ref().ok_or_else(|| self.not_running(i))?;
        let sent =
            Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
        match sent {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(NodeError::Process {
                name: format!("node {i}"),
                why: format!("kill -{signal}: {status}"),
            }),
            Err(e) => Err(NodeError::io(format!("kill -{signal} node {i}"), e)),
        }
    }

    /// Stops node `i` with SIGTERM and waits for it, for at most `patience`: its exit status,
    /// or an error if it is still running then (it is killed).
    pub fn terminate(
        &mut self,
        i: usize,
        patience: Duration,
    ) -> Result<std::process::ExitStatus, NodeError> {
        let mut child = self.nodes[i].1.take().ok_or_else(|| self.not_running(i))?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = std::time::Instant::now() + patience;
        loop {
            let waited = child.try_wait();
            if let Some(status) =
                waited.map_err(|e| NodeError::io(format!("waiting for node {i}"), e))?
            {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let why = format!("still running {patience:?} after SIGTERM");
                return Err(NodeError::Process { name: format!("node {i}"), why });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every node with SIGTERM, shards first, and waits for them.
    pub fn stop(mut self) {
        for (_, child) in self.nodes.iter_mut().rev() {
            if let Some(mut child) = child.take() {
                let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for LocalProcesses {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Ports found for one cluster are distinct (each held until all are found).
    #[test]
    fn free_ports_are_distinct() {
        for _ in 0..20 {
            let mut ports = super::free_ports(64).unwrap();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), 64);
        }
    }
}
