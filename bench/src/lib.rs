//! sealdb's benchmark harness.
//!
//! Each workload is a module with a `run(options) -> Report` and prints its figures; the
//! `bench` binary parses flags and calls it. Figures are measured, never assumed: every run
//! also checks its results against what it wrote, and a run whose check fails exits non-zero.
//!
//! Workloads so far:
//!
//! - [`micro`]: the transaction engine on an embedded database: `increment` (a procedure
//!   doing read-modify-write of one random key), `transfer` (a procedure over two random keys,
//!   often on two shards) and `interactive` (the same transfer as an interactive transaction).
//! - [`mvcc`]: the storage layer alone on RocksDB: applies windows of versioned writes the way
//!   a shard does, reads them back at timestamps, scans, collects garbage, and checks every
//!   answer against an in-memory model.
//! - [`tpcc`]: the TPC-C-like benchmark (the main job): load, run a mix of the five
//!   transactions, check the consistency conditions.
//!
//! Not here: the engine itself; the harness only uses public APIs.

pub mod micro;
pub mod mvcc;
pub mod report;
pub mod tpcc;
