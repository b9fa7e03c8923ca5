//! The sequencer over gRPC on loopback: receipts for durable windows, deduplication, every
//! shard's slices in epoch order, resuming after a restart, bad input and clock skew.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use client::{RefusalKind, RemoteError, RemoteSequencer, SliceDelivery};
use clock::{Clock, Epoch, OffsetClock, SystemClock, Timestamp};
use node::{Layout, SequencerNode};
use proto::v1;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sequencer::{ClientId, Entry, SealerConfig, ShardId, TxnId, WindowLog};
use tokio_stream::wrappers::ReceiverStream;
use txn::{InteractiveCommit, Request, ShardMap};

const SHARDS: u32 = 3;
const MAX_OFFSET: Duration = Duration::from_millis(100);

fn clock_shifted(ahead: Option<Duration>, behind: Option<Duration>) -> Arc<Clock> {
    let system: Arc<dyn clock::PhysicalClock> = Arc::new(SystemClock);
    let physical: Arc<dyn clock::PhysicalClock> = match (ahead, behind) {
        (Some(d), _) => Arc::new(OffsetClock::ahead(system, d)),
        (_, Some(d)) => Arc::new(OffsetClock::behind(system, d)),
        _ => system,
    };
    Arc::new(Clock::new(physical, MAX_OFFSET))
}

fn clock() -> Arc<Clock> {
    clock_shifted(None, None)
}

/// A layout of `SHARDS` shards (their addresses are never called here).
fn layout() -> Layout {
    Layout {
        shards: (0..SHARDS).map(|s| format!("127.0.0.1:{}", 1 + s)).collect(),
        map: ShardMap::uniform(SHARDS),
    }
}

async fn start(dir: &Path, config: SealerConfig) -> SequencerNode {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    SequencerNode::start(dir, listener, clock(), config, layout(), None).await.unwrap()
}

async fn connect(node: &SequencerNode, clock: Arc<Clock>) -> RemoteSequencer {
    RemoteSequencer::connect(&node.addr().to_string(), clock).await.unwrap()
}

/// An entry with client id `id` claiming participants `shards`: an interactive commit that
/// writes a key on each of them (on shard 0 for a shard the cluster does not have), so the
/// sequencer, which checks entries before it logs them, takes it when the claim is right.
fn entry(id: u128, shards: &[u32]) -> Entry {
    sized_entry(id, shards, format!("payload of {id}").as_bytes())
}

fn sized_entry(id: u128, shards: &[u32], value: &[u8]) -> Entry {
    let map = ShardMap::uniform(SHARDS);
    let writes = shards
        .iter()
        .map(|&s| {
            let s = if s < SHARDS { s } else { 0 };
            let first = (0..=255u8).find(|b| map.shard_of(&[*b]) == ShardId(s)).unwrap();
            let key = [&[first][..], &id.to_be_bytes()].concat();
            (key, Some(value.to_vec()))
        })
        .collect();
    let commit = InteractiveCommit { read_ts: Timestamp::ZERO, writes, ..Default::default() };
    let payload = Request::Interactive(commit).into_payload();
    Entry::new(ClientId(id), shards.iter().map(|&s| ShardId(s)).collect(), payload)
}

/// Reads windows from a subscription until `wanted` entries have arrived; checks that
/// windows come in consecutive epochs with rising timestamps from `from`.
async fn entries_from(
    deliveries: &mut tokio::sync::mpsc::Receiver<Result<SliceDelivery, RemoteError>>,
    from: Epoch,
    wanted: usize,
) -> BTreeMap<TxnId, Entry> {
    let mut seen = BTreeMap::new();
    let mut next = from;
    let mut last_ts = Timestamp::ZERO;
    while seen.len() < wanted {
        let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.recv())
            .await
            .expect("a delivery within 10 s")
            .expect("the subscription is open")
            .unwrap();
        match delivery {
            SliceDelivery::Window { epoch, ts, entries } => {
                assert_eq!(epoch, next, "windows arrive in consecutive epochs");
                assert!(ts > last_ts, "window timestamps rise");
                next = epoch.next();
                last_ts = ts;
                for (txn, e) in entries {
                    assert_eq!(txn.epoch, epoch);
                    assert!(seen.insert(txn, e).is_none(), "{txn} delivered twice");
                }
            }
            SliceDelivery::Tick(ts) => {
                assert!(ts > last_ts, "a tick is above the windows before it");
                last_ts = ts;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_are_logged_once_and_each_shard_sees_its_slices_in_order() {
    let seed: u64 = std::env::var("SEALDB_SEED").map_or(17, |s| s.parse().unwrap());
    eprintln!("sequencer service seed {seed} (rerun with SEALDB_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), SealerConfig::default()).await;
    let client = connect(&node, clock()).await;
    let mut subscriptions = Vec::new();
    for s in 0..SHARDS {
        subscriptions.push(client.subscribe(ShardId(s), Epoch(1)).await.unwrap());
    }
    let entries: Vec<Entry> = (0..60u128)
        .map(|id| {
            let mut shards: Vec<u32> = (0..SHARDS).filter(|_| rng.random_bool(0.5)).collect();
            if shards.is_empty() {
                shards.push(rng.random_range(0..SHARDS));
            }
            entry(1000 + id, &shards)
        })
        .collect();
    let submissions = entries.iter().map(|e| {
        let client = client.clone();
        let e = e.clone();
        tokio::spawn(async move { client.submit(&e).await })
    });
    let mut receipts = Vec::new();
    for s in submissions {
        receipts.push(s.await.unwrap().unwrap());
    }
    let ids: BTreeSet<TxnId> = receipts.iter().map(|r| r.txn).collect();
    assert_eq!(ids.len(), entries.len(), "seed {seed}: every entry has its own id");
    assert!(receipts.iter().all(|r| !r.duplicate));
    // Resubmissions (a client retrying after losing the answer) get the original receipt.
    for (e, first) in entries.iter().zip(&receipts).take(10) {
        let again = client.submit(e).await.unwrap();
        assert!(again.duplicate, "seed {seed}");
        assert_eq!((again.txn, again.ts), (first.txn, first.ts), "seed {seed}");
    }
    for (s, deliveries) in subscriptions.iter_mut().enumerate() {
        let expected: BTreeMap<TxnId, Entry> = entries
            .iter()
            .zip(&receipts)
            .filter(|(e, _)| e.touches(ShardId(s as u32)))
            .map(|(e, r)| (r.txn, e.clone()))
            .collect();
        let seen = entries_from(deliveries, Epoch(1), expected.len()).await;
        assert_eq!(seen, expected, "seed {seed}: shard {s} gets exactly its entries");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sequencer_resumes_subscriptions_and_keeps_ids_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), SealerConfig::default()).await;
    let client = connect(&node, clock()).await;
    let mut before = Vec::new();
    for id in 1..=6u128 {
        // One at a time: each in its own window.
        before.push(client.submit(&entry(id, &[(id % 3) as u32])).await.unwrap());
    }
    // Entries 3 and 6 are on shard 0.
    let mut all = client.subscribe(ShardId(0), Epoch(1)).await.unwrap();
    let shard0 = entries_from(&mut all, Epoch(1), 2).await;
    drop(all);
    node.shutdown().await.unwrap();

    let node = start(dir.path(), SealerConfig::default()).await;
    let client = connect(&node, clock()).await;
    // From epoch 1 again: the same windows, read back from the log.
    let mut again = client.subscribe(ShardId(0), Epoch(1)).await.unwrap();
    assert_eq!(entries_from(&mut again, Epoch(1), 2).await, shard0);
    // From a later epoch: that window first, and nothing before it.
    let last = before.last().unwrap();
    let mut resumed = client.subscribe(ShardId(0), last.txn.epoch).await.unwrap();
    let got = entries_from(&mut resumed, last.txn.epoch, 1).await;
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![last.txn], "entry 6 alone");
    // Ids are still deduplicated, and new windows come after the old ones.
    let old = client.submit(&entry(3, &[0])).await.unwrap();
    assert!(old.duplicate);
    assert_eq!(old.txn, before[2].txn);
    let new = client.submit(&entry(7, &[1])).await.unwrap();
    assert!(!new.duplicate);
    assert!(new.txn.epoch > last.txn.epoch && new.ts > last.ts);
    node.shutdown().await.unwrap();
}

/// Every window in the log of a stopped sequencer, with its entries' client ids.
fn logged_ids(dir: &Path) -> Vec<u128> {
    let (_, windows) = WindowLog::open(dir).unwrap();
    windows.iter().flat_map(|w| w.entries.iter().map(|e| e.client_id.0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_with_reasons_and_nothing_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let config = SealerConfig { max_window_bytes: 4096, ..SealerConfig::default() };
    let node = start(dir.path(), config).await;
    let client = connect(&node, clock()).await;
    let refused = |r: Result<sequencer::Receipt, RemoteError>| match r {
        Err(RemoteError::Refused { kind, why }) => (kind, why),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Participants follow from the keys: a claim of others is refused.
    let (kind, why) = refused(client.submit(&entry(1, &[SHARDS])).await);
    assert_eq!(kind, RefusalKind::Malformed);
    assert!(why.contains("participants [3] do not match"), "{why}");
    let (_, why) = refused(client.submit(&entry(2, &[])).await);
    assert!(why.contains("touches no key"), "{why}");
    let (kind, why) = refused(client.submit(&sized_entry(3, &[0], &[7u8; 8192])).await);
    assert_eq!(kind, RefusalKind::TooLarge);
    assert!(why.contains("exceeds the window size cap"), "{why}");
    // A malformed client id, sent as raw protobuf.
    let mut raw = v1::sequencer_client::SequencerClient::connect(format!("http://{}", node.addr()))
        .await
        .unwrap();
    let status = raw
        .submit(v1::SubmitRequest {
            hlc: 0,
            participants: vec![0],
            payload: b"x".to_vec(),
            client_id: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("16 bytes"), "{}", status.message());
    match client.subscribe(ShardId(9), Epoch(1)).await {
        Err(RemoteError::Refused { why, .. }) => assert!(why.contains("no shard 9"), "{why}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // A good entry still goes through, and it is the only one logged.
    client.submit(&entry(4, &[1])).await.unwrap();
    node.shutdown().await.unwrap();
    assert_eq!(logged_ids(dir.path()), vec![4]);
}

/// A batch answers each entry as Submit alone would: good ones logged (a repeated id as a
/// duplicate of the first), bad ones refused for their own reason, and an oversize batch
/// refused whole with nothing logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_entry_as_alone_and_an_oversize_batch_logs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = SealerConfig { max_window_bytes: 4096, ..SealerConfig::default() };
    let node = start(dir.path(), config).await;
    let client = connect(&node, clock()).await;
    let batch = [
        entry(1, &[0]),
        entry(2, &[SHARDS]),
        sized_entry(3, &[0], &[7u8; 8192]),
        entry(4, &[1]),
        entry(1, &[0]),
    ];
    let results = client.submit_many(&batch).await.unwrap();
    assert_eq!(results.len(), batch.len());
    let first = results[0].as_ref().unwrap();
    assert!(!first.duplicate);
    match &results[1] {
        Err(RemoteError::Refused { kind: RefusalKind::Malformed, why }) => {
            assert!(why.contains("participants [3] do not match"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        matches!(&results[2], Err(RemoteError::Refused { kind: RefusalKind::TooLarge, .. })),
        "{:?}",
        results[2]
    );
    assert!(!results[3].as_ref().unwrap().duplicate);
    let again = results[4].as_ref().unwrap();
    assert!(again.duplicate, "the same id twice in a batch is logged once");
    assert_eq!(again.txn, first.txn);
    // Over the item limit: refused whole.
    let mut raw = v1::sequencer_client::SequencerClient::connect(format!("http://{}", node.addr()))
        .await
        .unwrap();
    let item = |id: u128| v1::SubmitRequest {
        hlc: 0,
        participants: vec![],
        payload: entry(id, &[0]).payload.to_vec(),
        client_id: id.to_le_bytes().to_vec(),
    };
    let status = raw
        .submit_many(v1::SubmitManyRequest {
            hlc: 0,
            items: (100..100 + client::MAX_BATCH as u128 + 1).map(item).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("at most 1024"), "{}", status.message());
    node.shutdown().await.unwrap();
    assert_eq!(logged_ids(dir.path()), vec![1, 4]);
}

/// Group commit on feedback: with two windows sealed and not reported applied, an entry
/// waits for the (here 10 s) interval; once every shard has reported the last window applied,
/// it is sealed at once. Reports of windows not logged yet, or of shards the cluster does not
/// have, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_is_sealed_once_every_shard_reports_the_last_applied() {
    let dir = tempfile::tempdir().unwrap();
    let config = SealerConfig {
        window_interval: Duration::from_secs(10),
        seal_ahead: Some(2),
        ..SealerConfig::default()
    };
    let node = start(dir.path(), config).await;
    let client = connect(&node, clock()).await;
    // Fewer than two windows unapplied: sealed at once.
    let first = client.submit(&entry(1, &[0])).await.unwrap();
    let second = client.submit(&entry(2, &[1])).await.unwrap();
    assert_eq!(second.txn.epoch, first.txn.epoch.next());
    // Two unapplied: the third waits, through reports from only some of the shards.
    let mut waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.submit(&entry(3, &[2])).await })
    };
    let quick = Duration::from_millis(300);
    let unsealed = tokio::time::timeout(quick, &mut waiting).await;
    assert!(unsealed.is_err(), "sealed before any report: {unsealed:?}");
    for shard in 0..SHARDS - 1 {
        client.applied(ShardId(shard), 0, second.txn.epoch).await.unwrap();
    }
    let unsealed = tokio::time::timeout(quick, &mut waiting).await;
    assert!(unsealed.is_err(), "sealed before every shard reported: {unsealed:?}");
    // A fellow replica's report counts for its shard. This one comes on a stream of reports,
    // which stays open.
    let report = |shard: u32, epoch: Epoch| v1::AppliedRequest {
        hlc: clock().now().as_u64(),
        shard,
        replica: 1,
        epoch: epoch.0,
    };
    let (reports, stream) = tokio::sync::mpsc::channel(4);
    let streaming = {
        let client = client.clone();
        tokio::spawn(async move { client.report_applied(ReceiverStream::new(stream)).await })
    };
    reports.send(report(SHARDS - 1, second.txn.epoch)).await.unwrap();
    let third = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("sealed once every shard reported, not on the 10 s interval")
        .unwrap()
        .unwrap();
    assert_eq!(third.txn.epoch, second.txn.epoch.next());
    // A refused report ends its stream, with the refusal.
    reports.send(report(SHARDS, third.txn.epoch)).await.unwrap();
    match streaming.await.unwrap() {
        Err(RemoteError::Refused { kind: RefusalKind::Malformed, why }) => {
            assert!(why.contains("no shard 3"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match client.applied(ShardId(0), 0, Epoch(third.txn.epoch.0 + 5)).await {
        Err(RemoteError::Refused { kind: RefusalKind::Future, .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    match client.applied(ShardId(SHARDS), 0, third.txn.epoch).await {
        Err(RemoteError::Refused { kind: RefusalKind::Malformed, why }) => {
            assert!(why.contains("no shard 3"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A stream of reports left open does not hold the node's stop (it would wait out the
    // server's grace period, and then cut the connection).
    let (reports, stream) = tokio::sync::mpsc::channel(4);
    let streaming = {
        let client = client.clone();
        tokio::spawn(async move { client.report_applied(ReceiverStream::new(stream)).await })
    };
    reports.send(report(0, third.txn.epoch)).await.unwrap();
    let stopping = std::time::Instant::now();
    node.shutdown().await.unwrap();
    assert!(stopping.elapsed() < node::STOP_GRACE, "stopped in {:?}", stopping.elapsed());
    let ended = tokio::time::timeout(Duration::from_secs(5), streaming).await;
    assert!(matches!(ended, Ok(Ok(_))), "the stream ended with the node: {ended:?}");
    drop(reports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_clock_is_beyond_max_offset_is_refused_and_one_within_it_observed() {
    let dir = tempfile::tempdir().unwrap();
    let server_clock = clock();
    let node = SequencerNode::start(
        dir.path(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        server_clock.clone(),
        SealerConfig::default(),
        layout(),
        None,
    )
    .await
    .unwrap();
    // A client 1 s ahead: refused, and the server's clock does not jump to its time.
    let ahead = clock_shifted(Some(Duration::from_secs(1)), None);
    let skewed = connect(&node, ahead.clone()).await;
    match skewed.submit(&entry(1, &[0])).await {
        Err(RemoteError::ClockSkew(why)) => assert!(why.contains("clock skew"), "{why}"),
        other => panic!("expected a clock-skew refusal, got {other:?}"),
    }
    assert!(server_clock.now() < ahead.physical_now(), "the refused timestamp was not adopted");
    // A client 20 ms ahead, within the 100 ms bound: served, and its time observed.
    let near = clock_shifted(Some(Duration::from_millis(20)), None);
    let stamped = near.now();
    let receipt = connect(&node, near).await.submit(&entry(2, &[0])).await.unwrap();
    assert!(receipt.ts > stamped, "the window is stamped after the request it observed");
    // A client 1 s behind: the server's answers are too far ahead of it, so it refuses them.
    // The entry itself was logged, so that is a bad response (effect unknown), never a
    // refusal of the request.
    let behind = connect(&node, clock_shifted(None, Some(Duration::from_secs(1)))).await;
    match behind.submit(&entry(3, &[0])).await {
        Err(RemoteError::BadResponse(why)) => assert!(why.contains("clock skew"), "{why}"),
        other => panic!("expected a refused receipt, got {other:?}"),
    }
    node.shutdown().await.unwrap();
    assert_eq!(logged_ids(dir.path()), vec![2, 3]);
}

/// A subscriber far behind (more windows than the sequencer hands out live) reads the windows
/// it missed from the log on its own thread, in chunks, then joins the live ones: every
/// window arrives once, in order, with no gap where the two meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_far_behind_catches_up_from_the_log_then_follows_live() {
    let dir = tempfile::tempdir().unwrap();
    let config = SealerConfig {
        window_interval: Duration::from_millis(1),
        seal_ahead: None,
        ..SealerConfig::default()
    };
    let node = start(dir.path(), config).await;
    let client = connect(&node, clock()).await;
    // One entry a window: 600 windows, more than twice the catch-up gap.
    let mut expected = BTreeMap::new();
    for id in 0..600u128 {
        let e = entry(5000 + id, &[0]);
        let receipt = client.submit(&e).await.unwrap();
        expected.insert(receipt.txn, e);
    }
    let mut deliveries = client.subscribe(ShardId(0), Epoch(1)).await.unwrap();
    // And more while it catches up.
    let live = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut more = BTreeMap::new();
            for id in 600..650u128 {
                let e = entry(5000 + id, &[0]);
                more.insert(client.submit(&e).await.unwrap().txn, e);
            }
            more
        })
    };
    let more = live.await.unwrap();
    expected.extend(more);
    let seen = entries_from(&mut deliveries, Epoch(1), expected.len()).await;
    assert_eq!(seen, expected, "every window once, in order, old and live");
    node.shutdown().await.unwrap();
}
