//! The window step alone, as stories: each feeds a shard's [`Step`] events one by one and
//! checks the exact commands it returns. Shards here are `a` (shard 0) and `b` (shard 1) of a
//! two-shard map, or three for the stories that need a third participant; the bank's
//! accounts 0-2 are on shard 0 and 3-5 on shard 1.

use std::collections::BTreeMap;
use std::sync::Arc;

use clock::Timestamp;
use sequencer::{ClientId, Entry, ShardId, TxnId};
use storage::{Epoch, KeyRange, Limits, MemoryEngine, Mvcc};
use txn::builtin::{ListOp, encode_list_ops, list_key};
use txn::{Command, Distant, Event, Executor, Outcome, Request, ShardMap, Step, StepError};

use crate::bank::{self, account};

const A: ShardId = ShardId(0);
const B: ShardId = ShardId(1);
const C: ShardId = ShardId(2);

fn ts(e: u64) -> Timestamp {
    Timestamp::from_unix_duration(std::time::Duration::from_secs(1_000 + e))
}

fn txn(e: u64, index: u32) -> TxnId {
    TxnId { epoch: Epoch(e), index }
}

/// One shard: its storage and its step.
struct Shard {
    id: ShardId,
    map: ShardMap,
    mvcc: Arc<Mvcc>,
    step: Step,
}

impl Shard {
    fn new(id: ShardId, shards: u32) -> Shard {
        let mvcc = Arc::new(Mvcc::open(Arc::new(MemoryEngine::new()), Limits::default()).unwrap());
        Shard::over(id, ShardMap::uniform(shards), mvcc)
    }

    /// The step a restart opens over the same storage.
    fn over(id: ShardId, map: ShardMap, mvcc: Arc<Mvcc>) -> Shard {
        let executor = Executor::new(id, map.clone(), bank::registry(), Limits::default());
        let step = Step::open(executor, map.clone(), mvcc.clone(), Arc::new(Distant)).unwrap();
        Shard { id, map, mvcc, step }
    }

    fn restart(self) -> Shard {
        Shard::over(self.id, self.map, self.mvcc)
    }

    /// Takes `event`; returns the commands it produced.
    fn on(&mut self, event: Event) -> Vec<Command> {
        self.step.handle(event).unwrap();
        self.step.take_commands()
    }

    /// Window `e` with `entries` (this shard's slice is taken from them).
    fn window(&mut self, e: u64, entries: &[Entry]) -> Vec<Command> {
        let slice = entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.touches(self.id))
            .map(|(i, entry)| (txn(e, i as u32), entry.clone()))
            .collect();
        self.on(Event::Window { epoch: Epoch(e), ts: ts(e), slice })
    }

    /// Carries out a `Write`.
    fn write(&self, command: &Command) {
        let Command::Write(batch) = command else { panic!("not a write: {command:?}") };
        self.mvcc.apply(batch).unwrap();
    }
}

fn entry(map: &ShardMap, client: u128, name: &str, args: Vec<u8>) -> Entry {
    let registry = bank::registry();
    let ranges = registry.get(name).unwrap().ranges(&args).unwrap();
    let participants = ranges.iter().flat_map(|r| map.shards_of(r)).collect();
    let request = Request::Procedure { name: name.into(), args, ranges };
    Entry::new(ClientId(client), participants, request.into_payload())
}

fn transfer(from: u8, to: u8, amount: u64) -> Entry {
    entry(&ShardMap::uniform(2), 1, "transfer", bank::transfer_args(from, to, amount))
}

/// A first-round ask of a peer sharing an entry (which pushes it).
fn read(window: u64, shard: ShardId, at: Timestamp, points: Vec<Vec<u8>>) -> Command {
    Command::ReadRemote {
        window: Epoch(window),
        shard,
        at,
        points,
        scans: Vec::new(),
        pushed: true,
        ran: false,
    }
}

fn push(window: u64, to: ShardId, at: Timestamp, points: Vec<Vec<u8>>) -> Command {
    Command::PushReads { window: Epoch(window), to, at, points }
}

fn answer(window: u64, shard: ShardId, points: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Event {
    Event::RemoteRead { window: Epoch(window), shard, points, scans: Vec::new() }
}

fn verdicts(window: u64, from: ShardId, verdicts: &[(TxnId, bool)]) -> Event {
    Event::Verdicts { window: Epoch(window), from, verdicts: verdicts.to_vec() }
}

fn publish(window: u64, verdicts: &[(TxnId, bool)], to: ShardId) -> Command {
    Command::PublishVerdicts { window: Epoch(window), verdicts: verdicts.to_vec(), to: vec![to] }
}

fn pull(window: u64, from: ShardId) -> Command {
    Command::PullVerdicts { window: Epoch(window), from }
}

/// The user writes of a `Write`.
fn writes(command: &Command) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let Command::Write(batch) = command else { panic!("not a write: {command:?}") };
    batch.writes().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect()
}

fn balance(n: u64) -> Option<Vec<u8>> {
    Some(n.to_le_bytes().to_vec())
}

/// The outcomes of an `Applied`, and its deferred entries.
fn applied(command: &Command) -> (Vec<(TxnId, Outcome, ClientId)>, Vec<TxnId>) {
    let Command::Applied { decided, deferred, .. } = command else {
        panic!("not applied: {command:?}")
    };
    let decided = decided.iter().map(|(d, c)| (d.txn, d.outcome.clone(), *c)).collect();
    (decided, deferred.clone())
}

#[test]
fn a_transfer_between_two_shards_commits_once_both_verdicts_are_in_and_the_window_is_durable() {
    let mut a = Shard::new(A, 2);
    // Window 1 moves 30 from account 0 (shard a) to account 3 (shard b).
    let t = txn(1, 0);
    assert_eq!(
        a.window(1, &[transfer(0, 3, 30)]),
        [
            push(1, B, Timestamp::ZERO, vec![account(0)]),
            read(1, B, Timestamp::ZERO, vec![account(3)])
        ],
        "a reads b's declared key at ts_0, and b will read a's"
    );
    assert_eq!(
        a.on(answer(1, B, vec![(account(3), None)])),
        [publish(1, &[(t, true)], B), pull(1, B)],
        "executed: a publishes its verdict and asks for b's"
    );
    assert_eq!(a.on(verdicts(1, B, &[(t, true)])), [], "decided, but not durable yet");
    let done = a.on(Event::Durable(Epoch(1)));
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(writes(&done[0]), [(account(0), balance(70))], "a writes only its own key");
    let outcome = Outcome::Committed { ts: ts(1), output: Vec::new() };
    assert_eq!(applied(&done[1]), (vec![(t, outcome, ClientId(1))], vec![]));
    assert_eq!(a.step.applied(), (Epoch(1), ts(1)));
    assert!(!a.step.is_busy());

    // Shard b runs the same window; it is not the lowest participant, so it answers nothing.
    let mut b = Shard::new(B, 2);
    assert_eq!(
        b.window(1, &[transfer(0, 3, 30)]),
        [
            push(1, A, Timestamp::ZERO, vec![account(3)]),
            read(1, A, Timestamp::ZERO, vec![account(0)])
        ],
        "what b pushes is what a asks of it, and the other way round"
    );
    assert_eq!(
        b.on(answer(1, A, vec![(account(0), None)])),
        [publish(1, &[(t, true)], A), pull(1, A)]
    );
    b.on(verdicts(1, A, &[(t, true)]));
    let done = b.on(Event::Durable(Epoch(1)));
    assert_eq!(writes(&done[0]), [(account(3), balance(130))]);
    assert_eq!(applied(&done[1]), (vec![], vec![]));
}

#[test]
fn durability_may_come_first_and_nothing_is_written_before_the_verdicts() {
    let mut a = Shard::new(A, 2);
    let t = txn(1, 0);
    a.window(1, &[transfer(0, 3, 30)]);
    assert_eq!(a.on(Event::Durable(Epoch(1))), [], "durable, but b has not answered");
    a.on(answer(1, B, vec![(account(3), None)]));
    let done = a.on(verdicts(1, B, &[(t, true)]));
    assert!(matches!(done.as_slice(), [Command::Write(_), Command::Applied { .. }]), "{done:?}");
}

/// Three participants: the final verdict waits for both others, whichever answers first.
#[test]
fn verdicts_arriving_in_either_order_give_the_same_commands() {
    let map = ShardMap::uniform(3);
    // One list key on each shard.
    let key_on = |s: ShardId| (0..).find(|k| map.shard_of(&list_key(*k)) == s).unwrap();
    let ops: Vec<ListOp> = [A, B, C].iter().map(|s| ListOp::Append(key_on(*s), 1)).collect();
    let all = entry(&map, 9, "list_append", encode_list_ops(&ops));
    let t = txn(1, 0);
    let run = |first: ShardId, second: ShardId| {
        let mut a = Shard::new(A, 3);
        let mut commands = a.window(1, std::slice::from_ref(&all));
        for shard in [B, C] {
            let keys = vec![list_key(key_on(shard))];
            commands.extend(a.on(answer(1, shard, keys.into_iter().map(|k| (k, None)).collect())));
        }
        commands.extend(a.on(Event::Durable(Epoch(1))));
        assert_eq!(a.on(verdicts(1, first, &[(t, true)])), [], "still waiting for {second:?}");
        commands.extend(a.on(verdicts(1, second, &[(t, true)])));
        commands
    };
    let (one, other) = (run(B, C), run(C, B));
    assert_eq!(one, other);
    assert!(matches!(&one[..], [.., Command::Write(_), Command::Applied { .. }]), "{one:?}");
}

#[test]
fn one_participant_losing_defers_the_entry_on_this_shard_too_and_asks_for_a_window() {
    let mut a = Shard::new(A, 2);
    let t = txn(1, 0);
    a.window(1, &[transfer(0, 3, 30)]);
    a.on(answer(1, B, vec![(account(3), None)]));
    a.on(Event::Durable(Epoch(1)));
    // b lost validation for this entry in window 1.
    let done = a.on(verdicts(1, B, &[(t, false)]));
    assert_eq!(writes(&done[0]), [], "a deferred entry writes nothing");
    assert_eq!(applied(&done[1]), (vec![], vec![t]));
    assert_eq!(done[2], Command::RequestWindow { after: Epoch(1) });

    // In window 2 it runs first, under its own id, and commits.
    assert_eq!(
        a.window(2, &[]),
        [push(2, B, ts(1), vec![account(0)]), read(2, B, ts(1), vec![account(3)])]
    );
    a.on(answer(2, B, vec![(account(3), None)]));
    a.on(Event::Durable(Epoch(2)));
    let done = a.on(verdicts(2, B, &[(t, true)]));
    assert_eq!(writes(&done[0]), [(account(0), balance(70))]);
    let outcome = Outcome::Committed { ts: ts(2), output: Vec::new() };
    assert_eq!(applied(&done[1]), (vec![(t, outcome, ClientId(1))], vec![]));
}

#[test]
fn a_crash_between_execute_and_write_loses_nothing_the_window_runs_again_to_the_same_batch() {
    let t = txn(1, 0);
    let run_to_write = |a: &mut Shard| {
        a.window(1, &[transfer(0, 3, 30)]);
        a.on(answer(1, B, vec![(account(3), None)]));
        a.on(verdicts(1, B, &[(t, true)]));
        a.on(Event::Durable(Epoch(1)))
    };
    let mut a = Shard::new(A, 2);
    a.window(1, &[transfer(0, 3, 30)]);
    a.on(answer(1, B, vec![(account(3), None)]));
    // Executed and published; the process dies before the window is written.
    let mut a = a.restart();
    assert_eq!(a.step.applied(), (Epoch(0), Timestamp::ZERO), "nothing was written");
    let after_crash = run_to_write(&mut a);
    let without_crash = run_to_write(&mut Shard::new(A, 2));
    assert_eq!(after_crash, without_crash);
}

#[test]
fn a_window_replayed_after_its_write_changes_nothing_and_the_next_follows() {
    let t = txn(1, 0);
    let mut a = Shard::new(A, 2);
    a.window(1, &[transfer(0, 3, 30)]);
    a.on(answer(1, B, vec![(account(3), None)]));
    a.on(verdicts(1, B, &[(t, true)]));
    let done = a.on(Event::Durable(Epoch(1)));
    a.write(&done[0]);
    let mut a = a.restart();
    assert_eq!(a.step.applied(), (Epoch(1), ts(1)));
    assert_eq!(a.window(1, &[transfer(0, 3, 30)]), [], "window 1 is applied already");
    assert_eq!(a.on(Event::Durable(Epoch(1))), []);
    // Window 2 moves 20 more; it reads at ts_1 and sees window 1's write.
    let t2 = txn(2, 0);
    assert_eq!(
        a.window(2, &[transfer(0, 3, 20)]),
        [push(2, B, ts(1), vec![account(0)]), read(2, B, ts(1), vec![account(3)])]
    );
    a.on(answer(2, B, vec![(account(3), balance(130))]));
    a.on(verdicts(2, B, &[(t2, true)]));
    let done = a.on(Event::Durable(Epoch(2)));
    assert_eq!(writes(&done[0]), [(account(0), balance(50))]);
}

#[test]
fn a_window_out_of_order_or_durable_out_of_turn_stops_the_shard() {
    let mut a = Shard::new(A, 2);
    let err = a.step.handle(Event::Window { epoch: Epoch(2), ts: ts(2), slice: vec![] });
    assert!(
        matches!(err, Err(StepError::OutOfOrder { got: Epoch(2), expected: Epoch(1), .. })),
        "{err:?}"
    );
    let err = a.step.handle(Event::Durable(Epoch(1)));
    assert!(matches!(err, Err(StepError::DurableOutOfTurn(Epoch(1)))), "{err:?}");
    a.window(1, &[transfer(0, 3, 30)]);
    let err = a.step.handle(Event::Window { epoch: Epoch(2), ts: ts(2), slice: vec![] });
    assert!(matches!(err, Err(StepError::OutOfOrder { .. })), "a window while one is in progress");
}

#[test]
fn a_peer_that_fails_for_good_stops_the_shard_with_a_typed_error() {
    let mut a = Shard::new(A, 2);
    a.window(1, &[transfer(0, 3, 30)]);
    let err = a.step.handle(Event::PeerFailed { shard: B, why: "refused".into() });
    assert!(matches!(err, Err(StepError::PeerFailed { shard: B, .. })), "{err:?}");
}

/// The audit declares ranges, not points: what it reads on b is only known by running it,
/// so the step asks for it and runs the window again with the answer. Its first run also
/// says what it read of a's own accounts, for b, whose run of the audit reads them too; and
/// its ask says b pushes the same (`ran`).
#[test]
fn an_undeclared_remote_read_is_asked_for_and_the_window_runs_again_with_the_answer() {
    let mut a = Shard::new(A, 2);
    let audit = entry(&ShardMap::uniform(2), 5, "audit", Vec::new());
    let t = txn(1, 0);
    assert_eq!(
        a.window(1, &[audit]),
        [push(1, B, Timestamp::ZERO, vec![]), read(1, B, Timestamp::ZERO, vec![])],
        "only the wait"
    );
    let asked = a.on(answer(1, B, vec![]));
    let scans: Vec<_> = (3..bank::ACCOUNTS).map(|i| (bank::account_range(i), 2)).collect();
    assert_eq!(
        asked,
        [
            Command::PushRunReads {
                window: Epoch(1),
                to: B,
                at: Timestamp::ZERO,
                points: vec![],
                scans: (0..3).map(bank::account_range).collect(),
            },
            Command::ReadRemote {
                window: Epoch(1),
                shard: B,
                at: Timestamp::ZERO,
                points: vec![],
                scans: scans.clone(),
                pushed: false,
                ran: true,
            }
        ]
    );
    let rows = vec![(account(3), 90u64.to_le_bytes().to_vec())];
    let answered =
        scans.into_iter().enumerate().map(|(i, s)| (s, if i == 0 { rows.clone() } else { vec![] }));
    let event =
        Event::RemoteRead { window: Epoch(1), shard: B, points: vec![], scans: answered.collect() };
    assert_eq!(a.on(event), [publish(1, &[(t, true)], B), pull(1, B)]);
    a.on(verdicts(1, B, &[(t, true)]));
    let done = a.on(Event::Durable(Epoch(1)));
    let (decided, _) = applied(&done[1]);
    let Outcome::Committed { output, .. } = &decided[0].1 else { panic!("{decided:?}") };
    assert_eq!(bank::audited(output), [100, 100, 100, 90, 100, 100]);
}

/// A peer's run of a shared entry read what this shard's run then misses; the shell answers
/// the ask with all of the peer's rows of each range (more than the ask's limit): the run
/// after takes the first rows of each, as a scan with that limit would read them, and asks
/// for nothing more. A range answered only in part (fewer rows than the limit, and more to
/// come) is asked for again.
#[test]
fn a_scan_is_answered_from_a_fuller_answer_and_asked_again_from_a_partial_one() {
    let map = ShardMap::uniform(2);
    let audit = || entry(&map, 5, "audit", Vec::new());
    let t = txn(1, 0);
    let rows = |i: u8| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut sub = account(i);
        sub.push(1);
        vec![(account(i), 90u64.to_le_bytes().to_vec()), (sub, b"x".to_vec())]
    };
    // All the rows of each range, as a run's push holds them: answered with a limit above.
    let full: Vec<_> =
        (3..bank::ACCOUNTS).map(|i| ((bank::account_range(i), usize::MAX), rows(i))).collect();
    let mut a = Shard::new(A, 2);
    a.window(1, &[audit()]);
    a.on(answer(1, B, vec![]));
    let event = Event::RemoteRead { window: Epoch(1), shard: B, points: vec![], scans: full };
    assert_eq!(a.on(event), [publish(1, &[(t, true)], B), pull(1, B)], "nothing asked again");
    a.on(verdicts(1, B, &[(t, true)]));
    let done = a.on(Event::Durable(Epoch(1)));
    let (decided, _) = applied(&done[1]);
    let Outcome::Committed { output, .. } = &decided[0].1 else { panic!("{decided:?}") };
    assert_eq!(bank::audited(output), [100, 100, 100, 90, 90, 90]);

    // One row of account 3's range, with more to come: not enough for a limit of 2.
    let mut a = Shard::new(A, 2);
    a.window(1, &[audit()]);
    a.on(answer(1, B, vec![]));
    let mut partial: Vec<_> =
        (4..bank::ACCOUNTS).map(|i| ((bank::account_range(i), usize::MAX), rows(i))).collect();
    partial.push(((bank::account_range(3), 1), rows(3)[..1].to_vec()));
    let event = Event::RemoteRead { window: Epoch(1), shard: B, points: vec![], scans: partial };
    let again = a.on(event);
    let [Command::ReadRemote { scans, ran: false, .. }] = again.as_slice() else {
        panic!("{again:?}")
    };
    assert_eq!(scans, &[(bank::account_range(3), 2)]);
}

/// Answers arriving for a window no longer in progress (a retry's duplicate) change nothing.
#[test]
fn late_duplicate_answers_are_ignored() {
    let mut a = Shard::new(A, 2);
    let t = txn(1, 0);
    a.window(1, &[transfer(0, 3, 30)]);
    a.on(answer(1, B, vec![(account(3), None)]));
    assert_eq!(a.on(answer(1, B, vec![(account(3), balance(5))])), [], "answered already");
    a.on(verdicts(1, B, &[(t, true)]));
    assert_eq!(a.on(verdicts(1, B, &[(t, false)])), [], "b was counted already");
    let done = a.on(Event::Durable(Epoch(1)));
    assert_eq!(writes(&done[0]), [(account(0), balance(70))]);
    assert_eq!(a.on(verdicts(1, B, &[(t, false)])), [], "the window is done");
}

/// What a shard pushes a peer is exactly what that peer's first round asks of it: both are
/// worked out from the same entries, each on its own side. Random windows of multi-shard
/// entries on three shards (seeded; `SEALDB_SEED` fixes the seed, which is printed).
#[test]
fn each_shard_pushes_a_peer_exactly_what_the_peer_asks_of_it_first() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let seed = std::env::var("SEALDB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let map = ShardMap::uniform(3);
    let mut shared = 0;
    for round in 0..50 {
        let entries: Vec<Entry> = (0..rng.random_range(1..8))
            .map(|i| {
                let ops: Vec<ListOp> = (0..rng.random_range(1..4))
                    .map(|_| match rng.random_bool(0.3) {
                        true => ListOp::Read(rng.random_range(0..30)),
                        false => ListOp::Append(rng.random_range(0..30), 1),
                    })
                    .collect();
                entry(&map, i, "list_append", encode_list_ops(&ops))
            })
            .collect();
        // (owner, reader) -> points, from the owner's pushes and from the reader's asks.
        let (mut pushes, mut asks) = (BTreeMap::new(), BTreeMap::new());
        for s in [A, B, C] {
            for command in Shard::new(s, 3).window(1, &entries) {
                match command {
                    Command::PushReads { to, at, points, .. } => {
                        assert_eq!(at, Timestamp::ZERO);
                        pushes.insert((s, to), points);
                    }
                    Command::ReadRemote { shard, points, pushed, .. } => {
                        assert!(pushed, "every ask here is of a participant: seed {seed}");
                        asks.insert((shard, s), points);
                    }
                    other => panic!("{other:?} before any answer"),
                }
            }
        }
        assert_eq!(pushes, asks, "seed {seed}, round {round}");
        shared += pushes.values().filter(|p: &&Vec<Vec<u8>>| !p.is_empty()).count();
    }
    assert!(shared > 0, "no window had a point to push: seed {seed}");
}

/// An entry that names participants not owning every point it declares (the sequencer
/// derives them from the keys, so a logged one does not; the step does not rely on it): the
/// owner left out never sees the entry and pushes nothing, so the ask of it says so, and its
/// shell asks at once instead of waiting for a push.
#[test]
fn an_ask_of_a_shard_that_shares_no_entry_is_not_marked_pushed() {
    let map = ShardMap::uniform(3);
    let key_on = |s: ShardId| (0..).find(|k| map.shard_of(&list_key(*k)) == s).unwrap();
    let (a, c) = (key_on(A), key_on(C));
    let request = Request::Procedure {
        name: "list_append".into(),
        args: encode_list_ops(&[ListOp::Append(a, 1), ListOp::Append(c, 1)]),
        ranges: [a, c].iter().map(|k| KeyRange::point(&list_key(*k))).collect(),
    };
    let entry = Entry::new(ClientId(7), vec![A, B], request.into_payload());
    let commands = Shard::new(A, 3).window(1, &[entry]);
    assert_eq!(
        commands,
        [
            push(1, B, Timestamp::ZERO, vec![list_key(a)]),
            read(1, B, Timestamp::ZERO, vec![]),
            Command::ReadRemote {
                window: Epoch(1),
                shard: C,
                at: Timestamp::ZERO,
                points: vec![list_key(c)],
                scans: vec![],
                pushed: false,
                ran: false,
            },
        ]
    );
}
