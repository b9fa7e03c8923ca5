//! Identifiers: shards, clients' transaction ids, and positions in the log.

use std::fmt;

use clock::Epoch;

/// A shard: one range of the key space, applied by one shard server.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(pub u32);

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard{}", self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard{}", self.0)
    }
}

/// A client-chosen transaction id, unique per transaction (random 128 bits). A retry after an
/// unknown outcome reuses it, and the log deduplicates it, so a transaction never commits twice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClientId(pub u128);

impl ClientId {
    /// Its 16 bytes as they travel in messages (little-endian).
    pub fn to_bytes(self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    /// The id whose 16 bytes (as [`ClientId::to_bytes`] writes them) are `bytes`; `None`
    /// for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<ClientId> {
        <[u8; 16]>::try_from(bytes).ok().map(|b| ClientId(u128::from_le_bytes(b)))
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client:{:032x}", self.0)
    }
}

/// A transaction's position in the log: its window and its index in the window. Within a
/// window, lower ids come first in the serial order (DESIGN.md section 4).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TxnId {
    /// The window.
    pub epoch: Epoch,
    /// The index within the window.
    pub index: u32,
}

impl fmt::Debug for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.epoch.0, self.index)
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.epoch.0, self.index)
    }
}
