//! Tests of the node runtime, in one binary (each binary linking RocksDB costs link time).
//!
//! - `backup`: `sealdb backup` under load, `sealdb restore` into a new cluster.
//! - `catch_up`: a replica behind the truncated log catching up from a fellow's checkpoint,
//!   killed mid-transfer.
//! - `cluster`: `sealdb` processes on loopback, SIGKILL of a shard and of the sequencer.
//! - `remote_sequencer`: the sequencer's gRPC service and client on loopback.
//! - `replicas`: shards of two replicas, one of each killed or paused under load.

mod backup;
mod catch_up;
mod cluster;
mod remote_sequencer;
mod replicas;
