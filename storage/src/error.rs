//! [`StorageError`]: everything storage can report.

use clock::Epoch;

/// Storage failures. Invalid input (the `*TooLarge` variants, `WindowOutOfOrder`) changes
/// nothing and is the caller's to fix; `Engine` and `Corrupt` are infrastructure failures on
/// which a shard stops rather than risk diverging from its replicas.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A key is longer than the configured limit.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is longer than the configured limit.
    #[error("value of {len} bytes for a key of {key_len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The length of its key.
        key_len: usize,
        /// The limit.
        max: usize,
    },
    /// A batch writes more bytes than one transaction may.
    #[error("batch of {bytes} bytes of writes exceeds the limit of {max} bytes")]
    BatchTooLarge {
        /// Keys plus values in the batch.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A window's batch arrived when that window, or a later one, is already applied.
    #[error("window {window} applied out of order: the shard has already applied {applied}")]
    WindowOutOfOrder {
        /// The window of the batch.
        window: Epoch,
        /// The shard's watermark.
        applied: Epoch,
    },
    /// A read below the garbage-collection horizon: versions it would see may be gone. The
    /// caller reads at a later timestamp (nothing changed).
    #[error("read timestamp {ts} is below the garbage-collection horizon {horizon}")]
    BelowHorizon {
        /// The timestamp asked for.
        ts: clock::Timestamp,
        /// The oldest timestamp still readable.
        horizon: clock::Timestamp,
    },
    /// Stored bytes that do not decode: a bug or a damaged disk.
    #[error("corrupt storage: {0}")]
    Corrupt(String),
    /// The engine underneath failed (I/O, RocksDB).
    #[error("storage engine: {0}")]
    Engine(String),
}
