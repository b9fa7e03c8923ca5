//! The sequencer group in the simulation: three members, each the production raft node of
//! `replication` (its log store on disk, its state machine, its `GroupSequencer` sealing and
//! ticking) on openraft, joined by a simulated network ([`Hub`]) with seeded delays, loss and
//! cuts.
//!
//! The members run as tasks on the world's tokio runtime: one thread, its clock paused, so
//! time moves only when every task waits, and then straight to the next timer. Tokio's
//! timers tick in milliseconds, so **one world microsecond is one tokio millisecond**: the
//! raft timeouts below read as world time (a 5 ms heartbeat is `5_000` tokio milliseconds).
//! openraft draws election timeouts from `replication`'s per-thread generator, seeded by the
//! run's seed, the group's own `select!`s are biased, and the world takes the members' output
//! and its own events in one biased `select!`: a seed still reproduces a run exactly.
//!
//! Raft messages are handed to the receiving member's `Raft` directly (not encoded: the gRPC
//! transport is not what is simulated here), stamped with and observed by the members' hybrid
//! logical clocks as the gRPC transport does.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clock::{Clock, PhysicalClock, Timestamp};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replication::{
    GroupConfig, GroupSequencer, LogStore, NodeId, Raft, StateMachine, TypeConfig, raft_config,
};
use sequencer::{Delivery, Entry, SequencerError, Window};
use storage::Epoch;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Bug, Ev, MAX_OFFSET, Node, World};

/// Members of the group.
pub const MEMBERS: usize = 3;

/// A member's heartbeat, in world microseconds.
const HEARTBEAT: u64 = 5_000;

/// A member's election timeout (to 1.2 times that), in world microseconds.
const ELECTION_TIMEOUT: u64 = 20_000;

/// The leader logs an idle tick after this long without a window, in world microseconds.
const TICK_INTERVAL: u64 = 5_000;

/// A lost raft message: the sender hears nothing for this long (its own timeout ends it
/// sooner), in world microseconds.
const SILENCE: u64 = 50_000;

/// A client sends its submission again (to the next member) after this long without a
/// receipt, in world microseconds.
const RESUBMIT: u64 = 10_000;

/// Tokio time for `micros` of world time.
pub fn tokio_time(micros: u64) -> Duration {
    Duration::from_millis(micros)
}

/// World microseconds for `elapsed` tokio time.
pub fn world_time(elapsed: Duration) -> u64 {
    elapsed.as_millis() as u64
}

/// A member's address in the group's membership (its `NotLeader` errors name it).
pub fn address(member: usize) -> String {
    format!("m{member}")
}

/// The member an address names.
pub fn member_at(address: &str) -> Option<usize> {
    address.strip_prefix('m')?.parse().ok().filter(|m| *m < MEMBERS)
}

/// A member's physical clock: world time plus its offset.
struct WorldClock {
    base: Instant,
    offset: i64,
}

impl PhysicalClock for WorldClock {
    fn now(&self) -> Timestamp {
        let micros = world_time(self.base.elapsed()) as i64 + self.offset;
        Timestamp::from_unix_duration(Duration::from_micros(micros.max(0) as u64))
    }
}

/// The simulated network between members, and which of them are up.
pub struct Hub {
    base: Instant,
    faults: bool,
    state: Mutex<HubState>,
}

struct HubState {
    rng: StdRng,
    members: Vec<Reach>,
    lost: u64,
}

/// One member as the network sees it.
struct Reach {
    /// Bumped by each crash: messages of an earlier life go nowhere.
    life: u64,
    raft: Option<Raft>,
    clock: Arc<Clock>,
    /// Cut off the network until then.
    cut_until: Option<Instant>,
}

impl Hub {
    /// A network drawing its delays and losses from `seed`, its clocks' time zero at `base`.
    pub fn new(seed: u64, faults: bool, base: Instant) -> Arc<Hub> {
        let clock = |offset| {
            let physical = Arc::new(WorldClock { base, offset });
            Arc::new(Clock::new(physical, Duration::from_micros(MAX_OFFSET)))
        };
        let members =
            (0..MEMBERS).map(|_| Reach { life: 0, raft: None, clock: clock(0), cut_until: None });
        Arc::new(Hub {
            base,
            faults,
            state: Mutex::new(HubState {
                rng: StdRng::seed_from_u64(seed),
                members: members.collect(),
                lost: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A clock for a member whose physical time is `offset` microseconds from world time.
    pub fn clock(&self, offset: i64) -> Arc<Clock> {
        let physical = Arc::new(WorldClock { base: self.base, offset });
        Arc::new(Clock::new(physical, Duration::from_micros(MAX_OFFSET)))
    }

    /// `member` crashed: what it sends or is sent from now on is lost.
    pub fn crash(&self, member: usize) {
        let mut s = self.lock();
        s.members[member].life += 1;
        s.members[member].raft = None;
    }

    /// `member` is up again in life `life`, with `clock`.
    pub fn up(&self, member: usize, life: u64, raft: Raft, clock: Arc<Clock>) {
        let mut s = self.lock();
        let m = &mut s.members[member];
        if m.life == life {
            m.raft = Some(raft);
            m.clock = clock;
        }
    }

    /// Cuts `member` off the network for `length` world microseconds.
    pub fn cut(&self, member: usize, length: u64) {
        self.lock().members[member].cut_until = Some(Instant::now() + tokio_time(length));
    }

    /// True while `member` is cut off.
    pub fn is_cut(&self, member: usize) -> bool {
        self.lock().members[member].cut_until.is_some_and(|until| until > Instant::now())
    }

    /// Raft messages lost so far.
    pub fn lost(&self) -> u64 {
        self.lock().lost
    }

    /// How long a message from `from` (in life `life`) to `to` takes, or `None` if it is lost.
    fn route(&self, from: usize, life: u64, to: usize) -> Option<Duration> {
        let now = Instant::now();
        let mut s = self.lock();
        let cut = |m: &Reach| m.cut_until.is_some_and(|until| until > now);
        let (sender, receiver) = (&s.members[from], &s.members[to]);
        let gone = sender.life != life || sender.raft.is_none() || receiver.raft.is_none();
        if gone || cut(sender) || cut(receiver) || (self.faults && s.rng.random_bool(0.02)) {
            s.lost += 1;
            return None;
        }
        let delay = match s.rng.random_bool(0.02) {
            true => s.rng.random_range(1_000..8_000),
            false => s.rng.random_range(20..400),
        };
        Some(tokio_time(delay))
    }

    /// `to`'s raft and life, once a message from `from` arrives, and the sender's timestamp
    /// observed by the receiver's clock; `None` if it is lost on the way.
    fn arrive(&self, from: usize, to: usize) -> Option<(Raft, u64)> {
        let now = Instant::now();
        let s = self.lock();
        let (sender, receiver) = (&s.members[from], &s.members[to]);
        if receiver.cut_until.is_some_and(|until| until > now) {
            return None;
        }
        receiver.clock.observe(sender.clock.now()).ok()?;
        Some((receiver.raft.clone()?, receiver.life))
    }
}

/// A member's connections to the others.
pub struct Network {
    hub: Arc<Hub>,
    from: usize,
    life: u64,
}

/// A connection from one member to another.
pub struct Conn {
    hub: Arc<Hub>,
    from: usize,
    life: u64,
    to: usize,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Conn {
        Conn { hub: self.hub.clone(), from: self.from, life: self.life, to: target as usize }
    }
}

fn lost<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("lost")))
}

impl Conn {
    /// Carries `request` to the receiver, has it `answer`, and carries the answer back; either
    /// way it may be delayed or lost.
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        request: Req,
        answer: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        E: std::error::Error,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: Future<Output = Result<Resp, E>>,
    {
        let silence = || tokio::time::sleep(tokio_time(SILENCE));
        let Some(delay) = self.hub.route(self.from, self.life, self.to) else {
            silence().await;
            return Err(lost());
        };
        tokio::time::sleep(delay).await;
        let Some((raft, life)) = self.hub.arrive(self.from, self.to) else {
            silence().await;
            return Err(lost());
        };
        let reply = answer(raft, request)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to as NodeId, e)))?;
        let Some(delay) = self.hub.route(self.to, life, self.from) else {
            silence().await;
            return Err(lost());
        };
        tokio::time::sleep(delay).await;
        match self.hub.arrive(self.to, self.from) {
            Some(_) => Ok(reply),
            None => Err(lost()),
        }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(rpc, |raft, rpc| async move { raft.append_entries(rpc).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(rpc, |raft, rpc| async move { raft.install_snapshot(rpc).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(rpc, |raft, rpc| async move { raft.vote(rpc).await }).await
    }
}

/// A member that is up: its raft node and its sequencer.
pub struct Running {
    raft: Raft,
    sequencer: GroupSequencer,
    clock: Arc<Clock>,
}

impl Running {
    /// Stops it, as a crash: what was written stays on disk, nothing else is done.
    async fn stop(self) {
        self.sequencer.shutdown().await;
        let _ = self.raft.shutdown().await;
    }
}

/// Where member `member` keeps its raft log and state, under `root`.
fn member_dir(root: &Path, member: usize) -> PathBuf {
    root.join(format!("member{member}"))
}

/// Starts member `member` (life `life`) from what its directory holds; the first start of
/// member 0 sets the group up.
async fn start(
    hub: Arc<Hub>,
    member: usize,
    life: u64,
    dir: PathBuf,
    clock: Arc<Clock>,
    set_up: bool,
) -> Running {
    let log = LogStore::open(dir.join("raft")).expect("a raft log on a local disk");
    let state = StateMachine::open(dir.join("state"), 1 << 20).expect("the group's state");
    let view = state.view();
    let mut config = (*raft_config(tokio_time(HEARTBEAT), tokio_time(ELECTION_TIMEOUT))
        .expect("valid raft timing"))
    .clone();
    // Snapshots and purges often, so lagging members are sent snapshots.
    config.snapshot_policy = SnapshotPolicy::LogsSinceLast(100);
    config.max_in_snapshot_log_to_keep = 20;
    config.install_snapshot_timeout = 50_000;
    let config = Arc::new(config.validate().expect("valid raft settings"));
    let network = Network { hub: hub.clone(), from: member, life };
    let raft = Raft::new(member as NodeId, config, network, log, state).await.expect("raft starts");
    if set_up {
        let members: BTreeMap<NodeId, BasicNode> =
            (0..MEMBERS).map(|m| (m as NodeId, BasicNode::new(address(m)))).collect();
        raft.initialize(members).await.expect("a new group is set up");
    }
    let group = GroupConfig {
        tick_interval: tokio_time(TICK_INTERVAL),
        queue: 1_024,
        ..GroupConfig::default()
    };
    let sequencer =
        GroupSequencer::start(member as NodeId, raft.clone(), view, clock.clone(), group);
    hub.up(member, life, raft.clone(), clock.clone());
    Running { raft, sequencer, clock }
}

/// What the members' tasks tell the world.
pub enum Out {
    /// Member `member` is up in life `life`.
    Started { member: usize, life: u64, running: Running },
    /// It has window `window` committed (each member delivers every window, in order).
    Window { member: usize, life: u64, window: Arc<Window> },
    /// It promised that no window after `after` will be stamped at or below `ts`.
    Tick { member: usize, after: Epoch, ts: Timestamp },
    /// It became the leader.
    Elected,
    /// Its receipt for a client's submission: `Ok(duplicate)` (logged before, under the same
    /// client id), or `Err` with the leader it names, if any.
    Receipt { member: usize, client: usize, op: u64, result: Result<bool, Option<usize>> },
}

/// One member, as the world keeps it.
struct Member {
    alive: bool,
    /// Bumped by each crash.
    life: u64,
    started: bool,
    running: Option<Running>,
    /// Its last start or stop, which the next one waits for (one instance per directory).
    task: Option<JoinHandle<()>>,
    /// Carries its committed windows and promises to the world.
    forwarder: Option<JoinHandle<()>>,
    /// The windows it has delivered, oldest first.
    log: Vec<Arc<Window>>,
    /// Replicas waiting for a window it has not committed yet.
    waiting: BTreeMap<Node, Epoch>,
}

/// The sequencer group of a run.
pub struct Group {
    pub hub: Arc<Hub>,
    members: Vec<Member>,
    tx: mpsc::UnboundedSender<Out>,
    rx: Option<mpsc::UnboundedReceiver<Out>>,
    /// The members' directories (dropped after the runtime).
    root: tempfile::TempDir,
}

impl Group {
    /// A group of members not started yet, their directories on a memory file system when
    /// there is one (the raft log fsyncs every append).
    pub fn new(seed: u64, faults: bool, base: Instant) -> Group {
        let shm = Path::new("/dev/shm");
        let root = match shm.is_dir() {
            true => tempfile::tempdir_in(shm),
            false => tempfile::tempdir(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let member = || Member {
            alive: false,
            life: 0,
            started: false,
            running: None,
            task: None,
            forwarder: None,
            log: Vec::new(),
            waiting: BTreeMap::new(),
        };
        Group {
            hub: Hub::new(seed ^ 0x0067_726f_7570, faults, base),
            members: (0..MEMBERS).map(|_| member()).collect(),
            tx,
            rx: Some(rx),
            root: root.expect("a temporary directory"),
        }
    }

    /// The members' output, for the world's loop.
    pub fn take_output(&mut self) -> mpsc::UnboundedReceiver<Out> {
        self.rx.take().expect("one loop takes the output")
    }

    /// Says what has not settled, and returns the last epoch any member delivered.
    pub fn unsettled(&self, why: &mut Vec<String>) -> Epoch {
        let last = self.members.iter().map(|m| m.log.len()).max().unwrap_or(0);
        for (i, m) in self.members.iter().enumerate() {
            if m.running.is_none() {
                why.push(format!("member {i} is down"));
            } else if m.log.len() != last {
                why.push(format!("member {i} at {} of {last}", m.log.len()));
            }
        }
        Epoch(last as u64)
    }

    /// Member `member` seals a window even without submissions, if it leads.
    pub fn request_window(&self, member: usize) {
        if let Some(r) = &self.members[member].running {
            r.sequencer.request_window();
        }
    }

    /// The leader, as the first member up that knows one sees it.
    fn leader(&self) -> Option<usize> {
        let known = self.members.iter().filter_map(|m| m.running.as_ref());
        known.filter_map(|r| r.raft.metrics().borrow().current_leader).next().map(|l| l as usize)
    }
}

/// Carries member `member`'s committed windows and promises to the world, and says when it
/// becomes leader. With [`Bug::UnloggedTicks`], a leader also promises its clock's now after
/// each window.
async fn forward(
    member: usize,
    life: u64,
    raft: Raft,
    clock: Arc<Clock>,
    mut deliveries: mpsc::Receiver<Delivery>,
    tx: mpsc::UnboundedSender<Out>,
    unlogged_ticks: bool,
) {
    let mut metrics = raft.metrics();
    let mut last = Epoch(0);
    let mut term = None;
    loop {
        tokio::select! {
            biased;
            delivery = deliveries.recv() => match delivery {
                Some(Delivery::Window(window)) => {
                    last = window.epoch;
                    let _ = tx.send(Out::Window { member, life, window });
                }
                Some(Delivery::Tick(ts)) => {
                    let leads = metrics.borrow().current_leader == Some(member as NodeId);
                    let ts = match unlogged_ticks && leads {
                        true => clock.now().max(ts),
                        false => ts,
                    };
                    let _ = tx.send(Out::Tick { member, after: last, ts });
                }
                Some(Delivery::Durable(_)) => {}
                None => return,
            },
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let m = metrics.borrow().clone();
                if m.current_leader == Some(member as NodeId) && term != Some(m.current_term) {
                    term = Some(m.current_term);
                    let _ = tx.send(Out::Elected);
                }
            }
        }
    }
}

impl World {
    fn group_mut(&mut self) -> &mut Group {
        self.group.as_mut().expect("a run with the group")
    }

    /// Starts the group's members at time zero.
    pub(super) fn start_group(&mut self) {
        self.group = Some(Group::new(self.config.seed, self.config.faults, self.base));
        for member in 0..MEMBERS {
            self.at(0, Ev::RestartMember { member });
        }
    }

    /// Crashes and cuts of members, some aimed at whichever leads at the time.
    pub(super) fn plan_group_faults(&mut self) {
        let run_for = self.config.run_for;
        // The planted bug shows after leader changes: more of them.
        let (crashes, of_any) = match self.config.bug {
            Some(Bug::UnloggedTicks) => (10, 0.0),
            _ => (self.rng.random_range(1..=3), 0.5),
        };
        for _ in 0..crashes {
            let at = self.rng.random_range(0..run_for);
            let member = self.rng.random_bool(of_any).then(|| self.rng.random_range(0..MEMBERS));
            self.at(at, Ev::CrashMember { member });
        }
        for _ in 0..self.rng.random_range(0..=2) {
            let at = self.rng.random_range(0..run_for);
            let member = self.rng.random_bool(0.5).then(|| self.rng.random_range(0..MEMBERS));
            let length = self.rng.random_range(1_000..40_000);
            self.at(at, Ev::CutMember { member, length });
        }
    }

    pub(super) fn on_group_output(&mut self, out: Out) {
        match out {
            Out::Started { member, life, running } => {
                let unlogged_ticks = self.config.bug == Some(Bug::UnloggedTicks);
                let g = self.group_mut();
                let tx = g.tx.clone();
                let m = &mut g.members[member];
                if m.life != life || !m.alive {
                    // Crashed while starting: stop it before any later start.
                    let previous = m.task.take();
                    m.task = Some(tokio::spawn(async move {
                        if let Some(p) = previous {
                            let _ = p.await;
                        }
                        running.stop().await;
                    }));
                    return;
                }
                let deliveries = running.sequencer.subscribe(Epoch(1), 64);
                let (raft, clock) = (running.raft.clone(), running.clock.clone());
                m.forwarder = Some(tokio::spawn(forward(
                    member,
                    life,
                    raft,
                    clock,
                    deliveries,
                    tx,
                    unlogged_ticks,
                )));
                m.running = Some(running);
            }
            Out::Window { member, life, window } => {
                let Some(g) = self.group.as_mut() else { return };
                let m = &mut g.members[member];
                if m.life != life {
                    return;
                }
                if window.epoch.0 != m.log.len() as u64 + 1 {
                    let at = m.log.len();
                    self.run.errors.push(format!(
                        "member {member} delivered window {} after {at}",
                        window.epoch
                    ));
                    return;
                }
                m.log.push(window.clone());
                let ids = window.entries.iter().map(|e| e.client_id).collect();
                self.run.logged.push((member, window.epoch, window.ts, ids));
                let waiting: Vec<Node> = m
                    .waiting
                    .iter()
                    .filter(|(_, e)| **e == window.epoch)
                    .map(|(node, _)| *node)
                    .collect();
                for node in waiting {
                    self.group_mut().members[member].waiting.remove(&node);
                    self.send_member(member, Ev::Deliver { node, window: window.clone() });
                }
            }
            Out::Tick { member, after, ts } => self.run.promises.push((member, after, ts)),
            Out::Elected => self.run.stats.elections += 1,
            Out::Receipt { member, client, op, result } => {
                self.send_member(member, Ev::Receipt { client, op, result })
            }
        }
    }

    /// A client's submission reaches member `member`.
    pub(super) fn submit_to_member(&mut self, entry: Entry, member: usize, client: usize, op: u64) {
        let g = self.group_mut();
        let Some(running) = g.members[member].running.as_ref() else { return };
        let tx = g.tx.clone();
        running.sequencer.submit_then(
            entry,
            Box::new(move |result| {
                let result = match result {
                    Ok(receipt) => Ok(receipt.duplicate),
                    Err(SequencerError::NotLeader { leader }) => {
                        Err(leader.as_deref().and_then(member_at))
                    }
                    Err(_) => Err(None),
                };
                let _ = tx.send(Out::Receipt { member, client, op, result });
            }),
        );
    }

    /// Client `client` sends its submission to the member it thinks leads, and again to the
    /// next one if no receipt comes.
    pub(super) fn submit(&mut self, client: usize) {
        let c = &mut self.clients[client];
        let Some(entry) = c.unreceipted.clone() else { return };
        c.attempt += 1;
        let (member, op, attempt) = (c.member, c.op, c.attempt);
        if attempt > 1 {
            self.run.stats.resubmits += 1;
        }
        self.send_member(member, Ev::Submit { entry, member, client, op });
        self.after(RESUBMIT, Ev::Resubmit { client, op, attempt, rotate: true });
    }

    /// A member's receipt: logged (wait for the outcome), or not by that member (try the
    /// leader it names, or the next member a little later).
    pub(super) fn receipt(&mut self, client: usize, op: u64, result: Result<bool, Option<usize>>) {
        let c = &mut self.clients[client];
        if c.op != op || c.unreceipted.is_none() {
            return;
        }
        match result {
            Ok(duplicate) => {
                c.unreceipted = None;
                self.run.stats.duplicates += u64::from(duplicate);
            }
            Err(leader) => {
                let named = leader.filter(|l| *l != c.member);
                c.member = named.unwrap_or((c.member + 1) % MEMBERS);
                c.attempt += 1;
                let attempt = c.attempt;
                let delay = if named.is_some() { 0 } else { 1_000 };
                self.after(delay, Ev::Resubmit { client, op, attempt, rotate: false });
            }
        }
    }

    /// Replica `node` asks member `member` for window `epoch`.
    pub(super) fn fetch_from_member(&mut self, node: Node, epoch: Epoch, member: usize) {
        let m = &mut self.group_mut().members[member];
        if m.running.is_none() {
            return;
        }
        match m.log.get(epoch.0 as usize - 1).cloned() {
            Some(window) => self.send_member(member, Ev::Deliver { node, window }),
            None => {
                m.waiting.insert(node, epoch);
            }
        }
    }

    /// Crashes `member` (or the leader, if there is one), and restarts it a little later.
    pub(super) fn crash_member(&mut self, member: Option<usize>) {
        let Some(member) = member.or_else(|| self.group_mut().leader()) else { return };
        let g = self.group_mut();
        let m = &mut g.members[member];
        if !m.alive {
            return;
        }
        g.hub.crash(member);
        m.alive = false;
        m.life += 1;
        m.log.clear();
        m.waiting.clear();
        if let Some(forwarder) = m.forwarder.take() {
            forwarder.abort();
        }
        let (running, previous) = (m.running.take(), m.task.take());
        m.task = Some(tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            if let Some(r) = running {
                r.stop().await;
            }
        }));
        self.run.stats.crashes += 1;
        let down = self.rng.random_range(1_000..40_000);
        self.after(down, Ev::RestartMember { member });
    }

    /// Starts `member` again from its directory, with a new clock offset.
    pub(super) fn restart_member(&mut self, member: usize) {
        let half = MAX_OFFSET as i64 / 2;
        let offset = self.rng.random_range(-half..=half);
        let g = self.group_mut();
        let (hub, tx) = (g.hub.clone(), g.tx.clone());
        let dir = member_dir(g.root.path(), member);
        let m = &mut g.members[member];
        if m.alive {
            return;
        }
        m.alive = true;
        let set_up = member == 0 && !m.started;
        m.started = true;
        let (life, previous, clock) = (m.life, m.task.take(), hub.clock(offset));
        m.task = Some(tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            let running = start(hub, member, life, dir, clock, set_up).await;
            let _ = tx.send(Out::Started { member, life, running });
        }));
    }

    /// Cuts `member` (or the leader) off the network for `length` microseconds.
    pub(super) fn cut_member(&mut self, member: Option<usize>, length: u64) {
        let Some(member) = member.or_else(|| self.group_mut().leader()) else { return };
        self.group_mut().hub.cut(member, length);
        self.run.stats.partitions += 1;
    }

    /// Counts for the run's statistics.
    pub(super) fn finish_group(&mut self) {
        let g = self.group_mut();
        let (lost, windows) = (g.hub.lost(), g.members.iter().map(|m| m.log.len()).max());
        self.run.stats.lost += lost;
        self.run.stats.windows += windows.unwrap_or(0) as u64;
        self.run.stats.group_runs += 1;
    }
}
