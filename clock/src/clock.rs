//! [`Clock`]: the hybrid logical clock of one node.
//!
//! State is one word, `last`: the highest timestamp this clock has issued or observed. Issuing
//! takes `max(physical_now, last + 1)` (the `uhlc` rule: physical time when it has moved on,
//! otherwise one logical tick), so timestamps strictly increase and track physical time when it
//! moves forward. When physical time moves backwards, timestamps keep counting up logically
//! until physical time catches up.
//!
//! ## The persisted high-water mark
//!
//! A restarted process has lost `last`, and its wall clock may now read earlier than before the
//! crash. With a high-water file, the clock never issues a timestamp at or above the *bound*
//! stored in the file; when it needs to, it first writes a new bound (`needed + lease`) and
//! fsyncs it. On restart it starts from the stored bound, which is above everything issued
//! before. The lease ([`HIGH_WATER_LEASE`]) trades fsyncs (about one per lease of time) against
//! how far ahead of physical time a restarted clock may start (at most one lease).
//!
//! ```text
//!   issued:  t1 t2 t3 ....... t9 |  bound B (fsynced)     crash, wall clock set back
//!   restart: last := B  -> next timestamp B+1 > t9, whatever the wall clock says
//! ```

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::physical::{PhysicalClock, SystemClock};
use crate::timestamp::{PHYSICAL_MASK, Timestamp};

/// How far ahead of the highest timestamp issued the persisted high-water bound is set.
pub const HIGH_WATER_LEASE: Duration = Duration::from_millis(250);

/// A remote timestamp more than `max_offset` ahead of the local physical clock: either that
/// node's clock or this one is outside the configured bound, and absorbing it could break
/// strict serializability. The message carrying it must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "clock skew: remote timestamp {remote} is {ahead:?} ahead of local physical time {local}, \
     beyond the maximum offset {max_offset:?}"
)]
pub struct ClockSkew {
    /// The timestamp that was refused.
    pub remote: Timestamp,
    /// The local physical time it was compared with.
    pub local: Timestamp,
    /// How far ahead of `local` it was.
    pub ahead: Duration,
    /// The configured maximum offset.
    pub max_offset: Duration,
}

/// Failures opening a clock with a persisted high-water mark.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The high-water file could not be read or written.
    #[error("clock high-water file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The high-water file exists but does not hold a high-water mark. The clock refuses to
    /// guess: starting low could repeat timestamps issued before.
    #[error("clock high-water file {path} is corrupt: {content:?}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it held (truncated).
        content: String,
    },
}

/// A node's hybrid logical clock. Shared between threads by reference or `Arc`.
pub struct Clock {
    physical: Arc<dyn PhysicalClock>,
    max_offset: Duration,
    /// Highest timestamp issued or observed (raw representation).
    last: AtomicU64,
    high_water: Option<HighWater>,
}

/// The persisted bound: no timestamp at or above `bound` is issued until the file says so.
struct HighWater {
    path: PathBuf,
    bound: AtomicU64,
    /// Serialises writers of the file.
    write: Mutex<()>,
}

const HIGH_WATER_MAGIC: &str = "sealdb-clock-high-water v1";

impl Clock {
    /// A clock over the system wall clock, without persistence.
    pub fn system(max_offset: Duration) -> Clock {
        Clock::new(Arc::new(SystemClock), max_offset)
    }

    /// A clock over `physical`, without persistence: monotonic only while the process lives.
    pub fn new(physical: Arc<dyn PhysicalClock>, max_offset: Duration) -> Clock {
        Clock { physical, max_offset, last: AtomicU64::new(0), high_water: None }
    }

    /// A clock whose timestamps stay monotonic across restarts through the high-water file at
    /// `path` (created if missing). Every timestamp issued after this call is above every
    /// timestamp issued by any earlier clock opened on the same file.
    pub fn open(
        path: impl AsRef<Path>,
        physical: Arc<dyn PhysicalClock>,
        max_offset: Duration,
    ) -> Result<Clock, ClockError> {
        let path = path.as_ref().to_path_buf();
        let stored = read_high_water(&path)?;
        let clock = Clock {
            physical,
            max_offset,
            last: AtomicU64::new(stored.as_u64()),
            high_water: Some(HighWater {
                path,
                bound: AtomicU64::new(stored.as_u64()),
                write: Mutex::new(()),
            }),
        };
        // Persist a fresh bound now, so a failing disk shows up at open rather than later.
        let start = clock.physical.now().max(stored.next());
        clock.extend_high_water(start).map_err(|(path, source)| ClockError::Io { path, source })?;
        Ok(clock)
    }

    /// The configured maximum offset between any two clocks of the cluster.
    pub fn max_offset(&self) -> Duration {
        self.max_offset
    }

    /// The physical clock's reading, without the logical part.
    pub fn physical_now(&self) -> Timestamp {
        self.physical.now()
    }

    /// A fresh timestamp: above every timestamp this clock issued or observed before.
    ///
    /// # Panics
    ///
    /// If the clock has a high-water file and it cannot be written. Issuing a timestamp past
    /// the persisted bound could repeat timestamps after a restart, so the node stops instead
    /// (DESIGN.md: I/O errors stop the node rather than weaken a guarantee).
    pub fn now(&self) -> Timestamp {
        loop {
            let physical = self.physical.now().as_u64() & PHYSICAL_MASK;
            let last = self.last.load(Ordering::SeqCst);
            let next = physical.max(last.saturating_add(1));
            self.ensure_below_bound(next);
            if self.last.compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Timestamp::from_u64(next);
            }
        }
    }

    /// Absorbs a timestamp received from another node, so that every later [`Clock::now`] is
    /// above it. Refuses it, changing nothing, if it is more than `max_offset` ahead of the
    /// local physical clock.
    ///
    /// # Panics
    ///
    /// As [`Clock::now`], if the high-water file cannot be written.
    pub fn observe(&self, remote: Timestamp) -> Result<(), ClockSkew> {
        let local = self.physical.now();
        if remote > local.saturating_add(self.max_offset) {
            return Err(ClockSkew {
                remote,
                local,
                ahead: remote.duration_since(local),
                max_offset: self.max_offset,
            });
        }
        self.ensure_below_bound(remote.as_u64());
        self.last.fetch_max(remote.as_u64(), Ordering::SeqCst);
        Ok(())
    }

    /// Blocks until the local physical clock is past `ts + max_offset`: from then on, every
    /// clock in the cluster (within `max_offset` of this one) reads past `ts`.
    pub fn commit_wait(&self, ts: Timestamp) {
        self.physical.wait_until_past(ts.saturating_add(self.max_offset));
    }

    /// How long commit-wait for `ts` still has to go, or `None` if it is over. For async
    /// callers that sleep on their runtime's timer and ask again.
    pub fn commit_wait_remaining(&self, ts: Timestamp) -> Option<Duration> {
        let target = ts.saturating_add(self.max_offset);
        let now = self.physical.now();
        if now > target {
            None
        } else {
            // At least the clock's resolution, so a caller never spins on a zero sleep.
            Some(target.duration_since(now).max(Duration::from_nanos(1)))
        }
    }

    /// Makes sure `needed` is below the persisted bound, extending the bound first if not.
    fn ensure_below_bound(&self, needed: u64) {
        let Some(hw) = &self.high_water else { return };
        if needed < hw.bound.load(Ordering::SeqCst) {
            return;
        }
        if let Err((path, err)) = self.extend_high_water(Timestamp::from_u64(needed)) {
            panic!(
                "cannot persist the clock high-water mark to {}: {err}; stopping rather than \
                 risk repeating timestamps after a restart",
                path.display()
            );
        }
    }

    /// Writes a bound of `needed + lease` (unless a concurrent writer already went past it).
    fn extend_high_water(&self, needed: Timestamp) -> Result<(), (PathBuf, io::Error)> {
        let Some(hw) = &self.high_water else { return Ok(()) };
        let _guard = hw.write.lock().unwrap_or_else(|e| e.into_inner());
        if needed.as_u64() < hw.bound.load(Ordering::SeqCst) {
            return Ok(());
        }
        let bound = needed.saturating_add(HIGH_WATER_LEASE);
        write_high_water(&hw.path, bound).map_err(|e| (hw.path.clone(), e))?;
        hw.bound.store(bound.as_u64(), Ordering::SeqCst);
        Ok(())
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("last", &Timestamp::from_u64(self.last.load(Ordering::SeqCst)))
            .field("max_offset", &self.max_offset)
            .field("persisted", &self.high_water.as_ref().map(|hw| &hw.path))
            .finish()
    }
}

fn read_high_water(path: &Path) -> Result<Timestamp, ClockError> {
    let content = match fs::read_to_string(path) {
        Ok(content) => content,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Timestamp::ZERO),
        Err(source) => return Err(ClockError::Io { path: path.to_path_buf(), source }),
    };
    let corrupt = || ClockError::Corrupt {
        path: path.to_path_buf(),
        content: content.chars().take(80).collect(),
    };
    let rest = content.strip_prefix(HIGH_WATER_MAGIC).ok_or_else(corrupt)?;
    let raw: u64 = rest.trim().parse().map_err(|_| corrupt())?;
    Ok(Timestamp::from_u64(raw))
}

/// Replaces the file atomically: write a temporary file, fsync it, rename it over the old one,
/// fsync the directory. A crash leaves either the old bound or the new one, never a torn file.
fn write_high_water(path: &Path, bound: Timestamp) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    writeln!(file, "{HIGH_WATER_MAGIC} {}", bound.as_u64())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}
