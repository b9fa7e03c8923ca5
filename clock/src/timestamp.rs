//! [`Timestamp`]: a point on sealdb's hybrid logical time line.

use std::fmt;
use std::time::Duration;

use uhlc::NTP64;

/// Number of low bits of a timestamp that hold the logical counter (as in `uhlc`).
pub(crate) const COUNTER_BITS: u32 = 4;
/// Mask that clears the logical counter, leaving the physical part.
pub(crate) const PHYSICAL_MASK: u64 = !((1u64 << COUNTER_BITS) - 1);

/// A hybrid logical clock timestamp: NTP64 physical time with a 4-bit logical counter in the
/// lowest bits.
///
/// Timestamps are totally ordered and compare as their 64-bit representation
/// ([`Timestamp::as_u64`]), which is what storage writes (inverted) into version keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(NTP64);

impl Timestamp {
    /// The smallest timestamp; every version ever written is above it.
    pub const ZERO: Timestamp = Timestamp(NTP64(0));
    /// The largest timestamp; reading at it sees the newest version of everything.
    pub const MAX: Timestamp = Timestamp(NTP64(u64::MAX));

    /// Rebuilds a timestamp from its 64-bit representation.
    pub const fn from_u64(raw: u64) -> Timestamp {
        Timestamp(NTP64(raw))
    }

    /// The 64-bit representation; order-preserving.
    pub const fn as_u64(self) -> u64 {
        (self.0).0
    }

    /// The timestamp for a physical time given as time since the Unix epoch, counter zero.
    pub fn from_unix_duration(since_epoch: Duration) -> Timestamp {
        Timestamp(NTP64(NTP64::from(since_epoch).0 & PHYSICAL_MASK))
    }

    /// The physical part as time since the Unix epoch.
    pub fn to_unix_duration(self) -> Duration {
        NTP64(self.as_u64() & PHYSICAL_MASK).to_duration()
    }

    /// The underlying `uhlc` time.
    pub fn to_ntp64(self) -> NTP64 {
        self.0
    }

    /// This timestamp moved `d` later, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp::from_u64(self.as_u64().saturating_add(NTP64::from(d).0))
    }

    /// This timestamp moved `d` earlier, saturating at [`Timestamp::ZERO`].
    pub fn saturating_sub(self, d: Duration) -> Timestamp {
        Timestamp::from_u64(self.as_u64().saturating_sub(NTP64::from(d).0))
    }

    /// The next timestamp up (one logical tick later).
    pub fn next(self) -> Timestamp {
        Timestamp::from_u64(self.as_u64().saturating_add(1))
    }

    /// How far this timestamp is ahead of `earlier`, or zero if it is not.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        NTP64(self.as_u64().saturating_sub(earlier.as_u64())).to_duration()
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.as_u64())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.to_unix_duration();
        let counter = self.as_u64() & !PHYSICAL_MASK;
        write!(f, "{}.{:09}+{counter}", d.as_secs(), d.subsec_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_the_raw_representation() {
        let a = Timestamp::from_unix_duration(Duration::from_secs(10));
        let b = a.next();
        let c = Timestamp::from_unix_duration(Duration::from_secs(11));
        assert!(a < b && b < c);
        assert!(a.as_u64() < b.as_u64() && b.as_u64() < c.as_u64());
    }

    #[test]
    fn durations_round_trip_to_within_the_counter_resolution() {
        let d = Duration::new(1_700_000_000, 123_456_789);
        let back = Timestamp::from_unix_duration(d).to_unix_duration();
        let diff = back.abs_diff(d);
        assert!(diff < Duration::from_nanos(10), "{d:?} came back as {back:?}");
    }

    #[test]
    fn add_and_sub_move_by_the_duration() {
        let t = Timestamp::from_unix_duration(Duration::from_secs(100));
        let later = t.saturating_add(Duration::from_millis(250));
        assert_eq!(later.duration_since(t).as_millis(), 250);
        assert_eq!(later.saturating_sub(Duration::from_millis(250)), t);
        assert_eq!(t.duration_since(later), Duration::ZERO);
        assert_eq!(Timestamp::MAX.saturating_add(Duration::from_secs(1)), Timestamp::MAX);
        assert_eq!(Timestamp::ZERO.saturating_sub(Duration::from_secs(1)), Timestamp::ZERO);
    }
}
