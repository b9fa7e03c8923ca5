//! sealdb's benchmark harness.
//!
//! Each workload is a module with a `run(options) -> Report` and prints its figures; the
//! `bench` binary parses flags and calls it. Figures are measured, never assumed: every run
//! also checks its results against what it wrote, and a run whose check fails exits non-zero.
//!
//! Workloads so far:
//!
//! - [`micro`]: the transaction engine on an embedded database: `increment` (a procedure
//!   doing read-modify-write of one random key), `transfer` (a procedure over two random keys,
//!   often on two shards) and `interactive` (the same transfer as an interactive transaction).
//! - [`mvcc`]: the storage layer alone on RocksDB: applies windows of versioned writes the way
//!   a shard does, reads them back at timestamps, scans, collects garbage, and checks every
//!   answer against an in-memory model.
//! - [`tpcc`]: the TPC-C-like benchmark (the main job): load, run a mix of the five
//!   transactions, check the consistency conditions.
//! - [`failover`]: a sequencer group's unavailability when its leader is killed.
//!
//! Not here: the engine itself; the harness only uses public APIs.

pub mod failover;
pub mod jepsen;
pub mod micro;
pub mod mvcc;
pub mod report;
pub mod retention;
pub mod tpcc;

/// Every procedure a cluster node running the benchmarks needs (`bench node`): the built-in
/// ones, the micro-benchmark's and TPC-C's.
pub fn node_procedures() -> txn::Registry {
    let mut registry = micro::procedures();
    registry.merge(&tpcc::procedures_registry());
    registry
}

/// How a benchmark runs its clients on the embedded database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Each client is a task, all on one thread, calling the database's async API (the
    /// micro-benchmark's through `txn::Store`, TPC-C's `Database::call_async`).
    Async,
    /// Each client is an OS thread making blocking calls (`Database::call`).
    Threads,
}

/// Which cluster a benchmark runs against (`--cluster`).
#[derive(Debug, Clone)]
pub enum ClusterTarget {
    /// A running cluster whose sequencer is at this address. Its nodes must register
    /// [`node_procedures`] (started with `bench node`); for TPC-C its shard map should keep
    /// warehouses whole.
    Addr(String),
    /// Start one here first: `bench node` processes on 127.0.0.1, stopped afterwards.
    Local {
        /// Sequencer processes: 1, or a group (3) replicating the log.
        sequencers: u32,
        /// Shards.
        shards: u32,
        /// Replicas (processes) of each shard.
        replicas: u32,
        /// Of those, how many are killed (SIGKILL) as soon as they start, and stay down: the
        /// cluster runs with that many replicas of every shard lost.
        down: u32,
        /// The nodes' `max_offset` (commit-wait lasts about this long).
        max_offset_ms: u64,
        /// TLS with client certificates on every hop (certificates made for the run).
        secure: bool,
    },
}

impl ClusterTarget {
    /// Parses `--cluster`: `local:N` (1 to 64 shards) or a sequencer's address.
    /// `sequencers` (1, or an odd group size up to 7) and `replicas` (of each shard, 1 to 5)
    /// are for `local:N` only.
    pub fn parse(
        flag: &str,
        max_offset_ms: u64,
        secure: bool,
        sequencers: u32,
        replicas: u32,
        down: u32,
    ) -> Result<ClusterTarget, String> {
        let local = flag.strip_prefix("local:").map(str::parse::<u32>);
        if !matches!(local, Some(Ok(_))) && (sequencers != 1 || replicas != 1) {
            return Err("--sequencers and --replicas are for --cluster local:N".into());
        }
        if !(1..=5).contains(&replicas) {
            return Err("--replicas: 1 to 5".into());
        }
        if down >= replicas {
            return Err("--replicas-down: fewer than --replicas (a shard needs one)".into());
        }
        if sequencers == 0 || sequencers > 7 || sequencers.is_multiple_of(2) {
            return Err("--sequencers: 1, 3, 5 or 7".into());
        }
        match local {
            Some(Ok(shards)) if (1..=64).contains(&shards) => {
                let (max_offset_ms, secure) = (max_offset_ms, secure);
                Ok(ClusterTarget::Local {
                    sequencers,
                    shards,
                    replicas,
                    down,
                    max_offset_ms,
                    secure,
                })
            }
            Some(_) => Err("--cluster local:N needs N from 1 to 64".into()),
            None if secure => Err("--secure is for --cluster local:N".into()),
            None => Ok(ClusterTarget::Addr(flag.to_string())),
        }
    }
}

/// A cluster a benchmark runs against, started by it or not.
pub struct RunningCluster {
    /// The sequencer's address.
    pub addr: String,
    /// The nodes' `max_offset` when the benchmark started them.
    pub max_offset_ms: Option<u64>,
    /// The clients' certificate, when the cluster runs TLS.
    pub tls: Option<client::Tls>,
    local: Option<node::LocalProcesses>,
}

impl RunningCluster {
    /// Threads for the benchmark client's runtime: its share of the cores beside the nodes
    /// the benchmark started (one more process on the machine), or every core for a cluster
    /// elsewhere. Two threads for TPC-C's client sharing two cores with four nodes cost 13% of
    /// its throughput against one (README, Figures).
    pub fn client_threads(&self) -> usize {
        match &self.local {
            Some(local) => {
                let nodes = local.sequencers + local.shards.len() * local.replicas;
                node::LocalSpec::cores_each(nodes as u32 + 1)
            }
            None => node::LocalSpec::cores_each(1),
        }
    }

    /// A multi-threaded runtime for the benchmark client, of [`RunningCluster::client_threads`].
    pub fn client_runtime(&self) -> Result<tokio::runtime::Runtime, String> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.client_threads())
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    }

    /// Stops the nodes if the benchmark started them.
    pub fn stop(self) {
        if let Some(local) = self.local {
            local.stop();
        }
    }
}

impl ClusterTarget {
    /// The cluster's address, after starting `bench node` processes in `dir` for `Local`,
    /// with the shard map `map(shards)` and, if given, each shard's caches and table file size
    /// (`storage_mib(shards)`).
    pub fn start(
        &self,
        dir: std::path::PathBuf,
        map: impl FnOnce(u32) -> txn::ShardMap,
        storage_mib: impl FnOnce(u32) -> Option<node::StorageMib>,
    ) -> Result<RunningCluster, String> {
        let (sequencers, shards, replicas, down, max_offset_ms, secure) = match self {
            ClusterTarget::Addr(addr) => {
                let addr = addr.clone();
                return Ok(RunningCluster { addr, max_offset_ms: None, tls: None, local: None });
            }
            ClusterTarget::Local { sequencers, shards, replicas, down, max_offset_ms, secure } => {
                (*sequencers, *shards, *replicas, *down, *max_offset_ms, *secure)
            }
        };
        let tls_dir = secure.then(|| dir.join("certs"));
        if let Some(certs) = &tls_dir {
            node::make_certificates(&[]).and_then(|c| c.write(certs)).map_err(|e| e.to_string())?;
        }
        let tls = tls_dir.as_deref().map(|d| client::Tls::load_dir(d, "client")).transpose();
        let tls = tls.map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let map = map(shards);
        let storage_mib = storage_mib(map.len());
        let spec = node::LocalSpec {
            sequencers,
            command: vec![exe.display().to_string(), "node".into()],
            dir,
            shards: map.len(),
            replicas,
            port: None,
            max_offset_ms,
            window_ms: 2,
            split_keys: map.splits().to_vec(),
            group_timing: None,
            run_as: None,
            tls_dir,
            reclamation: None,
            storage_mib,
            // The nodes share this machine: each runtime gets its share of the cores, not
            // all of them (README, Cluster mode: the benchmarks against a cluster).
            worker_threads: Some(node::LocalSpec::cores_each(sequencers + map.len() * replicas)),
        };
        let mut local = node::LocalProcesses::spawn(&spec).map_err(|e| e.to_string())?;
        for shard in 0..spec.shards as usize {
            for replica in 0..down as usize {
                local.kill(local.shard_node(shard, replica)).map_err(|e| e.to_string())?;
            }
        }
        if down > 0 {
            eprintln!("  killed {down} replica(s) of every shard; they stay down");
        }
        eprintln!(
            "  local cluster: sequencer {}, shards {} (max_offset {max_offset_ms} ms{})",
            local.sequencer,
            local.shards.join(", "),
            if secure { ", TLS" } else { "" }
        );
        let addr = local.sequencer.clone();
        let max_offset_ms = Some(max_offset_ms);
        Ok(RunningCluster { addr, max_offset_ms, tls, local: Some(local) })
    }
}

/// A client of the cluster whose sequencer is at `addr`, once every shard answers (a cluster
/// just started may need a moment; gives up after 30 s), with the last window it had logged
/// then. Call within a tokio runtime.
pub async fn connect_when_ready(
    addr: &str,
    clock: std::sync::Arc<clock::Clock>,
    tls: Option<client::Tls>,
) -> Result<(client::Client, u64), String> {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = match client::cluster_status(addr, &clock, tls.as_ref()).await {
            // Every shard has a replica answering (replicas killed on purpose stay down).
            Ok(s)
                if (0..s.shard_addrs.len() as u32)
                    .all(|i| s.shards.iter().any(|r| r.shard == i && r.failure.is_empty())) =>
            {
                // The client from this status: asking again could meet a sequencer group's
                // member that does not answer yet.
                let epoch = s.sealed_epoch;
                let client = client::Client::of_status(addr, s, clock, node_procedures(), tls);
                return client.map(|c| (c, epoch)).map_err(|e| e.to_string());
            }
            Ok(s) => format!("shards unreachable: {:?}", s.unreachable),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(failed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
