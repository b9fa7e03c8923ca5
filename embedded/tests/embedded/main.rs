//! Tests of the embedded database, in one binary (each binary linking RocksDB costs link
//! time).
//!
//! - `crash`: SIGKILL at random moments; acknowledged commits survive, once, on every shard.
//! - `database`: the embedded database end to end: procedures, snapshots, interactive
//!   transactions, the bank invariant, recovery after reopening, and bad input.

mod common;
mod crash;
mod database;
