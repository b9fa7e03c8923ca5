//! The shard server's shell of its [`Step`]: windows from the sequencer's subscription, remote
//! reads and verdicts from what peers pushed or else as concurrent gRPC calls, whose answers
//! come back as events, writes to the shard's storage, outcomes and progress into the state
//! the service answers from.
//!
//! ```text
//!   Subscribe ──window──> Step ──ReadRemote / PullVerdicts──> tasks (pushed, or GrpcPeers)
//!                          │ ^                                    │
//!                          │ └──────────── events (bounded) <─────┘
//!                          └──PushReads / PublishVerdicts──> Pusher (streams to peers)
//! ```
//!
//! One window at a time: the thread takes the next delivery only once the step has written
//! the window in progress, so the calls of a window are all answered (or the node stops)
//! before the next begins. Every call a window needs is started at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ::sequencer::ShardId;
use clock::{Epoch, Timestamp};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::super::metrics::ShardCounters;
use super::peers::{GrpcPeers, PeerError};
use super::push::{Pusher, keep_streaming};
use super::{DIGESTS_KEPT, FENCED_RETRY, PEER_RETRY, State, lock};
use crate::server::clock_agreement;
use client::{RefusalKind, RemoteError, RemoteSequencer, SliceDelivery, stamp};
use proto::v1;
use txn::{Command, Event, Step, StepError};

/// Answers in flight for the window in progress: at most a few per peer, so this bound is
/// never reached in practice; a full queue only slows the calls down.
const EVENT_QUEUE: usize = 1024;

pub(super) struct ApplyLoop {
    state: Arc<State>,
    step: Step,
    peers: Arc<GrpcPeers>,
    pusher: Pusher,
    sequencer: RemoteSequencer,
    handle: Handle,
    events: mpsc::Sender<Event>,
    answers: mpsc::Receiver<Event>,
    /// When this replica last checkpointed (or flushed) its storage; none yet: the first
    /// checkpoint comes with the first window applied.
    flushed_at: Option<std::time::Instant>,
    /// The last window applied and not yet in a checkpoint (its timestamp and digest): an
    /// idle shard checkpoints it once `flush_interval` has passed, so that the log can be
    /// truncated and backups start from it.
    unflushed: Option<(Epoch, Timestamp, u128)>,
    /// When a checkpoint fell due and its flush began: RocksDB's flush thread is writing the
    /// memtables out while windows go on being applied; the checkpoint itself, which flushes
    /// only what was written since and applies nothing meanwhile, waits for it.
    flush_begun: Option<std::time::Instant>,
    /// The last window applied, for the task that reports it to the sequencer (one report in
    /// flight at a time, each with the latest window).
    applied_to: tokio::sync::watch::Sender<Epoch>,
    /// The last window after which this replica wants another sealed, for the task that asks
    /// the sequencer (one request in flight, each for the latest).
    wanted: tokio::sync::watch::Sender<Epoch>,
    /// Set by a call that a peer refused as outside its retention: this replica is replaying
    /// a window older than its peers keep versions for.
    outside_retention: Arc<AtomicBool>,
    /// Time spent waiting for peers' answers since the last window was counted.
    peer_wait: Duration,
}

impl ApplyLoop {
    pub(super) fn new(
        state: Arc<State>,
        step: Step,
        peers: Arc<GrpcPeers>,
        sequencer: RemoteSequencer,
        handle: Handle,
    ) -> ApplyLoop {
        let (events, answers) = mpsc::channel(EVENT_QUEUE);
        let flushed_at = None;
        let (applied_to, applied) = tokio::sync::watch::channel(Epoch(0));
        handle.spawn(report_applied(sequencer.clone(), state.clone(), applied));
        let (wanted, wants) = tokio::sync::watch::channel(Epoch(0));
        handle.spawn(request_windows(sequencer.clone(), state.clone(), wants));
        let pusher = Pusher::start(peers.lane(state.replica), state.clone(), &handle);
        ApplyLoop {
            state,
            step,
            peers,
            pusher,
            sequencer,
            handle,
            events,
            answers,
            flushed_at,
            unflushed: None,
            flush_begun: None,
            applied_to,
            wanted,
            outside_retention: Arc::new(AtomicBool::new(false)),
            peer_wait: Duration::ZERO,
        }
    }

    pub(super) fn run(&mut self) -> Result<(), StepError> {
        let shard = self.state.shard;
        while !self.state.stopping.load(Ordering::SeqCst) {
            let from = self.step.next_epoch();
            let subscribed = self.handle.block_on(self.sequencer.subscribe(shard, from));
            let mut deliveries = match subscribed {
                Ok(d) => {
                    // The sequencer has just accepted this shard's clock: an applied report it
                    // refused before is old news.
                    lock(&self.state.clock_refused).take();
                    d
                }
                Err(RemoteError::ClockSkew(why)) => {
                    self.clock_skew(&why);
                    std::thread::sleep(FENCED_RETRY);
                    continue;
                }
                Err(RemoteError::Refused { kind: RefusalKind::Truncated, why }) => {
                    self.behind_log(&why);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(shard = shard.0, error = %e, "subscribing; retrying");
                    std::thread::sleep(PEER_RETRY);
                    continue;
                }
            };
            self.step.handle(Event::Started)?;
            self.drive()?;
            loop {
                if self.state.stopping.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let delivery = self.handle.block_on(async {
                    tokio::time::timeout(Duration::from_millis(100), deliveries.recv()).await
                });
                match delivery {
                    Err(_) => {
                        // Nothing yet: checkpoint what is applied if it is time; check for
                        // stopping.
                        self.checkpoint_if_due()?;
                        continue;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(RemoteError::ClockSkew(why)))) => {
                        self.clock_skew(&why);
                        std::thread::sleep(FENCED_RETRY);
                        break;
                    }
                    Ok(Some(Err(RemoteError::Refused { kind: RefusalKind::Truncated, why }))) => {
                        self.behind_log(&why);
                        return Ok(());
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
                let refused = lock(&self.state.clock_refused).take();
                if let Some(why) = refused
                    && self.clock_skew(&why)
                {
                    // Fenced: the subscription is dropped, so that only the sequencer's
                    // accepting this shard's clock again ends the fence.
                    std::thread::sleep(FENCED_RETRY);
                    break;
                }
            }
            std::thread::sleep(PEER_RETRY);
        }
        Ok(())
    }

    fn deliver(&mut self, delivery: SliceDelivery) -> Result<(), StepError> {
        match delivery {
            SliceDelivery::Tick(ts) => {
                let mut progress = lock(&self.state.progress);
                progress.safe = progress.safe.max(ts);
                drop(progress);
                self.state.bump();
                // Idle: ticks may come more often than the wait for a delivery times out.
                self.checkpoint_if_due()
            }
            SliceDelivery::Window { epoch, ts, entries } => {
                // Windows come durable from the sequencer's service.
                let began = Instant::now();
                self.step.handle(Event::Window { epoch, ts, slice: entries })?;
                self.step.handle(Event::Durable(epoch))?;
                let driven = self.drive();
                // Both at once, so that a scrape never sees a window's waits without it.
                let c = &self.state.counters;
                ShardCounters::add_time(&c.apply_nanos, began.elapsed());
                ShardCounters::add_time(&c.peer_wait_nanos, std::mem::take(&mut self.peer_wait));
                driven
            }
        }
    }

    /// Carries out the step's commands and feeds it the answers, until the window in progress
    /// is written (or the node stops).
    fn drive(&mut self) -> Result<(), StepError> {
        loop {
            while let Some(command) = self.step.next_command() {
                self.perform(command)?;
            }
            if !self.step.is_busy() {
                return Ok(());
            }
            let state = self.state.clone();
            let waiting = Instant::now();
            let answer = self.handle.block_on(async {
                tokio::select! {
                    answer = self.answers.recv() => answer,
                    () = state.stopped() => None,
                }
            });
            self.peer_wait += waiting.elapsed();
            match answer {
                Some(Event::PeerFailed { shard, why })
                    if self.outside_retention.load(Ordering::SeqCst) =>
                {
                    return Err(self.behind_peers(shard, why));
                }
                Some(event) => self.step.handle(event)?,
                None => return self.step.handle(Event::Stop),
            }
        }
    }

    fn perform(&mut self, command: Command) -> Result<(), StepError> {
        let state = &*self.state;
        match command {
            Command::ReadRemote { window, shard, at, points, scans, pushed, ran } => {
                let peers = self.peers.clone();
                let state = self.state.clone();
                self.answer(
                    async move {
                        // What the peer pushed, if it pushes; the rest is asked for. (With
                        // nothing to read there is nothing to wait for: the verdicts wait.)
                        // After a first run, what the peer's first run read, if it pushes.
                        let (mut came, run_scans) = match (pushed && !points.is_empty(), ran) {
                            (true, _) => (state.pushed_reads(window, shard, at).await, Vec::new()),
                            (false, true) => {
                                match state.pushed_run_reads(window, shard, at).await {
                                    Some(run) => (Some(run.points), run.scans),
                                    None => (None, Vec::new()),
                                }
                            }
                            (false, false) => (None, Vec::new()),
                        };
                        let (mut answered, mut missing) = (Vec::new(), Vec::new());
                        for key in points {
                            match came.as_mut().and_then(|c| c.remove(&key)) {
                                Some(value) => answered.push((key, value)),
                                None => missing.push(key),
                            }
                        }
                        // The rest of a run's reads go along: the next run may read them.
                        answered.extend(came.iter_mut().flat_map(|c| c.drain()));
                        let (mut scanned, mut scans_missing) = (Vec::new(), Vec::new());
                        for (range, limit) in scans {
                            let pushed = run_scans.iter().find_map(|(r, rows, complete)| {
                                (*r == range).then(|| txn::first_rows(rows, *complete, limit))?
                            });
                            match pushed {
                                Some(rows) => scanned.push(((range, limit), rows)),
                                None => scans_missing.push((range, limit)),
                            }
                        }
                        let scans = scans_missing;
                        let c = &state.counters;
                        match (came.is_some(), missing.is_empty() && scans.is_empty()) {
                            (_, false) => ShardCounters::add(&c.reads_asked, 1),
                            (true, true) => {
                                ShardCounters::add(&c.reads_pushed, 1);
                                if ran {
                                    ShardCounters::add(&c.reads_run_pushed, 1);
                                }
                            }
                            (false, true) => {}
                        }
                        // Every key in one request (a few if the values are large), side by
                        // side with the scans.
                        let values = async {
                            match missing.is_empty() {
                                true => Ok(Vec::new()),
                                false => peers.get_many(shard, &missing, at, window).await,
                            }
                        };
                        let rows = async {
                            let mut found = Vec::with_capacity(scans.len());
                            for (range, limit) in &scans {
                                found.push(peers.scan(shard, range, at, window, *limit).await?);
                            }
                            Ok::<_, PeerError>(found)
                        };
                        let (values, rows) = tokio::try_join!(values, rows)?;
                        answered.extend(missing.into_iter().zip(values));
                        let points = answered;
                        scanned.extend(scans.into_iter().zip(rows));
                        let scans = scanned;
                        Ok(Event::RemoteRead { window, shard, points, scans })
                    },
                    shard,
                );
            }
            Command::PushReads { window, to, at, points } => {
                self.pusher.reads(window, to, at, points)?;
            }
            Command::PushRunReads { window, to, at, points, scans } => {
                self.pusher.run_reads(window, to, at, points, scans)?;
            }
            Command::PublishVerdicts { window, verdicts, to } => {
                self.pusher.verdicts(window, &to, &verdicts);
                lock(&state.verdicts).insert(window, verdicts);
                state.bump();
            }
            Command::PullVerdicts { window, from } => {
                let peers = self.peers.clone();
                let state = self.state.clone();
                self.answer(
                    async move {
                        let c = &state.counters;
                        if let Some(verdicts) = state.pushed_verdicts(window, from).await {
                            ShardCounters::add(&c.verdicts_pushed, 1);
                            return Ok(Event::Verdicts { window, from, verdicts });
                        }
                        ShardCounters::add(&c.verdicts_asked, 1);
                        let verdicts = peers.verdicts(from, window).await?;
                        Ok(Event::Verdicts { window, from, verdicts })
                    },
                    from,
                );
            }
            Command::Write(batch) => state.mvcc.apply(&batch)?,
            Command::Applied { window, ts, entries, decided, deferred, digest, .. } => {
                let c = &state.counters;
                ShardCounters::add(&c.windows, 1);
                ShardCounters::add(&c.entries, entries as u64);
                ShardCounters::add(&c.deferred, deferred.len() as u64);
                c.seal_to_apply.observe(state.clock.physical_now().duration_since(ts));
                for (d, _) in &decided {
                    c.outcomes.count(d);
                }
                self.applied(window, ts, decided, deferred, digest);
                self.applied_to.send_replace(window);
                self.unflushed = Some((window, ts, digest));
                self.checkpoint_if_due()?;
            }
            Command::RequestWindow { .. } => self.request_window(),
        }
        Ok(())
    }

    /// Runs `call` on the runtime and feeds its answer back as an event. A refusal fails the
    /// shard (through [`Event::PeerFailed`]); a stopping node answers nothing.
    fn answer(
        &self,
        call: impl Future<Output = Result<Event, PeerError>> + Send + 'static,
        peer: ShardId,
    ) {
        let events = self.events.clone();
        let outside_retention = self.outside_retention.clone();
        self.handle.spawn(async move {
            let event = match call.await {
                Ok(event) => event,
                Err(PeerError::Stopping) => return,
                Err(PeerError::Refused { kind, why, .. }) => {
                    if kind == Some(RefusalKind::OutsideRetention) {
                        outside_retention.store(true, Ordering::SeqCst);
                    }
                    Event::PeerFailed { shard: peer, why }
                }
            };
            let _ = events.send(event).await;
        });
    }

    /// Publishes window `epoch` as applied: outcomes, then the deferred entries, then
    /// progress. `AwaitOutcome` reads them in the reverse order, so a waiter that sees the
    /// window applied finds its outcome. Watchers of the outcomes get theirs once progress
    /// says the window is applied, and no watch registers in between
    /// ([`watchers`](super::watchers)).
    fn applied(
        &self,
        epoch: Epoch,
        ts: Timestamp,
        decided: Vec<(txn::Decided, ::sequencer::ClientId)>,
        deferred: Vec<::sequencer::TxnId>,
        digest: u128,
    ) {
        let state = &*self.state;
        let mut watched = state.watchers.publishing();
        watched.collect(&decided);
        {
            let mut digests = lock(&state.digests);
            if digests.len() >= DIGESTS_KEPT {
                digests.pop_front();
            }
            digests.push_back((epoch, digest));
        }
        lock(&state.outcomes).record(epoch, decided.into_iter().map(|(d, _)| (d.txn, d.outcome)));
        if !deferred.is_empty() || !lock(&state.deferred).is_empty() {
            *lock(&state.deferred) = deferred.into_iter().collect();
        }
        {
            let mut progress = lock(&state.progress);
            progress.applied = epoch;
            progress.safe = progress.safe.max(ts);
            progress.digest = digest;
        }
        watched.send();
        lock(&state.verdicts).retain(|e, _| *e > epoch);
        lock(&state.inbox).applied(epoch);
        state.bump();
    }

    /// The sequencer refused this shard's clock, or this shard the sequencer's. If most of
    /// the other shards refuse this shard's clock too (or there are none to ask), this shard
    /// is the one out of bounds: it fences itself, serving nothing (reads at a timestamp and
    /// commit-wait are only safe within `max_offset`) until the clocks agree again. If most
    /// of them accept it, the sequencer is the one out of bounds: nothing to fence here.
    /// Returns whether this shard is fenced.
    fn clock_skew(&self, why: &str) -> bool {
        let shard = self.state.shard.0;
        let peers = self.peers.clients(self.state.replica);
        let (agree, disagree) = self.handle.block_on(clock_agreement(&peers, self.peers.clock()));
        if agree > disagree {
            tracing::error!(
                shard,
                agree,
                disagree,
                error = why,
                "the sequencer's clock is beyond max_offset of this shard's and most peers'"
            );
            return false;
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
        true
    }

    /// Stops the shard: the log no longer holds its next window (the sequencer truncated past
    /// this replica while it was away, having stopped counting it, or it was cut off). With
    /// fellow replicas, the node starts the shard again, which catches up from a fellow's
    /// checkpoint ([`super::checkpoint`]); without, the node exits.
    fn behind_log(&self, why: &str) {
        let next = self.step.next_epoch().0;
        let fellows = !self.peers.fellows(self.state.replica).is_empty();
        self.state.catch_up.store(fellows, Ordering::SeqCst);
        self.state.fail(match fellows {
            true => format!(
                "the log no longer holds window {next}, the next this replica needs ({why}); \
                 catching up from a fellow replica's checkpoint"
            ),
            false => format!(
                "the log no longer holds window {next}, the next this shard needs ({why}), and \
                 it has no fellow replica to copy a checkpoint from: restore it from a backup"
            ),
        });
    }

    /// The failure of a shard whose peer refused a read for the window in progress as older
    /// than the peer keeps versions for (`retention` plus `replay_allowance`): this replica is
    /// replaying windows further behind its peers than that, which cannot succeed. With fellow
    /// replicas it asks for a catch-up from a fellow's checkpoint holding that window (which
    /// the node's restart of the shard, or of the process, carries out); without, it stops.
    fn behind_peers(&self, peer: ShardId, why: String) -> StepError {
        let window = lock(&self.state.progress).applied.next();
        let requested = match (&self.state.checkpoints, self.peers.fellows(self.state.replica)) {
            (Some(checkpoints), fellows) if !fellows.is_empty() => {
                match checkpoints.request_catch_up(window) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "asking for a catch-up");
                        false
                    }
                }
            }
            _ => false,
        };
        self.state.catch_up.store(requested, Ordering::SeqCst);
        let then = match requested {
            true => "catching up from a fellow replica's checkpoint",
            false => {
                "it cannot go on: restore the cluster from a backup (replay_allowance_ms bounds \
                 how far a replica may fall behind its peers and still replay)"
            }
        };
        StepError::PeerFailed {
            shard: peer,
            why: format!(
                "{why}: replaying window {}, this replica is further behind its peers than they \
                 keep versions for; {then}",
                window.0
            ),
        }
    }

    /// Checkpoints (or flushes) the last window applied if it is not in a checkpoint yet and
    /// `flush_interval` has passed since the last one, and tells the sequencer. In two steps,
    /// so that the window chain does not wait while a memtable of up to a flush interval's
    /// writes goes to disk: once due, the flush begins in the background and windows go on;
    /// once it has finished, the checkpoint is taken at the last window applied by then, its
    /// own flush holding only what came after.
    fn checkpoint_if_due(&mut self) -> Result<(), StepError> {
        let state = &*self.state;
        let Some((window, ts, digest)) = self.unflushed else { return Ok(()) };
        let begun = match self.flush_begun {
            Some(begun) => begun,
            None => {
                if self.flushed_at.is_some_and(|t| t.elapsed() < state.flush_interval) {
                    return Ok(());
                }
                state.mvcc.begin_flush()?;
                *self.flush_begun.insert(std::time::Instant::now())
            }
        };
        if !state.mvcc.flushed()? {
            return Ok(());
        }
        self.flush_begun = None;
        let start = std::time::Instant::now();
        self.flushed_at = Some(start);
        self.unflushed = None;
        // The log is kept from the checkpoint on, for fellows that copy it.
        let kept = match &state.checkpoints {
            Some(checkpoints) => checkpoints.take(&state.mvcc, window, ts, digest)?,
            None => {
                state.mvcc.flush()?;
                window
            }
        };
        tracing::info!(
            shard = state.shard.0,
            window = kept.0,
            background_ms = start.duration_since(begun).as_millis() as u64,
            waited_ms = start.elapsed().as_millis() as u64,
            "checkpoint taken"
        );
        self.report_flushed(kept);
        Ok(())
    }

    /// Tells the sequencer (in the background) that every window up to `epoch` is flushed here.
    fn report_flushed(&self, epoch: Epoch) {
        let (sequencer, shard, replica) =
            (self.sequencer.clone(), self.state.shard, self.state.replica as u32);
        self.handle.spawn(async move {
            if let Err(e) = sequencer.flushed(shard, replica, epoch).await {
                // The next report, one flush interval on, says as much and more.
                tracing::debug!(shard = shard.0, error = %e, "reporting flushed windows");
            }
        });
    }

    /// Asks for a window after the last one applied (deferred entries wait for it), off this
    /// thread: a round trip to the sequencer here would hold up the next window, which needs
    /// nothing from the answer.
    fn request_window(&self) {
        self.wanted.send_replace(self.step.applied().0);
    }
}

/// Asks the sequencer to seal a window after the one the apply loop wants (it has entries
/// deferred to the next window, which might otherwise wait for the sealing interval): one
/// request in flight, each for the latest wanted. Ends with the apply loop.
async fn request_windows(
    sequencer: RemoteSequencer,
    state: Arc<State>,
    mut wants: tokio::sync::watch::Receiver<Epoch>,
) {
    while wants.changed().await.is_ok() {
        let after = *wants.borrow_and_update();
        if let Err(e) = sequencer.request_window(after).await {
            // The sequencer is down; this shard asks again when it resubscribes.
            tracing::warn!(shard = state.shard.0, error = %e, "requesting a window");
        }
    }
}

/// Reports the windows this replica applies to the sequencer, so that it can seal the next
/// one without waiting out its interval: on one stream ([`keep_streaming`]), one message per
/// change (changes made while a message waits for room are reported as one, the last). Ends
/// with the apply loop.
async fn report_applied(
    sequencer: RemoteSequencer,
    state: Arc<State>,
    applied: tokio::sync::watch::Receiver<Epoch>,
) {
    use tokio_stream::StreamExt;
    let reports = tokio_stream::wrappers::WatchStream::from_changes(applied).map(|epoch| {
        v1::AppliedRequest {
            hlc: stamp(&state.clock),
            shard: state.shard.0,
            replica: state.replica as u32,
            epoch: epoch.0,
        }
    });
    // A failed stream loses only sealing early: the sequencer seals on its interval meanwhile.
    // A refusal of this shard's clock is passed to the apply loop, which finds out whose
    // clock is off.
    let open = |reports| {
        let (sequencer, state) = (sequencer.clone(), state.clone());
        async move {
            sequencer.report_applied(reports).await.map_err(|e| {
                if let RemoteError::ClockSkew(why) = &e {
                    *lock(&state.clock_refused) = Some(why.clone());
                }
                e.to_string()
            })
        }
    };
    let stopped = state.stopped();
    keep_streaming(reports, open, stopped, state.shard, "applied reports").await;
}
