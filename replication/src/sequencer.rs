//! [`GroupSequencer`]: one node of the sequencer group, offering what the single-node
//! [`sequencer::Sequencer`] offers (submit with a receipt once durable, subscriptions to
//! durable windows and idle ticks, windows on request), with the group behind it.
//!
//! ```text
//!   submit ──> (bounded queue) ──> sealing task ──client_write(Proposal)──> raft (majority)
//!      ^                            │ leader only; one proposal in flight,     │
//!      └── receipt (epoch, index) ──┘ the next gathers what arrived meanwhile  v
//!   subscribe(from) <── committed windows and ticks ──────────────── StateMachine (every node)
//! ```
//!
//! - On a node that is not the leader, a submission fails with
//!   [`SequencerError::NotLeader`] naming the leader: nothing was logged.
//! - A window is acknowledged only once raft committed it (a majority fsynced it); a failed
//!   proposal (lost leadership, no quorum) answers [`SequencerError::Unavailable`]: the entry
//!   may or may not be logged, and resubmitting it under the same client id is safe.
//! - Idle ticks go through the log (`Proposal::tick`): safe time is what the group agreed on,
//!   so a deposed leader that wakes up can never promise any shard a timestamp that a later
//!   window goes below.
//! - Subscriptions may be served by any node: they read committed windows only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clock::{Clock, Epoch, Timestamp};
use openraft::error::{ClientWriteError, RaftError};
use sequencer::{Delivery, Entry, OnReceipt, Receipt, SequencerError, TxnId};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::state_machine::StateView;
use crate::types::{NodeId, Proposal, Raft};

/// When the group's leader seals and ticks.
#[derive(Debug, Clone, Copy)]
pub struct GroupConfig {
    /// A tick is logged after this long without a window.
    pub tick_interval: Duration,
    /// The most entries one window holds.
    pub max_window_entries: usize,
    /// The most bytes of entries one window holds.
    pub max_window_bytes: usize,
    /// Submissions waiting to be sealed, at most; more are refused as busy.
    pub queue: usize,
}

impl Default for GroupConfig {
    fn default() -> GroupConfig {
        GroupConfig {
            tick_interval: Duration::from_millis(50),
            max_window_entries: 10_000,
            max_window_bytes: 16 << 20,
            queue: 65_536,
        }
    }
}

/// A member's view of its group ([`GroupSequencer::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The member answering.
    pub member: NodeId,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// The leader's address.
    pub leader_addr: Option<String>,
    /// The raft term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// The last index it applied.
    pub last_applied_index: Option<u64>,
}

/// What a member's proposals took: how many committed, and the time from proposing to commit.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Windows this member proposed and saw committed.
    pub committed: AtomicU64,
    /// Their total time from proposal to commit, in microseconds.
    pub micros: AtomicU64,
}

/// One node of the sequencer group.
pub struct GroupSequencer {
    id: NodeId,
    stats: Arc<CommitStats>,
    raft: Raft,
    view: StateView,
    submissions: mpsc::Sender<(Entry, OnReceipt)>,
    want_window: Arc<Notify>,
    sealing: JoinHandle<()>,
    /// The highest truncation this node proposed.
    truncated: AtomicU64,
}

impl GroupSequencer {
    /// Runs node `id`'s sealing task on the current runtime.
    pub fn start(
        id: NodeId,
        raft: Raft,
        view: StateView,
        clock: Arc<Clock>,
        config: GroupConfig,
    ) -> GroupSequencer {
        let (submissions, queue) = mpsc::channel(config.queue.max(1));
        let want_window = Arc::new(Notify::new());
        let stats = Arc::new(CommitStats::default());
        let sealer = Sealing {
            id,
            raft: raft.clone(),
            view: view.clone(),
            clock,
            config,
            want: want_window.clone(),
            stats: stats.clone(),
        };
        let sealing = tokio::spawn(sealer.run(queue));
        GroupSequencer {
            id,
            stats,
            raft,
            view,
            submissions,
            want_window,
            sealing,
            truncated: AtomicU64::new(0),
        }
    }

    /// Submits `entry`; `on_receipt` gets its receipt once its window is committed, or why it
    /// was not logged.
    pub fn submit_then(&self, entry: Entry, on_receipt: OnReceipt) {
        if let Err(leader) = self.leading() {
            return on_receipt(Err(SequencerError::NotLeader { leader }));
        }
        if let Err(e) = self.submissions.try_send((entry, on_receipt)) {
            let (full, (_, on_receipt)) = match e {
                mpsc::error::TrySendError::Full(x) => (true, x),
                mpsc::error::TrySendError::Closed(x) => (false, x),
            };
            on_receipt(Err(match full {
                true => SequencerError::Unavailable("too many submissions are waiting".into()),
                false => SequencerError::ShuttingDown,
            }));
        }
    }

    /// `Ok` if this node believes it leads; else the leader's address, if known.
    pub fn leading(&self) -> Result<(), Option<String>> {
        let view = self.status();
        match view.leader == Some(self.id) {
            true => Ok(()),
            false => Err(view.leader_addr),
        }
    }

    /// Why this member's raft stopped, if it failed (its storage or state machine refused an
    /// entry): the node should exit rather than linger. `None` while it runs, and after an
    /// orderly shutdown.
    pub fn failure(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
            Err(e) => Some(format!("the group's raft stopped: {e}")),
        }
    }

    /// This member's view of the group: itself, the leader it knows (id and address), the
    /// term, its last log index and the last index it applied.
    pub fn status(&self) -> GroupView {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader;
        let leader_addr = leader
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        GroupView {
            member: self.id,
            leader,
            leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
        }
    }

    /// What this member's proposals took, while it led.
    pub fn commit_stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Asks for a window even if nothing is submitted (entries were deferred to it).
    pub fn request_window(&self) {
        self.want_window.notify_one();
    }

    /// The last committed window and the timestamp every later one is stamped above.
    pub fn last_logged(&self) -> (Epoch, Timestamp) {
        self.view.last()
    }

    /// Committed window `epoch`, if this member holds it.
    pub fn window(&self, epoch: Epoch) -> Option<sequencer::Window> {
        self.view.window(epoch)
    }

    /// The first committed window the group still holds (older ones were truncated).
    pub fn first(&self) -> Epoch {
        self.view.first()
    }

    /// Proposes dropping the committed windows below `epoch` (every shard replica has them in
    /// a checkpoint), if this node leads and no truncation at or past it was proposed here.
    /// Applied by every member when committed.
    pub async fn truncate_below(&self, epoch: Epoch) -> Result<(), SequencerError> {
        if let Err(leader) = self.leading() {
            return Err(SequencerError::NotLeader { leader });
        }
        if self.truncated.fetch_max(epoch.0, Ordering::SeqCst) >= epoch.0 {
            return Ok(());
        }
        match self.raft.client_write(Proposal::truncate_below(self.view.base(), epoch)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // Proposed again with the next report.
                self.truncated.fetch_min(epoch.0.saturating_sub(1), Ordering::SeqCst);
                Err(SequencerError::Unavailable(format!("proposing a truncation: {e}")))
            }
        }
    }

    /// Committed windows from `from` on, then idle ticks and later windows as they commit, in
    /// order; at most `capacity` waiting. Ends when the receiver is dropped, or when the
    /// windows it needs next are truncated (a subscription from there is refused).
    pub fn subscribe(&self, from: Epoch, capacity: usize) -> mpsc::Receiver<Delivery> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut view = self.view.clone();
        tokio::spawn(async move {
            let mut next = Epoch(from.0.max(1));
            let mut told = Timestamp::ZERO;
            loop {
                if next < view.first() {
                    return; // truncated under a subscriber that fell that far behind
                }
                while let Some(window) = view.window(next) {
                    told = told.max(window.ts);
                    if tx.send(Delivery::Window(Arc::new(window))).await.is_err() {
                        return;
                    }
                    next = next.next();
                }
                let (last, ts) = view.last();
                // Caught up: the group promised nothing will be stamped at or below `ts`.
                if last < next && ts > told {
                    told = ts;
                    if tx.send(Delivery::Tick(ts)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    biased; // in order, so a simulation runs the same way every time
                    () = view.changed() => {}
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }

    /// Stops the sealing task; what it was proposing may or may not commit.
    pub async fn shutdown(self) {
        self.sealing.abort();
        let _ = self.sealing.await;
    }
}

/// The leader's sealing loop.
struct Sealing {
    id: NodeId,
    raft: Raft,
    /// The committed state, for the base its proposals carry.
    view: StateView,
    clock: Arc<Clock>,
    config: GroupConfig,
    want: Arc<Notify>,
    stats: Arc<CommitStats>,
}

impl Sealing {
    async fn run(self, mut queue: mpsc::Receiver<(Entry, OnReceipt)>) {
        // A submission that did not fit the last window opens the next one.
        let mut carried: Option<(Entry, OnReceipt)> = None;
        loop {
            let first = match carried.take() {
                Some(submission) => Some(submission),
                None => tokio::select! {
                    // Submissions first, and in order, so a simulation runs the same way
                    // every time.
                    biased;
                    next = queue.recv() => match next {
                        Some(submission) => Some(submission),
                        None => return,
                    },
                    () = self.want.notified() => None,
                    () = tokio::time::sleep(self.config.tick_interval) => {
                        self.tick().await;
                        continue;
                    }
                },
            };
            // Group commit: everything that arrived while the last proposal was committed.
            let mut batch: Vec<(Entry, OnReceipt)> = first.into_iter().collect();
            let mut bytes: usize = batch.iter().map(|(e, _)| e.size()).sum();
            while batch.len() < self.config.max_window_entries {
                match queue.try_recv() {
                    Ok(s) if bytes + s.0.size() <= self.config.max_window_bytes => {
                        bytes += s.0.size();
                        batch.push(s);
                    }
                    Ok(s) => {
                        carried = Some(s);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.propose(batch).await;
        }
    }

    async fn propose(&self, batch: Vec<(Entry, OnReceipt)>) {
        let entries: Vec<Entry> = batch.iter().map(|(e, _)| e.clone()).collect();
        let started = std::time::Instant::now();
        let proposal = Proposal::new(self.view.base(), self.clock.now(), &entries);
        let written = self.raft.client_write(proposal).await;
        match written {
            Ok(response) => {
                self.stats.committed.fetch_add(1, Ordering::Relaxed);
                let micros = started.elapsed().as_micros() as u64;
                self.stats.micros.fetch_add(micros, Ordering::Relaxed);
                for ((_, on_receipt), r) in batch.into_iter().zip(response.data.receipts) {
                    on_receipt(Ok(Receipt {
                        txn: TxnId { epoch: Epoch(r.epoch), index: r.index },
                        ts: Timestamp::from_u64(r.ts),
                        duplicate: r.duplicate,
                    }));
                }
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let leader = f.leader_node.map(|n| n.addr);
                for (_, on_receipt) in batch {
                    on_receipt(Err(SequencerError::NotLeader { leader: leader.clone() }));
                }
            }
            Err(e) => {
                for (_, on_receipt) in batch {
                    on_receipt(Err(SequencerError::Unavailable(e.to_string())));
                }
            }
        }
    }

    /// Logs an idle tick, if this node leads.
    async fn tick(&self) {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return;
        }
        let tick = Proposal::tick(self.view.base(), self.clock.now());
        if let Err(e) = self.raft.client_write(tick).await {
            tracing::debug!(error = %e, "an idle tick was not logged");
        }
    }
}
