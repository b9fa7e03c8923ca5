//! Replicas that disagree: one shard with two replicas whose procedures differ (as a
//! non-deterministic procedure, or a bug, would make them). While they apply the same writes
//! their digests agree; once one window writes differently on each, both notice, stop
//! serving, and say why in their status, log and metrics, and callers are told the shard is
//! unavailable rather than read a history a replica denies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1;
use proto::v1::shard_client::ShardClient;
use sequencer::{SealerConfig, ShardId};
use storage::{KeyRange, Limits};
use tokio::net::TcpListener;
use txn::builtin::put_args;
use txn::{Context, ProcError, Procedure, ReadAt, ShardMap, TxnError};

use crate::cluster::{FLUSH_INTERVAL, clock, metric, scrape};
use client::{Client, Cluster, replicas_converged};
use node::{Layout, SequencerNode, ShardConfig, ShardNode};

/// Writes its own constant: replicas registering different ones diverge.
struct Stamp(&'static [u8]);

impl Procedure for Stamp {
    fn name(&self) -> &str {
        "test.stamp"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![KeyRange::point(b"stamp")])
    }
    fn run(&self, ctx: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        ctx.put(b"stamp", self.0)?;
        Ok(Vec::new())
    }
}

fn registry(stamp: &'static [u8]) -> txn::Registry {
    let mut r = txn::builtin::registry();
    r.register(Arc::new(Stamp(stamp)));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_whose_writes_differ_stop_serving_and_say_so() {
    let dirs = tempfile::tempdir().unwrap();
    let map = ShardMap::uniform(1);
    let listeners = [
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.2:0").await.unwrap(),
    ];
    let addrs: Vec<String> =
        listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let replicas = addrs.join(",");
    let layout = Layout { shards: vec![replicas.clone()], map: map.clone() };
    let config = SealerConfig {
        window_interval: Duration::from_millis(2),
        seal_ahead: None,
        ..SealerConfig::default()
    };
    let sequencer = SequencerNode::start(
        &dirs.path().join("log"),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        clock(),
        config,
        layout,
        None,
    )
    .await
    .unwrap();
    let mut nodes = Vec::new();
    for (replica, (listener, stamp)) in listeners.into_iter().zip([&b"one"[..], b"two"]).enumerate()
    {
        let config = ShardConfig {
            shard: ShardId(0),
            replica,
            map: map.clone(),
            dir: Some(dirs.path().join(format!("replica-{replica}"))),
            sequencer: sequencer.addr().to_string(),
            peers: vec![replicas.clone()],
            procedures: registry(stamp),
            limits: Limits::default(),
            retention: Duration::from_secs(60),
            replay_allowance: Duration::from_secs(3600),
            flush_interval: FLUSH_INTERVAL,
            row_cache_bytes: storage::DEFAULT_ROW_CACHE_BYTES,
            block_cache_bytes: storage::DEFAULT_BLOCK_CACHE_BYTES,
            table_file_bytes: storage::DEFAULT_TABLE_FILE_BYTES,
            write_behind: storage::DEFAULT_WRITE_BEHIND,
            held_run_bytes: 0,
            checkpoint_transfer_bytes_per_s: 0,
            apart: Vec::new(),
            apart_hint_bytes: 0,
            tls: None,
        };
        nodes.push(ShardNode::start(config, listener, clock()).await.unwrap());
    }
    let cluster = Cluster {
        sequencer: sequencer.addr().to_string(),
        shards: vec![replicas],
        map,
        procedures: registry(b"any"),
        tls: None,
    };
    let client = Client::new(&cluster, clock()).unwrap();
    let seq = sequencer.addr().to_string();

    // The same writes: the same digests.
    for i in 0..20u32 {
        client.call("kv.put", &put_args(format!("k{i}").as_bytes(), b"v")).await.unwrap();
    }
    let agreed = replicas_converged(&seq, &clock(), None, Duration::from_secs(10)).await.unwrap();
    assert!(agreed[0].1 > 0, "{agreed:?}");

    // One window writes "one" on a replica and "two" on the other.
    client.call("test.stamp", &[]).await.unwrap();
    let diverged = replicas_converged(&seq, &clock(), None, Duration::from_secs(10)).await;
    assert!(diverged.unwrap_err().contains("differ"), "the digests show it");
    let deadline = Instant::now() + Duration::from_secs(10);
    for (addr, node) in addrs.iter().zip(&nodes) {
        let mut shard = ShardClient::connect(format!("http://{addr}")).await.unwrap();
        loop {
            let status = shard.status(v1::StatusRequest { hlc: 0 }).await.unwrap().into_inner();
            if status.failure.contains("replicas diverged") {
                break;
            }
            assert!(Instant::now() < deadline, "{addr} did not notice: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let metrics = scrape(node.metrics_source()).await;
        assert_eq!(metric(&metrics, "sealdb_shard_diverged"), 1.0, "{metrics}");
    }
    // Neither serves a read now: the caller is told, after going round both.
    let client = client.with_patience(Duration::from_secs(1));
    let read = client.snapshot(ReadAt::Latest).get(b"stamp").await;
    assert!(matches!(read, Err(TxnError::Unavailable(_))), "{read:?}");
    for node in nodes {
        node.shutdown().await;
    }
    sequencer.shutdown().await.unwrap();
}
