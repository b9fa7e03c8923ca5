//! `sealdb backup` of a cluster under load, and `sealdb restore` into a new cluster: two
//! shards, checkpoints every 200 ms and the log in 16 KiB segments (so it is truncated while
//! the writers run), writers putting keys of their own throughout. The new cluster, restored
//! from the backup and started, holds every write acknowledged before the backup began, and
//! takes new ones. A backup into a directory that is not empty, and a restore into a node
//! that has data, are refused with nothing changed. A backup of the idle cluster, taken once
//! every shard has checkpointed the last window, restores too, into a sequencer group; a
//! group restored into only some of its members stops.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::Client;
use clock::Clock;
use node::{LocalProcesses, LocalSpec, Reclamation};
use txn::ReadAt;
use txn::builtin::put_args;

use crate::cluster::{node_log, sealdb_start, spec, wait_ready};

fn sealdb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sealdb")).args(args).output().unwrap()
}

/// Two shards, with one sequencer or a group of `sequencers`.
fn local_spec(dir: &Path, sequencers: u32) -> LocalSpec {
    LocalSpec {
        sequencers,
        shards: 2,
        reclamation: Some(Reclamation {
            flush_interval_ms: 200,
            log_segment_bytes: 16 << 10,
            absent_replica_ms: 1500,
            dedup_retention_ms: 500,
            ..Reclamation::default()
        }),
        ..spec(dir, sealdb_start(), None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_a_new_cluster_with_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = LocalProcesses::spawn(&local_spec(&dir.path().join("a"), 1)).unwrap();
    let sequencer = nodes.sequencer.clone();
    let clock = Arc::new(Clock::system(Duration::from_millis(1)));
    wait_ready(&sequencer, &clock, None).await;
    let client = Arc::new(Client::connect(&sequencer, clock.clone()).await.unwrap());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    // Keys on both shards (the first byte splits them).
                    let key = format!("{}/{w}/{n}", if n.is_multiple_of(2) { "a" } else { "z" });
                    client
                        .call("kv.put", &put_args(key.as_bytes(), &n.to_le_bytes()))
                        .await
                        .unwrap();
                    acked.lock().unwrap().push((key, n));
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let backup = dir.path().join("backup");
    let before = acked.lock().unwrap().clone();
    let taken = tokio::task::spawn_blocking({
        let (backup, sequencer) = (backup.clone(), sequencer.clone());
        move || sealdb(&["backup", "--to", backup.to_str().unwrap(), "--addr", &sequencer])
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&taken.stderr);
    assert!(taken.status.success(), "backup failed: {said}");
    eprintln!("{said}{}", String::from_utf8_lossy(&taken.stdout));
    let again = sealdb(&["backup", "--to", backup.to_str().unwrap(), "--addr", &sequencer]);
    assert!(!again.status.success(), "a backup into a directory that is not empty");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    // Idle, once every shard has checkpointed the last window (an idle shard does so after
    // its checkpoint interval; before, the last windows stayed out of checkpoints until more
    // came): the log copy still holds that window, for the restored sequencer to go on after
    // it (before, it held none and the copy failed as "ended the log after 0 windows").
    let idle = idle_backup(dir.path(), &sequencer).await;
    let all = acked.lock().unwrap().clone();
    nodes.stop();

    let restored = restored_from(&dir.path().join("b"), 1, &backup, &clock).await;
    present(&restored, &clock, &before, "acknowledged before the backup").await;
    eprintln!(
        "{} writes acknowledged before the backup, {} in all: all there",
        before.len(),
        all.len()
    );
    restored.stop();
    // Into a sequencer group: each member's raft state seeded from the log copy.
    let restored = restored_from(&dir.path().join("c"), 3, &idle, &clock).await;
    present(&restored, &clock, &all, "acknowledged before the idle backup").await;
    restored.stop();
    mixed_group_stops(&dir.path().join("d"), &idle).await;
}

/// A group whose third member was not restored (it started empty) numbers no window apart
/// from the others: whichever side receives the other's first proposal refuses it, and its
/// process exits saying why.
async fn mixed_group_stops(dir: &Path, backup: &Path) {
    let mut nodes = LocalProcesses::configure(&local_spec(dir, 3)).unwrap();
    for i in (0..nodes.len()).filter(|i| *i != 2) {
        let config = nodes.config(i).to_str().unwrap().to_string();
        let done = sealdb(&["restore", "--from", backup.to_str().unwrap(), "--config", &config]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    for i in 0..nodes.len() {
        nodes.start(i).unwrap();
    }
    // The member that refused exits (its last words on stderr, in its log).
    let said = "sealdb: the sequencer stopped: the group's raft stopped";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let logs = |nodes: &LocalProcesses| (0..3).map(|i| node_log(nodes, i)).collect::<Vec<_>>();
    let why = "every member of a group must be restored from the same backup";
    while !logs(&nodes).iter().any(|log| log.contains(said) && log.contains(why)) {
        assert!(std::time::Instant::now() < deadline, "no member refused: {:?}", logs(&nodes));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes.stop();
}

/// Backs the idle cluster up until a backup finds every shard's checkpoint at the last window
/// (an idle shard checkpoints its last window once 200 ms have passed since its last
/// checkpoint): its directory.
async fn idle_backup(dir: &Path, sequencer: &str) -> std::path::PathBuf {
    for attempt in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let to = dir.join(format!("idle-{attempt}"));
        let taken = sealdb(&["backup", "--to", to.to_str().unwrap(), "--addr", sequencer]);
        let said = String::from_utf8_lossy(&taken.stderr);
        assert!(taken.status.success(), "idle backup failed: {said}");
        eprintln!("idle backup {attempt}: {said}");
        let manifest = node::backup::Manifest::read(&to).unwrap();
        let (from, last) = manifest.log;
        if manifest.shards.iter().all(|(mark, _, _)| mark.epoch == last) {
            assert_eq!(from, last, "the copy is the last window alone: {said}");
            return to;
        }
    }
    panic!("no backup found every shard's checkpoint at the last window");
}

/// A new cluster of `sequencers` in `dir`, restored from `backup` before it first starts (a
/// second restore over the restored sequencer is refused), started and ready.
async fn restored_from(
    dir: &Path,
    sequencers: u32,
    backup: &Path,
    clock: &Arc<Clock>,
) -> LocalProcesses {
    let mut restored = LocalProcesses::configure(&local_spec(dir, sequencers)).unwrap();
    for i in 0..restored.len() {
        let config = restored.config(i).to_str().unwrap().to_string();
        let done = sealdb(&["restore", "--from", backup.to_str().unwrap(), "--config", &config]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        eprintln!("{}", String::from_utf8_lossy(&done.stdout).trim());
    }
    let config = restored.config(0).to_str().unwrap().to_string();
    let twice = sealdb(&["restore", "--from", backup.to_str().unwrap(), "--config", &config]);
    assert!(!twice.status.success(), "a restore over data");
    assert!(String::from_utf8_lossy(&twice.stderr).contains("holds data already"));
    for i in 0..restored.len() {
        restored.start(i).unwrap();
    }
    wait_ready(&restored.sequencer, clock, None).await;
    for shard in 0..2 {
        let log = node_log(&restored, sequencers as usize + shard);
        assert!(log.contains("opened an installed checkpoint"), "shard {shard}:\n{log}");
    }
    restored
}

/// The restored cluster holds every write in `writes`, and takes a new one.
async fn present(
    restored: &LocalProcesses,
    clock: &Arc<Clock>,
    writes: &[(String, u64)],
    what: &str,
) {
    let client = Client::connect(&restored.sequencer, clock.clone()).await.unwrap();
    let snapshot = client.snapshot(ReadAt::Latest);
    for (key, n) in writes {
        let value = snapshot.get(key.as_bytes()).await.unwrap();
        assert_eq!(value.as_deref(), Some(&n.to_le_bytes()[..]), "{key}, {what}");
    }
    client.call("kv.put", &put_args(b"after", b"restore")).await.unwrap();
    let read = client.snapshot(ReadAt::Latest).get(b"after").await.unwrap();
    assert_eq!(read.as_deref(), Some(&b"restore"[..]));
}
