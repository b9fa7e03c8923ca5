//! [`Outcome`]: how a read-write transaction ended, as every participant computes it.

use std::sync::atomic::{AtomicU64, Ordering};

use clock::Timestamp;
use storage::Epoch;

/// Where a committed transaction sits in the serial order (DESIGN.md section 4): window by
/// window; within a window, first the entries committed by validation in id order, then the
/// re-executed single-shard procedures in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SerialPosition {
    /// The window it committed in (later than its own for a deferred entry).
    pub epoch: Epoch,
    /// Validation or fallback.
    pub phase: Phase,
    /// Deferred entries first, then the window's own, each in id order.
    pub order: (u8, u64, u32),
}

/// The part of a window a transaction committed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Committed by validation against the previous window's snapshot.
    Validated,
    /// Re-executed serially after validation (single-shard procedures that lost).
    Fallback,
}

/// Why a transaction was aborted. None of these is retryable: the same request would fail
/// the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// The procedure aborted by its own logic.
    User(String),
    /// No procedure is registered under this name.
    UnknownProcedure(String),
    /// The procedure touched a key outside its declared ranges.
    OutsideDeclaredRanges(Vec<u8>),
    /// A key, value or the transaction's writes were over the limits.
    TooLarge(String),
    /// The log entry could not be decoded.
    Malformed(String),
}

/// The end of a read-write transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its writes are applied at `ts`.
    Committed {
        /// The commit timestamp (the window's).
        ts: Timestamp,
        /// What a procedure returned (empty for interactive transactions).
        output: Vec<u8>,
    },
    /// Validation failed: something it read changed. Retrying may succeed.
    Conflict {
        /// A key whose change caused it, when known: a hint from one participant shard (others
        /// may name another key or none).
        key: Option<Vec<u8>>,
    },
    /// It was aborted, changing nothing.
    Aborted(AbortReason),
}

impl Outcome {
    /// What a caller gets for the outcome of a procedure call: its output, or why it did not
    /// commit.
    pub fn into_output(self) -> Result<Vec<u8>, crate::TxnError> {
        match self {
            Outcome::Committed { output, .. } => Ok(output),
            Outcome::Aborted(reason) => Err(crate::TxnError::Aborted(reason)),
            Outcome::Conflict { key } => Err(crate::TxnError::Conflict { key }),
        }
    }
}

/// A transaction's outcome on one shard, with where it was decided in the serial order
/// (commits and procedure aborts; `None` for conflicts and requests refused before running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The transaction.
    pub txn: sequencer::TxnId,
    /// How it ended.
    pub outcome: Outcome,
    /// Its place in the serial order.
    pub position: Option<SerialPosition>,
}

/// How many decided transactions ended each way, counted where their outcome is reported
/// (the lowest participant).
#[derive(Default)]
pub struct OutcomeCounters {
    /// Committed, fallbacks included.
    pub committed: AtomicU64,
    /// Single-shard procedures committed by re-execution after losing validation.
    pub fallbacks: AtomicU64,
    /// Interactive transactions that failed validation.
    pub conflicts: AtomicU64,
    /// Aborted.
    pub aborts: AtomicU64,
}

impl OutcomeCounters {
    /// Counts `decided`.
    pub fn count(&self, decided: &Decided) {
        let counter = match (&decided.outcome, decided.position) {
            (Outcome::Committed { .. }, Some(p)) if p.phase == Phase::Fallback => {
                self.committed.fetch_add(1, Ordering::Relaxed);
                &self.fallbacks
            }
            (Outcome::Committed { .. }, _) => &self.committed,
            (Outcome::Conflict { .. }, _) => &self.conflicts,
            (Outcome::Aborted(_), _) => &self.aborts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
