//! The clock's promises: monotonic through wall-clock jumps and restarts, skew refused beyond
//! `max_offset`, and commit-wait that never returns early.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use clock::{Clock, ClockError, ManualClock, OffsetClock, PhysicalClock};

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
