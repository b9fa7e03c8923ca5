//! Tests of the node runtime, in one binary (each binary linking RocksDB costs link time).
//!
//! - `cluster`: `sealdb` processes on loopback, SIGKILL of a shard and of the sequencer.
//! - `remote_sequencer`: the sequencer's gRPC service and client on loopback.
//! - `replicas`: shards of two replicas, one of each killed or paused under load.

mod cluster;
mod remote_sequencer;
mod replicas;
