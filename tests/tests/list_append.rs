//! Strict serializability of the embedded database, judged by an outside checker.
//!
//! Concurrent clients run Jepsen's list-append workload: each transaction reads some keys'
//! lists and appends unique values to others, as an interactive transaction or as a
//! deterministic procedure. Keys live on all three shards, so many transactions are
//! multi-shard. Every invocation and completion is recorded in real-time order, and `adya`
//! checks the history for strict serializability: the same check that finds the anomalies in
//! the reference histories (`checker.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sequencer::SealerConfig;
use storage::KeyRange;
use tests::history::{Completion, Mop, Recorder, Workload, check};
use txn::{Context, Database, Options, ProcError, Procedure, ShardMap, TxnError};

const KEYS: u64 = 8;
const CLIENTS: u64 = 6;
const TXNS_PER_CLIENT: u64 = 60;

/// Key `k`'s list, on shard `k % 3`.
fn storage_key(k: u64) -> Vec<u8> {
    format!("{}/list/{k}", ["a", "b", "c"][(k % 3) as usize]).into_bytes()
}

fn decode_list(v: Option<Vec<u8>>) -> Vec<u64> {
    match v {
        None => Vec::new(),
        Some(v) => String::from_utf8(v).unwrap().split(',').map(|x| x.parse().unwrap()).collect(),
    }
}

fn encode_list(list: &[u64]) -> Vec<u8> {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

/// Micro-ops as procedure arguments: "r:3 a:5:17" reads key 3, appends 17 to key 5.
fn encode_ops(ops: &[Mop]) -> Vec<u8> {
    let parts: Vec<String> = ops
        .iter()
        .map(|m| match m {
            Mop::Read(k, _) => format!("r:{k}"),
            Mop::Append(k, v) => format!("a:{k}:{v}"),
        })
        .collect();
    parts.join(" ").into_bytes()
}

fn decode_ops(args: &[u8]) -> Vec<Mop> {
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
struct ListAppend;

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
fn with_reads(ops: &[Mop], output: &[u8]) -> Vec<Mop> {
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

/// Runs `ops` as an interactive transaction; returns them with the lists read.
fn interactive(db: &Database, ops: &[Mop]) -> Result<Vec<Mop>, TxnError> {
    db.transact(|tx| {
        let mut done = Vec::new();
        for op in ops {
            match op {
                Mop::Read(k, _) => {
                    done.push(Mop::Read(*k, Some(decode_list(tx.get(&storage_key(*k))?))))
                }
                Mop::Append(k, v) => {
                    let mut list = decode_list(tx.get(&storage_key(*k))?);
                    list.push(*v);
                    tx.put(&storage_key(*k), &encode_list(&list))?;
                    done.push(op.clone());
                }
            }
        }
        Ok(done)
    })
}

#[test]
fn concurrent_list_append_histories_are_strictly_serializable() {
    let seed = std::env::var("SEALDB_SEED").map_or(7, |s| s.parse().unwrap());
    eprintln!("list-append seed {seed} (rerun with SEALDB_SEED={seed})");
    let options = Options {
        shard_map: Some(ShardMap::new(vec![b"b".to_vec(), b"c".to_vec()]).unwrap()),
        sealer: SealerConfig {
            window_interval: Duration::from_millis(2),
            ..SealerConfig::default()
        },
        ..Options::in_memory()
    }
    .procedure(Arc::new(ListAppend));
    let db = Arc::new(Database::open("unused", options).unwrap());
    let history = Arc::new(Recorder::new());
    let next_value = Arc::new(AtomicU64::new(1));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|process| {
            let (db, history, next_value) = (db.clone(), history.clone(), next_value.clone());
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed * 1000 + process);
                let mut committed = 0;
                for _ in 0..TXNS_PER_CLIENT {
                    let ops: Vec<Mop> = (0..rng.random_range(1..5))
                        .map(|_| {
                            let k = rng.random_range(0..KEYS);
                            if rng.random_bool(0.5) {
                                Mop::Read(k, None)
                            } else {
                                Mop::Append(k, next_value.fetch_add(1, Ordering::SeqCst))
                            }
                        })
                        .collect();
                    history.invoke(process, &ops);
                    let result = if rng.random_bool(0.5) {
                        interactive(&db, &ops)
                    } else {
                        db.call("list_append", &encode_ops(&ops)).map(|out| with_reads(&ops, &out))
                    };
                    match result {
                        Ok(done) => {
                            history.complete(process, Completion::Ok, &done);
                            committed += 1;
                        }
                        // Certainly not committed: conflicts after all retries, aborts.
                        Err(TxnError::Conflict { .. } | TxnError::Aborted(_)) => {
                            history.complete(process, Completion::Fail, &ops)
                        }
                        Err(e) => {
                            history.complete(process, Completion::Info, &ops);
                            panic!("unexpected error {e}");
                        }
                    }
                }
                committed
            })
        })
        .collect();
    let committed: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(committed > CLIENTS * TXNS_PER_CLIENT / 2, "only {committed} transactions committed");

    let text = history.to_jsonl();
    let verdict = check(&text, Workload::ListAppend, "strict-serializable").unwrap();
    if verdict.valid != Some(true) {
        let path = std::env::temp_dir().join(format!("sealdb-list-append-{seed}.jsonl"));
        std::fs::write(&path, &text).unwrap();
        panic!("seed {seed}: {verdict:?}; history written to {}", path.display());
    }
}
