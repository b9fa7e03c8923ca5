//! The 64-bit FNV-1a hash: cheap, stable across builds and platforms, and spreading keys that
//! share long prefixes. The RocksDB engine names the column family it keeps apart with it, so
//! its values must never change.

/// FNV-1a's starting value.
pub(crate) const START: u64 = 0xcbf2_9ce4_8422_2325;

/// `hash` continued over `bytes`.
pub(crate) fn extend(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}
