//! [`Outcome`]: how a read-write transaction ended, as every participant computes it.

use std::sync::atomic::{AtomicU64, Ordering};

use clock::Timestamp;
use storage::Epoch;

/// Where a committed transaction sits in the serial order (DESIGN.md section 4): window by
/// window; within a window, first the entries committed by validation in id order, then the
/// single-shard procedures run serially (re-executed after losing validation, or with
/// [`Plan::Serial`](crate::Plan::Serial) run only there) in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SerialPosition {
    /// The window it committed in (later than its own for a deferred entry).
    pub epoch: Epoch,
    /// Validation, fallback or serial.
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
    /// Run once, serially after validation ([`Plan::Serial`](crate::Plan::Serial)'s
    /// single-shard procedures). A window has these or fallbacks, never both.
    Serial,
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

impl AbortReason {
    /// Whether the abort was decided on what the transaction read (its own logic, or a key
    /// it reached outside its ranges), so that it has a place in the serial order. The others
    /// refuse the request as it is.
    pub fn follows_reads(&self) -> bool {
        matches!(self, AbortReason::User(_) | AbortReason::OutsideDeclaredRanges(_))
    }
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
    /// Single-shard procedures committed by their one serial run ([`Phase::Serial`]).
    pub serial: AtomicU64,
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
            (Outcome::Committed { .. }, Some(p)) if p.phase == Phase::Serial => {
                self.committed.fetch_add(1, Ordering::Relaxed);
                &self.serial
            }
            (Outcome::Committed { .. }, _) => &self.committed,
            (Outcome::Conflict { .. }, _) => &self.conflicts,
            (Outcome::Aborted(_), _) => &self.aborts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// An outcome on the wire and in storage.
pub fn outcome_to_proto(txn: sequencer::TxnId, outcome: &Outcome) -> proto::v1::Outcome {
    let id = Some(proto::v1::TxnId { epoch: txn.epoch.0, index: txn.index });
    proto::v1::Outcome { txn: id, ..outcome_result_to_proto(outcome) }
}

/// An outcome on the wire without a transaction (a read-only call's has none).
pub fn outcome_result_to_proto(outcome: &Outcome) -> proto::v1::Outcome {
    use proto::v1;
    use v1::outcome::Result as R;
    let (commit_ts, result) = match outcome {
        Outcome::Committed { ts, output } => {
            (ts.as_u64(), R::Committed(v1::Committed { output: output.clone() }))
        }
        Outcome::Conflict { key } => {
            (0, R::Conflict(v1::Conflict { key: key.clone().unwrap_or_default() }))
        }
        Outcome::Aborted(reason) => {
            let (kind, reason, key) = match reason {
                AbortReason::User(r) => ("user", r.clone(), Vec::new()),
                AbortReason::UnknownProcedure(n) => ("unknown_procedure", n.clone(), Vec::new()),
                AbortReason::OutsideDeclaredRanges(k) => {
                    ("outside_declared_ranges", String::new(), k.clone())
                }
                AbortReason::TooLarge(r) => ("too_large", r.clone(), Vec::new()),
                AbortReason::Malformed(r) => ("malformed", r.clone(), Vec::new()),
            };
            (0, R::Aborted(v1::Aborted { reason, kind: kind.into(), key }))
        }
    };
    v1::Outcome { txn: None, commit_ts, result: Some(result) }
}

/// An outcome from the wire or storage, with its transaction; `None` if it has no result or
/// no transaction.
pub fn outcome_from_proto(o: proto::v1::Outcome) -> Option<(sequencer::TxnId, Outcome)> {
    let txn = o.txn.map(|t| sequencer::TxnId { epoch: Epoch(t.epoch), index: t.index })?;
    Some((txn, outcome_result_from_proto(o)?))
}

/// An outcome from the wire without its transaction (a read-only call's has none); `None` if
/// it has no result.
pub fn outcome_result_from_proto(o: proto::v1::Outcome) -> Option<Outcome> {
    use proto::v1::outcome::Result as R;
    Some(match o.result? {
        R::Committed(c) => {
            Outcome::Committed { ts: Timestamp::from_u64(o.commit_ts), output: c.output }
        }
        R::Conflict(c) => Outcome::Conflict { key: (!c.key.is_empty()).then_some(c.key) },
        R::Aborted(a) => Outcome::Aborted(match a.kind.as_str() {
            "unknown_procedure" => AbortReason::UnknownProcedure(a.reason),
            "outside_declared_ranges" => AbortReason::OutsideDeclaredRanges(a.key),
            "too_large" => AbortReason::TooLarge(a.reason),
            "malformed" => AbortReason::Malformed(a.reason),
            _ => AbortReason::User(a.reason),
        }),
    })
}
