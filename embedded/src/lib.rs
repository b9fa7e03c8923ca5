//! sealdb in one process: [`Database::open`] runs the sequencer and one thread per shard,
//! each shard applying windows with the transaction core's [`txn::Step`] over the other
//! shards' storage in memory (DESIGN.md section 9, embedded).
//!
//! - [`Database::call`] runs a registered procedure; [`Database::snapshot`] reads at a
//!   timestamp ([`Snapshot`]); [`Database::transact`] and [`Database::begin`] run optimistic
//!   interactive transactions ([`Transaction`]). It implements [`txn::Store`].
//! - Storage is RocksDB (or memory, [`Options::in_memory`]); the log is the sequencer's.

mod cores;
mod database;
mod transaction;

pub use crate::database::{Backup, Database, Options, ShardTime, Stats, restore};
pub use crate::transaction::{Snapshot, Transaction};
