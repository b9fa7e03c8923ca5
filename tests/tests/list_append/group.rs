//! A sequencer group of three nodes on loopback (raft over gRPC) with three shard servers;
//! list-append through the `Client` while the group's leader is stopped: the history stays
//! strictly serializable, and every committed append is in its list exactly once; then the
//! new leader logs a truncation below the shards' checkpoints, which every member applies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use client::Cluster;
use node::{GroupSpec, Layout, SequencerNode, ShardNode};
use sequencer::SealerConfig;
use tokio::net::TcpListener;
use txn::ShardMap;

use crate::cluster::{clock, metric, scrape, start_shards};
use crate::run_list_append;

struct GroupCluster {
    sequencers: BTreeMap<u64, SequencerNode>,
    shards: Vec<ShardNode>,
    cluster: Cluster,
    _dirs: tempfile::TempDir,
}

async fn start_group_cluster() -> GroupCluster {
    let dirs = tempfile::tempdir().unwrap();
    let map = ShardMap::uniform(3);
    let mut shard_listeners = Vec::new();
    for _ in 0..3 {
        shard_listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let shard_addrs: Vec<String> =
        shard_listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let mut seq_listeners = BTreeMap::new();
    for id in 1..=3u64 {
        seq_listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let members: BTreeMap<u64, String> =
        seq_listeners.iter().map(|(id, l)| (*id, l.local_addr().unwrap().to_string())).collect();
    let config = SealerConfig::default();
    let mut sequencers = BTreeMap::new();
    for (id, listener) in seq_listeners {
        let group = GroupSpec {
            id,
            members: members.clone(),
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(300),
        };
        let layout = Layout { shards: shard_addrs.clone(), map: map.clone() };
        let dir = dirs.path().join(format!("sequencer-{id}"));
        let node = SequencerNode::start_group(&dir, listener, clock(), config, layout, None, group);
        sequencers.insert(id, node.await.unwrap());
    }
    let all: Vec<String> = members.values().cloned().collect();
    let procedures = txn::builtin::registry();
    let cluster = Cluster {
        sequencer: all.join(","),
        shards: shard_addrs,
        map: map.clone(),
        procedures: procedures.clone(),
        tls: None,
    };
    let clocks = (0..3).map(|_| clock()).collect();
    let shards = start_shards(dirs.path(), shard_listeners, clocks, &cluster, None).await;
    GroupCluster { sequencers, shards, cluster, _dirs: dirs }
}

/// Which member leads, as the members' status says.
async fn leader(cluster: &GroupCluster) -> u64 {
    let clock = clock();
    let ids: Vec<u64> = cluster.sequencers.keys().copied().collect();
    let addrs: Vec<String> = cluster.sequencers.values().map(|n| n.addr().to_string()).collect();
    for _ in 0..200 {
        if let Some((i, _)) = client::group_leader(&addrs.join(","), &clock, None).await {
            return ids[i];
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_append_through_a_sequencer_group_survives_its_leader_stopping() {
    let mut group = start_group_cluster().await;
    let client = Arc::new(client::Client::new(&group.cluster, clock()).unwrap());
    let first = leader(&group).await;
    let stopped = group.sequencers.remove(&first).unwrap();
    let stopper = tokio::spawn(async move {
        // Under load: the workload is running by now.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (at_stop, _) = stopped.last_logged();
        stopped.shutdown().await.unwrap();
        at_stop
    });
    run_list_append(client, "group-list-append", 11).await;
    let at_stop = stopper.await.unwrap();
    let second = leader(&group).await;
    assert_ne!(second, first, "a new leader took over");
    let (last, _) = group.sequencers[&second].last_logged();
    assert!(at_stop.0 > 0, "the first leader logged windows before it stopped");
    assert!(last > at_stop, "the workload went on after the failover ({at_stop} then {last})");
    // The members' metrics agree: one leader, in a term after the first, and the new leader
    // counted its commits.
    let (mut leaders, mut terms) = (0.0, Vec::new());
    for (id, node) in &group.sequencers {
        let text = scrape(node.metrics_source()).await;
        leaders += metric(&text, "sealdb_sequencer_group_leader");
        terms.push(metric(&text, "sealdb_sequencer_group_term"));
        if *id == second {
            assert!(metric(&text, "sealdb_sequencer_group_commits_total") > 0.0, "{text}");
        }
    }
    assert_eq!(leaders, 1.0);
    assert!(terms.iter().all(|t| *t >= 2.0), "an election happened: terms {terms:?}");
    // The shards checkpoint every 200 ms and report to the new leader, which logs a
    // truncation: every member drops the windows below it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for node in group.sequencers.values() {
        loop {
            let text = scrape(node.metrics_source()).await;
            if metric(&text, "sealdb_sequencer_log_first_epoch") > 1.0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never truncated: {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for shard in group.shards {
        shard.shutdown().await;
    }
    for (_, node) in group.sequencers {
        node.shutdown().await.unwrap();
    }
}
