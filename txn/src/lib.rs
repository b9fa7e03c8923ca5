//! Transactions: what a read-write transaction is, and how a shard applies a window of them
//! (DESIGN.md sections 3 and 4).
//!
//! - [`Request`]: a log entry's meaning: a call of a registered [`Procedure`], or the commit of
//!   an optimistic interactive transaction ([`InteractiveCommit`]).
//! - [`Executor`]: the window executor, plain code, exactly DESIGN.md's reference algorithm:
//!   snapshot execution, reservations and verdicts, apply, fallback and deferral.
//! - [`Outcome`]: how each transaction ended; [`Decided`] adds its [`SerialPosition`] in the
//!   serial order, which the tests check against a serial oracle.
//! - [`ShardMap`]: range partitioning of keys to shards.
//! - [`Step`]: one shard's window protocol as a state machine that takes [`Event`]s and
//!   returns [`Command`]s, with no I/O; [`Tally`] is its count of a window's verdict exchange.
//!   The embedded database, the shard server and the simulation run the same step.
//!
//! - [`Database`]: sealdb in one process, the sequencer and shard threads around the
//!   executor: [`Database::call`] for procedures, [`Database::snapshot`] for read-only
//!   transactions ([`ReadAt`]), [`Database::transact`] and [`Database::begin`] for interactive
//!   ones; every failure a caller sees is a [`TxnError`].
//!
//! - [`remote`]: cluster mode over gRPC: the sequencer, shard and admin services, the nodes
//!   the `sealdb` binary runs, and the [`Client`](remote::Client).
//! - [`Store`]: what `Database` and `Client` both offer (async), so code written against one
//!   runs against the other.

pub mod builtin;
mod database;
mod error;
mod executor;
mod outcome;
mod procedure;
pub mod remote;
mod request;
mod shard_map;
mod snapshot;
mod step;
mod store;
mod stored;
mod tally;
mod transaction;

pub use crate::database::{Database, Options, Stats};
pub use crate::error::TxnError;
pub use crate::executor::{ExecError, Executor, SnapshotRead, Task, Validated, WindowResult};
pub use crate::outcome::{AbortReason, Decided, Outcome, Phase, SerialPosition};
pub use crate::procedure::{Context, ProcError, Procedure, Registry, Rows};
pub use crate::request::{InteractiveCommit, Request, range_from_proto, range_to_proto};
pub use crate::shard_map::{InvalidShardMap, ShardMap};
pub use crate::snapshot::ShardsAt;
pub use crate::step::{Command, Distant, Event, Peers, Step, StepError};
pub use crate::store::{Store, StoreSnapshot, StoreTransaction};
pub use crate::stored::stored_verdicts;
pub use crate::tally::{Finals, Participants, Tally, TallyError};
pub use crate::transaction::{ReadAt, Snapshot, Transaction};
