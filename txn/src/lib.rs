//! The transaction core (DESIGN.md sections 3 and 4): what a read-write transaction is, and
//! how a shard applies a window of them. Plain code: no threads, no network, no RocksDB and no
//! tonic. The shells that run it live in other crates: `embedded` (the `Database` in one
//! process), `node` (the shard and sequencer servers), the simulation in `tests`; `client`
//! speaks to a cluster.
//!
//! - [`Request`]: a log entry's meaning: a call of a registered [`Procedure`], or the commit of
//!   an optimistic interactive transaction ([`InteractiveCommit`]).
//! - [`Executor`]: the window executor, DESIGN.md's reference algorithm (snapshot execution,
//!   reservations and verdicts, apply, fallback and deferral), with single-shard procedures
//!   run once each after the validated entries by default ([`Plan`]).
//! - [`Step`]: one shard's window protocol as a state machine that takes [`Event`]s and
//!   returns [`Command`]s; [`Tally`] is its count of a window's verdict exchange.
//! - [`Outcome`]: how each transaction ended; [`Decided`] adds its [`SerialPosition`] in the
//!   serial order, which the tests check against a serial oracle.
//! - [`call_read_only`]: a registered procedure run against one snapshot, off the log.
//! - [`ShardMap`]: range partitioning of keys to shards.
//! - [`Store`]: what the embedded database and the cluster client both offer (async), so code
//!   written against one runs against the other; [`ReadAt`], [`Buffer`] and [`Retry`] are what
//!   their interactive transactions share. Every failure a caller sees is a [`TxnError`].

pub mod builtin;
mod error;
mod executor;
mod outcome;
mod procedure;
mod read_only;
mod request;
mod shard_map;
mod snapshot;
mod step;
mod store;
mod stored;
mod tally;
mod transaction;

pub use crate::error::TxnError;
pub use crate::executor::{
    ExecError, Executor, Plan, RunReads, SnapshotRead, Task, Validated, WindowResult,
};
pub use crate::outcome::{
    AbortReason, Decided, Outcome, OutcomeCounters, Phase, SerialPosition, outcome_from_proto,
    outcome_result_from_proto, outcome_result_to_proto, outcome_to_proto,
};
pub use crate::procedure::{
    COUNTER_BYTES, Context, ProcError, Procedure, Registry, Rows, add_by_reading, counter,
};
pub use crate::read_only::call_read_only;
pub use crate::request::{
    InteractiveCommit, MalformedEntry, Request, declared_ranges, participants, procedure_request,
    range_from_proto, range_to_proto, refused,
};
pub use crate::shard_map::{InvalidShardMap, ShardMap};
pub use crate::snapshot::{
    ShardAt, ShardsAt, first_rows, overlay, rows_needed, scan_over, scan_shards,
};
pub use crate::step::{Command, Distant, Event, GcFloor, Peers, Step, StepError};
pub use crate::store::{Store, StoreSnapshot, StoreTransaction};
pub use crate::stored::{
    KeptOutcomes, chain_digest, stored_digest, stored_outcome, stored_verdicts,
};
pub use crate::tally::{Finals, Participants, Tally, TallyError};
pub use crate::transaction::{Buffer, ReadAt, Retry, commit_ts};
