//! [`ShardService`]: the shard's gRPC service: reads at a timestamp (for clients, and for
//! peers' `Snap(e-1)`), its local verdicts, its transactions' outcomes, its status and its
//! checkpoints for fellow replicas ([`checkpoint`](super::checkpoint)). Every
//! wait is bounded ([`WAIT_LIMIT`](super::WAIT_LIMIT)); peer-only calls need a node's
//! certificate when serving TLS.

use ::sequencer::{ClientId, TxnId};
use clock::{Epoch, Timestamp};
use proto::v1;
use proto::v1::shard_server::Shard as ShardRpc;
use std::sync::Arc;
use storage::StorageError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::watchers::Registration;
use super::{State, WAIT_LIMIT, lock};
use crate::metrics::{ShardCounters, ShardRpc as Rpc};
use client::{
    MAX_BATCH, MAX_SCAN_ROWS, RefusalKind, SCAN_RESPONSE_BYTES, item_status, malformed,
    observe_request, refuse, require_node, stamp,
};
use txn::{
    AbortReason, Outcome, ShardAt, TxnError, outcome_result_to_proto, outcome_to_proto,
    range_from_proto, range_to_proto, stored_outcome, stored_verdicts,
};

pub(super) struct ShardService {
    pub(super) state: Arc<State>,
    /// Serving TLS: peer-only calls need a node's certificate.
    pub(super) secure: bool,
}

fn storage_status(e: StorageError) -> Status {
    match e {
        // Typed: the caller reads later (or, a replica that far behind, is stuck: issue 16).
        StorageError::BelowHorizon { .. } => {
            refuse(Code::OutOfRange, RefusalKind::OutsideRetention, e.to_string())
        }
        e => Status::internal(e.to_string()),
    }
}

/// A request's client id, or the refusal of one that is not 16 bytes.
fn client_id(bytes: &[u8]) -> Result<ClientId, Status> {
    ClientId::from_bytes(bytes)
        .ok_or_else(|| malformed(format!("client_id: 16 bytes, not {}", bytes.len())))
}

fn key_value(key: Vec<u8>, version: storage::Version) -> v1::KeyValue {
    v1::KeyValue { key, value: version.value, version_ts: version.ts.as_u64() }
}

impl ShardService {
    /// What a read checks first: a read for a window (a peer's) needs a node's certificate;
    /// the caller's clock must be within bounds; the shard must be serving.
    fn admit_read<T>(
        &self,
        request: &Request<T>,
        for_window: u64,
        hlc: u64,
    ) -> Result<&State, Status> {
        if for_window != 0 {
            require_node(request, self.secure)?;
        }
        observe_request(&self.state.clock, hlc)?;
        self.state.check_running()?;
        Ok(&self.state)
    }
}

#[tonic::async_trait]
impl ShardRpc for ShardService {
    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        self.state.counters.requests.count(Rpc::Get);
        let (for_window, hlc) = (request.get_ref().for_window, request.get_ref().hlc);
        let state = self.admit_read(&request, for_window, hlc)?;
        let r = request.into_inner();
        state.check_local(&r.key)?;
        let at = Timestamp::from_u64(r.read_ts);
        state.wait_safe(at, r.for_window != 0).await?;
        let found =
            state.mvcc.get(&r.key, at).map_err(storage_status)?.map(|v| key_value(r.key, v));
        Ok(Response::new(v1::GetResponse { hlc: stamp(&state.clock), found }))
    }

    async fn get_many(
        &self,
        request: Request<v1::GetManyRequest>,
    ) -> Result<Response<v1::GetManyResponse>, Status> {
        self.state.counters.requests.count(Rpc::GetMany);
        let (for_window, hlc) = (request.get_ref().for_window, request.get_ref().hlc);
        let state = self.admit_read(&request, for_window, hlc)?;
        let r = request.into_inner();
        if r.keys.len() > MAX_SCAN_ROWS as usize {
            return Err(malformed(format!(
                "{} keys in one request; at most {MAX_SCAN_ROWS}",
                r.keys.len()
            )));
        }
        for key in &r.keys {
            state.check_local(key)?;
        }
        let at = Timestamp::from_u64(r.read_ts);
        state.wait_safe(at, r.for_window != 0).await?;
        let (mut values, mut bytes) = (Vec::new(), 0);
        for key in &r.keys {
            if bytes >= SCAN_RESPONSE_BYTES {
                break;
            }
            let value = state.mvcc.get(key, at).map_err(storage_status)?.map(|v| v.value);
            bytes += value.as_ref().map_or(0, Vec::len);
            values.push(v1::MaybeValue { value });
        }
        Ok(Response::new(v1::GetManyResponse { hlc: stamp(&state.clock), values }))
    }

    async fn scan(
        &self,
        request: Request<v1::ScanRequest>,
    ) -> Result<Response<v1::ScanResponse>, Status> {
        self.state.counters.requests.count(Rpc::Scan);
        let (for_window, hlc) = (request.get_ref().for_window, request.get_ref().hlc);
        let state = self.admit_read(&request, for_window, hlc)?;
        let r = request.into_inner();
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

    async fn read_call(
        &self,
        request: Request<v1::ReadCallRequest>,
    ) -> Result<Response<v1::ReadCallResponse>, Status> {
        self.state.counters.requests.count(Rpc::ReadCall);
        let hlc = request.get_ref().hlc;
        let state = self.admit_read(&request, 0, hlc)?;
        let r = request.into_inner();
        let at = Timestamp::from_u64(r.read_ts);
        let answer = |result: Result<Vec<u8>, TxnError>| {
            let outcome = match result {
                Ok(output) => Outcome::Committed { ts: at, output },
                Err(TxnError::Aborted(reason)) => Outcome::Aborted(reason),
                Err(TxnError::TooLarge(why)) => Outcome::Aborted(AbortReason::TooLarge(why)),
                Err(TxnError::UnknownProcedure(name)) => {
                    Outcome::Aborted(AbortReason::UnknownProcedure(name))
                }
                Err(TxnError::OutsideRetention { .. }) => {
                    return Err(refuse(
                        Code::OutOfRange,
                        RefusalKind::OutsideRetention,
                        format!("read timestamp {at} is below the garbage-collection horizon"),
                    ));
                }
                Err(e) => return Err(Status::internal(e.to_string())),
            };
            Ok(Response::new(v1::ReadCallResponse {
                hlc: stamp(&state.clock),
                outcome: Some(outcome_result_to_proto(&outcome)),
            }))
        };
        let (procedure, ranges) = match txn::declared_ranges(&state.procedures, &r.name, &r.args) {
            Ok(found) => found,
            Err(e) => return answer(Err(e)),
        };
        if let Some(range) =
            ranges.iter().find(|range| state.map.clip(range, state.shard) != **range)
        {
            return Err(malformed(format!(
                "procedure {} declares range {}, not within shard {}",
                r.name,
                range.quoted(),
                state.shard.0
            )));
        }
        state.wait_safe(at, false).await?;
        let snapshot = ShardAt { mvcc: &state.mvcc, at };
        let limits = state.mvcc.limits();
        answer(txn::call_read_only(procedure.as_ref(), &r.args, &ranges, &snapshot, at, &limits))
    }

    async fn verdicts(
        &self,
        request: Request<v1::VerdictsRequest>,
    ) -> Result<Response<v1::VerdictBatch>, Status> {
        self.state.counters.requests.count(Rpc::Verdicts);
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
            .map_err(|e| Status::internal(e.to_string()))?;
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

    async fn push(
        &self,
        request: Request<Streaming<v1::PushMessage>>,
    ) -> Result<Response<v1::PushAck>, Status> {
        self.state.counters.requests.count(Rpc::Push);
        require_node(&request, self.secure)?;
        let state = &self.state;
        let mut messages = request.into_inner();
        // Ends with the stream, or when this replica stops (a stream stays open otherwise, and
        // would hold the server's graceful stop).
        let stopped = state.stopped();
        tokio::pin!(stopped);
        loop {
            let message = tokio::select! {
                m = messages.message() => m?,
                () = &mut stopped => None,
            };
            let Some(message) = message else { break };
            observe_request(&state.clock, message.hlc)?;
            state.check_running()?;
            state.take_push(message)?;
        }
        Ok(Response::new(v1::PushAck { hlc: stamp(&state.clock) }))
    }

    async fn await_outcome(
        &self,
        request: Request<v1::AwaitOutcomeRequest>,
    ) -> Result<Response<v1::AwaitOutcomeResponse>, Status> {
        self.state.counters.requests.count(Rpc::AwaitOutcome);
        let r = request.into_inner();
        let state = &self.state;
        observe_request(&state.clock, r.hlc)?;
        state.check_running()?;
        let (txn, client) = awaited(r)?;
        ShardCounters::add(&state.counters.outcomes_awaited, 1);
        let outcome = state
            .wait_for(|| known_outcomes(state, &[Ok((txn, client))]).pop().flatten())
            .await??
            .1;
        past_commit_wait(state, [&outcome]).await;
        Ok(Response::new(v1::AwaitOutcomeResponse {
            hlc: stamp(&state.clock),
            outcome: Some(outcome_to_proto(txn, &outcome)),
        }))
    }

    async fn await_outcomes(
        &self,
        request: Request<v1::AwaitOutcomesRequest>,
    ) -> Result<Response<v1::AwaitOutcomesResponse>, Status> {
        self.state.counters.requests.count(Rpc::AwaitOutcomes);
        let r = request.into_inner();
        let state = &self.state;
        observe_request(&state.clock, r.hlc)?;
        state.check_running()?;
        if r.items.len() > MAX_BATCH {
            return Err(malformed(format!(
                "{} transactions in one batch; at most {MAX_BATCH}",
                r.items.len()
            )));
        }
        let items: Vec<_> = r.items.into_iter().map(awaited).collect();
        ShardCounters::add(&state.counters.outcomes_awaited, items.len() as u64);
        // Until at least one is known; then every one known by then. Only a window applied
        // makes one known (its outcomes are published before its progress), so the items
        // are looked at again only when the applied window has changed, not on every bump.
        let mut looked_at = None;
        let known: Vec<Option<Result<(TxnId, Outcome), Status>>> = state
            .wait_for(|| {
                let applied = state.progress().applied;
                if looked_at.replace(applied) == Some(applied) {
                    return None;
                }
                let known = known_outcomes(state, &items);
                known.iter().any(Option::is_some).then_some(known)
            })
            .await?;
        let outcomes = known.iter().flatten().filter_map(|k| k.as_ref().ok().map(|(_, o)| o));
        past_commit_wait(state, outcomes).await;
        let results = known
            .into_iter()
            .map(|k| v1::OutcomeResult {
                result: k.map(|k| match k {
                    Ok((txn, outcome)) => {
                        v1::outcome_result::Result::Outcome(outcome_to_proto(txn, &outcome))
                    }
                    Err(status) => v1::outcome_result::Result::Failed(item_status(&status)),
                }),
            })
            .collect();
        Ok(Response::new(v1::AwaitOutcomesResponse { hlc: stamp(&state.clock), results }))
    }

    type WatchOutcomesStream = ReceiverStream<Result<v1::WatchedOutcomes, Status>>;

    async fn watch_outcomes(
        &self,
        request: Request<v1::WatchOutcomesRequest>,
    ) -> Result<Response<Self::WatchOutcomesStream>, Status> {
        self.state.counters.requests.count(Rpc::WatchOutcomes);
        let r = request.into_inner();
        let state = self.state.clone();
        observe_request(&state.clock, r.hlc)?;
        state.check_running()?;
        let registration = state.watchers.add(r.salt, || state.progress().applied)?;
        let (stream, messages) = tokio::sync::mpsc::channel(WATCH_MESSAGES);
        tokio::spawn(push_outcomes(state, registration, stream));
        Ok(Response::new(ReceiverStream::new(messages)))
    }

    async fn outcome(
        &self,
        request: Request<v1::OutcomeRequest>,
    ) -> Result<Response<v1::OutcomeResponse>, Status> {
        self.state.counters.requests.count(Rpc::Outcome);
        let r = request.into_inner();
        let state = &self.state;
        observe_request(&state.clock, r.hlc)?;
        state.check_running()?;
        let id = client_id(&r.client_id)?;
        // A replica restarted answers once it has applied the windows stamped before it
        // started (a replay, if its storage was behind): before, a transaction it had decided
        // would read as not decided. After that, at once.
        state.wait_for(|| (state.progress().safe >= state.started_at).then_some(())).await?;
        // Progress first: the outcome read after it is at least as new.
        let applied = state.progress().applied;
        let stored =
            stored_outcome(&state.mvcc, id).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::OutcomeResponse {
            hlc: stamp(&state.clock),
            outcome: stored.map(|(txn, o)| outcome_to_proto(txn, &o)),
            applied_epoch: applied.0,
        }))
    }

    type FetchCheckpointStream = ReceiverStream<Result<v1::CheckpointPart, Status>>;

    async fn fetch_checkpoint(
        &self,
        request: Request<v1::FetchCheckpointRequest>,
    ) -> Result<Response<Self::FetchCheckpointStream>, Status> {
        self.state.counters.requests.count(Rpc::FetchCheckpoint);
        require_node(&request, self.secure)?;
        let state = &self.state;
        observe_request(&state.clock, request.into_inner().hlc)?;
        // A replica that failed or diverged has nothing a fellow should copy.
        state.check_running()?;
        let checkpoints = state.checkpoints.as_ref().ok_or_else(|| {
            Status::not_found("this replica keeps its storage in memory: no checkpoints")
        })?;
        Ok(Response::new(ReceiverStream::new(checkpoints.serve(state.clock.clone())?)))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::ShardStatus>, Status> {
        self.state.counters.requests.count(Rpc::Status);
        let state = &self.state;
        observe_request(&state.clock, request.into_inner().hlc)?;
        // Answered whatever the shard's state: `failure` says why it serves nothing.
        let failure = state.check_running().err().map(|s| s.message().to_string());
        let progress = state.progress();
        Ok(Response::new(v1::ShardStatus {
            hlc: stamp(&state.clock),
            shard: state.shard.0,
            applied_epoch: progress.applied.0,
            safe_ts: progress.safe.as_u64(),
            range: Some(range_to_proto(&state.map.range_of(state.shard))),
            replica: state.replica as u32,
            digest: progress.digest.to_le_bytes().to_vec(),
            failure: failure.unwrap_or_default(),
        }))
    }
}

/// Messages of a `WatchOutcomes` stream (one a window) queued for the client.
const WATCH_MESSAGES: usize = 4;

/// Serves a `WatchOutcomes` stream: the `since` message, then each window's outcomes of the
/// watch once past commit-wait. Ends when the client goes, when the watch is dropped (it fell
/// behind, or a new watch of its salt replaced it), when the replica stops or stops serving,
/// or when the client takes no message for [`WAIT_LIMIT`].
async fn push_outcomes(
    state: Arc<State>,
    mut watch: Registration,
    stream: tokio::sync::mpsc::Sender<Result<v1::WatchedOutcomes, Status>>,
) {
    let stopped = state.stopped();
    tokio::pin!(stopped);
    let mut message =
        Ok(v1::WatchedOutcomes { hlc: 0, since: watch.since.0, outcomes: Vec::new() });
    loop {
        if let Ok(m) = &mut message {
            m.hlc = stamp(&state.clock);
        }
        let last = message.is_err();
        match tokio::time::timeout(WAIT_LIMIT, stream.send(message)).await {
            Ok(Ok(())) if !last => {}
            _ => return,
        }
        let batch = tokio::select! {
            batch = watch.batches.recv() => batch,
            () = &mut stopped => None,
            // The client went: unregister now, not when its salt's next outcome comes.
            () = stream.closed() => return,
        };
        let Some(batch) = batch else {
            let why = match state.check_running() {
                Err(status) => status,
                Ok(()) => Status::unavailable(
                    "this outcome watch fell behind or was replaced; await outcomes instead",
                ),
            };
            message = Err(why);
            continue;
        };
        past_commit_wait(&state, batch.iter().map(|(_, _, o)| o)).await;
        message = match state.check_running() {
            Err(status) => Err(status),
            Ok(()) => Ok(v1::WatchedOutcomes {
                hlc: 0,
                since: 0,
                outcomes: batch
                    .into_iter()
                    .map(|(id, txn, outcome)| v1::WatchedOutcome {
                        id,
                        outcome: Some(outcome_to_proto(txn, &outcome)),
                    })
                    .collect(),
            }),
        };
    }
}

/// The transaction (and client id, if given) an `AwaitOutcome` asks about.
fn awaited(r: v1::AwaitOutcomeRequest) -> Result<(TxnId, Option<ClientId>), Status> {
    let id = r.txn.ok_or_else(|| Status::invalid_argument("which transaction?"))?;
    let txn = TxnId { epoch: Epoch(id.epoch), index: id.index };
    let client = match r.client_id.is_empty() {
        true => None,
        false => Some(client_id(&r.client_id)?),
    };
    Ok((txn, client))
}

/// For each of `items` (a transaction and, if given, its client id): its outcome if this
/// shard knows it now, the failure `AwaitOutcome` answers if it never will (or the item's
/// own), or `None` while it may still come. The shard's state is read once for all of them.
fn known_outcomes(
    state: &State,
    items: &[Result<(TxnId, Option<ClientId>), Status>],
) -> Vec<Option<Result<(TxnId, Outcome), Status>>> {
    // Read in the reverse of the order the apply thread writes them (outcomes, then the
    // deferred entries, then progress), so that an outcome recorded while this runs is never
    // missed: if the window counted as applied here, its outcomes are in the map or in storage.
    let applied = state.progress().applied;
    let deferred: Vec<bool> = {
        let deferred = lock(&state.deferred);
        items
            .iter()
            .map(|item| item.as_ref().is_ok_and(|(txn, _)| deferred.contains(txn)))
            .collect()
    };
    let recorded: Vec<Option<Outcome>> = {
        let outcomes = lock(&state.outcomes);
        items
            .iter()
            .map(|item| item.as_ref().ok().and_then(|(txn, _)| outcomes.get(*txn).cloned()))
            .collect()
    };
    items
        .iter()
        .zip(deferred.into_iter().zip(recorded))
        .map(|(item, (deferred, recorded))| {
            let (txn, client) = match item {
                Ok(item) => *item,
                Err(status) => return Some(Err(status.clone())),
            };
            match recorded {
                Some(outcome) => Some(Ok((txn, outcome))),
                // Not applied yet, or deferred to a later window: wait.
                None if txn.epoch > applied || deferred => None,
                None => Some(stored(state, txn, client).map(|outcome| (txn, outcome))),
            }
        })
        .collect()
}

/// The outcome of applied transaction `txn`, no longer in memory (decided before this shard
/// restarted, or long enough ago): storage keeps it by client id for the retention period.
fn stored(state: &State, txn: TxnId, client: Option<ClientId>) -> Result<Outcome, Status> {
    let stored = client.map(|c| stored_outcome(&state.mvcc, c)).transpose();
    match stored.map_err(|e| Status::internal(e.to_string()))?.flatten() {
        Some((t, o)) if t == txn => Ok(o),
        _ => Err(Status::not_found(format!(
            "shard {} does not know the outcome of {txn}: not a transaction whose lowest \
             participant it is, or past the retention period{}",
            state.shard.0,
            if client.is_none() { " (ask with its client id)" } else { "" }
        ))),
    }
}

/// Returns once every committed one of `outcomes` is past commit-wait, and counts their
/// commit latency.
async fn past_commit_wait<'a>(state: &State, outcomes: impl IntoIterator<Item = &'a Outcome>) {
    let committed: Vec<Timestamp> = outcomes
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Committed { ts, .. } => Some(*ts),
            _ => None,
        })
        .collect();
    if let Some(last) = committed.iter().max()
        && !state.clock.max_offset().is_zero()
    {
        while let Some(left) = state.clock.commit_wait_remaining(*last) {
            tokio::time::sleep(left).await;
        }
    }
    let now = state.clock.physical_now();
    for ts in committed {
        state.counters.commit.observe(now.duration_since(ts));
    }
}
