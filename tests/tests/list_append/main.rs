//! Strict serializability of the embedded database and of a cluster, judged by an outside
//! checker.
//!
//! Concurrent clients run Jepsen's list-append workload: each transaction reads some keys'
//! lists and appends unique values to others, as an interactive transaction or as a
//! deterministic procedure. Keys live on all three shards, so many transactions are
//! multi-shard. Every invocation and completion is recorded in real-time order, and `adya`
//! checks the history for strict serializability: the same check that finds the anomalies in
//! the reference histories (`checker.rs`).
//!
//! - `embedded`: the embedded `Database`, procedures and interactive transactions.
//! - `cluster`: a sequencer and three shard servers on loopback, procedures through the
//!   `Client`.

mod cluster;
mod embedded;

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use rand::rngs::StdRng;
use tests::history::{Completion, Mop, Recorder, Workload, check};
use txn::TxnError;
use txn::builtin::{ListOp, decode_list_output, encode_list_ops};

pub(crate) const KEYS: u64 = 8;
pub(crate) const CLIENTS: u64 = 6;
pub(crate) const TXNS_PER_CLIENT: u64 = 60;

/// `list_append` arguments for a history's micro-ops.
pub(crate) fn encode_ops(ops: &[Mop]) -> Vec<u8> {
    let ops: Vec<ListOp> = ops
        .iter()
        .map(|m| match m {
            Mop::Read(k, _) => ListOp::Read(*k),
            Mop::Append(k, v) => ListOp::Append(*k, *v),
        })
        .collect();
    encode_list_ops(&ops)
}

/// Fills in the lists read, from a `list_append` call's output.
pub(crate) fn with_reads(ops: &[Mop], output: &[u8]) -> Vec<Mop> {
    let mut reads = decode_list_output(output).unwrap().into_iter();
    ops.iter()
        .map(|m| match m {
            Mop::Read(k, _) => Mop::Read(*k, Some(reads.next().unwrap())),
            other => other.clone(),
        })
        .collect()
}

/// A random transaction of one to four micro-ops; appended values are unique.
pub(crate) fn random_ops(rng: &mut StdRng, next_value: &AtomicU64) -> Vec<Mop> {
    (0..rng.random_range(1..5))
        .map(|_| {
            let k = rng.random_range(0..KEYS);
            if rng.random_bool(0.5) {
                Mop::Read(k, None)
            } else {
                Mop::Append(k, next_value.fetch_add(1, Ordering::SeqCst))
            }
        })
        .collect()
}

/// Records how a transaction ended; true if it committed. Panics on errors that leave its
/// outcome unknown: none are expected here.
pub(crate) fn record(
    history: &Recorder,
    process: u64,
    ops: &[Mop],
    result: Result<Vec<Mop>, TxnError>,
) -> bool {
    match result {
        Ok(done) => {
            history.complete(process, Completion::Ok, &done);
            true
        }
        // Certainly not committed: conflicts after all retries, aborts.
        Err(TxnError::Conflict { .. } | TxnError::Aborted(_)) => {
            history.complete(process, Completion::Fail, ops);
            false
        }
        Err(e) => {
            history.complete(process, Completion::Info, ops);
            panic!("unexpected error {e}");
        }
    }
}

/// Checks the history with `adya`; on failure writes it to a file named after `name`.
pub(crate) fn check_strict_serializable(history: &Recorder, name: &str, seed: u64) {
    let text = history.to_jsonl();
    let verdict = check(&text, Workload::ListAppend, "strict-serializable").unwrap();
    if verdict.valid != Some(true) {
        let path = std::env::temp_dir().join(format!("sealdb-{name}-{seed}.jsonl"));
        std::fs::write(&path, &text).unwrap();
        panic!("seed {seed}: {verdict:?}; history written to {}", path.display());
    }
}
