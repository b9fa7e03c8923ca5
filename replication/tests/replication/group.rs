//! Three sequencer nodes over an in-memory network that can cut nodes off, or over gRPC on
//! loopback: what the group promises, checked on every node's committed windows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config};
use replication::{
    GroupConfig, GroupSequencer, GrpcNetwork, LogStore, NodeId, Proposal, ProposedEntry, Raft,
    RaftService, Receipt, StateMachine, StateView, TypeConfig,
};
use sequencer::{ClientId, Delivery, Entry, SequencerError, ShardId};
use tempfile::TempDir;

/// Which nodes run, and which are cut off from the others.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
    cut: Arc<Mutex<BTreeSet<NodeId>>>,
}

impl Router {
    fn reach(&self, from: NodeId, to: NodeId) -> Result<Raft, Unreachable> {
        let cut = self.cut.lock().unwrap();
        let unreachable = || Unreachable::new(&std::io::Error::other(format!("{from} -/-> {to}")));
        if cut.contains(&from) || cut.contains(&to) {
            return Err(unreachable());
        }
        self.nodes.lock().unwrap().get(&to).cloned().ok_or_else(unreachable)
    }
}

/// One node's view of the network.
struct Net {
    router: Router,
    me: NodeId,
}

struct Conn {
    router: Router,
    me: NodeId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _: &BasicNode) -> Conn {
        Conn { router: self.router.clone(), me: self.me, target }
    }
}

type Rpc<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        let raft = self.router.reach(self.me, self.target).map_err(RPCError::Unreachable)?;
        let answer = raft.append_entries(rpc).await;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let raft = self.router.reach(self.me, self.target).map_err(RPCError::Unreachable)?;
        let answer = raft.install_snapshot(rpc).await;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _: RPCOption) -> Rpc<VoteResponse<NodeId>> {
        let raft = self.router.reach(self.me, self.target).map_err(RPCError::Unreachable)?;
        let answer = raft.vote(rpc).await;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// How the nodes talk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Direct calls through the [`Router`], which can cut nodes off.
    Memory,
    /// `sealdb.v1.Raft` over gRPC on loopback.
    Grpc,
}

/// Three nodes, each with its own directory.
struct Group {
    router: Router,
    transport: Transport,
    dirs: BTreeMap<NodeId, TempDir>,
    views: BTreeMap<NodeId, StateView>,
    /// Over gRPC: each node's address and its server task.
    addrs: BTreeMap<NodeId, std::net::SocketAddr>,
    servers: BTreeMap<NodeId, tokio::task::JoinHandle<()>>,
    config: Arc<Config>,
}

const NODES: [NodeId; 3] = [1, 2, 3];

impl Group {
    async fn start(transport: Transport) -> Group {
        let config = Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            // Snapshots (and purges) often, so the test exercises them.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20),
            max_in_snapshot_log_to_keep: 5,
            ..Config::default()
        };
        let mut group = Group {
            router: Router::default(),
            transport,
            dirs: BTreeMap::new(),
            views: BTreeMap::new(),
            addrs: BTreeMap::new(),
            servers: BTreeMap::new(),
            config: Arc::new(config.validate().unwrap()),
        };
        for id in NODES {
            group.dirs.insert(id, tempfile::tempdir().unwrap());
            group.boot(id).await;
        }
        let node = |id: &NodeId| match group.addrs.get(id) {
            Some(addr) => BasicNode::new(addr.to_string()),
            None => BasicNode::new(format!("node-{id}")),
        };
        let members: BTreeMap<NodeId, BasicNode> = NODES.iter().map(|id| (*id, node(id))).collect();
        group.raft(1).initialize(members).await.unwrap();
        group
    }

    /// Starts node `id` from what its directory holds.
    async fn boot(&mut self, id: NodeId) {
        let dir = self.dirs[&id].path();
        let log = LogStore::open(dir.join("log")).unwrap();
        let sm = StateMachine::open(dir.join("sm"), 10_000).unwrap();
        self.views.insert(id, sm.view());
        let raft = match self.transport {
            Transport::Memory => {
                let net = Net { router: self.router.clone(), me: id };
                Raft::new(id, self.config.clone(), net, log, sm).await.unwrap()
            }
            Transport::Grpc => {
                // A restarted node listens where it did before.
                let at = self.addrs.get(&id).copied().unwrap_or(([127, 0, 0, 1], 0).into());
                let listener = tokio::net::TcpListener::bind(at).await.unwrap();
                self.addrs.insert(id, listener.local_addr().unwrap());
                let clock = Arc::new(clock::Clock::system(Duration::from_millis(250)));
                let net = GrpcNetwork::new(clock.clone(), None);
                let raft = Raft::new(id, self.config.clone(), net, log, sm).await.unwrap();
                let service = RaftService::new(raft.clone(), clock, false).server();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let server = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming);
                self.servers.insert(id, tokio::spawn(async move { server.await.unwrap() }));
                raft
            }
        };
        self.router.nodes.lock().unwrap().insert(id, raft);
    }

    fn raft(&self, id: NodeId) -> Raft {
        self.router.nodes.lock().unwrap()[&id].clone()
    }

    /// Stops node `id` as a crash would: it answers nothing more; its disk stays.
    async fn kill(&mut self, id: NodeId) {
        let raft = self.router.nodes.lock().unwrap().remove(&id).unwrap();
        raft.shutdown().await.unwrap();
        if let Some(server) = self.servers.remove(&id) {
            server.abort();
            let _ = server.await;
        }
    }

    /// The leader among the running nodes (not cut off), once there is one.
    async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let running: Vec<(NodeId, Raft)> =
                self.router.nodes.lock().unwrap().iter().map(|(i, r)| (*i, r.clone())).collect();
            let cut = self.router.cut.lock().unwrap().clone();
            for (id, raft) in running.iter().filter(|(id, _)| !cut.contains(id)) {
                let m = raft.metrics().borrow().clone();
                if m.current_leader == Some(*id) {
                    return *id;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader in 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes a window on the leader; returns its receipts.
    async fn propose(&self, ts: u64, client_ids: &[u128]) -> Vec<Receipt> {
        let leader = self.leader().await;
        let entries = client_ids
            .iter()
            .map(|c| ProposedEntry { client_id: *c, participants: vec![0], payload: vec![1] })
            .collect();
        let written = self
            .raft(leader)
            .client_write(Proposal { base: 0, ts, entries, tick: false, truncate_below: None })
            .await
            .unwrap();
        written.data.receipts
    }

    /// Waits until node `id` has applied through epoch `last`.
    async fn caught_up(&self, id: NodeId, last: u64) {
        let mut view = self.views[&id].clone();
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            while view.last().0.0 < last {
                view.wait_past(view.last().0).await;
            }
        });
        waited.await.unwrap_or_else(|_| panic!("node {id} stuck at {:?}", view.last()));
    }
}

/// Every node holds windows 1..=last, stamped in strictly increasing order, each client id in
/// at most one of them, and every receipt's entry where the receipt says.
fn check_windows(group: &Group, last: u64, receipts: &BTreeMap<u128, Receipt>) {
    for id in NODES {
        let view = &group.views[&id];
        let mut previous_ts = None;
        let mut seen = BTreeSet::new();
        for epoch in 1..=last {
            let window = view
                .window(clock::Epoch(epoch))
                .unwrap_or_else(|| panic!("node {id} lacks window {epoch}"));
            assert!(previous_ts < Some(window.ts), "node {id}: window {epoch} not after the last");
            previous_ts = Some(window.ts);
            for entry in &window.entries {
                assert!(seen.insert(entry.client_id.0), "node {id}: {:?} twice", entry.client_id);
            }
        }
        for (client, r) in receipts {
            let window = view.window(clock::Epoch(r.epoch)).unwrap();
            assert_eq!(window.entries[r.index as usize].client_id.0, *client, "node {id}");
            assert_eq!(window.ts.as_u64(), r.ts);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_survive_a_leader_crash_with_consecutive_epochs_and_rising_timestamps() {
    leader_crash(Transport::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_windows_survive_a_leader_crash_too() {
    leader_crash(Transport::Grpc).await;
}

async fn leader_crash(transport: Transport) {
    let mut group = Group::start(transport).await;
    let mut receipts = BTreeMap::new();
    let mut client = 0u128;
    for w in 0..30u64 {
        let ids = [client, client + 1];
        client += 2;
        for (id, r) in ids.iter().zip(group.propose(1_000 + w, &ids).await) {
            assert!(!r.duplicate);
            receipts.insert(*id, r);
        }
    }
    let first_leader = group.leader().await;
    group.kill(first_leader).await;

    // The new leader's clock is far behind the first's: its windows are still stamped above.
    let second_leader = group.leader().await;
    assert_ne!(second_leader, first_leader);
    for w in 0..30u64 {
        let ids = [client];
        client += 1;
        for (id, r) in ids.iter().zip(group.propose(w, &ids).await) {
            receipts.insert(*id, r);
        }
    }
    // A client that resubmits after an unknown outcome gets its first place back.
    let again = group.propose(5, &[0]).await;
    assert_eq!(again, [Receipt { duplicate: true, ..receipts[&0] }]);

    // The crashed node comes back from its disk and catches up.
    group.boot(first_leader).await;
    let last = receipts.values().map(|r| r.epoch).max().unwrap();
    for id in NODES {
        group.caught_up(id, last).await;
    }
    check_windows(&group, last, &receipts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_minority_commits_nothing_and_catches_up_after_healing() {
    let group = Group::start(Transport::Memory).await;
    let mut receipts = BTreeMap::new();
    for c in 0..10u128 {
        receipts.insert(c, group.propose(100, &[c]).await[0]);
    }
    let leader = group.leader().await;
    let cut_off = NODES.into_iter().find(|id| *id != leader).unwrap();
    group.router.cut.lock().unwrap().insert(cut_off);
    // The node cut off cannot commit a window, whatever it believes.
    let isolated = group.raft(cut_off);
    let write = isolated.client_write(Proposal {
        base: 0,
        ts: 1,
        entries: Vec::new(),
        tick: false,
        truncate_below: None,
    });
    let refused = tokio::time::timeout(Duration::from_secs(2), write).await;
    assert!(!matches!(refused, Ok(Ok(_))), "a cut-off node committed a window");
    // The majority goes on.
    for c in 10..20u128 {
        receipts.insert(c, group.propose(200, &[c]).await[0]);
    }
    group.router.cut.lock().unwrap().clear();
    let last = receipts.values().map(|r| r.epoch).max().unwrap();
    for id in NODES {
        group.caught_up(id, last).await;
    }
    check_windows(&group, last, &receipts);
}

type Answer = tokio::sync::oneshot::Receiver<Result<sequencer::Receipt, SequencerError>>;

/// Submits client `client`'s entry to `node`; the answer comes on the receiver.
fn send(node: &GroupSequencer, client: u128) -> Answer {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let entry = Entry::new(ClientId(client), vec![ShardId(0)], Arc::from(&b"x"[..]));
    node.submit_then(entry, Box::new(move |r| drop(tx.send(r))));
    rx
}

/// Submits and waits for the receipt.
async fn submit(node: &GroupSequencer, client: u128) -> Result<sequencer::Receipt, SequencerError> {
    send(node, client).await.expect("every submission is answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_acknowledges_committed_windows_and_a_follower_serves_them_then_ticks() {
    let group = Group::start(Transport::Memory).await;
    let leader = group.leader().await;
    let follower = NODES.into_iter().find(|id| *id != leader).unwrap();
    let clock = Arc::new(clock::Clock::system(Duration::from_millis(250)));
    let config = GroupConfig { tick_interval: Duration::from_millis(20), ..GroupConfig::default() };
    let nodes: BTreeMap<NodeId, GroupSequencer> = NODES
        .into_iter()
        .map(|id| {
            let view = group.views[&id].clone();
            (id, GroupSequencer::start(id, group.raft(id), view, clock.clone(), config))
        })
        .collect();

    // A follower logs nothing and names the leader.
    let refused = submit(&nodes[&follower], 1_000).await.unwrap_err();
    let leader_addr = format!("node-{leader}");
    assert!(
        matches!(&refused, SequencerError::NotLeader { leader: Some(l) } if *l == leader_addr),
        "{refused:?}"
    );

    // 200 concurrent submissions to the leader: each acknowledged once its window committed.
    let mut deliveries = nodes[&follower].subscribe(clock::Epoch(1), 4096);
    let leader_node = &nodes[&leader];
    let answers: Vec<Answer> = (0..200u128).map(|c| send(leader_node, c)).collect();
    let mut receipts = Vec::new();
    for answer in answers {
        receipts.push(answer.await.unwrap().unwrap());
    }
    let last = receipts.iter().map(|r| r.txn.epoch).max().unwrap();
    assert!(last.0 < 200, "group commit puts many entries in a window ({} windows)", last.0);

    // The follower serves every window in order, each receipt's entry where it says, and then
    // an idle tick above the last window: the group logged it.
    let mut windows = Vec::new();
    let tick = loop {
        match tokio::time::timeout(Duration::from_secs(10), deliveries.recv()).await.unwrap() {
            Some(Delivery::Window(w)) => windows.push(w),
            Some(Delivery::Tick(ts)) if windows.last().is_some_and(|w| w.epoch == last) => {
                break ts;
            }
            Some(_) => {}
            None => panic!("the subscription ended"),
        }
    };
    let epochs: Vec<u64> = windows.iter().map(|w| w.epoch.0).collect();
    assert_eq!(epochs, (1..=last.0).collect::<Vec<_>>());
    assert!(tick > windows.last().unwrap().ts);
    for (c, r) in receipts.iter().enumerate() {
        let window = &windows[r.txn.epoch.0 as usize - 1];
        assert_eq!(window.entries[r.txn.index as usize].client_id, ClientId(c as u128));
        assert_eq!(window.ts, r.ts);
    }
    // A resubmission is deduplicated: the first place comes back.
    let again = submit(leader_node, 7).await.unwrap();
    assert_eq!((again.txn, again.duplicate), (receipts[7].txn, true));
    for (_, node) in nodes {
        node.shutdown().await;
    }
}

/// Timestamps a subscriber saw, in order: every window above everything before it, every
/// tick at or above it.
fn assert_time_only_moves_forward(node: NodeId, seen: &[Delivery]) {
    let mut floor = clock::Timestamp::ZERO;
    for d in seen {
        match d {
            Delivery::Window(w) => {
                assert!(w.ts > floor, "node {node}: window {} at {} after {floor}", w.epoch, w.ts);
                floor = w.ts;
            }
            Delivery::Tick(ts) => {
                assert!(*ts >= floor, "node {node}: tick {ts} after {floor}");
                floor = *ts;
            }
            Delivery::Durable(_) => {}
        }
    }
}

/// The stale-promise case: a leader whose clock runs 5 s ahead is cut off while it keeps
/// ticking; the new leader's clock is 5 s behind it. Ticks go through the log, so the cut-off
/// node's ticks never reach a subscriber, and every window after a committed tick is stamped
/// above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_s_ticks_reach_no_subscriber_and_later_windows_stamp_above_every_tick() {
    let group = Group::start(Transport::Memory).await;
    let old = group.leader().await;
    let follower = NODES.into_iter().find(|id| *id != old).unwrap();
    let system: Arc<dyn clock::PhysicalClock> = Arc::new(clock::SystemClock);
    let ahead: Arc<dyn clock::PhysicalClock> =
        Arc::new(clock::OffsetClock::ahead(system.clone(), Duration::from_secs(5)));
    let config = GroupConfig { tick_interval: Duration::from_millis(10), ..GroupConfig::default() };
    let nodes: BTreeMap<NodeId, GroupSequencer> = NODES
        .into_iter()
        .map(|id| {
            let physical: Arc<dyn clock::PhysicalClock> =
                if id == old { ahead.clone() } else { system.clone() };
            let clock = Arc::new(clock::Clock::new(physical, Duration::from_secs(10)));
            let view = group.views[&id].clone();
            (id, GroupSequencer::start(id, group.raft(id), view, clock, config))
        })
        .collect();
    let mut on_old = nodes[&old].subscribe(clock::Epoch(1), 100_000);
    let mut on_follower = nodes[&follower].subscribe(clock::Epoch(1), 100_000);
    for c in 0..10u128 {
        submit(&nodes[&old], c).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // idle: ticks from 5 s ahead commit

    group.router.cut.lock().unwrap().insert(old);
    let new = group.leader().await;
    assert_ne!(new, old);
    tokio::time::sleep(Duration::from_millis(200)).await; // the old one ticks in vain
    for c in 10..20u128 {
        let r = submit(&nodes[&new], c).await.unwrap();
        assert!(r.txn.epoch.0 > 10);
    }
    group.router.cut.lock().unwrap().clear();
    let last = group.views[&new].last().0;
    group.caught_up(old, last.0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let drain = |rx: &mut tokio::sync::mpsc::Receiver<Delivery>| {
        let mut seen = Vec::new();
        while let Ok(d) = rx.try_recv() {
            seen.push(d);
        }
        seen
    };
    let (seen_old, seen_follower) = (drain(&mut on_old), drain(&mut on_follower));
    assert_time_only_moves_forward(old, &seen_old);
    assert_time_only_moves_forward(follower, &seen_follower);
    let windows = |seen: &[Delivery]| -> Vec<(u64, clock::Timestamp)> {
        let w = seen.iter().filter_map(|d| match d {
            Delivery::Window(w) => Some((w.epoch.0, w.ts)),
            _ => None,
        });
        w.collect()
    };
    assert_eq!(windows(&seen_old), windows(&seen_follower), "both saw the same windows");
    assert_eq!(windows(&seen_old).len() as u64, last.0);
    for (_, node) in nodes {
        node.shutdown().await;
    }
}
