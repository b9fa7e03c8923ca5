//! A cluster on loopback: one sequencer and three shard servers (in this process, each with
//! its own gRPC server, storage and clock), and clients calling procedures over the network:
//! list-append histories (procedures and interactive transactions) with clocks in sync and
//! with clocks offset within `max_offset`, a client beyond it, bad requests over the wire,
//! and outcomes pushed to a client's watch.

use std::sync::Arc;
use std::time::Duration;

use clock::{Clock, OffsetClock, PhysicalClock, SystemClock};
use proto::v1;
use proto::v1::shard_client::ShardClient;
use sequencer::{ClientId, Entry, SealerConfig, ShardId};
use storage::{KeyRange, Limits};
use tokio::net::TcpListener;
use txn::builtin::put_args;
use txn::{AbortReason, Context, ProcError, Procedure, ReadAt, ShardMap, TxnError};

use crate::{CLIENTS, TXNS_PER_CLIENT, run_list_append};
use client::{Client, Cluster, RefusalKind, RemoteError, RemoteSequencer, Tls, cluster_status};
use node::{Certificates, Layout, SequencerNode, ShardConfig, ShardNode, make_certificates};

/// Clocks may differ by this much; commit-wait lasts about as long.
const MAX_OFFSET: Duration = Duration::from_millis(20);

pub(crate) fn clock() -> Arc<Clock> {
    Arc::new(Clock::system(MAX_OFFSET))
}

/// A clock `ms` milliseconds ahead of the system clock (behind if negative).
pub(crate) fn offset_clock(ms: i64) -> Arc<Clock> {
    offset_clock_bounded(ms, MAX_OFFSET)
}

/// [`offset_clock`] in a cluster whose bound is `max_offset`.
pub(crate) fn offset_clock_bounded(ms: i64, max_offset: Duration) -> Arc<Clock> {
    let system: Arc<dyn PhysicalClock> = Arc::new(SystemClock);
    let d = Duration::from_millis(ms.unsigned_abs());
    let physical: Arc<dyn PhysicalClock> = match ms {
        0 => system,
        ms if ms > 0 => Arc::new(OffsetClock::ahead(system, d)),
        _ => Arc::new(OffsetClock::behind(system, d)),
    };
    Arc::new(Clock::new(physical, max_offset))
}

/// How often the tests' shards flush and report it, so the log is truncated as they run.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

pub(crate) struct LocalCluster {
    pub(crate) sequencer: SequencerNode,
    pub(crate) shards: Vec<ShardNode>,
    pub(crate) cluster: Cluster,
    /// The cluster's certificates, when it runs TLS.
    pub(crate) certs: Option<Certificates>,
    _dirs: tempfile::TempDir,
}

/// Starts a sequencer and one shard per clock in `shard_clocks`, with the built-in
/// procedures and the tests' own.
pub(crate) async fn start_cluster(shard_clocks: Vec<Arc<Clock>>) -> LocalCluster {
    start_cluster_with(clock(), shard_clocks, txn::builtin::registry(), false).await
}

/// [`start_cluster`] with the sequencer's clock, more procedures, and TLS on every hop
/// (`secure`: the cluster's `Cluster::tls` is a client certificate).
pub(crate) async fn start_cluster_with(
    sequencer_clock: Arc<Clock>,
    shard_clocks: Vec<Arc<Clock>>,
    mut procedures: txn::Registry,
    secure: bool,
) -> LocalCluster {
    let certs = secure.then(|| make_certificates(&[]).unwrap());
    let node_tls = certs.as_ref().map(|c| tls(c, &c.node));
    let client_tls = certs.as_ref().map(|c| tls(c, &c.client));
    let shards = shard_clocks.len() as u32;
    let dirs = tempfile::tempdir().unwrap();
    let map = ShardMap::uniform(shards);
    procedures.register(Arc::new(Fill));
    procedures.register(Arc::new(CountRemote));
    procedures.register(Arc::new(LookUpRemote));
    // Small log segments, short deduplication and frequent flushes: the log is truncated
    // while the tests run.
    let config = SealerConfig {
        window_interval: Duration::from_millis(2),
        seal_ahead: None,
        log_segment_bytes: 16 << 10,
        dedup_retention: Duration::from_millis(500),
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
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        sequencer_clock,
        config,
        layout,
        node_tls.clone(),
    )
    .await
    .unwrap();
    let cluster = Cluster {
        sequencer: sequencer.addr().to_string(),
        shards: addrs,
        map: map.clone(),
        procedures: procedures.clone(),
        tls: client_tls,
    };
    let nodes = start_shards(dirs.path(), listeners, shard_clocks, &cluster, node_tls).await;
    LocalCluster { sequencer, shards: nodes, cluster, certs, _dirs: dirs }
}

/// Starts one shard server of `cluster` per listener, with its data under `dir`.
pub(crate) async fn start_shards(
    dir: &std::path::Path,
    listeners: Vec<TcpListener>,
    clocks: Vec<Arc<Clock>>,
    cluster: &Cluster,
    tls: Option<Tls>,
) -> Vec<ShardNode> {
    let mut nodes = Vec::new();
    for (s, (listener, clock)) in listeners.into_iter().zip(clocks).enumerate() {
        let config = ShardConfig {
            shard: ShardId(s as u32),
            replica: 0,
            map: cluster.map.clone(),
            dir: Some(dir.join(format!("shard-{s}"))),
            sequencer: cluster.sequencer.clone(),
            peers: cluster.shards.clone(),
            procedures: cluster.procedures.clone(),
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
            tls: tls.clone(),
        };
        nodes.push(ShardNode::start(config, listener, clock).await.unwrap());
    }
    nodes
}

/// The TLS material of `identity` (a certificate and its key) in a cluster with `certs`.
pub(crate) fn tls(certs: &Certificates, (cert, key): &(String, String)) -> Tls {
    Tls::from_pem(certs.ca.as_bytes(), cert.as_bytes(), key.as_bytes())
}

impl LocalCluster {
    pub(crate) async fn stop(self) {
        for shard in self.shards {
            shard.shutdown().await;
        }
        self.sequencer.shutdown().await.unwrap();
    }
}

fn seed() -> u64 {
    let seed = std::env::var("SEALDB_SEED").map_or(7, |s| s.parse().unwrap());
    eprintln!("cluster list-append seed {seed} (rerun with SEALDB_SEED={seed})");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_over_a_cluster_is_strictly_serializable() {
    let seed = seed();
    let local = start_cluster(vec![clock(), clock(), clock()]).await;
    // The client learns the layout from the sequencer's admin service.
    let client = Arc::new(Client::connect(&local.cluster.sequencer, clock()).await.unwrap());
    assert_eq!(client.shard_map(), &local.cluster.map);
    run_list_append(client, "cluster-list-append", seed).await;
    // The nodes' Prometheus metrics count what happened.
    let sequencer = scrape(local.sequencer.metrics_source()).await;
    assert!(metric(&sequencer, "sealdb_sequencer_windows_logged_total") > 0.0, "{sequencer}");
    let entries = metric(&sequencer, "sealdb_sequencer_entries_logged_total");
    assert!(entries >= 360.0, "{sequencer}");
    // Window sizes: one observation per logged window, summing to the entries.
    let windows = metric(&sequencer, "sealdb_sequencer_windows_logged_total");
    assert_eq!(metric(&sequencer, "sealdb_sequencer_window_entries_count"), windows);
    assert_eq!(metric(&sequencer, "sealdb_sequencer_window_entries_sum"), entries);
    assert_eq!(metric(&sequencer, "sealdb_sequencer_window_entries_bucket{le=\"+Inf\"}"), windows);
    // Every shard flushed and told the sequencer, which truncated the log below.
    let first = metric(&sequencer, "sealdb_sequencer_log_first_epoch");
    assert!(first > 1.0, "the log was never truncated: {sequencer}");
    assert!(metric(&sequencer, "sealdb_sequencer_log_bytes") > 0.0, "{sequencer}");
    let (mut committed, mut answered) = (0.0, 0.0);
    let mut peers = [0.0; 4];
    let mut peer_waits = 0.0;
    // Requests the shards received: clients' outcome watches, peers' push streams.
    let mut requests = [0.0; 2];
    for shard in &local.shards {
        let text = scrape(shard.metrics_source()).await;
        let applied = metric(&text, "sealdb_shard_windows_applied_total");
        assert!(applied > 0.0, "{text}");
        // Entries deferred come back in a later window: counted again among its entries.
        let deferred = metric(&text, "sealdb_shard_deferred_total");
        assert!(deferred <= metric(&text, "sealdb_shard_entries_applied_total"), "{text}");
        assert_eq!(metric(&text, "sealdb_shard_seal_to_apply_seconds_count"), applied, "{text}");
        // Applying took time, the waits for peers part of it.
        let (busy, waited) = (
            metric(&text, "sealdb_shard_apply_seconds_total"),
            metric(&text, "sealdb_shard_apply_peer_wait_seconds_total"),
        );
        assert!(busy > 0.0 && waited <= busy, "{text}");
        peer_waits += waited;
        let reads = metric(&text, "sealdb_shard_row_cache_hits_total")
            + metric(&text, "sealdb_shard_row_cache_misses_total");
        assert!(reads > 0.0, "point reads went through the row cache: {text}");
        // Checkpoints are taken (every 200 ms here) and GC's horizon trails the clock.
        assert!(metric(&text, "sealdb_shard_checkpoint_epoch") > 0.0, "{text}");
        assert!(metric(&text, "sealdb_shard_checkpoint_age_seconds") < 30.0, "{text}");
        assert!(metric(&text, "sealdb_shard_gc_horizon_lag_seconds") > 0.0, "{text}");
        assert!(metric(&text, "sealdb_shard_versions_estimate") > 0.0, "{text}");
        committed += metric(&text, "sealdb_shard_committed_total");
        answered += metric(&text, "sealdb_shard_commit_seconds_count");
        for (n, name) in
            ["reads_pushed", "reads_asked", "verdicts_pushed", "verdicts_asked"].iter().enumerate()
        {
            peers[n] += metric(&text, &format!("sealdb_shard_peer_{name}_total"));
        }
        for (n, method) in ["WatchOutcomes", "Push"].iter().enumerate() {
            let name = format!("sealdb_shard_requests_total{{method=\"{method}\"}}");
            requests[n] += metric(&text, &name);
        }
    }
    assert!(requests.iter().all(|&n| n > 0.0), "watches and pushes counted: {requests:?}");
    // Participants pushed each other their reads and verdicts rather than being asked (a
    // window waits at most 100 ms for a push, then asks: how many came depends on timing).
    eprintln!("reads pushed / asked, verdicts pushed / asked: {peers:?}");
    assert!(peers[0] > 0.0 && peers[2] > 0.0, "no push was used: {peers:?}");
    // Windows with entries across shards waited for the other participants.
    assert!(peer_waits > 0.0, "no wait for peers was counted");
    assert!(committed >= (CLIENTS * TXNS_PER_CLIENT / 2) as f64, "{committed} commits counted");
    // Every commit was answered to the client that waited for it: pushed to its watch, or
    // answered when asked (a call made while its client's watch was opening is both).
    assert!(answered >= committed, "{answered} answers for {committed} commits");
    local.stop().await;
}

/// Serves `source` on a free port and fetches `/metrics` over HTTP.
pub(crate) async fn scrape(source: Arc<dyn Fn() -> Vec<node::Metric> + Send + Sync>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(node::serve_metrics(listener, source));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    server.abort();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("application/openmetrics-text"), "{response}");
    response
}

/// The value of metric `name` in a scrape.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
    line[name.len() + 1..].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_offset_within_max_offset_keep_histories_strictly_serializable() {
    let seed = seed();
    // Any two clocks here are less than MAX_OFFSET (20 ms) apart.
    let local = start_cluster(vec![offset_clock(8), offset_clock(-8), offset_clock(0)]).await;
    let client =
        Arc::new(Client::connect(&local.cluster.sequencer, offset_clock(5)).await.unwrap());
    run_list_append(client, "cluster-offset-list-append", seed).await;
    // A client 100 ms ahead is refused, by the sequencer and by the shards.
    let skewed = Client::connect(&local.cluster.sequencer, offset_clock(100)).await;
    assert!(matches!(skewed, Err(TxnError::ClockSkew(_))), "{:?}", skewed.err());
    let skewed = Client::new(&local.cluster, offset_clock(100)).unwrap();
    let err = skewed.call("kv.put", &put_args(b"k", b"v")).await.unwrap_err();
    assert!(matches!(err, TxnError::ClockSkew(_)), "{err}");
    let err = skewed.get(b"k", skewed.read_ts(ReadAt::Latest)).await.unwrap_err();
    assert!(matches!(err, TxnError::ClockSkew(_)), "{err}");
    // Nothing it sent was logged or applied.
    let client = Client::new(&local.cluster, clock()).unwrap();
    assert_eq!(client.get(b"k", client.read_ts(ReadAt::Latest)).await.unwrap(), None);
    local.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_clock_is_beyond_max_offset_is_refused_and_the_others_go_on() {
    // Shard 2's clock is 100 ms ahead: the sequencer refuses its subscription, and the
    // admin service its status answers.
    let local = start_cluster(vec![clock(), clock(), offset_clock(100)]).await;
    let client = Client::new(&local.cluster, clock()).unwrap();
    let key = (0..=255u8).map(|b| vec![b]).find(|k| local.cluster.map.shard_of(k) == ShardId(0));
    let key = key.unwrap();
    client.call("kv.put", &put_args(&key, b"v")).await.unwrap();
    let status = cluster_status(&local.cluster.sequencer, &clock(), None).await.unwrap();
    assert_eq!(status.unreachable.len(), 1, "{:?}", status.unreachable);
    assert!(
        status.unreachable[0].contains("shard 2") && status.unreachable[0].contains("clock skew")
    );
    assert!(status.shards.iter().all(|s| s.shard != 2));
    // Its subscription was refused too (what `remote_sequencer` tests show for any skewed
    // subscriber): it applied nothing, while the others applied the window.
    assert_eq!(local.shards[2].applied(), sequencer::Epoch(0), "shard 2 applied nothing");
    assert!(local.shards[0].applied() > sequencer::Epoch(0));
    // Regression: it went on serving (reads, verdicts, status) with a clock it could not
    // trust, and the cluster stalled. It fences itself, saying why, once it finds the
    // sequencer and its peers refuse its clock.
    let mut shard2 =
        ShardClient::connect(format!("http://{}", local.cluster.shards[2])).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Its status still answers, saying why it serves nothing; its reads are refused.
    loop {
        let status = shard2.status(v1::StatusRequest { hlc: 0 }).await.unwrap().into_inner();
        if status.failure.contains("fenced") && status.failure.contains("clock") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not fenced: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mine = (0..=255u8).map(|b| vec![b]).find(|k| local.cluster.map.shard_of(k) == ShardId(2));
    let read = v1::GetRequest { hlc: 0, key: mine.unwrap(), read_ts: 0, for_window: 0 };
    let refused = shard2.get(read).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("fenced"), "{refused:?}");
    // The others go on, single-shard and across shards 0 and 1.
    let other = (0..=255u8).map(|b| vec![b]).find(|k| local.cluster.map.shard_of(k) == ShardId(1));
    let other = other.unwrap();
    let mut tx = client.begin();
    tx.put(&key, b"both");
    tx.put(&other, b"both");
    tx.commit().await.unwrap();
    assert_eq!(client.get(&other, client.read_ts(ReadAt::Latest)).await.unwrap().unwrap(), b"both");
    local.stop().await;
}

/// Rows that `Fill` writes, on shard 1 of 3 (first byte 0x60), more than one scan page.
const FILLED: u32 = client::MAX_SCAN_ROWS + 500;

fn filled_range() -> KeyRange {
    KeyRange::prefix(b"\x60fill/")
}

/// Writes `FILLED` rows in `filled_range()`.
struct Fill;

impl Procedure for Fill {
    fn name(&self) -> &str {
        "test.fill"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![filled_range()])
    }
    fn run(&self, ctx: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        for i in 0..FILLED {
            let key: Vec<u8> = filled_range().start.into_iter().chain(i.to_be_bytes()).collect();
            ctx.put(&key, b"x")?;
        }
        Ok(Vec::new())
    }
}

/// On shard 0, counts every row of `filled_range()` (on shard 1) and returns the count.
struct CountRemote;

impl Procedure for CountRemote {
    fn name(&self) -> &str {
        "test.count_remote"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![KeyRange::point(b"\x10count"), filled_range()])
    }
    fn run(&self, ctx: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        let n = ctx.scan(&filled_range(), usize::MAX)?.len() as u64;
        ctx.put(b"\x10count", &n.to_le_bytes())?;
        Ok(n.to_le_bytes().to_vec())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_longer_than_a_page_read_every_row_across_shards() {
    let local = start_cluster(vec![clock(), clock(), clock()]).await;
    let mut cluster = local.cluster.clone();
    cluster.procedures.register(Arc::new(Fill));
    cluster.procedures.register(Arc::new(CountRemote));
    let client = Client::new(&cluster, clock()).unwrap();
    assert_eq!(cluster.map.shard_of(&filled_range().start), ShardId(1));
    assert_eq!(cluster.map.shard_of(b"\x10count"), ShardId(0));
    client.call("test.fill", b"").await.unwrap();
    // A procedure on shard 0 reads shard 1's rows over the network.
    let counted = client.call("test.count_remote", b"").await.unwrap();
    assert_eq!(u64::from_le_bytes(counted.try_into().unwrap()), u64::from(FILLED));
    // And a client's scan reads them too.
    let rows = client.snapshot(ReadAt::Latest).scan(&filled_range(), usize::MAX).await.unwrap();
    assert_eq!(rows.len(), FILLED as usize);
    local.stop().await;
}

/// On shard 0, finds a row of shard 1 by an index there and copies it, then marks the row:
/// the scan and the row are reads of shard 1 no entry declared as points. Arguments: the
/// name to look up; output: the row's value.
struct LookUpRemote;

impl Procedure for LookUpRemote {
    fn name(&self) -> &str {
        "test.look_up_remote"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![KeyRange::point(b"\x10looked"), KeyRange::prefix(b"\x61")])
    }
    fn run(&self, ctx: &mut dyn Context, name: &[u8]) -> Result<Vec<u8>, ProcError> {
        let index = KeyRange::prefix(&[b"\x61idx/", name, b"/"].concat());
        let found = ctx.scan(&index, usize::MAX)?;
        let Some((key, _)) = found.first() else { return Err(ProcError::abort("no such name")) };
        let row = [b"\x61row/", &key[index.start.len()..]].concat();
        let value = ctx.get(&row)?.ok_or_else(|| ProcError::abort("no row"))?;
        ctx.put(b"\x10looked", &value)?;
        ctx.put(&row, &[value.as_slice(), b"!"].concat())?;
        Ok(value)
    }
}

/// A multi-shard procedure whose reads of its peer depend on what it read there (an index,
/// then the row it names) runs correctly on both participants, and the participant that owns
/// them pushes what its run read: the other's run after its first is answered by that push
/// (when it comes within the push patience; otherwise by asking, so this counts, not requires,
/// every call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_found_by_running_come_pushed_by_the_participant_that_owns_them() {
    let local = start_cluster(vec![clock(), clock(), clock()]).await;
    let client = Client::new(&local.cluster, clock()).unwrap();
    assert_eq!(local.cluster.map.shard_of(b"\x61"), ShardId(1));
    for (key, value) in [(&b"\x61idx/ann/7"[..], &b""[..]), (b"\x61row/7", b"seven")] {
        client.call("kv.put", &put_args(key, value)).await.unwrap();
    }
    const CALLS: usize = 20;
    for i in 0..CALLS {
        let value = client.call("test.look_up_remote", b"ann").await.unwrap();
        // Each call read the row as the call before left it: `ts_{e-1}`, not a stale push.
        assert_eq!(value, [&b"seven"[..], &b"!".repeat(i)].concat(), "call {i}");
    }
    let looked = client.get(b"\x10looked", client.read_ts(ReadAt::Latest)).await.unwrap();
    assert_eq!(looked.unwrap(), [&b"seven"[..], &b"!".repeat(CALLS - 1)].concat());
    let text = scrape(local.shards[0].metrics_source()).await;
    let run_pushed = metric(&text, "sealdb_shard_peer_reads_run_pushed_total");
    let asked = metric(&text, "sealdb_shard_peer_reads_asked_total");
    eprintln!("shard 0: {run_pushed} reads answered by a run's push, {asked} asked");
    assert!(run_pushed > 0.0, "no run's push was used: {text}");
    local.stop().await;
}

/// A client's calls learn their outcomes from its watch of the shard, without asking: once
/// the watch is open, calls leave the shard's count of awaited outcomes where it was. Another
/// watch of the client's salt ends the client's stream; its calls are answered meanwhile, and
/// it opens its watch again, ending the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_learn_their_outcomes_from_the_clients_watch() {
    let local = start_cluster(vec![clock()]).await;
    let client = Client::new(&local.cluster, clock()).unwrap();
    let source = local.shards[0].metrics_source();
    let counts = async || {
        let text = scrape(source.clone()).await;
        let asked = metric(&text, "sealdb_shard_outcomes_awaited_total");
        (asked, metric(&text, "sealdb_shard_outcomes_pushed_total"))
    };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let put = async || {
        let key = format!("watched {}", calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        client.call("kv.put", &put_args(key.as_bytes(), b"v")).await.unwrap();
    };
    // The first call starts the watch and asks; calls ask until it is open.
    let until_pushed = async || {
        for _ in 0..100 {
            let (asked, _) = counts().await;
            put().await;
            if counts().await.0 == asked {
                return;
            }
        }
        panic!("the watch never opened");
    };
    until_pushed().await;
    let (asked, pushed) = counts().await;
    for _ in 0..20 {
        put().await;
    }
    let (asked_after, pushed_after) = counts().await;
    assert_eq!(asked_after, asked, "calls asked for their outcomes");
    assert_eq!(pushed_after - pushed, 20.0);
    // Another watch of its salt.
    let salt = (client.new_id().0 >> 64) as u64;
    let mut shard0 =
        ShardClient::connect(format!("http://{}", local.cluster.shards[0])).await.unwrap();
    let request = v1::WatchOutcomesRequest { hlc: 0, salt };
    let mut other = shard0.watch_outcomes(request).await.unwrap().into_inner();
    other.message().await.unwrap().unwrap();
    put().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match other.message().await {
                Ok(Some(_)) => continue,
                end => return end,
            }
        }
    });
    let ended = ended.await.expect("the client's watch came back");
    assert_eq!(ended.unwrap_err().code(), tonic::Code::Unavailable);
    until_pushed().await;
    // A call again under a decided call's id gets the original's outcome by asking at once:
    // the push came before it registered. (Waiting for a push first would cost each 300 ms.)
    let id = client.new_id();
    let args = put_args(b"watched again", b"v");
    client.call_as(id, "kv.put", &args).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..5 {
        client.call_as(id, "kv.put", &args).await.unwrap();
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(750), "5 duplicates took {elapsed:?}");
    let read = client.get(b"watched 0", client.read_ts(ReadAt::Latest)).await.unwrap();
    assert_eq!(read.as_deref(), Some(&b"v"[..]));
    local.stop().await;
}

/// A procedure this client knows and the servers do not.
struct OnlyHere;

impl Procedure for OnlyHere {
    fn name(&self) -> &str {
        "only_here"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![KeyRange::point(b"k")])
    }
    fn run(&self, ctx: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        ctx.put(b"k", b"changed")?;
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_over_the_wire_get_clear_errors_and_change_nothing() {
    let local = start_cluster(vec![clock(), clock(), clock()]).await;
    let mut cluster = local.cluster.clone();
    cluster.procedures.register(Arc::new(OnlyHere));
    let client = Client::new(&cluster, clock()).unwrap();
    client.call("kv.put", &put_args(b"k", b"original")).await.unwrap();
    // A procedure no server registered: logged, and aborted by every shard alike.
    let err = client.call("only_here", b"").await.unwrap_err();
    assert!(
        matches!(&err, TxnError::Aborted(AbortReason::UnknownProcedure(n)) if n == "only_here"),
        "{err}"
    );
    // A name nobody knows is refused before it is sent.
    let err = client.call("nowhere", b"").await.unwrap_err();
    assert!(matches!(err, TxnError::UnknownProcedure(_)), "{err}");
    // Malformed arguments, an oversize value.
    let err = client.call("list_append", b"r:x").await.unwrap_err();
    assert!(matches!(err, TxnError::Aborted(AbortReason::User(_))), "{err}");
    let big = vec![7u8; 2 << 20];
    let err = client.call("kv.put", &put_args(b"k", &big)).await.unwrap_err();
    assert!(matches!(err, TxnError::Aborted(AbortReason::TooLarge(_))), "{err}");
    assert_eq!(
        client.get(b"k", client.read_ts(ReadAt::Latest)).await.unwrap().as_deref(),
        Some(&b"original"[..]),
        "nothing changed"
    );
    // A payload that is not an entry, sent straight to the sequencer: refused before it is
    // logged (every shard would have to replay it), and the others go on.
    let sequencer = RemoteSequencer::connect(&cluster.sequencer, clock()).await.unwrap();
    let garbage =
        Entry::new(ClientId(42), vec![ShardId(0), ShardId(1)], Arc::from(&b"\xff\x01junk"[..]));
    match sequencer.submit(&garbage).await {
        Err(RemoteError::Refused { kind: RefusalKind::Malformed, why }) => {
            assert!(why.contains("malformed entry"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut shard0 = ShardClient::connect(format!("http://{}", cluster.shards[0])).await.unwrap();
    client.call("kv.put", &put_args(b"k", b"after")).await.unwrap();
    // Reads of another shard's key, and oversize scans, are refused by the shard.
    let elsewhere =
        (0..=255u8).map(|b| vec![b]).find(|k| cluster.map.shard_of(k) != ShardId(0)).unwrap();
    let status = shard0
        .get(v1::GetRequest { hlc: 0, key: elsewhere, read_ts: 0, for_window: 0 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = shard0
        .scan(v1::ScanRequest {
            hlc: 0,
            range: Some(v1::KeyRange { start: vec![0], end: Some(vec![1]) }),
            read_ts: 0,
            limit: client::MAX_SCAN_ROWS + 1,
            for_window: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Pushes a shard could not have sent end the stream, refused: from itself, and reads
    // whose keys and values do not pair up. The shard goes on.
    let reads = |keys: usize, values: usize| {
        v1::push_message::Kind::Reads(v1::PushedReads {
            read_ts: 0,
            keys: vec![b"k".to_vec(); keys],
            values: vec![v1::MaybeValue { value: None }; values],
        })
    };
    // A run's reads of keys, ranges or rows not on the sender's shard (shard 1 holds keys
    // from 0x55 up to 0xaa) are refused too.
    let run = |key: &[u8], (start, end): (u8, u8), row: u8| {
        v1::push_message::Kind::RunReads(v1::RunReads {
            read_ts: 0,
            keys: vec![key.to_vec()],
            values: vec![v1::MaybeValue { value: None }],
            scans: vec![v1::ScannedRange {
                range: Some(v1::KeyRange { start: vec![start], end: Some(vec![end]) }),
                rows: vec![v1::KeyValue { key: vec![row], value: vec![], version_ts: 0 }],
                complete: true,
            }],
        })
    };
    assert_eq!(cluster.map.shard_of(b"k"), ShardId(1));
    // More scans than a push may hold, even empty ones.
    let many_scans = v1::push_message::Kind::RunReads(v1::RunReads {
        read_ts: 0,
        keys: vec![],
        values: vec![],
        scans: vec![
            v1::ScannedRange {
                range: Some(v1::KeyRange { start: vec![0x60], end: Some(vec![0x70]) }),
                rows: vec![],
                complete: true,
            };
            client::MAX_SCAN_ROWS as usize + 1
        ],
    });
    for (from_shard, kind) in [
        (0, reads(1, 1)),
        (1, reads(2, 1)),
        (9, reads(1, 1)),
        (2, reads(1, 1)),
        (1, run(b"\x10", (0x60, 0x70), 0x61)),
        (1, run(b"k", (0x50, 0x70), 0x61)),
        (1, run(b"k", (0x60, 0x70), 0x71)),
        (1, many_scans),
    ] {
        let push = v1::PushMessage { hlc: 0, from_shard, window: 1, kind: Some(kind) };
        let status = shard0.push(tokio_stream::iter([push])).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    // The same shapes, on shard 1's keys, are taken; so is a push of a kind this version
    // does not know (none, as a newer peer's would decode here), which is skipped.
    for kind in [Some(reads(1, 1)), Some(run(b"k", (0x60, 0x70), 0x61)), None] {
        let push = v1::PushMessage { hlc: 0, from_shard: 1, window: 1, kind };
        shard0.push(tokio_stream::iter([push])).await.unwrap();
    }
    client.call("kv.put", &put_args(b"k", b"last")).await.unwrap();
    local.stop().await;
}
