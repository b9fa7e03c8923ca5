//! Physical time sources: the system clock, a manual clock for tests, and an offset clock that
//! skews another one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::timestamp::Timestamp;

/// A source of physical time for a [`crate::Clock`].
///
/// Implementations may jump backwards (wall clocks do); the HLC on top keeps timestamps
/// monotonic regardless.
pub trait PhysicalClock: Send + Sync + 'static {
    /// The current physical time, logical counter zero.
    fn now(&self) -> Timestamp;

    /// Blocks until [`PhysicalClock::now`] is past `target`. The default polls and sleeps;
    /// clocks that do not follow real time override it.
    fn wait_until_past(&self, target: Timestamp) {
        loop {
            let now = self.now();
            if now > target {
                return;
            }
            // Sleep the remaining time, capped so a wall clock that jumps is noticed promptly.
            let remaining = target.duration_since(now).max(Duration::from_micros(1));
            std::thread::sleep(remaining.min(Duration::from_millis(1)));
        }
    }
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now(&self) -> Timestamp {
        // A wall clock before 1970 is a broken machine; treat it as the epoch rather than panic.
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp::from_unix_duration(since_epoch)
    }
}

/// A clock that only moves when told to: deterministic time for tests.
///
/// Cloning shares the same time, so a test keeps one handle and gives another to a `Clock`.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now: AtomicU64,
    changed: Mutex<()>,
    waiters: Condvar,
}

impl ManualClock {
    /// A manual clock reading `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            inner: Arc::new(ManualInner {
                now: AtomicU64::new(start.as_u64()),
                changed: Mutex::new(()),
                waiters: Condvar::new(),
            }),
        }
    }

    /// A manual clock reading `secs` seconds after the Unix epoch.
    pub fn at_secs(secs: u64) -> ManualClock {
        ManualClock::new(Timestamp::from_unix_duration(Duration::from_secs(secs)))
    }

    /// Sets the time, forwards or backwards.
    pub fn set(&self, to: Timestamp) {
        let _guard = self.inner.changed.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.now.store(to.as_u64(), Ordering::SeqCst);
        self.inner.waiters.notify_all();
    }

    /// Moves the time forwards by `d`.
    pub fn advance(&self, d: Duration) {
        self.set(self.now().saturating_add(d));
    }

    /// Moves the time backwards by `d`, as a wall clock corrected by NTP might.
    pub fn rewind(&self, d: Duration) {
        self.set(self.now().saturating_sub(d));
    }
}

impl PhysicalClock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_u64(self.inner.now.load(Ordering::SeqCst))
    }

    fn wait_until_past(&self, target: Timestamp) {
        let mut guard = self.inner.changed.lock().unwrap_or_else(|e| e.into_inner());
        while self.now() <= target {
            guard = self.inner.waiters.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Another clock shifted by a fixed offset, ahead or behind: a node with a skewed clock.
pub struct OffsetClock {
    inner: Arc<dyn PhysicalClock>,
    ahead: bool,
    offset: Duration,
}

impl OffsetClock {
    /// `inner` shifted `offset` into the future.
    pub fn ahead(inner: Arc<dyn PhysicalClock>, offset: Duration) -> OffsetClock {
        OffsetClock { inner, ahead: true, offset }
    }

    /// `inner` shifted `offset` into the past.
    pub fn behind(inner: Arc<dyn PhysicalClock>, offset: Duration) -> OffsetClock {
        OffsetClock { inner, ahead: false, offset }
    }

    fn shift(&self, t: Timestamp) -> Timestamp {
        if self.ahead { t.saturating_add(self.offset) } else { t.saturating_sub(self.offset) }
    }

    fn unshift(&self, t: Timestamp) -> Timestamp {
        if self.ahead { t.saturating_sub(self.offset) } else { t.saturating_add(self.offset) }
    }
}

impl PhysicalClock for OffsetClock {
    fn now(&self) -> Timestamp {
        self.shift(self.inner.now())
    }

    fn wait_until_past(&self, target: Timestamp) {
        self.inner.wait_until_past(self.unshift(target));
        // Saturation at the ends of the time line can leave us short; finish by polling.
        while self.now() <= target {
            self.inner.wait_until_past(self.inner.now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_secs(1000);
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_secs(1));
        assert_eq!(c.now().duration_since(t0), Duration::from_secs(1));
        c.rewind(Duration::from_secs(5));
        assert!(c.now() < t0);
    }

    #[test]
    fn offset_clock_shifts_its_inner_clock() {
        let base = ManualClock::at_secs(1000);
        let ahead = OffsetClock::ahead(Arc::new(base.clone()), Duration::from_millis(7));
        let behind = OffsetClock::behind(Arc::new(base.clone()), Duration::from_millis(7));
        assert_eq!(ahead.now().duration_since(base.now()), Duration::from_millis(7));
        assert_eq!(base.now().duration_since(behind.now()), Duration::from_millis(7));
    }

    #[test]
    fn system_clock_reads_roughly_now() {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let ours = SystemClock.now().to_unix_duration();
        let diff = ours.abs_diff(wall);
        assert!(diff < Duration::from_secs(5), "system clock read {ours:?}, wall {wall:?}");
    }
}
