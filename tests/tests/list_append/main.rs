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
use storage::KeyRange;
use tests::history::{Completion, Mop, Recorder, Workload, check};
use txn::{Context, ProcError, Procedure, TxnError};

pub(crate) const KEYS: u64 = 8;
pub(crate) const CLIENTS: u64 = 6;
pub(crate) const TXNS_PER_CLIENT: u64 = 60;

/// Key `k`'s list, on shard `k % 3`.
pub(crate) fn storage_key(k: u64) -> Vec<u8> {
    format!("{}/list/{k}", ["a", "b", "c"][(k % 3) as usize]).into_bytes()
}

pub(crate) fn decode_list(v: Option<Vec<u8>>) -> Vec<u64> {
    match v {
        None => Vec::new(),
        Some(v) => String::from_utf8(v).unwrap().split(',').map(|x| x.parse().unwrap()).collect(),
    }
}

pub(crate) fn encode_list(list: &[u64]) -> Vec<u8> {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

/// Micro-ops as procedure arguments: "r:3 a:5:17" reads key 3, appends 17 to key 5.
pub(crate) fn encode_ops(ops: &[Mop]) -> Vec<u8> {
    let parts: Vec<String> = ops
        .iter()
        .map(|m| match m {
            Mop::Read(k, _) => format!("r:{k}"),
            Mop::Append(k, v) => format!("a:{k}:{v}"),
        })
        .collect();
    parts.join(" ").into_bytes()
}

pub(crate) fn decode_ops(args: &[u8]) -> Vec<Mop> {
    String::from_utf8(args.to_vec())
        .unwrap()
        .split(' ')
        .map(|op| {
            let f: Vec<&str> = op.split(':').collect();
            match f[0] {
                "r" => Mop::Read(f[1].parse().unwrap(), None),
                _ => Mop::Append(f[1].parse().unwrap(), f[2].parse().unwrap()),
            }
        })
        .collect()
}

/// Runs list-append micro-ops deterministically; returns the ops with the lists read.
pub(crate) struct ListAppend;

impl Procedure for ListAppend {
    fn name(&self) -> &str {
        "list_append"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        let keys = decode_ops(args).into_iter().map(|m| match m {
            Mop::Read(k, _) | Mop::Append(k, _) => k,
        });
        Ok(keys.map(|k| KeyRange::point(&storage_key(k))).collect())
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let mut reads = Vec::new();
        for op in decode_ops(args) {
            match op {
                Mop::Read(k, _) => reads.push(encode_list(&decode_list(ctx.get(&storage_key(k))?))),
                Mop::Append(k, v) => {
                    let mut list = decode_list(ctx.get(&storage_key(k))?);
                    list.push(v);
                    ctx.put(&storage_key(k), &encode_list(&list))?;
                }
            }
        }
        Ok(reads.join(&b";"[..]))
    }
}

/// Fills in the lists read, from a procedure's output.
pub(crate) fn with_reads(ops: &[Mop], output: &[u8]) -> Vec<Mop> {
    let text = String::from_utf8(output.to_vec()).unwrap();
    let mut reads = text
        .split(';')
        .map(|l| if l.is_empty() { Vec::new() } else { decode_list(Some(l.as_bytes().to_vec())) });
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
