//! Transaction tests, in one binary (each binary linking RocksDB costs link time).
//!
//! - `executor`: the window executor against a serial oracle, and determinism.
//! - `crash`: SIGKILL at random moments; acknowledged commits survive, once, on every shard.
//! - `database`: the embedded database end to end: procedures, snapshots, interactive
//!   transactions, the bank invariant, recovery after reopening, and bad input.
//! - `cluster`: `sealdb` processes on loopback, SIGKILL of a shard and of the sequencer.
//! - `remote_sequencer`: the sequencer's gRPC service and client on loopback.

mod cluster;
mod common;
mod crash;
mod database;
mod executor;
mod remote_sequencer;
