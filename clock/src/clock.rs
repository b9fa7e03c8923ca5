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
//! Writing the file takes three fsyncs (the file, the rename's directory), milliseconds on a
//! busy disk; the caller that crosses the bound would wait for them, and in a node that is
//! the sequencer sealing a window or a runtime thread serving requests. So the bound is
//! renewed ahead: the first timestamp within [`RENEW_MARGIN`] of it asks the clock's renewal
//! thread (one per clock with a file, started at open) for a write and goes on; a caller waits
//! only if time reaches the bound before the write lands (a disk slower than the margin), and
//! only it sees the write's error then ([`Clock::try_now`]).
//!
//! ```text
//!   issued:  t1 t2 t3 ....... t9 |  bound B (fsynced)     crash, wall clock set back
//!   restart: last := B  -> next timestamp B+1 > t9, whatever the wall clock says
//! ```

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::physical::{PhysicalClock, SystemClock};
use crate::timestamp::{PHYSICAL_MASK, Timestamp};

/// How far ahead of the highest timestamp issued the persisted high-water bound is set.
pub const HIGH_WATER_LEASE: Duration = Duration::from_millis(250);

/// How close to the persisted bound a timestamp starts the bound's renewal in the background.
/// The renewal has this long (of clock time) to land before a caller waits for it.
pub const RENEW_MARGIN: Duration = Duration::from_millis(50);

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
    high_water: Option<Arc<HighWater>>,
    /// The thread that renews the bound in the background (`None` without a file, or if no
    /// thread could be started: then the caller reaching the bound writes it). The clock stops
    /// and joins it when dropped, so that a clock opened on the file afterwards is its only
    /// writer (a late renewal could otherwise write a lower bound over the new clock's).
    renewer: Option<std::thread::JoinHandle<()>>,
}

/// The persisted bound: no timestamp at or above `bound` is issued until the file says so.
struct HighWater {
    path: PathBuf,
    bound: AtomicU64,
    /// Serialises writers of the file.
    write: Mutex<()>,
    /// A renewal has been asked for and has not landed.
    renewing: AtomicBool,
    /// What the renewal thread is asked to do, and its wake-up.
    request: Mutex<RenewalRequest>,
    requested: Condvar,
    /// Bounds written since open, and how many of them a caller had to wait for.
    writes: AtomicU64,
    waited: AtomicU64,
}

/// What a clock with a high-water file has written ([`Clock::high_water_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HighWaterStats {
    /// Bounds written since the clock was opened (including the one at open).
    pub writes: u64,
    /// Times a caller of [`Clock::now`] or [`Clock::observe`] needed a bound not yet written
    /// and waited for it (the background renewal had not landed in time, or had failed).
    pub waited: u64,
}

/// A request to the renewal thread: a bound to write, or to stop.
#[derive(Debug, Default)]
struct RenewalRequest {
    needed: Option<Timestamp>,
    stop: bool,
}

const HIGH_WATER_MAGIC: &str = "sealdb-clock-high-water v1";

impl Clock {
    /// A clock over the system wall clock, without persistence.
    pub fn system(max_offset: Duration) -> Clock {
        Clock::new(Arc::new(SystemClock), max_offset)
    }

    /// A clock over `physical`, without persistence: monotonic only while the process lives.
    pub fn new(physical: Arc<dyn PhysicalClock>, max_offset: Duration) -> Clock {
        Clock { physical, max_offset, last: AtomicU64::new(0), high_water: None, renewer: None }
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
        let high_water = Arc::new(HighWater {
            path,
            bound: AtomicU64::new(stored.as_u64()),
            write: Mutex::new(()),
            renewing: AtomicBool::new(false),
            request: Mutex::new(RenewalRequest::default()),
            requested: Condvar::new(),
            writes: AtomicU64::new(0),
            waited: AtomicU64::new(0),
        });
        // Persist a fresh bound now, so a failing disk shows up at open rather than later.
        high_water.extend(physical.now().max(stored.next()))?;
        let renewer = {
            let high_water = high_water.clone();
            std::thread::Builder::new()
                .name("sealdb-clock".into())
                .spawn(move || high_water.serve_renewals())
                .ok()
        };
        Ok(Clock {
            physical,
            max_offset,
            last: AtomicU64::new(stored.as_u64()),
            high_water: Some(high_water),
            renewer,
        })
    }

    /// The persisted bound no timestamp reaches, if the clock has a high-water file.
    pub fn high_water_bound(&self) -> Option<Timestamp> {
        self.high_water.as_ref().map(|hw| Timestamp::from_u64(hw.bound.load(Ordering::SeqCst)))
    }

    /// What the high-water file has taken, if the clock has one.
    pub fn high_water_stats(&self) -> Option<HighWaterStats> {
        self.high_water.as_ref().map(|hw| HighWaterStats {
            writes: hw.writes.load(Ordering::Relaxed),
            waited: hw.waited.load(Ordering::Relaxed),
        })
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
    /// If the clock has a high-water file and it cannot be written ([`Clock::try_now`] says
    /// so instead). Issuing a timestamp past the persisted bound could repeat timestamps after
    /// a restart, so a node stops instead (DESIGN.md: I/O errors stop the node rather than
    /// weaken a guarantee).
    pub fn now(&self) -> Timestamp {
        self.try_now().unwrap_or_else(|e| stop(e))
    }

    /// [`Clock::now`], or the error writing the high-water file if the timestamp needed a
    /// new bound and it could not be persisted. Nothing is issued then.
    pub fn try_now(&self) -> Result<Timestamp, ClockError> {
        loop {
            let physical = self.physical.now().as_u64() & PHYSICAL_MASK;
            let last = self.last.load(Ordering::SeqCst);
            let next = physical.max(last.saturating_add(1));
            self.ensure_below_bound(next)?;
            if self.last.compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Ok(Timestamp::from_u64(next));
            }
        }
    }

    /// Absorbs a timestamp received from another node, so that every later [`Clock::now`] is
    /// above it. Refuses it, changing nothing, if it is more than `max_offset` ahead of the
    /// local physical clock.
    ///
    /// # Panics
    ///
    /// As [`Clock::now`], if the high-water file cannot be written ([`Clock::try_observe`]
    /// says so instead).
    pub fn observe(&self, remote: Timestamp) -> Result<(), ClockSkew> {
        match self.try_observe(remote) {
            Ok(()) => Ok(()),
            Err(ObserveError::Skew(skew)) => Err(skew),
            Err(ObserveError::Persist(e)) => stop(e),
        }
    }

    /// [`Clock::observe`], with the error writing the high-water file instead of a panic.
    pub fn try_observe(&self, remote: Timestamp) -> Result<(), ObserveError> {
        let local = self.physical.now();
        if remote > local.saturating_add(self.max_offset) {
            return Err(ObserveError::Skew(ClockSkew {
                remote,
                local,
                ahead: remote.duration_since(local),
                max_offset: self.max_offset,
            }));
        }
        self.ensure_below_bound(remote.as_u64()).map_err(ObserveError::Persist)?;
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

    /// Makes sure `needed` is below the persisted bound: writes a new bound first if it is not
    /// (the caller waits), and starts writing one in the background if it is within
    /// [`RENEW_MARGIN`] of it.
    fn ensure_below_bound(&self, needed: u64) -> Result<(), ClockError> {
        let Some(hw) = &self.high_water else { return Ok(()) };
        let bound = hw.bound.load(Ordering::SeqCst);
        if needed >= bound {
            hw.waited.fetch_add(1, Ordering::Relaxed);
            return hw.extend(Timestamp::from_u64(needed));
        }
        let renew_at = Timestamp::from_u64(bound).saturating_sub(RENEW_MARGIN).as_u64();
        if needed >= renew_at && self.renewer.is_some() && !hw.renewing.swap(true, Ordering::SeqCst)
        {
            hw.lock_request().needed = Some(Timestamp::from_u64(needed));
            hw.requested.notify_one();
        }
        Ok(())
    }
}

impl HighWater {
    fn lock_request(&self) -> MutexGuard<'_, RenewalRequest> {
        self.request.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The renewal thread: writes each bound asked for, until asked to stop.
    fn serve_renewals(&self) {
        let mut request = self.lock_request();
        loop {
            if request.stop {
                return;
            }
            match request.needed.take() {
                Some(needed) => {
                    drop(request);
                    // An error here is seen again, by the caller that reaches the bound and
                    // writes it itself.
                    let _ = self.extend(needed);
                    self.renewing.store(false, Ordering::SeqCst);
                    request = self.lock_request();
                }
                None => {
                    request = self.requested.wait(request).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// Writes a bound of `needed + lease`, unless the bound is there already (a concurrent
    /// writer went past it).
    fn extend(&self, needed: Timestamp) -> Result<(), ClockError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let bound = needed.saturating_add(HIGH_WATER_LEASE);
        if bound.as_u64() <= self.bound.load(Ordering::SeqCst) {
            return Ok(());
        }
        write_high_water(&self.path, bound)
            .map_err(|source| ClockError::Io { path: self.path.clone(), source })?;
        // A renewal is over once its bound is in use (those who see the bound see it over).
        self.renewing.store(false, Ordering::SeqCst);
        self.bound.store(bound.as_u64(), Ordering::SeqCst);
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Why [`Clock::try_observe`] refused a timestamp.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Too far ahead: the message carrying it must be refused.
    #[error(transparent)]
    Skew(ClockSkew),
    /// It needed a new high-water bound, which could not be persisted.
    #[error(transparent)]
    Persist(ClockError),
}

/// Stops the caller: the clock cannot persist its bound (see [`Clock::now`]).
fn stop(e: ClockError) -> ! {
    panic!(
        "cannot persist the clock high-water mark ({e}); stopping rather than risk repeating \
         timestamps after a restart"
    )
}

impl Drop for Clock {
    fn drop(&mut self) {
        let (Some(hw), Some(renewer)) = (&self.high_water, self.renewer.take()) else { return };
        hw.lock_request().stop = true;
        hw.requested.notify_one();
        let _ = renewer.join();
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
