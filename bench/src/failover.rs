//! `bench failover`: how long a sequencer group is unavailable when its leader dies.
//!
//! Starts a sequencer group and shard processes (`bench node`) on 127.0.0.1 with clients
//! incrementing counters; then, `kills` times: waits, finds the leader from the members'
//! status, SIGKILLs it, and measures the time until a fresh `increment` commits (the
//! unavailability a client sees), restarts the killed member, and lets it catch up. Prints
//! every failover, their median and maximum, and checks that the counters hold every commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clock::Clock;
use serde::Serialize;
use txn::ReadAt;

use crate::micro::{args, num};

/// What to run.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Sequencer group size.
    pub sequencers: u32,
    /// Shard processes.
    pub shards: u32,
    /// Leader kills.
    pub kills: u32,
    /// Clients incrementing counters meanwhile.
    pub clients: usize,
    /// Where the nodes keep their data (a temporary directory if `None`).
    pub dir: Option<std::path::PathBuf>,
    /// The group's heartbeat and election timeout in ms (`None`: the defaults).
    pub group_timing: Option<(u64, u64)>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// Each failover: from the kill to the next commit, in milliseconds.
    pub failovers_ms: Vec<f64>,
    /// Their median.
    pub median_ms: f64,
    /// Their maximum.
    pub max_ms: f64,
    /// Increments committed during the run.
    pub committed: u64,
    /// Whether the counters hold every committed increment.
    pub consistent: bool,
}

/// The member that leads (its index), from the members' status.
async fn leader(addrs: &str, clock: &Clock) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((i, _)) = client::group_leader(addrs, clock, None).await {
            return Ok(i);
        }
        if Instant::now() > deadline {
            return Err("no leader in 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the benchmark, printing progress to stderr.
pub fn run(opts: &FailoverOptions) -> Result<FailoverReport, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = opts.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let spec = node::LocalSpec {
        sequencers: opts.sequencers,
        command: vec![exe.display().to_string(), "node".into()],
        dir,
        shards: opts.shards,
        replicas: 1,
        port: None,
        max_offset_ms: 1,
        window_ms: 2,
        split_keys: Vec::new(),
        group_timing: opts.group_timing,
        run_as: None,
        tls_dir: None,
        reclamation: None,
        storage_mib: None,
        worker_threads: None,
    };
    let mut local = node::LocalProcesses::spawn(&spec).map_err(|e| e.to_string())?;
    let addrs = local.sequencer.clone();
    eprintln!("  sequencer group {}, shards {}", local.sequencer, local.shards.join(", "));
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let report = runtime.block_on(async {
        let clock = Arc::new(Clock::system(Duration::from_millis(1)));
        let (client, _) = crate::connect_when_ready(&local.sequencer, clock.clone(), None).await?;
        let client = Arc::new(client);
        let (stop, committed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let mut workers = tokio::task::JoinSet::new();
        for c in 0..opts.clients as u64 {
            let (client, stop, committed) = (client.clone(), stop.clone(), committed.clone());
            workers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if client.call("increment", &args(&[c])).await.is_ok() {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let mut failovers = Vec::new();
        for kill in 0..opts.kills {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let leader = leader(&addrs, &clock).await?;
            local.kill(leader).map_err(|e| e.to_string())?;
            let killed = Instant::now();
            // A fresh increment of a counter nobody else touches: committed only once the
            // group has a leader again.
            let probe = 1_000_000 + u64::from(kill);
            while client.call("increment", &args(&[probe])).await.is_err() {
                if killed.elapsed() > Duration::from_secs(60) {
                    return Err(format!(
                        "no commit 60 s after kill {} (see the nodes' logs)",
                        kill + 1
                    ));
                }
            }
            let took = killed.elapsed();
            committed.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "  kill {} of member {}: a commit again after {took:?}",
                kill + 1,
                leader + 1
            );
            failovers.push(took.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(500)).await;
            local.start(leader).map_err(|e| e.to_string())?;
        }
        stop.store(true, Ordering::Relaxed);
        while workers.join_next().await.is_some() {}
        let ts = client.read_ts(ReadAt::Latest);
        let rows = client.scan(&storage::KeyRange::all(), ts, usize::MAX).await;
        let rows = rows.map_err(|e| e.to_string())?;
        let sum: i64 = rows.iter().map(|(_, v)| num(Some(v.clone()))).sum();
        let committed = committed.load(Ordering::Relaxed);
        let mut sorted = failovers.clone();
        sorted.sort_by(f64::total_cmp);
        Ok::<_, String>(FailoverReport {
            median_ms: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
            max_ms: sorted.last().copied().unwrap_or(0.0),
            failovers_ms: failovers,
            committed,
            // An increment whose outcome was unknown may have committed too.
            consistent: sum >= committed as i64,
        })
    });
    local.stop();
    report
}
