//! The clock's promises: monotonic through wall-clock jumps and restarts, skew refused beyond
//! `max_offset`, and commit-wait that never returns early.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use clock::{
    Clock, ClockError, HIGH_WATER_LEASE, ManualClock, ObserveError, OffsetClock, PhysicalClock,
    RENEW_MARGIN, Timestamp,
};

const MAX_OFFSET: Duration = Duration::from_millis(10);

fn manual_clock() -> (ManualClock, Clock) {
    let wall = ManualClock::at_secs(1_700_000_000);
    let clock = Clock::new(Arc::new(wall.clone()), MAX_OFFSET);
    (wall, clock)
}

#[test]
fn timestamps_strictly_increase_while_the_wall_clock_stands_still() {
    let (_wall, clock) = manual_clock();
    let mut prev = clock.now();
    for _ in 0..1000 {
        let next = clock.now();
        assert!(next > prev, "{next} after {prev}");
        prev = next;
    }
}

#[test]
fn timestamps_follow_the_wall_clock_forwards() {
    let (wall, clock) = manual_clock();
    let before = clock.now();
    wall.advance(Duration::from_secs(3));
    let after = clock.now();
    assert_eq!(after, wall.now(), "a clock that moved on is read as is");
    assert!(after.duration_since(before) >= Duration::from_secs(3) - Duration::from_millis(1));
}

#[test]
fn timestamps_stay_monotonic_when_the_wall_clock_jumps_backwards() {
    let (wall, clock) = manual_clock();
    let before = clock.now();
    wall.rewind(Duration::from_secs(60));
    let after = clock.now();
    assert!(after > before, "{after} must be above {before} after a backwards jump");
}

#[test]
fn timestamps_stay_monotonic_across_a_restart_with_the_wall_clock_set_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clock.hwm");
    let wall = ManualClock::at_secs(1_700_000_000);
    let mut issued = Vec::new();
    {
        let clock = Clock::open(&path, Arc::new(wall.clone()), MAX_OFFSET).unwrap();
        for _ in 0..100 {
            issued.push(clock.now());
            wall.advance(Duration::from_millis(7));
        }
    }
    let highest = *issued.iter().max().unwrap();
    wall.rewind(Duration::from_secs(3600));
    let reopened = Clock::open(&path, Arc::new(wall.clone()), MAX_OFFSET).unwrap();
    let first = reopened.now();
    assert!(first > highest, "after restart issued {first}, before it {highest}");
}

#[test]
fn a_restart_without_the_high_water_file_would_repeat_timestamps() {
    // The counterfactual that shows the previous test can fail: without persistence, a clock
    // restarted with its wall clock set back issues timestamps below earlier ones.
    let wall = ManualClock::at_secs(1_700_000_000);
    let before = Clock::new(Arc::new(wall.clone()), MAX_OFFSET).now();
    wall.rewind(Duration::from_secs(3600));
    let after = Clock::new(Arc::new(wall.clone()), MAX_OFFSET).now();
    assert!(after < before);
}

#[test]
fn a_corrupt_high_water_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clock.hwm");
    std::fs::write(&path, "not a high-water mark").unwrap();
    let err = Clock::open(&path, Arc::new(ManualClock::at_secs(1)), MAX_OFFSET).unwrap_err();
    assert!(matches!(err, ClockError::Corrupt { .. }), "{err}");
}

#[test]
fn observe_accepts_a_remote_timestamp_within_max_offset_and_moves_past_it() {
    let (wall, clock) = manual_clock();
    let remote = wall.now().saturating_add(MAX_OFFSET);
    clock.observe(remote).unwrap();
    assert!(clock.now() > remote);
}

#[test]
fn observe_rejects_a_remote_timestamp_beyond_max_offset_and_changes_nothing() {
    let (wall, clock) = manual_clock();
    let before = clock.now();
    let remote = wall.now().saturating_add(MAX_OFFSET).next();
    let skew = clock.observe(remote).unwrap_err();
    assert_eq!(skew.remote, remote);
    assert_eq!(skew.max_offset, MAX_OFFSET);
    let after = clock.now();
    assert!(after < remote, "a refused timestamp must not be absorbed ({after} >= {remote})");
    assert!(after > before);
}

#[test]
fn observe_accepts_timestamps_from_the_past() {
    let (wall, clock) = manual_clock();
    let now = clock.now();
    clock.observe(wall.now().saturating_sub(Duration::from_secs(3600))).unwrap();
    assert!(clock.now() > now);
}

#[test]
fn a_node_skewed_beyond_max_offset_is_refused_and_one_within_is_accepted() {
    let wall: Arc<dyn PhysicalClock> = Arc::new(ManualClock::at_secs(1_700_000_000));
    let local = Clock::new(wall.clone(), MAX_OFFSET);
    let fast = Clock::new(Arc::new(OffsetClock::ahead(wall.clone(), MAX_OFFSET * 2)), MAX_OFFSET);
    let slightly_fast =
        Clock::new(Arc::new(OffsetClock::ahead(wall.clone(), MAX_OFFSET / 2)), MAX_OFFSET);
    assert!(local.observe(fast.now()).is_err());
    assert!(local.observe(slightly_fast.now()).is_ok());
}

#[test]
fn commit_wait_returns_only_once_the_clock_is_past_ts_plus_max_offset() {
    let (wall, clock) = manual_clock();
    let clock = Arc::new(clock);
    let ts = clock.now();
    let done = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (clock, done) = (clock.clone(), done.clone());
        thread::spawn(move || {
            clock.commit_wait(ts);
            done.store(true, Ordering::SeqCst);
            clock.physical_now()
        })
    };
    // Walk the clock forward in steps up to exactly ts + max_offset: the waiter must still be
    // waiting at every step, because "past" is strict.
    let target = ts.saturating_add(MAX_OFFSET);
    while wall.now() < target {
        wall.set(wall.now().saturating_add(Duration::from_millis(3)).min(target));
        assert!(clock.commit_wait_remaining(ts).is_some());
        assert!(!done.load(Ordering::SeqCst), "returned at {} before {target}", wall.now());
    }
    assert_eq!(wall.now(), target);
    assert!(!done.load(Ordering::SeqCst));
    wall.set(target.next());
    let returned_at = waiter.join().unwrap();
    assert!(returned_at > target);
    assert_eq!(clock.commit_wait_remaining(ts), None);
}

#[test]
fn commit_wait_on_the_system_clock_lasts_at_least_max_offset() {
    let clock = Clock::system(Duration::from_millis(20));
    let ts = clock.now();
    clock.commit_wait(ts);
    let past = clock.physical_now();
    assert!(past > ts.saturating_add(Duration::from_millis(20)), "{past} vs {ts}");
}

#[test]
fn with_zero_max_offset_commit_wait_ends_as_soon_as_the_clock_moves() {
    let wall = ManualClock::at_secs(1_700_000_000);
    let clock = Clock::new(Arc::new(wall.clone()), Duration::ZERO);
    let ts = clock.now();
    assert!(clock.commit_wait_remaining(ts).is_some());
    wall.set(ts.next());
    assert_eq!(clock.commit_wait_remaining(ts), None);
}

/// A clock on a manual wall clock, persisting its bound in `clock` in a fresh directory.
fn persisted_manual_clock() -> (tempfile::TempDir, ManualClock, Clock) {
    let dir = tempfile::tempdir().unwrap();
    let wall = ManualClock::at_secs(1_700_000_000);
    let clock = Clock::open(dir.path().join("clock"), Arc::new(wall.clone()), MAX_OFFSET).unwrap();
    (dir, wall, clock)
}

/// The bound held in a high-water file.
fn persisted_bound(path: &std::path::Path) -> Timestamp {
    let content = std::fs::read_to_string(path).unwrap();
    Timestamp::from_u64(content.split_whitespace().last().unwrap().parse().unwrap())
}

/// The bound is renewed in the background before time reaches it, so no caller waits for the
/// file's fsyncs, and every timestamp issued stays below the bound persisted when it was
/// issued (what makes a restart safe).
#[test]
fn the_high_water_bound_is_renewed_ahead_and_no_caller_waits_for_it() {
    let (dir, wall, clock) = persisted_manual_clock();
    let path = dir.path().join("clock");
    let step = Duration::from_millis(40);
    for _ in 0..100 {
        wall.advance(step);
        let ts = clock.now();
        let bound = persisted_bound(&path);
        assert!(ts < bound, "issued {ts} at or above the persisted bound {bound}");
        // A renewal started by this call lands before time moves on (on this machine's disk
        // well within the margin; a test has no other way to know the thread is done).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while clock.high_water_bound().unwrap() < ts.saturating_add(RENEW_MARGIN) {
            assert!(std::time::Instant::now() < deadline, "the renewal never landed");
            thread::yield_now();
        }
        assert!(persisted_bound(&path) >= clock.high_water_bound().unwrap(), "used unpersisted");
    }
    let stats = clock.high_water_stats().unwrap();
    // 4 s of clock time, never waited for. Each write raises the bound by at most a lease
    // (to the timestamp that asked, which is below it, plus a lease), and the bound had to
    // pass every timestamp issued.
    assert_eq!(stats.waited, 0, "{stats:?}");
    let lease = HIGH_WATER_LEASE.as_millis() as u64;
    let expected = (4000 - lease) / lease;
    assert!(stats.writes >= expected, "{stats:?}, expected at least {expected}");
}

/// A bound that cannot be written is an error from `try_now` and `try_observe` (and a panic
/// from `now`), never a timestamp past the persisted bound.
#[test]
fn a_bound_that_cannot_be_persisted_is_an_error_and_nothing_past_it_is_issued() {
    let (dir, wall, clock) = persisted_manual_clock();
    let path = dir.path().join("clock");
    let bound = persisted_bound(&path);
    // The clock writes `clock.tmp` and renames it: a non-empty directory there fails every
    // write, as a full disk would.
    std::fs::create_dir(dir.path().join("clock.tmp")).unwrap();
    std::fs::write(dir.path().join("clock.tmp").join("in the way"), b"").unwrap();
    wall.advance(Duration::from_secs(1));
    assert!(matches!(clock.try_now(), Err(ClockError::Io { .. })));
    let past_bound = bound.saturating_add(Duration::from_millis(1));
    assert!(matches!(clock.try_observe(past_bound), Err(ObserveError::Persist(_))));
    let far = wall.now().saturating_add(Duration::from_secs(5));
    assert!(matches!(clock.try_observe(far), Err(ObserveError::Skew(_))));
    assert_eq!(persisted_bound(&path), bound);
    assert!(clock.high_water_stats().unwrap().waited >= 2);
    let now = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| clock.now()));
    let panic = now.expect_err("now() cannot issue past the bound");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("cannot persist the clock high-water mark"), "{message}");
    // Once the disk takes writes again, timestamps go on, above everything before.
    std::fs::remove_dir_all(dir.path().join("clock.tmp")).unwrap();
    let ts = clock.try_now().unwrap();
    assert!(ts >= wall.now() && ts < persisted_bound(&path));
}
