//! What a shard stores with each window besides its writes: its local verdicts of
//! multi-shard entries (so a participant that restarts, or asks late, gets the same answer)
//! and the entries deferred to the next window (so a restart resumes them). Both go into the
//! window's one atomic batch.

use clock::Epoch;
use sequencer::{ClientId, ShardId, TxnId};
use storage::{MetaKey, Mvcc};

use crate::executor::Task;
use crate::request::Request;
use crate::step::StepError;

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
        let request = Request::decode(take(len)?);
        out.push((
            Task { txn: TxnId { epoch, index }, deferred: true, participants, request },
            client,
        ));
    }
    Ok(out)
}
