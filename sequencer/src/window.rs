//! [`Entry`] and [`Window`]: what the log holds.

use std::sync::Arc;

use clock::Epoch;
use clock::Timestamp;

use crate::ids::{ClientId, ShardId, TxnId};

/// What an entry takes besides its payload and participants, at most, in any encoding.
pub const ENTRY_OVERHEAD: usize = 48;

/// One read-write transaction as the sequencer sees it: an opaque payload, the shards it
/// touches, and the client's id for deduplication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Deduplication key.
    pub client_id: ClientId,
    /// The shards the entry touches, sorted, without repeats.
    pub participants: Vec<ShardId>,
    /// The transaction, encoded by the layer above.
    pub payload: Arc<[u8]>,
}

impl Entry {
    /// An entry; `participants` are sorted and deduplicated.
    pub fn new(client_id: ClientId, mut participants: Vec<ShardId>, payload: Arc<[u8]>) -> Entry {
        participants.sort_unstable();
        participants.dedup();
        Entry { client_id, participants, payload }
    }

    /// Whether the entry touches `shard`.
    pub fn touches(&self, shard: ShardId) -> bool {
        self.participants.binary_search(&shard).is_ok()
    }

    /// Bytes the entry takes in a window, for the size cap: at least what it takes in the log
    /// and in a protobuf `SlicedEntry` (client id, index, participants, payload, and their
    /// tags and lengths), so a window within the cap is a slice within it too.
    pub fn size(&self) -> usize {
        ENTRY_OVERHEAD + 5 * self.participants.len() + self.payload.len()
    }
}

/// A sealed window: entries in log order, one epoch, one timestamp. Epochs are consecutive
/// and timestamps strictly increase from window to window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Its position in the log.
    pub epoch: Epoch,
    /// Its timestamp: the commit timestamp of every transaction it commits.
    pub ts: Timestamp,
    /// The entries; entry `i` is transaction `(epoch, i)`.
    pub entries: Vec<Entry>,
}

impl Window {
    /// The id of entry `index`.
    pub fn txn_id(&self, index: usize) -> TxnId {
        TxnId { epoch: self.epoch, index: index as u32 }
    }

    /// The entries that touch `shard`, with their ids, in log order: the shard's slice.
    pub fn slice(&self, shard: ShardId) -> impl Iterator<Item = (TxnId, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.touches(shard))
            .map(|(i, e)| (self.txn_id(i), e))
    }
}
