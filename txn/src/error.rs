//! [`TxnError`]: every failure a caller of the database can see.

use clock::Timestamp;

use crate::outcome::AbortReason;

/// Why a transaction, call or read did not succeed. Each variant says what to do next; none
/// of them changed any data, except that after [`TxnError::OutcomeUnknown`] the transaction
/// may have committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// Validation failed because something read changed. Retry (the `transact` helper does).
    #[error("conflict{}: retry the transaction", .key.as_ref().map(|k| format!(" on key {}", storage::Quoted(k))).unwrap_or_default())]
    Conflict {
        /// A key whose change caused it, when known (a hint).
        key: Option<Vec<u8>>,
    },
    /// The transaction was aborted by its own logic or broke a rule; retrying will not help.
    #[error("aborted: {0:?}")]
    Aborted(AbortReason),
    /// No procedure of this name is registered.
    #[error("unknown procedure {0:?}")]
    UnknownProcedure(String),
    /// A key, value or the transaction's writes are over the limits (DESIGN.md section 8).
    #[error("too large: {0}")]
    TooLarge(String),
    /// The read timestamp is older than the retention window.
    #[error("read timestamp {ts} is outside the retention window (oldest readable: {oldest})")]
    OutsideRetention {
        /// The timestamp asked for.
        ts: Timestamp,
        /// The oldest timestamp still readable.
        oldest: Timestamp,
    },
    /// The database is closing or closed; the transaction was not logged.
    #[error("the database is shutting down")]
    ShuttingDown,
    /// The transaction was logged, but the database stopped before its outcome was known: it
    /// may have committed, or may still commit when the database is reopened. Check before
    /// retrying.
    #[error("the outcome is unknown: the transaction was logged but the database stopped")]
    OutcomeUnknown,
    /// A node of the cluster could not be reached (cluster mode). Nothing was logged: a
    /// submission that may have been logged ends in [`TxnError::OutcomeUnknown`] instead.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A node's clock is more than `max_offset` away from this one's (cluster mode): the
    /// message was refused (DESIGN.md section 5).
    #[error("{0}")]
    ClockSkew(String),
    /// Storage or the log failed; the database stops rather than risk diverging.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl TxnError {
    /// Whether retrying the same transaction may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TxnError::Conflict { .. })
    }

    /// What a read of local storage that failed with `e` tells its caller: a key or value
    /// over the limits, a timestamp already collected, or a storage failure.
    pub fn from_storage(e: storage::StorageError) -> TxnError {
        match e {
            storage::StorageError::KeyTooLarge { .. }
            | storage::StorageError::ValueTooLarge { .. }
            | storage::StorageError::BatchTooLarge { .. } => TxnError::TooLarge(e.to_string()),
            // A transaction open for longer than the retention period: its snapshot is
            // collected.
            storage::StorageError::BelowHorizon { ts, horizon } => {
                TxnError::OutsideRetention { ts, oldest: horizon }
            }
            other => TxnError::Storage(other.to_string()),
        }
    }
}
