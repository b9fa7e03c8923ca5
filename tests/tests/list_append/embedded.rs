//! The embedded database: procedures and interactive transactions from threads.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sequencer::SealerConfig;
use tests::history::{Mop, Recorder};
use txn::{Database, Options, ShardMap, TxnError};

use txn::builtin::{ListAppend, decode_list, encode_list, list_key};

use crate::{
    CLIENTS, TXNS_PER_CLIENT, check_strict_serializable, encode_ops, random_ops, record, with_reads,
};

/// Runs `ops` as an interactive transaction; returns them with the lists read.
fn interactive(db: &Database, ops: &[Mop]) -> Result<Vec<Mop>, TxnError> {
    db.transact(|tx| {
        let mut done = Vec::new();
        for op in ops {
            match op {
                Mop::Read(k, _) => {
                    let list = decode_list(tx.get(&list_key(*k))?.as_deref()).unwrap();
                    done.push(Mop::Read(*k, Some(list)))
                }
                Mop::Append(k, v) => {
                    let mut list = decode_list(tx.get(&list_key(*k))?.as_deref()).unwrap();
                    list.push(*v);
                    tx.put(&list_key(*k), &encode_list(&list))?;
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
        shard_map: Some(ShardMap::uniform(3)),
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
                    let ops = random_ops(&mut rng, &next_value);
                    history.invoke(process, &ops);
                    let result = if rng.random_bool(0.5) {
                        interactive(&db, &ops)
                    } else {
                        db.call("list_append", &encode_ops(&ops)).map(|out| with_reads(&ops, &out))
                    };
                    committed += u64::from(record(&history, process, &ops, result));
                }
                committed
            })
        })
        .collect();
    let committed: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(committed > CLIENTS * TXNS_PER_CLIENT / 2, "only {committed} transactions committed");

    check_strict_serializable(&history, "list-append", seed);
}
