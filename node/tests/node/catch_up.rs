//! A replica catching up from a fellow's checkpoint, over real processes: two shards of two
//! replicas, shards checkpointing every 200 ms, the log in 16 KiB segments and a replica
//! silent for 1.5 s no longer holding it (client ids deduplicated for 0.5 s). List-append
//! clients run throughout.
//!
//! 1. Replica 1 of shard 0 is killed with SIGKILL (aimed at a checkpoint under way). The log
//!    is truncated past its watermark: a subscription from its next window is refused as
//!    truncated.
//! 2. It restarts, fetches replica 0's checkpoint (tens of MB: shard 0 holds large values),
//!    and is killed again with SIGKILL in the middle of the transfer (paused first with SIGSTOP,
//!    so that the test sees the transfer incomplete when it kills).
//! 3. It restarts: the partial transfer is removed, a new one installed, the log's tail
//!    replayed. Replica 0 sends its checkpoint at 16 MiB/s, so that the transfer outlasts
//!    the 1.5 s after which the sequencer stops counting a silent replica, while replica 0
//!    checkpoints every 200 ms: the replica must hold the log from the fetched checkpoint
//!    on, or the window after it is truncated before it is installed (it would fetch again,
//!    for ever; a race an unthrottled transfer lost now and then).
//!
//! (A third test leaves a replica further behind its peers than they keep versions for.)
//!
//! Then the history must be strictly serializable (`adya`) with every acknowledged append
//! present once, and both replicas of every shard must have applied the same windows with
//! the same digest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{
    Client, RefusalKind, RemoteError, RemoteSequencer, cluster_status, replica_addrs,
    replicas_converged, stamp,
};
use clock::{Clock, Epoch, Timestamp};
use node::{LocalProcesses, LocalSpec, Reclamation};
use proto::v1::shard_client::ShardClient;
use rand::{RngCore, SeedableRng};
use sequencer::ShardId;
use txn::builtin::put_args;

use crate::cluster::{Clients, node_log, sealdb_start, spec, wait_ready};

/// Shard 0's large values: their keys' first byte puts them on shard 0 of two.
const BIG_VALUES: usize = 96;
const BIG_VALUE_BYTES: usize = 512 << 10;

/// Whether the sequencer refuses a subscription from `from` as truncated.
async fn truncated_from(sequencer: &RemoteSequencer, shard: ShardId, from: Epoch) -> bool {
    let first = match sequencer.subscribe(shard, from).await {
        Ok(mut deliveries) => deliveries.recv().await,
        Err(e) => Some(Err(e)),
    };
    matches!(first, Some(Err(RemoteError::Refused { kind: RefusalKind::Truncated, .. })))
}

/// The sequencer's status (asked again for up to 30 s while the sequencer is restarting, or
/// refuses this clock as behind its own, as a restarted node's may be by up to a lease).
async fn status(sequencer: &str, clock: &Clock) -> proto::v1::ClusterStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cluster_status(sequencer, clock, None).await {
            Ok(status) => return status,
            Err(e) => assert!(Instant::now() < deadline, "no status from the sequencer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The applied window of replica `replica` of `shard`, as it answers the sequencer's status.
async fn applied(sequencer: &str, clock: &Clock, shard: u32, replica: u32) -> u64 {
    let status = status(sequencer, clock).await;
    let found = status.shards.iter().find(|r| r.shard == shard && r.replica == replica);
    found.map_or(0, |r| r.applied_epoch)
}

/// Polls, every millisecond for at most `patience`, until `path` exists.
fn appears(path: &Path, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Two shards of two replicas in `dir`, checkpointing every 200 ms, the log in 16 KiB
/// segments, a replica silent for 1.5 s no longer holding it (client ids deduplicated for
/// 0.5 s), ready: the nodes, the sequencer's address, a clock and a client.
async fn started(dir: &Path) -> (LocalProcesses, String, Arc<Clock>, Arc<Client>) {
    started_with(dir, RECLAMATION).await
}

const RECLAMATION: Reclamation = Reclamation {
    flush_interval_ms: 200,
    log_segment_bytes: 16 << 10,
    absent_replica_ms: 1500,
    dedup_retention_ms: 500,
    retention_ms: 60_000,
    replay_allowance_ms: 3_600_000,
    transfer_mib_per_s: 0,
};

/// The first test's fellows send a checkpoint at this many MiB/s: its tens of MB take longer
/// than the sequencer waits for an absent replica, while the fellow checkpoints (and the log
/// is truncated) several times over.
const SLOW_TRANSFER_MIB_PER_S: u64 = 16;

/// [`started`] with `reclamation`.
async fn started_with(
    dir: &Path,
    reclamation: Reclamation,
) -> (LocalProcesses, String, Arc<Clock>, Arc<Client>) {
    let spec = LocalSpec {
        shards: 2,
        replicas: 2,
        reclamation: Some(reclamation),
        storage_mib: None,
        worker_threads: None,
        ..spec(dir, sealdb_start(), None)
    };
    let nodes = LocalProcesses::spawn(&spec).unwrap();
    let sequencer = nodes.sequencer.clone();
    let clock = Arc::new(Clock::system(Duration::from_millis(1)));
    wait_ready(&sequencer, &clock, None).await;
    let client = Arc::new(Client::connect(&sequencer, clock.clone()).await.unwrap());
    (nodes, sequencer, clock, client)
}

/// Waits up to 30 s until replica 1 of shard 0 has applied 20 windows.
async fn applied_some(sequencer: &str, clock: &Clock) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied(sequencer, clock, 0, 1).await < 20 {
        assert!(Instant::now() < deadline, "replica 1 applied nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to 60 s until replica 1 of shard 0 (node `behind`) has applied past `past` and is
/// within 5 windows of replica 0.
async fn caught_up(
    nodes: &LocalProcesses,
    sequencer: &str,
    clock: &Clock,
    behind: usize,
    past: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let furthest = applied(sequencer, clock, 0, 0).await;
        let caught_up = applied(sequencer, clock, 0, 1).await;
        if caught_up > past && caught_up + 5 >= furthest {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica 1 did not catch up: {}",
            node_log(nodes, behind)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that node `i`'s log says each of `said`.
fn log_says(nodes: &LocalProcesses, i: usize, said: &[&str]) {
    let log = node_log(nodes, i);
    for said in said {
        assert!(log.contains(said), "its log does not say {said:?}:\n{log}");
    }
}

/// Ends the test: the workload stops with no call's outcome unknown, the replicas of every
/// shard agree (same window, same digest), and the nodes stop.
async fn settled(
    nodes: LocalProcesses,
    workload: Clients,
    client: &Client,
    clock: &Clock,
    seed: u64,
    name: &str,
) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let totals = workload.finish(client, seed, name).await;
    assert_eq!(totals.get("unknown"), None, "seed {seed}: a call ended unknown: {totals:?}");
    let converged =
        replicas_converged(&nodes.sequencer, clock, None, Duration::from_secs(30)).await;
    let converged = converged.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    eprintln!("replicas agree: {converged:?}");
    nodes.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_truncated_log_catches_up_from_a_fellows_checkpoint() {
    let seed: u64 = std::env::var("SEALDB_SEED").map_or(23, |s| s.parse().unwrap());
    eprintln!("catch-up test seed {seed} (rerun with SEALDB_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let reclamation = Reclamation { transfer_mib_per_s: SLOW_TRANSFER_MIB_PER_S, ..RECLAMATION };
    let (mut nodes, sequencer, clock, client) = started_with(dir.path(), reclamation).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..BIG_VALUES {
        let mut value = vec![0u8; BIG_VALUE_BYTES];
        rng.fill_bytes(&mut value);
        client.call("kv.put", &put_args(format!("big-{i:03}").as_bytes(), &value)).await.unwrap();
    }
    let workload = Clients::paced(client.clone(), seed, 4, Duration::from_millis(20));
    let remote = RemoteSequencer::lazy(&sequencer, clock.clone(), None).unwrap();
    let behind = nodes.shard_node(0, 1);
    let data = |suffix: &str| -> PathBuf {
        nodes.config(behind).with_extension("").join(format!("rocksdb-{suffix}"))
    };
    let (incoming, taking) = (data("incoming"), data("checkpoints").join("taking"));

    // 1. Killed, aimed at a checkpoint under way (one is taken every 200 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mid_checkpoint = appears(&taking, Duration::from_secs(2));
    nodes.kill(behind).unwrap();
    eprintln!("SIGKILL shard 0 replica 1 (mid-checkpoint: {mid_checkpoint})");
    // Its fellow, a little later, is past any window it had applied.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let watermark = applied(&sequencer, &clock, 0, 0).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !truncated_from(&remote, ShardId(0), Epoch(watermark + 1)).await {
        assert!(Instant::now() < deadline, "the log was not truncated past window {watermark}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the log no longer holds window {}", watermark + 1);

    // 2. Killed in the middle of the transfer.
    nodes.start(behind).unwrap();
    assert!(appears(&incoming, Duration::from_secs(30)), "no transfer began");
    std::thread::sleep(Duration::from_millis(5));
    nodes.signal(behind, "STOP").unwrap();
    let complete = incoming.join("SEALDB_CHECKPOINT").exists();
    let files = std::fs::read_dir(&incoming).map(|d| d.count()).unwrap_or(0);
    nodes.kill(behind).unwrap();
    eprintln!("SIGKILL during the transfer: {files} files in, complete: {complete}");
    assert!(!complete, "the transfer was over before the kill: make the checkpoint larger");

    // 3. Restarted: it starts the transfer over and catches up, though the transfer outlasts
    // the sequencer's patience with an absent replica (the replica holds the log meanwhile).
    nodes.start(behind).unwrap();
    caught_up(&nodes, &sequencer, &clock, behind, 0).await;
    let log = node_log(&nodes, behind);
    let seconds = log
        .lines()
        .filter(|l| l.contains("fetched a checkpoint"))
        .filter_map(|l| l.split("seconds=").nth(1)?.split_whitespace().next()?.parse().ok())
        .fold(0f64, f64::max);
    eprintln!("the slowest completed transfer took {seconds:.1} s");
    let absent = RECLAMATION.absent_replica_ms as f64 / 1e3;
    assert!(seconds > absent, "no transfer outlasted {absent} s: make the checkpoint larger");
    log_says(
        &nodes,
        behind,
        &[
            "removing a checkpoint transfer cut short",
            "fetched a checkpoint",
            "installing a fellow replica's checkpoint",
            "opened an installed checkpoint",
        ],
    );
    settled(nodes, workload, &client, &clock, seed, "catch-up").await;
}

/// A replica left behind while its process runs: paused (SIGSTOP) longer than the sequencer
/// waits for an absent replica, with the sequencer restarted at once (so that its
/// subscription must start again, and it holds no window past the restarted sequencer's
/// last), it is resumed once the log was truncated past that window. Its shard stops (the log
/// no longer holds its next window), starts again in the same process from a fellow's
/// checkpoint, and converges; before, the process exited and needed a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_replica_left_behind_by_truncation_catches_up_without_a_restart() {
    let seed: u64 = std::env::var("SEALDB_SEED").map_or(29, |s| s.parse().unwrap());
    eprintln!("running catch-up test seed {seed} (rerun with SEALDB_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, sequencer, clock, client) = started(dir.path()).await;
    let workload = Clients::paced(client.clone(), seed, 4, Duration::from_millis(20));
    let remote = RemoteSequencer::lazy(&sequencer, clock.clone(), None).unwrap();
    let behind = nodes.shard_node(0, 1);

    // Paused once it has applied windows. A stopped process's sockets still take what the
    // sequencer sends (up to the stream's flow-control window, thousands of small windows), so
    // the sequencer restarts during the pause: the replica can then hold no window past the
    // last one the restarted sequencer has logged, and on resuming it must subscribe again.
    applied_some(&sequencer, &clock).await;
    nodes.signal(behind, "STOP").unwrap();
    nodes.kill(0).unwrap();
    nodes.start(0).unwrap();
    let watermark = status(&sequencer, &clock).await.sealed_epoch;
    // Then the log drops the window after that (its log must then say it was behind: below).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !truncated_from(&remote, ShardId(0), Epoch(watermark + 1)).await {
        assert!(Instant::now() < deadline, "the log was not truncated past window {watermark}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("paused shard 0 replica 1; the log no longer holds window {}", watermark + 1);
    nodes.signal(behind, "CONT").unwrap();

    caught_up(&nodes, &sequencer, &clock, behind, watermark + 1).await;
    // Nothing here restarts a process: it caught up in the one it had.
    log_says(
        &nodes,
        behind,
        &[
            "catching up from a fellow replica's checkpoint",
            "starting again",
            "installing a fellow replica's checkpoint",
        ],
    );
    settled(nodes, workload, &client, &clock, seed, "running catch-up").await;
}

/// Whether both replicas of shard 1 refuse a peer's read at `ts` (as a replaying replica of
/// shard 0 reads) as below their garbage-collection horizon.
async fn collected_past(nodes: &LocalProcesses, clock: &Clock, ts: Timestamp) -> bool {
    for addr in replica_addrs(&nodes.shards[1]) {
        let Ok(mut shard) = ShardClient::connect(format!("http://{addr}")).await else {
            return false;
        };
        let request = proto::v1::GetRequest {
            hlc: stamp(clock),
            // Shard 1 holds the keys that begin with a byte of 0x80 or more.
            key: vec![0xff, b'k'],
            read_ts: ts.as_u64(),
            for_window: 1,
        };
        match shard.get(request).await {
            Err(status) if status.message().contains("garbage-collection horizon") => {}
            _ => return false,
        }
    }
    true
}

/// A replica further behind its peers than they keep versions for, while the log still holds
/// every window it missed: shards keep 1 s of versions with no replay allowance, and the
/// sequencer counts a silent replica for 10 minutes (so the log is not truncated past it).
/// Replica 1 of shard 0 is killed; once shard 1 refuses reads at the time of the kill, it is
/// restarted. Its replay's reads of shard 1 are refused; it asks for a catch-up, starts again
/// from replica 0's checkpoint, and converges. Before, the refusal failed the shard, and the
/// process exited on every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_further_behind_than_its_peers_keep_versions_catches_up_from_a_fellow() {
    let seed: u64 = std::env::var("SEALDB_SEED").map_or(31, |s| s.parse().unwrap());
    eprintln!("replay-allowance test seed {seed} (rerun with SEALDB_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let reclamation = Reclamation {
        absent_replica_ms: 600_000,
        retention_ms: 1_000,
        replay_allowance_ms: 0,
        ..RECLAMATION
    };
    let (mut nodes, sequencer, clock, client) = started_with(dir.path(), reclamation).await;
    let workload = Clients::paced(client.clone(), seed, 4, Duration::from_millis(20));
    let remote = RemoteSequencer::lazy(&sequencer, clock.clone(), None).unwrap();
    let behind = nodes.shard_node(0, 1);

    applied_some(&sequencer, &clock).await;
    nodes.kill(behind).unwrap();
    let killed_at = clock.now();
    let watermark = applied(&sequencer, &clock, 0, 1).await;
    eprintln!("SIGKILL shard 0 replica 1 at window {watermark}");
    // Shard 1's replicas have collected past that time.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !collected_past(&nodes, &clock, killed_at).await {
        assert!(Instant::now() < deadline, "shard 1 still reads at the time of the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !truncated_from(&remote, ShardId(0), Epoch(watermark + 1)).await,
        "the log holds the windows replica 1 missed"
    );

    nodes.start(behind).unwrap();
    caught_up(&nodes, &sequencer, &clock, behind, watermark).await;
    log_says(
        &nodes,
        behind,
        &[
            "further behind its peers than they keep versions for",
            "its peers no longer keep the versions this replica's replay reads",
            "installing a fellow replica's checkpoint",
        ],
    );
    // The request went with the storage it was about.
    let storage = nodes.config(behind).with_extension("").join("rocksdb");
    assert!(!storage.join("SEALDB_CATCH_UP").exists(), "the catch-up request is still there");
    settled(nodes, workload, &client, &clock, seed, "replay allowance").await;
}
