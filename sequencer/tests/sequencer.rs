//! The durable log and the sequencer thread: what is acknowledged is logged, delivered in
//! order and never duplicated, across restarts and torn writes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use clock::{Clock, ManualClock, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sequencer::{
    ClientId, Delivery, Entry, Epoch, SealerConfig, Sequencer, SequencerError, ShardId, Window,
    WindowLog,
};

fn entry(id: u128, shards: &[u32]) -> Entry {
    let payload: Arc<[u8]> = Arc::from(id.to_le_bytes().to_vec());
    Entry::new(ClientId(id), shards.iter().map(|&s| ShardId(s)).collect(), payload)
}

fn window(epoch: u64, ts: u64, ids: &[u128]) -> Window {
    Window {
        epoch: Epoch(epoch),
        ts: Timestamp::from_u64(ts),
        entries: ids.iter().map(|&id| entry(id, &[0, (id % 3) as u32])).collect(),
    }
}

/// The log's one segment file.
fn log_file(dir: &std::path::Path) -> std::path::PathBuf {
    let segments = segments(dir);
    assert_eq!(segments.len(), 1, "{segments:?}");
    dir.join(&segments[0])
}

/// The names of the log's segment files, in order.
fn segments(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("windows"))
        .collect();
    names.sort();
    names
}

/// Small segments: the log rolls to a new file, readers read across them, truncation deletes
/// whole files below an epoch and refuses reads from before, and a reopened log starts at the
/// first window kept, still checking that windows follow one another.
#[test]
fn the_log_rolls_segments_and_truncation_deletes_whole_ones_below_an_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<Window> = (1..=300).map(|e| window(e, e * 10, &[e as u128; 3])).collect();
    let (mut log, _) = WindowLog::open_with(dir.path(), 4096).unwrap();
    let reader = log.reader();
    for w in &written {
        log.append(w).unwrap();
    }
    let before = segments(dir.path());
    assert!(before.len() > 5, "{before:?}");
    assert_eq!(before[0], "windows-00000000000000000001.log");
    assert_eq!(reader.read(Epoch(1), 300, usize::MAX).unwrap(), written, "across every segment");
    assert_eq!(reader.read(Epoch(150), 20, usize::MAX).unwrap(), written[149..169]);
    let bytes = log.bytes();
    assert_eq!(log.truncate_below(Epoch(1)).unwrap(), 0, "nothing is below window 1");
    let removed = log.truncate_below(Epoch(150)).unwrap();
    assert!(removed > 0 && removed < before.len());
    let first = log.first();
    assert!(first <= Epoch(150) && first > Epoch(1), "{first}");
    assert!(log.bytes() < bytes);
    assert_eq!(segments(dir.path()).len(), before.len() - removed, "whole files went");
    let refused = reader.read(Epoch(first.0 - 1), 10, usize::MAX).unwrap_err();
    assert!(matches!(refused, SequencerError::Truncated { .. }), "{refused}");
    assert!(refused.to_string().contains("truncated"), "{refused}");
    let from = first.0 as usize - 1;
    assert_eq!(reader.read(first, 300, usize::MAX).unwrap(), written[from..]);
    // The last segment always stays, however far truncation asks.
    log.truncate_below(Epoch(10_000)).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    let kept_from = log.first().0 as usize - 1;
    drop(log);
    let (mut log, read) = WindowLog::open_with(dir.path(), 4096).unwrap();
    assert_eq!(read, written[kept_from..], "reopened from the first window kept");
    log.append(&window(301, 3010, &[301])).unwrap();
    assert!(log.append(&window(303, 3030, &[303])).is_err(), "still in order");
}

/// A roll cut short by a crash leaves an empty last segment after the one holding the last
/// window. Truncation keeps that window's segment however far it is asked to go, so the log
/// reopens knowing where it goes on; a log left with no window past window 1 is refused by the
/// sequencer instead of starting over at window 1.
#[test]
fn truncation_keeps_the_last_window_when_an_empty_segment_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<Window> = (1..=100).map(|e| window(e, e * 10, &[e as u128; 3])).collect();
    {
        let (mut log, _) = WindowLog::open_with(dir.path(), 4096).unwrap();
        for w in &written {
            log.append(w).unwrap();
        }
    }
    // The empty segment a roll to window 101 creates before its record is written.
    let other = tempfile::tempdir().unwrap();
    drop(WindowLog::create_at(other.path(), Epoch(101)).unwrap());
    let empty = "windows-00000000000000000101.log";
    std::fs::copy(other.path().join(empty), dir.path().join(empty)).unwrap();
    let (mut log, read) = WindowLog::open_with(dir.path(), 4096).unwrap();
    assert_eq!(read, written);
    log.truncate_below(Epoch(101)).unwrap();
    assert_eq!(log.last(), Some((Epoch(100), Timestamp::from_u64(1000))));
    assert!(segments(dir.path()).len() == 2, "{:?}", segments(dir.path()));
    drop(log);
    let (mut log, read) = WindowLog::open_with(dir.path(), 4096).unwrap();
    assert_eq!(read.last(), written.last(), "the last window is still there");
    log.append(&window(101, 1010, &[101])).unwrap();
    drop(log);

    // Without its last window (deleted by hand), the sequencer does not start over at 1.
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(other.path().join(empty), bare.path().join(empty)).unwrap();
    let clock = Arc::new(Clock::system(Duration::ZERO));
    let refused = Sequencer::start(bare.path(), clock, SealerConfig::default()).err().unwrap();
    assert!(matches!(refused, SequencerError::Corrupt { .. }), "{refused}");
    assert!(refused.to_string().contains("starts at window e101 but holds none"), "{refused}");
}

/// A log written in one file before segments opens as its first segment.
#[test]
fn a_log_of_one_file_from_before_segments_opens_as_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<Window> = (1..=20).map(|e| window(e, e * 10, &[e as u128])).collect();
    {
        let (mut log, _) = WindowLog::open(dir.path()).unwrap();
        for w in &written {
            log.append(w).unwrap();
        }
    }
    let name = log_file(dir.path());
    std::fs::rename(&name, dir.path().join("windows.log")).unwrap();
    let (mut log, read) = WindowLog::open(dir.path()).unwrap();
    assert_eq!(read, written);
    log.append(&window(21, 210, &[21])).unwrap();
}

#[test]
fn appended_windows_are_read_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<Window> =
        (1..=5).map(|e| window(e, e * 100, &[e as u128, 1000 + e as u128])).collect();
    {
        let (mut log, old) = WindowLog::open(dir.path()).unwrap();
        assert!(old.is_empty());
        for w in &written {
            log.append(w).unwrap();
        }
    }
    let (log, read) = WindowLog::open(dir.path()).unwrap();
    assert_eq!(read, written);
    assert_eq!(log.last(), Some((Epoch(5), Timestamp::from_u64(500))));
    assert_eq!(log.read_from(Epoch(4)).unwrap(), written[3..]);
}

/// Regression: a process killed while creating a segment left an empty `windows-N.log`, and
/// every later open refused the log ("not a sealdb window log"). Segments are now written
/// under a `.new` name and renamed into place; what such a kill leaves is removed at the next
/// open, and nothing else is.
#[test]
fn a_segment_whose_creation_was_cut_short_does_not_stop_the_log_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<Window> = (1..=3).map(|e| window(e, e * 100, &[e as u128])).collect();
    {
        let (mut log, _) = WindowLog::open(dir.path()).unwrap();
        for w in &written {
            log.append(w).unwrap();
        }
    }
    let unfinished = dir.path().join("windows-00000000000000000004.log.new");
    std::fs::write(&unfinished, b"").unwrap();
    let other = dir.path().join("notes.new");
    std::fs::write(&other, b"not the log's").unwrap();
    let (mut log, read) = WindowLog::open(dir.path()).unwrap();
    assert_eq!(read, written);
    assert!(!unfinished.exists(), "the unfinished segment is removed at open");
    assert!(other.exists(), "files that are not the log's are left alone");
    let next = window(4, 400, &[4]);
    log.append(&next).unwrap();
    drop(log);
    let (_, read) = WindowLog::open(dir.path()).unwrap();
    assert_eq!(read.last(), Some(&next));
}

/// Regression: a second sequencer on the same directory started, and the windows the first
/// acknowledged were lost when the two wrote over each other. The log is locked now.
#[test]
fn a_log_open_elsewhere_is_refused_until_it_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = WindowLog::open(dir.path()).unwrap();
    log.append(&window(1, 100, &[1])).unwrap();
    let err = WindowLog::open(dir.path()).unwrap_err();
    assert!(matches!(err, SequencerError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another sequencer or node"), "{err}");
    log.append(&window(2, 200, &[2])).unwrap();
    drop(log);
    let (_, read) = WindowLog::open(dir.path()).unwrap();
    assert_eq!(read.len(), 2, "both acknowledged windows are there");
}

/// Regression: every subscription re-read and decoded the whole log on the sequencer's one
/// thread. A reader starts at an indexed record near the epoch asked for, reads a bounded
/// chunk, and sees only what the log made durable.
#[test]
fn a_log_reader_reads_chunks_from_any_epoch_while_the_log_grows() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = WindowLog::open(dir.path()).unwrap();
    let reader = log.reader();
    assert!(reader.read(Epoch(1), 10, usize::MAX).unwrap().is_empty(), "an empty log");
    let written: Vec<Window> = (1..=1000).map(|e| window(e, e * 10, &[e as u128])).collect();
    for w in &written[..600] {
        log.append(w).unwrap();
    }
    assert_eq!(reader.read(Epoch(300), 5, usize::MAX).unwrap(), written[299..304]);
    assert_eq!(reader.read(Epoch(598), 10, usize::MAX).unwrap(), written[597..600], "to the end");
    for w in &written[600..] {
        log.append(w).unwrap();
    }
    assert_eq!(reader.read(Epoch(598), 10, usize::MAX).unwrap(), written[597..607]);
    assert_eq!(reader.read(Epoch(1), 2, usize::MAX).unwrap(), written[..2]);
    assert_eq!(reader.read(Epoch(999), 10, 1).unwrap(), written[998..999], "one window a byte");
    assert!(reader.read(Epoch(1001), 10, usize::MAX).unwrap().is_empty());
    // The same after reopening, with the index rebuilt from the file.
    drop(log);
    let (log, _) = WindowLog::open(dir.path()).unwrap();
    assert_eq!(log.reader().read(Epoch(513), 3, usize::MAX).unwrap(), written[512..515]);
    assert_eq!(log.read_from(Epoch(995)).unwrap(), written[994..]);
}

#[test]
fn a_window_out_of_order_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = WindowLog::open(dir.path()).unwrap();
    log.append(&window(1, 100, &[1])).unwrap();
    assert!(matches!(log.append(&window(3, 200, &[2])), Err(SequencerError::OutOfOrder { .. })));
    assert!(matches!(log.append(&window(2, 100, &[2])), Err(SequencerError::OutOfOrder { .. })));
    log.append(&window(2, 101, &[2])).unwrap();
}

/// Writes 20 windows and returns them, the file's bytes (preallocated zeros included), and
/// where each window's record ends.
fn written_log(dir: &std::path::Path) -> (Vec<Window>, Vec<u8>, Vec<usize>) {
    let written: Vec<Window> = (1..=20).map(|e| window(e, e * 10, &[e as u128; 1])).collect();
    let mut ends = Vec::new();
    let (mut log, _) = WindowLog::open(dir).unwrap();
    for w in &written {
        log.append(w).unwrap();
        ends.push(log.end() as usize);
    }
    drop(log);
    let full = std::fs::read(log_file(dir)).unwrap();
    assert!(full.len() > *ends.last().unwrap(), "the file is grown ahead of its records");
    assert!(full[*ends.last().unwrap()..].iter().all(|&b| b == 0), "with zeros");
    (written, full, ends)
}

/// Opens the damaged log, checks exactly the first `whole` windows survive, then that it
/// takes the next window and keeps it across a reopen.
fn check_cut(dir: &std::path::Path, written: &[Window], whole: usize, what: &str) {
    let (mut log, read) = WindowLog::open(dir).unwrap();
    assert_eq!(read, written[..whole], "{what}: exactly the whole records survive");
    let next = whole as u64 + 1;
    log.append(&window(next, next * 10, &[999])).unwrap();
    drop(log);
    let (_, again) = WindowLog::open(dir).unwrap();
    assert_eq!(again.len(), whole + 1, "{what}: the next window is appended after the cut");
}

#[test]
fn a_log_cut_short_loses_only_its_torn_last_window() {
    let seed = 7;
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (written, full, ends) = written_log(dir.path());
    for _ in 0..50 {
        // Cut the file anywhere after the header, as a crash while growing a file would.
        let cut = rng.random_range(16..ends[ends.len() - 1]);
        std::fs::write(log_file(dir.path()), &full[..cut]).unwrap();
        let whole = ends.iter().filter(|&&end| end <= cut).count();
        check_cut(dir.path(), &written, whole, &format!("seed {seed} cut at {cut}"));
    }
}

#[test]
fn a_last_record_partly_written_over_the_zeros_is_cut_off_and_every_earlier_one_kept() {
    let seed = 11;
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (written, full, ends) = written_log(dir.path());
    for _ in 0..100 {
        // Records up to `last` were being written; any parts of the last one reached the disk
        // (its frame included or not), and nothing after it.
        let last = rng.random_range(0..written.len());
        let start = if last == 0 { 16 } else { ends[last - 1] };
        let mut bytes = full.clone();
        bytes[ends[last]..].fill(0);
        for _ in 0..rng.random_range(1..4) {
            let from = rng.random_range(start..ends[last]);
            let to = rng.random_range(from + 1..=ends[last]);
            bytes[from..to].fill(0);
        }
        std::fs::write(log_file(dir.path()), &bytes).unwrap();
        let intact = bytes[start..ends[last]] == full[start..ends[last]];
        let whole = if intact { last + 1 } else { last };
        check_cut(dir.path(), &written, whole, &format!("seed {seed} torn window {}", last + 1));
    }
}

#[test]
fn a_zeroed_record_before_valid_ones_is_refused_not_taken_for_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_, full, ends) = written_log(dir.path());
    let mut bytes = full.clone();
    bytes[ends[4]..ends[5]].fill(0); // the sixth window's record
    std::fs::write(log_file(dir.path()), &bytes).unwrap();
    let err = WindowLog::open(dir.path()).unwrap_err();
    assert!(matches!(err, SequencerError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(log_file(dir.path())).unwrap(), bytes, "nothing was cut");
}

#[test]
fn damage_before_the_end_of_the_log_is_refused_not_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = WindowLog::open(dir.path()).unwrap();
        for e in 1..=3 {
            log.append(&window(e, e * 10, &[e as u128])).unwrap();
        }
    }
    let mut bytes = std::fs::read(log_file(dir.path())).unwrap();
    bytes[16 + 8 + 3] ^= 0xff; // inside the first window's body
    std::fs::write(log_file(dir.path()), &bytes).unwrap();
    let err = WindowLog::open(dir.path()).unwrap_err();
    assert!(matches!(err, SequencerError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(log_file(dir.path())).unwrap(), bytes, "nothing was cut");
}

#[test]
fn a_file_that_is_not_a_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["windows-00000000000000000001.log", "windows.log"] {
        std::fs::write(dir.path().join(name), b"something else entirely").unwrap();
        assert!(matches!(WindowLog::open(dir.path()), Err(SequencerError::Corrupt { .. })));
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
}

fn start(dir: &std::path::Path, clock: &Arc<Clock>) -> Sequencer {
    Sequencer::start(dir, clock.clone(), SealerConfig::default()).unwrap().0
}

/// The next window a subscriber gets, skipping ticks.
fn next_window(deliveries: &std::sync::mpsc::Receiver<Delivery>) -> Arc<Window> {
    loop {
        match deliveries.recv_timeout(Duration::from_secs(10)).expect("delivery") {
            Delivery::Window(w) => return w,
            Delivery::Tick(_) | Delivery::Durable(_) => {}
        }
    }
}

/// Every window a subscriber gets until it has seen `count` entries.
fn collect(deliveries: &std::sync::mpsc::Receiver<Delivery>, count: usize) -> Vec<Arc<Window>> {
    let mut windows: Vec<Arc<Window>> = Vec::new();
    while windows.iter().map(|w| w.entries.len()).sum::<usize>() < count {
        windows.push(next_window(deliveries));
    }
    windows
}

#[test]
fn concurrent_submissions_get_distinct_receipts_for_durable_windows_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::system(Duration::ZERO));
    let seq = Arc::new(start(dir.path(), &clock));
    let deliveries = seq.subscribe(Epoch(1));
    let threads: Vec<_> = (0..8u128)
        .map(|t| {
            let seq = seq.clone();
            std::thread::spawn(move || {
                (0..50u128)
                    .map(|i| seq.submit(entry(t * 1000 + i, &[0])).recv().unwrap().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // The client ids in the order the receipts are collected below.
    let submitted_ids = || (0..8u128).flat_map(|t| (0..50u128).map(move |i| t * 1000 + i));
    let receipts: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let ids: BTreeSet<_> = receipts.iter().map(|r| r.txn).collect();
    assert_eq!(ids.len(), 400, "every entry has its own id");
    assert!(receipts.iter().all(|r| !r.duplicate));

    let windows = collect(&deliveries, 400);
    for (i, w) in windows.iter().enumerate() {
        assert_eq!(w.epoch, Epoch(i as u64 + 1), "epochs arrive consecutively");
        if i > 0 {
            assert!(w.ts > windows[i - 1].ts);
        }
    }
    // Each receipt names the entry the log holds at that position, and the window is durable
    // (the log is locked while the sequencer runs: read it through the sequencer's reader).
    drop(deliveries);
    let logged = seq.log_reader().read(Epoch(1), usize::MAX, usize::MAX).unwrap();
    for (r, id) in receipts.iter().zip(submitted_ids()) {
        let w = &logged[r.txn.epoch.0 as usize - 1];
        assert_eq!(w.ts, r.ts);
        let e = &w.entries[r.txn.index as usize];
        assert_eq!(e.client_id, ClientId(id), "the receipt names the entry that was submitted");
    }
}

#[test]
fn an_idle_sequencer_keeps_ticking_with_rising_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::system(Duration::ZERO));
    let seq = start(dir.path(), &clock);
    let deliveries = seq.subscribe(Epoch(1));
    let mut last = Timestamp::ZERO;
    for _ in 0..5 {
        match deliveries.recv_timeout(Duration::from_secs(5)).unwrap() {
            Delivery::Tick(ts) => {
                assert!(ts > last);
                last = ts;
            }
            other => panic!("nothing was submitted, got {other:?}"),
        }
    }
    drop(seq);
    let (_, logged) = WindowLog::open(dir.path()).unwrap();
    assert!(logged.is_empty(), "ticks are not logged");
}

#[test]
fn after_a_restart_windows_continue_above_the_old_ones_and_old_ids_stay_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let wall = ManualClock::at_secs(1_700_000_000);
    let clock = Arc::new(Clock::new(Arc::new(wall.clone()), Duration::ZERO));
    let first = {
        let seq = start(dir.path(), &clock);
        let receipts: Vec<_> =
            (0..3).map(|i| seq.submit(entry(i, &[0])).recv().unwrap().unwrap()).collect();
        seq.shutdown().unwrap();
        receipts
    };
    // Restart with a fresh, unpersisted clock whose wall time went back an hour.
    wall.rewind(Duration::from_secs(3600));
    let clock = Arc::new(Clock::new(Arc::new(wall.clone()), Duration::ZERO));
    let (seq, last) = Sequencer::start(dir.path(), clock.clone(), SealerConfig::default()).unwrap();
    assert_eq!(last.map(|(e, _)| e), Some(first.last().unwrap().txn.epoch));
    let again = seq.submit(entry(1, &[0])).recv().unwrap().unwrap();
    assert!(again.duplicate);
    assert_eq!(again.txn, first[1].txn);
    let new = seq.submit(entry(50, &[0])).recv().unwrap().unwrap();
    assert!(!new.duplicate);
    assert_eq!(new.txn.epoch, first.last().unwrap().txn.epoch.next());
    assert!(new.ts > first.last().unwrap().ts, "{:?} after {:?}", new.ts, first.last().unwrap().ts);

    // A subscriber from epoch 1 gets the old windows back from the log, then the new one.
    let deliveries = seq.subscribe(Epoch(1));
    let windows = collect(&deliveries, 4);
    let epochs: Vec<u64> = windows.iter().map(|w| w.epoch.0).collect();
    assert_eq!(epochs, (1..=new.txn.epoch.0).collect::<Vec<_>>());
}

#[test]
fn entries_open_at_shutdown_are_sealed_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::system(Duration::ZERO));
    let seq = start(dir.path(), &clock);
    let pending = seq.submit(entry(1, &[0]));
    seq.shutdown().unwrap();
    let receipt =
        pending.recv().unwrap().expect("what was open at shutdown is sealed and answered");
    // And it is in the log, at the receipt's place.
    drop(seq);
    let (_, logged) = WindowLog::open(dir.path()).unwrap();
    let window = &logged[receipt.txn.epoch.0 as usize - 1];
    assert_eq!(window.ts, receipt.ts);
    assert_eq!(window.entries[receipt.txn.index as usize].client_id, ClientId(1));
}

#[test]
fn a_requested_window_is_logged_even_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::system(Duration::ZERO));
    let seq = start(dir.path(), &clock);
    let deliveries = seq.subscribe(Epoch(1));
    seq.feedback().unwrap().request_window();
    let window = next_window(&deliveries);
    assert_eq!((window.epoch, window.entries.len()), (Epoch(1), 0));
    seq.shutdown().unwrap();
    let (_, logged) = WindowLog::open(dir.path()).unwrap();
    assert_eq!(logged.len(), 1, "the requested window is durable like any other");
}

#[test]
fn consumers_reporting_progress_get_windows_before_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::system(Duration::ZERO));
    let config = SealerConfig {
        window_interval: Duration::from_secs(3600),
        seal_ahead: Some(1),
        ..SealerConfig::default()
    };
    let (seq, _) = Sequencer::start(dir.path(), clock, config).unwrap();
    let deliveries = seq.subscribe(Epoch(1));
    // Nothing unapplied: the first entry is sealed at once, an hour before the interval.
    let first = seq.submit(entry(1, &[0])).recv().unwrap().unwrap();
    let window = next_window(&deliveries);
    assert_eq!((window.epoch, window.entries.len()), (Epoch(1), 1));
    // Window 1 is unapplied, so entry 2 waits until the consumer reports it applied.
    let pending = seq.submit(entry(2, &[0]));
    seq.feedback().unwrap().applied(Epoch(1));
    let second = pending.recv().unwrap().unwrap();
    assert_eq!(second.txn.epoch, Epoch(2));
    assert!(second.ts > first.ts);
    seq.shutdown().unwrap();
}

/// A subscriber ahead gets each window when it is sealed and then, once the append and fsync
/// have returned, `Durable` for it, before anything else; windows replayed after a restart
/// come with their `Durable` at once.
#[test]
fn a_subscriber_ahead_gets_each_window_then_its_durability_after_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::system(Duration::ZERO));
    let seq = Arc::new(start(dir.path(), &clock));
    let deliveries = seq.subscribe_ahead(Epoch(1));
    let submitter = {
        let seq = seq.clone();
        std::thread::spawn(move || {
            for i in 0..200u128 {
                seq.submit(entry(i, &[0])).recv().unwrap().unwrap();
            }
        })
    };
    let (mut entries, mut expected) = (0, Epoch(1));
    while entries < 200 {
        match deliveries.recv_timeout(Duration::from_secs(10)).expect("delivery") {
            Delivery::Tick(_) => {}
            Delivery::Durable(e) => panic!("window {e} reported durable before it was delivered"),
            Delivery::Window(w) => {
                assert_eq!(w.epoch, expected);
                match deliveries.recv_timeout(Duration::from_secs(10)).expect("delivery") {
                    Delivery::Durable(e) => assert_eq!(e, w.epoch),
                    other => panic!("after window {}: {other:?}", w.epoch),
                }
                assert!(seq.last_logged().0 >= w.epoch, "durable before the append returned");
                entries += w.entries.len();
                expected = expected.next();
            }
        }
    }
    submitter.join().unwrap();
    drop(deliveries);
    let last = seq.last_logged().0;
    drop(Arc::into_inner(seq).unwrap());

    let seq = start(dir.path(), &clock);
    let replay = seq.subscribe_ahead(Epoch(1));
    for epoch in 1..=last.0 {
        match replay.recv_timeout(Duration::from_secs(10)).unwrap() {
            Delivery::Window(w) => assert_eq!(w.epoch, Epoch(epoch)),
            other => panic!("replaying window {epoch}: {other:?}"),
        }
        match replay.recv_timeout(Duration::from_secs(10)).unwrap() {
            Delivery::Durable(e) => assert_eq!(e, Epoch(epoch)),
            other => panic!("replaying window {epoch}: {other:?}"),
        }
    }
}

/// A consumer with a channel of its own (`subscribe_to`, as the node's subscriptions across
/// the network) gets the logged windows from its epoch and then the live ones, in order and
/// each durable; once it refuses a delivery (it has gone, or fell too far behind) it is
/// dropped, never called again, and the sequencer goes on logging.
#[test]
fn a_consumer_that_refuses_a_delivery_is_dropped_and_the_sequencer_goes_on() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::system(Duration::ZERO));
    let seq = Arc::new(start(dir.path(), &clock));
    for i in 0..3u128 {
        seq.submit(entry(i, &[0])).recv().unwrap().unwrap();
    }
    let logged = seq.last_logged().0;
    // Takes the logged windows and two live deliveries, then refuses.
    let limit = logged.0 as usize + 2;
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, deliveries) = std::sync::mpsc::channel();
    let (counted, seen) = (calls.clone(), seq.clone());
    seq.subscribe_to(Epoch(1), move |delivery| {
        // Checked here, on the sequencer's thread, and asserted on the test's.
        let durable = match &delivery {
            Delivery::Window(w) => seen.last_logged().0 >= w.epoch,
            _ => true,
        };
        let _ = tx.send((delivery, durable));
        counted.fetch_add(1, Ordering::SeqCst) + 1 < limit
    });
    let mut expected = Epoch(1);
    for id in 3..3 + limit as u128 {
        let (delivery, durable) =
            deliveries.recv_timeout(Duration::from_secs(10)).expect("a delivery");
        assert!(durable, "{delivery:?} before it was durable");
        if let Delivery::Window(w) = delivery {
            assert_eq!(w.epoch, expected, "windows in order, the logged ones first");
            expected = expected.next();
        }
        // Makes a live window for the deliveries after the logged ones.
        let _ = seq.submit(entry(id, &[0]));
    }
    assert!(expected > logged, "the logged windows came: {expected:?}");
    for i in 0..5u128 {
        seq.submit(entry(1_000 + i, &[0])).recv().unwrap().unwrap();
    }
    assert!(seq.last_logged().0 > logged, "the sequencer went on logging");
    assert_eq!(calls.load(Ordering::SeqCst), limit, "a refusing consumer was called again");
}

/// Entries submitted in one batch go to the sequencer's thread in one message and are taken
/// in order: a batch larger than the window's entry cap fills windows to the cap, a client
/// id the batch repeats gets the first one's receipt, and every entry is answered once its
/// window is durable. A shutdown right behind the batch seals the open window and stops at
/// once.
#[test]
fn a_batch_of_submissions_fills_windows_to_their_cap_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(Clock::system(Duration::ZERO));
    // Sealed on the cap only, within the test's time.
    let config = SealerConfig {
        max_window_entries: 3,
        window_interval: Duration::from_secs(600),
        seal_ahead: None,
        ..SealerConfig::default()
    };
    let (seq, _) = Sequencer::start(dir.path(), clock.clone(), config).unwrap();
    let seq = Arc::new(seq);
    let deliveries = seq.subscribe(Epoch(1));
    let ids = [1u128, 2, 3, 4, 2, 5, 6, 7];
    let (tx, receipts) = std::sync::mpsc::channel();
    let batch = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let (tx, seen) = (tx.clone(), seq.clone());
            let on_receipt: sequencer::OnReceipt = Box::new(move |r| {
                // Checked here, on the sequencer's thread, and asserted on the test's.
                let durable = r.as_ref().is_ok_and(|r| seen.last_logged().0 >= r.txn.epoch);
                let _ = tx.send((i, r, durable));
            });
            (entry(id, &[0]), on_receipt)
        })
        .collect();
    // The shutdown queued right behind the batch comes while the thread still takes commands
    // after it (the batch's two full windows are fsynced meanwhile): it stops the thread at
    // once, sealing the open window, not after the interval's wait.
    let (stopped, stop) = std::sync::mpsc::channel();
    let submitter = seq.clone();
    std::thread::spawn(move || {
        submitter.submit_many_then(batch);
        stopped.send(submitter.shutdown())
    });
    stop.recv_timeout(Duration::from_secs(10)).expect("a prompt shutdown").unwrap();
    // Seven distinct ids: two full windows, and the open one.
    let windowed = |w: &Window| w.entries.iter().map(|e| e.client_id.0).collect::<Vec<_>>();
    let (first, second, third) =
        (next_window(&deliveries), next_window(&deliveries), next_window(&deliveries));
    assert_eq!((windowed(&first), windowed(&second)), (vec![1, 2, 3], vec![4, 5, 6]));
    assert_eq!(windowed(&third), vec![7]);
    let mut got: Vec<_> = (0..ids.len())
        .map(|_| receipts.recv_timeout(Duration::from_secs(10)).expect("a receipt"))
        .map(|(i, r, durable)| (i, r.unwrap(), durable))
        .collect();
    got.sort_by_key(|(i, _, _)| *i);
    for (i, receipt, durable) in &got {
        let window = [&first, &second, &third]
            .into_iter()
            .find(|w| w.entries.iter().any(|e| e.client_id.0 == ids[*i]))
            .unwrap();
        let index = window.entries.iter().position(|e| e.client_id.0 == ids[*i]).unwrap();
        assert_eq!(receipt.txn, window.txn_id(index), "entry {i}");
        assert_eq!(receipt.duplicate, *i == 4, "entry {i}");
        assert!(durable, "entry {i}'s receipt before its window was durable");
    }
}
