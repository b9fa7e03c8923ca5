//! The cluster at its edges: what a hostile or unlucky client can send over the wire, bursts
//! that make windows large, and a node whose clock is out of bounds. Each test opens with the
//! defect it pins down; each failed before its fix. After each, the cluster still serves and
//! every acknowledged write reads back.

use std::sync::Arc;
use std::time::Duration;

use clock::Clock;
use prost::Message;
use proto::v1;
use proto::v1::shard_client::ShardClient;
use sequencer::{ClientId, Entry, ShardId};
use storage::KeyRange;
use txn::builtin::{put_args, registry};
use txn::{
    AbortReason, Context, InteractiveCommit, ProcError, Procedure, ReadAt, Request, ShardMap,
    TxnError,
};

use crate::cluster::{
    LocalCluster, clock, metric, offset_clock, offset_clock_bounded, scrape, start_cluster_with,
};
use client::{Client, RefusalKind, RemoteError, RemoteSequencer};

/// A key named `name` on `shard` of a uniform map.
fn key_on(map: &ShardMap, shard: u32, name: &[u8]) -> Vec<u8> {
    let first = (0..=255u8).find(|b| map.shard_of(&[*b]) == ShardId(shard)).unwrap();
    std::iter::once(first).chain(name.iter().copied()).collect()
}

async fn start() -> LocalCluster {
    let mut procedures = txn::builtin::registry();
    procedures.register(Arc::new(ScanRemote));
    procedures.register(Arc::new(ReadPair));
    start_cluster_with(clock(), vec![clock(), clock(), clock()], procedures, false).await
}

/// Entries the sequencer has logged so far.
async fn logged_entries(local: &LocalCluster) -> f64 {
    let text = scrape(local.sequencer.metrics_source()).await;
    metric(&text, "sealdb_sequencer_entries_logged_total")
}

async fn read(client: &Client, key: &[u8]) -> Option<Vec<u8>> {
    client.get(key, client.read_ts(ReadAt::Latest)).await.unwrap()
}

/// The refusal kind in a status's details.
fn refusal(status: &tonic::Status) -> RefusalKind {
    v1::Refusal::decode(status.details()).unwrap().kind()
}

async fn shard_client(
    local: &LocalCluster,
    shard: usize,
) -> ShardClient<tonic::transport::Channel> {
    ShardClient::connect(format!("http://{}", local.cluster.shards[shard])).await.unwrap()
}

/// An interactive commit writing `value` to each of `keys`.
fn writing(keys: &[&[u8]], value: &[u8]) -> Arc<[u8]> {
    let writes = keys.iter().map(|k| (k.to_vec(), Some(value.to_vec()))).collect();
    let commit = InteractiveCommit { read_ts: clock().now(), writes, ..Default::default() };
    Request::Interactive(commit).into_payload()
}

/// Defect: twelve clients each putting a 1 MiB value on one shard at once made a window
/// slice over the shards' 4 MiB gRPC receive limit. Every shard failed to decode it and
/// subscribed again from the same epoch, forever and across restarts: the cluster was wedged
/// by ordinary traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_megabyte_values_on_one_shard_commits_and_reads_back() {
    let local = start().await;
    let map = local.cluster.map.clone();
    let client = Arc::new(Client::new(&local.cluster, clock()).unwrap());
    let puts: Vec<_> = (0..12u8)
        .map(|i| {
            let (client, key) = (client.clone(), key_on(&map, 0, &[b'v', i]));
            tokio::spawn(async move {
                let value = vec![i; 1 << 20];
                client.call("kv.put", &put_args(&key, &value)).await.map(|_| (key, value))
            })
        })
        .collect();
    for put in puts {
        let (key, value) = put.await.unwrap().unwrap();
        assert_eq!(read(&client, &key).await, Some(value), "each value reads back");
    }
    // One entry just under 4 MiB: four values of almost 1 MiB in one transaction.
    let mut tx = client.begin();
    let keys: Vec<Vec<u8>> = (0..4u8).map(|i| key_on(&map, 0, &[b'w', i])).collect();
    for key in &keys {
        tx.put(key, &vec![9u8; (1 << 20) - 64]);
    }
    tx.commit().await.unwrap();
    for key in &keys {
        assert_eq!(read(&client, key).await.map(|v| v.len()), Some((1 << 20) - 64));
    }
    local.stop().await;
}

/// Defect: a multi-shard `kv.put` declaring a point range on an 11 KiB key was logged; the
/// peer answered the remote read of it with INTERNAL, and the reading shard retried forever,
/// silently. Entries are now checked before they are logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_key_in_declared_ranges_is_refused_before_it_is_logged() {
    let local = start().await;
    let map = local.cluster.map.clone();
    let client = Client::new(&local.cluster, clock()).unwrap();
    let small = key_on(&map, 0, b"small");
    let big = key_on(&map, 1, &vec![b'x'; 11 * 1024]);
    let call = Request::Procedure {
        name: "kv.put".into(),
        args: put_args(&small, b"v"),
        ranges: vec![KeyRange::point(&small), KeyRange::point(&big)],
    };
    let before = logged_entries(&local).await;
    let sequencer = RemoteSequencer::connect(&local.cluster.sequencer, clock()).await.unwrap();
    let entry = Entry::new(ClientId(1), vec![ShardId(0), ShardId(1)], call.into_payload());
    match sequencer.submit(&entry).await {
        Err(RemoteError::Refused { kind: RefusalKind::TooLarge, why }) => {
            assert!(why.contains("exceeds the limit") && why.len() < 200, "{why}")
        }
        other => panic!("expected a refusal for size, got {other:?}"),
    }
    assert_eq!(logged_entries(&local).await, before, "nothing was logged");
    // Both shards still apply multi-shard transactions.
    let other = key_on(&map, 1, b"other");
    let mut tx = client.begin();
    tx.put(&small, b"after");
    tx.put(&other, b"after");
    tx.commit().await.unwrap();
    assert_eq!(read(&client, &small).await.as_deref(), Some(&b"after"[..]));
    assert_eq!(read(&client, &other).await.as_deref(), Some(&b"after"[..]));
    local.stop().await;
}

/// Defect: `Submit(participants=[0])` with an interactive commit writing keys on shards 0 and
/// 1 was reported committed while only shard 0 applied its write: atomicity broken by a
/// client. Participants now follow from the entry's keys and the sequencer's shard map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_participant_list_is_refused_and_participants_follow_from_the_keys() {
    let local = start().await;
    let map = local.cluster.map.clone();
    let client = Client::new(&local.cluster, clock()).unwrap();
    let (k0, k1) = (key_on(&map, 0, b"atomic"), key_on(&map, 1, b"atomic"));
    let sequencer = RemoteSequencer::connect(&local.cluster.sequencer, clock()).await.unwrap();
    let forged = Entry::new(ClientId(7), vec![ShardId(0)], writing(&[&k0, &k1], b"forged"));
    match sequencer.submit(&forged).await {
        Err(RemoteError::Refused { kind: RefusalKind::Malformed, why }) => {
            assert!(why.contains("do not match"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(read(&client, &k0).await, None, "nothing applied on shard 0");
    assert_eq!(read(&client, &k1).await, None, "nothing applied on shard 1");
    // Without a list, the sequencer derives it: both shards apply the entry.
    let derived = Entry::new(ClientId(8), vec![], writing(&[&k0, &k1], b"both"));
    let receipt = sequencer.submit(&derived).await.unwrap();
    let outcome = shard_client(&local, 0)
        .await
        .await_outcome(v1::AwaitOutcomeRequest {
            hlc: 0,
            txn: Some(v1::TxnId { epoch: receipt.txn.epoch.0, index: receipt.txn.index }),
            client_id: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let result = outcome.outcome.unwrap().result.unwrap();
    assert!(matches!(result, v1::outcome::Result::Committed(_)), "{result:?}");
    assert_eq!(read(&client, &k0).await.as_deref(), Some(&b"both"[..]));
    assert_eq!(read(&client, &k1).await.as_deref(), Some(&b"both"[..]));
    local.stop().await;
}

/// Defect: when the answer to a successful `Submit` was refused for clock skew, the client
/// returned `TxnError::ClockSkew`, documented as having changed nothing, while the write was
/// committed. Once a request may have been logged, a failure is an unknown outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_refused_for_clock_skew_is_an_unknown_outcome_not_a_failure() {
    // The whole cluster runs 100 ms ahead (beyond the 20 ms bound) of this client, which the
    // sequencer accepts (the client is behind) but whose receipts the client refuses.
    let ahead = || offset_clock(100);
    let local = start_cluster_with(
        ahead(),
        vec![ahead(), ahead(), ahead()],
        txn::builtin::registry(),
        false,
    )
    .await;
    let client = Client::new(&local.cluster, clock()).unwrap();
    let err = client.call("kv.put", &put_args(b"skewed", b"written")).await.unwrap_err();
    assert_eq!(err, TxnError::OutcomeUnknown);
    // It was committed: a client whose clock agrees with the cluster's reads it.
    let near = Client::new(&local.cluster, ahead()).unwrap();
    assert_eq!(read(&near, b"skewed").await.as_deref(), Some(&b"written"[..]));
    local.stop().await;
}

/// Defects: `AwaitOutcome` for an index that never existed waited until the client gave up,
/// and one for an epoch near `u64::MAX` overflowed (a panic in debug builds); a `Get` far in
/// the future waited forever; a `Get` of a 60 KiB key answered with the whole key in the
/// error message (and INTERNAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_what_cannot_happen_are_answered_at_once() {
    let local = start().await;
    let map = local.cluster.map.clone();
    let key = key_on(&map, 0, b"real");
    let sequencer = RemoteSequencer::connect(&local.cluster.sequencer, clock()).await.unwrap();
    let receipt =
        sequencer.submit(&Entry::new(ClientId(11), vec![], writing(&[&key], b"v"))).await.unwrap();
    let mut shard0 = shard_client(&local, 0).await;
    let await_outcome = |epoch: u64, index: u32| v1::AwaitOutcomeRequest {
        hlc: 0,
        txn: Some(v1::TxnId { epoch, index }),
        client_id: Vec::new(),
    };
    let (epoch, index) = (receipt.txn.epoch.0, receipt.txn.index);
    let real = shard0.await_outcome(await_outcome(epoch, index)).await.unwrap().into_inner();
    assert!(real.outcome.is_some());
    let bounded = Duration::from_secs(5);
    let never = tokio::time::timeout(bounded, shard0.await_outcome(await_outcome(epoch, 999)))
        .await
        .expect("answered at once")
        .unwrap_err();
    assert_eq!(never.code(), tonic::Code::NotFound, "{never:?}");
    // An epoch that will not come for ages waits (bounded by the server), without a panic:
    // the caller's deadline ends it, and the shard goes on serving.
    let mut far = tonic::Request::new(await_outcome(u64::MAX, 0));
    far.set_timeout(Duration::from_millis(300));
    let far = shard0.await_outcome(far).await.unwrap_err();
    assert!(
        matches!(far.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded),
        "{far:?}"
    );
    assert!(shard0.await_outcome(await_outcome(epoch, index)).await.is_ok());
    // Client ids are 16 bytes; anything else is refused, by both outcome calls.
    let odd = v1::AwaitOutcomeRequest { client_id: vec![1, 2, 3], ..await_outcome(epoch, index) };
    let odd = shard0.await_outcome(odd).await.unwrap_err();
    assert_eq!(refusal(&odd), RefusalKind::Malformed, "{odd:?}");
    let odd = shard0.outcome(v1::OutcomeRequest { hlc: 0, client_id: vec![0; 17] }).await;
    assert_eq!(refusal(&odd.unwrap_err()), RefusalKind::Malformed);
    // By its client id, the stored outcome; an id never logged has none.
    let id = ClientId(11).to_bytes();
    let found = shard0.outcome(v1::OutcomeRequest { hlc: 0, client_id: id }).await.unwrap();
    let found = found.into_inner().outcome.unwrap();
    assert_eq!(found.txn, Some(v1::TxnId { epoch, index }));
    let none = ClientId(12345).to_bytes();
    let none = shard0.outcome(v1::OutcomeRequest { hlc: 0, client_id: none }).await.unwrap();
    assert!(none.into_inner().outcome.is_none());
    let future = v1::GetRequest { hlc: 0, key: key.clone(), read_ts: u64::MAX, for_window: 0 };
    let future = tokio::time::timeout(bounded, shard0.get(future))
        .await
        .expect("answered at once")
        .unwrap_err();
    assert_eq!(future.code(), tonic::Code::OutOfRange, "{future:?}");
    assert_eq!(refusal(&future), RefusalKind::Future);
    let huge = key_on(&map, 0, &vec![b'k'; 60 * 1024]);
    let status = shard0
        .get(v1::GetRequest { hlc: 0, key: huge, read_ts: 0, for_window: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(refusal(&status), RefusalKind::TooLarge);
    assert!(status.message().len() < 200, "{}", status.message());
    local.stop().await;
}

/// `GetMany` answers each key as `Get` would, in order (none for a key never written), pages
/// by bytes (a prefix of the keys, at least one), and refuses a key on another shard or more
/// keys than the limit, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_answers_a_prefix_of_the_keys_in_order_and_refuses_what_is_not_its_own() {
    let local = start().await;
    let map = local.cluster.map.clone();
    let client = Client::new(&local.cluster, clock()).unwrap();
    // Six values of 900 KiB: more than one answer's 4 MiB.
    let big: Vec<Vec<u8>> = (0..6u8).map(|i| key_on(&map, 0, &[b'g', i])).collect();
    for (i, key) in big.iter().enumerate() {
        client.call("kv.put", &put_args(key, &vec![i as u8; 900 << 10])).await.unwrap();
    }
    let absent = key_on(&map, 0, b"never written");
    let ts = client.read_ts(ReadAt::Latest);
    read(&client, &big[5]).await; // every shard past `ts`
    // An answer holds up to 4 MiB and the value crossing it: over tonic's default 4 MiB.
    let mut shard0 =
        shard_client(&local, 0).await.max_decoding_message_size(client::MAX_MESSAGE_BYTES);
    let request = |keys: Vec<Vec<u8>>| v1::GetManyRequest {
        hlc: 0,
        keys,
        read_ts: ts.as_u64(),
        for_window: 0,
    };
    let keys: Vec<Vec<u8>> = [absent.clone()].into_iter().chain(big.iter().cloned()).collect();
    let first = shard0.get_many(request(keys.clone())).await.unwrap().into_inner().values;
    // 4 MiB is crossed at the fifth value: the absent key and five values.
    assert_eq!(first.len(), 6, "a prefix, stopping at the byte bound");
    assert_eq!(first[0].value, None);
    for (i, v) in first[1..].iter().enumerate() {
        assert_eq!(v.value.as_deref(), Some(&vec![i as u8; 900 << 10][..]));
    }
    let rest = shard0.get_many(request(keys[6..].to_vec())).await.unwrap().into_inner().values;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].value.as_deref(), Some(&vec![5u8; 900 << 10][..]));
    // A key of another shard among them: refused whole.
    let elsewhere = key_on(&map, 1, b"elsewhere");
    let status = shard0.get_many(request(vec![absent.clone(), elsewhere])).await.unwrap_err();
    assert_eq!(refusal(&status), RefusalKind::Malformed, "{status:?}");
    let many = vec![absent; client::MAX_SCAN_ROWS as usize + 1];
    let status = shard0.get_many(request(many)).await.unwrap_err();
    assert_eq!(refusal(&status), RefusalKind::Malformed, "{status:?}");
    local.stop().await;
}

/// `AwaitOutcomes` answers each transaction known: the committed ones' outcomes, each bad or
/// unknown item's own failure, and the ones not decided yet pending; with none known it
/// waits. A batch over the limit is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_awaited_outcomes_answers_each_and_leaves_the_undecided_pending() {
    let local = start().await;
    let map = local.cluster.map.clone();
    let sequencer = RemoteSequencer::connect(&local.cluster.sequencer, clock()).await.unwrap();
    let entries: Vec<Entry> = (0..3u128)
        .map(|i| {
            let key = key_on(&map, 0, format!("batched {i}").as_bytes());
            Entry::new(ClientId(40 + i), vec![], writing(&[&key], b"v"))
        })
        .collect();
    let receipts: Vec<_> =
        sequencer.submit_many(&entries).await.unwrap().into_iter().map(Result::unwrap).collect();
    let item = |epoch: u64, index: u32, client_id: Vec<u8>| v1::AwaitOutcomeRequest {
        hlc: 0,
        txn: Some(v1::TxnId { epoch, index }),
        client_id,
    };
    let mut items: Vec<_> =
        receipts.iter().map(|r| item(r.txn.epoch.0, r.txn.index, Vec::new())).collect();
    let last = receipts.iter().map(|r| r.txn.epoch.0).max().unwrap();
    items.push(item(last, 999, Vec::new())); // never logged: NOT_FOUND
    items.push(item(last, 0, vec![1, 2, 3])); // a bad client id: MALFORMED
    items.push(item(u64::MAX, 0, Vec::new())); // not decided for ages: pending
    let mut shard0 = shard_client(&local, 0).await;
    // Each decided first, alone, so the batch below finds them known.
    for r in &receipts {
        shard0.await_outcome(item(r.txn.epoch.0, r.txn.index, Vec::new())).await.unwrap();
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        shard0.await_outcomes(v1::AwaitOutcomesRequest { hlc: 0, items }),
    )
    .await
    .expect("answered once one is known")
    .unwrap()
    .into_inner();
    assert_eq!(answer.results.len(), 6);
    for (r, receipt) in answer.results[..3].iter().zip(&receipts) {
        match &r.result {
            Some(v1::outcome_result::Result::Outcome(o)) => {
                let txn = Some(v1::TxnId { epoch: receipt.txn.epoch.0, index: receipt.txn.index });
                assert_eq!(o.txn, txn);
                assert!(matches!(o.result, Some(v1::outcome::Result::Committed(_))), "{o:?}");
            }
            other => panic!("expected an outcome, got {other:?}"),
        }
    }
    let failed = |r: &v1::OutcomeResult| match &r.result {
        Some(v1::outcome_result::Result::Failed(f)) => client::item_failure(f.clone()),
        other => panic!("expected a failure, got {other:?}"),
    };
    assert_eq!(failed(&answer.results[3]).code(), tonic::Code::NotFound);
    assert_eq!(refusal(&failed(&answer.results[4])), RefusalKind::Malformed);
    assert_eq!(answer.results[5].result, None, "not decided: pending");
    // Nothing known: it waits (bounded by the server), and answers nothing pending.
    let mut undecided = tonic::Request::new(v1::AwaitOutcomesRequest {
        hlc: 0,
        items: vec![item(u64::MAX, 0, Vec::new())],
    });
    undecided.set_timeout(Duration::from_millis(300));
    let undecided = shard0.await_outcomes(undecided).await.unwrap_err();
    assert!(
        matches!(undecided.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded),
        "{undecided:?}"
    );
    // Over the limit: refused whole.
    let items = (0..client::MAX_BATCH as u32 + 1).map(|i| item(last, i, Vec::new())).collect();
    let over = shard0.await_outcomes(v1::AwaitOutcomesRequest { hlc: 0, items }).await;
    assert_eq!(refusal(&over.unwrap_err()), RefusalKind::Malformed);
    local.stop().await;
}

/// The watch's messages until it has pushed `n` outcomes, by the lower bits of their ids.
async fn pushed(
    watch: &mut tonic::Streaming<v1::WatchedOutcomes>,
    n: usize,
) -> std::collections::BTreeMap<u64, v1::Outcome> {
    let mut pushed = std::collections::BTreeMap::new();
    while pushed.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("pushed in time")
            .unwrap()
            .expect("the watch is open");
        for o in message.outcomes {
            assert!(pushed.insert(o.id, o.outcome.unwrap()).is_none(), "pushed twice");
        }
    }
    pushed
}

/// `WatchOutcomes` pushes each transaction's outcome, as `AwaitOutcome` answers it, to the
/// watch of its client id's salt and to no other; a second watch of a salt ends the first,
/// a stream the client drops is unregistered, and a stop ends the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_outcomes_come_to_the_watch_of_their_salt_only() {
    let local = start().await;
    let map = local.cluster.map.clone();
    let sequencer = RemoteSequencer::connect(&local.cluster.sequencer, clock()).await.unwrap();
    let shard0 = shard_client(&local, 0).await;
    let watch = async |salt| {
        let request = v1::WatchOutcomesRequest { hlc: 0, salt };
        let mut stream = shard0.clone().watch_outcomes(request).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(first.outcomes.is_empty(), "{first:?}");
        (first.since, stream)
    };
    let (since, mut seven) = watch(7).await;
    let (_, mut eight) = watch(8).await;
    let id = |salt: u64, low: u64| ClientId((u128::from(salt) << 64) | u128::from(low));
    let ids = [id(7, 1), id(9, 1), id(7, 2), id(8, 3)];
    let entries: Vec<Entry> = ids
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let key = key_on(&map, 0, format!("watched {i}").as_bytes());
            Entry::new(*c, vec![], writing(&[&key], b"v"))
        })
        .collect();
    let receipts: Vec<_> =
        sequencer.submit_many(&entries).await.unwrap().into_iter().map(Result::unwrap).collect();
    assert!(receipts.iter().all(|r| r.txn.epoch.0 > since), "logged after the watch began");
    let asked = async |i: usize| {
        let txn = Some(v1::TxnId { epoch: receipts[i].txn.epoch.0, index: receipts[i].txn.index });
        let request = v1::AwaitOutcomeRequest { hlc: 0, txn, client_id: Vec::new() };
        shard0.clone().await_outcome(request).await.unwrap().into_inner().outcome.unwrap()
    };
    let to_seven = pushed(&mut seven, 2).await;
    assert_eq!(to_seven.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(to_seven[&1], asked(0).await);
    assert_eq!(to_seven[&2], asked(2).await);
    assert!(matches!(to_seven[&1].result, Some(v1::outcome::Result::Committed(_))));
    let to_eight = pushed(&mut eight, 1).await;
    assert_eq!(to_eight[&3], asked(3).await);
    // Salt 9 has no watch: nothing else came to the others.
    let quiet = tokio::time::timeout(Duration::from_millis(200), seven.message()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    // A second watch of 7 ends the first.
    let (_, mut again) = watch(7).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), seven.message()).await.unwrap();
    assert_eq!(ended.unwrap_err().code(), tonic::Code::Unavailable);
    // A dropped stream is unregistered: two watches left (7 again, 8), then one.
    let source = local.shards[0].metrics_source();
    let watches = async || metric(&scrape(source.clone()).await, "sealdb_shard_outcome_watches");
    assert_eq!(watches().await, 2.0);
    drop(eight);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while watches().await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the dropped watch stayed registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    local.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match again.message().await {
                Ok(Some(_)) => continue,
                end => return end,
            }
        }
    });
    assert!(ended.await.expect("the stop ends the stream").is_err());
}

/// Rows on shard 1 that [`ScanRemote`] reads from shard 0.
fn big_rows() -> KeyRange {
    KeyRange::prefix(b"\x60big/")
}

/// On shard 0, reads every row of `big_rows()` (on shard 1) and returns their count and
/// bytes.
struct ScanRemote;

impl Procedure for ScanRemote {
    fn name(&self) -> &str {
        "test.scan_remote"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![KeyRange::point(b"\x10scanned"), big_rows()])
    }
    fn run(&self, ctx: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        let rows = ctx.scan(&big_rows(), usize::MAX)?;
        let bytes: usize = rows.iter().map(|(_, v)| v.len()).sum();
        ctx.put(b"\x10scanned", &(rows.len() as u64).to_le_bytes())?;
        Ok([(rows.len() as u64).to_le_bytes(), (bytes as u64).to_le_bytes()].concat())
    }
}

/// Defect: a multi-shard procedure's remote scan of rows holding more than 4 MiB got an
/// answer its shard could not decode, and retried it forever. A scan answer now stops at a
/// few MiB and says there is more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_scan_of_many_megabytes_reads_every_row() {
    let local = start().await;
    let client = Client::new(&local.cluster, clock()).unwrap();
    assert_eq!(local.cluster.map.shard_of(&big_rows().start), ShardId(1));
    const ROWS: u64 = 9;
    for i in 0..ROWS {
        let key: Vec<u8> = big_rows().start.into_iter().chain([i as u8]).collect();
        client.call("kv.put", &put_args(&key, &vec![i as u8; 1 << 20])).await.unwrap();
    }
    let output = client.call("test.scan_remote", b"").await.unwrap();
    let count = u64::from_le_bytes(output[..8].try_into().unwrap());
    let bytes = u64::from_le_bytes(output[8..].try_into().unwrap());
    assert_eq!((count, bytes), (ROWS, ROWS << 20));
    let rows = client.snapshot(ReadAt::Latest).scan(&big_rows(), usize::MAX).await.unwrap();
    assert_eq!(rows.len() as u64, ROWS);
    // `get_many` asks each shard once for its keys (9 MiB of them take shard 1 three
    // answers, each a prefix) and puts every value back in its place: keys of both shards
    // interleaved, one absent.
    let scanned = b"\x10scanned".to_vec();
    assert_eq!(local.cluster.map.shard_of(&scanned), ShardId(0));
    let absent: Vec<u8> = big_rows().start.into_iter().chain([0xff]).collect();
    let mut keys: Vec<Vec<u8>> = rows.iter().rev().map(|(k, _)| k.clone()).collect();
    keys.insert(4, scanned.clone());
    keys.insert(2, absent);
    let values = client.get_many(&keys, client.read_ts(ReadAt::Latest)).await.unwrap();
    let expected: Vec<Option<Vec<u8>>> = keys
        .iter()
        .map(|k| match k.strip_prefix(big_rows().start.as_slice()) {
            Some([i]) if u64::from(*i) < ROWS => Some(vec![*i; 1 << 20]),
            Some(_) => None,
            None => Some(ROWS.to_le_bytes().to_vec()),
        })
        .collect();
    assert!(values == expected, "get_many put values out of place or lost some");
    local.stop().await;
}

/// Defect: `RequestWindow` let any caller make the sequencer log an empty window at every
/// seal, about 200 a second. It now names the last window the caller has (a later one is
/// refused) and is honoured at most once per 20 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_windows_are_rate_limited_and_must_follow_the_log() {
    let local = start().await;
    let sequencer = RemoteSequencer::connect(&local.cluster.sequencer, clock()).await.unwrap();
    let windows = |text: &str| metric(text, "sealdb_sequencer_windows_logged_total");
    let before = windows(&scrape(local.sequencer.metrics_source()).await);
    let started = std::time::Instant::now();
    for _ in 0..300 {
        let (last, _) = local.sequencer.last_logged();
        sequencer.request_window(last).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let elapsed = started.elapsed();
    let forced = windows(&scrape(local.sequencer.metrics_source()).await) - before;
    let bound = (elapsed.as_millis() / 20 + 2) as f64;
    assert!(forced <= bound, "{forced} empty windows logged in {elapsed:?} (at most {bound})");
    assert!(forced >= 1.0, "requests are honoured");
    let (last, _) = local.sequencer.last_logged();
    match sequencer.request_window(sequencer::Epoch(last.0 + 5)).await {
        Err(RemoteError::Refused { kind: RefusalKind::Future, .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    local.stop().await;
}

/// Defect: every `Subscribe` got its own OS thread and an unbounded queue, and re-read the
/// whole log on the sequencer's one thread: 2,000 subscriptions that never read held 2,000
/// threads and over 1 GiB, and slowed every put. Subscriptions are bounded now; one past the
/// bound is refused as busy, the cluster goes on, and closed ones free their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_the_bound_are_refused_and_closed_ones_free_their_place() {
    let local = start().await;
    let client = Client::new(&local.cluster, clock()).unwrap();
    let sequencer = RemoteSequencer::connect(&local.cluster.sequencer, clock()).await.unwrap();
    let mut open = Vec::new();
    let mut busy = 0;
    for _ in 0..node::MAX_SUBSCRIPTIONS + 10 {
        match sequencer.subscribe(ShardId(0), sequencer::Epoch(1)).await {
            Ok(stream) => open.push(stream),
            Err(RemoteError::Refused { kind: RefusalKind::Busy, .. }) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // The three shards hold one each.
    assert_eq!(open.len(), node::MAX_SUBSCRIPTIONS - 3);
    assert_eq!(busy, 13);
    client.call("kv.put", &put_args(b"during", b"v")).await.unwrap();
    assert_eq!(read(&client, b"during").await.as_deref(), Some(&b"v"[..]));
    drop(open);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sequencer.subscribe(ShardId(0), sequencer::Epoch(1)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "closed subscriptions were not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    local.stop().await;
}

/// A clock `ms` milliseconds off the system clock, in a cluster whose bound is 5 ms.
fn clock_5ms_bound(ms: i64) -> Arc<Clock> {
    offset_clock_bounded(ms, Duration::from_millis(5))
}

/// Defect: with a 5 ms bound, one shard at +10 ms or -10 ms stalled the whole cluster, even
/// transactions that did not touch it: none completed for 30-40 s. The shard now fences
/// itself, and every transaction that does not need it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_ten_milliseconds_off_fences_itself_and_the_rest_goes_on() {
    for off in [10, -10] {
        let shards = vec![clock_5ms_bound(0), clock_5ms_bound(0), clock_5ms_bound(off)];
        let local = start_cluster_with(clock_5ms_bound(0), shards, registry(), false).await;
        let map = local.cluster.map.clone();
        let client = Client::new(&local.cluster, clock_5ms_bound(0)).unwrap();
        for i in 0..20u8 {
            let (k0, k1) = (key_on(&map, 0, &[i]), key_on(&map, 1, &[i]));
            client.call("kv.put", &put_args(&k0, b"one")).await.unwrap();
            let mut tx = client.begin();
            tx.put(&k0, b"both");
            tx.put(&k1, b"both");
            tx.commit().await.unwrap_or_else(|e| panic!("shard 2 at {off} ms: {e}"));
        }
        let mut shard2 =
            ShardClient::connect(format!("http://{}", local.cluster.shards[2])).await.unwrap();
        // Clocks are compared where a message is received, so a message slower than the
        // margin (5 ms here) hides the offset: a loaded machine may need many windows to
        // show it. Writes to the other shards go on meanwhile, and keep completing.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for i in 0u32.. {
            let status = shard2.status(v1::StatusRequest { hlc: 0 }).await.unwrap().into_inner();
            if status.failure.contains("fenced") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "shard 2 at {off} ms is not fenced: {status:?}"
            );
            let k0 = key_on(&map, 0, &i.to_be_bytes());
            client.call("kv.put", &put_args(&k0, b"meanwhile")).await.unwrap();
        }
        local.stop().await;
    }
}

/// The other side of fencing: when the sequencer is the node out of bounds (100 ms ahead of
/// every shard, with a 20 ms bound), the shards agree among themselves and stay up, and the
/// sequencer fences itself: entries are refused as clock skew, nothing is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequencer_out_of_bounds_fences_itself_and_the_shards_stay_up() {
    let shards = vec![clock(), clock(), clock()];
    let local = start_cluster_with(offset_clock(100), shards, registry(), false).await;
    let sequencer = RemoteSequencer::connect(&local.cluster.sequencer, clock()).await.unwrap();
    let entry = |id| Entry::new(ClientId(id), vec![], writing(&[b"\x10fenced"], b"v"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut id = 0;
    let why = loop {
        id += 1;
        match sequencer.submit(&entry(id)).await {
            Err(RemoteError::ClockSkew(why)) if why.contains("fenced") => break why,
            other => assert!(std::time::Instant::now() < deadline, "not fenced: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(why.contains("max_offset"), "{why}");
    let before = logged_entries(&local).await;
    assert!(sequencer.submit(&entry(id + 1)).await.is_err());
    assert_eq!(logged_entries(&local).await, before, "a fenced sequencer logs nothing");
    let mut shard0 = shard_client(&local, 0).await;
    assert!(shard0.status(v1::StatusRequest { hlc: 0 }).await.is_ok(), "shards are not fenced");
    local.stop().await;
}

/// Reads `<args>a` and `<args>b`, which it declares, and answers their values joined by `|`
/// (`-` for none); with `args` ending in `!`, then reads `<args>c`, which it does not.
struct ReadPair;

impl Procedure for ReadPair {
    fn name(&self) -> &str {
        "test.read_pair"
    }
    fn ranges(&self, base: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![KeyRange::point(&[base, b"a"].concat()), KeyRange::point(&[base, b"b"].concat())])
    }
    fn run(&self, ctx: &mut dyn Context, base: &[u8]) -> Result<Vec<u8>, ProcError> {
        let mut values = Vec::new();
        for name in [b"a", b"b"] {
            values.push(ctx.get(&[base, name].concat())?.unwrap_or_else(|| b"-".to_vec()));
        }
        if base.ends_with(b"!") {
            ctx.get(&[base, b"c"].concat())?;
        }
        Ok(values.join(&b'|'))
    }
}

/// Read-only calls (`ReadCall`): one request to the shard holding the procedure's ranges,
/// which reads at the timestamp asked; nothing is logged, and a write, a read outside the
/// declared ranges, or ranges on two shards end the call with nothing changed. Over the wire,
/// the wrong shard, an unknown procedure and a future timestamp are answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_call_reads_one_snapshot_on_its_shard_and_changes_nothing() {
    let local = start().await;
    let map = local.cluster.map.clone();
    let client = Client::new(&local.cluster, clock()).unwrap();
    let base = key_on(&map, 1, b"pair");
    let key = |name: &[u8]| [base.as_slice(), name].concat();
    client.call("kv.put", &put_args(&key(b"a"), b"1")).await.unwrap();
    let before = client.read_ts(ReadAt::Latest);
    client.call("kv.put", &put_args(&key(b"a"), b"2")).await.unwrap();
    client.call("kv.put", &put_args(&key(b"b"), b"3")).await.unwrap();
    let read_calls = |text: &str| metric(text, "sealdb_shard_requests_total{method=\"ReadCall\"}");
    let calls = read_calls(&scrape(local.shards[1].metrics_source()).await);
    let logged = logged_entries(&local).await;

    let latest = client.snapshot(ReadAt::Latest).call("test.read_pair", &base).await.unwrap();
    assert_eq!(latest, b"2|3");
    let earlier = client.read_call("test.read_pair", &base, before).await.unwrap();
    assert_eq!(earlier, b"1|-", "read at the timestamp asked");
    assert_eq!(read_calls(&scrape(local.shards[1].metrics_source()).await), calls + 2.0);
    assert_eq!(read_calls(&scrape(local.shards[0].metrics_source()).await), 0.0);

    let now = client.read_ts(ReadAt::Latest);
    let err = client.read_call("kv.put", &put_args(&key(b"a"), b"9"), now).await.unwrap_err();
    assert!(
        matches!(err, TxnError::Aborted(AbortReason::User(ref why)) if why.contains("cannot write")),
        "{err:?}"
    );
    let outside = [base.as_slice(), b"!"].concat();
    let err = client.read_call("test.read_pair", &outside, now).await.unwrap_err();
    assert!(matches!(err, TxnError::Aborted(AbortReason::OutsideDeclaredRanges(_))), "{err:?}");
    let err = client.read_call("test.scan_remote", b"", now).await.unwrap_err();
    assert!(matches!(err, TxnError::Aborted(AbortReason::Malformed(_))), "{err:?}");
    assert_eq!(logged_entries(&local).await, logged, "a read-only call logs nothing");
    assert_eq!(read(&client, &key(b"a")).await.as_deref(), Some(&b"2"[..]));

    let request = |name: &str, args: &[u8], ts: clock::Timestamp| v1::ReadCallRequest {
        hlc: 0,
        name: name.into(),
        args: args.to_vec(),
        read_ts: ts.as_u64(),
    };
    let mut shard0 = shard_client(&local, 0).await;
    let status = shard0.read_call(request("test.read_pair", &base, now)).await.unwrap_err();
    assert_eq!(refusal(&status), RefusalKind::Malformed, "{status:?}");
    let answer = shard0.read_call(request("no.such", b"", now)).await.unwrap().into_inner();
    match answer.outcome.and_then(|o| o.result) {
        Some(v1::outcome::Result::Aborted(a)) => assert_eq!(a.kind, "unknown_procedure"),
        other => panic!("an unknown procedure answered {other:?}"),
    }
    let future = now.saturating_add(Duration::from_secs(10));
    let mut shard1 = shard_client(&local, 1).await;
    let status = shard1.read_call(request("test.read_pair", &base, future)).await.unwrap_err();
    assert_eq!(refusal(&status), RefusalKind::Future, "{status:?}");
    local.stop().await;
}

/// Defect: a shard answered reads from a window as soon as it applied it, before its writes'
/// commit-wait ended. A reader whose clock ran ahead saw a write, and a reader starting after
/// it, whose clock ran behind, then read below the write and did not see it: two reads out of
/// real-time order (DESIGN.md's commit-wait covers acknowledged writes only). A read at `ts`
/// now answers once the shard's clock is past `ts + max_offset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_read_that_saw_a_write_sees_it_whatever_the_clocks() {
    let bound = Duration::from_millis(20);
    let at = |ms| offset_clock_bounded(ms, bound);
    let local = start_cluster_with(at(18), vec![at(0), at(0), at(0)], registry(), false).await;
    let map = local.cluster.map.clone();
    let writer = Arc::new(Client::new(&local.cluster, at(0)).unwrap());
    let ahead = Client::new(&local.cluster, at(18)).unwrap();
    for round in 0..5u8 {
        // A client whose clock has observed nothing yet: it reads at its own time.
        let behind = Client::new(&local.cluster, at(0)).unwrap();
        let key = key_on(&map, 1, &[b'r', round]);
        writer.call("kv.put", &put_args(&key, b"old")).await.unwrap();
        let (w, k) = (writer.clone(), key.clone());
        let write = tokio::spawn(async move { w.call("kv.put", &put_args(&k, b"new")).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ahead.get(&key, ahead.read_ts(ReadAt::Latest)).await.unwrap().as_deref()
            != Some(&b"new"[..])
        {
            assert!(std::time::Instant::now() < deadline, "round {round}: the write never showed");
        }
        let after = behind.get(&key, behind.read_ts(ReadAt::Latest)).await.unwrap();
        assert_eq!(after.as_deref(), Some(&b"new"[..]), "round {round}: a later read lost it");
        write.await.unwrap().unwrap();
    }
    local.stop().await;
}
