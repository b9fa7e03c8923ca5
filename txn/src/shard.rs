//! [`ShardApplier`]: how one shard applies one window (DESIGN.md section 4), shared by the
//! embedded [`Database`](crate::Database)'s shard threads and the cluster's shard servers.
//! They differ only in how a shard reaches the others: reading `Snap(e-1)` of their keys,
//! waiting for them, and exchanging verdicts, which the caller passes in.
//!
//! The window's batch holds its writes, the watermark, this shard's local verdicts of
//! multi-shard entries (so a participant that restarts can still be answered) and the entries
//! deferred to the next window, in one atomic write.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clock::Timestamp;
use sequencer::{ClientId, Entry, ShardId, TxnId};
use storage::{Epoch, MetaKey, Mvcc};

use crate::executor::{Executor, SnapshotRead, Task};
use crate::outcome::{Decided, Outcome, Phase};
use crate::request::Request;

pub(crate) use crate::tally::{Finals, Participants};

/// One shard's window-by-window state.
pub(crate) struct ShardApplier {
    pub(crate) shard: ShardId,
    pub(crate) mvcc: Arc<Mvcc>,
    executor: Executor,
    /// Entries deferred to the front of the next window, with their client ids.
    deferred: Vec<(Task, ClientId)>,
}

/// What applying a window decided.
pub(crate) struct WindowApplied {
    /// The outcomes this shard reports: those of entries whose lowest participant it is.
    pub(crate) decided: Vec<(Decided, ClientId)>,
    /// True if entries were deferred: the next window must exist.
    pub(crate) deferred: bool,
}

impl ShardApplier {
    /// The shard's applier over `mvcc`, with the entries it had deferred before a restart.
    pub(crate) fn open(
        shard: ShardId,
        mvcc: Arc<Mvcc>,
        executor: Executor,
    ) -> Result<ShardApplier, String> {
        let stored = mvcc.meta(MetaKey::Deferred).map_err(|e| e.to_string())?;
        let deferred = decode_deferred(&stored.unwrap_or_default())?;
        Ok(ShardApplier { shard, mvcc, executor, deferred })
    }

    /// The first window not yet applied.
    pub(crate) fn next_epoch(&self) -> Epoch {
        self.mvcc.applied().map_or(Epoch(1), |w| w.window.next())
    }

    /// True if entries deferred before a restart wait for a next window.
    pub(crate) fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// The entries deferred to the next window: logged, not yet decided.
    pub(crate) fn deferred_ids(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.deferred.iter().map(|(task, _)| task.txn)
    }

    /// Applies window `epoch` at `ts`, of which `slice` is this shard's entries in log order.
    /// `snapshot(ts_{e-1})` reads `Snap(e-1)` of any key; `wait_for_peers(e-1)` is called first
    /// if a multi-shard entry will read other shards; `exchange` gets this shard's local
    /// verdicts and returns every participant's combined; `durable` returns once the window is
    /// durable, and nothing is written before. `None` if the window was applied already (a
    /// replay).
    // The four closures are exactly where embedded and cluster shards differ.
    #[expect(clippy::too_many_arguments)]
    pub(crate) fn apply<'w, S: SnapshotRead>(
        &mut self,
        epoch: Epoch,
        ts: Timestamp,
        slice: impl IntoIterator<Item = (TxnId, &'w Entry)>,
        snapshot: impl FnOnce(Timestamp) -> S,
        wait_for_peers: impl FnOnce(Epoch) -> Result<(), String>,
        exchange: impl FnOnce(Epoch, &[(TxnId, bool)], &Participants) -> Result<Finals, String>,
        durable: impl FnOnce() -> Result<(), String>,
    ) -> Result<Option<WindowApplied>, String> {
        let (applied, prev_ts) =
            self.mvcc.applied().map_or((Epoch(0), Timestamp::ZERO), |w| (w.window, w.ts));
        if epoch <= applied {
            durable()?;
            return Ok(None);
        }
        if epoch != applied.next() {
            return Err(format!("shard {} got window {epoch} after {applied}", self.shard.0));
        }
        let mut clients: HashMap<TxnId, ClientId> = HashMap::new();
        let mut tasks: Vec<Task> = Vec::new();
        for (task, client) in std::mem::take(&mut self.deferred) {
            clients.insert(task.txn, client);
            tasks.push(task);
        }
        for (txn, entry) in slice {
            clients.insert(txn, entry.client_id);
            tasks.push(Task {
                txn,
                deferred: false,
                participants: entry.participants.clone(),
                request: Request::decode(&entry.payload),
            });
        }
        let participants: Participants =
            tasks.iter().map(|t| (t.txn, t.participants.clone())).collect();
        if tasks.iter().any(|t| t.participants.len() > 1) {
            wait_for_peers(Epoch(epoch.0 - 1))?;
        }
        let snapshot = snapshot(prev_ts);
        let validated =
            self.executor.execute(epoch, ts, tasks, &snapshot).map_err(|e| e.to_string())?;
        let local = validated.local_verdicts();
        let finals =
            if local.is_empty() { Finals::new() } else { exchange(epoch, &local, &participants)? };
        let result =
            self.executor.finish(validated, &finals, &snapshot).map_err(|e| e.to_string())?;
        let mut batch = result.batch;
        if !local.is_empty() {
            batch.put_meta(MetaKey::Verdicts(epoch), encode_verdicts(&local));
        }
        let deferred: Vec<(Task, ClientId)> = result
            .deferred
            .into_iter()
            .map(|t| (clients[&t.txn], t))
            .map(|(c, t)| (t, c))
            .collect();
        batch.put_meta(MetaKey::Deferred, encode_deferred(&deferred));
        durable()?;
        self.mvcc.apply(&batch).map_err(|e| e.to_string())?;
        let any_deferred = !deferred.is_empty();
        self.deferred = deferred;
        let decided = result
            .outcomes
            .into_iter()
            .filter(|d| participants.get(&d.txn).and_then(|p| p.first()) == Some(&self.shard))
            .map(|d| {
                let client = clients[&d.txn];
                (d, client)
            })
            .collect();
        Ok(Some(WindowApplied { decided, deferred: any_deferred }))
    }
}

/// How many decided transactions ended each way, counted where their outcome is reported
/// (the lowest participant).
#[derive(Default)]
pub(crate) struct OutcomeCounters {
    /// Committed, fallbacks included.
    pub(crate) committed: AtomicU64,
    /// Single-shard procedures committed by re-execution after losing validation.
    pub(crate) fallbacks: AtomicU64,
    /// Interactive transactions that failed validation.
    pub(crate) conflicts: AtomicU64,
    /// Aborted.
    pub(crate) aborts: AtomicU64,
}

impl OutcomeCounters {
    /// Counts `decided`.
    pub(crate) fn count(&self, decided: &Decided) {
        let counter = match (&decided.outcome, decided.position) {
            (Outcome::Committed { .. }, Some(p)) if p.phase == Phase::Fallback => {
                self.committed.fetch_add(1, Ordering::Relaxed);
                &self.fallbacks
            }
            (Outcome::Committed { .. }, _) => &self.committed,
            (Outcome::Conflict { .. }, _) => &self.conflicts,
            (Outcome::Aborted(_), _) => &self.aborts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// This shard's local verdicts of window `e`, as stored with it: for a participant that asks
/// after this shard applied the window.
pub(crate) fn stored_verdicts(mvcc: &Mvcc, e: Epoch) -> Result<Vec<(TxnId, bool)>, String> {
    let stored = mvcc.meta(MetaKey::Verdicts(e)).map_err(|e| e.to_string())?;
    decode_verdicts(&stored.unwrap_or_default())
}

pub(crate) fn encode_verdicts(verdicts: &[(TxnId, bool)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(verdicts.len() * 13);
    for (t, commit) in verdicts {
        out.extend_from_slice(&t.epoch.0.to_le_bytes());
        out.extend_from_slice(&t.index.to_le_bytes());
        out.push(u8::from(*commit));
    }
    out
}

pub(crate) fn decode_verdicts(bytes: &[u8]) -> Result<Vec<(TxnId, bool)>, String> {
    if !bytes.len().is_multiple_of(13) {
        return Err("corrupt stored verdicts".into());
    }
    Ok(bytes
        .chunks_exact(13)
        .map(|c| {
            let epoch = Epoch(u64::from_le_bytes(c[..8].try_into().expect("8 bytes")));
            let index = u32::from_le_bytes(c[8..12].try_into().expect("4 bytes"));
            (TxnId { epoch, index }, c[12] == 1)
        })
        .collect())
}

/// Deferred entries as stored: `count, (epoch, index, client, nparts, parts.., len, payload)*`.
fn encode_deferred(deferred: &[(Task, ClientId)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(deferred.len() as u32).to_le_bytes());
    for (task, client) in deferred {
        let payload = task.request.as_ref().map(Request::encode).unwrap_or_default();
        out.extend_from_slice(&task.txn.epoch.0.to_le_bytes());
        out.extend_from_slice(&task.txn.index.to_le_bytes());
        out.extend_from_slice(&client.0.to_le_bytes());
        out.extend_from_slice(&(task.participants.len() as u32).to_le_bytes());
        for p in &task.participants {
            out.extend_from_slice(&p.0.to_le_bytes());
        }
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
    }
    out
}

fn decode_deferred(bytes: &[u8]) -> Result<Vec<(Task, ClientId)>, String> {
    let mut r = bytes;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if r.len() < n {
            return Err("corrupt stored deferred entries".into());
        }
        let (head, rest) = r.split_at(n);
        r = rest;
        Ok(head)
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let count = u32_of(take(4)?);
    let mut out = Vec::new();
    for _ in 0..count {
        let epoch = Epoch(u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")));
        let index = u32_of(take(4)?);
        let client = ClientId(u128::from_le_bytes(take(16)?.try_into().expect("16 bytes")));
        let nparts = u32_of(take(4)?);
        let mut participants = Vec::new();
        for _ in 0..nparts {
            participants.push(ShardId(u32_of(take(4)?)));
        }
        let len = u32_of(take(4)?) as usize;
        let request = Request::decode(take(len)?);
        out.push((
            Task { txn: TxnId { epoch, index }, deferred: true, participants, request },
            client,
        ));
    }
    Ok(out)
}
