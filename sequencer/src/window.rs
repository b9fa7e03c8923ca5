//! [`Entry`] and [`Window`]: what the log holds.

use std::any::Any;
use std::sync::Arc;

use clock::Epoch;
use clock::Timestamp;

use crate::ids::{ClientId, ShardId, TxnId};

/// What an entry takes besides its payload and participants, at most, in any encoding.
pub const ENTRY_OVERHEAD: usize = 48;

/// One read-write transaction as the sequencer sees it: an opaque payload, the shards it
/// touches, and the client's id for deduplication.
///
/// Equality and the log are about those three; [`Entry::decoded`] is a cache beside them.
#[derive(Clone)]
pub struct Entry {
    /// Deduplication key.
    pub client_id: ClientId,
    /// The shards the entry touches, sorted, without repeats.
    pub participants: Vec<ShardId>,
    /// The transaction, encoded by the layer above.
    pub payload: Arc<[u8]>,
    /// What the layer above decodes `payload` to, when the process that made the entry kept
    /// it (the embedded database does: its caller built the transaction it encoded). Never
    /// logged or sent: an entry read back from the log, or received, has none, and its reader
    /// decodes the payload. A maker must set only what decoding the payload gives, or
    /// replay would differ from the first run.
    pub decoded: Option<Arc<dyn Any + Send + Sync>>,
}

impl Entry {
    /// An entry; `participants` are sorted and deduplicated.
    pub fn new(client_id: ClientId, mut participants: Vec<ShardId>, payload: Arc<[u8]>) -> Entry {
        participants.sort_unstable();
        participants.dedup();
        Entry { client_id, participants, payload, decoded: None }
    }

    /// The entry with `decoded`, what decoding its payload gives ([`Entry::decoded`]).
    pub fn with_decoded(self, decoded: Arc<dyn Any + Send + Sync>) -> Entry {
        Entry { decoded: Some(decoded), ..self }
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

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        (self.client_id, &self.participants, &self.payload)
            == (other.client_id, &other.participants, &other.payload)
    }
}

impl Eq for Entry {}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("client_id", &self.client_id)
            .field("participants", &self.participants)
            .field("payload", &self.payload)
            .field("decoded", &self.decoded.is_some())
            .finish()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What an entry's maker kept beside it is no part of the entry: equal with or without
    /// it, the same size for the cap.
    #[test]
    fn a_kept_decoding_is_no_part_of_the_entry() {
        let plain = Entry::new(ClientId(5), vec![ShardId(1), ShardId(0)], Arc::from(&b"abc"[..]));
        let kept = plain.clone().with_decoded(Arc::new(String::from("abc")));
        assert_eq!(kept, plain);
        assert_eq!(kept.size(), plain.size());
        let other = Entry::new(ClientId(5), vec![ShardId(0)], Arc::from(&b"abc"[..]));
        assert_ne!(kept, other.with_decoded(Arc::new(String::from("abc"))));
    }
}
