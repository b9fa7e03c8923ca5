//! Deterministic procedures (DESIGN.md section 3): the [`Procedure`] trait, the [`Context`]
//! they run against, and the [`Registry`] of procedures by name.
//!
//! A procedure is registered under the same name on every node. A call names it and passes
//! argument bytes; the caller's node asks the procedure for the key ranges the call may touch
//! ([`Procedure::ranges`]), which route the call to its shards. Every participant shard then
//! runs the whole procedure against the same snapshot, so they all see the same reads, make
//! the same writes and reach the same result without talking to each other.
//!
//! Determinism contract for implementors: `run` may depend only on `args` and on what the
//! context returns. No clocks (use [`Context::now`], the window timestamp), no randomness
//! (seed it from the arguments), no I/O, no iteration over `HashMap`s.

use std::collections::BTreeMap;
use std::sync::Arc;

use clock::Timestamp;
use storage::KeyRange;

/// Why a procedure stopped without committing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcError {
    /// The procedure's own logic aborted; all its writes are discarded on every shard.
    #[error("aborted: {0}")]
    Abort(String),
    /// It touched a key outside the ranges it declared.
    #[error("key {} is outside the procedure's declared ranges", storage::Quoted(key))]
    OutsideDeclaredRanges {
        /// The key.
        key: Vec<u8>,
    },
    /// A key or value over the limits.
    #[error("{0}")]
    TooLarge(String),
    /// Storage failed underneath: not a result, the shard stops.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl ProcError {
    /// A user abort with `reason`.
    pub fn abort(reason: impl Into<String>) -> ProcError {
        ProcError::Abort(reason.into())
    }

    /// Why the call ends aborted, or, for a storage failure (not a result), its text.
    pub(crate) fn into_abort(self) -> Result<crate::AbortReason, String> {
        use crate::AbortReason;
        match self {
            ProcError::Abort(reason) => Ok(AbortReason::User(reason)),
            ProcError::OutsideDeclaredRanges { key } => Ok(AbortReason::OutsideDeclaredRanges(key)),
            ProcError::TooLarge(what) => Ok(AbortReason::TooLarge(what)),
            ProcError::Storage(e) => Err(e),
        }
    }
}

/// Keys with their values, in key order: what a scan returns.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// What a procedure sees: a snapshot of the keys it declared, its own writes on top, and the
/// window timestamp as "now".
pub trait Context {
    /// The value of `key`.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ProcError>;
    /// Up to `limit` keys of `range` with their values, in key order.
    fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Rows, ProcError>;
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ProcError>;
    /// Deletes `key`.
    fn delete(&mut self, key: &[u8]) -> Result<(), ProcError>;
    /// The window's timestamp: the same on every shard and every replay.
    fn now(&self) -> Timestamp;
    /// Adds `delta` to the counter at `key` (see [`counter`]; wrapping around on overflow).
    /// A value that is not a counter aborts the procedure.
    ///
    /// Unlike a [`get`](Context::get) and a [`put`](Context::put), an add reads nothing the
    /// procedure sees, so in a window's validation it conflicts with neither another add to
    /// the key nor a lower entry's read of it; only a lower entry's put or delete of the key
    /// makes it lose. Adds to one counter by many entries of a window (TPC-C's year-to-date
    /// totals) all commit, each added in id order. A later [`get`](Context::get) or
    /// [`scan`](Context::scan) of the key in the same procedure reads it, as a read would.
    ///
    /// This default reads and writes the key; the executor's context overrides it.
    fn add(&mut self, key: &[u8], delta: i64) -> Result<(), ProcError> {
        add_by_reading(self, key, delta)
    }
}

/// Bytes a counter takes: an `i64`, little-endian.
pub const COUNTER_BYTES: usize = 8;

/// The counter held by `value` at `key`: none is 0, [`COUNTER_BYTES`] bytes are an `i64`
/// (little-endian); any other value aborts the procedure that asks.
pub fn counter(key: &[u8], value: Option<&[u8]>) -> Result<i64, ProcError> {
    match value {
        None => Ok(0),
        Some(v) => <[u8; COUNTER_BYTES]>::try_from(v).map(i64::from_le_bytes).map_err(|_| {
            ProcError::abort(format!(
                "{} holds {} bytes, not a counter ({COUNTER_BYTES})",
                storage::Quoted(key),
                v.len()
            ))
        }),
    }
}

/// [`Context::add`] as a read of `key` and a write of the sum.
pub fn add_by_reading<C: Context + ?Sized>(
    ctx: &mut C,
    key: &[u8],
    delta: i64,
) -> Result<(), ProcError> {
    let value = ctx.get(key)?;
    let sum = counter(key, value.as_deref())?.wrapping_add(delta);
    ctx.put(key, &sum.to_le_bytes())
}

/// A stored procedure. See the module documentation for the determinism contract.
pub trait Procedure: Send + Sync + 'static {
    /// The name calls use.
    fn name(&self) -> &str;
    /// The key ranges a call with `args` may touch. An error refuses the call before it is
    /// submitted.
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError>;
    /// Runs the call, returning its output.
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError>;
}

/// Procedures by name.
#[derive(Clone, Default)]
pub struct Registry {
    procedures: BTreeMap<String, Arc<dyn Procedure>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.procedures.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `procedure` under its name, replacing one of the same name.
    pub fn register(&mut self, procedure: Arc<dyn Procedure>) {
        self.procedures.insert(procedure.name().to_string(), procedure);
    }

    /// The procedure called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Procedure>> {
        self.procedures.get(name)
    }

    /// Adds every procedure of `other`, replacing any of the same name.
    pub fn merge(&mut self, other: &Registry) {
        for (name, p) in &other.procedures {
            self.procedures.insert(name.clone(), p.clone());
        }
    }
}
