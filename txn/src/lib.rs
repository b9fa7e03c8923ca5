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
//!
//! Coming with the rest of the core engine issue: the embedded `Database` (sequencer plus
//! shard threads), snapshots and interactive transactions for callers, and the gRPC client and
//! services.

mod executor;
mod outcome;
mod procedure;
mod request;
mod shard_map;
mod snapshot;

pub use crate::executor::{ExecError, Executor, SnapshotRead, Task, Validated, WindowResult};
pub use crate::outcome::{AbortReason, Decided, Outcome, Phase, SerialPosition};
pub use crate::procedure::{Context, ProcError, Procedure, Registry, Rows};
pub use crate::request::{InteractiveCommit, Request, range_from_proto, range_to_proto};
pub use crate::shard_map::{InvalidShardMap, ShardMap};
pub use crate::snapshot::ShardsAt;
