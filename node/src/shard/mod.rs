//! A shard server: [`ShardNode`] applies the sequencer's windows to one shard's storage with
//! the same window [`Step`](crate::Step) as the embedded database, and serves reads at a
//! timestamp, its verdicts and its transactions' outcomes over gRPC.
//!
//! - `mod.rs` (here): configuration, the state the apply thread and the service share, the
//!   node's lifecycle and metrics.
//! - [`apply`]: the step's shell: subscription, commands carried out over gRPC, answers fed
//!   back as events.
//! - [`outcomes`]: the outcomes of recent transactions, in memory, by window.
//! - [`peers`]: the retrying clients of the other shards.
//! - [`push`]: pushing peers what they would ask for, and using what they pushed.
//! - [`service`]: the gRPC service.
//! - [`watchers`]: the clients watching their outcomes, and the windows' outcomes pushed to them.
//!
//! ```text
//!   sequencer ──Subscribe(shard, from)──> apply thread ──> Mvcc (RocksDB or memory)
//!                                          │    ^
//!   my reads, verdicts ──Push stream──> peers   └── peers' pushed reads and verdicts
//!   (what no push brought: GetMany/Scan at ts_{e-1}, Verdicts(e), asked)
//! ```
//!
//! How it reaches the other shards, where the embedded database shares memory:
//!
//! - The participants of a window's multi-shard entries push each other, on one stream per
//!   peer, the keys those entries declared as points (read at the previous window's
//!   timestamp, once applied) and then their local verdicts ([`push`]). What did not come
//!   pushed is asked for:
//! - A multi-shard entry reads the other participants' keys with `GetMany` and `Scan` at the
//!   previous window's timestamp, which wait until that shard's safe time reaches it (it has
//!   applied the previous window). MVCC keeps those versions, so a replay reads the same.
//! - Participants pull each other's local verdicts (`Verdicts(e)`), which wait until the
//!   shard has computed them, or read them from storage once it has applied the window: a
//!   participant that restarts pulls again and gets the same answer.
//! - Calls to a peer that fails are retried until it answers or this node stops: a window
//!   cannot be applied without them. A peer that refuses one stops this shard (typed, logged).
//!
//! The apply thread subscribes from the window after its watermark, and again after the
//! sequencer restarts. Outcomes of the entries whose lowest participant this shard is are
//! answered after commit-wait, from memory, and from storage (kept by client id for the
//! retention period, [`txn::KeptOutcomes`]) after a restart.
//!
//! **Replicas.** A shard may have several replicas (`shards = [["a0", "b0"], ...]`). Each
//! applies the log on its own: execution is deterministic, so they need no consensus, and a
//! peer may ask any of them. Each keeps a chained digest of its windows
//! ([`txn::chain_digest`]) and compares it with its fellow replicas' every
//! [`DIGEST_CHECK`]: a replica whose digest for a window differs from a fellow's stops
//! serving (it answers `UNAVAILABLE`, so callers move to another replica; log line "replicas
//! diverged", metric `sealdb_shard_diverged`, and its status says so). With two replicas
//! neither can tell which is wrong, so both stop rather than answer from a history the other
//! denies.

mod apply;
mod checkpoint;
mod outcomes;
mod peers;
mod push;
mod service;
mod watchers;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::sequencer::{ShardId, TxnId};
use clock::{Clock, Epoch, Timestamp};
use proto::v1;
use proto::v1::shard_client::ShardClient;
use proto::v1::shard_server::ShardServer;
use storage::{Engine, Limits, MemoryEngine, Mvcc, Quoted, RocksEngine, RocksOptions};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;
use tonic::{Code, Status};

use self::apply::ApplyLoop;
pub use self::checkpoint::CheckpointMark;
use self::checkpoint::Checkpoints;
pub(crate) use self::checkpoint::{fetch_into, sync_dir};
use self::peers::GrpcPeers;
use self::service::ShardService;
use super::metrics::{Metric, ShardCounters};
use crate::server::{STOP_GRACE, incoming, server, stop_server, warn_if_insecure};
use client::{
    RefusalKind, RemoteError, RemoteSequencer, Tls, endpoint, malformed, refuse, sized, stamp,
};
use txn::{Distant, Executor, Registry, ShardMap, Step, StepError};

use crate::NodeError;

/// The longest a request waits for the shard (safe time, verdicts, an outcome) before it is
/// answered `DEADLINE_EXCEEDED`.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// How often a shard whose clock is refused tries the sequencer again.
const FENCED_RETRY: Duration = Duration::from_secs(1);

/// How long to wait before calling a failed peer again.
const PEER_RETRY: Duration = Duration::from_millis(20);

/// How often a replica compares its digests with its fellow replicas'.
const DIGEST_CHECK: Duration = Duration::from_secs(1);

/// How many recent windows' digests a replica remembers, to compare with a fellow's (20 s of
/// 5 ms windows: a fellow further behind is compared once it catches up).
const DIGESTS_KEPT: usize = 4096;

/// How many times a starting replica behind the log's truncation point (or further behind its
/// peers than they keep versions for) tries its fellows for a checkpoint (a second apart)
/// before it gives up and exits.
const CATCH_UP_ATTEMPTS: u32 = 60;

/// How to run a shard server.
#[derive(Clone)]
pub struct ShardConfig {
    /// This shard.
    pub shard: ShardId,
    /// Which of the shard's replicas this is (its position in the shard's address list).
    pub replica: usize,
    /// The cluster's shard map (the same on every node).
    pub map: ShardMap,
    /// RocksDB directory; `None` keeps the data in memory (tests).
    pub dir: Option<PathBuf>,
    /// The sequencer's address (`host:port`).
    pub sequencer: String,
    /// Every shard's replica addresses, by shard id (one string per shard, comma-separated;
    /// this one's included).
    pub peers: Vec<String>,
    /// The procedures entries may call (the same on every node).
    pub procedures: Registry,
    /// Size limits.
    pub limits: Limits,
    /// How far back reads at a timestamp may go.
    pub retention: Duration,
    /// Versions are kept this much longer than `retention`: a replica that restarts after
    /// being down replays the windows it missed (since its own or a fellow's checkpoint),
    /// reading its peers at each window's snapshot, which must still be there. A replica
    /// further behind than this has its reads refused (`OUTSIDE_RETENTION`) and catches up
    /// from a fellow's checkpoint instead (none: it stops, to be restored from a backup).
    pub replay_allowance: Duration,
    /// How often the shard checkpoints its storage and tells the sequencer, which truncates
    /// the log below what every replica checkpointed (default 30 s).
    pub flush_interval: Duration,
    /// Bytes of the row cache (0: none; default [`storage::DEFAULT_ROW_CACHE_BYTES`]).
    pub row_cache_bytes: usize,
    /// Bytes of RocksDB's block cache (default [`storage::DEFAULT_BLOCK_CACHE_BYTES`]).
    pub block_cache_bytes: usize,
    /// Bytes of each table file compactions write (default
    /// [`storage::DEFAULT_TABLE_FILE_BYTES`]; [`storage::RocksOptions::table_file_bytes`]).
    pub table_file_bytes: u64,
    /// Windows applied and not yet written into RocksDB, written by a thread of their own
    /// while the apply thread goes on ([`storage::WriteBehind`]; default
    /// [`storage::DEFAULT_WRITE_BEHIND`]; 0 writes each on the apply thread).
    pub write_behind: usize,
    /// Bytes of writes to RocksDB's main column family held as sorted runs and ingested as
    /// table files ([`storage::WriteBehind::holding`]; 0 inserts them into its memtable).
    pub held_run_bytes: usize,
    /// Bytes a second sent to each fellow catching up from this replica's checkpoint (0:
    /// unlimited): a transfer that leaves the disk and network to the shard's own work.
    pub checkpoint_transfer_bytes_per_s: u64,
    /// Key prefixes whose rows RocksDB keeps in a column family of their own
    /// ([`storage::RocksOptions::apart`]; default none). The shard must always be opened
    /// with the same list.
    pub apart: Vec<Vec<u8>>,
    /// Inserts into that column family start from the last under the same first this many
    /// engine-key bytes ([`storage::RocksOptions::apart_hint_bytes`]; 0: off).
    pub apart_hint_bytes: usize,
    /// TLS for its server and its calls to the sequencer and peers; `None` runs without.
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    applied: Epoch,
    /// Every window at or below this timestamp is applied.
    safe: Timestamp,
    /// The chained digest of the windows applied.
    digest: u128,
}

/// What the apply thread and the gRPC service share.
struct State {
    shard: ShardId,
    replica: usize,
    map: ShardMap,
    clock: Arc<Clock>,
    mvcc: Arc<Mvcc>,
    /// The procedures, for read-only calls (`ReadCall`).
    procedures: Registry,
    retention: Duration,
    /// How often it checkpoints its storage and reports that to the sequencer.
    flush_interval: Duration,
    /// Its checkpoints, for fellow replicas that catch up from them (none in memory).
    checkpoints: Option<Checkpoints>,
    progress: Mutex<Progress>,
    /// Its clock when it started: every window stamped before it was logged before this
    /// replica could have answered for it (its `Outcome` answers wait for them).
    started_at: Timestamp,
    /// Local verdicts of windows being applied, for peers that pull them.
    verdicts: Mutex<BTreeMap<Epoch, Vec<(TxnId, bool)>>>,
    /// What peers pushed for the next windows ([`push`]).
    inbox: Mutex<push::Inbox>,
    /// Bumped whenever a push comes.
    pushed: watch::Sender<u64>,
    /// Outcomes of entries whose lowest participant this shard is.
    outcomes: Mutex<outcomes::RecentOutcomes>,
    /// Clients watching those outcomes ([`watchers`]).
    watchers: Arc<watchers::Watchers>,
    /// Entries deferred to the window after the last applied: logged, not yet decided.
    deferred: Mutex<BTreeSet<TxnId>>,
    /// Digests of the last windows applied, oldest first.
    digests: Mutex<VecDeque<(Epoch, u128)>>,
    /// Bumped whenever progress, verdicts or outcomes change.
    changed: watch::Sender<u64>,
    stopping: AtomicBool,
    /// Set once, with `stopping` (the flag the hot paths read), for the tasks that wait only
    /// for the stop: `changed`, bumped a few times a window, then wakes only those that wait
    /// for progress.
    stop: watch::Sender<bool>,
    failure: Mutex<Option<String>>,
    /// It failed because the log no longer holds the next window it needs, or its peers no
    /// longer keep the versions its replay reads, and it has fellow replicas to copy a
    /// checkpoint from: started again, it catches up.
    catch_up: AtomicBool,
    /// Why this shard serves nothing: its clock is beyond `max_offset` of the cluster's.
    fenced: Mutex<Option<String>>,
    /// Why the sequencer last refused this shard's clock in an applied report, for the apply
    /// loop to check whose clock is off ([`apply`]). A subscription's clocks are compared only
    /// when it opens; the reports compare them every window.
    clock_refused: Mutex<Option<String>>,
    /// Why this replica serves nothing: its digest differs from a fellow replica's.
    diverged: Mutex<Option<String>>,
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
        if let Some(why) = lock(&self.diverged).clone() {
            return Err(Status::unavailable(format!(
                "shard {} replica {}: {why}",
                self.shard.0, self.replica
            )));
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
        // The sender lives as long as `self`: the wait ends only with the stop.
        let _ = self.stop.subscribe().wait_for(|stopping| *stopping).await;
    }

    /// Marks the shard stopping and wakes everything waiting, for the stop or for progress.
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
        self.bump();
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
        self.wait_for(|| (self.progress().safe >= ts).then_some(())).await?;
        // Commit-wait on the read side (README, Departures). A window is readable once
        // applied, before its writes' commit-wait ends: a reader whose clock runs ahead may
        // see a write that a reader starting after it, whose clock runs behind, would read
        // below. So a read at `ts` answers only once this clock is past `ts + max_offset`:
        // every clock is then past `ts`, and every later `Latest` read picks a timestamp above
        // it. Bounded: `ts` is at most `max_offset` ahead (checked above). A peer's read for
        // a window needs none: it reads the state before a window the log has ordered.
        if !for_window {
            while let Some(left) = self.clock.commit_wait_remaining(ts) {
                tokio::time::sleep(left).await;
            }
        }
        Ok(())
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

    fn fail(&self, e: impl std::fmt::Display) {
        let e = e.to_string();
        tracing::error!(shard = self.shard.0, replica = self.replica, error = %e, "shard stopped");
        *lock(&self.failure) = Some(e);
        self.stop();
    }
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
    ) -> Result<ShardNode, NodeError> {
        let shard = config.shard;
        if shard.0 >= config.map.len() || config.peers.len() != config.map.len() as usize {
            return Err(NodeError::Config(format!(
                "shard {} with {} peer addresses, for a map of {} shards",
                shard.0,
                config.peers.len(),
                config.map.len()
            )));
        }
        let tls = config.tls.as_ref();
        let sequencer = RemoteSequencer::lazy(&config.sequencer, clock.clone(), tls)?;
        let (mvcc, checkpoints) = match &config.dir {
            Some(dir) => {
                let fellows = fellow_clients(&config)?;
                let mvcc = open_caught_up(dir, &config, &sequencer, &fellows, &clock).await?;
                (mvcc, Some(Checkpoints::open(dir, config.checkpoint_transfer_bytes_per_s)?))
            }
            None => {
                let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
                (
                    Arc::new(Mvcc::open_with_cache(engine, config.limits, config.row_cache_bytes)?),
                    None,
                )
            }
        };
        let executor =
            Executor::new(shard, config.map.clone(), config.procedures.clone(), config.limits);
        let step = Step::open(executor, config.map.clone(), mvcc.clone(), Arc::new(Distant))?
            .keep_outcomes(config.retention)?
            // No floor: a replica's replay reads its peers within the allowance.
            .collect_garbage(config.retention + config.replay_allowance, Arc::new(u64::MAX.into()));
        let watermark = mvcc.applied();
        let progress = Progress {
            applied: watermark.map_or(Epoch(0), |w| w.window),
            safe: watermark.map_or(Timestamp::ZERO, |w| w.ts),
            digest: step.digest(),
        };
        let replicas = client::replica_addrs(&config.peers[shard.0 as usize]).len();
        if config.replica >= replicas {
            return Err(NodeError::Config(format!(
                "replica {} of shard {}, which has {replicas}",
                config.replica, shard.0
            )));
        }
        let started_at = clock.now();
        let state = Arc::new(State {
            started_at,
            shard,
            replica: config.replica,
            map: config.map.clone(),
            clock: clock.clone(),
            mvcc,
            procedures: config.procedures.clone(),
            retention: config.retention,
            flush_interval: config.flush_interval,
            checkpoints,
            progress: Mutex::new(progress),
            verdicts: Mutex::new(BTreeMap::new()),
            inbox: Mutex::new(push::Inbox::default()),
            pushed: watch::Sender::new(0),
            outcomes: Mutex::default(),
            watchers: Arc::default(),
            // Entries deferred before a restart are logged and not yet decided.
            deferred: Mutex::new(step.deferred().collect()),
            digests: Mutex::new(VecDeque::from([(progress.applied, progress.digest)])),
            changed: watch::Sender::new(0),
            stopping: AtomicBool::new(false),
            stop: watch::Sender::new(false),
            failure: Mutex::new(None),
            catch_up: AtomicBool::new(false),
            fenced: Mutex::new(None),
            clock_refused: Mutex::new(None),
            diverged: Mutex::new(None),
            counters: ShardCounters::default(),
        });
        let peers = Arc::new(GrpcPeers::new(
            &config.peers,
            shard,
            config.replica,
            clock.clone(),
            state.clone(),
            tls,
        )?);
        let fellows = peers.fellows(config.replica);
        if !fellows.is_empty() {
            tokio::spawn(compare_digests(state.clone(), fellows));
        }
        let addr = listener.local_addr().map_err(|e| NodeError::io("the listener's address", e))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let service = ShardService { state: state.clone(), secure: tls.is_some() };
        let server = tokio::spawn(
            server(tls)?
                .add_service(sized!(ShardServer::new(service)))
                .serve_with_incoming_shutdown(incoming(listener), async {
                    let _ = stopped.await;
                }),
        );
        warn_if_insecure(addr, tls, "shard");
        let handle = Handle::current();
        let thread_state = state.clone();
        let applier = std::thread::Builder::new()
            .name(format!("sealdb-shard-{}", shard.0))
            .spawn(move || {
                let state = thread_state.clone();
                let mut apply = ApplyLoop::new(thread_state, step, peers, sequencer, handle);
                // A panic fails the shard like any error, so that waiting callers are
                // answered (a node process also exits on it).
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply.run()));
                if let Err(e) = run.unwrap_or_else(|panic| Err(StepError::panicked(&*panic))) {
                    state.fail(e);
                }
            })
            .map_err(|e| NodeError::io("starting the apply thread", e))?;
        tracing::info!(
            %addr,
            shard = shard.0,
            replica = config.replica,
            from = progress.applied.next().0,
            "shard serving"
        );
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
        // A failure is recorded before the stop it causes.
        self.state.stopped().await;
        let failure = lock(&self.state.failure).clone();
        match failure {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// Whether the shard failed because the log no longer holds the next window it needs (or
    /// its peers the versions its replay reads), while a fellow replica has a checkpoint to
    /// start from: a new [`ShardNode::start`] on the same directory catches up
    /// ([`ShardNode::shutdown_released`] first).
    pub fn needs_catch_up(&self) -> bool {
        self.state.catch_up.load(Ordering::SeqCst)
    }

    /// [`ShardNode::shutdown`], then waits up to `patience` for every handle on the shard's
    /// storage to go (requests being answered, background tasks) and the storage to close, so
    /// that the directory can be opened again in this process. False if one is still held.
    pub async fn shutdown_released(self, patience: Duration) -> bool {
        let released = self.state.mvcc.released();
        self.shutdown().await;
        let deadline = tokio::time::Instant::now() + patience;
        while !matches!(released.try_recv(), Err(std::sync::mpsc::TryRecvError::Disconnected)) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
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
        self.state.stop();
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
        self.state.stop();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Clients of the shard's other replicas, by address.
fn fellow_clients(config: &ShardConfig) -> Result<Vec<(String, ShardClient<Channel>)>, NodeError> {
    let addrs = client::replica_addrs(&config.peers[config.shard.0 as usize]);
    let tls = config.tls.as_ref();
    let mut fellows = Vec::new();
    for (r, addr) in addrs.into_iter().enumerate().filter(|(r, _)| *r != config.replica) {
        let channel = endpoint(&addr, tls)
            .map_err(|e| {
                NodeError::Config(format!("replica {r} of shard {}: {e}", config.shard.0))
            })?
            .connect_lazy();
        fellows.push((addr, sized!(ShardClient::new(channel))));
    }
    Ok(fellows)
}

/// Opens the shard's storage at `dir`, first installing a checkpoint transfer that completed
/// before a restart. A replica whose next window the log no longer holds (it was down while
/// the log was truncated past it, or it is new) fetches a fellow's checkpoint, installs it and
/// opens that ([`checkpoint`]). A sequencer that cannot be reached is not waited for: the
/// apply thread finds out when it subscribes.
async fn open_caught_up(
    dir: &std::path::Path,
    config: &ShardConfig,
    sequencer: &RemoteSequencer,
    fellows: &[(String, ShardClient<Channel>)],
    clock: &Clock,
) -> Result<Arc<Mvcc>, NodeError> {
    let shard = config.shard;
    let mut failures = 0;
    loop {
        let expected = checkpoint::install_pending(dir)?;
        let rocks = RocksOptions {
            block_cache_bytes: config.block_cache_bytes,
            table_file_bytes: config.table_file_bytes,
            apart: config.apart.clone(),
            apart_hint_bytes: config.apart_hint_bytes,
            ..Default::default()
        };
        let engine = Arc::new(RocksEngine::open_with(dir, rocks)?);
        let engine =
            storage::WriteBehind::over(engine, config.write_behind, config.held_run_bytes)?;
        let mvcc = Mvcc::open_with_cache(engine, config.limits, config.row_cache_bytes)?;
        if let Some(expected) = expected {
            checkpoint::installed(dir, &mvcc, expected)?;
        }
        let applied = mvcc.applied().map(|w| w.window);
        let next = applied.map_or(Epoch(1), Epoch::next);
        // Peers refused this replica's reads for a window it had to replay (it was further
        // behind them than they keep versions for): a fellow's checkpoint must hold it.
        let requested = checkpoint::catch_up_requested(dir, applied)?;
        let hold = || checkpoint::LogHold {
            sequencer: sequencer.clone(),
            shard,
            replica: config.replica as u32,
        };
        if fellows.is_empty() || (requested.is_none() && !behind_log(sequencer, shard, next).await)
        {
            // What it opened is durable: the log is held from there at once, not only from
            // its first checkpoint on (the sequencer may count it absent until then).
            if let Some(applied) = applied {
                hold().report(applied);
            }
            return Ok(Arc::new(mvcc));
        }
        drop(mvcc);
        let at_least = requested.unwrap_or(next);
        tracing::warn!(
            shard = shard.0,
            replica = config.replica,
            window = next.0,
            at_least = at_least.0,
            "{}; catching up from a fellow replica's checkpoint",
            match requested {
                Some(_) => "its peers no longer keep the versions this replica's replay reads",
                None => "the log no longer holds this replica's next window",
            }
        );
        if let Err(why) = checkpoint::fetch(dir, fellows, clock, at_least, hold()).await {
            failures += 1;
            if failures >= CATCH_UP_ATTEMPTS {
                let behind = match requested {
                    Some(_) => "further behind its peers than they keep versions for",
                    None => "behind the log's truncation point",
                };
                return Err(NodeError::Config(format!(
                    "shard {} replica {}: {behind}, and no fellow replica gave a checkpoint \
                     holding window {} in {failures} attempts: {why}",
                    shard.0, config.replica, at_least.0
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Whether the sequencer refuses a subscription from `from` as truncated. A refusal of this
/// node's clock is asked again for a few seconds: a node restarted at once after a crash runs
/// up to a high-water lease ahead of physical time, which the others refuse until physical
/// time gets there. Anything else (windows, a sequencer down) is not known to be truncated:
/// the apply thread finds out when it subscribes.
async fn behind_log(sequencer: &RemoteSequencer, shard: ShardId, from: Epoch) -> bool {
    let deadline = tokio::time::Instant::now() + 5 * FENCED_RETRY;
    loop {
        let first = match sequencer.subscribe(shard, from).await {
            Ok(mut deliveries) => {
                let first = tokio::time::timeout(Duration::from_secs(5), deliveries.recv());
                first.await.ok().flatten()
            }
            Err(e) => Some(Err(e)),
        };
        match first {
            Some(Err(RemoteError::Refused { kind: RefusalKind::Truncated, .. })) => return true,
            Some(Err(RemoteError::ClockSkew(_))) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(PEER_RETRY).await;
            }
            _ => return false,
        }
    }
}

fn shard_metrics(state: &State) -> Vec<Metric> {
    let c = &state.counters;
    let get = ShardCounters::get;
    let progress = state.progress();
    let lag = state.clock.physical_now().duration_since(progress.safe);
    let cache = state.mvcc.cache_stats();
    let mut metrics = vec![
        c.requests.metric(),
        Metric::counter("sealdb_shard_windows_applied_total", "Windows applied.", get(&c.windows)),
        Metric::counter(
            "sealdb_shard_entries_applied_total",
            "Log entries in the windows applied (this shard's slices).",
            get(&c.entries),
        ),
        Metric::counter(
            "sealdb_shard_deferred_total",
            "Multi-shard procedures that lost and were deferred to the front of the next window, \
             each time (each participant defers them alike). Under contention on a hot row \
             a window commits at most one of those writing it.",
            get(&c.deferred),
        ),
        Metric::counter(
            "sealdb_shard_peer_reads_pushed_total",
            "Remote reads of a window answered wholly by what the peer pushed.",
            get(&c.reads_pushed),
        ),
        Metric::counter(
            "sealdb_shard_peer_reads_run_pushed_total",
            "Of those, reads a window's first run missed, answered by what the peer's first \
             run of the window read.",
            get(&c.reads_run_pushed),
        ),
        Metric::counter(
            "sealdb_shard_peer_reads_asked_total",
            "Remote reads of a window that called the peer (what no push brought).",
            get(&c.reads_asked),
        ),
        Metric::counter(
            "sealdb_shard_peer_verdicts_pushed_total",
            "Peers' verdicts of a window that came pushed.",
            get(&c.verdicts_pushed),
        ),
        Metric::counter(
            "sealdb_shard_peer_verdicts_asked_total",
            "Peers' verdicts of a window pulled with a call.",
            get(&c.verdicts_asked),
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
            "sealdb_shard_serial_total",
            "Of those, single-shard procedures run once, serially after the validated entries.",
            get(&c.outcomes.serial),
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
        Metric::counter(
            "sealdb_shard_outcomes_awaited_total",
            "Transactions asked for with AwaitOutcome or AwaitOutcomes, each time asked.",
            get(&c.outcomes_awaited),
        ),
        Metric::gauge(
            "sealdb_shard_outcome_watches",
            "Clients watching this replica's outcomes (WatchOutcomes).",
            state.watchers.len() as f64,
        ),
        Metric::counter(
            "sealdb_shard_outcomes_pushed_total",
            "Outcomes queued for the clients watching them.",
            state.watchers.pushed.load(Ordering::Relaxed) as f64,
        ),
        Metric::counter(
            "sealdb_shard_outcome_watches_dropped_total",
            "Outcome watches dropped for falling behind (their clients then await outcomes).",
            state.watchers.dropped.load(Ordering::Relaxed) as f64,
        ),
        Metric::counter(
            "sealdb_shard_apply_seconds_total",
            "Time the apply thread spent on windows, from a window's delivery until it was \
             written (waits for peers included).",
            ShardCounters::seconds(&c.apply_nanos),
        ),
        Metric::counter(
            "sealdb_shard_apply_peer_wait_seconds_total",
            "Of that time, the time spent waiting for peers' reads and verdicts.",
            ShardCounters::seconds(&c.peer_wait_nanos),
        ),
        c.seal_to_apply.metric(
            "sealdb_shard_seal_to_apply_seconds",
            "Per applied window, the time from the window's timestamp to its apply.",
        ),
        c.commit.metric(
            "sealdb_shard_commit_seconds",
            "Per answered commit (pushed to a watch of its outcome, or answered when asked), \
             the time from its window's timestamp to the answer (commit-wait included).",
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
        Metric::counter(
            "sealdb_shard_row_cache_fills_refused_total",
            "Of the misses, reads whose result was not cached: a batch was applied meanwhile.",
            cache.fills_refused as f64,
        ),
        Metric::gauge(
            "sealdb_shard_applied_epoch",
            "The last window applied.",
            progress.applied.0 as f64,
        ),
        Metric::gauge(
            "sealdb_shard_diverged",
            "1 if this replica's digest differed from a fellow replica's (it stopped serving).",
            f64::from(u8::from(c.diverged.load(std::sync::atomic::Ordering::Relaxed))),
        ),
        Metric::gauge(
            "sealdb_shard_safe_time_lag_seconds",
            "How far the shard's safe time is behind its physical clock.",
            lag.as_secs_f64(),
        ),
    ];
    metrics.push(Metric::gauge(
        "sealdb_shard_gc_horizon_lag_seconds",
        "How far the garbage-collection horizon (reads below it are refused) is behind the \
         shard's physical clock: the retention plus the replay allowance, when GC keeps up.",
        state.clock.physical_now().duration_since(state.mvcc.horizon()).as_secs_f64(),
    ));
    if let Some(versions) = state.mvcc.estimated_versions() {
        metrics.push(Metric::gauge(
            "sealdb_shard_versions_estimate",
            "About how many versions the shard's storage holds (RocksDB's estimate; versions \
             below the horizon go as it compacts).",
            versions as f64,
        ));
    }
    if let Some(taken) = state.checkpoints.as_ref().and_then(Checkpoints::latest) {
        metrics.push(Metric::gauge(
            "sealdb_shard_checkpoint_epoch",
            "The last window of the newest checkpoint (the log is truncated below every \
             replica's).",
            taken.epoch.0 as f64,
        ));
        metrics.push(Metric::gauge(
            "sealdb_shard_checkpoint_age_seconds",
            "How long ago the newest checkpoint was taken.",
            taken.at.elapsed().as_secs_f64(),
        ));
    }
    metrics
}

/// Every [`DIGEST_CHECK`], asks this shard's other replicas for their applied window and its
/// digest, and compares it with this replica's digest of that window when it remembers one. A
/// difference stops this replica (see the module's documentation); a fellow that is down or
/// too far ahead or behind is compared later.
async fn compare_digests(state: Arc<State>, fellows: Vec<(String, ShardClient<Channel>)>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(DIGEST_CHECK) => {}
            () = state.stopped() => return,
        }
        for (addr, client) in &fellows {
            let mut request = tonic::Request::new(v1::StatusRequest { hlc: stamp(&state.clock) });
            request.set_timeout(DIGEST_CHECK);
            let Ok(theirs) = client.clone().status(request).await.map(|r| r.into_inner()) else {
                continue;
            };
            let (e, digest) = (Epoch(theirs.applied_epoch), theirs.digest.as_slice());
            let Ok(digest) = <[u8; 16]>::try_from(digest).map(u128::from_le_bytes) else {
                continue;
            };
            let ours = lock(&state.digests).iter().find(|(w, _)| *w == e).map(|(_, d)| *d);
            if let Some(ours) = ours
                && ours != digest
            {
                state.counters.diverged.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(
                    shard = state.shard.0,
                    replica = state.replica,
                    fellow = %addr,
                    window = e.0,
                    ours = format!("{ours:032x}"),
                    theirs = format!("{digest:032x}"),
                    "replicas diverged"
                );
                // It stays up, serving nothing, so that its status and metrics say why.
                *lock(&state.diverged) = Some(format!(
                    "replicas diverged: after window {} this replica's digest is {ours:032x}, \
                     {addr}'s is {digest:032x}",
                    e.0
                ));
                state.bump();
                return;
            }
        }
    }
}
