//! The embedded database end to end, on three shards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{num, point, three_shards};
use embedded::{Database, Options};
use storage::KeyRange;
use txn::{AbortReason, Context, ProcError, Procedure, ReadAt, TxnError};

const ACCOUNTS: u64 = 12;
const INITIAL: u64 = 100;

/// Accounts spread over the three shards: "a/..", "b/..", "c/..".
fn account(i: u64) -> Vec<u8> {
    format!("{}/{i:03}", ["a", "b", "c"][(i % 3) as usize]).into_bytes()
}

/// `transfer from to amount`: moves money between two accounts, aborting on overdraft.
struct Transfer;

fn transfer_args(from: u64, to: u64, amount: u64) -> Vec<u8> {
    format!("{from} {to} {amount}").into_bytes()
}

fn parse(args: &[u8]) -> Vec<u64> {
    String::from_utf8(args.to_vec()).unwrap().split(' ').map(|s| s.parse().unwrap()).collect()
}

impl Procedure for Transfer {
    fn name(&self) -> &str {
        "transfer"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        let a = parse(args);
        Ok(vec![point(&account(a[0])), point(&account(a[1]))])
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let a = parse(args);
        let (from, to) = (account(a[0]), account(a[1]));
        let balance = num(ctx.get(&from)?);
        if balance < a[2] {
            return Err(ProcError::abort("insufficient funds"));
        }
        let other = num(ctx.get(&to)?);
        ctx.put(&from, (balance - a[2]).to_string().as_bytes())?;
        ctx.put(&to, (other + a[2]).to_string().as_bytes())?;
        Ok(balance.to_string().into_bytes())
    }
}

/// Writes a key it did not declare.
struct Sneaky;

impl Procedure for Sneaky {
    fn name(&self) -> &str {
        "sneaky"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![point(&account(0))])
    }
    fn run(&self, ctx: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        ctx.put(&account(0), b"0")?;
        ctx.put(&account(1), b"999")?;
        Ok(Vec::new())
    }
}

/// `balances i j`: the two accounts' balances; writes nothing.
struct Balances;

impl Procedure for Balances {
    fn name(&self) -> &str {
        "balances"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(parse(args).into_iter().map(|i| point(&account(i))).collect())
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let mut balances = Vec::new();
        for i in parse(args) {
            balances.push(num(ctx.get(&account(i))?).to_string());
        }
        Ok(balances.join(" ").into_bytes())
    }
}

fn options() -> Options {
    three_shards(true)
        .procedure(Arc::new(Transfer))
        .procedure(Arc::new(Sneaky))
        .procedure(Arc::new(Balances))
}

/// Whether a transaction committed. A procedure's own abort (insufficient funds) or a
/// conflict that outlasted the retries is an answer; any other error (an unknown outcome, a
/// storage failure) fails the test rather than count as "not committed".
fn did_commit<T>(result: Result<T, TxnError>) -> bool {
    match result {
        Ok(_) => true,
        Err(TxnError::Aborted(AbortReason::User(_)) | TxnError::Conflict { .. }) => false,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn fund(db: &Database) {
    db.transact(|tx| {
        for i in 0..ACCOUNTS {
            tx.put(&account(i), INITIAL.to_string().as_bytes())?;
        }
        Ok(())
    })
    .unwrap();
}

fn total(db: &Database) -> u64 {
    let snap = db.snapshot(ReadAt::Latest).unwrap();
    (0..ACCOUNTS).map(|i| num(snap.get(&account(i)).unwrap())).sum()
}

/// A read-only call reads its snapshot (over shards), whichever commits come after it; a
/// procedure that writes, called read-only, aborts with nothing changed.
#[test]
fn a_read_only_call_reads_its_snapshot_and_a_write_in_it_changes_nothing() {
    let db = Database::open("unused", options()).unwrap();
    fund(&db);
    let before = db.snapshot(ReadAt::Latest).unwrap();
    db.call("transfer", &transfer_args(0, 1, 30)).unwrap();
    let after = db.snapshot(ReadAt::Latest).unwrap();
    assert_eq!(before.call("balances", b"0 1").unwrap(), b"100 100");
    assert_eq!(after.call("balances", b"0 1").unwrap(), b"70 130");
    let err = after.call("transfer", &transfer_args(0, 1, 5)).unwrap_err();
    assert!(
        matches!(err, TxnError::Aborted(AbortReason::User(ref why)) if why.contains("cannot write")),
        "{err:?}"
    );
    let latest = db.snapshot(ReadAt::Latest).unwrap();
    assert_eq!(latest.call("balances", b"0 1").unwrap(), b"70 130");
    assert!(matches!(latest.call("no.such", b""), Err(TxnError::UnknownProcedure(_))));
}

#[test]
fn a_committed_call_is_visible_to_every_later_latest_snapshot() {
    let db = Database::open("unused", options()).unwrap();
    fund(&db);
    let before = db.call("transfer", &transfer_args(0, 1, 30)).unwrap();
    assert_eq!(before, b"100");
    let snap = db.snapshot(ReadAt::Latest).unwrap();
    assert_eq!(num(snap.get(&account(0)).unwrap()), 70);
    assert_eq!(num(snap.get(&account(1)).unwrap()), 130);
    let rows = snap.scan(&KeyRange::prefix(b"a/"), 100).unwrap();
    assert_eq!(rows.len(), (ACCOUNTS / 3) as usize);
    db.close().unwrap();
}

#[test]
fn concurrent_transfers_across_shards_never_change_the_total() {
    let db = Arc::new(Database::open("unused", options()).unwrap());
    fund(&db);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                assert_eq!(total(&db), ACCOUNTS * INITIAL, "a snapshot saw a torn transfer");
                reads += 1;
            }
            reads
        })
    };
    let workers: Vec<_> = (0..6u64)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut committed = 0;
                for n in 0..40u64 {
                    let (from, to) = ((w * 7 + n) % ACCOUNTS, (w * 5 + n * 3 + 1) % ACCOUNTS);
                    if from == to {
                        continue;
                    }
                    // Half as procedures, half as interactive transactions.
                    let ok = if n % 2 == 0 {
                        did_commit(db.call("transfer", &transfer_args(from, to, 7)))
                    } else {
                        did_commit(db.transact(|tx| {
                            let a = num(tx.get(&account(from))?);
                            let b = num(tx.get(&account(to))?);
                            if a >= 7 {
                                tx.put(&account(from), (a - 7).to_string().as_bytes())?;
                                tx.put(&account(to), (b + 7).to_string().as_bytes())?;
                            }
                            Ok(())
                        }))
                    };
                    committed += u64::from(ok);
                }
                committed
            })
        })
        .collect();
    let committed: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    done.store(true, Ordering::SeqCst);
    let reads = reader.join().unwrap();
    assert!(committed > 100, "only {committed} transfers committed");
    assert!(reads > 0);
    assert_eq!(total(&db), ACCOUNTS * INITIAL);
}

/// A transaction that wrote nothing, whose snapshot holds every commit returned before it
/// began, commits at its snapshot without a window; one that writes still takes one. On one
/// shard the snapshot always holds them: the shard that returned a commit had applied it.
#[test]
fn a_read_only_transaction_commits_at_its_snapshot_without_a_window() {
    let db = Database::open("unused", Options { shard_map: None, shards: 1, ..options() }).unwrap();
    let mut tx = db.begin().unwrap();
    tx.put(b"b/x", b"1").unwrap();
    let written = tx.commit().unwrap();

    let before = db.stats();
    let mut tx = db.begin().unwrap();
    let read_ts = tx.read_ts();
    assert!(read_ts >= written, "began at {read_ts:?}, below the returned commit {written:?}");
    assert_eq!(tx.get(b"b/x").unwrap(), Some(b"1".to_vec()));
    assert_eq!(tx.scan(&KeyRange::from(b"b/".to_vec()), 10).unwrap().len(), 1);
    assert_eq!(tx.commit().unwrap(), read_ts);
    assert_eq!(db.stats().entries, before.entries, "a read-only commit took a window");

    let mut tx = db.begin().unwrap();
    assert_eq!(tx.get(b"b/x").unwrap(), Some(b"1".to_vec()));
    tx.put(b"b/y", b"2").unwrap();
    assert!(tx.commit().unwrap() > read_ts);
    assert_eq!(db.stats().entries, before.entries + 1, "a writing commit took no window");
}

#[test]
fn concurrent_read_modify_writes_lose_no_update() {
    let opened = std::time::Instant::now();
    let db = Arc::new(Database::open("unused", options()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    db.transact(|tx| {
                        let n = num(tx.get(b"b/counter")?);
                        tx.put(b"b/counter", (n + 1).to_string().as_bytes())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(num(db.snapshot(ReadAt::Latest).unwrap().get(b"b/counter").unwrap()), 100);
    let stats = db.stats();
    assert_eq!(stats.committed, 100, "{stats:?}");
    assert_eq!(stats.entries, stats.committed + stats.conflicts + stats.aborts, "{stats:?}");
    assert!(stats.windows > 0 && stats.windows <= stats.entries, "{stats:?}");
    // The shard threads' time is counted once: its parts add up to no more than they lived.
    let t = stats.shard_time;
    assert!(t.working > 0 && t.writing > 0, "{t:?}");
    let counted = t.awaiting_window + t.awaiting_durable + t.awaiting_peer + t.writing + t.working;
    let lived = opened.elapsed().as_micros() as u64 * db.shard_map().shards().count() as u64;
    assert!(counted <= lived, "{counted} µs counted in {lived} µs of shard threads: {t:?}");
}

#[test]
fn reopening_recovers_every_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = || Options { in_memory: false, ..options() };
    {
        let db = Database::open(dir.path(), on_disk()).unwrap();
        fund(&db);
        for n in 0..10 {
            db.call("transfer", &transfer_args(n % ACCOUNTS, (n + 1) % ACCOUNTS, 5)).unwrap();
        }
        db.close().unwrap();
    }
    let db = Database::open(dir.path(), on_disk()).unwrap();
    assert_eq!(total(&db), ACCOUNTS * INITIAL);
    // Account 0 sent 5 and account 10 sent 5 to 11; 1..9 each received and sent 5.
    assert_eq!(num(db.snapshot(ReadAt::Latest).unwrap().get(&account(0)).unwrap()), 95);
    assert_eq!(num(db.snapshot(ReadAt::Latest).unwrap().get(&account(10)).unwrap()), 105);
    db.call("transfer", &transfer_args(10, 0, 5)).unwrap();
    assert_eq!(num(db.snapshot(ReadAt::Latest).unwrap().get(&account(0)).unwrap()), 100);
}

#[test]
fn bad_requests_get_typed_errors_and_change_nothing() {
    let db = Database::open("unused", options()).unwrap();
    fund(&db);
    let unknown = db.call("no-such-procedure", b"").unwrap_err();
    assert_eq!(unknown, TxnError::UnknownProcedure("no-such-procedure".into()));
    assert!(!unknown.is_retryable());

    let broke = db.call("transfer", &transfer_args(0, 1, 1_000)).unwrap_err();
    assert_eq!(broke, TxnError::Aborted(AbortReason::User("insufficient funds".into())));

    let sneaky = db.call("sneaky", b"").unwrap_err();
    assert!(matches!(sneaky, TxnError::Aborted(AbortReason::OutsideDeclaredRanges(_))), "{sneaky}");

    let big = db.transact(|tx| tx.put(b"a/big", &vec![0u8; 1024 * 1024 + 1])).unwrap_err();
    assert!(matches!(big, TxnError::TooLarge(_)), "{big}");
    let long_key = db.transact(|tx| tx.put(&vec![b'a'; 10 * 1024 + 1], b"v")).unwrap_err();
    assert!(matches!(long_key, TxnError::TooLarge(_)), "{long_key}");

    let ancient = db.clock().now().saturating_sub(Duration::from_secs(3600));
    let old = db.snapshot(ReadAt::At(ancient)).err().unwrap();
    assert!(matches!(old, TxnError::OutsideRetention { .. }), "{old}");

    let snap = db.snapshot(ReadAt::Latest).unwrap();
    for i in 0..ACCOUNTS {
        assert_eq!(num(snap.get(&account(i)).unwrap()), INITIAL, "account {i} changed");
    }
    assert_eq!(snap.get(b"a/big").unwrap(), None);
}

#[test]
fn a_snapshot_at_a_past_timestamp_sees_the_state_then() {
    let db = Database::open("unused", options()).unwrap();
    fund(&db);
    let then = db.snapshot(ReadAt::Latest).unwrap().ts();
    db.call("transfer", &transfer_args(2, 3, 50)).unwrap();
    let past = db.snapshot(ReadAt::At(then)).unwrap();
    assert_eq!(num(past.get(&account(2)).unwrap()), INITIAL);
    let now = db.snapshot(ReadAt::Latest).unwrap();
    assert_eq!(num(now.get(&account(2)).unwrap()), INITIAL - 50);
}

/// A `Latest` snapshot taken once every shard has applied every commit returned so far reads
/// that state at once, at the shards' safe time (below the clock, unless a window was applied
/// in the instant between), and still sees each of those commits.
#[test]
fn a_latest_snapshot_reads_what_every_shard_applied_without_waiting_for_the_clock() {
    // Windows sealed at most every 200 ms when idle: an empty one applied between the clock
    // reading and the snapshot (which the snapshot would then read at) is rare even on a
    // loaded machine, where 2 ms windows made it common enough to fail the count below.
    let mut options = options();
    options.sealer.window_interval = Duration::from_millis(200);
    let db = Database::open("unused", options).unwrap();
    fund(&db);
    let mut below_the_clock = 0;
    for round in 1..=20 {
        db.call("transfer", &transfer_args(4, 5, 1)).unwrap();
        let before = db.clock().now();
        let snap = db.snapshot(ReadAt::Latest).unwrap();
        assert_eq!(num(snap.get(&account(4)).unwrap()), INITIAL - round, "round {round}");
        assert_eq!(num(snap.get(&account(5)).unwrap()), INITIAL + round, "round {round}");
        below_the_clock += u32::from(snap.ts() < before);
    }
    // Waiting for the clock, as DESIGN.md's `Latest` does, would read above it every time.
    assert!(below_the_clock >= 10, "{below_the_clock} of 20 snapshots read below the clock");
}

#[test]
fn async_callers_on_one_thread_commit_concurrently_with_commit_wait() {
    // A 2 ms offset makes every commit wait on the runtime's timer, not on a thread.
    let options = Options { max_offset: Duration::from_millis(2), ..options() };
    let db = Arc::new(Database::open("unused", options).unwrap());
    fund(&db);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let (committed, windows) = runtime.block_on(async {
        let windows_before = db.stats().windows;
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..120u64 {
            let db = db.clone();
            tasks.spawn(async move {
                let from = t % ACCOUNTS;
                let to = (from + 1 + t % (ACCOUNTS - 1)) % ACCOUNTS;
                did_commit(db.call_async("transfer", &transfer_args(from, to, 1)).await)
            });
        }
        let mut committed = 0;
        while let Some(ok) = tasks.join_next().await {
            committed += u64::from(ok.unwrap());
        }
        (committed, db.stats().windows - windows_before)
    });
    assert_eq!(committed, 120, "every transfer commits (each account holds enough)");
    assert!(windows < 120, "{windows} windows for 120 concurrent calls: they were batched");
    assert_eq!(total(&db), ACCOUNTS * INITIAL);
    let unknown = runtime.block_on(db.call_async("no-such-procedure", b"")).unwrap_err();
    assert_eq!(unknown, TxnError::UnknownProcedure("no-such-procedure".into()));
}

/// Regression: a window's batch was held to one transaction's limit (10 MiB of writes), so
/// twelve transactions of 1 MiB sealed into one window stopped the shard, and every reopen
/// stopped again at the same window. Each transaction is within the limit: all commit.
#[test]
fn a_window_of_many_large_transactions_commits_them_all() {
    let mut options = three_shards(true);
    // One long window for all of them.
    options.sealer.window_interval = Duration::from_millis(300);
    options.sealer.seal_ahead = None;
    let db = Arc::new(Database::open("unused", options).unwrap());
    let writers: Vec<_> = (0..12u8)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || {
                db.transact(|tx| tx.put(&[b'a', i], &vec![i; 1 << 20])).map(|_| i)
            })
        })
        .collect();
    for writer in writers {
        let i = writer.join().unwrap().unwrap();
        let value = db.snapshot(ReadAt::Latest).unwrap().get(&[b'a', i]).unwrap();
        assert_eq!(value, Some(vec![i; 1 << 20]));
    }
}

/// Panics when it runs: a bug in a procedure.
struct Explode;

impl Procedure for Explode {
    fn name(&self) -> &str {
        "explode"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![point(b"a/boom"), point(b"b/boom")])
    }
    fn run(&self, _: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        panic!("explode was called")
    }
}

/// Regression: when one shard thread panicked, the other shards waited for it forever, and
/// so did every caller. A panic now fails the database like a storage failure: callers are
/// answered (the outcome of the one that was in flight is unknown) and later calls refused.
#[test]
fn a_panicking_shard_thread_fails_every_waiting_caller() {
    let db = Arc::new(Database::open("unused", options().procedure(Arc::new(Explode))).unwrap());
    fund(&db);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut callers = Vec::new();
    for name in ["explode", "transfer"] {
        let (db, tx) = (db.clone(), tx.clone());
        callers.push(std::thread::spawn(move || {
            let args = if name == "transfer" { transfer_args(0, 1, 1) } else { Vec::new() };
            let _ = tx.send((name, db.call(name, &args)));
        }));
    }
    for _ in 0..2 {
        let (name, result) =
            rx.recv_timeout(Duration::from_secs(20)).expect("every caller is answered");
        if name == "explode" {
            assert!(
                matches!(result, Err(TxnError::OutcomeUnknown | TxnError::Storage(_))),
                "{result:?}"
            );
        }
    }
    match db.call("transfer", &transfer_args(0, 1, 1)) {
        Err(TxnError::Storage(why)) => assert!(why.contains("panicked"), "{why}"),
        other => panic!("expected the failure, got {other:?}"),
    }
    for caller in callers {
        caller.join().unwrap();
    }
}

/// Regression (found by a soak that filled the disk): the sequencer thread panicked when its
/// clock could not persist its high-water mark, and every caller waited forever, since the
/// shards took the log's end for a clean close. Now the sequencer fails as after a log error
/// and the shards fail with it: every caller is answered, and later calls refused with why.
#[test]
fn a_clock_that_cannot_persist_fails_the_database_and_answers_every_caller() {
    let dir = tempfile::tempdir().unwrap();
    let db =
        Arc::new(Database::open(dir.path(), Options { in_memory: false, ..options() }).unwrap());
    fund(&db);
    // The clock writes its bound to `clock.tmp` first, then renames it: a directory there
    // (not empty) makes every write fail, as a full disk does, once its lease runs out.
    std::fs::create_dir(dir.path().join("clock.tmp")).unwrap();
    std::fs::write(dir.path().join("clock.tmp").join("in the way"), b"").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut clients = Vec::new();
    for client in 0..4u8 {
        let (db, tx) = (db.clone(), tx.clone());
        clients.push(std::thread::spawn(move || {
            let n = u64::from(client);
            loop {
                match db.call("transfer", &transfer_args(n, (n + 1) % ACCOUNTS, 1)) {
                    // The procedure's own abort (funds ran out): not what this test awaits.
                    Ok(_) | Err(TxnError::Aborted(_)) => {}
                    Err(e) => {
                        let _ = tx.send(e);
                        return;
                    }
                }
            }
        }));
    }
    for _ in 0..4 {
        let e = rx.recv_timeout(Duration::from_secs(20)).expect("every caller is answered");
        assert!(matches!(e, TxnError::OutcomeUnknown | TxnError::Storage(_)), "{e:?}");
    }
    // The database closes on this thread, not on a client's while the process exits.
    for client in clients {
        client.join().unwrap();
    }
    match db.call("transfer", &transfer_args(0, 1, 1)) {
        Err(TxnError::Storage(why)) => {
            assert!(why.contains("cannot persist the clock high-water mark"), "{why}");
        }
        other => panic!("expected the failure, got {other:?}"),
    }
}

/// Interactive scans: a scan sees the snapshot with the transaction's own writes over it (a
/// put shows, a delete hides), and a scanned range is validated at commit: a key inserted into
/// it by a transaction that committed after the snapshot (a phantom) makes the commit a
/// conflict, and nothing of it is applied. A write beside the range does not.
#[test]
fn an_interactive_scan_sees_its_own_writes_and_a_phantom_in_its_range_is_a_conflict() {
    let db = Database::open("unused", options()).unwrap();
    db.transact(|tx| {
        tx.put(b"b/1", b"one")?;
        tx.put(b"b/3", b"three")
    })
    .unwrap();
    let range = KeyRange::prefix(b"b/");
    // `begin` reads at the shards' common safe time, which may still be below that commit:
    // a `Latest` snapshot waits until every shard is past it.
    db.snapshot(ReadAt::Latest).unwrap();

    let mut tx = db.begin().unwrap();
    tx.put(b"b/2", b"two").unwrap();
    tx.delete(b"b/3").unwrap();
    let keys: Vec<Vec<u8>> = tx.scan(&range, 10).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"b/1".to_vec(), b"b/2".to_vec()], "own put shown, own delete hidden");
    assert_eq!(tx.scan(&range, 1).unwrap().len(), 1, "the limit holds with own writes");
    tx.put(b"c/summary", b"2 rows").unwrap();
    // A phantom: another transaction inserts into the scanned range and commits first.
    db.transact(|other| other.put(b"b/0", b"zero")).unwrap();
    let err = tx.commit().unwrap_err();
    assert!(matches!(err, TxnError::Conflict { .. }), "{err}");
    let snap = db.snapshot(ReadAt::Latest).unwrap();
    assert_eq!(snap.get(b"c/summary").unwrap(), None, "nothing of the conflicting one applied");
    assert_eq!(snap.get(b"b/3").unwrap().as_deref(), Some(&b"three"[..]));

    // The same scan with a write beside the range, not in it: it commits.
    db.snapshot(ReadAt::Latest).unwrap();
    let mut tx = db.begin().unwrap();
    assert_eq!(tx.scan(&range, 10).unwrap().len(), 3);
    tx.put(b"c/summary", b"3 rows").unwrap();
    db.transact(|other| other.put(b"c/elsewhere", b"x")).unwrap();
    tx.commit().unwrap();
    let snap = db.snapshot(ReadAt::Latest).unwrap();
    assert_eq!(snap.get(b"c/summary").unwrap().as_deref(), Some(&b"3 rows"[..]));
}

/// A snapshot open for longer than the retention period is refused once the horizon passes
/// it, with a typed error: until then it reads what it always read, never a collected or newer
/// version. Later snapshots read the latest state.
#[test]
fn a_snapshot_older_than_the_retention_is_refused_not_answered_from_collected_versions() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Duration::from_secs(1);
    // Shards flush often: the horizon stays below what every shard flushed.
    let flush_interval = Duration::from_millis(100);
    let options = Options { in_memory: false, retention, flush_interval, ..options() };
    let db = Database::open(dir.path(), options).unwrap();
    db.transact(|tx| tx.put(b"a/k", b"0")).unwrap();
    let old = db.snapshot(ReadAt::Latest).unwrap();
    assert_eq!(old.get(b"a/k").unwrap().as_deref(), Some(&b"0"[..]));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0u64;
    let refused = loop {
        n += 1;
        db.transact(|tx| tx.put(b"a/k", n.to_string().as_bytes())).unwrap();
        match old.get(b"a/k") {
            Ok(v) => assert_eq!(v.as_deref(), Some(&b"0"[..]), "after {n} writes"),
            Err(e) => break e,
        }
        assert!(std::time::Instant::now() < deadline, "still readable after {n} writes");
        // Windows raise the horizon as time passes; this only paces the writes.
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(matches!(refused, TxnError::OutsideRetention { .. }), "{refused}");
    let latest = db.snapshot(ReadAt::Latest).unwrap().get(b"a/k").unwrap();
    assert_eq!(latest.as_deref(), Some(n.to_string().as_bytes()));
}

/// With small log segments and frequent flushes, the log is truncated below what every shard
/// flushed (keeping the windows whose ids are still deduplicated); reopening replays only the
/// tail and every acknowledged commit is there.
#[test]
fn the_log_is_truncated_below_what_every_shard_flushed_and_reopening_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = || {
        let mut o =
            Options { in_memory: false, flush_interval: Duration::from_millis(50), ..options() };
        o.sealer.log_segment_bytes = 16 << 10;
        o.sealer.dedup_retention = Duration::from_millis(200);
        o
    };
    let mut n = 0u64;
    {
        let db = Database::open(dir.path(), on_disk()).unwrap();
        fund(&db);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while db.stats().log_first <= storage::Epoch(1) || n < 100 {
            db.call("transfer", &transfer_args(n % ACCOUNTS, (n + 1) % ACCOUNTS, 1)).unwrap();
            n += 1;
            assert!(
                std::time::Instant::now() < deadline,
                "not truncated after {n}: {:?}",
                db.stats()
            );
        }
        let stats = db.stats();
        assert!(stats.log_bytes > 0 && stats.log_first > storage::Epoch(1), "{stats:?}");
        db.close().unwrap();
    }
    let segments = std::fs::read_dir(dir.path().join("log")).unwrap().count();
    let db = Database::open(dir.path(), on_disk()).unwrap();
    // Transfer k moved 1 from account k mod 12 to the next: every one of them is there.
    let snap = db.snapshot(ReadAt::Latest).unwrap();
    for i in 0..ACCOUNTS {
        let sent = (0..n).filter(|k| k % ACCOUNTS == i).count() as u64;
        let received = (0..n).filter(|k| (k + 1) % ACCOUNTS == i).count() as u64;
        assert_eq!(num(snap.get(&account(i)).unwrap()), INITIAL - sent + received, "account {i}");
    }
    assert!(db.stats().log_first > storage::Epoch(1), "{segments} files in the log");
    db.call("transfer", &transfer_args(0, 1, 1)).unwrap();
    assert_eq!(total(&db), ACCOUNTS * INITIAL);
}

/// `Snapshot::get_many` answers each key as `get` does, in the keys' order: keys of every
/// shard, missing and deleted ones, a key asked twice, at the latest timestamp (against a
/// model of the writes) and at a past one whose versions the row caches have newer ones of;
/// and refuses a key over the limit as `get` does. On RocksDB, so the row caches it touches
/// first are there. Seeded; the seed is printed.
#[test]
fn a_snapshots_get_many_answers_each_key_as_get_does() {
    use rand::{Rng, SeedableRng};
    let seed = 20261205;
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), three_shards(false)).unwrap();
    let key = |i: u64| format!("{}/{i:03}", ["a", "b", "c"][(i % 3) as usize]).into_bytes();
    let mut model = std::collections::BTreeMap::new();
    let mut past = None;
    for round in 0..20 {
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..10)
            .map(|_| {
                let i = rng.random_range(0..60);
                let value = rng.random_range(0..4) > 0;
                (key(i), value.then(|| format!("{round}.{i}").into_bytes()))
            })
            .collect();
        db.transact(|tx| {
            for (k, v) in &writes {
                match v {
                    Some(v) => tx.put(k, v)?,
                    None => tx.delete(k)?,
                }
            }
            Ok(())
        })
        .unwrap();
        model.extend(writes);
        if round == 9 {
            past = Some(db.snapshot(ReadAt::Latest).unwrap().ts());
        }
    }
    let latest = db.snapshot(ReadAt::Latest).unwrap();
    let mut keys: Vec<Vec<u8>> = (0..70).map(key).collect();
    keys.push(key(7));
    keys.push(b"z/none".to_vec());
    let many = latest.get_many(&keys).unwrap();
    let each: Vec<_> = keys.iter().map(|k| latest.get(k).unwrap()).collect();
    assert_eq!(many, each);
    assert_eq!(many[7], many[70]);
    assert!(many.iter().filter(|v| v.is_some()).count() > 20, "{many:?}");
    for (k, v) in keys.iter().zip(&many) {
        assert_eq!(v, model.get(k).unwrap_or(&None), "{k:?}");
    }
    let then = db.snapshot(ReadAt::At(past.unwrap())).unwrap();
    let many = then.get_many(&keys).unwrap();
    let each: Vec<_> = keys.iter().map(|k| then.get(k).unwrap()).collect();
    assert_eq!(many, each);
    assert_ne!(many, latest.get_many(&keys).unwrap(), "ten rounds later, some keys differ");
    let long = vec![b'a'; 10 * 1024 + 1];
    let refused = latest.get_many(&[key(1), long.clone()]).unwrap_err();
    assert_eq!(refused, latest.get(&long).unwrap_err());
}

/// `cpus`: the CPUs the shard thread running it may use, as Linux lists them.
struct Cpus;

impl Procedure for Cpus {
    fn name(&self) -> &str {
        "cpus"
    }
    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![point(b"a/cpus")])
    }
    fn run(&self, _: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        Ok(format!("{:?}", allowed_cpus()).into_bytes())
    }
}

/// The CPUs the calling thread may use (`Cpus_allowed_list`, such as `0-3,6`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap();
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>().unwrap()..=last.parse().unwrap());
    }
    cpus
}

#[test]
fn with_own_cores_a_shard_thread_runs_on_a_cpu_the_callers_can_keep_off() {
    let caller = allowed_cpus();
    let own = |shards| {
        let options = Options { shards, own_cores: true, ..Options::in_memory() };
        Database::open("unused", options.procedure(Arc::new(Cpus))).unwrap()
    };
    let all = own(caller.len() as u32);
    assert_eq!(all.shard_cpus(), None, "as many shards as CPUs: none reserved");
    assert!(!all.keep_off_shard_cpus());
    drop(all);
    if caller.len() < 2 {
        eprintln!("one CPU ({caller:?}): nothing to reserve");
        return;
    }
    let db = own(1);
    let shard_cpu = *caller.last().unwrap();
    assert_eq!(db.shard_cpus(), Some(vec![shard_cpu]));
    let on = String::from_utf8(db.call("cpus", b"").unwrap()).unwrap();
    assert_eq!(on, format!("{:?}", [shard_cpu]), "the shard thread's CPUs");
    assert_eq!(allowed_cpus(), caller, "opening leaves the opening thread's CPUs as they were");
    let off = std::thread::scope(|s| {
        s.spawn(|| (db.keep_off_shard_cpus(), allowed_cpus())).join().unwrap()
    });
    assert_eq!(off, (true, caller[..caller.len() - 1].to_vec()), "a caller kept off");

    let shared = Database::open("unused", Options { shards: 1, ..Options::in_memory() }).unwrap();
    assert_eq!(shared.shard_cpus(), None, "own_cores is off by default");
}
