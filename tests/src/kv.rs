//! Small helpers for tests that store counters.

use storage::KeyRange;

/// The range holding exactly `k`.
pub fn point(k: &[u8]) -> KeyRange {
    KeyRange::point(k)
}

/// A counter stored as decimal text; absent is zero.
pub fn num(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap())
}
