//! What a shard stores with each window besides its writes, all in the window's one atomic
//! batch:
//!
//! - its local verdicts of multi-shard entries (so a participant that restarts, or asks late,
//!   gets the same answer);
//! - the entries deferred to the next window (so a restart resumes them);
//! - the chained digest of every window applied ([`chain_digest`]), which replicas compare;
//! - with [`KeptOutcomes`], the outcomes of the transactions whose lowest participant it is,
//!   by client id, for the retention period (so an outcome is answerable after a restart, by
//!   any replica).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use clock::{Epoch, Timestamp};
use prost::Message;
use sequencer::{ClientId, ShardId, TxnId};
use storage::{MetaKey, Mvcc, VersionBatch};
use xxhash_rust::xxh3::Xxh3;

use crate::executor::Task;
use crate::outcome::{Decided, Outcome, outcome_from_proto, outcome_to_proto};
use crate::request::Request;
use crate::step::StepError;

/// The digest after applying `batch` on top of digest `prev`: XXH3-128 of `prev`, the window,
/// its timestamp and its writes in key order (each key and value length-prefixed; a delete
/// marked). Replicas that applied the same windows have the same digest; one write differing
/// anywhere in the history changes every digest after it.
pub fn chain_digest(prev: u128, batch: &VersionBatch) -> u128 {
    let mut h = Xxh3::new();
    h.update(&prev.to_le_bytes());
    h.update(&batch.window().0.to_le_bytes());
    h.update(&batch.ts().as_u64().to_le_bytes());
    for (key, value) in batch.writes() {
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        match value {
            Some(v) => {
                h.update(&[1]);
                h.update(&(v.len() as u64).to_le_bytes());
                h.update(v);
            }
            None => h.update(&[0]),
        }
    }
    h.digest128()
}

/// The digest stored with the last window applied (0 before the first).
pub fn stored_digest(mvcc: &Mvcc) -> Result<u128, StepError> {
    match mvcc.meta(MetaKey::Digest)? {
        None => Ok(0),
        Some(b) => Ok(u128::from_le_bytes(
            b.as_slice().try_into().map_err(|_| StepError::Corrupt("stored digest"))?,
        )),
    }
}

/// At most this many windows' outcomes expire per window applied: the work per window stays
/// bounded, and expiry catches up over the next windows after a pause.
const EXPIRE_PER_WINDOW: usize = 8;

/// The outcomes a shard keeps by client id for `retention` after their window's timestamp.
/// What expires is decided by window timestamps alone, so every replica keeps the same.
pub struct KeptOutcomes {
    retention: Duration,
    /// Windows whose outcomes are kept, oldest first, with their timestamps.
    windows: VecDeque<(Epoch, Timestamp)>,
}

impl KeptOutcomes {
    /// The outcomes `mvcc` keeps, for `retention`.
    pub fn open(mvcc: &Mvcc, retention: Duration) -> Result<KeptOutcomes, StepError> {
        let windows = mvcc
            .outcome_windows()?
            .into_iter()
            .map(|(e, v)| Ok((e, Timestamp::from_u64(u64_at(&v, 0)?))))
            .collect::<Result<_, StepError>>()?;
        Ok(KeptOutcomes { retention, windows })
    }

    /// Adds window `batch`'s decided outcomes to it, and removes those of up to
    /// [`EXPIRE_PER_WINDOW`] windows older than its timestamp minus the retention.
    pub(crate) fn record(
        &mut self,
        mvcc: &Mvcc,
        batch: &mut VersionBatch,
        decided: &[(Decided, ClientId)],
    ) -> Result<(), StepError> {
        let horizon = batch.ts().saturating_sub(self.retention);
        for _ in 0..EXPIRE_PER_WINDOW {
            match self.windows.front() {
                Some(&(e, ts)) if ts < horizon => {
                    let ids = mvcc.meta(MetaKey::OutcomesOf(e))?.unwrap_or_default();
                    if ids.len() < 8 || !(ids.len() - 8).is_multiple_of(16) {
                        return Err(StepError::Corrupt("stored outcome index"));
                    }
                    for id in ids[8..].chunks_exact(16) {
                        let id = u128::from_le_bytes(id.try_into().expect("16 bytes"));
                        batch.delete_meta(MetaKey::Outcome(id));
                    }
                    batch.delete_meta(MetaKey::OutcomesOf(e));
                    self.windows.pop_front();
                }
                _ => break,
            }
        }
        if decided.is_empty() {
            return Ok(());
        }
        let mut index = batch.ts().as_u64().to_le_bytes().to_vec();
        for (d, client) in decided {
            batch.put_meta(
                MetaKey::Outcome(client.0),
                outcome_to_proto(d.txn, &d.outcome).encode_to_vec(),
            );
            index.extend_from_slice(&client.0.to_le_bytes());
        }
        batch.put_meta(MetaKey::OutcomesOf(batch.window()), index);
        self.windows.push_back((batch.window(), batch.ts()));
        Ok(())
    }
}

/// The outcome kept for the transaction submitted under `client`, with its id, if any.
pub fn stored_outcome(
    mvcc: &Mvcc,
    client: ClientId,
) -> Result<Option<(TxnId, Outcome)>, StepError> {
    match mvcc.meta(MetaKey::Outcome(client.0))? {
        None => Ok(None),
        Some(bytes) => {
            let o = proto::v1::Outcome::decode(bytes.as_slice())
                .map_err(|_| StepError::Corrupt("stored outcome"))?;
            outcome_from_proto(o).map(Some).ok_or(StepError::Corrupt("stored outcome"))
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, StepError> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or(StepError::Corrupt("stored outcome index"))
}

/// This shard's local verdicts of window `e`, as stored with it: for a participant that asks
/// after this shard applied the window.
pub fn stored_verdicts(mvcc: &Mvcc, e: Epoch) -> Result<Vec<(TxnId, bool)>, StepError> {
    let stored = mvcc.meta(MetaKey::Verdicts(e))?;
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

pub(crate) fn decode_verdicts(bytes: &[u8]) -> Result<Vec<(TxnId, bool)>, StepError> {
    if !bytes.len().is_multiple_of(13) {
        return Err(StepError::Corrupt("stored verdicts"));
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
pub(crate) fn encode_deferred(deferred: &[(Task, ClientId)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(deferred.len() as u32).to_le_bytes());
    for (task, client) in deferred {
        let payload =
            task.request.as_deref().cloned().map(Request::into_payload).unwrap_or_default();
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

pub(crate) fn decode_deferred(bytes: &[u8]) -> Result<Vec<(Task, ClientId)>, StepError> {
    let mut r = bytes;
    let mut take = |n: usize| -> Result<&[u8], StepError> {
        if r.len() < n {
            return Err(StepError::Corrupt("stored deferred entries"));
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
        let request = Request::decode(take(len)?).map(Arc::new);
        out.push((
            Task { txn: TxnId { epoch, index }, deferred: true, participants, request },
            client,
        ));
    }
    Ok(out)
}
