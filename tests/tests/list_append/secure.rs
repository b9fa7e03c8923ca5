//! A cluster with TLS on every hop (`sealdb dev --secure`'s set-up, in this process): the
//! list-append history over it is strictly serializable, a client without a certificate of
//! the cluster's CA is refused, and a client's certificate does not let it call what only
//! nodes may (subscribe to the log, pull verdicts, read for a window).

use std::sync::Arc;

use proto::v1;
use proto::v1::shard_client::ShardClient;
use sequencer::{Epoch, ShardId};
use txn::{ReadAt, TxnError};

use crate::cluster::{LocalCluster, clock, start_cluster_with, tls};
use crate::run_list_append;
use client::{Client, RefusalKind, RemoteError, RemoteSequencer, Tls, cluster_status, endpoint};

async fn start_secure() -> LocalCluster {
    let shards = vec![clock(), clock(), clock()];
    start_cluster_with(clock(), shards, txn::builtin::registry(), true).await
}

/// A shard's gRPC client, over TLS with `identity`.
async fn shard_client(
    local: &LocalCluster,
    identity: &Tls,
) -> ShardClient<tonic::transport::Channel> {
    let channel = endpoint(&local.cluster.shards[0], Some(identity)).unwrap().connect().await;
    ShardClient::new(channel.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_over_a_secure_cluster_is_strictly_serializable() {
    let seed = std::env::var("SEALDB_SEED").map_or(7, |s| s.parse().unwrap());
    eprintln!("secure cluster list-append seed {seed} (rerun with SEALDB_SEED={seed})");
    let local = start_secure().await;
    let client = Arc::new(Client::new(&local.cluster, clock()).unwrap());
    run_list_append(client, "secure-list-append", seed).await;
    local.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certified_clients_get_in_and_only_nodes_call_peer_rpcs() {
    let local = start_secure().await;
    let certs = local.certs.as_ref().unwrap();
    let (node, client) = (tls(certs, &certs.node), tls(certs, &certs.client));
    let sequencer = local.cluster.sequencer.clone();
    // A certified client works.
    let ok = Client::new(&local.cluster, clock()).unwrap();
    ok.call("kv.put", &txn::builtin::put_args(b"k", b"v")).await.unwrap();
    // Without TLS, or with a certificate of another CA, a client is refused.
    let plain = cluster_status(&sequencer, &clock(), None).await.unwrap_err();
    assert!(matches!(plain, TxnError::Unavailable(_)), "{plain}");
    let other = node::make_certificates(&[]).unwrap();
    let stranger =
        Tls::from_pem(certs.ca.as_bytes(), other.client.0.as_bytes(), other.client.1.as_bytes());
    let refused = cluster_status(&sequencer, &clock(), Some(&stranger)).await.unwrap_err();
    assert!(matches!(refused, TxnError::Unavailable(_)), "{refused}");
    let mut cluster = local.cluster.clone();
    cluster.tls = Some(stranger);
    let err = Client::new(&cluster, clock()).unwrap().get(b"k", clock().now()).await.unwrap_err();
    assert!(matches!(err, TxnError::Unavailable(_)), "{err}");
    // A client's certificate cannot subscribe to the log, pull verdicts or read for a window;
    // a node's can.
    let as_client = RemoteSequencer::connect_tls(&sequencer, clock(), Some(&client)).await.unwrap();
    match as_client.subscribe(ShardId(0), Epoch(1)).await {
        Err(RemoteError::Refused { kind: RefusalKind::NotAllowed, why }) => {
            assert!(why.contains("only cluster nodes"), "{why}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    let as_node = RemoteSequencer::connect_tls(&sequencer, clock(), Some(&node)).await.unwrap();
    assert!(as_node.subscribe(ShardId(0), Epoch(1)).await.is_ok());
    let mut shard = shard_client(&local, &client).await;
    let status = shard.verdicts(v1::VerdictsRequest { hlc: 0, epoch: 1 }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // Nor push a window's reads or verdicts to a shard, nor report windows applied.
    let push = v1::PushMessage { hlc: 0, from_shard: 1, window: 1, kind: None };
    let status = shard.push(tokio_stream::iter([push])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let report = v1::AppliedRequest { hlc: 0, shard: 0, replica: 0, epoch: 0 };
    match as_client.report_applied(tokio_stream::iter([report])).await {
        Err(RemoteError::Refused { kind: RefusalKind::NotAllowed, .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    let key = (0..=255u8).map(|b| vec![b]).find(|k| cluster.map.shard_of(k) == ShardId(0));
    let read = |for_window| v1::GetRequest {
        hlc: 0,
        key: key.clone().unwrap(),
        read_ts: clock().now().as_u64(),
        for_window,
    };
    let status = shard.get(read(1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(shard.get(read(0)).await.is_ok(), "an ordinary read is a client's");
    assert!(shard_client(&local, &node).await.get(read(1)).await.is_ok(), "a node's read");
    assert_eq!(ok.get(b"k", ok.read_ts(ReadAt::Latest)).await.unwrap().as_deref(), Some(&b"v"[..]));
    local.stop().await;
}
