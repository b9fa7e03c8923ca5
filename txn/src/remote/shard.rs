//! A shard server: [`ShardNode`] applies the sequencer's windows to one shard's storage with
//! the same [`ShardApplier`] as the embedded database, and serves reads at a timestamp, its
//! verdicts and its transactions' outcomes over gRPC.
//!
//! ```text
//!   sequencer ──Subscribe(shard, from)──> apply thread ──> Mvcc (RocksDB or memory)
//!                                          │    ^
//!        peers' Get/Scan at ts_{e-1} <─────┘    └── peers' Verdicts(e), pulled
//! ```
//!
//! How it reaches the other shards, where the embedded database shares memory:
//!
//! - A multi-shard entry reads the other participants' keys with `Get` and `Scan` at the
//!   previous window's timestamp, which wait until that shard's safe time reaches it (it has
//!   applied the previous window). MVCC keeps those versions, so a replay reads the same.
//! - Participants pull each other's local verdicts (`Verdicts(e)`), which wait until the
//!   shard has computed them, or read them from storage once it has applied the window: a
//!   participant that restarts pulls again and gets the same answer.
//! - Calls to a peer that fails are retried until it answers or this node stops: a window
//!   cannot be applied without them.
//!
//! The apply thread subscribes from the window after its watermark, and again after the
//! sequencer restarts. Outcomes are kept in memory for the entries whose lowest participant
//! this shard is, and answered after commit-wait; after a restart, outcomes of windows applied
//! before it are unknown (`NOT_FOUND`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::sequencer::{ShardId, TxnId};
use clock::{Clock, Epoch, Timestamp};
use proto::v1;
use proto::v1::shard_client::ShardClient;
use proto::v1::shard_server::{Shard as ShardRpc, ShardServer};
use storage::{Engine, KeyRange, Limits, MemoryEngine, Mvcc, Quoted, RocksEngine, StorageError};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::metrics::{Metric, ShardCounters};
use super::tls::require_node;
use super::{
    RefusalKind, RemoteError, RemoteSequencer, STOP_GRACE, SliceDelivery, Tls, clock_agreement,
    endpoint, incoming, malformed, observe_request, observe_response, outcome_to_proto, paged,
    refuse, server, sized, stamp, stop_server, warn_if_insecure,
};
use crate::database::panicked;
use crate::executor::{Executor, SnapshotRead};
use crate::outcome::Outcome;
use crate::procedure::{Registry, Rows};
use crate::request::{Request as TxnRequest, range_from_proto, range_to_proto};
use crate::shard::{Finals, Participants, ShardApplier, stored_verdicts};
use crate::shard_map::ShardMap;
use crate::snapshot::scan_shards;
use crate::tally::Tally;

/// Outcomes are kept for this many windows after their entry's (20 s of 2 ms windows under
/// load; longer when windows are sparser), then forgotten: asking later gets `NOT_FOUND`.
const OUTCOME_WINDOWS: u64 = 10_000;

/// The most rows one `Scan` returns.
pub const MAX_SCAN_ROWS: u32 = 10_000;

/// A `Scan` stops once its rows hold this many bytes of keys and values (the row crossing it
/// included): a response stays well below every receiver's message limit.
pub const SCAN_RESPONSE_BYTES: usize = 4 << 20;

/// How to run a shard server.
#[derive(Clone)]
pub struct ShardConfig {
    /// This shard.
    pub shard: ShardId,
    /// The cluster's shard map (the same on every node).
    pub map: ShardMap,
    /// RocksDB directory; `None` keeps the data in memory (tests).
    pub dir: Option<PathBuf>,
    /// The sequencer's address (`host:port`).
    pub sequencer: String,
    /// Every shard's address, by shard id (this one's included).
    pub peers: Vec<String>,
    /// The procedures entries may call (the same on every node).
    pub procedures: Registry,
    /// Size limits.
    pub limits: Limits,
    /// How far back reads at a timestamp may go.
    pub retention: Duration,
    /// TLS for its server and its calls to the sequencer and peers; `None` runs without.
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    applied: Epoch,
    /// Every window at or below this timestamp is applied.
    safe: Timestamp,
}

/// What the apply thread and the gRPC service share.
struct State {
    shard: ShardId,
    map: ShardMap,
    clock: Arc<Clock>,
    mvcc: Arc<Mvcc>,
    retention: Duration,
    progress: Mutex<Progress>,
    /// Local verdicts of windows being applied, for peers that pull them.
    verdicts: Mutex<BTreeMap<Epoch, Vec<(TxnId, bool)>>>,
    /// Outcomes of entries whose lowest participant this shard is.
    outcomes: Mutex<HashMap<TxnId, Outcome>>,
    /// Entries deferred to the window after the last applied: logged, not yet decided.
    deferred: Mutex<BTreeSet<TxnId>>,
    /// The watermark at start: outcomes of windows up to it are unknown.
    started_at: Epoch,
    /// Bumped whenever progress, verdicts or outcomes change.
    changed: watch::Sender<u64>,
    stopping: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Why this shard serves nothing: its clock is beyond `max_offset` of the cluster's.
    fenced: Mutex<Option<String>>,
    counters: ShardCounters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn progress(&self) -> Progress {
        *lock(&self.progress)
    }

    fn check_running(&self) -> Result<(), Status> {
        if let Some(e) = lock(&self.failure).clone() {
            return Err(Status::internal(format!("shard {} failed: {e}", self.shard.0)));
        }
        if let Some(why) = lock(&self.fenced).clone() {
            return Err(Status::unavailable(format!("shard {} is fenced: {why}", self.shard.0)));
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Status::unavailable(format!("shard {} is stopping", self.shard.0)));
        }
        Ok(())
    }

    /// Waits until `ready` returns something, for at most [`WAIT_LIMIT`]: no request holds
    /// the server longer, whatever it asks for (a caller that still wants it asks again).
    async fn wait_for<T>(&self, mut ready: impl FnMut() -> Option<T>) -> Result<T, Status> {
        let mut changes = self.changed.subscribe();
        let wait = async {
            loop {
                if let Some(t) = ready() {
                    return Ok(t);
                }
                self.check_running()?;
                if changes.changed().await.is_err() {
                    return Err(Status::unavailable("stopping"));
                }
            }
        };
        tokio::time::timeout(WAIT_LIMIT, wait).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "shard {} did not get there in {} s; ask again",
                self.shard.0,
                WAIT_LIMIT.as_secs()
            )))
        })
    }

    /// Resolves once the shard is stopping.
    async fn stopped(&self) {
        let mut changes = self.changed.subscribe();
        while !self.stopping.load(Ordering::SeqCst) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until reads at `ts` see every window at or below it. Reads for a window (a
    /// peer's `Snap(e-1)`) are not limited to the retention window.
    async fn wait_safe(&self, ts: Timestamp, for_window: bool) -> Result<(), Status> {
        let now = self.clock.now();
        let oldest = now.saturating_sub(self.retention);
        if ts < oldest && !for_window {
            return Err(refuse(
                Code::OutOfRange,
                RefusalKind::OutsideRetention,
                format!(
                    "read timestamp {ts} is outside the retention window (oldest readable: \
                     {oldest})"
                ),
            ));
        }
        // The request's clock was observed, so a reader's "latest" is at most now: a later
        // timestamp names a time that may never be reached by any window.
        let latest = now.saturating_add(self.clock.max_offset());
        if ts > latest {
            return Err(refuse(
                Code::OutOfRange,
                RefusalKind::Future,
                format!("read timestamp {ts} is in the future (latest readable: {latest})"),
            ));
        }
        self.wait_for(|| (self.progress().safe >= ts).then_some(())).await
    }

    fn check_local(&self, key: &[u8]) -> Result<(), Status> {
        self.mvcc
            .limits()
            .check_key(key)
            .map_err(|e| refuse(Code::InvalidArgument, RefusalKind::TooLarge, e.to_string()))?;
        let owner = self.map.shard_of(key);
        if owner != self.shard {
            return Err(malformed(format!(
                "key {} is on shard {}, not {}",
                Quoted(key),
                owner.0,
                self.shard.0
            )));
        }
        Ok(())
    }

    fn fail(&self, e: String) {
        tracing::error!(shard = self.shard.0, error = %e, "shard stopped");
        *lock(&self.failure) = Some(e);
        self.stopping.store(true, Ordering::SeqCst);
        self.bump();
    }
}

fn storage_status(e: StorageError) -> Status {
    Status::internal(e.to_string())
}

/// A running shard server. [`ShardNode::shutdown`] stops it.
pub struct ShardNode {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    applier: Option<std::thread::JoinHandle<()>>,
}

impl ShardNode {
    /// Opens the shard's storage and serves on `listener`, applying windows from the
    /// sequencer. Must be called within a multi-threaded tokio runtime.
    pub async fn start(
        config: ShardConfig,
        listener: TcpListener,
        clock: Arc<Clock>,
    ) -> Result<ShardNode, String> {
        let shard = config.shard;
        if shard.0 >= config.map.len() || config.peers.len() != config.map.len() as usize {
            return Err(format!(
                "shard {} with {} peer addresses, for a map of {} shards",
                shard.0,
                config.peers.len(),
                config.map.len()
            ));
        }
        let engine: Arc<dyn Engine> = match &config.dir {
            Some(dir) => Arc::new(RocksEngine::open(dir).map_err(|e| e.to_string())?),
            None => Arc::new(MemoryEngine::new()),
        };
        let mvcc = Arc::new(Mvcc::open(engine, config.limits).map_err(|e| e.to_string())?);
        let executor =
            Executor::new(shard, config.map.clone(), config.procedures.clone(), config.limits);
        let applier = ShardApplier::open(shard, mvcc.clone(), executor)?;
        let watermark = mvcc.applied();
        let progress = Progress {
            applied: watermark.map_or(Epoch(0), |w| w.window),
            safe: watermark.map_or(Timestamp::ZERO, |w| w.ts),
        };
        let state = Arc::new(State {
            shard,
            map: config.map.clone(),
            clock: clock.clone(),
            mvcc,
            retention: config.retention,
            progress: Mutex::new(progress),
            verdicts: Mutex::new(BTreeMap::new()),
            outcomes: Mutex::new(HashMap::new()),
            deferred: Mutex::new(BTreeSet::new()),
            started_at: progress.applied,
            changed: watch::Sender::new(0),
            stopping: AtomicBool::new(false),
            failure: Mutex::new(None),
            fenced: Mutex::new(None),
            counters: ShardCounters::default(),
        });
        let tls = config.tls.as_ref();
        let peers = Arc::new(Peers::new(&config.peers, shard, clock.clone(), state.clone(), tls)?);
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = oneshot::channel::<()>();
        let service = ShardService { state: state.clone(), secure: tls.is_some() };
        let server = tokio::spawn(
            server(tls)?
                .add_service(sized!(ShardServer::new(service)))
                .serve_with_incoming_shutdown(incoming(listener), async {
                    let _ = stopped.await;
                }),
        );
        let sequencer = RemoteSequencer::lazy(&config.sequencer, clock, tls)?;
        warn_if_insecure(addr, tls, "shard");
        let handle = Handle::current();
        let thread_state = state.clone();
        let applier = std::thread::Builder::new()
            .name(format!("sealdb-shard-{}", shard.0))
            .spawn(move || {
                let state = thread_state.clone();
                let mut apply =
                    ApplyLoop { state: thread_state, applier, peers, sequencer, handle };
                // A panic fails the shard like any error, so that waiting callers are
                // answered (a node process also exits on it).
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply.run()));
                if let Err(e) = run.unwrap_or_else(|panic| Err(panicked(&*panic))) {
                    state.fail(e);
                }
            })
            .map_err(|e| e.to_string())?;
        tracing::info!(%addr, shard = shard.0, from = progress.applied.next().0, "shard serving");
        Ok(ShardNode {
            addr,
            state,
            stop: Some(stop),
            server: Some(server),
            applier: Some(applier),
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolves, with why, once the shard has failed and stopped applying (storage or the
    /// log failed under it, or a peer refused what it must have): the node should exit
    /// rather than linger serving stale reads.
    pub async fn failed(&self) -> String {
        let mut changes = self.state.changed.subscribe();
        loop {
            if let Some(why) = lock(&self.state.failure).clone() {
                return why;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The last window applied.
    pub fn applied(&self) -> Epoch {
        self.state.progress().applied
    }

    /// The shard's metrics now.
    pub fn metrics(&self) -> Vec<Metric> {
        shard_metrics(&self.state)
    }

    /// A function returning the shard's metrics, for [`serve_metrics`](super::serve_metrics).
    pub fn metrics_source(&self) -> Arc<dyn Fn() -> Vec<Metric> + Send + Sync> {
        let state = self.state.clone();
        Arc::new(move || shard_metrics(&state))
    }

    /// Stops applying and serving.
    pub async fn shutdown(mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.state.bump();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            stop_server(server, "shard").await;
        }
        // The apply thread stops at its next step; a window half-executed is not written, and
        // is applied again after a restart (what is written is only ever a whole window).
        if let Some(applier) = self.applier.take() {
            let joined = tokio::task::spawn_blocking(move || applier.join());
            if tokio::time::timeout(STOP_GRACE, joined).await.is_err() {
                tracing::warn!(shard = self.state.shard.0, "the apply thread did not stop in time");
            }
        }
    }
}

impl Drop for ShardNode {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.state.bump();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn shard_metrics(state: &State) -> Vec<Metric> {
    let c = &state.counters;
    let get = ShardCounters::get;
    let progress = state.progress();
    let lag = state.clock.physical_now().duration_since(progress.safe);
    let cache = state.mvcc.cache_stats();
    vec![
        Metric::counter("sealdb_shard_windows_applied_total", "Windows applied.", get(&c.windows)),
        Metric::counter(
            "sealdb_shard_entries_applied_total",
            "Log entries in the windows applied (this shard's slices).",
            get(&c.entries),
        ),
        Metric::counter(
            "sealdb_shard_committed_total",
            "Transactions committed whose lowest participant is this shard.",
            get(&c.outcomes.committed),
        ),
        Metric::counter(
            "sealdb_shard_fallbacks_total",
            "Of those, single-shard procedures re-executed after losing validation.",
            get(&c.outcomes.fallbacks),
        ),
        Metric::counter(
            "sealdb_shard_conflicts_total",
            "Interactive transactions that failed validation.",
            get(&c.outcomes.conflicts),
        ),
        Metric::counter(
            "sealdb_shard_aborts_total",
            "Transactions aborted.",
            get(&c.outcomes.aborts),
        ),
        c.seal_to_apply.metric(
            "sealdb_shard_seal_to_apply_seconds",
            "Per applied window, the time from the window's timestamp to its apply.",
        ),
        c.commit.metric(
            "sealdb_shard_commit_seconds",
            "Per answered commit, the time from its window's timestamp to the answer \
             (commit-wait included).",
        ),
        Metric::counter(
            "sealdb_shard_row_cache_hits_total",
            "Point reads the row cache answered.",
            cache.hits as f64,
        ),
        Metric::counter(
            "sealdb_shard_row_cache_misses_total",
            "Point reads the row cache could not answer (read from storage).",
            cache.misses as f64,
        ),
        Metric::gauge(
            "sealdb_shard_applied_epoch",
            "The last window applied.",
            progress.applied.0 as f64,
        ),
        Metric::gauge(
            "sealdb_shard_safe_time_lag_seconds",
            "How far the shard's safe time is behind its physical clock.",
            lag.as_secs_f64(),
        ),
    ]
}

/// Clients of the other shards, retried until they answer or this node stops.
struct Peers {
    clients: Vec<Option<ShardClient<Channel>>>,
    clock: Arc<Clock>,
    state: Arc<State>,
}

/// The longest a request waits for the shard (safe time, verdicts, an outcome) before it is
/// answered `DEADLINE_EXCEEDED`.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// How often a shard whose clock is refused tries the sequencer again.
const FENCED_RETRY: Duration = Duration::from_secs(1);

/// How long to wait before calling a failed peer again.
const PEER_RETRY: Duration = Duration::from_millis(20);

impl Peers {
    fn new(
        addrs: &[String],
        me: ShardId,
        clock: Arc<Clock>,
        state: Arc<State>,
        tls: Option<&Tls>,
    ) -> Result<Peers, String> {
        let clients = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                if i == me.0 as usize {
                    return Ok(None);
                }
                let endpoint = endpoint(addr, tls).map_err(|e| format!("shard {i}: {e}"))?;
                Ok(Some(sized!(ShardClient::new(endpoint.connect_lazy()))))
            })
            .collect::<Result<_, String>>()?;
        Ok(Peers { clients, clock, state })
    }

    /// Calls `shard` with `call` until it answers; gives up only when this node stops or the
    /// peer refuses the request as invalid (a bug: the request would never succeed).
    async fn call<T, F, Fut>(&self, shard: ShardId, mut call: F) -> Result<T, String>
    where
        F: FnMut(ShardClient<Channel>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(T, u64), Status>>,
    {
        let client = self.clients[shard.0 as usize]
            .clone()
            .ok_or_else(|| format!("shard {} called itself", shard.0))?;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let answer = tokio::select! {
                answer = call(client.clone(), stamp(&self.clock)) => answer,
                () = self.state.stopped() => return Err("stopping".into()),
            };
            let failure = match answer {
                Ok((answer, hlc)) => match observe_response(&self.clock, hlc) {
                    Ok(()) => return Ok(answer),
                    Err(e) => e,
                },
                Err(status) => match RemoteError::from(status) {
                    RemoteError::Refused { why, .. } => {
                        return Err(format!("shard {} refused: {why}", shard.0));
                    }
                    e => e,
                },
            };
            // A window waits for this: say so, without flooding the log.
            if attempt == 10 || attempt.is_multiple_of(500) {
                tracing::warn!(peer = shard.0, attempt, error = %failure, "peer call failing; retrying");
            } else {
                tracing::debug!(peer = shard.0, error = %failure, "peer call failed; retrying");
            }
            if self.state.stopping.load(Ordering::SeqCst) {
                return Err("stopping".into());
            }
            tokio::time::sleep(PEER_RETRY).await;
        }
    }

    async fn get(
        &self,
        key: &[u8],
        at: Timestamp,
        window: Epoch,
    ) -> Result<Option<Vec<u8>>, String> {
        let shard = self.state.map.shard_of(key);
        self.call(shard, |mut c, hlc| {
            let request = v1::GetRequest {
                hlc,
                key: key.to_vec(),
                read_ts: at.as_u64(),
                for_window: window.0,
            };
            async move {
                let r = c.get(request).await?.into_inner();
                Ok((r.found.map(|kv| kv.value), r.hlc))
            }
        })
        .await
    }

    async fn scan(
        &self,
        shard: ShardId,
        range: &KeyRange,
        at: Timestamp,
        window: Epoch,
        limit: usize,
    ) -> Result<Rows, String> {
        paged(range.clone(), limit, |range, n| {
            self.call(shard, move |mut c, hlc| {
                let request = v1::ScanRequest {
                    hlc,
                    range: Some(range_to_proto(&range)),
                    read_ts: at.as_u64(),
                    limit: n as u32,
                    for_window: window.0,
                };
                async move {
                    let r = c.scan(request).await?.into_inner();
                    let rows: Rows = r.rows.into_iter().map(|kv| (kv.key, kv.value)).collect();
                    Ok(((rows, r.more), r.hlc))
                }
            })
        })
        .await
    }

    async fn verdicts(&self, shard: ShardId, e: Epoch) -> Result<Vec<(TxnId, bool)>, String> {
        self.call(shard, |mut c, hlc| async move {
            let r = c.verdicts(v1::VerdictsRequest { hlc, epoch: e.0 }).await?.into_inner();
            let verdicts = r
                .verdicts
                .into_iter()
                .map(|v| (TxnId { epoch: Epoch(v.epoch), index: v.index }, v.commit))
                .collect();
            Ok((verdicts, r.hlc))
        })
        .await
    }
}

/// `Snap(e-1)` across the cluster: this shard's keys from storage, others' from their shards
/// (fetched together before the window runs where a procedure declared them as points).
struct ClusterSnapshot<'a> {
    state: &'a State,
    peers: &'a Arc<Peers>,
    prefetched: &'a HashMap<Vec<u8>, Option<Vec<u8>>>,
    handle: &'a Handle,
    /// The window being executed: this reads `Snap(window - 1)`.
    window: Epoch,
    at: Timestamp,
}

fn remote_error(e: String) -> StorageError {
    StorageError::Engine(format!("remote read: {e}"))
}

impl SnapshotRead for ClusterSnapshot<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if self.state.map.shard_of(key) == self.state.shard {
            return Ok(self.state.mvcc.get(key, self.at)?.map(|v| v.value));
        }
        if let Some(value) = self.prefetched.get(key) {
            return Ok(value.clone());
        }
        self.handle.block_on(self.peers.get(key, self.at, self.window)).map_err(remote_error)
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, StorageError> {
        scan_shards(&self.state.map, range, limit, |shard, part, left| {
            if shard == self.state.shard {
                let found = self.state.mvcc.scan(part, self.at, left)?;
                return Ok(found.into_iter().map(|(k, v)| (k, v.value)).collect());
            }
            self.handle
                .block_on(self.peers.scan(shard, part, self.at, self.window, left))
                .map_err(remote_error)
        })
    }

    fn first_change(
        &self,
        range: &KeyRange,
        after: Timestamp,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        // Validation reads only this shard's part of what a transaction read.
        let part = self.state.map.clip(range, self.state.shard);
        self.state.mvcc.first_change(&part, after, self.at)
    }
}

struct ApplyLoop {
    state: Arc<State>,
    applier: ShardApplier,
    peers: Arc<Peers>,
    sequencer: RemoteSequencer,
    handle: Handle,
}

impl ApplyLoop {
    fn run(&mut self) -> Result<(), String> {
        let shard = self.state.shard;
        while !self.state.stopping.load(Ordering::SeqCst) {
            let from = self.applier.next_epoch();
            let subscribed = self.handle.block_on(self.sequencer.subscribe(shard, from));
            let mut deliveries = match subscribed {
                Ok(d) => d,
                Err(RemoteError::ClockSkew(why)) => {
                    self.clock_skew(&why);
                    std::thread::sleep(FENCED_RETRY);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(shard = shard.0, error = %e, "subscribing; retrying");
                    std::thread::sleep(PEER_RETRY);
                    continue;
                }
            };
            if self.applier.has_deferred() {
                self.request_window();
            }
            loop {
                if self.state.stopping.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let delivery = self.handle.block_on(async {
                    tokio::time::timeout(Duration::from_millis(100), deliveries.recv()).await
                });
                match delivery {
                    Err(_) => continue, // nothing yet; check for stopping
                    Ok(None) => break,
                    Ok(Some(Err(RemoteError::ClockSkew(why)))) => {
                        self.clock_skew(&why);
                        std::thread::sleep(FENCED_RETRY);
                        break;
                    }
                    Ok(Some(Err(e))) => {
                        tracing::info!(shard = shard.0, error = %e, "lost the sequencer; resubscribing");
                        break;
                    }
                    Ok(Some(Ok(delivery))) if lock(&self.state.fenced).is_some() => {
                        // The sequencer's clock and ours agree again.
                        tracing::warn!(shard = shard.0, "clock back within bounds; serving");
                        *lock(&self.state.fenced) = None;
                        self.deliver(delivery)?;
                    }
                    Ok(Some(Ok(delivery))) => self.deliver(delivery)?,
                }
            }
            std::thread::sleep(PEER_RETRY);
        }
        Ok(())
    }

    fn deliver(&mut self, delivery: SliceDelivery) -> Result<(), String> {
        match delivery {
            SliceDelivery::Tick(ts) => {
                let mut progress = lock(&self.state.progress);
                progress.safe = progress.safe.max(ts);
                drop(progress);
                self.state.bump();
                Ok(())
            }
            SliceDelivery::Window { epoch, ts, entries } => self.apply(epoch, ts, &entries),
        }
    }

    /// The sequencer refused this shard's clock, or this shard the sequencer's. If most of
    /// the other shards refuse this shard's clock too (or there are none to ask), this shard
    /// is the one out of bounds: it fences itself, serving nothing (reads at a timestamp and
    /// commit-wait are only safe within `max_offset`) until the clocks agree again. If most
    /// of them accept it, the sequencer is the one out of bounds: nothing to fence here.
    fn clock_skew(&self, why: &str) {
        let shard = self.state.shard.0;
        let peers = self.peers.clients.iter().flatten();
        let (agree, disagree) = self.handle.block_on(clock_agreement(peers, &self.peers.clock));
        if agree > disagree {
            tracing::error!(
                shard,
                agree,
                disagree,
                error = why,
                "the sequencer's clock is beyond max_offset of this shard's and most peers'"
            );
            return;
        }
        let mut fenced = lock(&self.state.fenced);
        if fenced.is_none() {
            tracing::error!(
                shard,
                agree,
                disagree,
                error = why,
                "fencing: this shard's clock is beyond max_offset of the cluster's; serving \
                 nothing until it is back within bounds"
            );
        }
        *fenced = Some(format!("its clock is out of bounds ({why})"));
        drop(fenced);
        self.state.bump();
    }

    fn apply(
        &mut self,
        epoch: Epoch,
        ts: Timestamp,
        entries: &[(TxnId, ::sequencer::Entry)],
    ) -> Result<(), String> {
        let (state, peers, handle) = (&*self.state, &self.peers, &self.handle);
        let prefetched = match state.mvcc.applied() {
            Some(w) if w.window >= epoch => HashMap::new(), // a replay: nothing runs
            w => {
                let at = w.map_or(Timestamp::ZERO, |w| w.ts);
                let keys = remote_points(state, entries);
                handle.block_on(prefetch(peers, keys, at, epoch))?
            }
        };
        let prefetched = &prefetched;
        let applied = self.applier.apply(
            epoch,
            ts,
            entries.iter().map(|(t, e)| (*t, e)),
            |at| ClusterSnapshot { state, peers, prefetched, handle, window: epoch, at },
            // Remote reads wait for the other shards' safe time themselves.
            |_| Ok(()),
            |e, local, participants| exchange(state, peers, handle, e, local, participants),
            // Windows come durable from the sequencer's service.
            || Ok(()),
        )?;
        let Some(applied) = applied else { return Ok(()) };
        let c = &state.counters;
        ShardCounters::add(&c.windows, 1);
        ShardCounters::add(&c.entries, entries.len() as u64);
        c.seal_to_apply.observe(state.clock.physical_now().duration_since(ts));
        for (d, _) in &applied.decided {
            c.outcomes.count(d);
        }
        // Outcomes, then the deferred entries, then progress: `AwaitOutcome` reads them in the
        // reverse order, so a waiter that sees the window applied finds its outcome.
        {
            let mut outcomes = lock(&state.outcomes);
            outcomes.extend(applied.decided.into_iter().map(|(d, _)| (d.txn, d.outcome)));
            if epoch.0.is_multiple_of(100) {
                outcomes.retain(|t, _| t.epoch.0.saturating_add(OUTCOME_WINDOWS) > epoch.0);
            }
        }
        if applied.deferred || !lock(&state.deferred).is_empty() {
            *lock(&state.deferred) = self.applier.deferred_ids().collect();
        }
        {
            let mut progress = lock(&state.progress);
            progress.applied = epoch;
            progress.safe = progress.safe.max(ts);
        }
        lock(&state.verdicts).retain(|e, _| *e > epoch);
        state.bump();
        if applied.deferred {
            self.request_window();
        }
        Ok(())
    }

    /// Asks for a window after the last one applied: deferred entries wait for it.
    fn request_window(&self) {
        let after = self.state.progress().applied;
        if let Err(e) = self.handle.block_on(self.sequencer.request_window(after)) {
            // The sequencer is down; this shard asks again when it resubscribes.
            tracing::warn!(shard = self.state.shard.0, error = %e, "requesting a window");
        }
    }
}

/// The keys on other shards that this window's multi-shard procedures declared as points:
/// they will read them (or may), so they are fetched together before the window runs.
fn remote_points(state: &State, entries: &[(TxnId, ::sequencer::Entry)]) -> BTreeSet<Vec<u8>> {
    let mut keys = BTreeSet::new();
    let limits = state.mvcc.limits();
    for (_, entry) in entries.iter().filter(|(_, e)| e.participants.len() > 1) {
        if let Ok(TxnRequest::Procedure { ranges, .. }) = TxnRequest::decode(&entry.payload) {
            for key in ranges.iter().filter_map(KeyRange::as_point) {
                // A key over the limit is never read: the entry aborts before it runs.
                if state.map.shard_of(key) != state.shard && limits.check_key(key).is_ok() {
                    keys.insert(key.to_vec());
                }
            }
        }
    }
    keys
}

/// Reads `keys` from their shards at `at` for window `e`, all at once.
async fn prefetch(
    peers: &Arc<Peers>,
    keys: BTreeSet<Vec<u8>>,
    at: Timestamp,
    e: Epoch,
) -> Result<HashMap<Vec<u8>, Option<Vec<u8>>>, String> {
    let mut calls = tokio::task::JoinSet::new();
    for key in keys {
        let peers = peers.clone();
        calls.spawn(async move {
            let value = peers.get(&key, at, e).await;
            value.map(|v| (key, v))
        });
    }
    let mut found = HashMap::new();
    while let Some(call) = calls.join_next().await {
        let (key, value) = call.map_err(|e| e.to_string())??;
        found.insert(key, value);
    }
    Ok(found)
}

/// Publishes this shard's local verdicts of window `e`, pulls every other participant's, and
/// tallies them.
fn exchange(
    state: &State,
    peers: &Arc<Peers>,
    handle: &Handle,
    e: Epoch,
    local: &[(TxnId, bool)],
    participants: &Participants,
) -> Result<Finals, String> {
    lock(&state.verdicts).insert(e, local.to_vec());
    state.bump();
    let mut tally = Tally::new(e, state.shard, local, participants);
    let pulled = handle.block_on(async {
        let mut calls = tokio::task::JoinSet::new();
        for p in tally.waiting_for() {
            let peers = peers.clone();
            calls.spawn(async move { (p, peers.verdicts(p, e).await) });
        }
        calls.join_all().await
    });
    for (p, verdicts) in pulled {
        tally.record(p, &verdicts?).map_err(|e| e.to_string())?;
    }
    tally.finals().ok_or_else(|| format!("window {e}: a participant's verdicts are missing"))
}

struct ShardService {
    state: Arc<State>,
    /// Serving TLS: peer-only calls need a node's certificate.
    secure: bool,
}

fn key_value(key: Vec<u8>, version: storage::Version) -> v1::KeyValue {
    v1::KeyValue { key, value: version.value, version_ts: version.ts.as_u64() }
}

#[tonic::async_trait]
impl ShardRpc for ShardService {
    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        if request.get_ref().for_window != 0 {
            require_node(&request, self.secure)?;
        }
        let r = request.into_inner();
        let state = &self.state;
        observe_request(&state.clock, r.hlc)?;
        state.check_running()?;
        state.check_local(&r.key)?;
        let at = Timestamp::from_u64(r.read_ts);
        state.wait_safe(at, r.for_window != 0).await?;
        let found =
            state.mvcc.get(&r.key, at).map_err(storage_status)?.map(|v| key_value(r.key, v));
        Ok(Response::new(v1::GetResponse { hlc: stamp(&state.clock), found }))
    }

    async fn scan(
        &self,
        request: Request<v1::ScanRequest>,
    ) -> Result<Response<v1::ScanResponse>, Status> {
        if request.get_ref().for_window != 0 {
            require_node(&request, self.secure)?;
        }
        let r = request.into_inner();
        let state = &self.state;
        observe_request(&state.clock, r.hlc)?;
        state.check_running()?;
        let range = range_from_proto(
            r.range.ok_or_else(|| Status::invalid_argument("a scan needs a range"))?,
        );
        state
            .mvcc
            .limits()
            .check_range(&range)
            .map_err(|e| refuse(Code::InvalidArgument, RefusalKind::TooLarge, e.to_string()))?;
        let mine = state.map.clip(&range, state.shard);
        if mine != range {
            return Err(malformed(format!(
                "range {} is not within shard {}",
                range.quoted(),
                state.shard.0
            )));
        }
        if r.limit > MAX_SCAN_ROWS {
            return Err(malformed(format!(
                "limit {} is over the maximum of {MAX_SCAN_ROWS} rows",
                r.limit
            )));
        }
        let at = Timestamp::from_u64(r.read_ts);
        state.wait_safe(at, r.for_window != 0).await?;
        let (rows, more) = state
            .mvcc
            .scan_bounded(&range, at, r.limit as usize, SCAN_RESPONSE_BYTES)
            .map_err(storage_status)?;
        let rows = rows.into_iter().map(|(key, v)| key_value(key, v)).collect();
        Ok(Response::new(v1::ScanResponse { hlc: stamp(&state.clock), rows, more }))
    }

    async fn verdicts(
        &self,
        request: Request<v1::VerdictsRequest>,
    ) -> Result<Response<v1::VerdictBatch>, Status> {
        require_node(&request, self.secure)?;
        let r = request.into_inner();
        let state = &self.state;
        observe_request(&state.clock, r.hlc)?;
        state.check_running()?;
        let e = Epoch(r.epoch);
        let verdicts = state
            .wait_for(|| {
                if let Some(v) = lock(&state.verdicts).get(&e) {
                    return Some(Ok(v.clone()));
                }
                (state.progress().applied >= e).then(|| stored_verdicts(&state.mvcc, e))
            })
            .await?
            .map_err(Status::internal)?;
        Ok(Response::new(v1::VerdictBatch {
            hlc: stamp(&state.clock),
            epoch: e.0,
            from_shard: state.shard.0,
            verdicts: verdicts
                .into_iter()
                .map(|(t, commit)| v1::Verdict { index: t.index, commit, epoch: t.epoch.0 })
                .collect(),
        }))
    }

    async fn await_outcome(
        &self,
        request: Request<v1::AwaitOutcomeRequest>,
    ) -> Result<Response<v1::AwaitOutcomeResponse>, Status> {
        let r = request.into_inner();
        let state = &self.state;
        observe_request(&state.clock, r.hlc)?;
        state.check_running()?;
        let id = r.txn.ok_or_else(|| Status::invalid_argument("which transaction?"))?;
        let txn = TxnId { epoch: Epoch(id.epoch), index: id.index };
        let outcome = state
            .wait_for(|| {
                // Read in the reverse of the order the apply thread writes them (outcomes,
                // then the deferred entries, then progress), so that an outcome recorded
                // while this runs is never missed: if the window counted as applied here,
                // its outcomes are in the map.
                let applied = state.progress().applied;
                let deferred = lock(&state.deferred).contains(&txn);
                if let Some(o) = lock(&state.outcomes).get(&txn) {
                    return Some(Ok(o.clone()));
                }
                if txn.epoch <= state.started_at {
                    return Some(Err(Status::not_found(format!(
                        "the outcome of {txn} is unknown: shard {} restarted since",
                        state.shard.0
                    ))));
                }
                if txn.epoch.0.saturating_add(OUTCOME_WINDOWS) <= applied.0 {
                    return Some(Err(Status::not_found(format!(
                        "the outcome of {txn} is forgotten: shard {} keeps outcomes for \
                         {OUTCOME_WINDOWS} windows",
                        state.shard.0
                    ))));
                }
                // Its window is applied and it was not deferred to a later one: it never was.
                (txn.epoch <= applied && !deferred).then(|| {
                    Err(Status::not_found(format!(
                        "shard {} has no transaction {txn} whose lowest participant it is",
                        state.shard.0
                    )))
                })
            })
            .await??;
        if let Outcome::Committed { ts, .. } = &outcome
            && !state.clock.max_offset().is_zero()
        {
            while let Some(left) = state.clock.commit_wait_remaining(*ts) {
                tokio::time::sleep(left).await;
            }
        }
        if let Outcome::Committed { ts, .. } = &outcome {
            let c = &state.counters;
            c.commit.observe(state.clock.physical_now().duration_since(*ts));
        }
        Ok(Response::new(v1::AwaitOutcomeResponse {
            hlc: stamp(&state.clock),
            outcome: Some(outcome_to_proto(txn, &outcome)),
        }))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::ShardStatus>, Status> {
        let state = &self.state;
        observe_request(&state.clock, request.into_inner().hlc)?;
        state.check_running()?;
        let progress = state.progress();
        Ok(Response::new(v1::ShardStatus {
            hlc: stamp(&state.clock),
            shard: state.shard.0,
            applied_epoch: progress.applied.0,
            safe_ts: progress.safe.as_u64(),
            range: Some(range_to_proto(&state.map.range_of(state.shard))),
        }))
    }
}
