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
//! The workload is written once, against `txn::Store`, and runs unchanged on both:
//!
//! - `embedded`: the embedded `Database`;
//! - `cluster`: a sequencer and three shard servers on loopback, through the `Client`.
//!
//! And `hardening`: the same loopback cluster at its edges (oversize and forged requests,
//! bursts that make windows large, impossible waits, a clock out of bounds); `secure`: the
//! same over TLS with client certificates, and who may call what; `replicas`: replicas of a
//! shard whose writes differ stop serving.

mod cluster;
mod embedded;
mod group;
mod hardening;
mod replicas;
mod secure;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::history::{Completion, Mop, Recorder, Workload, check};
use txn::builtin::{
    ListOp, decode_list, decode_list_output, encode_list, encode_list_ops, list_key,
};
use txn::{ReadAt, Store, StoreSnapshot, StoreTransaction, TxnError};

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

/// Runs the list-append workload against `store` from concurrent tasks, half procedures and
/// half interactive transactions, and checks its history; then checks that a snapshot holds
/// every committed append exactly once and no failed one.
pub(crate) async fn run_list_append<S: Store + 'static>(store: Arc<S>, name: &str, seed: u64) {
    let history = Arc::new(Recorder::new());
    let next_value = Arc::new(AtomicU64::new(1));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|process| {
            let (store, history, next_value) = (store.clone(), history.clone(), next_value.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed * 1000 + process);
                let mut appends = Vec::new();
                for _ in 0..TXNS_PER_CLIENT {
                    let ops = random_ops(&mut rng, &next_value);
                    history.invoke(process, &ops);
                    let result = if rng.random_bool(0.5) {
                        interactive(&*store, &ops).await
                    } else {
                        let output = store.call("list_append", &encode_ops(&ops)).await;
                        output.map(|out| with_reads(&ops, &out))
                    };
                    let committed = record(&history, process, &ops, result);
                    for op in &ops {
                        if let Mop::Append(k, v) = op {
                            appends.push((*k, *v, committed));
                        }
                    }
                }
                appends
            })
        })
        .collect();
    let mut appends = Vec::new();
    for task in tasks {
        appends.extend(task.await.unwrap());
    }
    let committed = appends.iter().filter(|a| a.2).count() as u64;
    assert!(committed > CLIENTS * TXNS_PER_CLIENT / 3, "only {committed} appends committed");
    check_strict_serializable(&history, name, seed);

    let snapshot = store.snapshot(ReadAt::Latest).await.unwrap();
    let mut lists = Vec::new();
    for k in 0..KEYS {
        lists.push(decode_list(snapshot.get(&list_key(k)).await.unwrap().as_deref()).unwrap());
    }
    for (k, v, committed) in appends {
        let found = lists[k as usize].iter().filter(|x| **x == v).count();
        assert_eq!(found, usize::from(committed), "seed {seed}: value {v} in list {k}");
    }
}

/// Runs `ops` as an interactive transaction; returns them with the lists read.
async fn interactive<S: Store>(store: &S, ops: &[Mop]) -> Result<Vec<Mop>, TxnError> {
    store
        .transact(|mut tx| async move {
            let mut done = Vec::new();
            for op in ops {
                let (Mop::Read(k, _) | Mop::Append(k, _)) = op;
                let mut list = decode_list(tx.get(&list_key(*k)).await?.as_deref()).unwrap();
                match op {
                    Mop::Read(..) => done.push(Mop::Read(*k, Some(list))),
                    Mop::Append(_, v) => {
                        list.push(*v);
                        tx.put(&list_key(*k), &encode_list(&list))?;
                        done.push(op.clone());
                    }
                }
            }
            Ok((tx, done))
        })
        .await
}
