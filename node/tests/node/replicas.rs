//! Shard replicas over real processes: three shards of two replicas each, list-append clients
//! running while one replica of every shard is killed with SIGKILL and restarted, and then
//! while the other is paused with SIGSTOP and resumed. While one replica of each shard lives,
//! no call may fail or end unknown; the history must be strictly serializable (`adya`) with
//! every acknowledged append present once, and afterwards every shard's replicas must have
//! applied the same windows with the same digest. An outcome asked for after every shard
//! process restarted is still known, by its client id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, cluster_status, replicas_converged};
use clock::Clock;
use node::{LocalProcesses, LocalSpec};
use txn::Outcome;
use txn::builtin::put_args;

use crate::cluster::{Clients, SHARDS, sealdb_start, spec, wait_ready};

/// How long each replica is down: longer than the client's patience.
const DOWN: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_while_one_replica_of_each_shard_is_killed_or_paused() {
    let seed: u64 = std::env::var("SEALDB_SEED").map_or(19, |s| s.parse().unwrap());
    eprintln!("replica fault test seed {seed} (rerun with SEALDB_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let spec = LocalSpec { replicas: 2, ..spec(dir.path(), sealdb_start(), None) };
    let mut nodes = LocalProcesses::spawn(&spec).unwrap();
    let sequencer = nodes.sequencer.clone();
    let clock = Arc::new(Clock::system(Duration::from_millis(1)));
    wait_ready(&sequencer, &clock, None).await;
    // Calls give up after 3 s: each replica stays down longer than that, so a call that did
    // not move to the live replica would end unknown (and fail the test).
    let client = Client::connect(&sequencer, clock.clone()).await.unwrap();
    let client = Arc::new(client.with_patience(DOWN - Duration::from_secs(1)));

    // Clients that leave the cluster room to spare (a closed loop at full speed keeps it
    // saturated, and a restarted replica, which replays window by window, would take long to
    // reach the others).
    let workload = Clients::paced(client.clone(), seed, 4, Duration::from_millis(30));
    let run = |d| tokio::time::sleep(Duration::from_millis(d));
    run(1500).await;
    for shard in 0..SHARDS {
        eprintln!("SIGKILL shard {shard} replica 0");
        nodes.kill(nodes.shard_node(shard, 0)).unwrap();
    }
    tokio::time::sleep(DOWN).await;
    for shard in 0..SHARDS {
        nodes.start(nodes.shard_node(shard, 0)).unwrap();
    }
    // The restarted replicas catch up from the log; then the others pause. (A replica that
    // is still replaying answers only once it gets there: were it the only one left, calls
    // would wait for it.)
    wait_ready(&sequencer, &clock, None).await;
    caught_up(&sequencer, &clock).await;
    for shard in 0..SHARDS {
        eprintln!("SIGSTOP shard {shard} replica 1");
        nodes.signal(nodes.shard_node(shard, 1), "STOP").unwrap();
    }
    tokio::time::sleep(DOWN).await;
    for shard in 0..SHARDS {
        nodes.signal(nodes.shard_node(shard, 1), "CONT").unwrap();
    }
    run(1500).await;
    let totals = workload.finish(&client, seed, "replica-faults").await;
    assert_eq!(totals.get("unknown"), None, "seed {seed}: a call ended unknown: {totals:?}");

    let converged = replicas_converged(&sequencer, &clock, None, Duration::from_secs(30)).await;
    let converged = converged.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    eprintln!("replicas agree: {converged:?}");

    // A call under an id of our own; then every shard process restarts: its outcome is
    // still known by its client id, from storage, to the client and to `sealdb txn-status`.
    let id = client.new_id();
    client.call_as(id, "kv.put", &put_args(b"remembered", b"yes")).await.unwrap();
    for shard in 0..SHARDS {
        for replica in 0..2 {
            nodes.kill(nodes.shard_node(shard, replica)).unwrap();
        }
    }
    for shard in 0..SHARDS {
        for replica in 0..2 {
            nodes.start(nodes.shard_node(shard, replica)).unwrap();
        }
    }
    wait_ready(&sequencer, &clock, None).await;
    // Asked at once: a restarted replica may still be replaying (what it held as runs was
    // lost with the process), and answers once it has applied the windows stamped before it
    // started, so a client patient for longer than that replay finds the outcome.
    let patient = Client::connect(&sequencer, clock.clone()).await.unwrap();
    let patient = patient.with_patience(Duration::from_secs(60));
    let outcome = patient.outcome(id).await.unwrap();
    assert!(matches!(outcome, Some(Outcome::Committed { .. })), "{outcome:?}");
    assert_eq!(patient.outcome(client.new_id()).await.unwrap(), None, "never submitted");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_sealdb"))
        .args(["txn-status", &format!("{:032x}", id.0), "--addr", &sequencer])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success() && said.starts_with("committed at"), "{said} {cli:?}");
    nodes.stop();
}

/// Waits until every replica is within a few windows of the furthest replica of its shard:
/// a restarted replica replays the windows it missed one at a time (with its peers' reads and
/// verdicts), so under load it takes a while to reach the others.
async fn caught_up(sequencer: &str, clock: &Clock) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster_status(sequencer, clock, None).await.unwrap();
        let furthest = |shard: u32| {
            let replicas = status.shards.iter().filter(|r| r.shard == shard);
            replicas.map(|r| r.applied_epoch).max().unwrap_or(0)
        };
        if status.shards.iter().all(|r| r.applied_epoch + 5 >= furthest(r.shard)) {
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not catch up in 60 s: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
