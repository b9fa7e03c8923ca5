//! The sequencer over gRPC: [`SequencerNode`] serves a [`Sequencer`] (submit an entry and get
//! its receipt once its window is durable; subscribe to one shard's slices of the sealed
//! windows from an epoch on), and [`RemoteSequencer`] calls it.
//!
//! A subscriber gets every window in epoch order, those without entries for its shard as
//! empty slices, so that it can count windows and check none is missing; and the idle ticks,
//! so that its safe time keeps moving. After a restart it subscribes again from the epoch
//! after the last one it applied: windows before the live ones are read back from the log.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use clock::{Clock, Epoch, Timestamp};
use prost::Message;
use proto::v1;
use proto::v1::admin_server::AdminServer;
use proto::v1::sequencer_server::{Sequencer as SequencerRpc, SequencerServer};
use proto::v1::shard_client::ShardClient;
use replication::GroupSequencer;
use sequencer::{
    ClientId, Delivery, Entry, SealerConfig, Sequencer, SequencerError, ShardId,
    WINDOW_SIZE_BOUNDS, Window,
};
use storage::Limits;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::admin::{AdminService, Layout};
use super::metrics::Metric;
use crate::NodeError;
use crate::server::{clock_agreement, incoming, server, stop_server, warn_if_insecure};
use client::{
    MAX_BATCH, MAX_WINDOW_BYTES, RefusalKind, Tls, item_status, malformed, observe_request, refuse,
    require_node, sized, stamp,
};
use txn::{AbortReason, Request as TxnRequest, ShardMap, participants};

/// A node's place in a sequencer group.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// This node's id.
    pub id: u64,
    /// Every member's id and address (this node's included); the same on every member.
    pub members: std::collections::BTreeMap<u64, String>,
    /// How often the leader tells the others it lives.
    pub heartbeat: std::time::Duration,
    /// How long a follower waits for the leader before it calls an election (up to twice).
    pub election_timeout: std::time::Duration,
}

/// The window caps and the layout, checked before anything is opened.
fn check_layout(config: &SealerConfig, layout: &Layout) -> Result<(), NodeError> {
    if config.max_window_bytes > MAX_WINDOW_BYTES {
        return Err(NodeError::Config(format!(
            "a window cap of {} bytes is over the most a shard accepts ({MAX_WINDOW_BYTES})",
            config.max_window_bytes
        )));
    }
    let shards = layout.map.len();
    if layout.shards.len() != shards as usize {
        return Err(NodeError::Config(format!(
            "{} shard addresses for a map of {shards} shards",
            layout.shards.len()
        )));
    }
    Ok(())
}

/// What a sequencer node serves from: its own durable log, or a sequencer group's (the
/// raft group replicates the log; this node may or may not lead it).
#[derive(Clone)]
pub(crate) enum Backend {
    /// One node: the log on this node's disk.
    Single(Arc<Sequencer>),
    /// A node of a sequencer group.
    Group(Arc<GroupSequencer>),
}

impl Backend {
    /// Queues each of `entries`, in order, to be answered through its `OnReceipt`; a single
    /// sequencer takes them in one message.
    fn submit_many_then(&self, entries: Vec<(Entry, sequencer::OnReceipt)>) {
        match self {
            Backend::Single(s) => s.submit_many_then(entries),
            Backend::Group(g) => {
                for (entry, on_receipt) in entries {
                    g.submit_then(entry, on_receipt);
                }
            }
        }
    }

    /// The last window logged (committed, in a group) and the timestamp later windows are
    /// stamped above.
    pub(crate) fn last_logged(&self) -> (Epoch, Timestamp) {
        match self {
            Backend::Single(s) => s.last_logged(),
            Backend::Group(g) => g.last_logged(),
        }
    }

    fn request_window(&self) {
        match self {
            Backend::Single(s) => {
                if let Some(feedback) = s.feedback() {
                    feedback.request_window();
                }
            }
            Backend::Group(g) => g.request_window(),
        }
    }

    fn failure(&self) -> Option<String> {
        match self {
            Backend::Single(s) => s.failure(),
            Backend::Group(g) => g.failure(),
        }
    }

    /// The first window still held (the ones before were truncated).
    fn first(&self) -> Epoch {
        match self {
            Backend::Single(s) => s.stats().log_first,
            Backend::Group(g) => g.first(),
        }
    }
}

/// What a failed read of the log answers: TRUNCATED below the first window kept.
fn log_read_error(e: SequencerError) -> Status {
    match e {
        SequencerError::Truncated { .. } => {
            refuse(Code::OutOfRange, RefusalKind::Truncated, e.to_string())
        }
        e => Status::internal(format!("reading the log: {e}")),
    }
}

/// A sequencer serving gRPC on a TCP address. [`SequencerNode::shutdown`] stops serving,
/// then seals what is open and answers its submitters.
pub struct SequencerNode {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    sequencer: Backend,
    /// In a group: this node's raft, stopped at shutdown.
    raft: Option<replication::Raft>,
    /// Set on shutdown: subscriptions end at their next window or tick, so that the server's
    /// graceful shutdown does not wait for them.
    stopping: Arc<AtomicBool>,
    /// Checks the sequencer's clock against the shards' ([`watch_clock`]).
    clock_watch: tokio::task::JoinHandle<()>,
}

impl SequencerNode {
    /// Opens the log in `dir` and serves on `listen` (port 0 picks a free port; see
    /// [`SequencerNode::addr`]) the sequencer and the admin service, which tells clients the
    /// cluster's `layout`. Entries naming a shard outside it are refused. Must be called
    /// within a tokio runtime.
    pub async fn start(
        dir: &Path,
        listener: TcpListener,
        clock: Arc<Clock>,
        config: SealerConfig,
        layout: Layout,
        tls: Option<Tls>,
    ) -> Result<SequencerNode, NodeError> {
        check_layout(&config, &layout)?;
        let (sequencer, _) = Sequencer::start(dir, clock.clone(), config)?;
        let backend = Backend::Single(Arc::new(sequencer));
        SequencerNode::serve(backend, None, listener, clock, layout, tls, config.absent_replica)
    }

    /// Runs node `group.id` of a sequencer group with its raft log and state in `dir`, and
    /// serves on `listener` the sequencer (leading or not), the admin service and the group's
    /// raft messages. The node with the lowest id sets up the group on its first start.
    pub async fn start_group(
        dir: &Path,
        listener: TcpListener,
        clock: Arc<Clock>,
        config: SealerConfig,
        layout: Layout,
        tls: Option<Tls>,
        group: GroupSpec,
    ) -> Result<SequencerNode, NodeError> {
        check_layout(&config, &layout)?;
        let io = |what: &str| {
            let what = format!("{what} in {}", dir.display());
            move |e| NodeError::io(what, e)
        };
        let log = replication::LogStore::open(dir.join("raft")).map_err(io("the raft log"))?;
        let state = replication::StateMachine::open(dir.join("state"), config.dedup_windows)
            .map_err(io("the group's state"))?;
        let view = state.view();
        let raft_config = replication::raft_config(group.heartbeat, group.election_timeout)
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let network = replication::GrpcNetwork::new(clock.clone(), tls.clone());
        let raft = replication::Raft::new(group.id, raft_config, network, log, state)
            .await
            .map_err(|e| NodeError::Stopped(format!("starting raft: {e}")))?;
        if group.members.keys().next() == Some(&group.id) {
            let members: std::collections::BTreeMap<u64, openraft::BasicNode> = group
                .members
                .iter()
                .map(|(id, addr)| (*id, openraft::BasicNode::new(addr.clone())))
                .collect();
            // Only the first start of the group sets it up; later ones are refused, harmlessly.
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "the sequencer group is set up already");
            }
        }
        let group_config = replication::GroupConfig {
            max_window_entries: config.max_window_entries,
            max_window_bytes: config.max_window_bytes,
            ..replication::GroupConfig::default()
        };
        let sequencer =
            GroupSequencer::start(group.id, raft.clone(), view, clock.clone(), group_config);
        let backend = Backend::Group(Arc::new(sequencer));
        SequencerNode::serve(
            backend,
            Some(raft),
            listener,
            clock,
            layout,
            tls,
            config.absent_replica,
        )
    }

    fn serve(
        sequencer: Backend,
        raft: Option<replication::Raft>,
        listener: TcpListener,
        clock: Arc<Clock>,
        layout: Layout,
        tls: Option<Tls>,
        absent_replica: std::time::Duration,
    ) -> Result<SequencerNode, NodeError> {
        let shards = layout.map.len();
        let replicas: Vec<usize> = layout.shards.iter().map(|s| s.split(',').count()).collect();
        let addr = listener.local_addr().map_err(|e| NodeError::io("the listener's address", e))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let map = layout.map.clone();
        let fenced: Fenced = Arc::default();
        let admin = AdminService::new(sequencer.clone(), clock.clone(), layout, tls.as_ref())?;
        let shard_clients = admin.shard_clients();
        let clock_watch = tokio::spawn(watch_clock(shard_clients, clock.clone(), fenced.clone()));
        let raft_service = raft
            .clone()
            .map(|r| replication::RaftService::new(r, clock.clone(), tls.is_some()).server());
        let service = SequencerService {
            sequencer: sequencer.clone(),
            clock,
            shards,
            subscriptions: Arc::new(tokio::sync::Semaphore::new(MAX_SUBSCRIPTIONS)),
            forced: Arc::default(),
            map,
            limits: Limits::default(),
            secure: tls.is_some(),
            fenced,
            flushed: Arc::new(FlushedReports::new(&replicas, absent_replica, Instant::now())),
            applied: Arc::new(std::sync::Mutex::new(vec![Epoch(0); shards as usize])),
            stopping: stopping.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            server(tls.as_ref())?
                .add_service(sized!(SequencerServer::new(service)))
                .add_service(sized!(AdminServer::new(admin)))
                .add_optional_service(raft_service)
                .serve_with_incoming_shutdown(incoming(listener), async {
                    let _ = stopped.await;
                }),
        );
        warn_if_insecure(addr, tls.as_ref(), "sequencer");
        tracing::info!(%addr, shards, group = raft.is_some(), "sequencer serving");
        Ok(SequencerNode {
            addr,
            stop: Some(stop),
            server: Some(server),
            sequencer,
            raft,
            stopping,
            clock_watch,
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last window made durable: its epoch and timestamp (epoch 0 before the first).
    pub fn last_logged(&self) -> (Epoch, Timestamp) {
        self.sequencer.last_logged()
    }

    /// Resolves, with why, once the sequencer has stopped taking entries because its log
    /// failed: the node should exit rather than linger.
    pub async fn failed(&self) -> String {
        loop {
            if let Some(why) = self.sequencer.failure() {
                return why;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A function returning the sequencer's metrics, for
    /// [`serve_metrics`](super::serve_metrics).
    pub fn metrics_source(&self) -> Arc<dyn Fn() -> Vec<Metric> + Send + Sync> {
        let sequencer = match &self.sequencer {
            Backend::Single(s) => s.clone(),
            Backend::Group(g) => {
                let g = g.clone();
                return Arc::new(move || {
                    let (epoch, _) = g.last_logged();
                    let view = g.status();
                    let stats = g.commit_stats();
                    let get = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed) as f64
                    };
                    let lag = view
                        .last_log_index
                        .unwrap_or(0)
                        .saturating_sub(view.last_applied_index.unwrap_or(0));
                    vec![
                        Metric::gauge(
                            "sealdb_sequencer_last_epoch",
                            "The last window committed by the group.",
                            epoch.0 as f64,
                        ),
                        Metric::gauge(
                            "sealdb_sequencer_log_first_epoch",
                            "The first committed window this member holds (older ones were \
                             truncated, by a logged entry, once every shard replica had \
                             checkpointed them).",
                            g.first().0 as f64,
                        ),
                        Metric::gauge(
                            "sealdb_sequencer_group_term",
                            "The raft term: it rises with every election (leader changes).",
                            view.term as f64,
                        ),
                        Metric::gauge(
                            "sealdb_sequencer_group_leader",
                            "1 while this member leads the group, else 0.",
                            f64::from(u8::from(view.leader == Some(view.member))),
                        ),
                        Metric::gauge(
                            "sealdb_sequencer_group_apply_lag_entries",
                            "Raft entries this member has logged but not applied yet.",
                            lag as f64,
                        ),
                        Metric::counter(
                            "sealdb_sequencer_group_commits_total",
                            "Windows this member proposed, as leader, and saw committed.",
                            get(&stats.committed),
                        ),
                        Metric::counter(
                            "sealdb_sequencer_group_commit_seconds_total",
                            "Their total time from proposal to raft commit.",
                            get(&stats.micros) / 1e6,
                        ),
                    ]
                });
            }
        };
        Arc::new(move || {
            let stats = sequencer.stats();
            let (epoch, _) = sequencer.last_logged();
            vec![
                Metric::counter(
                    "sealdb_sequencer_windows_logged_total",
                    "Windows made durable since the sequencer started.",
                    stats.windows as f64,
                ),
                Metric::counter(
                    "sealdb_sequencer_entries_logged_total",
                    "Entries in them.",
                    stats.entries as f64,
                ),
                Metric::histogram(
                    "sealdb_sequencer_window_entries",
                    "Entries per logged window.",
                    &WINDOW_SIZE_BOUNDS.map(|b| b as f64),
                    &stats.window_sizes,
                    stats.entries as f64,
                ),
                Metric::counter(
                    "sealdb_sequencer_append_seconds_total",
                    "Time spent appending windows to the log (write and fsync).",
                    stats.append_seconds,
                ),
                Metric::gauge(
                    "sealdb_sequencer_last_epoch",
                    "The last window made durable.",
                    epoch.0 as f64,
                ),
                Metric::gauge(
                    "sealdb_sequencer_log_first_epoch",
                    "The first window the log holds (older ones were truncated once every \
                     shard replica had flushed them).",
                    stats.log_first.0 as f64,
                ),
                Metric::gauge(
                    "sealdb_sequencer_log_bytes",
                    "Bytes of the log's segment files.",
                    stats.log_bytes as f64,
                ),
            ]
        })
    }

    /// Stops serving (open subscriptions end), then shuts the sequencer down: what is open is
    /// sealed and logged, and its submitters answered.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        self.stop_serving().await;
        // Connections that outlived the server's graceful stop may still hold the sequencer;
        // it stops all the same, and refuses what they send.
        match self.sequencer.clone() {
            Backend::Single(sequencer) => {
                let stopped = tokio::task::spawn_blocking(move || sequencer.shutdown()).await;
                Ok(stopped
                    .map_err(|e| NodeError::Stopped(format!("the sequencer's stop: {e}")))??)
            }
            Backend::Group(_) => {
                if let Some(raft) = self.raft.take() {
                    let stopped = raft.shutdown().await;
                    stopped.map_err(|e| NodeError::Stopped(format!("raft's stop: {e}")))?;
                }
                Ok(())
            }
        }
    }

    async fn stop_serving(&mut self) {
        self.clock_watch.abort();
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            stop_server(server, "sequencer").await;
        }
    }
}

impl Drop for SequencerNode {
    fn drop(&mut self) {
        self.clock_watch.abort();
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How often a stream of reports checks whether the node is stopping.
const STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

struct SequencerService {
    sequencer: Backend,
    clock: Arc<Clock>,
    shards: u32,
    /// One permit per open subscription.
    subscriptions: Arc<tokio::sync::Semaphore>,
    /// Empty windows asked for by `RequestWindow`.
    forced: Arc<ForcedWindows>,
    /// The cluster's shard map: the participants of an entry follow from its keys.
    map: ShardMap,
    /// The shards' limits, which every logged entry must be within.
    limits: Limits,
    /// Serving TLS: peer-only calls need a node's certificate.
    secure: bool,
    stopping: Arc<AtomicBool>,
    /// Why the sequencer takes no entries: its clock is out of bounds ([`watch_clock`]).
    fenced: Fenced,
    /// What each shard replica last reported flushed ([`FlushedReports`]).
    flushed: Arc<FlushedReports>,
    /// By shard: the last window any of its replicas reported applied.
    applied: Arc<std::sync::Mutex<Vec<Epoch>>>,
}

/// The windows every shard replica has checkpointed, as they report them: the log may drop
/// the windows below the lowest. A replica that has not reported for `absent` (down, cut off,
/// or never reported since the sequencer started) stops counting while a fellow replica of
/// its shard reports: the log is truncated past it, and it catches up from that fellow's
/// checkpoint when it returns. A shard none of whose replicas report holds the log.
struct FlushedReports {
    /// By shard, by replica: the last window reported (none before a report) and when.
    reported: std::sync::Mutex<Vec<Vec<Report>>>,
    absent: std::time::Duration,
    /// The group term the reports were gathered in (0 for a single sequencer).
    term: AtomicU64,
}

/// A replica's last report (none yet), and when it came (or the sequencer started).
type Report = (Option<Epoch>, Instant);

impl FlushedReports {
    /// For `shards[i]` replicas of shard i.
    fn new(replicas: &[usize], absent: std::time::Duration, now: Instant) -> FlushedReports {
        FlushedReports {
            reported: std::sync::Mutex::new(
                replicas.iter().map(|r| vec![(None, now); *r]).collect(),
            ),
            absent,
            term: AtomicU64::new(0),
        }
    }

    /// Forgets every report if `term` is a new leadership: a new leader counts a replica
    /// absent only once it has not heard from it for `absent` itself.
    fn reset_for_term(&self, term: u64, now: Instant) {
        if self.term.swap(term, Ordering::SeqCst) != term {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            for replicas in reported.iter_mut() {
                replicas.iter_mut().for_each(|r| *r = (None, now));
            }
        }
    }

    /// Records a report at `now`; the window below which the log may be truncated, if any.
    fn report(
        &self,
        shard: usize,
        replica: usize,
        epoch: Epoch,
        now: Instant,
    ) -> Result<Option<Epoch>, String> {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let shards = reported.len();
        let slot = reported
            .get_mut(shard)
            .ok_or_else(|| format!("shard {shard}: the cluster has {shards}"))?
            .get_mut(replica)
            .ok_or_else(|| format!("shard {shard} has no replica {replica}"))?;
        *slot = (Some(slot.0.map_or(epoch, |e| e.max(epoch))), now);
        let shard_cut = |replicas: &Vec<Report>| {
            let present: Vec<_> =
                replicas.iter().filter(|(_, at)| now.duration_since(*at) < self.absent).collect();
            let counted = if present.is_empty() { replicas.iter().collect() } else { present };
            // A counted replica that never reported holds the log.
            counted.iter().map(|(e, _)| *e).collect::<Option<Vec<_>>>()?.into_iter().min()
        };
        let cut = reported
            .iter()
            .map(shard_cut)
            .collect::<Option<Vec<Epoch>>>()
            .and_then(|cuts| cuts.into_iter().min());
        Ok(cut)
    }
}

/// Why a sequencer is fenced, if it is.
type Fenced = Arc<std::sync::Mutex<Option<String>>>;

/// How often the sequencer checks its clock against the shards'.
const CLOCK_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Every [`CLOCK_WATCH_INTERVAL`], asks the shards whether they accept the sequencer's clock.
/// If most of those that answer do not, the sequencer is the node out of bounds: it fences
/// itself, refusing entries (`FAILED_PRECONDITION`, nothing logged) until they agree again.
/// Its windows would carry timestamps the shards refuse, and its safe-time promises could not
/// be trusted.
async fn watch_clock(shards: Vec<ShardClient<Channel>>, clock: Arc<Clock>, fenced: Fenced) {
    loop {
        tokio::time::sleep(CLOCK_WATCH_INTERVAL).await;
        let (agree, disagree) = clock_agreement(&shards, &clock).await;
        let out = disagree > agree;
        let mut fence = fenced.lock().unwrap_or_else(|e| e.into_inner());
        match (out, fence.is_some()) {
            (true, false) => {
                tracing::error!(
                    agree,
                    disagree,
                    "fencing: the sequencer's clock is beyond max_offset of most shards'; \
                     refusing entries until it is back within bounds"
                );
                *fence = Some(format!(
                    "its clock is beyond max_offset of {disagree} of the shards that answered"
                ));
            }
            (false, true) => {
                tracing::warn!(agree, "the sequencer's clock is back within bounds; serving");
                *fence = None;
            }
            _ => {}
        }
    }
}

impl SequencerService {
    /// The last logged window, if `epoch` is at most that; a later one is refused (FUTURE).
    fn logged(&self, epoch: u64) -> Result<Epoch, Status> {
        let (last, _) = self.sequencer.last_logged();
        match epoch > last.0 {
            true => Err(refuse(
                Code::OutOfRange,
                RefusalKind::Future,
                format!("window {epoch} is not logged yet (the last is {last})"),
            )),
            false => Ok(last),
        }
    }

    /// Takes a shard replica's report that it applied every window up to `r.epoch`: the
    /// sequencer may seal the next one early.
    fn take_applied(&self, r: v1::AppliedRequest) -> Result<(), Status> {
        observe_request(&self.clock, r.hlc)?;
        self.logged(r.epoch)?;
        if r.shard >= self.shards {
            return Err(malformed(format!("no shard {} in a cluster of {}", r.shard, self.shards)));
        }
        // Every shard's fastest replica: a replica catching up does not hold sealing back.
        let all = {
            let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            let shard = &mut applied[r.shard as usize];
            *shard = (*shard).max(Epoch(r.epoch));
            applied.iter().min().copied().unwrap_or(Epoch(0))
        };
        if let Backend::Single(s) = &self.sequencer
            && let Some(feedback) = s.feedback()
        {
            feedback.applied(all);
        }
        Ok(())
    }

    /// Refuses a read of the log from `from` if the windows there were truncated.
    fn check_kept(&self, from: Epoch) -> Result<(), Status> {
        let first = self.sequencer.first();
        match from < first {
            true => Err(log_read_error(SequencerError::Truncated { from, first })),
            false => Ok(()),
        }
    }

    /// A permit for one more stream of windows, or BUSY.
    fn subscription_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.subscriptions.clone().try_acquire_owned().map_err(|_| {
            refuse(
                Code::ResourceExhausted,
                RefusalKind::Busy,
                format!("the sequencer serves at most {MAX_SUBSCRIPTIONS} subscriptions"),
            )
        })
    }

    fn shard(&self, shard: u32) -> Result<ShardId, Status> {
        if shard >= self.shards {
            return Err(malformed(format!(
                "no shard {shard}: the cluster has {} (0 to {})",
                self.shards,
                self.shards - 1
            )));
        }
        Ok(ShardId(shard))
    }
}

impl SequencerService {
    /// The participants of an entry with `payload`, if every shard could run it: it decodes,
    /// its keys are within the limits, and it touches some key. A bad entry in the log would
    /// reach every shard that replays it, so it is refused here, before it is logged. The
    /// participants come from this node's shard map, never from the client: `claimed`, if
    /// given, must be exactly them (a client with another map is told so).
    fn admit(&self, payload: &Arc<[u8]>, claimed: Vec<u32>) -> Result<Vec<ShardId>, Status> {
        // Decoded from the entry's own buffer: no copy of the payload to decode it from.
        let request =
            TxnRequest::decode_shared(payload.clone()).map_err(|e| malformed(e.to_string()))?;
        request.check(&self.limits).map_err(|reason| match reason {
            AbortReason::TooLarge(why) => refuse(Code::InvalidArgument, RefusalKind::TooLarge, why),
            reason => malformed(format!("{reason:?}")),
        })?;
        let participants =
            participants(&self.map, &request).map_err(|e| malformed(e.to_string()))?;
        if !claimed.is_empty() {
            let mut claimed: Vec<ShardId> = claimed.into_iter().map(ShardId).collect();
            claimed.sort_unstable();
            claimed.dedup();
            if claimed != participants {
                return Err(malformed(format!(
                    "participants {:?} do not match the entry's keys, which are on shards {:?}",
                    claimed.iter().map(|s| s.0).collect::<Vec<_>>(),
                    participants.iter().map(|s| s.0).collect::<Vec<_>>()
                )));
            }
        }
        Ok(participants)
    }
}

/// A submitted entry's receipt, to come once its window is durable.
type PendingReceipt = oneshot::Receiver<Result<sequencer::Receipt, SequencerError>>;

impl SequencerService {
    /// Checks one submission: its entry, to be queued.
    fn entry(&self, r: v1::SubmitRequest) -> Result<Entry, Status> {
        let id = ClientId::from_bytes(&r.client_id).ok_or_else(|| {
            malformed(format!("client_id must be 16 bytes, not {}", r.client_id.len()))
        })?;
        let payload: Arc<[u8]> = r.payload.into();
        let participants = self.admit(&payload, r.participants)?;
        Ok(Entry::new(id, participants, payload))
    }

    /// Why this sequencer refuses every submission, if it is fenced.
    fn fenced(&self) -> Result<(), Status> {
        match self.fenced.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(why) => {
                Err(Status::failed_precondition(format!("the sequencer is fenced: {why}")))
            }
            None => Ok(()),
        }
    }

    /// Checks submissions and queues their entries for the next window, all in one message
    /// to the sequencer: each one's receipt to come, or why it was refused.
    fn enqueue(
        &self,
        requests: impl IntoIterator<Item = v1::SubmitRequest>,
    ) -> Vec<Result<PendingReceipt, Status>> {
        let mut queued = Vec::new();
        // Checked once for the batch, as if it had come just before a fence.
        let fenced = self.fenced();
        let pending = requests
            .into_iter()
            .map(|r| {
                fenced.clone()?;
                let entry = self.entry(r)?;
                let (tx, rx) = oneshot::channel();
                let on_receipt: sequencer::OnReceipt = Box::new(move |receipt| {
                    let _ = tx.send(receipt);
                });
                queued.push((entry, on_receipt));
                Ok(rx)
            })
            .collect();
        self.sequencer.submit_many_then(queued);
        pending
    }

    /// The receipt of a queued entry (unstamped: `hlc` is 0).
    async fn receipt(pending: PendingReceipt) -> Result<v1::SubmitResponse, Status> {
        let receipt = pending
            .await
            .map_err(|_| Status::unavailable("the sequencer stopped"))?
            .map_err(status_of)?;
        Ok(v1::SubmitResponse {
            hlc: 0,
            txn: Some(v1::TxnId { epoch: receipt.txn.epoch.0, index: receipt.txn.index }),
            window_ts: receipt.ts.as_u64(),
            duplicate: receipt.duplicate,
        })
    }
}

fn status_of(e: SequencerError) -> Status {
    match e {
        SequencerError::EntryTooLarge { .. } => {
            refuse(Code::InvalidArgument, RefusalKind::TooLarge, e.to_string())
        }
        SequencerError::ShuttingDown
        | SequencerError::Unavailable(_)
        | SequencerError::Failed(_) => Status::unavailable(e.to_string()),
        SequencerError::NotLeader { ref leader } => {
            let leader = leader.clone().unwrap_or_default();
            let details = v1::Refusal { kind: RefusalKind::NotLeader.into(), leader };
            Status::with_details(Code::Unavailable, e.to_string(), details.encode_to_vec().into())
        }
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl SequencerRpc for SequencerService {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let r = request.into_inner();
        observe_request(&self.clock, r.hlc)?;
        let pending = self.enqueue([r]).pop().expect("one request, one receipt")?;
        let receipt = SequencerService::receipt(pending).await?;
        Ok(Response::new(v1::SubmitResponse { hlc: stamp(&self.clock), ..receipt }))
    }

    async fn submit_many(
        &self,
        request: Request<v1::SubmitManyRequest>,
    ) -> Result<Response<v1::SubmitManyResponse>, Status> {
        let r = request.into_inner();
        observe_request(&self.clock, r.hlc)?;
        if r.items.len() > MAX_BATCH {
            return Err(malformed(format!(
                "{} entries in one batch; at most {MAX_BATCH}",
                r.items.len()
            )));
        }
        // Every entry is queued before any is awaited, so they share windows.
        let pending = self.enqueue(r.items);
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            let result = match p {
                Ok(p) => SequencerService::receipt(p).await,
                Err(status) => Err(status),
            };
            results.push(v1::SubmitResult {
                result: Some(match result {
                    Ok(receipt) => v1::submit_result::Result::Receipt(receipt),
                    Err(status) => v1::submit_result::Result::Failed(item_status(&status)),
                }),
            });
        }
        Ok(Response::new(v1::SubmitManyResponse { hlc: stamp(&self.clock), results }))
    }

    type SubscribeStream = ReceiverStream<Result<v1::WindowSlice, Status>>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        require_node(&request, self.secure)?;
        let r = request.into_inner();
        observe_request(&self.clock, r.hlc)?;
        let shard = self.shard(r.shard)?;
        let permit = self.subscription_permit()?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let forward = Forward {
            sequencer: self.sequencer.clone(),
            clock: self.clock.clone(),
            stopping: self.stopping.clone(),
            handle: tokio::runtime::Handle::current(),
            shard,
            tx,
        };
        let from = Epoch(r.from_epoch.max(1));
        self.check_kept(from)?;
        // A thread per subscription (there are at most MAX_SUBSCRIPTIONS) reads the windows it
        // is behind from the log; then a task forwards live ones, until the subscriber goes
        // away, stalls, falls behind, or the node stops. The live windows go from the
        // sequencer's thread to this runtime without a thread between.
        std::thread::Builder::new()
            .name(format!("sealdb-subscriber-{}", shard.0))
            .spawn(move || match forward.catch_up(from) {
                Ok(None) => drop(permit),
                Ok(Some(live)) => {
                    let handle = forward.handle.clone();
                    handle.spawn(async move {
                        let _permit = permit;
                        forward.forward_live(live).await;
                    });
                }
                Err(status) => {
                    let _permit = permit;
                    let _ = forward.send(Err(status));
                }
            })
            .map_err(|e| Status::unavailable(format!("starting a subscription: {e}")))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ReadLogStream = ReceiverStream<Result<v1::WindowSlice, Status>>;

    async fn read_log(
        &self,
        request: Request<v1::ReadLogRequest>,
    ) -> Result<Response<Self::ReadLogStream>, Status> {
        require_node(&request, self.secure)?;
        let r = request.into_inner();
        observe_request(&self.clock, r.hlc)?;
        let last = self.logged(r.to_epoch)?;
        let from = Epoch(r.from_epoch.max(1));
        let to = if r.to_epoch == 0 { last } else { Epoch(r.to_epoch) };
        self.check_kept(from)?;
        let permit = self.subscription_permit()?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let (sequencer, clock) = (self.sequencer.clone(), self.clock.clone());
        let handle = tokio::runtime::Handle::current();
        // Reading the log is blocking I/O: a thread of its own, as for subscriptions.
        std::thread::Builder::new()
            .name("sealdb-read-log".into())
            .spawn(move || {
                let _permit = permit;
                let send = |item| handle.block_on(tx.send_timeout(item, SUBSCRIBER_STALL)).is_ok();
                let mut next = from;
                while next <= to {
                    let windows = match read_windows(&sequencer, next, to) {
                        Ok(windows) if windows.is_empty() => {
                            Err(Status::internal(format!("window {next} is missing from the log")))
                        }
                        other => other,
                    };
                    let windows = match windows {
                        Ok(windows) => windows,
                        Err(status) => {
                            send(Err(status));
                            return;
                        }
                    };
                    for w in windows.iter().take_while(|w| w.epoch <= to) {
                        next = w.epoch.next();
                        if !send(Ok(whole_window(&clock, w))) {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| Status::unavailable(format!("starting a log read: {e}")))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn request_window(
        &self,
        request: Request<v1::RequestWindowRequest>,
    ) -> Result<Response<v1::RequestWindowResponse>, Status> {
        require_node(&request, self.secure)?;
        let r = request.into_inner();
        observe_request(&self.clock, r.hlc)?;
        if let Backend::Group(g) = &self.sequencer
            && let Err(leader) = g.leading()
        {
            // Only the leader seals; the caller follows it there.
            return Err(status_of(SequencerError::NotLeader { leader }));
        }
        let last = self.logged(r.after_epoch)?;
        if r.after_epoch == last.0 {
            self.forced.request(self.sequencer.clone());
        }
        Ok(Response::new(v1::RequestWindowResponse { hlc: stamp(&self.clock) }))
    }

    async fn applied(
        &self,
        request: Request<v1::AppliedRequest>,
    ) -> Result<Response<v1::AppliedResponse>, Status> {
        require_node(&request, self.secure)?;
        self.take_applied(request.into_inner())?;
        Ok(Response::new(v1::AppliedResponse { hlc: stamp(&self.clock) }))
    }

    async fn report_applied(
        &self,
        request: Request<tonic::Streaming<v1::AppliedRequest>>,
    ) -> Result<Response<v1::AppliedResponse>, Status> {
        require_node(&request, self.secure)?;
        let mut reports = request.into_inner();
        loop {
            // Woken now and then to see whether the node is stopping: an open stream would
            // otherwise hold the server's graceful stop.
            match tokio::time::timeout(STOP_CHECK, reports.message()).await {
                Ok(Ok(Some(report))) => self.take_applied(report)?,
                Ok(Ok(None)) => break,
                Ok(Err(status)) => return Err(status),
                Err(_) if self.stopping.load(Ordering::SeqCst) => break,
                Err(_) => {}
            }
        }
        Ok(Response::new(v1::AppliedResponse { hlc: stamp(&self.clock) }))
    }

    async fn flushed(
        &self,
        request: Request<v1::FlushedRequest>,
    ) -> Result<Response<v1::FlushedResponse>, Status> {
        require_node(&request, self.secure)?;
        let r = request.into_inner();
        observe_request(&self.clock, r.hlc)?;
        self.logged(r.epoch)?;
        if let Backend::Group(g) = &self.sequencer {
            // Only the leader gathers reports (and proposes truncations); a new leader starts
            // afresh, so that it hears every replica before counting any absent.
            if let Err(leader) = g.leading() {
                return Err(status_of(SequencerError::NotLeader { leader }));
            }
            self.flushed.reset_for_term(g.status().term, Instant::now());
        }
        let all = self
            .flushed
            .report(r.shard as usize, r.replica as usize, Epoch(r.epoch), Instant::now())
            .map_err(|why| refuse(Code::InvalidArgument, RefusalKind::Malformed, why))?;
        match &self.sequencer {
            Backend::Single(s) => {
                if let (Some(all), Some(feedback)) = (all, s.feedback()) {
                    feedback.durable(all);
                }
            }
            Backend::Group(g) => {
                if let Some(all) = all
                    && let Err(e) = g.truncate_below(all).await
                {
                    // Leadership lost meanwhile: the next leader hears the same reports.
                    tracing::debug!(error = %e, "truncating the group's windows");
                }
            }
        }
        let log_first = self.sequencer.first();
        Ok(Response::new(v1::FlushedResponse { hlc: stamp(&self.clock), log_first: log_first.0 }))
    }
}

/// Up to [`CATCH_UP_WINDOWS`] windows from `from` (none past `to` for a group).
fn read_windows(sequencer: &Backend, from: Epoch, to: Epoch) -> Result<Vec<Window>, Status> {
    match sequencer {
        Backend::Single(s) => {
            s.log_reader().read(from, CATCH_UP_WINDOWS, CATCH_UP_BYTES).map_err(log_read_error)
        }
        Backend::Group(g) => {
            let mut windows = Vec::new();
            let mut next = from;
            while next <= to && windows.len() < CATCH_UP_WINDOWS {
                match g.window(next) {
                    Some(w) => windows.push(w),
                    None if next < g.first() => {
                        let first = g.first();
                        return Err(log_read_error(SequencerError::Truncated {
                            from: next,
                            first,
                        }));
                    }
                    None => break,
                }
                next = next.next();
            }
            Ok(windows)
        }
    }
}

/// Window `w` whole, every entry with its index, as `ReadLog` sends it.
fn whole_window(clock: &Clock, w: &Window) -> v1::WindowSlice {
    v1::WindowSlice {
        hlc: stamp(clock),
        epoch: w.epoch.0,
        window_ts: w.ts.as_u64(),
        entries: w
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| v1::SlicedEntry {
                index: i as u32,
                participants: e.participants.iter().map(|p| p.0).collect(),
                payload: e.payload.to_vec(),
                client_id: e.client_id.to_bytes(),
            })
            .collect(),
        tick: false,
    }
}

/// Requests for a window when idle, passed on at most once per [`FORCED_SPACING`]: a caller
/// (any caller, in a cluster without TLS) cannot make the sequencer log more than 50 empty
/// windows a second. A request inside the spacing is passed on at its end, so
/// none is lost.
#[derive(Default)]
struct ForcedWindows {
    /// When the next request may be passed on at once, and whether one is waiting for it.
    next: std::sync::Mutex<(Option<tokio::time::Instant>, bool)>,
}

/// The least time between two windows logged on request.
const FORCED_SPACING: std::time::Duration = std::time::Duration::from_millis(20);

impl ForcedWindows {
    fn request(self: &Arc<Self>, backend: Backend) {
        let now = tokio::time::Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        match *next {
            // One is waiting for its turn: this one is merged into it.
            (_, true) => {}
            (Some(at), false) if at > now => {
                // Its turn is at `at`; the one after it, a spacing later.
                *next = (Some(at + FORCED_SPACING), true);
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    this.next.lock().unwrap_or_else(|e| e.into_inner()).1 = false;
                    backend.request_window();
                });
            }
            _ => {
                *next = (Some(now + FORCED_SPACING), false);
                backend.request_window();
            }
        }
    }
}

/// The most subscriptions a sequencer serves at once (shards subscribe once each; the rest
/// are refused as busy).
pub const MAX_SUBSCRIPTIONS: usize = 64;

/// Slices buffered for a subscriber's stream; the sequencer itself keeps at most
/// [`LIVE_BACKLOG`] deliveries for it.
const SUBSCRIBER_QUEUE: usize = 16;

/// Live deliveries a subscriber may fall behind before it is dropped (to catch up from the
/// log when it subscribes again).
const LIVE_BACKLOG: usize = 4096;

/// A subscriber more windows than this behind reads them from the log on its own thread
/// before it joins the live ones (which the sequencer's thread fills in from the log).
const CATCH_UP_GAP: u64 = 256;

/// Windows, and bytes of them, read from the log at once while catching up.
const CATCH_UP_WINDOWS: usize = 64;
const CATCH_UP_BYTES: usize = 8 << 20;

/// A subscriber that takes nothing for this long is dropped.
const SUBSCRIBER_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// One subscription's forwarding: a thread while it catches up from the log, then a task.
struct Forward {
    sequencer: Backend,
    clock: Arc<Clock>,
    stopping: Arc<AtomicBool>,
    handle: tokio::runtime::Handle,
    shard: ShardId,
    tx: mpsc::Sender<Result<v1::WindowSlice, Status>>,
}

impl Forward {
    /// Forwards windows from `from` on, on the caller's thread, until the live ones are near;
    /// returns the subscription to them, or `None` if it ended quietly (the subscriber went
    /// away, or the node stops). An error ends it with a status for the subscriber.
    fn catch_up(&self, from: Epoch) -> Result<Option<mpsc::Receiver<Delivery>>, Status> {
        match &self.sequencer {
            // Committed windows from any node of the group, then its logged ticks.
            Backend::Group(g) => {
                let _runtime = self.handle.enter();
                Ok(Some(g.subscribe(from, LIVE_BACKLOG)))
            }
            Backend::Single(s) => self.catch_up_single(s, from),
        }
    }

    fn catch_up_single(
        &self,
        sequencer: &Sequencer,
        mut from: Epoch,
    ) -> Result<Option<mpsc::Receiver<Delivery>>, Status> {
        let reader = sequencer.log_reader();
        while sequencer.last_logged().0.0 >= from.0.saturating_add(CATCH_UP_GAP) {
            let windows =
                reader.read(from, CATCH_UP_WINDOWS, CATCH_UP_BYTES).map_err(log_read_error)?;
            if windows.is_empty() {
                break; // the rest comes with the live windows
            }
            for window in windows {
                from = window.epoch.next();
                if self.stopping.load(Ordering::SeqCst) || !self.send(Ok(self.slice(&window))) {
                    return Ok(None);
                }
            }
        }
        let (tx, live) = mpsc::channel(LIVE_BACKLOG);
        sequencer.subscribe_to(from, move |delivery| match tx.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("dropping a subscriber that fell behind; it must catch up");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        Ok(Some(live))
    }

    /// Forwards live deliveries until the subscription ends.
    async fn forward_live(&self, mut live: mpsc::Receiver<Delivery>) {
        while let Some(delivery) = live.recv().await {
            let slice = match delivery {
                Delivery::Window(w) => self.slice(&w),
                Delivery::Tick(ts) => v1::WindowSlice {
                    hlc: stamp(&self.clock),
                    epoch: 0,
                    window_ts: ts.as_u64(),
                    entries: Vec::new(),
                    tick: true,
                },
                // Windows come durable on this subscription.
                Delivery::Durable(_) => continue,
            };
            if self.stopping.load(Ordering::SeqCst) || !self.send_async(Ok(slice)).await {
                return;
            }
        }
        // The sequencer dropped it (it fell behind) or stopped: the subscriber resubscribes.
        let why = "the subscription fell behind or the sequencer stopped";
        self.send_async(Err(Status::unavailable(why))).await;
    }

    /// This shard's slice of `window`.
    fn slice(&self, w: &Window) -> v1::WindowSlice {
        v1::WindowSlice {
            hlc: stamp(&self.clock),
            epoch: w.epoch.0,
            window_ts: w.ts.as_u64(),
            entries: w
                .slice(self.shard)
                .map(|(txn, e)| v1::SlicedEntry {
                    index: txn.index,
                    participants: e.participants.iter().map(|p| p.0).collect(),
                    payload: e.payload.to_vec(),
                    client_id: e.client_id.to_bytes(),
                })
                .collect(),
            tick: false,
        }
    }

    /// Hands `item` to the subscriber's stream; false if it has gone or stalled.
    async fn send_async(&self, item: Result<v1::WindowSlice, Status>) -> bool {
        let sent = self.tx.send_timeout(item, SUBSCRIBER_STALL).await;
        if let Err(mpsc::error::SendTimeoutError::Timeout(_)) = sent {
            tracing::warn!(shard = self.shard.0, "dropping a subscriber that stopped reading");
        }
        sent.is_ok()
    }

    /// [`Forward::send_async`] from a thread of its own.
    fn send(&self, item: Result<v1::WindowSlice, Status>) -> bool {
        self.handle.block_on(self.send_async(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_absent_replica_stops_holding_the_log_while_a_fellow_reports() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        // Shard 0 has two replicas, shard 1 one; a replica is absent after 100 ms of silence.
        let reports = FlushedReports::new(&[2, 1], Duration::from_millis(100), start);
        assert_eq!(reports.report(0, 0, Epoch(10), at(1)), Ok(None), "nothing from the others");
        assert_eq!(reports.report(1, 0, Epoch(20), at(2)), Ok(None), "shard 0 replica 1 holds");
        assert_eq!(reports.report(0, 1, Epoch(5), at(3)), Ok(Some(Epoch(5))));
        // Replica 1 of shard 0 goes silent; until it has been for 100 ms, it holds the log.
        assert_eq!(reports.report(0, 0, Epoch(30), at(90)), Ok(Some(Epoch(5))));
        assert_eq!(reports.report(1, 0, Epoch(40), at(102)), Ok(Some(Epoch(5))));
        assert_eq!(reports.report(0, 0, Epoch(50), at(104)), Ok(Some(Epoch(40))), "it is absent");
        // Back, behind: it holds the log again (from what it reports).
        assert_eq!(reports.report(0, 1, Epoch(6), at(110)), Ok(Some(Epoch(6))));
        // A shard whose only replica is silent holds the log however long.
        assert_eq!(reports.report(0, 0, Epoch(60), at(500)), Ok(Some(Epoch(40))));
        // Reports never go back, and unknown replicas are refused.
        assert_eq!(reports.report(1, 0, Epoch(1), at(501)), Ok(Some(Epoch(40))));
        assert!(reports.report(2, 0, Epoch(1), at(502)).is_err());
        assert!(reports.report(1, 1, Epoch(1), at(503)).is_err());
    }
}
