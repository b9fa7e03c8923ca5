//! [`World`]: a sequencer (one node, or a raft group of three: [`group`]), three shards of two
//! replicas each and their clients in one thread, driven by a seeded scheduler over a
//! simulated network. Each replica runs the same [`Step`]
//! as the embedded database and the shard server, applying the log on its own; this shell
//! carries out its commands as messages. A replica asks a peer shard's replicas at random
//! (again on every retry, so a crashed one is passed over), and every replica of an entry's
//! lowest participant sends the client its outcome (the client takes the first).
//!
//! ```text
//!   clients ──Submit──> sequencer (Sealer; a window is durable after a simulated fsync)
//!      ^                   or any member of the group (NotLeader -> the leader; a receipt)
//!      └──Receipt──────────┘ Fetch(e) / Deliver(window e, committed)
//!   shard 0 <──Read / Pull / replies──> shard 1 <──> shard 2      (each replica a Step)
//!      └──Outcome (from an entry's lowest participant)──> client
//! ```
//!
//! Everything happens at simulated microseconds taken from one queue of timed events, in
//! order; ties break by insertion order. Every random choice comes from one seeded generator
//! and every map is ordered, so a seed reproduces a run exactly.
//!
//! Faults, all seeded: message delay (and so reordering), loss (requests are retried on a
//! timer; a lost submission or outcome leaves the client not knowing), replica crashes that
//! keep only what was flushed (then restart and replay from the watermark), replicas cut off
//! from the network for up to 20 ms (everything to or from them lost), sequencer crashes that
//! lose the window being fsynced, and sequencer clock offsets within
//! `MAX_OFFSET` (its windows' timestamps must still increase). With the group: crashes of any
//! member and of the leader (its disk keeps what it wrote), members cut off the network for up
//! to 40 ms (longer than an election), lost and delayed raft messages, and clients that
//! resubmit under the same client id to whichever member they think leads. Not simulated
//! here: commit-wait and reads at a timestamp (the step has no clock), and the gRPC layer
//! itself.
//!
//! Time: the world's events are in simulated microseconds, run on a tokio runtime with a
//! paused clock on this one thread, where the group's members run as tasks (see [`group`]).

mod group;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use clock::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sequencer::{ClientId, Entry, Sealer, SealerConfig, ShardId, TxnId, Window};
use storage::{Epoch, KeyRange, Limits, Mvcc};
use tests::history::{Completion, Mop, Recorder};
use tokio::time::Instant;
use txn::builtin::{ListOp, decode_list, decode_list_output, encode_list_ops, list_key};
use txn::{Command, Distant, Event, Executor, Outcome, Registry, Request, ShardMap, Step};

use crate::bank;
use crate::engine::{Keep, SimEngine};

/// Shards in the simulated cluster.
pub const SHARDS: u32 = 3;

/// A shard replica, by index: replica `r` of shard `s` is `s * replicas + r`.
type Node = usize;

/// The largest offset of the sequencer's clock from true time.
const MAX_OFFSET: u64 = 5_000;

/// List-append keys: few, so transactions collide.
const LIST_KEYS: u64 = 6;

/// A request to a peer unanswered this long is sent again.
const RETRY: u64 = 20_000;

/// A client gives up waiting for an outcome after this long (it then does not know).
const CLIENT_TIMEOUT: u64 = 60_000;

/// After the run, everything must have settled within this long.
const SETTLE: u64 = 10_000_000;

/// A bug planted in the shell, to show that the invariants catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// A participant takes its own local verdicts for every peer's: it decides alone.
    LocalVerdictOnly,
    /// A sequencer crash loses the last durable window too.
    LoseDurableWindow,
    /// A shard crash keeps a window's writes without its watermark: the window is applied
    /// again on top of itself. (Harmless by design: a replay reads `Snap(e-1)`, below its
    /// own writes; a test shows the invariants hold.)
    TornWatermark,
    /// A shard answers a peer's reads from its latest state instead of `Snap(e-1)`: a shard
    /// replaying a window after a crash reads its peers' writes of that window.
    LatestReads,
    /// Group members promise safe time from their own clocks, not through the log: a leader
    /// tells shards, after each window, that nothing later will be stamped at or below its
    /// clock's now, and a deposed one with a fast clock is not overruled.
    UnloggedTicks,
}

/// One simulated run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seeds every choice.
    pub seed: u64,
    /// Simulated microseconds during which clients submit and faults happen.
    pub run_for: u64,
    /// Clients running list-append transactions.
    pub list_clients: usize,
    /// Clients running transfers and audits.
    pub bank_clients: usize,
    /// Inject faults.
    pub faults: bool,
    /// A planted bug, if any.
    pub bug: Option<Bug>,
    /// Replicas of each shard, each applying the log on its own.
    pub replicas: u32,
    /// The log is a raft group of three sequencer members, not one sequencer.
    pub group: bool,
}

impl Config {
    /// The configuration the seeds run with: odd seeds run the sequencer group, even ones a
    /// single sequencer.
    pub fn new(seed: u64) -> Config {
        Config {
            seed,
            run_for: 1_000_000,
            list_clients: 4,
            bank_clients: 3,
            faults: true,
            bug: None,
            replicas: 2,
            group: seed % 2 == 1,
        }
    }
}

/// What a run leaves for the invariants to check.
#[derive(Debug, Default)]
pub struct Run {
    /// The list-append history (Jepsen JSON lines).
    pub history: String,
    /// Appends the database acknowledged: key and value.
    pub acknowledged_appends: Vec<(u64, u64)>,
    /// Every list at the end, read from its shard.
    pub final_lists: BTreeMap<u64, Vec<u64>>,
    /// Balances seen by committed audits.
    pub audits: Vec<Vec<u64>>,
    /// Every balance at the end, read from its shard.
    pub final_balances: Vec<u64>,
    /// Every write: the replica (shard, replica), the window written, and its watermark
    /// before it.
    pub writes: Vec<((ShardId, u32), Epoch, Epoch)>,
    /// Every window applied: the replica, the window, and the chained digest after it.
    pub digests: Vec<((ShardId, u32), Epoch, u128)>,
    /// Every final verdict a shard applied: shard, window, entry, commit. (A deferred entry
    /// has one verdict per window it runs in.)
    pub verdicts: Vec<(ShardId, Epoch, TxnId, bool)>,
    /// Every committed window as each sequencer member delivered it: the member, the epoch,
    /// the timestamp and the client ids in order.
    pub logged: Vec<(usize, Epoch, Timestamp, Vec<ClientId>)>,
    /// Safe-time promises members gave shards: the member, the last epoch delivered before
    /// it, and the timestamp no later window may be stamped at or below.
    pub promises: Vec<(usize, Epoch, Timestamp)>,
    /// Errors of a step, and a run that did not settle.
    pub errors: Vec<String>,
    /// Counts, to see that a run did something.
    pub stats: Stats,
}

/// Counts of what happened in a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Windows made durable.
    pub windows: u64,
    /// Client transactions acknowledged as committed.
    pub committed: u64,
    /// Multi-shard entries among the applied verdicts (counted per participant).
    pub multi_shard_verdicts: u64,
    /// Crashes of shards and of the sequencer.
    pub crashes: u64,
    /// Messages lost.
    pub lost: u64,
    /// Replicas cut off from the network for a while (everything to or from them lost).
    pub partitions: u64,
    /// Requests sent again after a timeout.
    pub retries: u64,
    /// Runs with the sequencer group.
    pub group_runs: u64,
    /// Times a group member became leader.
    pub elections: u64,
    /// Submissions sent again (to another member, under the same client id).
    pub resubmits: u64,
    /// Receipts for a submission logged already (a resubmission the group deduplicated).
    pub duplicates: u64,
}

/// A timed event.
#[derive(Debug)]
enum Ev {
    SealTimer,
    Fsynced {
        life: u64,
    },
    /// A submission, to the sequencer or to group member `member`.
    Submit {
        entry: Entry,
        member: usize,
        client: usize,
        op: u64,
    },
    Fetch {
        node: Node,
        epoch: Epoch,
        member: usize,
    },
    WantWindow {
        member: usize,
    },
    /// A group member's receipt for a submission, at the client.
    Receipt {
        client: usize,
        op: u64,
        result: Result<bool, Option<usize>>,
    },
    /// A client's submission unanswered: send it again (if `attempt` is still its latest).
    Resubmit {
        client: usize,
        op: u64,
        attempt: u64,
        /// To the next member (no receipt came), not to the one set already.
        rotate: bool,
    },
    Deliver {
        node: Node,
        window: Arc<Window>,
    },
    /// A request from one shard to another (a read or a verdict pull), or its answer.
    Request {
        to: Node,
        from: Node,
        life: u64,
        req: u64,
        ask: Ask,
    },
    Reply {
        to: Node,
        life: u64,
        req: u64,
        event: Event,
    },
    Retry {
        node: Node,
        life: u64,
        req: u64,
    },
    Poll {
        node: Node,
        life: u64,
    },
    Flush {
        node: Node,
    },
    Outcome {
        client: usize,
        op: u64,
        outcome: Outcome,
    },
    ClientTimeout {
        client: usize,
        op: u64,
    },
    ClientNext {
        client: usize,
    },
    CrashShard {
        node: Node,
    },
    RestartShard {
        node: Node,
    },
    CrashSequencer,
    RestartSequencer,
    /// Crash a group member, or whichever leads.
    CrashMember {
        member: Option<usize>,
    },
    RestartMember {
        member: usize,
    },
    /// Cut a group member (or whichever leads) off the network for `length` microseconds.
    CutMember {
        member: Option<usize>,
        length: u64,
    },
    /// Cut a replica off the network for `length` microseconds.
    Partition {
        node: Node,
        length: u64,
    },
}

/// What one shard asks another.
#[derive(Debug, Clone)]
enum Ask {
    Read { window: Epoch, at: Timestamp, points: Vec<Vec<u8>>, scans: Vec<(KeyRange, usize)> },
    Verdicts { window: Epoch },
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SequencerNode {
    alive: bool,
    life: u64,
    sealer: Sealer,
    /// Durable windows, oldest first.
    log: Vec<Arc<Window>>,
    /// The window being fsynced.
    syncing: Option<Window>,
    /// Shards waiting for a window not yet durable.
    waiting: BTreeMap<Node, Epoch>,
    want_window: bool,
    /// Its clock's offset from true time, within `MAX_OFFSET` either way.
    offset: i64,
}

struct ShardNode {
    /// Which shard it is a replica of.
    shard: ShardId,
    alive: bool,
    /// Bumped by each crash: replies and timers of an earlier life are ignored.
    life: u64,
    engine: Arc<SimEngine>,
    mvcc: Arc<Mvcc>,
    step: Option<Step>,
    /// Local verdicts published for windows in progress.
    published: BTreeMap<Epoch, Vec<(TxnId, bool)>>,
    /// Peers' requests waiting for this shard to get far enough.
    parked: Vec<(Node, u64, u64, Ask)>,
    /// Requests sent and not answered, to send again on a timer.
    outstanding: BTreeMap<u64, (ShardId, Ask)>,
    next_req: u64,
    /// The step failed: the shard stopped for good.
    halted: bool,
}

enum Work {
    List(Vec<Mop>),
    Transfer,
    Audit,
}

struct Client {
    process: u64,
    op: u64,
    pending: Option<Work>,
    /// With the group: the entry submitted, until a member gives its receipt.
    unreceipted: Option<Entry>,
    /// The member it submits to (the leader, as far as it knows).
    member: usize,
    /// Submissions of the current operation so far.
    attempt: u64,
}

/// The simulated cluster.
pub struct World {
    config: Config,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    map: ShardMap,
    registry: Registry,
    sequencer: SequencerNode,
    shards: Vec<ShardNode>,
    clients: Vec<Client>,
    /// Which client and operation each logged entry belongs to.
    owners: BTreeMap<ClientId, (usize, u64)>,
    next_client_id: u128,
    next_value: BTreeMap<u64, u64>,
    history: Recorder,
    run: Run,
    /// Replicas cut off from the network, until when.
    cut: BTreeMap<Node, u64>,
    /// The runtime the world runs on (taken while it runs).
    runtime: Option<tokio::runtime::Runtime>,
    /// Time zero.
    base: Instant,
    /// The sequencer group, when the run has one.
    group: Option<group::Group>,
}

fn sealer_config() -> SealerConfig {
    SealerConfig {
        window_interval: Duration::from_millis(1),
        seal_ahead: None,
        ..SealerConfig::default()
    }
}

impl World {
    /// A fresh cluster for `config`.
    pub fn new(config: Config) -> World {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a tokio runtime");
        let base = runtime.block_on(async { Instant::now() });
        replication::seed_this_thread(config.seed);
        let mut rng = StdRng::seed_from_u64(config.seed);
        let offset = rng.random_range(-(MAX_OFFSET as i64)..=MAX_OFFSET as i64);
        let clients = config.list_clients + config.bank_clients;
        let mut world = World {
            map: ShardMap::uniform(SHARDS),
            registry: bank::registry(),
            sequencer: SequencerNode {
                alive: true,
                life: 0,
                sealer: Sealer::new(sealer_config(), &[], Duration::ZERO),
                log: Vec::new(),
                syncing: None,
                waiting: BTreeMap::new(),
                want_window: false,
                offset,
            },
            shards: Vec::new(),
            clients: (0..clients)
                .map(|i| Client {
                    process: i as u64,
                    op: 0,
                    pending: None,
                    unreceipted: None,
                    member: i % group::MEMBERS,
                    attempt: 0,
                })
                .collect(),
            owners: BTreeMap::new(),
            next_client_id: 1,
            next_value: BTreeMap::new(),
            history: Recorder::simulated(),
            run: Run::default(),
            cut: BTreeMap::new(),
            base,
            runtime: Some(runtime),
            group: None,
            config,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
        };
        if world.config.group {
            world.start_group();
        }
        for n in 0..(SHARDS * world.config.replicas) as usize {
            let engine = Arc::new(SimEngine::default());
            let mvcc = Arc::new(Mvcc::open(engine.clone(), Limits::default()).expect("open"));
            world.shards.push(ShardNode {
                shard: ShardId(n as u32 / world.config.replicas),
                alive: false,
                life: 0,
                engine,
                mvcc,
                step: None,
                published: BTreeMap::new(),
                parked: Vec::new(),
                outstanding: BTreeMap::new(),
                next_req: 0,
                halted: false,
            });
            world.restart_shard(n);
        }
        if !world.config.group {
            world.at(0, Ev::SealTimer);
        }
        for client in 0..clients {
            let start = world.rng.random_range(0..1_000);
            world.at(start, Ev::ClientNext { client });
        }
        if world.config.faults {
            world.plan_faults();
        }
        world
    }

    fn plan_faults(&mut self) {
        let run_for = self.config.run_for;
        for node in 0..self.shards.len() {
            let first_flush = self.rng.random_range(0..5_000);
            self.at(first_flush, Ev::Flush { node });
            for _ in 0..self.rng.random_range(0..=2) {
                let at = self.rng.random_range(0..run_for);
                self.at(at, Ev::CrashShard { node });
                let down = self.rng.random_range(1_000..30_000);
                self.at(at + down, Ev::RestartShard { node });
            }
            if self.rng.random_bool(0.5) {
                let at = self.rng.random_range(0..run_for);
                let length = self.rng.random_range(1_000..20_000);
                self.at(at, Ev::Partition { node, length });
            }
        }
        if self.config.group {
            return self.plan_group_faults();
        }
        let sequencer_crashes = match self.config.bug {
            Some(Bug::LoseDurableWindow) => 3,
            _ => self.rng.random_range(0..=1),
        };
        for _ in 0..sequencer_crashes {
            let at = self.rng.random_range(0..run_for);
            self.at(at, Ev::CrashSequencer);
            let down = self.rng.random_range(1_000..20_000);
            self.at(at + down, Ev::RestartSequencer);
        }
    }

    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at, seq: self.seq, ev }));
    }

    fn after(&mut self, delay: u64, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    /// Sends `ev` over the network: delayed, sometimes much (so reordered), sometimes lost.
    fn send(&mut self, ev: Ev) {
        self.send_from(None, ev);
    }

    /// [`World::send`] by replica `from` (when the event does not name its sender): lost if
    /// the sender or the receiver is cut off.
    fn send_from(&mut self, from: Option<Node>, ev: Ev) {
        let ends = match &ev {
            Ev::Fetch { node, .. } | Ev::Deliver { node, .. } => [Some(*node), from],
            Ev::Request { to, from: sender, .. } => [Some(*to), Some(*sender)],
            Ev::Reply { to, .. } => [Some(*to), from],
            _ => [from, None],
        };
        if ends
            .into_iter()
            .flatten()
            .any(|n| self.cut.get(&n).is_some_and(|until| *until > self.now))
        {
            self.run.stats.lost += 1;
            return;
        }
        if self.config.faults && self.rng.random_bool(0.02) {
            self.run.stats.lost += 1;
            return;
        }
        let delay = if self.rng.random_bool(0.02) {
            self.rng.random_range(1_000..8_000)
        } else {
            self.rng.random_range(20..400)
        };
        self.after(delay, ev);
    }

    /// [`World::send`] to or from group member `member`: lost while it is cut off.
    fn send_member(&mut self, member: usize, ev: Ev) {
        if self.group.as_ref().is_some_and(|g| g.hub.is_cut(member)) {
            self.run.stats.lost += 1;
            return;
        }
        self.send(ev);
    }

    /// Runs to the end: the workload for `run_for`, then until every node has settled.
    pub fn run(mut self) -> Run {
        let runtime = self.runtime.take().expect("a world runs once");
        let (run, group) = runtime.block_on(self.drive());
        // The members' tasks end with the runtime, before their directories go.
        drop(runtime);
        drop(group);
        run
    }

    /// Takes the next world event when its time comes, and the group's output as it appears,
    /// output first (biased, so a seed runs the same way every time).
    async fn drive(mut self) -> (Run, Option<group::Group>) {
        let deadline = self.config.run_for + SETTLE;
        let mut output = self.group.as_mut().map(|g| g.take_output());
        while let Some(Reverse(next)) = self.queue.peek() {
            let at = self.base + group::tokio_time(next.at);
            tokio::select! {
                biased;
                Some(out) = async { output.as_mut()?.recv().await } => {
                    self.now = group::world_time(self.base.elapsed());
                    self.history.set_time(self.now * 1_000);
                    self.on_group_output(out);
                }
                () = tokio::time::sleep_until(at) => {
                    let Some(Reverse(next)) = self.queue.pop() else { break };
                    self.now = next.at;
                    self.history.set_time(self.now * 1_000);
                    self.handle(next.ev);
                }
            }
            if self.now > self.config.run_for && self.settled() {
                break;
            }
            if self.now > deadline {
                self.run.errors.push(format!(
                    "not settled {} s after the run: {}",
                    SETTLE / 1_000_000,
                    self.unsettled()
                ));
                break;
            }
        }
        if self.group.is_some() {
            self.finish_group();
        }
        let group = self.group.take();
        (self.finish(), group)
    }

    fn settled(&self) -> bool {
        self.unsettled().is_empty()
    }

    /// What has not settled yet, or nothing.
    fn unsettled(&self) -> String {
        let mut why = Vec::new();
        let last = match &self.group {
            Some(group) => group.unsettled(&mut why),
            None => {
                if !self.sequencer.alive || self.sequencer.syncing.is_some() {
                    why.push("the sequencer is down or syncing".to_string());
                }
                if self.sequencer.sealer.open_len() > 0 {
                    why.push("entries are waiting to be sealed".to_string());
                }
                self.sequencer.log.last().map_or(Epoch(0), |w| w.epoch)
            }
        };
        for (i, c) in self.clients.iter().enumerate() {
            if c.pending.is_some() {
                why.push(format!("client {i} waits"));
            }
        }
        for (n, node) in self.shards.iter().enumerate() {
            let s = format!("{} replica {}", node.shard.0, self.replica_index(n));
            match &node.step {
                _ if node.halted => why.push(format!("shard {s} halted")),
                None => why.push(format!("shard {s} is down")),
                Some(step) if step.is_busy() || step.applied().0 != last => {
                    why.push(format!("shard {s} at {} of {last}", step.applied().0))
                }
                Some(step) if step.deferred().next().is_some() => {
                    why.push(format!("shard {s} has deferred entries"))
                }
                Some(_) => {}
            }
        }
        why.join("; ")
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::SealTimer => {
                self.seal();
                self.after(1_000, Ev::SealTimer);
            }
            Ev::Fsynced { life } => self.fsynced(life),
            Ev::Submit { entry, member, client, op } if self.group.is_some() => {
                self.submit_to_member(entry, member, client, op)
            }
            Ev::Submit { entry, .. } => {
                if self.sequencer.alive {
                    let now = Duration::from_micros(self.now);
                    let _ = self.sequencer.sealer.submit(entry, now);
                }
            }
            Ev::Receipt { client, op, result } => self.receipt(client, op, result),
            Ev::Resubmit { client, op, attempt, rotate } => {
                let c = &mut self.clients[client];
                if c.op == op && c.attempt == attempt && c.unreceipted.is_some() {
                    if rotate {
                        c.member = (c.member + 1) % group::MEMBERS;
                    }
                    self.submit(client);
                }
            }
            Ev::Fetch { node, epoch, member } if self.group.is_some() => {
                self.fetch_from_member(node, epoch, member)
            }
            Ev::Fetch { node, epoch, .. } => {
                if !self.sequencer.alive {
                    return;
                }
                match self.sequencer.log.get(epoch.0 as usize - 1).cloned() {
                    Some(window) => self.send(Ev::Deliver { node, window }),
                    None => {
                        self.sequencer.waiting.insert(node, epoch);
                    }
                }
            }
            Ev::WantWindow { member } => match &self.group {
                Some(group) => group.request_window(member),
                None => self.sequencer.want_window = true,
            },
            Ev::Deliver { node, window } => self.deliver(node, &window),
            Ev::Request { to, from, life, req, ask } => self.answer(to, from, life, req, ask),
            Ev::Reply { to, life, req, event } => {
                let node = &mut self.shards[to];
                if node.alive && node.life == life && node.outstanding.remove(&req).is_some() {
                    self.feed(to, event);
                }
            }
            Ev::Retry { node: n, life, req } => {
                let node = &self.shards[n];
                if node.alive
                    && node.life == life
                    && let Some((shard, ask)) = node.outstanding.get(&req).cloned()
                {
                    self.run.stats.retries += 1;
                    // Any replica of the shard: the one asked before may be down.
                    let to = self.replica_of(shard);
                    self.send(Ev::Request { to, from: n, life, req, ask });
                    self.after(RETRY, Ev::Retry { node: n, life, req });
                }
            }
            Ev::Poll { node: n, life } => {
                let node = &self.shards[n];
                if node.life != life || !node.alive {
                    return;
                }
                if let Some(step) = &node.step
                    && !step.is_busy()
                {
                    let epoch = step.next_epoch();
                    self.fetch(n, epoch);
                }
                self.after(5_000, Ev::Poll { node: n, life });
            }
            Ev::Flush { node: n } => {
                let node = &self.shards[n];
                if node.alive {
                    node.mvcc.flush().expect("an in-memory flush");
                }
                let next = self.rng.random_range(1_000..20_000);
                self.after(next, Ev::Flush { node: n });
            }
            Ev::Outcome { client, op, outcome } => self.outcome(client, op, outcome),
            Ev::ClientTimeout { client, op } => {
                if self.clients[client].op == op && self.clients[client].pending.is_some() {
                    self.complete(client, Completion::Info, None);
                }
            }
            Ev::ClientNext { client } => self.next_transaction(client),
            Ev::CrashShard { node } => self.crash_shard(node),
            Ev::RestartShard { node } => self.restart_shard(node),
            Ev::CrashSequencer => self.crash_sequencer(),
            Ev::Partition { node, length } => {
                self.run.stats.partitions += 1;
                self.cut.insert(node, self.now + length);
            }
            Ev::RestartSequencer => self.restart_sequencer(),
            Ev::CrashMember { member } => self.crash_member(member),
            Ev::RestartMember { member } => self.restart_member(member),
            Ev::CutMember { member, length } => self.cut_member(member, length),
        }
    }

    /// Sequencer nodes: the group's members, or the one sequencer.
    fn members(&self) -> usize {
        match self.group {
            Some(_) => group::MEMBERS,
            None => 1,
        }
    }

    /// Replica `n` asks a sequencer node (any member of a group) for window `epoch`.
    fn fetch(&mut self, n: Node, epoch: Epoch) {
        let member = self.rng.random_range(0..self.members());
        match self.group {
            Some(_) => self.send_member(member, Ev::Fetch { node: n, epoch, member }),
            None => self.send(Ev::Fetch { node: n, epoch, member }),
        }
    }

    // ---- the sequencer ----

    fn seal(&mut self) {
        let s = &mut self.sequencer;
        if !s.alive || s.syncing.is_some() || (s.sealer.open_len() == 0 && !s.want_window) {
            return;
        }
        s.want_window = false;
        let clock = (self.now as i64 + s.offset).max(0) as u64;
        let ts = Timestamp::from_unix_duration(Duration::from_micros(clock));
        let window = s.sealer.seal(ts, Duration::from_micros(self.now));
        s.syncing = Some(window);
        let life = s.life;
        let fsync = self.rng.random_range(100..2_000);
        self.after(fsync, Ev::Fsynced { life });
    }

    fn fsynced(&mut self, life: u64) {
        let s = &mut self.sequencer;
        if !s.alive || s.life != life {
            return;
        }
        let Some(window) = s.syncing.take() else { return };
        let window = Arc::new(window);
        s.log.push(window.clone());
        self.run.stats.windows += 1;
        let ids = window.entries.iter().map(|e| e.client_id).collect();
        self.run.logged.push((0, window.epoch, window.ts, ids));
        let s = &mut self.sequencer;
        let waiting: Vec<Node> =
            s.waiting.iter().filter(|(_, e)| **e == window.epoch).map(|(node, _)| *node).collect();
        for node in waiting {
            self.sequencer.waiting.remove(&node);
            self.send(Ev::Deliver { node, window: window.clone() });
        }
    }

    fn crash_sequencer(&mut self) {
        let s = &mut self.sequencer;
        if !s.alive {
            return;
        }
        self.run.stats.crashes += 1;
        s.alive = false;
        s.life += 1;
        s.syncing = None;
        s.waiting.clear();
        if self.config.bug == Some(Bug::LoseDurableWindow) {
            s.log.pop();
        }
    }

    fn restart_sequencer(&mut self) {
        let history: Vec<Window> = self.sequencer.log.iter().map(|w| (**w).clone()).collect();
        let offset = self.rng.random_range(-(MAX_OFFSET as i64)..=MAX_OFFSET as i64);
        let s = &mut self.sequencer;
        s.sealer = Sealer::new(sealer_config(), &history, Duration::from_micros(self.now));
        s.offset = offset;
        s.alive = true;
    }

    // ---- the shards ----

    /// Which replica of its shard `node` is.
    fn replica_index(&self, node: Node) -> u32 {
        node as u32 % self.config.replicas
    }

    /// A replica of `shard`, drawn at random (a caller goes to any).
    fn replica_of(&mut self, shard: ShardId) -> Node {
        let r = self.rng.random_range(0..self.config.replicas);
        (shard.0 * self.config.replicas + r) as usize
    }

    fn crash_shard(&mut self, n: Node) {
        let keep = match self.config.bug {
            Some(Bug::TornWatermark) => Keep::TornWatermark,
            _ => Keep::Durable,
        };
        let node = &mut self.shards[n];
        if !node.alive {
            return;
        }
        self.run.stats.crashes += 1;
        node.alive = false;
        node.life += 1;
        node.step = None;
        node.published.clear();
        node.parked.clear();
        node.outstanding.clear();
        node.engine = Arc::new(node.engine.crash(keep));
    }

    fn restart_shard(&mut self, n: Node) {
        let node = &mut self.shards[n];
        if node.alive || node.halted {
            return;
        }
        let shard = node.shard;
        node.mvcc = Arc::new(Mvcc::open(node.engine.clone(), Limits::default()).expect("open"));
        let executor =
            Executor::new(shard, self.map.clone(), self.registry.clone(), Limits::default());
        let step = Step::open(executor, self.map.clone(), node.mvcc.clone(), Arc::new(Distant));
        node.step = Some(step.expect("a step over an in-memory engine"));
        node.alive = true;
        let life = node.life;
        self.feed(n, Event::Started);
        self.after(0, Ev::Poll { node: n, life });
    }

    fn deliver(&mut self, n: Node, window: &Window) {
        let node = &self.shards[n];
        let shard = node.shard;
        let Some(step) = node.step.as_ref().filter(|_| node.alive) else { return };
        if step.is_busy() || window.epoch != step.next_epoch() {
            return; // a duplicate, or one already applied
        }
        let slice = window.slice(shard).map(|(t, e)| (t, e.clone())).collect();
        self.feed(n, Event::Window { epoch: window.epoch, ts: window.ts, slice });
        self.feed(n, Event::Durable(window.epoch));
    }

    /// Gives `event` to `shard`'s step and carries out what it asks.
    fn feed(&mut self, n: Node, event: Event) {
        let node = &mut self.shards[n];
        let Some(step) = node.step.as_mut() else { return };
        if let Err(e) = step.handle(event) {
            self.run.errors.push(format!("shard {} node {n} stopped: {e}", node.shard.0));
            node.halted = true;
            node.alive = false;
            node.step = None;
            return;
        }
        while let Some(command) = self.shards[n].step.as_mut().and_then(Step::next_command) {
            self.perform(n, command);
        }
    }

    fn perform(&mut self, n: Node, command: Command) {
        let shard = self.shards[n].shard;
        let replica = (shard, self.replica_index(n));
        match command {
            Command::ReadRemote { window, shard: to, at, points, scans, .. } => {
                self.request(n, to, Ask::Read { window, at, points, scans });
            }
            // The simulated network carries asks and answers only: pushing is the shard
            // server's shortcut for the same answers.
            Command::PushReads { .. } | Command::PushRunReads { .. } => {}
            Command::PublishVerdicts { window, verdicts, .. } => {
                self.shards[n].published.insert(window, verdicts);
                self.unpark(n);
            }
            Command::PullVerdicts { window, from } => {
                if self.config.bug == Some(Bug::LocalVerdictOnly) {
                    let own = self.shards[n].published[&window].clone();
                    self.feed(n, Event::Verdicts { window, from, verdicts: own });
                } else {
                    self.request(n, from, Ask::Verdicts { window });
                }
            }
            Command::Write(batch) => {
                let node = &self.shards[n];
                let before = node.mvcc.applied().map_or(Epoch(0), |w| w.window);
                self.run.writes.push((replica, batch.window(), before));
                node.mvcc.apply(&batch).expect("an in-memory write");
            }
            Command::Applied { window, decided, finals, digest, .. } => {
                self.run.digests.push((replica, window, digest));
                for (txn, commit) in finals {
                    self.run.verdicts.push((shard, window, txn, commit));
                    self.run.stats.multi_shard_verdicts += 1;
                }
                for (d, client_id) in decided {
                    if let Some((client, op)) = self.owners.get(&client_id).copied() {
                        self.send_from(Some(n), Ev::Outcome { client, op, outcome: d.outcome });
                    }
                }
                let node = &mut self.shards[n];
                node.published.retain(|e, _| *e > window);
                self.unpark(n);
                let node = &self.shards[n];
                if let Some(step) = node.step.as_ref().filter(|s| !s.is_busy()) {
                    let epoch = step.next_epoch();
                    self.fetch(n, epoch);
                }
            }
            Command::RequestWindow { .. } => {
                for member in 0..self.members() {
                    self.send(Ev::WantWindow { member });
                }
            }
        }
    }

    /// Asks `to` (any of its replicas) for something `from`'s step needs.
    fn request(&mut self, from: Node, to: ShardId, ask: Ask) {
        let node = &mut self.shards[from];
        node.next_req += 1;
        let (req, life) = (node.next_req, node.life);
        node.outstanding.insert(req, (to, ask.clone()));
        let to = self.replica_of(to);
        self.send(Ev::Request { to, from, life, req, ask });
        self.after(RETRY, Ev::Retry { node: from, life, req });
    }

    /// Answers a peer's request now if this shard has got far enough, else parks it.
    fn answer(&mut self, n: Node, from: Node, life: u64, req: u64, ask: Ask) {
        let node = &mut self.shards[n];
        let at = node.shard;
        if !node.alive {
            return; // lost with the node; the peer asks again
        }
        let applied = node.mvcc.applied().map_or(Epoch(0), |w| w.window);
        let event = match &ask {
            Ask::Read { window, at: ts, points, scans } if applied.0 + 1 >= window.0 => {
                let mvcc = &node.mvcc;
                let latest = mvcc.applied().map_or(*ts, |w| w.ts);
                let ts = match self.config.bug {
                    Some(Bug::LatestReads) => &latest,
                    _ => ts,
                };
                let points = points
                    .iter()
                    .map(|k| (k.clone(), mvcc.get(k, *ts).expect("a read").map(|v| v.value)))
                    .collect();
                let scans = scans
                    .iter()
                    .map(|(range, limit)| {
                        let rows = mvcc.scan(range, *ts, *limit).expect("a scan");
                        (
                            (range.clone(), *limit),
                            rows.into_iter().map(|(k, v)| (k, v.value)).collect(),
                        )
                    })
                    .collect();
                Event::RemoteRead { window: *window, shard: at, points, scans }
            }
            Ask::Verdicts { window } if node.published.contains_key(window) => {
                let verdicts = node.published[window].clone();
                Event::Verdicts { window: *window, from: at, verdicts }
            }
            Ask::Verdicts { window } if applied >= *window => {
                let verdicts = txn::stored_verdicts(&node.mvcc, *window).expect("stored verdicts");
                Event::Verdicts { window: *window, from: at, verdicts }
            }
            _ => {
                node.parked.push((from, life, req, ask));
                return;
            }
        };
        self.send_from(Some(n), Ev::Reply { to: from, life, req, event });
    }

    fn unpark(&mut self, n: Node) {
        let parked = std::mem::take(&mut self.shards[n].parked);
        for (from, life, req, ask) in parked {
            self.answer(n, from, life, req, ask);
        }
    }

    // ---- the clients ----

    fn next_transaction(&mut self, client: usize) {
        if self.now > self.config.run_for {
            return;
        }
        let (work, request) = if client < self.config.list_clients {
            let mut mops = Vec::new();
            let mut ops = Vec::new();
            for _ in 0..self.rng.random_range(1..=3) {
                let key = self.rng.random_range(0..LIST_KEYS);
                if self.rng.random_bool(0.5) {
                    mops.push(Mop::Read(key, None));
                    ops.push(ListOp::Read(key));
                } else {
                    let value = self.next_value.entry(key).or_insert(0);
                    *value += 1;
                    mops.push(Mop::Append(key, *value));
                    ops.push(ListOp::Append(key, *value));
                }
            }
            self.history.invoke(self.clients[client].process, &mops);
            (Work::List(mops), self.call("list_append", encode_list_ops(&ops)))
        } else if self.rng.random_bool(0.8) {
            let from = self.rng.random_range(0..bank::ACCOUNTS);
            let to = (from + self.rng.random_range(1..bank::ACCOUNTS)) % bank::ACCOUNTS;
            let amount = self.rng.random_range(1..120);
            (Work::Transfer, self.call("transfer", bank::transfer_args(from, to, amount)))
        } else {
            (Work::Audit, self.call("audit", Vec::new()))
        };
        let c = &mut self.clients[client];
        c.op += 1;
        c.pending = Some(work);
        let op = c.op;
        let client_id = ClientId(self.next_client_id);
        self.next_client_id += 1;
        self.owners.insert(client_id, (client, op));
        let participants =
            request.ranges().iter().flat_map(|r| self.map.shards_of(r)).collect::<Vec<_>>();
        let entry = Entry::new(client_id, participants, request.into_payload());
        match self.group {
            Some(_) => {
                self.clients[client].unreceipted = Some(entry);
                self.clients[client].attempt = 0;
                self.submit(client);
            }
            None => self.send(Ev::Submit { entry, member: 0, client, op }),
        }
        self.after(CLIENT_TIMEOUT, Ev::ClientTimeout { client, op });
    }

    fn call(&self, name: &str, args: Vec<u8>) -> Request {
        let procedure = self.registry.get(name).expect("a registered procedure");
        let ranges = procedure.ranges(&args).expect("valid arguments");
        Request::Procedure { name: name.to_string(), args, ranges }
    }

    fn outcome(&mut self, client: usize, op: u64, outcome: Outcome) {
        if self.clients[client].op != op || self.clients[client].pending.is_none() {
            return; // late, or a second answer after a replay
        }
        match outcome {
            Outcome::Committed { output, .. } => {
                self.complete(client, Completion::Ok, Some(output))
            }
            Outcome::Aborted(_) | Outcome::Conflict { .. } => {
                self.complete(client, Completion::Fail, None)
            }
        }
    }

    fn complete(&mut self, client: usize, completion: Completion, output: Option<Vec<u8>>) {
        let c = &mut self.clients[client];
        let process = c.process;
        c.unreceipted = None;
        match c.pending.take().expect("a pending transaction") {
            Work::List(mops) => {
                let mut mops = mops;
                if let Some(output) = &output {
                    let mut reads =
                        decode_list_output(output).expect("list-append output").into_iter();
                    for mop in &mut mops {
                        match mop {
                            Mop::Read(_, seen) => *seen = Some(reads.next().unwrap_or_default()),
                            Mop::Append(k, v) => self.run.acknowledged_appends.push((*k, *v)),
                        }
                    }
                }
                self.history.complete(process, completion, &mops);
                if completion == Completion::Info {
                    // A process whose last operation is unknown is never reused (Jepsen's rule).
                    self.clients[client].process +=
                        (self.config.list_clients + self.config.bank_clients) as u64;
                }
            }
            Work::Audit => {
                if let Some(output) = output {
                    self.run.audits.push(bank::audited(&output));
                }
            }
            Work::Transfer => {}
        }
        if completion == Completion::Ok {
            self.run.stats.committed += 1;
        }
        let think = self.rng.random_range(0..500);
        self.after(think, Ev::ClientNext { client });
    }

    // ---- the end ----

    fn finish(mut self) -> Run {
        // Replica 0 of each shard (the invariant `replicas agree` holds them equal).
        let latest = |world: &World, key: &[u8]| {
            let n = world.map.shard_of(key).0 * world.config.replicas;
            let node = &world.shards[n as usize];
            let at = node.mvcc.applied().map_or(Timestamp::ZERO, |w| w.ts);
            node.mvcc.get(key, at).expect("a read").map(|v| v.value)
        };
        for k in 0..LIST_KEYS {
            let list = decode_list(latest(&self, &list_key(k)).as_deref()).expect("a list");
            self.run.final_lists.insert(k, list);
        }
        self.run.final_balances = (0..bank::ACCOUNTS)
            .map(|i| bank::stored_balance(latest(&self, &bank::account(i))))
            .collect();
        self.run.history = self.history.to_jsonl();
        self.run
    }
}
