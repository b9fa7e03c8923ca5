//! A cluster on loopback: one sequencer and three shard servers (in this process, each with
//! its own gRPC server and storage), and clients calling procedures over the network.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use clock::Clock;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sequencer::{SealerConfig, ShardId};
use storage::Limits;
use tests::history::Recorder;
use tokio::net::TcpListener;
use txn::ShardMap;
use txn::remote::{Client, Cluster, Layout, SequencerNode, ShardConfig, ShardNode};

use crate::{
    CLIENTS, TXNS_PER_CLIENT, check_strict_serializable, encode_ops, random_ops, record, with_reads,
};

/// Clocks may differ by this much; commit-wait lasts about as long.
const MAX_OFFSET: Duration = Duration::from_millis(2);

fn clock() -> Arc<Clock> {
    Arc::new(Clock::system(MAX_OFFSET))
}

struct LocalCluster {
    sequencer: SequencerNode,
    shards: Vec<ShardNode>,
    cluster: Cluster,
    _dirs: tempfile::TempDir,
}

async fn start_cluster(shards: u32) -> LocalCluster {
    let dirs = tempfile::tempdir().unwrap();
    let map = ShardMap::uniform(shards);
    let procedures = txn::builtin::registry();
    let config = SealerConfig {
        window_interval: Duration::from_millis(2),
        seal_ahead: None,
        ..SealerConfig::default()
    };
    let mut listeners = Vec::new();
    for _ in 0..shards {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<String> =
        listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let layout = Layout { shards: addrs.clone(), map: map.clone() };
    let sequencer = SequencerNode::start(
        &dirs.path().join("log"),
        "127.0.0.1:0".parse().unwrap(),
        clock(),
        config,
        layout,
    )
    .await
    .unwrap();
    let cluster = Cluster {
        sequencer: sequencer.addr().to_string(),
        shards: addrs,
        map: map.clone(),
        procedures: procedures.clone(),
    };
    let mut nodes = Vec::new();
    for (s, listener) in listeners.into_iter().enumerate() {
        let config = ShardConfig {
            shard: ShardId(s as u32),
            map: map.clone(),
            dir: Some(dirs.path().join(format!("shard-{s}"))),
            sequencer: cluster.sequencer.clone(),
            peers: cluster.shards.clone(),
            procedures: procedures.clone(),
            limits: Limits::default(),
            retention: Duration::from_secs(60),
        };
        nodes.push(ShardNode::start(config, listener, clock()).await.unwrap());
    }
    LocalCluster { sequencer, shards: nodes, cluster, _dirs: dirs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_over_a_cluster_is_strictly_serializable() {
    let seed = std::env::var("SEALDB_SEED").map_or(7, |s| s.parse().unwrap());
    eprintln!("cluster list-append seed {seed} (rerun with SEALDB_SEED={seed})");
    let local = start_cluster(3).await;
    // The client learns the layout from the sequencer's admin service.
    let client = Arc::new(Client::connect(&local.cluster.sequencer, clock()).await.unwrap());
    assert_eq!(client.shard_map(), &local.cluster.map);
    let history = Arc::new(Recorder::new());
    let next_value = Arc::new(AtomicU64::new(1));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|process| {
            let (client, history, next_value) =
                (client.clone(), history.clone(), next_value.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed * 1000 + process);
                let mut committed = 0;
                for _ in 0..TXNS_PER_CLIENT {
                    let ops = random_ops(&mut rng, &next_value);
                    history.invoke(process, &ops);
                    let result = client
                        .call("list_append", &encode_ops(&ops))
                        .await
                        .map(|out| with_reads(&ops, &out));
                    committed += u64::from(record(&history, process, &ops, result));
                }
                committed
            })
        })
        .collect();
    let mut committed = 0;
    for task in tasks {
        committed += task.await.unwrap();
    }
    assert_eq!(committed, CLIENTS * TXNS_PER_CLIENT, "procedures never conflict");
    check_strict_serializable(&history, "cluster-list-append", seed);
    for shard in local.shards {
        shard.shutdown().await;
    }
    local.sequencer.shutdown().await.unwrap();
}
