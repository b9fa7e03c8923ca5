//! Read-only procedure calls: a registered [`Procedure`] run against reads at one timestamp,
//! off the log. A call that only reads needs no window and no validation, as a snapshot's
//! reads need none: it is a snapshot read the procedure's code makes, wherever the data is,
//! and waits as such a read does. Embedded, a snapshot runs it over every shard
//! (`embedded::Snapshot::call`); in a cluster, the one shard holding every range it declares
//! runs it (`Shard.ReadCall`), in one round trip where the same reads from the client take
//! one a step.
//!
//! The procedure sees the same [`Context`] as in a window, with the snapshot's timestamp as
//! [`Context::now`]. Its reads are checked against its declared ranges and the limits, as in
//! a window; a write (put, delete or add) aborts the call, and nothing is changed.

use clock::Timestamp;
use storage::{KeyRange, Limits, Quoted, StorageError};

use crate::error::TxnError;
use crate::executor::{Declared, SnapshotRead};
use crate::procedure::{Context, ProcError, Procedure, Rows};
use crate::request::{check_ranges, refused};

/// Runs `procedure` with `args` on `snapshot` (reads at `at`), reading only within `ranges`
/// (what it declares for `args`: [`crate::declared_ranges`]). Its output, or why it aborted;
/// [`TxnError::Storage`] if storage failed underneath.
pub fn call_read_only(
    procedure: &dyn Procedure,
    args: &[u8],
    ranges: &[KeyRange],
    snapshot: &dyn SnapshotRead,
    at: Timestamp,
    limits: &Limits,
) -> Result<Vec<u8>, TxnError> {
    check_ranges(ranges, limits).map_err(refused)?;
    let mut ctx = ReadOnly { declared: Declared::new(ranges), snapshot, at, limits, failed: None };
    let ran = procedure.run(&mut ctx, args);
    // A storage failure is the call's result even if the procedure went on past it.
    if let Some(e) = ctx.failed {
        return Err(TxnError::from_storage(e));
    }
    ran.map_err(|e| match e.into_abort() {
        Ok(reason) => refused(reason),
        Err(storage) => TxnError::Storage(storage),
    })
}

/// The context of a read-only call: reads of the snapshot within the declared ranges.
struct ReadOnly<'a> {
    declared: Declared<'a>,
    snapshot: &'a dyn SnapshotRead,
    at: Timestamp,
    limits: &'a Limits,
    /// The first read that failed in storage.
    failed: Option<StorageError>,
}

impl ReadOnly<'_> {
    fn storage(&mut self, e: StorageError) -> ProcError {
        let text = e.to_string();
        self.failed.get_or_insert(e);
        ProcError::Storage(text)
    }
}

/// What a write in a read-only call ends in: the call aborts, as a procedure's own abort does.
fn no_write(key: &[u8]) -> ProcError {
    ProcError::abort(format!("a read-only call cannot write {}", Quoted(key)))
}

impl Context for ReadOnly<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ProcError> {
        self.limits.check_key(key).map_err(|e| ProcError::TooLarge(e.to_string()))?;
        if !self.declared.contains(key) {
            return Err(ProcError::OutsideDeclaredRanges { key: key.to_vec() });
        }
        self.snapshot.get(key).map_err(|e| self.storage(e))
    }

    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Rows, ProcError> {
        self.limits.check_range(range).map_err(|e| ProcError::TooLarge(e.to_string()))?;
        if !self.declared.covers(range) {
            return Err(ProcError::OutsideDeclaredRanges { key: range.start.clone() });
        }
        self.snapshot.scan(range, limit).map_err(|e| self.storage(e))
    }

    fn put(&mut self, key: &[u8], _value: &[u8]) -> Result<(), ProcError> {
        Err(no_write(key))
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), ProcError> {
        Err(no_write(key))
    }

    fn add(&mut self, key: &[u8], _delta: i64) -> Result<(), ProcError> {
        Err(no_write(key))
    }

    fn now(&self) -> Timestamp {
        self.at
    }
}
